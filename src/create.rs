//! `pinbundle create`: references → plan → blobs → bundle.
