//! pinbundle: carry container images to air-gapped nodes in one verifiable bundle.
//!
//! Data flows one way: references → plan → blobs → bundle → verified blobs → store → pins.
//! - [`reference`] parses and normalises image references (no I/O); [`platform`] is
//!   `os/arch[/variant]`, parsed, matched and shown one way.
//! - [`bundle`] owns the byte format: writer, reader, seek index (local files only).
//! - [`cache`] owns the on-disk blob cache: layout, staged downloads, size memos, sweeping.
//! - [`registry`] speaks the distribution API: the client used by `create` and the read-only
//!   server used by `load`.
//! - [`sign`] reads minisign keys, signs `pinbundle.json` and checks signatures.
//! - [`delta`] holds what delta bundles need: bases, identities, load planning, `diff`.
//! - [`pinned_image_set`] renders OpenShift `PinnedImageSet` manifests for a bundle's pins;
//!   [`mirror`] maps a bundle's repositories onto a site mirror and renders the files that
//!   send nodes there.
//! - [`push`] puts a verified bundle's images into a site registry at those repositories,
//!   digests and manifest bytes unchanged.
//! - [`atomic`] stages a file and renames it into place, synced: every output file.
//! - [`input`] reads small files a person names: regular files only, with a cap.
//! - [`text`] escapes text from bundles and registries before a person sees it; [`size`]
//!   parses the byte sizes a person types.
//! - [`create`], [`verify`] orchestrate; [`load`] is the only module that runs `skopeo`,
//!   signals CRI-O or writes under `/etc`; [`lifecycle`] (`list`, `unpin`, `prune`) does so
//!   only through `load`'s modules, and keeps the record of what `load` loaded.

// The library reports through `progress::Reporter` and returns reports; only the CLI prints.
#![cfg_attr(not(test), deny(clippy::print_stdout, clippy::print_stderr))]

pub mod atomic;
pub mod bundle;
pub mod cache;
pub mod create;
pub mod delta;
pub mod error;
pub mod input;
pub mod layer;
pub mod lifecycle;
pub mod load;
pub mod manifest;
pub mod mirror;
pub mod pinned_image_set;
pub mod platform;
pub mod progress;
pub mod push;
pub mod reference;
pub mod registry;
pub mod release;
pub mod serve;
pub mod sign;
pub mod size;
pub mod text;
pub mod verify;
