//! The on-disk structures of a bundle: footer, seek index and bundle manifest.
//!
//! `bundle-format.md` is the normative description; this module is its code. Binary fields are
//! little-endian.

use serde::{Deserialize, Serialize};

use crate::reference::Digest;

/// The current (and only) format version.
pub const FORMAT_VERSION: u32 = 1;
/// `pinbundle.json`'s `format` field.
pub const FORMAT_NAME: &str = "pinbundle";

/// The zstd magic number that starts every data frame.
pub const ZSTD_MAGIC: u32 = 0xFD2F_B528;
/// The zstd skippable-frame magic that holds the seek index and footer (range 0x184D2A50–5F).
pub const INDEX_FRAME_MAGIC: u32 = 0x184D_2A5E;
/// The first eight bytes of the footer.
pub const FOOTER_MAGIC: [u8; 8] = *b"PNBNDL\x00\x01";
/// The footer's fixed size: magic, version, flags, index offset, index length, index sha256.
pub const FOOTER_LEN: usize = 64;

/// The member names of the fixed members, in file order.
pub const MANIFEST_PATH: &str = "pinbundle.json";
pub const OCI_LAYOUT_PATH: &str = "oci-layout";
pub const OCI_INDEX_PATH: &str = "index.json";
/// The optional minisign signature of `pinbundle.json`; when present, the second member.
pub const SIGNATURE_PATH: &str = "pinbundle.json.minisig";

/// Readers refuse a seek index larger than this (a hostile footer cannot make us allocate
/// more). A real one takes about 100 bytes per frame and 200 per member: 16 MiB is ~80 000
/// blobs.
pub const MAX_INDEX_LEN: u64 = 16 << 20;
/// Readers refuse the files of one set (or one command line) whose seek indexes add up to
/// more than this: 40 tiny volumes cannot cost 40 maximal indexes.
pub const MAX_SET_INDEX_LEN: u64 = 32 << 20;
/// Readers refuse frames that claim to decompress to more than this: the writers' 16 MiB
/// frame plus a member's tar padding. Two threads' frame buffers then stay near 64 MiB.
pub const MAX_FRAME_SIZE: u64 = (16 << 20) + 512;
/// Readers refuse a `pinbundle.json` larger than this (about 500 bytes per blob and 1 KiB
/// per image: room for ~10 000 images).
pub const MAX_MANIFEST_LEN: u64 = 8 << 20;
/// Manifests and indexes are read whole; readers refuse larger ones (containers/image's
/// limit for manifests, and the loopback server's).
pub const MAX_MANIFEST_BLOB_LEN: u64 = 4 << 20;
/// The most files a directory argument may hold: a set has at most 999 volumes.
pub const MAX_DIR_FILES: usize = 1024;
/// Readers refuse a `pinbundle.json.minisig` larger than this (a real one is about 300 bytes).
pub const MAX_SIGNATURE_LEN: u64 = 4096;
/// The default upper bound of a frame's decompressed size.
pub const DEFAULT_FRAME_SIZE: usize = 16 << 20;

/// The fixed-size footer that ends the file (inside the index's skippable frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub version: u32,
    pub flags: u32,
    /// File offset of the first byte of the seek index.
    pub index_offset: u64,
    pub index_len: u64,
    pub index_sha256: [u8; 32],
}

impl Footer {
    pub fn encode(&self) -> [u8; FOOTER_LEN] {
        let mut b = [0u8; FOOTER_LEN];
        b[0..8].copy_from_slice(&FOOTER_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.index_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.index_len.to_le_bytes());
        b[32..64].copy_from_slice(&self.index_sha256);
        b
    }

    /// Decodes a footer; `None` when the magic is wrong (not a bundle).
    pub fn decode(b: &[u8; FOOTER_LEN]) -> Option<Footer> {
        if b[0..8] != FOOTER_MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let mut index_sha256 = [0u8; 32];
        index_sha256.copy_from_slice(&b[32..64]);
        Some(Footer {
            version: u32_at(8),
            flags: u32_at(12),
            index_offset: u64_at(16),
            index_len: u64_at(24),
            index_sha256,
        })
    }
}

/// The seek index: where every frame and every tar member lies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeekIndex {
    pub format_version: u32,
    /// Every data frame in file order; together they cover the file from offset 0 to the index
    /// frame without gaps. The last one is the tar end-of-archive.
    pub frames: Vec<FrameEntry>,
    /// Every tar member in file order. Each starts a new frame and spans whole frames.
    pub members: Vec<MemberEntry>,
    /// Present when the file is one volume of a split set (section 8.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeInfo>,
}

/// Which set a volume belongs to and where it stands in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeInfo {
    /// The set's identity: the sha256 of `pinbundle.json`, which every volume carries
    /// byte-identical.
    pub set: Digest,
    /// This volume's number, from 1.
    pub index: u32,
    /// How many volumes the set has.
    pub count: u32,
}

/// The most volumes a set may have (file names end in three digits).
pub const MAX_VOLUMES: u32 = 999;

/// One zstd data frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrameEntry {
    /// File offset of the frame's first byte.
    pub offset: u64,
    /// Compressed length, frame header to checksum inclusive.
    pub length: u64,
    /// Decompressed length.
    pub size: u64,
    /// XXH3-64 of the frame's compressed bytes, as 16 lowercase hex digits: it covers the bytes
    /// zstd's content checksum does not (frame and block headers).
    pub xxh3: String,
}

/// One tar member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberEntry {
    /// The member's tar path, e.g. `blobs/sha256/<hex>`.
    pub path: String,
    /// sha256 of the member's content (for a blob, also its name).
    pub digest: Digest,
    /// Content size in bytes.
    pub size: u64,
    /// Index of the member's first frame in [`SeekIndex::frames`].
    pub frame: usize,
    /// Number of frames the member spans.
    pub frames: usize,
    /// Offset of the content inside the first frame's decompressed bytes (after the tar header).
    pub data_offset: u64,
    /// Present when the member is one part of a blob cut between volumes; `digest` is then
    /// the whole blob's and `path` is `blobs/sha256/<hex>.part-NNN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<PartInfo>,
}

/// Where a part member's bytes go in its blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartInfo {
    /// The part's number, from 1; `NNN` in its path.
    pub index: u32,
    /// Offset of the part's first byte in the blob.
    pub offset: u64,
}

/// The tar path of part `index` of the blob `digest`.
pub fn part_path(digest: &Digest, index: u32) -> String {
    format!("{}.part-{index:03}", digest.layout_path())
}

impl SeekIndex {
    /// The frames of `member`.
    pub fn frames_of(&self, member: &MemberEntry) -> &[FrameEntry] {
        &self.frames[member.frame..member.frame + member.frames]
    }
}

/// `pinbundle.json`: what the bundle holds. A signature over these bytes (the member
/// [`SIGNATURE_PATH`]) covers every blob through the digests listed here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleManifest {
    /// Always `pinbundle`.
    pub format: String,
    pub format_version: u32,
    /// `pinbundle <version>`.
    pub creator: String,
    /// RFC 3339 UTC, from `SOURCE_DATE_EPOCH` when set.
    pub created: String,
    /// For a delta bundle (section 8.2): the base whose layers it omits. Absent in a full
    /// bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRef>,
    /// Digests of the OCI layout's own files, so this manifest covers every member.
    pub layout: LayoutDigests,
    pub images: Vec<ImageEntry>,
    /// The OpenShift releases expanded into `images` (section 10), in the order given.
    /// Absent when there are none, so bundles without releases are unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<ReleaseEntry>,
    /// Every blob in the bundle, sorted by digest, each once.
    pub blobs: Vec<BlobEntry>,
    pub totals: Totals,
}

impl BundleManifest {
    /// No images, no blobs, zero totals: what a reader holds before `pinbundle.json` is read.
    pub(crate) fn empty() -> BundleManifest {
        BundleManifest {
            format: String::new(),
            format_version: 0,
            creator: String::new(),
            created: String::new(),
            base: None,
            layout: LayoutDigests {
                oci_layout: Digest::of(b""),
                index_json: Digest::of(b""),
            },
            images: Vec::new(),
            releases: Vec::new(),
            blobs: Vec::new(),
            totals: Totals {
                images: 0,
                blobs: 0,
                size: 0,
                uncompressed_size: 0,
                omitted_blobs: None,
                omitted_size: None,
            },
        }
    }

    /// A manifest of these images and blobs for unit tests (totals left at zero).
    #[cfg(test)]
    pub(crate) fn for_test(images: Vec<ImageEntry>, blobs: Vec<BlobEntry>) -> BundleManifest {
        BundleManifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            creator: "t".into(),
            created: "2026-01-01T00:00:00Z".into(),
            images,
            blobs,
            ..BundleManifest::empty()
        }
    }
}

/// The base of a delta bundle (bundle-format.md, section 8.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaseRef {
    /// The base's identity: the sha256 of the exact bytes of its `pinbundle.json` (which is
    /// also what `pinbundle index-export` writes).
    pub manifest: Digest,
    /// The base's `created`, for display only.
    pub created: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayoutDigests {
    pub oci_layout: Digest,
    pub index_json: Digest,
}

/// One requested image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageEntry {
    /// The reference as requested, normalised (`docker.io/library/busybox:1.36`).
    pub reference: String,
    /// The normalised repository name (`docker.io/library/busybox`).
    pub name: String,
    /// The tag the reference was resolved from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The digest of the top-level manifest or index: `name@digest` is what gets pinned.
    pub digest: Digest,
    pub media_type: String,
    /// The platform instances carried: one for a single-platform manifest, the chosen ones
    /// of an index.
    pub platforms: Vec<PlatformEntry>,
    /// Every blob this image needs from the bundle, including its manifests.
    pub blobs: Vec<Digest>,
    /// Sum of the sizes of `blobs`.
    pub size: u64,
    /// Sum of the uncompressed sizes of the layers.
    pub uncompressed_size: u64,
}

/// One OpenShift release image expanded into its components (bundle-format.md, section 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseEntry {
    /// The reference as given to `create --release`, normalised.
    pub reference: String,
    /// The release image by digest (`name@sha256:…`): what `oc adm upgrade --to-image` takes,
    /// and one of `images`.
    pub image: String,
    /// The digest of the release image's top-level manifest (or index): what its signatures
    /// sign.
    pub digest: Digest,
    /// `release-metadata`'s `version`.
    pub version: String,
    /// `release-metadata`'s `previous`: the versions this one updates from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<String>,
    /// The architecture of the release image's manifest (its config's, or its index
    /// entry's), e.g. `amd64`.
    pub architecture: String,
    /// `image-references`: each tag name with its component, exactly as the payload names it
    /// (`name@sha256:…`), sorted by tag name. Each is one of `images`.
    pub components: std::collections::BTreeMap<String, String>,
    /// The release's signatures, in the store's order (`signature-1`, …): blobs of kind
    /// `signature` in `blobs`. Empty when created with `--no-release-signatures`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<Digest>,
}

/// One platform-specific image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlatformEntry {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The image manifest's digest.
    pub digest: Digest,
    pub media_type: String,
    pub config: Digest,
    pub layers: Vec<Digest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    Index,
    Manifest,
    Config,
    Layer,
    /// A release signature (section 10): no image uses it.
    Signature,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobEntry {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub kind: BlobKind,
    /// For layers: the size of the uncompressed tar stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_size: Option<u64>,
    /// Whether the blob is a member of this bundle. Only a delta's layers may be `false`
    /// (written as `"carried": false`; omitted when true, so full bundles are unchanged).
    #[serde(default = "carried_default", skip_serializing_if = "is_carried")]
    pub carried: bool,
}

fn carried_default() -> bool {
    true
}

fn is_carried(carried: &bool) -> bool {
    *carried
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub images: usize,
    pub blobs: usize,
    /// Sum of blob sizes (each blob once).
    pub size: u64,
    /// Sum of layer uncompressed sizes (each layer once).
    pub uncompressed_size: u64,
    /// For a delta: how many of `blobs` are not carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted_blobs: Option<usize>,
    /// For a delta: the sum of the sizes of the blobs not carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted_size: Option<u64>,
}

/// Media types pinbundle understands.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const OCI_LAYER_ND: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
    pub const OCI_LAYER_ND_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    pub const OCI_LAYER_ND_ZSTD: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// A release signature carried as a blob (section 10).
    pub const RELEASE_SIGNATURE: &str = "application/vnd.pinbundle.release-signature.v1";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";

    /// How a layer's bytes are compressed, by media type; `None` for unknown media types.
    pub fn layer_compression(media_type: &str) -> Option<LayerCompression> {
        match media_type {
            OCI_LAYER | OCI_LAYER_ND => Some(LayerCompression::None),
            OCI_LAYER_GZIP | OCI_LAYER_ND_GZIP | DOCKER_LAYER_GZIP => Some(LayerCompression::Gzip),
            OCI_LAYER_ZSTD | OCI_LAYER_ND_ZSTD => Some(LayerCompression::Zstd),
            _ => None,
        }
    }

    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_LIST
    }

    pub fn is_manifest(media_type: &str) -> bool {
        media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum LayerCompression {
        None,
        Gzip,
        Zstd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_roundtrip() {
        let f = Footer {
            version: 1,
            flags: 0,
            index_offset: 12345,
            index_len: 678,
            index_sha256: [7; 32],
        };
        let b = f.encode();
        assert_eq!(Footer::decode(&b), Some(f));
        let mut bad = b;
        bad[0] ^= 1;
        assert_eq!(Footer::decode(&bad), None);
    }
}
