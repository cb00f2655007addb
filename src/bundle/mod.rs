//! The bundle file format (`bundle-format.md` is the normative description).
//!
//! A bundle is a `.tar.zst` of an OCI image layout plus `pinbundle.json`, written so that
//! every tar member starts a new zstd frame, followed by a zstd skippable frame holding a seek
//! index and a fixed footer. Stock `zstd -dc | tar -x` extracts it; pinbundle reads any member
//! with one seek and verifies members in parallel.

pub mod chain;
pub mod format;
pub mod frames;
mod output;
pub mod reader;
pub mod set;
mod signature;
pub mod volumes;
pub mod writer;

use std::io;
use std::path::PathBuf;

use crate::reference::Digest;

pub use output::{HeadReservation, Output, PendingOutput, Written, WrittenFile};
pub use reader::{Bundle, MemberReader};
pub use set::{BlobLoc, BundleSet, SetOptions};
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
    #[error("{}: is {kind}, not a bundle file (give the bundle's regular file)", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "{} holds more than {max} files: give the bundle or its volumes by name, or a directory that holds only them",
        path.display()
    )]
    TooManyFiles { path: PathBuf, max: usize },
    #[error("{what} of {size} bytes is larger than the format allows ({max} bytes)")]
    TooLarge { what: String, size: u64, max: u64 },
    #[error("cannot write {} at offset {offset}", path.display())]
    Write {
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the bundle at offset {offset}")]
    WriteStream {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// Staging, syncing or renaming an output file.
    #[error(transparent)]
    Output(#[from] crate::atomic::Error),
    #[error("cannot remove {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start worker threads")]
    ThreadPool(#[source] rayon::ThreadPoolBuildError),
    #[error("cannot compress {member}")]
    Compress {
        member: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode the seek index")]
    EncodeIndex(#[source] serde_json::Error),
    #[error("a bundle needs head members, pinbundle.json first")]
    NoHead,
    #[error("{member}: the final content does not have the provisional content's length")]
    HeadChanged { member: String },
    #[error("internal error: pinbundle.json is {len} bytes, more than the {reserved} reserved")]
    HeadOverflow { len: usize, reserved: usize },
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
    #[error(
        "{}: {member}: frame {frame} is not the one verified when the bundle was opened: the file changed, or the medium returned other bytes; nothing of it was sent",
        path.display()
    )]
    FrameChanged {
        path: PathBuf,
        member: String,
        frame: usize,
    },
    #[error(
        "a volume of {size} bytes cannot hold this bundle's head members, one frame and its index ({needed} bytes): use a larger --volume-size"
    )]
    VolumeTooSmall { size: u64, needed: u64 },
    #[error("the bundle needs more than {max} volumes: use a larger --volume-size")]
    TooManyVolumes { max: u32 },
    #[error("{}", describe_missing(set, *count, missing))]
    MissingVolumes {
        set: Digest,
        count: u32,
        /// Each missing volume's number and the file name it would have next to the others.
        missing: Vec<(u32, PathBuf)>,
    },
    #[error(
        "{} belongs to another set ({found}) than {} (set {expected}); remove it or give only one set's volumes",
        path.display(),
        first.display()
    )]
    ForeignVolume {
        path: PathBuf,
        found: String,
        first: PathBuf,
        expected: String,
    },
    #[error("volume {index} of set {set} is given twice: {} and {}", a.display(), b.display())]
    DuplicateVolume {
        set: Digest,
        index: u32,
        a: PathBuf,
        b: PathBuf,
    },
    #[error("{} holds no pinbundle bundle or volume", path.display())]
    NoBundleInDirectory { path: PathBuf },
    #[error(
        "{}: blob {digest} is cut into parts that do not join up ({detail})",
        path.display()
    )]
    BadParts {
        path: PathBuf,
        digest: Digest,
        detail: String,
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

fn describe_missing(set: &Digest, count: u32, missing: &[(u32, PathBuf)]) -> String {
    let list: Vec<String> = missing
        .iter()
        .map(|(i, p)| format!("volume {i} ({})", p.display()))
        .collect();
    format!(
        "the volume set {set} has {count} volumes; missing: {}",
        list.join(", ")
    )
}
