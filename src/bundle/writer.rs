//! Writes a bundle: tar members in zstd frames, then the seek index and footer.
//!
//! Every member starts a new frame and is cut into frames of at most `frame_size`
//! decompressed bytes, so readers can verify and serve members in parallel and seek inside
//! large blobs. Already-compressed layers go into "stored" frames (raw zstd blocks, written
//! here without running the compressor); everything else is compressed, frame by frame in
//! parallel, with one fixed single-threaded setting so the output does not depend on the
//! number of workers.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::Digest as _;

use super::Error;
use super::format::{
    DEFAULT_FRAME_SIZE, FOOTER_LEN, FORMAT_VERSION, FrameEntry, INDEX_FRAME_MAGIC, MAX_FRAME_SIZE,
    MemberEntry, SeekIndex, VolumeInfo, ZSTD_MAGIC,
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

/// The most frames [`BundleWriter`] compresses at once (each holds about two frames' size).
const MAX_FRAMES_IN_FLIGHT: usize = 8;

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

/// Streams members into `out` (any writer: an in-memory buffer, a pipe), as one bundle file.
/// Call [`BundleWriter::finish`] to complete it; a writer dropped before that has written an
/// incomplete bundle. [`super::Output`] writes files and volume sets, staged and renamed.
pub struct BundleWriter<W: Write> {
    file: Frames<W>,
    enc: Encoder,
}

impl<W: Write> BundleWriter<W> {
    pub fn new(out: W, opts: WriterOptions) -> Self {
        BundleWriter {
            file: Frames::new(out, None),
            enc: Encoder::new(opts),
        }
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
        add_whole(
            &mut self.file,
            &mut self.enc,
            path,
            data,
            size,
            digest,
            compression,
        )
    }

    /// Writes the tar end-of-archive, the seek index and the footer; returns the output and
    /// the index.
    pub fn finish(mut self) -> Result<(W, SeekIndex), Error> {
        self.file.write_eof(&end_of_archive(self.enc.opts.level)?)?;
        let index = self.file.index(None);
        let tail = trailer(&index, self.file.pos)?;
        let offset = self.file.pos;
        let mut out = self.file.out;
        out.write_all(&tail)
            .and_then(|()| out.flush())
            .map_err(|source| Error::WriteStream { offset, source })?;
        Ok((out, index))
    }
}

/// Adds a whole member to `file`: its tar header leads its first frame.
pub(crate) fn add_whole<W: Write>(
    file: &mut Frames<W>,
    enc: &mut Encoder,
    path: &str,
    data: impl Read,
    size: u64,
    digest: &Digest,
    compression: Compression,
) -> Result<(), Error> {
    let header = tar_header(path, size, enc.opts.mtime)?;
    let first_frame = file.frames.len();
    enc.encode(
        path,
        Some(&header),
        data,
        size,
        digest,
        compression,
        |frame, content, xxh3| file.write_frame(frame, content, xxh3),
    )?;
    file.members.push(MemberEntry {
        path: path.to_string(),
        digest: digest.clone(),
        size,
        frame: first_frame,
        frames: file.frames.len() - first_frame,
        data_offset: TAR_BLOCK as u64,
        part: None,
    });
    Ok(())
}

/// One file's frames as written: the output, its length so far, and what its seek index will
/// list.
pub(crate) struct Frames<W> {
    pub(crate) out: W,
    /// The file the output writes to, for errors (none for a stream).
    pub(crate) path: Option<PathBuf>,
    pub(crate) pos: u64,
    pub(crate) frames: Vec<FrameEntry>,
    pub(crate) members: Vec<MemberEntry>,
    pub(crate) writeback: Option<Writeback>,
}

impl<W: Write> Frames<W> {
    pub(crate) fn new(out: W, path: Option<PathBuf>) -> Frames<W> {
        Frames {
            out,
            path,
            pos: 0,
            frames: Vec::new(),
            members: Vec::new(),
            writeback: None,
        }
    }

    /// An I/O error at `offset` of this file.
    pub(crate) fn error(&self, offset: u64, source: io::Error) -> Error {
        match &self.path {
            Some(path) => Error::Write {
                path: path.clone(),
                offset,
                source,
            },
            None => Error::WriteStream { offset, source },
        }
    }

    /// Writes one frame at the end and records it.
    pub(crate) fn write_frame(&mut self, frame: &[u8], size: u64, xxh3: u64) -> Result<(), Error> {
        if let Err(e) = self.out.write_all(frame) {
            return Err(self.error(self.pos, e));
        }
        self.frames.push(FrameEntry {
            offset: self.pos,
            length: frame.len() as u64,
            size,
            xxh3: format!("{xxh3:016x}"),
        });
        self.pos += frame.len() as u64;
        if let Some(wb) = &mut self.writeback {
            wb.advance(self.pos);
        }
        Ok(())
    }

    /// Writes the tar end-of-archive frame (see [`end_of_archive`]).
    pub(crate) fn write_eof(&mut self, eof: &[u8]) -> Result<(), Error> {
        self.write_frame(eof, 2 * TAR_BLOCK as u64, xxhash_rust::xxh3::xxh3_64(eof))
    }

    /// The seek index of what is written.
    pub(crate) fn index(&self, volume: Option<VolumeInfo>) -> SeekIndex {
        SeekIndex {
            format_version: FORMAT_VERSION,
            frames: self.frames.clone(),
            members: self.members.clone(),
            volume,
        }
    }

    /// Flushes the output.
    pub(crate) fn flush(&mut self) -> Result<(), Error> {
        self.out.flush().map_err(|e| self.error(self.pos, e))
    }
}

/// The head members (`pinbundle.json`, its signature, `oci-layout`, `index.json`) encoded,
/// as they start every file of a bundle: stored frames, so that a final head of the same
/// lengths takes the same room and can be written over the provisional one.
#[derive(Debug, Clone)]
pub(crate) struct EncodedHead {
    /// (frame bytes, decompressed size, XXH3) in order.
    pub(crate) frames: Vec<(Vec<u8>, u64, u64)>,
    pub(crate) members: Vec<MemberEntry>,
}

impl EncodedHead {
    pub(crate) fn encode(enc: &mut Encoder, head: &[(&str, &[u8])]) -> Result<Self, Error> {
        let mut frames = Vec::new();
        let mut members = Vec::new();
        for (path, bytes) in head {
            let size = bytes.len() as u64;
            let header = tar_header(path, size, enc.opts.mtime)?;
            let first = frames.len();
            let digest = Digest::of(bytes);
            enc.encode(
                path,
                Some(&header),
                *bytes,
                size,
                &digest,
                Compression::Store,
                |frame, content, xxh3| {
                    frames.push((frame.to_vec(), content, xxh3));
                    Ok(())
                },
            )?;
            members.push(MemberEntry {
                path: path.to_string(),
                digest,
                size,
                frame: first,
                frames: frames.len() - first,
                data_offset: TAR_BLOCK as u64,
                part: None,
            });
        }
        Ok(EncodedHead { frames, members })
    }

    /// The bytes the head takes.
    pub(crate) fn len(&self) -> u64 {
        self.frames.iter().map(|(f, _, _)| f.len() as u64).sum()
    }

    /// Writes the head at the start of `file`.
    pub(crate) fn write_to<W: Write>(&self, file: &mut Frames<W>) -> Result<(), Error> {
        for (frame, size, xxh3) in &self.frames {
            file.write_frame(frame, *size, *xxh3)?;
        }
        file.members.extend(self.members.iter().cloned());
        Ok(())
    }

    /// Checks that `new` takes exactly the room this head took: the same members with the
    /// same lengths, in frames of the same lengths.
    pub(crate) fn check_room(&self, new: &EncodedHead) -> Result<(), Error> {
        let changed = |member: &str| Error::HeadChanged {
            member: member.to_string(),
        };
        if new.members.len() != self.members.len() {
            return Err(changed("the head"));
        }
        for (a, b) in self.members.iter().zip(&new.members) {
            if a.path != b.path || a.size != b.size || a.frames != b.frames {
                return Err(changed(&b.path));
            }
            let (fa, fb) = (
                &self.frames[a.frame..a.frame + a.frames],
                &new.frames[b.frame..b.frame + b.frames],
            );
            if fa
                .iter()
                .zip(fb)
                .any(|(x, y)| x.0.len() != y.0.len() || x.1 != y.1)
            {
                return Err(changed(&b.path));
            }
        }
        Ok(())
    }

    /// Writes this head over the one at the start of `file` (of the same room: see
    /// [`EncodedHead::check_room`]), and updates the index entries that describe it.
    pub(crate) fn patch(
        &self,
        file: &std::fs::File,
        path: &Path,
        frames: &mut [FrameEntry],
        members: &mut [MemberEntry],
    ) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        for ((frame, _, xxh3), e) in self.frames.iter().zip(frames.iter_mut()) {
            file.write_all_at(frame, e.offset)
                .map_err(|source| Error::Write {
                    path: path.to_path_buf(),
                    offset: e.offset,
                    source,
                })?;
            e.xxh3 = format!("{xxh3:016x}");
        }
        for (m, new) in members.iter_mut().zip(&self.members) {
            m.digest = new.digest.clone();
        }
        Ok(())
    }
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

/// The compressed tar end-of-archive frame (two zero blocks).
pub(crate) fn end_of_archive(level: i32) -> Result<Vec<u8>, Error> {
    compressed_frame(&[0u8; 2 * TAR_BLOCK], level).map_err(|source| Error::Compress {
        member: "the tar end-of-archive".into(),
        source,
    })
}

/// The index's skippable frame: the seek index, then the footer. `data_end` is the file
/// offset where the frame starts (the end of the data frames).
pub(crate) fn trailer(index: &SeekIndex, data_end: u64) -> Result<Vec<u8>, Error> {
    let index_bytes = serde_json::to_vec(index).map_err(Error::EncodeIndex)?;
    // Never write what readers refuse (and what the skippable frame's length cannot say).
    let too_large = || Error::TooLarge {
        what: "the seek index".into(),
        size: index_bytes.len() as u64,
        max: super::format::MAX_INDEX_LEN,
    };
    if index_bytes.len() as u64 > super::format::MAX_INDEX_LEN {
        return Err(too_large());
    }
    let payload_len = u32::try_from(index_bytes.len() + FOOTER_LEN).map_err(|_| too_large())?;
    let footer = super::format::Footer {
        version: FORMAT_VERSION,
        flags: 0,
        index_offset: data_end + 8,
        index_len: index_bytes.len() as u64,
        index_sha256: sha2::Sha256::digest(&index_bytes).into(),
    };
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
        let mut chunker = Chunker {
            path,
            header,
            size,
            remaining: size,
            first: true,
            frame_size: self.opts.frame_size,
        };
        // Frames compressed at once: enough for every core, but never the whole pool (create runs
        // one thread per download job): each frame in flight holds a chunk and a frame buffer
        // (2 × 16 MiB), so memory stays bounded by the cores, not by the jobs or the blob.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let batch = rayon::current_num_threads()
            .min(cores)
            .clamp(1, MAX_FRAMES_IN_FLIGHT)
            .max(2);
        // Chunk and frame buffers live as long as the writer: fresh 16 MiB buffers per frame
        // cost about as much in page faults as hashing them.
        let mut chunks = std::mem::take(&mut self.chunk_pool);
        let mut frames = std::mem::take(&mut self.frame_pool);
        chunks.resize_with(batch, Vec::new);
        frames.resize_with(batch, || (Vec::new(), 0));
        let result = self.encode_chunks(
            &mut chunker,
            &mut data,
            &mut chunks,
            &mut frames,
            compression,
            &mut hasher,
            &mut sink,
        );
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

    /// The loop of [`Encoder::encode`]: read a batch of frame-sized chunks; then hash their
    /// content on one thread while the others encode them; then hand the frames on in order.
    #[allow(clippy::too_many_arguments)]
    fn encode_chunks(
        &self,
        chunker: &mut Chunker<'_>,
        data: &mut impl Read,
        chunks: &mut [Vec<u8>],
        frames: &mut [(Vec<u8>, u64)],
        compression: Compression,
        hasher: &mut sha2::Sha256,
        sink: &mut impl FnMut(&[u8], u64, u64) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let level = self.opts.level;
        loop {
            let content = chunker.read_batch(data, chunks)?;
            let used = content.len();
            if used == 0 {
                return Ok(());
            }
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
            encoded.map_err(|source| Error::Compress {
                member: chunker.path.to_string(),
                source,
            })?;
            for (chunk, (frame, xxh3)) in chunks[..used].iter().zip(&frames[..used]) {
                sink(frame, chunk.len() as u64, *xxh3)?;
            }
            if chunker.remaining == 0 {
                return Ok(());
            }
        }
    }
}

/// Cuts one member's content into frame-sized chunks.
struct Chunker<'a> {
    path: &'a str,
    /// The tar header that leads the first chunk, if any.
    header: Option<&'a [u8; TAR_BLOCK]>,
    size: u64,
    remaining: u64,
    first: bool,
    frame_size: usize,
}

impl Chunker<'_> {
    /// Fills up to `chunks.len()` chunks from `data` (the last one of the member padded to a
    /// tar block); returns the range of member content in each chunk filled. A member of no
    /// bytes still gets one chunk (its header, or nothing).
    fn read_batch(
        &mut self,
        data: &mut impl Read,
        chunks: &mut [Vec<u8>],
    ) -> Result<Vec<std::ops::Range<usize>>, Error> {
        let mut content = Vec::with_capacity(chunks.len());
        for chunk in chunks.iter_mut() {
            if !(self.first || self.remaining > 0) {
                break;
            }
            chunk.clear();
            let mut room = self.frame_size;
            if self.first {
                if let Some(h) = self.header {
                    chunk.extend_from_slice(h);
                    room -= TAR_BLOCK;
                }
                self.first = false;
            }
            let take = self.remaining.min(room as u64) as usize;
            let start = chunk.len();
            chunk.resize(start + take, 0);
            read_exact_or_short(data, &mut chunk[start..]).map_err(|e| match e {
                ReadFail::Short(got) => Error::InputSize {
                    member: self.path.to_string(),
                    expected: self.size,
                    found: self.size - self.remaining + got as u64,
                },
                ReadFail::Io(source) => Error::Input {
                    member: self.path.to_string(),
                    source,
                },
            })?;
            self.remaining -= take as u64;
            if self.remaining == 0 {
                let pad = (TAR_BLOCK - (self.size as usize % TAR_BLOCK)) % TAR_BLOCK;
                chunk.resize(chunk.len() + pad, 0);
            }
            content.push(start..start + take);
        }
        Ok(content)
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
