//! Writes a bundle as a set of volumes (`NAME.001`, `NAME.002`, …) no larger than a given
//! size, each a complete bundle file of its own (section 8.1 of `bundle-format.md`).
//!
//! Only the last volume ends the tar archive, so the volumes concatenated are one tar stream.
//! Volumes are written directly, one after the other, so the extra disk needed is nothing
//! beyond the volumes themselves. Every volume starts with the same head members
//! (`pinbundle.json`, its signature, `oci-layout`, `index.json`). A blob member's tar header
//! gets a frame of its own, so when the next frame does not fit, the member can be closed as a
//! part (`<hex>.part-NNN`) by rewriting that one fixed-size frame in place, and continued as
//! the next part in the next volume. The seek indexes name the set count, which is known only
//! at the end, so each volume's index and footer are appended when the whole set is written;
//! the space they need is reserved as the volume fills.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tempfile::TempPath;

use super::Error;
use super::format::{
    FOOTER_LEN, FORMAT_VERSION, FrameEntry, MAX_VOLUMES, MemberEntry, PartInfo, SeekIndex,
    VolumeInfo, part_path,
};
use super::writer::{
    Compression, Encoder, TAR_BLOCK, Writeback, WriterOptions, end_of_archive, stored_frame,
    tar_header, trailer, write_frame,
};
use crate::reference::Digest;

/// The FAT32 file size limit: 4 GiB − 1 byte.
pub const FAT32_MAX: u64 = (4 << 30) - 1;

/// The smallest volume size accepted (a volume also holds the head members and its index).
pub const MIN_VOLUME_SIZE: u64 = 64 << 10;

/// A stored frame of one tar header: always this long, so it can be rewritten in place.
const HEADER_FRAME_LEN: u64 = TAR_BLOCK as u64 + 3 + 17;

/// The path of volume `index` (from 1) of the set written to `base`: `base.NNN`.
pub fn volume_path(base: &Path, index: u32) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{index:03}"));
    PathBuf::from(name)
}

/// Parses a volume size: `fat32` (4 GiB − 1 byte) or a number with an optional binary unit
/// (`700M`, `4G`, `4GiB`, `65536`).
pub fn parse_volume_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("fat32") {
        return Ok(FAT32_MAX);
    }
    let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. 700M, 4G or fat32"))?;
    let multiplier: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => return Err(format!("invalid size {text:?}: unknown unit {other:?}")),
    };
    let size = number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))?;
    if size < MIN_VOLUME_SIZE {
        return Err(format!(
            "volume size {size} is too small (at least {MIN_VOLUME_SIZE} bytes)"
        ));
    }
    Ok(size)
}

/// One finished volume.
#[derive(Debug, Clone)]
pub struct WrittenVolume {
    pub path: PathBuf,
    pub size: u64,
    pub index: SeekIndex,
}

/// The head members, encoded once and copied into every volume.
struct Head {
    frames: Vec<(Vec<u8>, u64, u64)>,
    members: Vec<MemberEntry>,
    len: u64,
}

/// A volume being filled.
struct Open {
    out: BufWriter<File>,
    writeback: Writeback,
    tmp: TempPath,
    pos: u64,
    frames: Vec<FrameEntry>,
    members: Vec<MemberEntry>,
    /// Bytes reserved for this volume's index entries so far.
    entries_len: u64,
}

/// A volume whose data is complete; its index and footer are appended by `finish`.
struct Closed {
    tmp: TempPath,
    pos: u64,
    frames: Vec<FrameEntry>,
    members: Vec<MemberEntry>,
}

/// The part of a blob member being written into the current volume.
struct Current {
    /// Index of the member in the current volume.
    member: usize,
    /// Index and file offset of its header frame.
    header_frame: usize,
    header_offset: u64,
    /// 0 while the member is whole; otherwise the part number.
    part: u32,
    /// Offset of this part's first byte in the blob.
    offset: u64,
}

/// Writes a set of volumes to `base.001`, `base.002`, …
pub struct VolumeWriter {
    base: PathBuf,
    dir: PathBuf,
    volume_size: u64,
    enc: Encoder,
    head: Head,
    set: Digest,
    /// The tar mtime (the encoder is lent out while a member is encoded).
    mtime: u64,
    eof: Vec<u8>,
    /// Fixed bytes of every volume's index frame: the skippable frame header, the index's
    /// own JSON around its lists, and the footer.
    trailer_fixed: u64,
    closed: Vec<Closed>,
    open: Option<Open>,
}

/// The most bytes a frame of `size` content bytes can take (zstd's compress bound, and
/// stored frames' block headers).
fn max_frame_len(size: u64) -> u64 {
    size + size / 128 + 1024
}

/// Upper bounds of one entry's bytes in the seek index JSON (with its comma).
fn frame_entry_bound() -> u64 {
    let f = FrameEntry {
        offset: u64::MAX,
        length: u64::MAX,
        size: u64::MAX,
        xxh3: "0".repeat(16),
    };
    serde_json::to_vec(&f).map_or(256, |v| v.len() as u64 + 1)
}

fn member_entry_bound(path_len: usize) -> u64 {
    let m = MemberEntry {
        path: "x".repeat(path_len.max(part_path(&Digest::of(b""), MAX_VOLUMES).len())),
        digest: Digest::of(b""),
        size: u64::MAX,
        frame: usize::MAX,
        frames: usize::MAX,
        data_offset: u64::MAX,
        part: Some(PartInfo {
            index: u32::MAX,
            offset: u64::MAX,
        }),
    };
    serde_json::to_vec(&m).map_or(1024, |v| v.len() as u64 + 1)
}

impl VolumeWriter {
    /// Prepares a set written to `base.NNN`, each at most `volume_size` bytes, every volume
    /// starting with `head` (path, content, compression), the first of which must be
    /// `pinbundle.json`: its sha256 is the set's identity.
    pub fn new(
        base: &Path,
        volume_size: u64,
        mut opts: WriterOptions,
        head: &[(&str, &[u8])],
    ) -> Result<VolumeWriter, Error> {
        let set = head
            .first()
            .map(|(_, bytes)| Digest::of(bytes))
            .ok_or_else(|| Error::Write(std::io::Error::other("a volume set needs a head")))?;
        // Frames must end on tar blocks (a part ends at a frame boundary) and be small enough
        // that a volume holds several of them.
        let frame_cap = (volume_size / 32).max(2 * TAR_BLOCK as u64) as usize;
        opts.frame_size = (opts.frame_size.min(frame_cap) / TAR_BLOCK * TAR_BLOCK).max(TAR_BLOCK);
        let mut enc = Encoder::new(opts);
        let mut frames = Vec::new();
        let mut members = Vec::new();
        let mut len = 0u64;
        for (path, bytes) in head {
            let header = tar_header(path, bytes.len() as u64, enc.opts.mtime)?;
            let first = frames.len();
            let digest = Digest::of(bytes);
            enc.encode(
                path,
                Some(&header),
                *bytes,
                bytes.len() as u64,
                &digest,
                // Stored, so a final head of the same lengths fits the same room.
                Compression::Store,
                |frame, size, xxh3| {
                    len += frame.len() as u64;
                    frames.push((frame.to_vec(), size, xxh3));
                    Ok(())
                },
            )?;
            members.push(MemberEntry {
                path: path.to_string(),
                digest,
                size: bytes.len() as u64,
                frame: first,
                frames: frames.len() - first,
                data_offset: TAR_BLOCK as u64,
                part: None,
            });
        }
        let empty = SeekIndex {
            format_version: FORMAT_VERSION,
            frames: Vec::new(),
            members: Vec::new(),
            volume: Some(VolumeInfo {
                set: set.clone(),
                index: MAX_VOLUMES,
                count: MAX_VOLUMES,
            }),
        };
        let trailer_fixed = serde_json::to_vec(&empty)
            .map_err(|e| Error::Write(std::io::Error::other(e)))?
            .len() as u64
            + 8
            + FOOTER_LEN as u64;
        let eof = end_of_archive(enc.opts.level)?;
        let enc_mtime = enc.opts.mtime;
        let dir = match base.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let w = VolumeWriter {
            base: base.to_path_buf(),
            dir,
            volume_size,
            enc,
            head: Head {
                frames,
                members,
                len,
            },
            set,
            mtime: enc_mtime,
            eof,
            trailer_fixed,
            closed: Vec::new(),
            open: None,
        };
        // A volume must hold its head, a member header, one frame and its index.
        let head_entries: u64 = w
            .head
            .members
            .iter()
            .map(|m| member_entry_bound(m.path.len()))
            .sum::<u64>()
            + w.head.frames.len() as u64 * frame_entry_bound();
        let need = w.head.len
            + head_entries
            + HEADER_FRAME_LEN
            + max_frame_len(w.enc.opts.frame_size as u64)
            + 2 * frame_entry_bound()
            + member_entry_bound(0)
            + w.eof.len() as u64
            + frame_entry_bound()
            + w.trailer_fixed;
        if need > volume_size {
            return Err(Error::VolumeTooSmall {
                size: volume_size,
                needed: need,
            });
        }
        Ok(w)
    }

    /// The set's identity (sha256 of `pinbundle.json`).
    pub fn set(&self) -> &Digest {
        &self.set
    }

    /// Whether `extra` more bytes of frames, plus `entries` more bytes of index entries, still
    /// leave room in the open volume for its end-of-archive frame and index.
    fn fits(&self, open: &Open, extra: u64, entries: u64) -> bool {
        let total = open.pos
            + extra
            + self.eof.len() as u64
            + open.entries_len
            + entries
            + frame_entry_bound()
            + self.trailer_fixed;
        total <= self.volume_size
    }

    fn open_volume(&mut self) -> Result<(), Error> {
        let number = self.closed.len() as u32 + 1;
        if number > MAX_VOLUMES {
            return Err(Error::TooManyVolumes { max: MAX_VOLUMES });
        }
        let name = self
            .base
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (file, tmp) = tempfile::Builder::new()
            .prefix(&format!(".{name}.{number:03}."))
            .suffix(".partial")
            .tempfile_in(&self.dir)
            .map_err(|source| Error::Io {
                path: self.dir.clone(),
                source,
            })?
            .into_parts();
        let writeback = Writeback::new(&file).map_err(|source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        })?;
        let mut open = Open {
            out: BufWriter::with_capacity(1 << 20, file),
            writeback,
            tmp,
            pos: 0,
            frames: Vec::new(),
            members: Vec::new(),
            entries_len: 0,
        };
        for (frame, size, xxh3) in &self.head.frames {
            write_frame(
                &mut open.out,
                &mut open.pos,
                &mut open.frames,
                frame,
                *size,
                *xxh3,
            )?;
            open.entries_len += frame_entry_bound();
        }
        for m in &self.head.members {
            open.members.push(m.clone());
            open.entries_len += member_entry_bound(m.path.len());
        }
        self.open = Some(open);
        Ok(())
    }

    /// Ends the open volume; only the last one ends the tar archive, so that the volumes
    /// concatenated are one tar stream that stock `tar -x` reads to the end.
    fn close_volume(&mut self, last: bool) -> Result<(), Error> {
        let Some(mut open) = self.open.take() else {
            return Ok(());
        };
        if last {
            let eof = &self.eof;
            write_frame(
                &mut open.out,
                &mut open.pos,
                &mut open.frames,
                eof,
                2 * TAR_BLOCK as u64,
                xxhash_rust::xxh3::xxh3_64(eof),
            )?;
        }
        open.out.flush().map_err(Error::Write)?;
        self.closed.push(Closed {
            tmp: open.tmp,
            pos: open.pos,
            frames: open.frames,
            members: open.members,
        });
        Ok(())
    }

    /// Overwrites the head members of every volume with `head` (same paths, same lengths:
    /// see [`super::BundleWriter::rewrite_head`]); the set's identity follows the new
    /// `pinbundle.json`.
    pub fn rewrite_head(&mut self, head: &[(&str, &[u8])]) -> Result<(), Error> {
        if head.len() != self.head.members.len() {
            return Err(super::writer::rewrite_error("the head"));
        }
        let mut frames: Vec<(Vec<u8>, u64, u64)> = Vec::with_capacity(self.head.frames.len());
        for ((path, bytes), m) in head.iter().zip(&self.head.members) {
            if m.path != *path || m.size != bytes.len() as u64 {
                return Err(super::writer::rewrite_error(path));
            }
            let header = tar_header(path, m.size, self.mtime)?;
            self.enc.encode(
                path,
                Some(&header),
                *bytes,
                m.size,
                &Digest::of(bytes),
                Compression::Store,
                |frame, size, xxh3| {
                    frames.push((frame.to_vec(), size, xxh3));
                    Ok(())
                },
            )?;
        }
        let same = frames.len() == self.head.frames.len()
            && frames
                .iter()
                .zip(&self.head.frames)
                .all(|(a, b)| a.0.len() == b.0.len() && a.1 == b.1);
        if !same {
            return Err(super::writer::rewrite_error(head[0].0));
        }
        let digests: Vec<Digest> = head.iter().map(|(_, b)| Digest::of(b)).collect();
        let patch = |file: &File,
                     entries: &mut [FrameEntry],
                     members: &mut [MemberEntry],
                     path: &Path|
         -> Result<(), Error> {
            for ((frame, _, xxh3), e) in frames.iter().zip(entries.iter_mut()) {
                file.write_all_at(frame, e.offset)
                    .map_err(|source| Error::Io {
                        path: path.to_path_buf(),
                        source,
                    })?;
                e.xxh3 = format!("{xxh3:016x}");
            }
            for (m, d) in members.iter_mut().zip(&digests) {
                m.digest = d.clone();
            }
            Ok(())
        };
        for v in &mut self.closed {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&v.tmp)
                .map_err(|source| Error::Io {
                    path: v.tmp.to_path_buf(),
                    source,
                })?;
            patch(&file, &mut v.frames, &mut v.members, &v.tmp)?;
        }
        if let Some(open) = self.open.as_mut() {
            open.out.flush().map_err(Error::Write)?;
            patch(
                open.out.get_ref(),
                &mut open.frames,
                &mut open.members,
                &open.tmp,
            )?;
        }
        for (m, d) in self.head.members.iter_mut().zip(&digests) {
            m.digest = d.clone();
        }
        self.head.frames = frames;
        self.set = digests[0].clone();
        Ok(())
    }

    /// Adds a blob (or any member) of `size` bytes read from `data`, which must hash to
    /// `digest`, cutting it into parts where a volume fills up.
    pub fn add_member(
        &mut self,
        path: &str,
        data: impl Read,
        size: u64,
        digest: &Digest,
        compression: Compression,
    ) -> Result<(), Error> {
        if self.open.is_none() {
            self.open_volume()?;
        }
        let mut done = 0u64; // content bytes written so far
        let mut current: Option<Current> = None;
        let mut enc = std::mem::replace(&mut self.enc, Encoder::new(WriterOptions::default()));
        let member_bound = member_entry_bound(path.len());
        let result = enc.encode(
            path,
            None,
            data,
            size,
            digest,
            compression,
            |frame, content, xxh3| {
                let flen = frame.len() as u64;
                let fe = frame_entry_bound();
                loop {
                    let Some(open) = self.open.as_ref() else {
                        self.open_volume()?;
                        continue;
                    };
                    let fits = match &current {
                        Some(_) => self.fits(open, flen, fe),
                        None => self.fits(open, HEADER_FRAME_LEN + flen, 2 * fe + member_bound),
                    };
                    if fits {
                        break;
                    }
                    let fresh = open.members.len() == self.head.members.len() && current.is_none();
                    let empty_part = current
                        .as_ref()
                        .is_some_and(|c| open.members[c.member].frames == 1);
                    if fresh || empty_part {
                        return Err(Error::VolumeTooSmall {
                            size: self.volume_size,
                            needed: HEADER_FRAME_LEN + flen,
                        });
                    }
                    if let Some(c) = current.as_mut() {
                        // Close this volume's part; the next one starts in the next volume.
                        if c.part == 0 {
                            c.part = 1;
                        }
                        self.end_part(c, digest, done - c.offset)?;
                        c.part += 1;
                        c.offset = done;
                    }
                    self.close_volume(false)?;
                    self.open_volume()?;
                    if let Some(c) = current.as_mut() {
                        self.start_part(c, path, size, digest, member_bound)?;
                    }
                }
                if current.is_none() {
                    let mut c = Current {
                        member: 0,
                        header_frame: 0,
                        header_offset: 0,
                        part: 0,
                        offset: 0,
                    };
                    self.start_part(&mut c, path, size, digest, member_bound)?;
                    current = Some(c);
                }
                let Some(open) = self.open.as_mut() else {
                    return Err(Error::Write(std::io::Error::other("no open volume")));
                };
                write_frame(
                    &mut open.out,
                    &mut open.pos,
                    &mut open.frames,
                    frame,
                    content,
                    xxh3,
                )?;
                open.entries_len += fe;
                open.writeback.advance(open.pos);
                if let Some(c) = &current {
                    open.members[c.member].frames += 1;
                }
                done = (done + content).min(size);
                Ok(())
            },
        );
        self.enc = enc;
        result?;
        if let Some(c) = current.as_mut()
            && c.part > 0
        {
            self.end_part(c, digest, size - c.offset)?;
        }
        Ok(())
    }

    /// Writes the header frame of a member (part 0: whole, as far as is known yet) or of
    /// part `c.part`, with a provisional size, and records the member.
    fn start_part(
        &mut self,
        c: &mut Current,
        path: &str,
        size: u64,
        digest: &Digest,
        member_bound: u64,
    ) -> Result<(), Error> {
        let mtime = self.mtime;
        let Some(open) = self.open.as_mut() else {
            return Err(Error::Write(std::io::Error::other("no open volume")));
        };
        let (member_path, member_size, part) = if c.part == 0 {
            (path.to_string(), size, None)
        } else {
            (
                part_path(digest, c.part),
                size - c.offset,
                Some(PartInfo {
                    index: c.part,
                    offset: c.offset,
                }),
            )
        };
        let header = stored_frame(&tar_header(&member_path, member_size, mtime)?);
        c.header_frame = open.frames.len();
        c.header_offset = open.pos;
        write_frame(
            &mut open.out,
            &mut open.pos,
            &mut open.frames,
            &header,
            TAR_BLOCK as u64,
            xxhash_rust::xxh3::xxh3_64(&header),
        )?;
        c.member = open.members.len();
        open.members.push(MemberEntry {
            path: member_path,
            digest: digest.clone(),
            size: member_size,
            frame: c.header_frame,
            frames: 1,
            data_offset: TAR_BLOCK as u64,
            part,
        });
        open.entries_len += frame_entry_bound() + member_bound;
        Ok(())
    }

    /// Rewrites the header frame of part `c.part` for its final size `len`.
    fn end_part(&mut self, c: &Current, digest: &Digest, len: u64) -> Result<(), Error> {
        let mtime = self.mtime;
        let Some(open) = self.open.as_mut() else {
            return Err(Error::Write(std::io::Error::other("no open volume")));
        };
        let path = part_path(digest, c.part);
        let header = stored_frame(&tar_header(&path, len, mtime)?);
        debug_assert_eq!(header.len() as u64, HEADER_FRAME_LEN);
        open.out.flush().map_err(Error::Write)?;
        open.out
            .get_ref()
            .write_all_at(&header, c.header_offset)
            .map_err(Error::Write)?;
        open.frames[c.header_frame].xxh3 = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&header));
        let m = &mut open.members[c.member];
        m.path = path;
        m.size = len;
        m.part = Some(PartInfo {
            index: c.part,
            offset: c.offset,
        });
        Ok(())
    }

    /// Closes the last volume, appends every volume's index and footer (naming the count),
    /// syncs them and renames them to `base.NNN`. Earlier volumes `base.NNN` beyond the new
    /// count are removed, so a directory never mixes two sets under one name.
    pub fn finish(mut self) -> Result<Vec<WrittenVolume>, Error> {
        if self.open.is_none() && self.closed.is_empty() {
            self.open_volume()?;
        }
        self.close_volume(true)?;
        let count = self.closed.len() as u32;
        let mut done = Vec::with_capacity(self.closed.len());
        let mut staged = Vec::with_capacity(self.closed.len());
        for (i, v) in self.closed.into_iter().enumerate() {
            let index = SeekIndex {
                format_version: FORMAT_VERSION,
                frames: v.frames,
                members: v.members,
                volume: Some(VolumeInfo {
                    set: self.set.clone(),
                    index: i as u32 + 1,
                    count,
                }),
            };
            let tail = trailer(&index, v.pos)?;
            let io_err = |source| Error::Io {
                path: v.tmp.to_path_buf(),
                source,
            };
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(&v.tmp)
                .map_err(io_err)?;
            f.seek(std::io::SeekFrom::Start(v.pos)).map_err(io_err)?;
            f.write_all(&tail).map_err(Error::Write)?;
            f.sync_all().map_err(Error::Write)?;
            std::fs::set_permissions(&v.tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .map_err(io_err)?;
            let size = v.pos + tail.len() as u64;
            staged.push((v.tmp, size, index));
        }
        for (i, (tmp, size, index)) in staged.into_iter().enumerate() {
            let path = volume_path(&self.base, i as u32 + 1);
            tmp.persist(&path).map_err(|e| Error::Io {
                path: path.clone(),
                source: e.error,
            })?;
            done.push(WrittenVolume { path, size, index });
        }
        for stale in count + 1..=MAX_VOLUMES {
            let path = volume_path(&self.base, stale);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(source) => return Err(Error::Io { path, source }),
            }
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_sizes_parse() {
        assert_eq!(parse_volume_size("fat32"), Ok(FAT32_MAX));
        assert_eq!(parse_volume_size("FAT32"), Ok(FAT32_MAX));
        assert_eq!(parse_volume_size("700M"), Ok(700 << 20));
        assert_eq!(parse_volume_size("4G"), Ok(4 << 30));
        assert_eq!(parse_volume_size("65536"), Ok(65536));
        assert!(parse_volume_size("1K").is_err());
        assert!(parse_volume_size("4X").is_err());
        assert!(parse_volume_size("").is_err());
    }

    #[test]
    fn header_frames_have_a_fixed_length() {
        let h = tar_header("blobs/sha256/x", 12345, 0).unwrap();
        assert_eq!(stored_frame(&h).len() as u64, HEADER_FRAME_LEN);
    }

    #[test]
    fn volume_paths_append_three_digits() {
        assert_eq!(
            volume_path(Path::new("/x/a.pinbundle"), 2),
            PathBuf::from("/x/a.pinbundle.002")
        );
    }
}
