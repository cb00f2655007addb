//! `pinbundle verify` and `inspect`.
