//! How a bundle is cut into a set of volumes (`NAME.001`, `NAME.002`, …) no larger than a given
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

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::Error;
use super::format::{
    FOOTER_LEN, FORMAT_VERSION, FrameEntry, MAX_VOLUMES, MemberEntry, PartInfo, SeekIndex,
    VolumeInfo, part_path,
};
use super::output::{Files, Open};
use super::writer::{Compression, EncodedHead, Encoder, TAR_BLOCK, stored_frame, tar_header};
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

/// Named volume sizes: the largest file each medium takes.
pub const VOLUME_PRESETS: &[(&str, u64)] = &[
    ("fat32", FAT32_MAX),
    // Single-layer DVD±R, as makers count it (4.7 GB).
    ("dvd", 4_700_000_000),
    // Dual-layer DVD±R (8.5 GB).
    ("dvd-dl", 8_500_000_000),
    // Single-layer Blu-ray: 12,219,392 sectors of 2048 bytes.
    ("bd25", 25_025_314_816),
];

/// Parses a volume size: a preset of [`VOLUME_PRESETS`] (`fat32`, `dvd`, `dvd-dl`, `bd25`)
/// or a size as [`crate::size::parse_bytes`] reads it (`4.7G` decimal, `4GiB` binary,
/// `65536` bytes); at least [`MIN_VOLUME_SIZE`].
pub fn parse_volume_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let size = match VOLUME_PRESETS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(t))
    {
        Some(&(_, size)) => size,
        None => crate::size::parse_bytes(t).map_err(|e| {
            let names: Vec<&str> = VOLUME_PRESETS.iter().map(|(n, _)| *n).collect();
            format!("{e}; or one of {}", names.join(", "))
        })?,
    };
    if size < MIN_VOLUME_SIZE {
        return Err(format!(
            "volume size {size} bytes is too small (at least {MIN_VOLUME_SIZE} bytes, 64KiB)"
        ));
    }
    Ok(size)
}

/// A volume set's size limits, and the fixed bytes every volume's index frame takes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    volume_size: u64,
    /// Fixed bytes of every volume's index frame: the skippable frame header, the index's
    /// own JSON around its lists, and the footer.
    trailer_fixed: u64,
    eof_len: u64,
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

/// The frame size used in volumes of `volume_size`: frames must end on tar blocks (a part
/// ends at a frame boundary) and be small enough that a volume holds several of them.
pub(super) fn frame_size(frame_size: usize, volume_size: u64) -> usize {
    let frame_cap = (volume_size / 32).max(2 * TAR_BLOCK as u64) as usize;
    (frame_size.min(frame_cap) / TAR_BLOCK * TAR_BLOCK).max(TAR_BLOCK)
}

/// The room the head's index entries take in every volume.
pub(super) fn head_entries_len(head: &EncodedHead) -> u64 {
    head.members
        .iter()
        .map(|m| member_entry_bound(m.path.len()))
        .sum::<u64>()
        + head.frames.len() as u64 * frame_entry_bound()
}

impl Limits {
    /// The limits of volumes of `volume_size` that start with `head` and whose frames hold up
    /// to `frame_size` bytes; an error when such a volume cannot hold its head, a member
    /// header, one frame and its index.
    pub(super) fn new(
        volume_size: u64,
        head: &EncodedHead,
        eof: &[u8],
        frame_size: usize,
    ) -> Result<Limits, Error> {
        let set = head.members[0].digest.clone();
        let empty = SeekIndex {
            format_version: FORMAT_VERSION,
            frames: Vec::new(),
            members: Vec::new(),
            volume: Some(VolumeInfo {
                set,
                index: MAX_VOLUMES,
                count: MAX_VOLUMES,
            }),
        };
        let trailer_fixed = serde_json::to_vec(&empty)
            .map_err(Error::EncodeIndex)?
            .len() as u64
            + 8
            + FOOTER_LEN as u64;
        let limits = Limits {
            volume_size,
            trailer_fixed,
            eof_len: eof.len() as u64,
        };
        let need = head.len()
            + head_entries_len(head)
            + HEADER_FRAME_LEN
            + max_frame_len(frame_size as u64)
            + 2 * frame_entry_bound()
            + member_entry_bound(0)
            + limits.eof_len
            + frame_entry_bound()
            + limits.trailer_fixed;
        if need > volume_size {
            return Err(Error::VolumeTooSmall {
                size: volume_size,
                needed: need,
            });
        }
        Ok(limits)
    }

    /// Whether `extra` more bytes of frames, plus `entries` more bytes of index entries, still
    /// leave room in the open volume for its end-of-archive frame and index.
    fn fits(&self, open: &Open, extra: u64, entries: u64) -> bool {
        let total = open.file.pos
            + extra
            + self.eof_len
            + open.entries_len
            + entries
            + frame_entry_bound()
            + self.trailer_fixed;
        total <= self.volume_size
    }
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

/// What one member being cut into volumes needs to know about itself.
struct Cut<'a> {
    path: &'a str,
    size: u64,
    digest: &'a Digest,
    /// Its index entry's bound.
    member_bound: u64,
    /// The part being written, once its header is.
    current: Option<Current>,
    /// Content bytes written so far.
    done: u64,
}

/// Adds a blob (or any member) of `size` bytes read from `data`, which must hash to
/// `digest`, cutting it into parts where a volume fills up.
#[allow(clippy::too_many_arguments)]
pub(super) fn add_cut(
    enc: &mut Encoder,
    files: &mut Files,
    limits: Limits,
    path: &str,
    data: impl Read,
    size: u64,
    digest: &Digest,
    compression: Compression,
) -> Result<(), Error> {
    let mut cut = Cut {
        path,
        size,
        digest,
        member_bound: member_entry_bound(path.len()),
        current: None,
        done: 0,
    };
    enc.encode(
        path,
        None,
        data,
        size,
        digest,
        compression,
        |frame, content, xxh3| files.put_frame(&limits, &mut cut, frame, content, xxh3),
    )?;
    if let Some(c) = &cut.current
        && c.part > 0
    {
        files.end_part(c, digest, size - c.offset)?;
    }
    Ok(())
}

impl Files {
    /// Writes one frame of the member being cut, first moving on to the next volume (and
    /// the next part) when it does not fit.
    fn put_frame(
        &mut self,
        limits: &Limits,
        cut: &mut Cut<'_>,
        frame: &[u8],
        content: u64,
        xxh3: u64,
    ) -> Result<(), Error> {
        let flen = frame.len() as u64;
        let fe = frame_entry_bound();
        loop {
            let open = &self.open;
            let fits = match &cut.current {
                Some(_) => limits.fits(open, flen, fe),
                None => limits.fits(open, HEADER_FRAME_LEN + flen, 2 * fe + cut.member_bound),
            };
            if fits {
                break;
            }
            let fresh = open.file.members.len() == self.head.members.len() && cut.current.is_none();
            let empty_part = cut
                .current
                .as_ref()
                .is_some_and(|c| open.file.members[c.member].frames == 1);
            if fresh || empty_part {
                return Err(Error::VolumeTooSmall {
                    size: limits.volume_size,
                    needed: HEADER_FRAME_LEN + flen,
                });
            }
            if let Some(c) = cut.current.as_mut() {
                // Close this volume's part; the next one starts in the next volume.
                if c.part == 0 {
                    c.part = 1;
                }
                self.end_part(c, cut.digest, cut.done - c.offset)?;
                c.part += 1;
                c.offset = cut.done;
            }
            self.next_volume()?;
            if let Some(c) = cut.current.as_mut() {
                self.start_part(c, cut.path, cut.size, cut.digest, cut.member_bound)?;
            }
        }
        let c = match &mut cut.current {
            Some(c) => c,
            None => {
                let mut c = Current {
                    member: 0,
                    header_frame: 0,
                    header_offset: 0,
                    part: 0,
                    offset: 0,
                };
                self.start_part(&mut c, cut.path, cut.size, cut.digest, cut.member_bound)?;
                cut.current.insert(c)
            }
        };
        let open = &mut self.open;
        open.file.write_frame(frame, content, xxh3)?;
        open.entries_len += fe;
        open.file.members[c.member].frames += 1;
        cut.done = (cut.done + content).min(cut.size);
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
        let header = stored_frame(&tar_header(&member_path, member_size, self.mtime)?);
        let file = &mut self.open.file;
        c.header_frame = file.frames.len();
        c.header_offset = file.pos;
        file.write_frame(
            &header,
            TAR_BLOCK as u64,
            xxhash_rust::xxh3::xxh3_64(&header),
        )?;
        c.member = file.members.len();
        file.members.push(MemberEntry {
            path: member_path,
            digest: digest.clone(),
            size: member_size,
            frame: c.header_frame,
            frames: 1,
            data_offset: TAR_BLOCK as u64,
            part,
        });
        self.open.entries_len += frame_entry_bound() + member_bound;
        Ok(())
    }

    /// Rewrites the header frame of part `c.part` for its final size `len`.
    fn end_part(&mut self, c: &Current, digest: &Digest, len: u64) -> Result<(), Error> {
        let path = part_path(digest, c.part);
        let header = stored_frame(&tar_header(&path, len, self.mtime)?);
        debug_assert_eq!(header.len() as u64, HEADER_FRAME_LEN);
        let file = &mut self.open.file;
        file.flush()?;
        file.out
            .get_ref()
            .write_all_at(&header, c.header_offset)
            .map_err(|e| file.error(c.header_offset, e))?;
        file.frames[c.header_frame].xxh3 = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&header));
        let m = &mut file.members[c.member];
        m.path = path;
        m.size = len;
        m.part = Some(PartInfo {
            index: c.part,
            offset: c.offset,
        });
        Ok(())
    }
}

/// Removes volumes `base.NNN` after the `count` just written (left by an earlier, longer
/// set), up to the first that does not exist.
pub(super) fn remove_stale(base: &Path, count: u32) -> Result<(), Error> {
    for stale in count + 1..=MAX_VOLUMES {
        let path = volume_path(base, stale);
        match fs_err::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(source) => {
                return Err(Error::Remove {
                    path,
                    source: crate::atomic::os_error(source),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_sizes_parse() {
        assert_eq!(parse_volume_size("fat32"), Ok(FAT32_MAX));
        assert_eq!(parse_volume_size("FAT32"), Ok(FAT32_MAX));
        assert_eq!(parse_volume_size("dvd"), Ok(4_700_000_000));
        assert_eq!(parse_volume_size("dvd-dl"), Ok(8_500_000_000));
        assert_eq!(parse_volume_size("bd25"), Ok(25_025_314_816));
        assert_eq!(parse_volume_size("4.7G"), Ok(4_700_000_000));
        assert_eq!(parse_volume_size("700M"), Ok(700_000_000));
        assert_eq!(parse_volume_size("700MiB"), Ok(700 << 20));
        assert_eq!(parse_volume_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_volume_size("65536"), Ok(65536));
        // Below the minimum.
        assert!(parse_volume_size("64K").unwrap_err().contains("too small"));
        assert_eq!(parse_volume_size("64KiB"), Ok(MIN_VOLUME_SIZE));
        let err = parse_volume_size("4X").unwrap_err();
        assert!(
            err.contains("unknown unit") && err.contains("dvd-dl"),
            "{err}"
        );
        assert!(parse_volume_size("").is_err());
        assert!(parse_volume_size("dvd2").is_err());
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
