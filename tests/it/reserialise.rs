//! A re-serialiser for bundles, as an attacker who controls every byte but cannot sign would
//! write one: decode a bundle (footer → seek index → frames), let a case change its structure
//! (frames, members, tar headers, seek-index fields), then encode it with every checksum that
//! is not a secret recomputed: each frame's XXH3 and offsets, zstd content checksums of frames
//! it (re-)encodes, the seek index's sha256 and the footer. Only the signature stays as it was.
//!
//! No panics on any input (the fuzz target `bundle_struct` includes this file): decoding
//! returns `Err` for what it cannot take apart.

use pinbundle::bundle::format::{
    FOOTER_LEN, Footer, FrameEntry, INDEX_FRAME_MAGIC, MemberEntry, SeekIndex, ZSTD_MAGIC,
};
use pinbundle::reference::Digest;

/// The largest frame content this decoder takes (the format's own limit).
const MAX_DECODE: u64 = 64 << 20;
/// A tar block.
pub const BLOCK: usize = 512;

/// One data frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The compressed bytes as they are to be written; `None`: encode `content` anew.
    pub raw: Option<Vec<u8>>,
    /// The decompressed bytes (empty for a frame given only as `raw` with `size`).
    pub content: Vec<u8>,
    /// The `size` the seek index states.
    pub size: u64,
    /// How to encode `content` when `raw` is `None`: raw blocks, or zstd level 3.
    pub stored: bool,
}

impl Frame {
    /// A frame to be encoded from `content`.
    pub fn new(content: Vec<u8>, stored: bool) -> Frame {
        Frame {
            raw: None,
            size: content.len() as u64,
            content,
            stored,
        }
    }

    /// Replaces the content (the frame is encoded anew, size follows).
    pub fn set_content(&mut self, content: Vec<u8>) {
        self.raw = None;
        self.size = content.len() as u64;
        self.content = content;
    }

    /// The bytes written for this frame.
    pub fn bytes(&self) -> Vec<u8> {
        match &self.raw {
            Some(r) => r.clone(),
            None if self.stored => stored_frame(&self.content, true, true),
            None => zstd_frame(&self.content, true, true),
        }
    }

    /// Whether the compressed bytes are a single-segment frame of raw blocks with checksum.
    pub fn is_stored(&self) -> bool {
        match &self.raw {
            Some(r) => r.len() > 4 && r[4] == 0b1110_0100,
            None => self.stored,
        }
    }
}

/// A bundle taken apart.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub frames: Vec<Frame>,
    /// The seek index; its `frames` are rewritten from [`Decoded::frames`] by `encode`.
    pub index: SeekIndex,
    pub footer: Footer,
}

impl Decoded {
    /// Takes `bytes` apart. Checks only what it needs to (not the checksums).
    pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
        if bytes.len() < FOOTER_LEN + 8 {
            return Err("too short".into());
        }
        let mut fb = [0u8; FOOTER_LEN];
        fb.copy_from_slice(&bytes[bytes.len() - FOOTER_LEN..]);
        let footer = Footer::decode(&fb).ok_or("no footer")?;
        let start = usize::try_from(footer.index_offset).map_err(|e| e.to_string())?;
        let len = usize::try_from(footer.index_len).map_err(|e| e.to_string())?;
        let end = start.checked_add(len).ok_or("index overflows")?;
        if start < 8 || end > bytes.len() {
            return Err("index outside the file".into());
        }
        let index: SeekIndex =
            serde_json::from_slice(&bytes[start..end]).map_err(|e| e.to_string())?;
        let mut frames = Vec::with_capacity(index.frames.len());
        for f in &index.frames {
            let s = usize::try_from(f.offset).map_err(|e| e.to_string())?;
            let e = s
                .checked_add(usize::try_from(f.length).map_err(|e| e.to_string())?)
                .ok_or("frame overflows")?;
            if e > start - 8 || f.size > MAX_DECODE {
                return Err("frame outside the data or too large".into());
            }
            let raw = bytes[s..e].to_vec();
            let content =
                zstd::bulk::decompress(&raw, f.size as usize).map_err(|e| e.to_string())?;
            frames.push(Frame {
                stored: raw.len() > 4 && raw[4] == 0b1110_0100,
                raw: Some(raw),
                content,
                size: f.size,
            });
        }
        Ok(Decoded {
            frames,
            index,
            footer,
        })
    }

    /// Writes the bundle: frames in order, then a seek index describing them (offsets,
    /// lengths, XXH3 recomputed; `size` as each frame states) in its skippable frame, then a
    /// footer with the index's sha256.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut index = self.index.clone();
        index.frames = Vec::with_capacity(self.frames.len());
        for f in &self.frames {
            let b = f.bytes();
            index.frames.push(FrameEntry {
                offset: out.len() as u64,
                length: b.len() as u64,
                size: f.size,
                xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&b)),
            });
            out.extend_from_slice(&b);
        }
        let ib = serde_json::to_vec(&index).unwrap_or_default();
        out.extend_from_slice(&INDEX_FRAME_MAGIC.to_le_bytes());
        out.extend_from_slice(&((ib.len() + FOOTER_LEN) as u32).to_le_bytes());
        let index_offset = out.len() as u64;
        out.extend_from_slice(&ib);
        let f = Footer {
            index_offset,
            index_len: ib.len() as u64,
            index_sha256: sha256(&ib),
            ..self.footer.clone()
        };
        out.extend_from_slice(&f.encode());
        out
    }

    /// The member at `path`.
    pub fn member(&self, path: &str) -> Option<usize> {
        self.index.members.iter().position(|m| m.path == path)
    }

    /// The frames of member `mi` (clamped to what exists).
    fn frame_range(&self, mi: usize) -> std::ops::Range<usize> {
        let m = &self.index.members[mi];
        let s = m.frame.min(self.frames.len());
        s..m.frame.saturating_add(m.frames).min(self.frames.len())
    }

    /// Member `mi`'s decompressed bytes: its frames' contents joined.
    fn joined(&self, mi: usize) -> Vec<u8> {
        self.frames[self.frame_range(mi)]
            .iter()
            .flat_map(|f| f.content.iter().copied())
            .collect()
    }

    /// Member `mi`'s content as the index places it (empty where it does not fit).
    pub fn content(&self, mi: usize) -> Vec<u8> {
        let m = &self.index.members[mi];
        let j = self.joined(mi);
        let s = m.data_offset as usize;
        s.checked_add(m.size as usize)
            .and_then(|e| j.get(s..e))
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    /// Member `mi`'s tar header: the 512 bytes before its content.
    pub fn header(&self, mi: usize) -> Option<[u8; BLOCK]> {
        let m = &self.index.members[mi];
        let j = self.joined(mi);
        let s = (m.data_offset as usize).checked_sub(BLOCK)?;
        let mut h = [0u8; BLOCK];
        h.copy_from_slice(j.get(s..s + BLOCK)?);
        Some(h)
    }

    /// Replaces member `mi`'s frames by new ones holding `header`, `content` and tar padding,
    /// cut at `frame_size` (a multiple of 512); a member whose first frame held only its header
    /// (how volumes write blobs) keeps that shape. Sets `size`, `frame`s and `dataOffset` 512;
    /// the digest is left to the caller.
    pub fn rewrite_member(
        &mut self,
        mi: usize,
        header: [u8; BLOCK],
        content: &[u8],
        frame_size: usize,
        stored: bool,
    ) {
        let range = self.frame_range(mi);
        let header_frame = range.len() > 1 && self.frames[range.start].size == BLOCK as u64;
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(content);
        bytes.resize(bytes.len().div_ceil(BLOCK) * BLOCK, 0);
        let frame_size = (frame_size / BLOCK).max(1) * BLOCK;
        let mut new = Vec::new();
        let mut rest = &bytes[..];
        if header_frame && !content.is_empty() {
            new.push(Frame::new(rest[..BLOCK].to_vec(), stored));
            rest = &rest[BLOCK..];
        }
        for c in rest.chunks(frame_size) {
            new.push(Frame::new(c.to_vec(), stored));
        }
        let m = &mut self.index.members[mi];
        m.size = content.len() as u64;
        m.data_offset = BLOCK as u64;
        m.frame = range.start;
        m.frames = new.len();
        self.splice_frames(mi, range, new);
    }

    /// Replaces the frames `range` (those of member `mi`) by `new`, shifting the members after.
    fn splice_frames(&mut self, mi: usize, range: std::ops::Range<usize>, new: Vec<Frame>) {
        let (old, n) = (range.len(), new.len());
        let at = range.start;
        self.frames.splice(range, new);
        for (i, m) in self.index.members.iter_mut().enumerate() {
            if i != mi && m.frame >= at + old {
                m.frame = m.frame - old + n;
            }
        }
    }

    /// Inserts a member with its frames before member `before` (or before the end-of-archive
    /// frame when `before` is the member count).
    pub fn insert_member(&mut self, before: usize, mut entry: MemberEntry, frames: Vec<Frame>) {
        let at = match self.index.members.get(before) {
            Some(m) => m.frame,
            None => self.index.members.last().map_or(0, |m| m.frame + m.frames),
        };
        let n = frames.len();
        for m in &mut self.index.members[before..] {
            m.frame += n;
        }
        entry.frame = at;
        entry.frames = n;
        self.frames.splice(at..at, frames);
        self.index.members.insert(before, entry);
    }

    /// Sets member `mi`'s digest to the sha256 of its content (what an attacker does for
    /// every member but the signed ones).
    pub fn redigest(&mut self, mi: usize) {
        let c = self.content(mi);
        self.index.members[mi].digest = Digest::of(&c);
    }

    /// Replaces `pinbundle.json` (member 0) with `bytes`: frames, digest, and a volume's set id.
    pub fn set_manifest(&mut self, bytes: &[u8]) {
        let Some(h) = self.header(0) else { return };
        let h = retarget_header(&h, "pinbundle.json", bytes.len() as u64);
        self.rewrite_member(0, h, bytes, 16 << 20, true);
        self.redigest(0);
        let d = self.index.members[0].digest.clone();
        if let Some(v) = &mut self.index.volume {
            v.set = d;
        }
    }
}

/// `template` (a canonical header from the bundle) with another path and size, checksum
/// recomputed.
pub fn retarget_header(template: &[u8; BLOCK], path: &str, size: u64) -> [u8; BLOCK] {
    let mut h = tar::Header::from_byte_slice(template).clone();
    let name = &mut h.as_old_mut().name;
    name.fill(0);
    let p = path.as_bytes();
    let n = p.len().min(name.len());
    name[..n].copy_from_slice(&p[..n]);
    h.set_size(size);
    h.set_cksum();
    let mut out = [0u8; BLOCK];
    out.copy_from_slice(h.as_bytes());
    out
}

/// A tar entry (header and padded content) that stock `tar -x` would apply: `mode` as given,
/// owner root.
pub fn tar_entry(path: &str, content: &[u8], mode: u32) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    let _ = h.set_path(path);
    h.set_size(content.len() as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    out
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(b).into()
}

/// A zstd frame of raw blocks holding `content`, optionally without the content size
/// (then with a window descriptor) or without the content checksum.
pub fn stored_frame(content: &[u8], content_size: bool, checksum: bool) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&ZSTD_MAGIC.to_le_bytes());
    let ck = if checksum { 0b100 } else { 0 };
    if content_size {
        // FCS 8 bytes, single segment.
        f.push(0b1110_0000 | ck);
        f.extend_from_slice(&(content.len() as u64).to_le_bytes());
    } else {
        // No FCS, window 2^(10+17) = 128 MiB (≥ any block).
        f.push(ck);
        f.push(17 << 3);
    }
    let mut chunks = content.chunks(128 << 10).peekable();
    if chunks.peek().is_none() {
        f.extend_from_slice(&[1, 0, 0]);
    }
    while let Some(block) = chunks.next() {
        let last = u32::from(chunks.peek().is_none());
        f.extend_from_slice(&(last | ((block.len() as u32) << 3)).to_le_bytes()[..3]);
        f.extend_from_slice(block);
    }
    if checksum {
        f.extend_from_slice(&(xxhash_rust::xxh64::xxh64(content, 0) as u32).to_le_bytes());
    }
    f
}

/// A compressed zstd frame (level 3) of `content`, with or without content size / checksum.
pub fn zstd_frame(content: &[u8], content_size: bool, checksum: bool) -> Vec<u8> {
    use zstd::zstd_safe::CParameter;
    let Ok(mut c) = zstd::bulk::Compressor::new(3) else {
        return Vec::new();
    };
    let _ = c.set_parameter(CParameter::ChecksumFlag(checksum));
    let _ = c.set_parameter(CParameter::ContentSizeFlag(content_size));
    c.compress(content).unwrap_or_default()
}

/// A skippable frame (magic 0x184D2A50 + `nibble`) carrying `payload`.
pub fn skippable_frame(nibble: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = (0x184D_2A50u32 | u32::from(nibble & 0xF))
        .to_le_bytes()
        .to_vec();
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}
