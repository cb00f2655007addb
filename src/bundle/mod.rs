//! The bundle file format: see `bundle-format.md`.
