//! Writes a bundle: tar members in zstd frames, then the seek index and footer.
//!
//! Every member starts a new frame and is cut into frames of at most `frame_size`
//! decompressed bytes, so readers can verify and serve members in parallel and seek inside
//! large blobs. Already-compressed layers go into "stored" frames (raw zstd blocks, written
//! here without running the compressor); everything else is compressed, frame by frame in
//! parallel, with one fixed single-threaded setting so the output does not depend on the
//! number of workers.

use std::io::{self, Read, Write};

use rayon::prelude::*;
use sha2::Digest as _;

use super::Error;
use super::format::{
    DEFAULT_FRAME_SIZE, FOOTER_LEN, FORMAT_VERSION, FrameEntry, INDEX_FRAME_MAGIC, MAX_FRAME_SIZE,
    MemberEntry, SeekIndex, ZSTD_MAGIC,
};
use crate::reference::Digest;

/// How a member's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw zstd blocks: for content that is already compressed (gzip or zstd layers).
    Store,
    /// zstd at the writer's level.
    Zstd,
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Upper bound of a frame's decompressed size (the last frame of a member may carry up to
    /// 511 more bytes of tar padding).
    pub frame_size: usize,
    /// zstd level for compressed members.
    pub level: i32,
    /// The mtime written into every tar header (seconds since the epoch).
    pub mtime: u64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            frame_size: DEFAULT_FRAME_SIZE,
            level: 3,
            mtime: 0,
        }
    }
}

pub(crate) const TAR_BLOCK: usize = 512;
/// zstd's largest block.
const MAX_BLOCK: usize = 128 << 10;

/// Streams members into `out`. Call [`BundleWriter::finish`] to complete the file; a writer
/// dropped before that has written an incomplete bundle (callers write to a temporary file).
pub struct BundleWriter<W: Write> {
    out: W,
    pos: u64,
    enc: Encoder,
    frames: Vec<FrameEntry>,
    members: Vec<MemberEntry>,
    writeback: Option<Writeback>,
}

impl<W: Write> BundleWriter<W> {
    pub fn new(out: W, opts: WriterOptions) -> Self {
        BundleWriter {
            out,
            pos: 0,
            enc: Encoder::new(opts),
            frames: Vec::new(),
            members: Vec::new(),
            writeback: None,
        }
    }

    /// Starts the kernel writing what is written to `file` (the file `out` writes to) as it
    /// goes, so the final fsync does not wait for the whole bundle.
    pub fn with_writeback(mut self, file: &std::fs::File) -> io::Result<Self> {
        self.writeback = Some(Writeback::new(file)?);
        Ok(self)
    }

    /// Adds a member whose content is in memory.
    pub fn add_bytes(
        &mut self,
        path: &str,
        data: &[u8],
        compression: Compression,
    ) -> Result<Digest, Error> {
        let digest = Digest::of(data);
        self.add_member(path, data, data.len() as u64, &digest, compression)?;
        Ok(digest)
    }

    /// Adds a member of `size` bytes read from `data`, which must hash to `digest`: a
    /// mismatch (a damaged cache file, say) is an error, and the output is then unusable.
    pub fn add_member(
        &mut self,
        path: &str,
        data: impl Read,
        size: u64,
        digest: &Digest,
        compression: Compression,
    ) -> Result<(), Error> {
        let header = tar_header(path, size, self.enc.opts.mtime)?;
        let first_frame = self.frames.len();
        let BundleWriter {
            out,
            pos,
            enc,
            frames,
            writeback,
            ..
        } = self;
        enc.encode(
            path,
            Some(&header),
            data,
            size,
            digest,
            compression,
            |frame, content, xxh3| {
                write_frame(out, pos, frames, frame, content, xxh3)?;
                if let Some(wb) = writeback {
                    wb.advance(*pos);
                }
                Ok(())
            },
        )?;
        self.members.push(MemberEntry {
            path: path.to_string(),
            digest: digest.clone(),
            size,
            frame: first_frame,
            frames: self.frames.len() - first_frame,
            data_offset: TAR_BLOCK as u64,
            part: None,
        });
        Ok(())
    }

    /// Writes the tar end-of-archive, the seek index and the footer; returns the output and
    /// the index.
    pub fn finish(mut self) -> Result<(W, SeekIndex), Error> {
        let eof = end_of_archive(self.enc.opts.level)?;
        write_frame(
            &mut self.out,
            &mut self.pos,
            &mut self.frames,
            &eof,
            2 * TAR_BLOCK as u64,
            xxhash_rust::xxh3::xxh3_64(&eof),
        )?;
        let index = SeekIndex {
            format_version: FORMAT_VERSION,
            frames: self.frames,
            members: self.members,
            volume: None,
        };
        self.out
            .write_all(&trailer(&index, self.pos)?)
            .map_err(Error::Write)?;
        self.out.flush().map_err(Error::Write)?;
        Ok((self.out, index))
    }
}

/// Outputs whose bytes already written can be overwritten in place (to fill in the head
/// members once their content is final; see [`BundleWriter::rewrite_head`]).
pub trait Rewrite: Write {
    fn rewrite_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
}

impl Rewrite for io::BufWriter<&std::fs::File> {
    fn rewrite_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.flush()?;
        self.get_ref().write_all_at(bytes, offset)
    }
}

impl Rewrite for io::BufWriter<std::fs::File> {
    fn rewrite_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.flush()?;
        self.get_ref().write_all_at(bytes, offset)
    }
}

impl<W: Rewrite> BundleWriter<W> {
    /// Overwrites the first `head.len()` members, which must have been added with
    /// [`Compression::Store`] and content of the same lengths, with `head`'s content. Stored
    /// frames of equal content lengths have equal lengths, so nothing else moves: `create`
    /// writes a provisional `pinbundle.json` first and the final one when every layer is
    /// measured.
    pub fn rewrite_head(&mut self, head: &[(&str, &[u8])]) -> Result<(), Error> {
        for (i, (path, bytes)) in head.iter().enumerate() {
            let size = bytes.len() as u64;
            let m = self
                .members
                .get(i)
                .filter(|m| m.path == *path && m.size == size)
                .cloned()
                .ok_or_else(|| rewrite_error(path))?;
            let header = tar_header(path, size, self.enc.opts.mtime)?;
            let digest = Digest::of(bytes);
            let (out, frames) = (&mut self.out, &mut self.frames);
            let mut j = m.frame;
            self.enc.encode(
                path,
                Some(&header),
                *bytes,
                size,
                &digest,
                Compression::Store,
                |frame, content, xxh3| {
                    let f = frames
                        .get_mut(j)
                        .filter(|f| f.length == frame.len() as u64 && f.size == content)
                        .ok_or_else(|| rewrite_error(path))?;
                    out.rewrite_at(f.offset, frame).map_err(Error::Write)?;
                    f.xxh3 = format!("{xxh3:016x}");
                    j += 1;
                    Ok(())
                },
            )?;
            if j != m.frame + m.frames {
                return Err(rewrite_error(path));
            }
            self.members[i].digest = digest;
        }
        Ok(())
    }
}

/// A head member's final content does not fill the room its provisional content took.
pub(crate) fn rewrite_error(path: &str) -> Error {
    Error::Write(io::Error::other(format!(
        "{path}: the final content does not have the provisional content's length"
    )))
}

/// Asks the kernel to write a file's pages out as the file grows, instead of all at the
/// final fsync (which, for a bundle of gigabytes that fits the page cache, would wait for all
/// of it). Done with `posix_fadvise(DONTNEED)`, which starts writeback without waiting for
/// it and drops pages already written: the writer never reads them again.
pub(crate) struct Writeback {
    file: std::fs::File,
    /// Bytes before this offset have been handed to writeback.
    done: u64,
}

impl Writeback {
    /// How much to let accumulate before starting writeback, and how much to leave alone at
    /// the end (still in the writer's buffer, or about to be rewritten).
    const STEP: u64 = 32 << 20;
    const LAG: u64 = 4 << 20;

    pub(crate) fn new(file: &std::fs::File) -> io::Result<Writeback> {
        Ok(Writeback {
            file: file.try_clone()?,
            done: 0,
        })
    }

    /// The file has `pos` bytes written (some perhaps still buffered).
    pub(crate) fn advance(&mut self, pos: u64) {
        let upto = pos.saturating_sub(Self::LAG);
        if upto >= self.done + Self::STEP {
            let len = std::num::NonZeroU64::new(upto - self.done);
            // Only a hint: failure changes nothing but timing.
            let _ = rustix::fs::fadvise(&self.file, self.done, len, rustix::fs::Advice::DontNeed);
            self.done = upto;
        }
    }
}

/// Writes one frame at `*pos` and records it.
pub(crate) fn write_frame(
    out: &mut impl Write,
    pos: &mut u64,
    frames: &mut Vec<FrameEntry>,
    frame: &[u8],
    size: u64,
    xxh3: u64,
) -> Result<(), Error> {
    out.write_all(frame).map_err(Error::Write)?;
    frames.push(FrameEntry {
        offset: *pos,
        length: frame.len() as u64,
        size,
        xxh3: format!("{xxh3:016x}"),
    });
    *pos += frame.len() as u64;
    Ok(())
}

/// The compressed tar end-of-archive frame (two zero blocks).
pub(crate) fn end_of_archive(level: i32) -> Result<Vec<u8>, Error> {
    compressed_frame(&[0u8; 2 * TAR_BLOCK], level).map_err(Error::Write)
}

/// The index's skippable frame: the seek index, then the footer. `data_end` is the file
/// offset where the frame starts (the end of the data frames).
pub(crate) fn trailer(index: &SeekIndex, data_end: u64) -> Result<Vec<u8>, Error> {
    let index_bytes = serde_json::to_vec(index).map_err(|e| Error::Write(io::Error::other(e)))?;
    // Never write what readers refuse.
    if index_bytes.len() as u64 > super::format::MAX_INDEX_LEN {
        return Err(Error::TooLarge {
            what: "the seek index".into(),
            size: index_bytes.len() as u64,
            max: super::format::MAX_INDEX_LEN,
        });
    }
    let footer = super::format::Footer {
        version: FORMAT_VERSION,
        flags: 0,
        index_offset: data_end + 8,
        index_len: index_bytes.len() as u64,
        index_sha256: sha2::Sha256::digest(&index_bytes).into(),
    };
    let payload_len = u32::try_from(index_bytes.len() + FOOTER_LEN)
        .map_err(|_| Error::Write(io::Error::other("seek index larger than 4 GiB")))?;
    let mut tail = Vec::with_capacity(8 + payload_len as usize);
    tail.extend_from_slice(&INDEX_FRAME_MAGIC.to_le_bytes());
    tail.extend_from_slice(&payload_len.to_le_bytes());
    tail.extend_from_slice(&index_bytes);
    tail.extend_from_slice(&footer.encode());
    Ok(tail)
}

/// Cuts members into frames and encodes them, in parallel, with reused buffers.
pub(crate) struct Encoder {
    pub(crate) opts: WriterOptions,
    /// Reused chunk buffers (decompressed frame content).
    chunk_pool: Vec<Vec<u8>>,
    /// Reused frame buffers with each frame's XXH3.
    frame_pool: Vec<(Vec<u8>, u64)>,
}

impl Encoder {
    pub(crate) fn new(mut opts: WriterOptions) -> Encoder {
        // Keep the format's reader limit, and room for the tar header in the first frame.
        let max = MAX_FRAME_SIZE as usize - TAR_BLOCK;
        opts.frame_size = opts.frame_size.clamp(2 * TAR_BLOCK, max);
        Encoder {
            opts,
            chunk_pool: Vec::new(),
            frame_pool: Vec::new(),
        }
    }

    /// Reads `size` bytes of member `path` from `data` in frame-sized chunks (the first one
    /// led by `header` when given; the last one padded to a tar block), encodes them and
    /// hands each frame to `sink` in order as (frame bytes, decompressed size, XXH3). The
    /// content must hash to `digest`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode(
        &mut self,
        path: &str,
        header: Option<&[u8; TAR_BLOCK]>,
        mut data: impl Read,
        size: u64,
        digest: &Digest,
        compression: Compression,
        mut sink: impl FnMut(&[u8], u64, u64) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut hasher = sha2::Sha256::new();
        let mut remaining = size;
        let mut first = true;
        let batch = rayon::current_num_threads().max(1) * 2;
        // Chunk and frame buffers live as long as the writer: fresh 16 MiB buffers per frame
        // cost about as much in page faults as hashing them.
        let mut chunks = std::mem::take(&mut self.chunk_pool);
        let mut frames = std::mem::take(&mut self.frame_pool);
        chunks.resize_with(batch, Vec::new);
        frames.resize_with(batch, || (Vec::new(), 0));
        let result = loop {
            // Read a batch of frame-sized chunks; then hash their content on one thread while
            // the others encode them; then hand the frames on in order.
            let mut used = 0;
            let mut content: Vec<std::ops::Range<usize>> = Vec::with_capacity(batch);
            let mut read_error = None;
            while used < batch && (first || remaining > 0) {
                let chunk = &mut chunks[used];
                chunk.clear();
                let mut room = self.opts.frame_size;
                if first {
                    if let Some(h) = header {
                        chunk.extend_from_slice(h);
                        room -= TAR_BLOCK;
                    }
                    first = false;
                }
                let take = remaining.min(room as u64) as usize;
                let start = chunk.len();
                chunk.resize(start + take, 0);
                if let Err(e) = read_exact_or_short(&mut data, &mut chunk[start..]) {
                    read_error = Some(match e {
                        ReadFail::Short(got) => Error::InputSize {
                            member: path.to_string(),
                            expected: size,
                            found: size - remaining + got as u64,
                        },
                        ReadFail::Io(source) => Error::Input {
                            member: path.to_string(),
                            source,
                        },
                    });
                    break;
                }
                remaining -= take as u64;
                if remaining == 0 {
                    let pad = (TAR_BLOCK - (size as usize % TAR_BLOCK)) % TAR_BLOCK;
                    chunk.resize(chunk.len() + pad, 0);
                }
                content.push(start..start + take);
                used += 1;
            }
            if let Some(e) = read_error {
                break Err(e);
            }
            if used == 0 {
                break Ok(());
            }
            let level = self.opts.level;
            let (encoded, ()) = rayon::join(
                || {
                    chunks[..used]
                        .par_iter()
                        .zip(frames[..used].par_iter_mut())
                        .map(|(c, (out, xxh3))| {
                            match compression {
                                Compression::Store => stored_frame_into(c, out),
                                Compression::Zstd => compressed_frame_into(c, level, out)?,
                            }
                            *xxh3 = xxhash_rust::xxh3::xxh3_64(out);
                            Ok(())
                        })
                        .collect::<io::Result<()>>()
                },
                || {
                    for (c, r) in chunks[..used].iter().zip(&content) {
                        hasher.update(&c[r.clone()]);
                    }
                },
            );
            if let Err(e) = encoded {
                break Err(Error::Write(e));
            }
            let mut failed = None;
            for (chunk, (frame, xxh3)) in chunks[..used].iter().zip(&frames[..used]) {
                if let Err(e) = sink(frame, chunk.len() as u64, *xxh3) {
                    failed = Some(e);
                    break;
                }
            }
            if let Some(e) = failed {
                break Err(e);
            }
            if remaining == 0 {
                break Ok(());
            }
        };
        self.chunk_pool = chunks;
        self.frame_pool = frames;
        result?;
        let mut extra = [0u8; 1];
        if data.read(&mut extra).map_err(|source| Error::Input {
            member: path.to_string(),
            source,
        })? != 0
        {
            return Err(Error::InputSize {
                member: path.to_string(),
                expected: size,
                found: size + 1,
            });
        }
        let found = Digest::from_hash(hasher.finalize().into());
        if &found != digest {
            return Err(Error::InputDigest {
                member: path.to_string(),
                expected: digest.clone(),
                found,
            });
        }
        Ok(())
    }
}

enum ReadFail {
    Short(usize),
    Io(io::Error),
}

fn read_exact_or_short(r: &mut impl Read, buf: &mut [u8]) -> Result<(), ReadFail> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(ReadFail::Short(got)),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadFail::Io(e)),
        }
    }
    Ok(())
}

/// A ustar header: fixed owner, mode and mtime so equal inputs give equal bytes.
pub(crate) fn tar_header(path: &str, size: u64, mtime: u64) -> Result<[u8; TAR_BLOCK], Error> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).map_err(|source| Error::Input {
        member: path.to_string(),
        source,
    })?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut out = [0u8; TAR_BLOCK];
    out.copy_from_slice(h.as_bytes());
    Ok(out)
}

/// A zstd frame of raw blocks: single segment, 8-byte content size, content checksum.
pub(crate) fn stored_frame(content: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    stored_frame_into(content, &mut f);
    f
}

/// [`stored_frame`] into a reused buffer.
pub(crate) fn stored_frame_into(content: &[u8], f: &mut Vec<u8>) {
    let blocks = content.len().div_ceil(MAX_BLOCK).max(1);
    f.clear();
    f.reserve(content.len() + 3 * blocks + 17);
    f.extend_from_slice(&ZSTD_MAGIC.to_le_bytes());
    // Frame header descriptor: FCS flag 3 (8 bytes), single segment, checksum, no dictionary.
    f.push(0b1110_0100);
    f.extend_from_slice(&(content.len() as u64).to_le_bytes());
    let mut chunks = content.chunks(MAX_BLOCK).peekable();
    if chunks.peek().is_none() {
        f.extend_from_slice(&[1, 0, 0]); // one empty last raw block
    }
    while let Some(block) = chunks.next() {
        let last = u32::from(chunks.peek().is_none());
        let header = last | ((block.len() as u32) << 3); // block type 0: raw
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.extend_from_slice(block);
    }
    let checksum = xxhash_rust::xxh64::xxh64(content, 0) as u32;
    f.extend_from_slice(&checksum.to_le_bytes());
}

/// A compressed zstd frame with content size and content checksum.
pub(crate) fn compressed_frame(content: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut f = Vec::new();
    compressed_frame_into(content, level, &mut f)?;
    Ok(f)
}

/// [`compressed_frame`] into a reused buffer.
pub(crate) fn compressed_frame_into(content: &[u8], level: i32, f: &mut Vec<u8>) -> io::Result<()> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
    f.clear();
    f.reserve(zstd::zstd_safe::compress_bound(content.len()));
    c.compress_to_buffer(content, f)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_frames_decode_with_stock_zstd_library() {
        for len in [0usize, 1, 511, MAX_BLOCK, MAX_BLOCK + 1, 3 * MAX_BLOCK + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let frame = stored_frame(&data);
            let out = zstd::bulk::decompress(&frame, len).unwrap();
            assert_eq!(out, data, "len {len}");
            let mut bad = frame.clone();
            if len > 0 {
                let i = bad.len() - 5; // last content byte
                bad[i] ^= 0x40;
                assert!(
                    zstd::bulk::decompress(&bad, len).is_err(),
                    "checksum must catch a flip"
                );
            }
        }
    }

    #[test]
    fn compressed_frames_roundtrip() {
        let data = vec![b'a'; 100_000];
        let frame = compressed_frame(&data, 3).unwrap();
        assert!(frame.len() < 1000);
        assert_eq!(zstd::bulk::decompress(&frame, data.len()).unwrap(), data);
    }
}
