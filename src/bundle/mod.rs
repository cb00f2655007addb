//! The bundle file format (`bundle-format.md` is the normative description).
//!
//! A bundle is a `.tar.zst` of an OCI image layout plus `pinbundle.json`, written so that
//! every tar member starts a new zstd frame, followed by a zstd skippable frame holding a seek
//! index and a fixed footer. Stock `zstd -dc | tar -x` extracts it; pinbundle reads any member
//! with one seek and verifies members in parallel.

pub mod format;
pub mod reader;
mod signature;
pub mod writer;

use std::io;
use std::path::PathBuf;

use crate::reference::Digest;

pub use reader::{Bundle, MemberReader};
pub use writer::{BundleWriter, Compression, WriterOptions};

/// What can go wrong reading or writing a bundle. Each variant names the file and the member,
/// frame or offset involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the bundle failed")]
    Write(#[source] io::Error),
    #[error(
        "{} is not a pinbundle bundle (no footer at its end: truncated, or not a bundle)",
        path.display()
    )]
    NotABundle { path: PathBuf },
    #[error(
        "{}: bundle format version {found} is not supported (this pinbundle reads version {supported})",
        path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{}: damaged footer: {detail}", path.display())]
    BadFooter { path: PathBuf, detail: String },
    #[error("{}: seek index is damaged (sha256 expected {expected}, found {found})", path.display())]
    IndexDigest {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{}: invalid seek index: {detail}", path.display())]
    BadIndex { path: PathBuf, detail: String },
    #[error("{}: invalid pinbundle.json: {detail}", path.display())]
    BadManifest { path: PathBuf, detail: String },
    #[error("{}: frame {frame} at offset {offset} is damaged: {detail}", path.display())]
    BadFrame {
        path: PathBuf,
        frame: usize,
        offset: u64,
        detail: String,
    },
    #[error("{}: {member}: {detail}", path.display())]
    BadMember {
        path: PathBuf,
        member: String,
        detail: String,
    },
    #[error("{}: {member}: digest mismatch (expected {expected}, found {found})", path.display())]
    DigestMismatch {
        path: PathBuf,
        member: String,
        expected: Digest,
        found: Digest,
    },
    #[error("reading the content of {member}")]
    Input {
        member: String,
        #[source]
        source: io::Error,
    },
    #[error("the content of {member} is {found} bytes, expected {expected}")]
    InputSize {
        member: String,
        expected: u64,
        found: u64,
    },
    #[error("the content of {member} has digest {found}, expected {expected}")]
    InputDigest {
        member: String,
        expected: Digest,
        found: Digest,
    },
}
