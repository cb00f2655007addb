//! Opens a bundle through its footer and seek index, and reads members by random access.
//!
//! Opening checks the footer, the index's own digest, the index's structure (frames cover the
//! file without gaps, members have safe paths and lie inside their frames) and the digest of
//! `pinbundle.json`. Every member read after that checks each frame it touches: the XXH3 of
//! the compressed bytes, zstd's content checksum and the decompressed size. Reads go through
//! `pread`, so one [`Bundle`] serves many threads at once.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest as _;

use super::Error;
use super::chain::ChainHasher;
use super::format::{
    BundleManifest, FOOTER_LEN, FORMAT_NAME, FORMAT_VERSION, Footer, FrameEntry, INDEX_FRAME_MAGIC,
    MANIFEST_PATH, MAX_FRAME_SIZE, MAX_INDEX_LEN, MAX_MANIFEST_LEN, MAX_SET_INDEX_LEN, MAX_VOLUMES,
    MemberEntry, OCI_INDEX_PATH, OCI_LAYOUT_PATH, SIGNATURE_PATH, SeekIndex, part_path,
};
use crate::reference::Digest;

const TAR_BLOCK: u64 = 512;

/// The most a frame's compressed bytes may exceed its content: zstd's own bound
/// (`ZSTD_COMPRESSBOUND`: size/256 plus a little) and the frame header, with room to spare.
fn max_frame_len(size: u64) -> u64 {
    size + (size >> 8) + 4096
}

/// Opens `path` for reading only if it is a regular file ([`crate::input::open_regular`]: a
/// FIFO with no writer, or a device, is refused at once instead of hanging the caller).
pub(crate) fn open_regular(path: &Path) -> Result<std::fs::File, Error> {
    crate::input::open_regular(path)
        .map(|(file, _)| file)
        .map_err(|e| {
            match e
                .get_ref()
                .and_then(|i| i.downcast_ref::<crate::input::NotRegular>())
            {
                Some(k) => Error::NotRegular {
                    path: path.to_path_buf(),
                    kind: k.0,
                },
                None => Error::Io {
                    path: path.to_path_buf(),
                    source: e,
                },
            }
        })
}

/// An open bundle file.
#[derive(Debug)]
pub struct Bundle {
    /// Unique among the bundles this process opened: the key of its frames in a
    /// [`super::frames::FrameCache`].
    id: u64,
    path: PathBuf,
    file: std::fs::File,
    len: u64,
    index: SeekIndex,
    by_path: HashMap<String, usize>,
    head: Arc<Head>,
}

/// `pinbundle.json`, parsed, with its exact bytes (what a signature covers). A volume set reads
/// it once, from its first volume, and shares it: the other volumes' copies are only hashed
/// against the set id when verified, so N volumes never hold N copies.
#[derive(Debug)]
struct Head {
    manifest: BundleManifest,
    bytes: Vec<u8>,
}

impl Bundle {
    /// Opens `path`, checking footer, seek index and `pinbundle.json`.
    pub fn open(path: &Path) -> Result<Bundle, Error> {
        let mut budget = MAX_INDEX_LEN;
        let mut bundle = Bundle::open_index(path, &mut budget)?;
        bundle.read_head()?;
        Ok(bundle)
    }

    /// Opens `path` as far as its seek index, without reading `pinbundle.json`: the cheap
    /// identity of a volume (set, number, count) before anything large. The index's length
    /// is taken from `budget` (what is left for the whole set), so many volumes cannot make
    /// us hold more than [`MAX_SET_INDEX_LEN`] of indexes.
    pub(crate) fn open_index(path: &Path, budget: &mut u64) -> Result<Bundle, Error> {
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = open_regular(path)?;
        let len = file.metadata().map_err(io_err)?.len();
        let bad_footer = |detail: String| Error::BadFooter {
            path: path.to_path_buf(),
            detail,
        };
        if len < (FOOTER_LEN + 8) as u64 {
            return Err(Error::NotABundle {
                path: path.to_path_buf(),
            });
        }
        let mut fb = [0u8; FOOTER_LEN];
        file.read_exact_at(&mut fb, len - FOOTER_LEN as u64)
            .map_err(io_err)?;
        let footer = Footer::decode(&fb).ok_or_else(|| Error::NotABundle {
            path: path.to_path_buf(),
        })?;
        if footer.version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: footer.version,
                supported: FORMAT_VERSION,
            });
        }
        if footer.flags != 0 {
            return Err(bad_footer(format!("unknown flags {:#x}", footer.flags)));
        }
        if footer.index_len > MAX_INDEX_LEN {
            return Err(bad_footer(format!(
                "seek index of {} bytes is larger than the format allows ({MAX_INDEX_LEN})",
                footer.index_len
            )));
        }
        if footer.index_len > *budget {
            return Err(bad_footer(format!(
                "seek index of {} bytes takes the seek indexes of the files given past {MAX_SET_INDEX_LEN} bytes",
                footer.index_len
            )));
        }
        let expected_end = footer
            .index_offset
            .checked_add(footer.index_len)
            .and_then(|e| e.checked_add(FOOTER_LEN as u64));
        if expected_end != Some(len) || footer.index_offset < 8 {
            return Err(bad_footer(format!(
                "index at {} of {} bytes does not end at the footer (file is {len} bytes; truncated or appended to?)",
                footer.index_offset, footer.index_len
            )));
        }
        let mut frame_head = [0u8; 8];
        file.read_exact_at(&mut frame_head, footer.index_offset - 8)
            .map_err(io_err)?;
        let magic =
            u32::from_le_bytes([frame_head[0], frame_head[1], frame_head[2], frame_head[3]]);
        let payload =
            u32::from_le_bytes([frame_head[4], frame_head[5], frame_head[6], frame_head[7]]);
        if magic != INDEX_FRAME_MAGIC || u64::from(payload) != footer.index_len + FOOTER_LEN as u64
        {
            return Err(bad_footer(
                "the index's skippable frame header is damaged".into(),
            ));
        }
        *budget -= footer.index_len;
        let mut index_bytes = vec![0u8; footer.index_len as usize];
        file.read_exact_at(&mut index_bytes, footer.index_offset)
            .map_err(io_err)?;
        let found: [u8; 32] = sha2::Sha256::digest(&index_bytes).into();
        if found != footer.index_sha256 {
            return Err(Error::IndexDigest {
                path: path.to_path_buf(),
                expected: hex::encode(footer.index_sha256),
                found: hex::encode(found),
            });
        }
        let index: SeekIndex =
            serde_json::from_slice(&index_bytes).map_err(|e| Error::BadIndex {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        drop(index_bytes);
        let by_path =
            validate_index(&index, footer.index_offset - 8).map_err(|detail| Error::BadIndex {
                path: path.to_path_buf(),
                detail,
            })?;
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(Bundle {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            path: path.to_path_buf(),
            file,
            len,
            index,
            by_path,
            head: Arc::new(Head {
                manifest: BundleManifest::empty(),
                bytes: Vec::new(),
            }),
        })
    }

    /// Reads and checks this file's own `pinbundle.json` (bounded by [`MAX_MANIFEST_LEN`]).
    pub(crate) fn read_head(&mut self) -> Result<(), Error> {
        let m = self.index.members[0].clone();
        if m.size > MAX_MANIFEST_LEN {
            return Err(self.bad_index(format!(
                "{MANIFEST_PATH} of {} bytes is larger than the format allows ({MAX_MANIFEST_LEN})",
                m.size
            )));
        }
        let bytes = self.read_member(&m)?;
        let manifest: BundleManifest =
            serde_json::from_slice(&bytes).map_err(|source| Error::BadManifest {
                path: self.path.clone(),
                detail: source.to_string(),
            })?;
        if manifest.format != FORMAT_NAME || manifest.format_version != FORMAT_VERSION {
            return Err(Error::BadManifest {
                path: self.path.clone(),
                detail: format!(
                    "format \"{}\" version {} (expected \"{FORMAT_NAME}\" version {FORMAT_VERSION})",
                    manifest.format, manifest.format_version
                ),
            });
        }
        if let Some(v) = &self.index.volume {
            let own = Digest::of(&bytes);
            if v.set != own {
                return Err(self.bad_index(format!(
                    "volume of set {} carries a {MANIFEST_PATH} with digest {own}",
                    v.set
                )));
            }
        }
        self.head = Arc::new(Head { manifest, bytes });
        Ok(())
    }

    /// Takes `first`'s `pinbundle.json` as this volume's, without reading it: the volume's
    /// index must name it (same set, same digest and size). Its own copy of the bytes is
    /// checked against that digest when the volume is verified, like any member.
    pub(crate) fn share_head(&mut self, first: &Bundle) -> Result<(), Error> {
        let own = &self.index.members[0];
        let theirs = &first.index.members[0];
        if own.digest != theirs.digest || own.size != theirs.size {
            return Err(self.bad_index(format!(
                "its {MANIFEST_PATH} ({}, {} bytes) differs from the one in {} ({}, {} bytes)",
                own.digest,
                own.size,
                first.path.display(),
                theirs.digest,
                theirs.size
            )));
        }
        self.head = first.head.clone();
        Ok(())
    }

    fn bad_index(&self, detail: String) -> Error {
        Error::BadIndex {
            path: self.path.clone(),
            detail,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This open file's identity in the process ([`super::frames::FrameCache`]'s key).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The file's length in bytes.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    pub fn index(&self) -> &SeekIndex {
        &self.index
    }

    pub fn manifest(&self) -> &BundleManifest {
        &self.head.manifest
    }

    /// The exact bytes of `pinbundle.json` (what a signature covers).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.head.bytes
    }

    /// The member stored at `path`.
    pub fn member(&self, path: &str) -> Option<&MemberEntry> {
        self.by_path.get(path).map(|&i| &self.index.members[i])
    }

    /// The blob `digest`.
    pub fn blob(&self, digest: &Digest) -> Option<&MemberEntry> {
        self.member(&digest.layout_path())
    }

    /// Reads, checks and decompresses frame `i`.
    pub fn read_frame(&self, i: usize) -> Result<Vec<u8>, Error> {
        let mut buf = FrameBuf::default();
        self.read_frame_into(i, &mut buf)?;
        Ok(std::mem::take(&mut buf.out))
    }

    /// Reads, checks and decompresses frame `i` into `buf`, reusing its memory: fresh 16 MiB
    /// buffers for every frame cost as much in page faults as hashing the frame does.
    pub fn read_frame_into<'b>(&self, i: usize, buf: &'b mut FrameBuf) -> Result<&'b [u8], Error> {
        self.read_raw_into(i, buf, true)?;
        self.decompress_raw(i, buf)
    }

    /// Decompresses frame `i` from `buf.raw`, where [`Bundle::read_raw_into`] put it.
    fn decompress_raw<'b>(&self, i: usize, buf: &'b mut FrameBuf) -> Result<&'b [u8], Error> {
        let f: &FrameEntry = &self.index.frames[i];
        let bad = |detail: String| Error::BadFrame {
            path: self.path.clone(),
            frame: i,
            offset: f.offset,
            detail,
        };
        let raw = &buf.raw[..f.length as usize];
        // The declared size bounds the output: a frame that expands further fails here.
        buf.out.clear();
        buf.out.reserve(f.size as usize);
        let dctx = match &mut buf.dctx {
            Some(d) => d,
            None => buf
                .dctx
                .insert(zstd::bulk::Decompressor::new().map_err(|e| bad(format!("zstd: {e}")))?),
        };
        dctx.decompress_to_buffer(raw, &mut buf.out)
            .map_err(|e| bad(format!("zstd: {e}")))?;
        if buf.out.len() as u64 != f.size {
            return Err(bad(format!(
                "decompressed to {} bytes, expected {}",
                buf.out.len(),
                f.size
            )));
        }
        Ok(&buf.out)
    }

    /// Reads frame `i`'s compressed bytes into `buf.raw` and checks their shape and (with
    /// `checksums`) their XXH3.
    fn read_raw_into(&self, i: usize, buf: &mut FrameBuf, checksums: bool) -> Result<(), Error> {
        let f: &FrameEntry = &self.index.frames[i];
        let len = f.length as usize;
        if buf.raw.len() < len {
            buf.raw.resize(len, 0);
        }
        let raw = &mut buf.raw[..len];
        self.file
            .read_exact_at(raw, f.offset)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        let bad = |detail: String| Error::BadFrame {
            path: self.path.clone(),
            frame: i,
            offset: f.offset,
            detail,
        };
        if checksums {
            let found = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(raw));
            if found != f.xxh3 {
                return Err(bad(format!(
                    "checksum mismatch (expected {}, found {found})",
                    f.xxh3
                )));
            }
        }
        // The XXH3 is no secret: the frame's shape is checked too, so nothing rides along
        // unchecked in its extent.
        check_frame_shape(raw, f.size).map_err(bad)
    }

    /// Frame `i`'s content, checked: in place in `buf.raw` when the frame is made of Raw
    /// blocks (how stored layers are written: no copy; the content checksum is computed
    /// here as zstd would), else decompressed.
    fn frame_content<'b>(&self, i: usize, buf: &'b mut FrameBuf) -> Result<Content<'b>, Error> {
        self.read_raw_into(i, buf, true)?;
        if self.raw_content(i, buf, true)? {
            let len = self.index.frames[i].length as usize;
            return Ok(Content::Raw(&buf.raw[..len], &buf.slices));
        }
        Ok(Content::Contiguous(self.decompress_raw(i, buf)?))
    }

    /// Whether frame `i`, read into `buf.raw`, is made of Raw blocks (then `buf.slices` says
    /// where its content lies), with (`checksums`) its content checksum checked.
    fn raw_content(&self, i: usize, buf: &mut FrameBuf, checksums: bool) -> Result<bool, Error> {
        let f = &self.index.frames[i];
        let raw = &buf.raw[..f.length as usize];
        if !raw_blocks(raw, f.size, &mut buf.slices) {
            return Ok(false);
        }
        if !checksums {
            return Ok(true);
        }
        // zstd would check this when decompressing, and stock `zstd -dc` does: a frame that
        // passes here must pass there.
        let mut h = xxhash_rust::xxh64::Xxh64::new(0);
        Content::Raw(raw, &buf.slices).pieces(0, f.size as usize, |p| h.update(p));
        if (h.digest() as u32).to_le_bytes() != raw[raw.len() - 4..] {
            return Err(Error::BadFrame {
                path: self.path.clone(),
                frame: i,
                offset: f.offset,
                detail: "zstd content checksum mismatch".into(),
            });
        }
        Ok(true)
    }

    /// Reads and checks frame `i` into `keep`, a buffer to hold it: a frame of Raw blocks as
    /// it is in the file, with where its content lies (not copied again: `buf`'s read buffer
    /// and `keep` trade places), any other decompressed (`None`). Returns the buffer holding
    /// the frame, or `keep` back on an error.
    ///
    /// Without `checksums`, the XXH3 and a Raw-block frame's content checksum are not
    /// computed: for a caller that proves the content itself by SHA-256 before using any of it
    /// ([`super::chain::Chain`]), they would only cost time. The shape is checked all the same,
    /// and zstd checks what it decompresses.
    pub(crate) fn read_frame_keep(
        &self,
        i: usize,
        buf: &mut FrameBuf,
        mut keep: Vec<u8>,
        checksums: bool,
    ) -> Kept {
        let raw = self
            .read_raw_into(i, buf, checksums)
            .and_then(|()| self.raw_content(i, buf, checksums));
        match raw {
            Err(e) => (Err(e), keep),
            Ok(true) => {
                std::mem::swap(&mut buf.raw, &mut keep);
                (Ok(Some(buf.slices.clone())), keep)
            }
            Ok(false) => {
                let scratch = buf.swap_out(keep);
                let result = self.decompress_raw(i, buf).map(|_| None);
                (result, buf.swap_out(scratch))
            }
        }
    }

    /// A reader of `member`'s content from byte `offset` on. Frames are checked as they are
    /// read; the content digest is not (use [`Bundle::read_member`] or hash it yourself).
    pub fn open_member(&self, member: &MemberEntry, offset: u64) -> MemberReader<'_> {
        // Find the frame that holds content byte `offset`.
        let frames = self.index.frames_of(member);
        let mut pos = member.data_offset + offset.min(member.size);
        let mut frame = member.frame;
        for f in frames {
            if pos < f.size || frame + 1 == member.frame + member.frames {
                break;
            }
            pos -= f.size;
            frame += 1;
        }
        MemberReader {
            bundle: self,
            next_frame: frame,
            end_frame: member.frame + member.frames,
            frame: FrameBuf::default(),
            buf_len: 0,
            buf_pos: 0,
            skip: pos as usize,
            remaining: member.size - offset.min(member.size),
        }
    }

    /// The whole content of `member`, checked against its digest and size.
    pub fn read_member(&self, member: &MemberEntry) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(member.size.min(MAX_MANIFEST_LEN) as usize);
        self.open_member(member, 0)
            .read_to_end(&mut out)
            .map_err(|e| self.unwrap_io(e))?;
        let found = Digest::of(&out);
        if found != member.digest || out.len() as u64 != member.size {
            return Err(Error::DigestMismatch {
                path: self.path.clone(),
                member: member.path.clone(),
                expected: member.digest.clone(),
                found,
            });
        }
        Ok(out)
    }

    /// Reads `member` completely, checking every frame, the tar header, the padding and the
    /// digest, without keeping more than one frame in memory. A part member's digest is its
    /// whole blob's, so a part alone is checked up to its frames' checksums
    /// ([`super::BundleSet`] hashes the joined parts).
    pub fn verify_member(
        &self,
        member: &MemberEntry,
        progress: impl FnMut(u64),
    ) -> Result<(), Error> {
        let mut hasher = ChainHasher::default();
        self.check_member(member, &mut hasher, progress)?;
        if member.part.is_some() {
            return Ok(());
        }
        match hasher.finish(member.frames, &member.digest) {
            Ok(_) => Ok(()),
            Err(found) => Err(Error::DigestMismatch {
                path: self.path.clone(),
                member: member.path.clone(),
                expected: member.digest.clone(),
                found,
            }),
        }
    }

    /// Checks every frame, the tar header and the padding of `member`, feeding its content to
    /// `hasher`, a frame at a time.
    pub fn check_member(
        &self,
        member: &MemberEntry,
        hasher: &mut ChainHasher,
        mut progress: impl FnMut(u64),
    ) -> Result<(), Error> {
        let mut remaining = member.size;
        let mut buf = FrameBuf::default();
        for i in member.frame..member.frame + member.frames {
            let content = self.frame_content(i, &mut buf)?;
            let size = content.len();
            let mut start = 0;
            if i == member.frame {
                let at = member.data_offset as usize;
                let mut header = [0u8; TAR_BLOCK as usize];
                let mut filled = 0;
                content.pieces(at - TAR_BLOCK as usize, at, |p| {
                    header[filled..filled + p.len()].copy_from_slice(p);
                    filled += p.len();
                });
                self.check_tar_header(member, &header)?;
                start = at;
            }
            let take = (remaining as usize).min(size - start);
            content.pieces(start, start + take, |p| hasher.update(p));
            hasher.end_frame();
            let mut padding_ok = true;
            content.pieces(start + take, size, |p| {
                padding_ok &= p.iter().all(|&b| b == 0)
            });
            if !padding_ok {
                return Err(self.bad_member(member, "non-zero tar padding".into()));
            }
            remaining -= take as u64;
            progress(self.index.frames[i].length);
        }
        if remaining != 0 {
            return Err(self.bad_member(member, "content ends early".into()));
        }
        Ok(())
    }

    /// Checks the tar end-of-archive frame.
    pub fn verify_end(&self) -> Result<(), Error> {
        if !ends_archive(&self.index) {
            return Ok(());
        }
        let last = self.index.frames.len() - 1;
        let data = self.read_frame(last)?;
        if data.iter().any(|&b| b != 0) {
            return Err(Error::BadFrame {
                path: self.path.clone(),
                frame: last,
                offset: self.index.frames[last].offset,
                detail: "tar end-of-archive is not zero".into(),
            });
        }
        Ok(())
    }

    /// Checks a member's 512-byte tar header.
    fn check_tar_header(
        &self,
        member: &MemberEntry,
        bytes: &[u8; TAR_BLOCK as usize],
    ) -> Result<(), Error> {
        let bytes = &bytes[..];
        let h = tar::Header::from_byte_slice(bytes);
        let mut recomputed = h.clone();
        recomputed.set_cksum();
        let path_ok = h.path_bytes().as_ref() == member.path.as_bytes();
        let size_ok = h.entry_size().ok() == Some(member.size);
        let kind_ok = h.entry_type() == tar::EntryType::Regular;
        if !(path_ok && size_ok && kind_ok && recomputed.as_bytes() == h.as_bytes()) {
            return Err(self.bad_member(
                member,
                "tar header does not match the seek index (path, size, type or checksum)".into(),
            ));
        }
        // Every other field is fixed by the format (mode 0644, owner 0, no names, no link
        // target, ustar): stock `tar -x` as root would apply a crafted mode or owner.
        let fixed = h
            .mtime()
            .ok()
            .and_then(|mtime| super::writer::tar_header(&member.path, member.size, mtime).ok());
        if fixed.as_ref().map(|f| &f[..]) != Some(bytes) {
            return Err(self.bad_member(
                member,
                "tar header has fields the format fixes (mode, owner, names, link, magic) set to other values".into(),
            ));
        }
        Ok(())
    }

    fn bad_member(&self, member: &MemberEntry, detail: String) -> Error {
        Error::BadMember {
            path: self.path.clone(),
            member: member.path.clone(),
            detail,
        }
    }

    /// Turns an I/O error from a [`MemberReader`] back into the bundle error it carries.
    pub fn unwrap_io(&self, e: io::Error) -> Error {
        match e.downcast::<Error>() {
            Ok(inner) => inner,
            Err(e) => Error::Io {
                path: self.path.clone(),
                source: e,
            },
        }
    }
}

/// A member path the format allows at position `i`; anything else (`..`, absolute paths,
/// other names, a signature anywhere but right after `pinbundle.json`) is refused before any
/// content is read.
fn allowed_path(i: usize, m: &MemberEntry) -> bool {
    if let Some(p) = &m.part {
        return p.index >= 1 && m.path == part_path(&m.digest, p.index);
    }
    match m.path.strip_prefix("blobs/sha256/") {
        Some(hex) => hex == m.digest.hex(),
        None if m.path == SIGNATURE_PATH => i == 1,
        None => matches!(
            m.path.as_str(),
            MANIFEST_PATH | OCI_LAYOUT_PATH | OCI_INDEX_PATH
        ),
    }
}

/// Whether the file ends with the tar end-of-archive: every file but a volume other than the
/// last of its set, so that concatenated volumes make one tar stream (section 8.1).
pub(crate) fn ends_archive(index: &SeekIndex) -> bool {
    index.volume.as_ref().is_none_or(|v| v.index == v.count)
}

/// Checks the index's structure; returns the member lookup table.
fn validate_index(index: &SeekIndex, data_end: u64) -> Result<HashMap<String, usize>, String> {
    if index.format_version != FORMAT_VERSION {
        return Err(format!("format version {}", index.format_version));
    }
    let mut pos = 0u64;
    for (i, f) in index.frames.iter().enumerate() {
        if f.offset != pos {
            return Err(format!("frame {i} starts at {} instead of {pos}", f.offset));
        }
        if f.size > MAX_FRAME_SIZE || f.length > max_frame_len(f.size) || f.length < 8 {
            return Err(format!(
                "frame {i} has implausible sizes ({} → {})",
                f.length, f.size
            ));
        }
        pos = pos
            .checked_add(f.length)
            .ok_or_else(|| format!("frame {i} overflows"))?;
    }
    if pos != data_end {
        return Err(format!(
            "frames end at {pos} but the index frame starts at {data_end}"
        ));
    }
    let Some(first) = index.members.first() else {
        return Err("no members".into());
    };
    if first.path != MANIFEST_PATH {
        return Err(format!(
            "first member is \"{}\", not {MANIFEST_PATH}",
            first.path
        ));
    }
    match &index.volume {
        Some(v) if v.index == 0 || v.index > v.count || v.count > MAX_VOLUMES => {
            return Err(format!("volume {} of {} is out of range", v.index, v.count));
        }
        None if index.members.iter().any(|m| m.part.is_some()) => {
            return Err("a part member in a file that is not a volume".into());
        }
        _ => {}
    }
    let members_end = index.frames.len() - usize::from(ends_archive(index));
    // A blob appears at most once per volume, whole or as one part.
    let mut blobs = std::collections::HashSet::new();
    let mut by_path = HashMap::with_capacity(index.members.len());
    let mut next_frame = 0usize;
    for (i, m) in index.members.iter().enumerate() {
        if !allowed_path(i, m) {
            return Err(format!(
                "member {i} has a path the format does not allow: {:?}",
                m.path
            ));
        }
        if by_path.insert(m.path.clone(), i).is_some() {
            return Err(format!("member \"{}\" appears twice", m.path));
        }
        if m.path.starts_with("blobs/") && !blobs.insert(&m.digest) {
            return Err(format!("blob {} appears twice", m.digest));
        }
        if m.frame != next_frame || m.frames == 0 {
            return Err(format!(
                "member \"{}\" does not start at the next frame",
                m.path
            ));
        }
        let end = m
            .frame
            .checked_add(m.frames)
            .filter(|&e| e <= members_end)
            .ok_or_else(|| format!("member \"{}\" runs past the last data frame", m.path))?;
        let total: u64 = index.frames[m.frame..end].iter().map(|f| f.size).sum();
        let padded = m
            .data_offset
            .checked_add(m.size)
            .map(|n| n.div_ceil(TAR_BLOCK) * TAR_BLOCK);
        // Exactly one tar header before the content: more would be tar entries (a setuid
        // file, a second index.json) that stock `tar -x` extracts and nothing checks.
        if m.data_offset != TAR_BLOCK
            || m.data_offset > index.frames[m.frame].size
            || padded != Some(total)
        {
            return Err(format!("member \"{}\" does not fit its frames", m.path));
        }
        next_frame = end;
    }
    if !ends_archive(index) {
        if next_frame != index.frames.len() {
            return Err("frames follow the last member of a volume that is not the last".into());
        }
    } else if next_frame + 1 != index.frames.len() || index.frames[next_frame].size != 2 * TAR_BLOCK
    {
        return Err("the last frame is not the tar end-of-archive".into());
    }
    Ok(by_path)
}

/// Reusable memory for reading frames: the compressed bytes, the decompressed bytes and a
/// decompression context.
#[derive(Default)]
pub struct FrameBuf {
    raw: Vec<u8>,
    out: Vec<u8>,
    dctx: Option<zstd::bulk::Decompressor<'static>>,
    /// Where a Raw-block frame's content lies in `raw`.
    slices: Vec<std::ops::Range<usize>>,
}

impl FrameBuf {
    /// Puts `out` in place of the buffer frames are decompressed into; returns the old one
    /// (after a read, the frame's bytes).
    pub(crate) fn swap_out(&mut self, out: Vec<u8>) -> Vec<u8> {
        std::mem::replace(&mut self.out, out)
    }
}

/// What [`Bundle::read_frame_keep`] returns: where a Raw-block frame's content lies (or
/// `None`: decompressed), and the buffer holding the frame.
pub(crate) type Kept = (Result<Option<Vec<std::ops::Range<usize>>>, Error>, Vec<u8>);

/// A frame's content: decompressed, or in place in a frame of Raw blocks.
enum Content<'a> {
    Contiguous(&'a [u8]),
    Raw(&'a [u8], &'a [std::ops::Range<usize>]),
}

impl Content<'_> {
    fn len(&self) -> usize {
        match self {
            Content::Contiguous(c) => c.len(),
            Content::Raw(_, slices) => slices.iter().map(|r| r.len()).sum(),
        }
    }

    /// Calls `f` on the pieces of content bytes `from..to`, in order.
    fn pieces(&self, from: usize, to: usize, mut f: impl FnMut(&[u8])) {
        match self {
            Content::Contiguous(c) => f(&c[from..to]),
            Content::Raw(raw, slices) => {
                let mut pos = 0;
                for r in slices.iter() {
                    let (a, b) = (pos.max(from), (pos + r.len()).min(to));
                    if a < b {
                        f(&raw[r.start + a - pos..r.start + b - pos]);
                    }
                    pos += r.len();
                    if pos >= to {
                        break;
                    }
                }
            }
        }
    }
}

/// When `raw` is a zstd frame of Raw blocks in the form writers store it (single segment,
/// 8-byte content size = `size`, content checksum, no dictionary), fills `slices` with where
/// its content lies and returns true. Anything else returns false: the caller decompresses,
/// and zstd judges the frame.
fn raw_blocks(raw: &[u8], size: u64, slices: &mut Vec<std::ops::Range<usize>>) -> bool {
    slices.clear();
    const HEADER: usize = 4 + 1 + 8;
    if raw.len() < HEADER + 3 + 4
        || raw[..4] != super::format::ZSTD_MAGIC.to_le_bytes()
        || raw[4] != 0b1110_0100
    {
        return false;
    }
    let mut fcs = [0u8; 8];
    fcs.copy_from_slice(&raw[5..13]);
    if u64::from_le_bytes(fcs) != size {
        return false;
    }
    let mut pos = HEADER;
    let mut total = 0u64;
    loop {
        let Some(h) = raw.get(pos..pos + 3) else {
            return false;
        };
        let h = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
        let (last, kind, len) = (h & 1 == 1, (h >> 1) & 3, (h >> 3) as usize);
        // Raw blocks only, no larger than zstd's block limit.
        if kind != 0 || len > 128 << 10 || pos + 3 + len > raw.len() {
            return false;
        }
        slices.push(pos + 3..pos + 3 + len);
        total += len as u64;
        pos += 3 + len;
        if last {
            break;
        }
    }
    // Exactly the 4-byte content checksum follows.
    total == size && pos + 4 == raw.len()
}

/// Checks that `raw` is exactly one zstd frame as the format requires (section 2): the zstd
/// magic, a declared content size equal to `size`, the content checksum flag, no dictionary,
/// and nothing after the frame's end (no second or skippable frame hidden in its extent).
fn check_frame_shape(raw: &[u8], size: u64) -> Result<(), String> {
    if raw.len() < 6 || raw[..4] != super::format::ZSTD_MAGIC.to_le_bytes() {
        return Err("not a zstd data frame".into());
    }
    let fhd = raw[4];
    let (fcs_flag, single, reserved, checksum, dict) = (
        fhd >> 6,
        fhd & 0x20 != 0,
        fhd & 0x08 != 0,
        fhd & 0x04 != 0,
        fhd & 0x03,
    );
    if reserved || dict != 0 {
        return Err("frame header has a reserved bit or a dictionary id set".into());
    }
    if !checksum {
        return Err("frame has no content checksum".into());
    }
    if fcs_flag == 0 && !single {
        return Err("frame does not declare its content size".into());
    }
    let at = 5 + usize::from(!single);
    let fcs_len = [1usize, 2, 4, 8][usize::from(fcs_flag)];
    let Some(b) = raw.get(at..at + fcs_len) else {
        return Err("frame header is truncated".into());
    };
    let mut v = [0u8; 8];
    v[..fcs_len].copy_from_slice(b);
    let declared = u64::from_le_bytes(v) + if fcs_len == 2 { 256 } else { 0 };
    if declared != size {
        return Err(format!(
            "frame declares {declared} bytes of content, the index {size}"
        ));
    }
    match zstd::zstd_safe::find_frame_compressed_size(raw) {
        Ok(n) if n == raw.len() => Ok(()),
        Ok(n) => Err(format!(
            "{} extra bytes (another or a skippable zstd frame) follow the one zstd frame its extent may hold",
            raw.len() - n
        )),
        Err(_) => Err("frame's blocks are damaged".into()),
    }
}

/// Streams a member's content, checking each frame as it is read. Errors are
/// [`std::io::Error`]s wrapping a bundle [`Error`]; see [`Bundle::unwrap_io`].
pub struct MemberReader<'a> {
    bundle: &'a Bundle,
    next_frame: usize,
    end_frame: usize,
    frame: FrameBuf,
    /// Decompressed bytes of the current frame in `frame.out`.
    buf_len: usize,
    buf_pos: usize,
    skip: usize,
    remaining: u64,
}

impl Read for MemberReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        while self.buf_pos >= self.buf_len {
            if self.next_frame >= self.end_frame {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "member ends early",
                ));
            }
            self.buf_len = self
                .bundle
                .read_frame_into(self.next_frame, &mut self.frame)
                .map_err(io::Error::other)?
                .len();
            self.next_frame += 1;
            self.buf_pos = self.skip.min(self.buf_len);
            self.skip -= self.buf_pos;
        }
        let avail = &self.frame.out[self.buf_pos..self.buf_len];
        let n = avail.len().min(out.len()).min(self.remaining as usize);
        out[..n].copy_from_slice(&avail[..n]);
        self.buf_pos += n;
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::writer::{compressed_frame, stored_frame};

    fn joined(c: &Content, from: usize, to: usize) -> Vec<u8> {
        let mut v = Vec::new();
        c.pieces(from, to, |p| v.extend_from_slice(p));
        v
    }

    #[test]
    fn raw_block_frames_are_read_in_place() {
        let mut slices = Vec::new();
        for len in [
            0usize,
            1,
            512,
            128 << 10,
            (128 << 10) + 1,
            3 * (128 << 10) + 77,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
            let frame = stored_frame(&data);
            assert!(raw_blocks(&frame, len as u64, &mut slices), "len {len}");
            let c = Content::Raw(&frame, &slices);
            assert_eq!(c.len(), len);
            assert_eq!(joined(&c, 0, len), data);
            if len > 200_000 {
                assert_eq!(joined(&c, 100_000, 200_000), &data[100_000..200_000]);
            }
            // Any other shape is left to zstd.
            assert!(!raw_blocks(&frame, len as u64 + 1, &mut slices));
            assert!(!raw_blocks(
                &frame[..frame.len() - 1],
                len as u64,
                &mut slices
            ));
        }
        let compressed = compressed_frame(&[7u8; 4096], 3).unwrap();
        assert!(!raw_blocks(&compressed, 4096, &mut slices));
    }
}
