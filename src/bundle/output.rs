//! One output for a bundle: one file, or a set of volumes (`NAME.001`, …), each file staged
//! beside its final name and renamed into place only when the whole output is complete.
//!
//! A single file is a set of one volume without volume fields: both start with the same head
//! members, written over in place once their content is final ([`Output::rewrite_head`]),
//! and both end with the tar end-of-archive, the seek index and the footer. They differ only
//! in how a member is added: whole, its tar header in its first frame (a file), or cut into
//! parts where a volume fills up (volumes: see [`super::volumes`]).

use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::Error;
use super::format::{MAX_VOLUMES, MemberEntry, SeekIndex, VolumeInfo};
use super::volumes::{self, Limits};
use super::writer::{
    Compression, EncodedHead, Encoder, Frames, Writeback, WriterOptions, add_whole, end_of_archive,
    trailer,
};
use crate::atomic::{Sealed, Stage, Staged};
use crate::reference::Digest;

/// Room for a `pinbundle.json` written before some of its numbers are known.
///
/// `create` writes a provisional `pinbundle.json` first (unknown sizes as `0`) and the final
/// one when every layer is measured. Both are padded with spaces and a final newline (JSON
/// allows trailing whitespace) to one length, so the final head takes exactly the room the
/// provisional one took and nothing after it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadReservation {
    len: usize,
}

impl HeadReservation {
    /// Room for `provisional`, in which each of `growing` numbers written as `0` may grow to
    /// 20 digits (the most a `u64` takes).
    pub fn new(provisional: &[u8], growing: usize) -> HeadReservation {
        HeadReservation {
            len: provisional.len() + 19 * growing + 1,
        }
    }

    /// `json` padded to the reserved length.
    pub fn fill(&self, json: &[u8]) -> Result<Vec<u8>, Error> {
        if json.len() >= self.len {
            return Err(Error::HeadOverflow {
                len: json.len(),
                reserved: self.len,
            });
        }
        let mut out = Vec::with_capacity(self.len);
        out.extend_from_slice(json);
        out.resize(self.len - 1, b' ');
        out.push(b'\n');
        Ok(out)
    }
}

/// One file written.
#[derive(Debug, Clone)]
pub struct WrittenFile {
    pub path: PathBuf,
    pub size: u64,
    pub index: SeekIndex,
    /// The mode the file system refused to give the file (FAT32 and exFAT hold none: files
    /// there take the mount's fmask); `None` when it was set.
    pub mode_refused: Option<u32>,
}

/// What [`Output::finish`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The bundle file, or the volumes in order.
    pub files: Vec<WrittenFile>,
    /// The set's identity (the sha256 of `pinbundle.json`) when written as volumes.
    pub set: Option<Digest>,
}

impl Written {
    /// The bytes written, in all files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// An output whose first file is staged, waiting for its head: see [`Output::stage`].
#[derive(Debug)]
pub struct PendingOutput {
    base: PathBuf,
    volume_size: Option<u64>,
    first: (Staged, File),
}

/// A bundle being written: one file at `path`, or volumes `path.NNN` of at most a given size.
pub struct Output {
    enc: Encoder,
    files: Files,
}

/// Everything of an [`Output`] but its encoder (which is lent to encode into these).
pub(super) struct Files {
    pub(super) base: PathBuf,
    /// `None` for a single file.
    pub(super) limits: Option<Limits>,
    pub(super) head: EncodedHead,
    /// The tar mtime.
    pub(super) mtime: u64,
    pub(super) eof: Vec<u8>,
    pub(super) closed: Vec<Closed>,
    /// The file being filled; there always is one until `finish`.
    pub(super) open: Open,
}

/// A file being filled.
pub(super) struct Open {
    pub(super) staged: Staged,
    pub(super) file: Frames<BufWriter<File>>,
    /// Bytes reserved for this volume's index entries so far (volumes only).
    pub(super) entries_len: u64,
}

/// A file whose data is complete; its index and footer are appended by `finish`.
pub(super) struct Closed {
    staged: Staged,
    pos: u64,
    frames: Vec<super::format::FrameEntry>,
    members: Vec<MemberEntry>,
}

impl Output {
    /// Stages the first file of an output at `path` (the bundle file, or with `volume_size`
    /// the first of the volumes `path.NNN`), so a run fails before any other work when the
    /// output cannot be written there. [`PendingOutput::start`] writes the head.
    pub fn stage(path: &Path, volume_size: Option<u64>) -> Result<PendingOutput, Error> {
        let dest = match volume_size {
            None => path.to_path_buf(),
            Some(_) => volumes::volume_path(path, 1),
        };
        Ok(PendingOutput {
            base: path.to_path_buf(),
            volume_size,
            first: Stage::new(dest).create()?,
        })
    }

    /// [`Output::stage`], then [`PendingOutput::start`].
    pub fn create(
        path: &Path,
        volume_size: Option<u64>,
        opts: WriterOptions,
        head: &[(&str, &[u8])],
    ) -> Result<Output, Error> {
        Output::stage(path, volume_size)?.start(opts, head)
    }

    /// Adds a member (a blob) of `size` bytes read from `data`, which must hash to `digest`:
    /// a mismatch (a damaged cache file, say) is an error, and the output is then unusable.
    pub fn add_member(
        &mut self,
        path: &str,
        data: impl Read,
        size: u64,
        digest: &Digest,
        compression: Compression,
    ) -> Result<(), Error> {
        let Output { enc, files } = self;
        match files.limits {
            None => add_whole(
                &mut files.open.file,
                enc,
                path,
                data,
                size,
                digest,
                compression,
            ),
            Some(limits) => {
                volumes::add_cut(enc, files, limits, path, data, size, digest, compression)
            }
        }
    }

    /// Overwrites the head members of every file with `head`: the same paths, and content of
    /// the same lengths (see [`HeadReservation`]), so nothing else moves. The set's identity
    /// follows the new `pinbundle.json`.
    pub fn rewrite_head(&mut self, head: &[(&str, &[u8])]) -> Result<(), Error> {
        let new = EncodedHead::encode(&mut self.enc, head)?;
        let files = &mut self.files;
        files.head.check_room(&new)?;
        for v in &mut files.closed {
            let file = v.staged.reopen()?;
            new.patch(&file, v.staged.path(), &mut v.frames, &mut v.members)?;
        }
        let open = &mut files.open;
        open.file.flush()?;
        new.patch(
            open.file.out.get_ref(),
            open.staged.path(),
            &mut open.file.frames,
            &mut open.file.members,
        )?;
        files.head = new;
        Ok(())
    }

    /// Ends the archive in the last file, appends every file's seek index and footer (for
    /// volumes naming the count), syncs the files and renames them into place. For volumes,
    /// earlier volumes `path.NNN` beyond the new count are removed, so a directory never
    /// mixes two sets under one name.
    pub fn finish(self) -> Result<Written, Error> {
        let mut files = self.files;
        files.closed.push(files.open.close(Some(&files.eof))?);
        let count = files.closed.len() as u32;
        let set = files.limits.map(|_| files.head.members[0].digest.clone());
        let mut sealed: Vec<(Sealed, WrittenFile)> = Vec::with_capacity(files.closed.len());
        for (i, v) in files.closed.into_iter().enumerate() {
            let volume = set.as_ref().map(|set| VolumeInfo {
                set: set.clone(),
                index: i as u32 + 1,
                count,
            });
            sealed.push(v.seal(volume)?);
        }
        let mut written = Vec::with_capacity(sealed.len());
        for (s, mut w) in sealed {
            w.mode_refused = s.mode_refused();
            w.path = s.rename()?;
            written.push(w);
        }
        if set.is_some() {
            volumes::remove_stale(&files.base, count)?;
        }
        // The files are complete and synced; a file system that cannot sync a directory
        // (some network ones) should not fail a finished bundle.
        let _ = crate::atomic::sync_dir(&crate::atomic::parent_dir(&files.base));
        Ok(Written {
            files: written,
            set,
        })
    }
}

impl PendingOutput {
    /// Writes `head` (path, content), the first of which must be `pinbundle.json` (its
    /// sha256 names a volume set), at the start of the first file. Head members are stored,
    /// not compressed, so a final head of the same lengths fits the same room.
    pub fn start(self, mut opts: WriterOptions, head: &[(&str, &[u8])]) -> Result<Output, Error> {
        if head.is_empty() {
            return Err(Error::NoHead);
        }
        if let Some(size) = self.volume_size {
            opts.frame_size = volumes::frame_size(opts.frame_size, size);
        }
        let mut enc = Encoder::new(opts);
        let encoded = EncodedHead::encode(&mut enc, head)?;
        let eof = end_of_archive(enc.opts.level)?;
        let limits = match self.volume_size {
            None => None,
            Some(size) => Some(Limits::new(size, &encoded, &eof, enc.opts.frame_size)?),
        };
        let (staged, file) = self.first;
        let open = Open::start(&encoded, staged, file)?;
        let files = Files {
            base: self.base,
            limits,
            head: encoded,
            mtime: enc.opts.mtime,
            eof,
            closed: Vec::new(),
            open,
        };
        Ok(Output { enc, files })
    }
}

impl Files {
    /// Closes the open volume and opens the next one (volumes only).
    pub(super) fn next_volume(&mut self) -> Result<(), Error> {
        let number = self.closed.len() as u32 + 2;
        if number > MAX_VOLUMES {
            return Err(Error::TooManyVolumes { max: MAX_VOLUMES });
        }
        let (staged, file) = Stage::new(volumes::volume_path(&self.base, number)).create()?;
        let next = Open::start(&self.head, staged, file)?;
        let done = std::mem::replace(&mut self.open, next);
        self.closed.push(done.close(None)?);
        Ok(())
    }
}

impl Open {
    /// Starts file `staged` (written with `file`) with `head`.
    fn start(head: &EncodedHead, staged: Staged, file: File) -> Result<Open, Error> {
        let writeback = Writeback::new(&file).map_err(|e| staged.write_error(e))?;
        let mut frames = Frames::new(
            BufWriter::with_capacity(1 << 20, file),
            Some(staged.path().to_path_buf()),
        );
        frames.writeback = Some(writeback);
        head.write_to(&mut frames)?;
        Ok(Open {
            entries_len: volumes::head_entries_len(head),
            file: frames,
            staged,
        })
    }

    /// Ends the file's data; only the last one ends the tar archive (`eof`), so that volumes
    /// concatenated are one tar stream that stock `tar -x` reads to the end.
    fn close(self, eof: Option<&[u8]>) -> Result<Closed, Error> {
        let mut file = self.file;
        if let Some(eof) = eof {
            file.write_eof(eof)?;
        }
        file.flush()?;
        Ok(Closed {
            staged: self.staged,
            pos: file.pos,
            frames: file.frames,
            members: file.members,
        })
    }
}

impl Closed {
    /// Appends the seek index (naming `volume` for a volume) and the footer, and syncs the
    /// file.
    fn seal(self, volume: Option<VolumeInfo>) -> Result<(Sealed, WrittenFile), Error> {
        let index = SeekIndex {
            format_version: super::format::FORMAT_VERSION,
            frames: self.frames,
            members: self.members,
            volume,
        };
        let tail = trailer(&index, self.pos)?;
        let mut file = self.staged.reopen()?;
        file.seek(std::io::SeekFrom::Start(self.pos))
            .and_then(|_| file.write_all(&tail))
            .map_err(|source| Error::Write {
                path: self.staged.path().to_path_buf(),
                offset: self.pos,
                source,
            })?;
        let written = WrittenFile {
            path: self.staged.dest().to_path_buf(),
            size: self.pos + tail.len() as u64,
            index,
            mode_refused: None,
        };
        Ok((self.staged.seal(file)?, written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::BundleWriter;

    #[test]
    fn a_reservation_pads_to_one_length_and_refuses_more() {
        let r = HeadReservation::new(b"{\"n\":0}", 2);
        let a = r.fill(b"{\"n\":0}").unwrap();
        let b = r.fill(b"{\"n\":18446744073709551615}").unwrap();
        assert_eq!(a.len(), b.len());
        assert!(a.ends_with(b" \n") && b.ends_with(b"\n"));
        let too_long = vec![b'x'; a.len()];
        assert!(matches!(r.fill(&too_long), Err(Error::HeadOverflow { .. })));
    }

    #[test]
    fn a_single_file_output_is_a_stream_bundle_staged_and_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b.pinbundle");
        let head: Vec<(&str, &[u8])> = vec![("pinbundle.json", b"{}\n"), ("oci-layout", b"{}")];
        let blob = vec![7u8; 70_000];
        let d = Digest::of(&blob);
        let opts = WriterOptions {
            frame_size: 16 << 10,
            ..WriterOptions::default()
        };
        let mut w = BundleWriter::new(Vec::new(), opts.clone());
        for (p, b) in &head {
            w.add_bytes(p, b, Compression::Store).unwrap();
        }
        w.add_member(
            &d.layout_path(),
            &blob[..],
            blob.len() as u64,
            &d,
            Compression::Zstd,
        )
        .unwrap();
        let (expected, _) = w.finish().unwrap();

        let mut out = Output::create(&dest, None, opts, &head).unwrap();
        out.add_member(
            &d.layout_path(),
            &blob[..],
            blob.len() as u64,
            &d,
            Compression::Zstd,
        )
        .unwrap();
        assert!(!dest.exists(), "nothing under the name before finish");
        out.rewrite_head(&head).unwrap();
        let written = out.finish().unwrap();
        assert!(written.set.is_none());
        assert_eq!(written.files.len(), 1);
        assert_eq!(written.size(), expected.len() as u64);
        assert_eq!(fs_err::read(&dest).unwrap(), expected);
        let names: Vec<_> = fs_err::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
    }

    #[test]
    fn a_head_of_another_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let head: Vec<(&str, &[u8])> = vec![("pinbundle.json", b"{}\n")];
        let mut out =
            Output::create(&dir.path().join("b"), None, WriterOptions::default(), &head).unwrap();
        let e = out
            .rewrite_head(&[("pinbundle.json", b"{ }\n")])
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("pinbundle.json: the final content"),
            "{e}"
        );
        drop(out);
        assert_eq!(fs_err::read_dir(dir.path()).unwrap().count(), 0);
    }
}
