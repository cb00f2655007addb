//! Stage-and-rename: a file appears under its name complete and durable, or not at all.
//!
//! The content goes to a temporary file (by default beside the final name, `.NAME.XXXXXX.partial`),
//! which is given its mode, synced and renamed into place; then the directory is synced so
//! the rename itself survives a crash. A staged file dropped before that is removed, so an
//! error or a panic leaves nothing behind (a killed process may leave the temporary file, never
//! a half-written file under the final name).

use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use tempfile::TempPath;

/// What failed, and on which path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot create a temporary file in {}", dir.display())]
    Create {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot rename {} to {}", from.display(), to.display())]
    Rename {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot sync the directory {}", dir.display())]
    SyncDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The path the failure concerns: the directory, the temporary file or the final name.
    pub fn path(&self) -> &Path {
        match self {
            Error::Create { dir, .. } | Error::SyncDir { dir, .. } => dir,
            Error::Write { path, .. } => path,
            Error::Rename { to, .. } => to,
        }
    }

    /// The I/O error underneath.
    pub fn into_io(self) -> io::Error {
        match self {
            Error::Create { source, .. }
            | Error::Write { source, .. }
            | Error::Rename { source, .. }
            | Error::SyncDir { source, .. } => source,
        }
    }
}

/// How to stage a file for `dest`: where, under which temporary name, with which final mode.
#[derive(Debug, Clone)]
pub struct Stage {
    dest: PathBuf,
    dir: Option<PathBuf>,
    prefix: Option<String>,
    suffix: String,
    mode: u32,
}

impl Stage {
    /// A file for `dest`, staged in `dest`'s directory as `.NAME.XXXXXX.partial`, mode 0644
    /// (temporary files are created 0600; what pinbundle writes is meant to be read by
    /// whoever carries or reads it).
    pub fn new(dest: impl Into<PathBuf>) -> Stage {
        Stage {
            dest: dest.into(),
            dir: None,
            prefix: None,
            suffix: ".partial".into(),
            mode: 0o644,
        }
    }

    /// Stage in `dir` instead (on the same file system as `dest`, so the rename is atomic).
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Stage {
        self.dir = Some(dir.into());
        self
    }

    /// The temporary name's start (default `.NAME.`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Stage {
        self.prefix = Some(prefix.into());
        self
    }

    /// The temporary name's end (default `.partial`).
    pub fn suffix(mut self, suffix: impl Into<String>) -> Stage {
        self.suffix = suffix.into();
        self
    }

    /// The final file's mode.
    pub fn mode(mut self, mode: u32) -> Stage {
        self.mode = mode;
        self
    }

    /// Creates the temporary file; returns it and the handle to write it with.
    pub fn create(self) -> Result<(Staged, File), Error> {
        let dir = self.dir.unwrap_or_else(|| parent_dir(&self.dest));
        let prefix = self.prefix.unwrap_or_else(|| {
            let name = self
                .dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!(".{name}.")
        });
        let (file, tmp) = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(&self.suffix)
            .tempfile_in(&dir)
            .map_err(|source| Error::Create {
                dir: dir.clone(),
                source,
            })?
            .into_parts();
        // Held until the rename or the drop (on a second descriptor of the same open file, so
        // closing the writer's does not release it): a later run removes only temporary
        // files nobody holds ([`remove_abandoned`]). A file system without flock still works.
        let lock = file.try_clone().ok().filter(|l| {
            rustix::fs::flock(l, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
        });
        Ok((
            Staged {
                tmp,
                dest: self.dest,
                mode: self.mode,
                lock,
            },
            file,
        ))
    }
}

/// A temporary file that becomes `dest` on [`Staged::commit`]; removed when dropped before.
#[derive(Debug)]
pub struct Staged {
    tmp: TempPath,
    dest: PathBuf,
    mode: u32,
    lock: Option<File>,
}

impl Staged {
    /// The temporary file's path.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The final name.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Opens the temporary file again for writing (to patch bytes already written).
    pub fn reopen(&self) -> Result<File, Error> {
        fs_err::OpenOptions::new()
            .write(true)
            .open(&self.tmp)
            .map(fs_err::File::into_parts)
            .map(|(f, _)| f)
            .map_err(|source| self.write_error(os_error(source)))
    }

    /// An I/O error on the temporary file.
    pub fn write_error(&self, source: io::Error) -> Error {
        Error::Write {
            path: self.tmp.to_path_buf(),
            source,
        }
    }

    /// Gives the file its mode and syncs it: `file` is the handle it was written with, closed
    /// here. What remains is the rename.
    ///
    /// A file system that cannot hold a mode (FAT32 and exFAT refuse a chmod with EPERM,
    /// files there take the mount's fmask) does not fail the file: [`Sealed::mode_refused`]
    /// says so.
    pub fn seal(self, file: File) -> Result<Sealed, Error> {
        let mode_refused = match file.set_permissions(std::fs::Permissions::from_mode(self.mode)) {
            Ok(()) => None,
            Err(e) if cannot_hold_mode(&e) => Some(self.mode),
            Err(e) => return Err(self.write_error(e)),
        };
        file.sync_all().map_err(|source| self.write_error(source))?;
        Ok(Sealed {
            tmp: self.tmp,
            dest: self.dest,
            mode_refused,
            _lock: self.lock,
        })
    }

    /// Seals the file, renames it into place and syncs the directory.
    pub fn commit(self, file: File) -> Result<(), Error> {
        let dir = parent_dir(&self.dest);
        self.seal(file)?.rename()?;
        sync_dir(&dir)
    }
}

/// A complete, synced temporary file waiting for its rename; removed when dropped.
#[derive(Debug)]
pub struct Sealed {
    tmp: TempPath,
    dest: PathBuf,
    mode_refused: Option<u32>,
    _lock: Option<File>,
}

impl Sealed {
    /// The mode the file system refused to set, if it did (the file keeps the one the file
    /// system gives it).
    pub fn mode_refused(&self) -> Option<u32> {
        self.mode_refused
    }

    /// Renames the file into place (replacing what was there). The directory still needs a
    /// [`sync_dir`] for the new name to survive a crash.
    pub fn rename(self) -> Result<PathBuf, Error> {
        let from = self.tmp.to_path_buf();
        self.tmp.persist(&self.dest).map_err(|e| Error::Rename {
            from,
            to: self.dest.clone(),
            source: e.error,
        })?;
        Ok(self.dest)
    }
}

/// Whether a failed chmod means the file system cannot store a mode at all (vfat and exfat
/// answer EPERM to a mode they cannot represent; others ENOTSUP), not a fault.
pub fn cannot_hold_mode(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(rustix::io::Errno::from_raw_os_error),
        // On Linux EOPNOTSUPP is ENOTSUP.
        Some(rustix::io::Errno::PERM | rustix::io::Errno::NOTSUP)
    )
}

/// Removes the temporary files an earlier run left for `dest` (`.NAME.XXXXXX.partial`) or,
/// when writing volumes, for `dest.NNN` (`.NAME.NNN.XXXXXX.partial`) — a run killed before it
/// could clean up (SIGKILL, a power cut). One a running process holds locked is left alone.
/// Best effort; returns what was removed.
pub fn remove_abandoned(dest: &Path) -> Vec<PathBuf> {
    let Some(name) = dest.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Vec::new();
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = fs_err::read_dir(parent_dir(dest)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Some(middle) = file_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".partial"))
        else {
            continue;
        };
        // tempfile's six random characters, after a volume number or not.
        let random = match middle.split_once('.') {
            Some((n, r)) if n.len() == 3 && n.bytes().all(|b| b.is_ascii_digit()) => r,
            Some(_) => continue,
            None => middle,
        };
        if random.len() != 6 || !random.bytes().all(|b| b.is_ascii_alphanumeric()) {
            continue;
        }
        let path = e.path();
        let unheld = fs_err::OpenOptions::new()
            .read(true)
            .open(&path)
            .is_ok_and(|f| {
                rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
            });
        if unheld && e.file_type().is_ok_and(|t| t.is_file()) && fs_err::remove_file(&path).is_ok()
        {
            removed.push(path);
        }
    }
    removed
}

/// Syncs directory `dir`, so renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs_err::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::SyncDir {
            dir: dir.to_path_buf(),
            source: os_error(source),
        })
}

/// The directory a relative or absolute `path` lies in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `fs_err` puts the path into the error's text; errors that name the path already keep
/// only the operating system's error from it.
pub fn os_error(e: io::Error) -> io::Error {
    let code = e
        .get_ref()
        .and_then(|inner| inner.source())
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error);
    code.map_or(e, io::Error::from_raw_os_error)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs_err::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn nothing_is_at_the_final_name_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.pinbundle");
        let (staged, mut file) = Stage::new(&dest).create().unwrap();
        let tmp_name = staged
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(tmp_name.starts_with(".out.pinbundle.") && tmp_name.ends_with(".partial"));
        file.write_all(b"content").unwrap();
        assert!(!dest.exists());
        let sealed = staged.seal(file).unwrap();
        assert!(!dest.exists(), "sealed is not yet renamed");
        assert_eq!(sealed.rename().unwrap(), dest);
        assert_eq!(fs_err::read(&dest).unwrap(), b"content");
        let mode = fs_err::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(names(dir.path()), ["out.pinbundle"]);
    }

    #[test]
    fn commit_replaces_and_a_dropped_stage_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        fs_err::write(&dest, b"old").unwrap();
        let (staged, mut file) = Stage::new(&dest).create().unwrap();
        file.write_all(b"half").unwrap();
        drop((staged, file));
        assert_eq!(names(dir.path()), ["f"]);
        assert_eq!(fs_err::read(&dest).unwrap(), b"old");
        let (staged, file) = Stage::new(&dest).create().unwrap();
        drop(staged.seal(file).unwrap());
        assert_eq!(names(dir.path()), ["f"], "a dropped sealed file is removed");
        let (staged, mut file) = Stage::new(&dest).mode(0o600).create().unwrap();
        file.write_all(b"new").unwrap();
        staged.commit(file).unwrap();
        assert_eq!(fs_err::read(&dest).unwrap(), b"new");
        let mode = fs_err::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_mode_the_file_system_cannot_hold_is_not_an_error() {
        for errno in [rustix::io::Errno::PERM, rustix::io::Errno::NOTSUP] {
            let e = io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(cannot_hold_mode(&e), "{e}");
        }
        for errno in [rustix::io::Errno::IO, rustix::io::Errno::NOSPC] {
            let e = io::Error::from_raw_os_error(errno.raw_os_error());
            assert!(!cannot_hold_mode(&e), "{e}");
        }
        assert!(!cannot_hold_mode(&io::Error::other("x")));
    }

    #[test]
    fn abandoned_temporary_files_are_removed_but_not_held_ones() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b.pinbundle");
        let (held, _file) = Stage::new(&dest).create().unwrap();
        let (held_volume, _volume) = Stage::new(dir.path().join("b.pinbundle.002"))
            .create()
            .unwrap();
        // What a killed run leaves: its files, no longer locked by anyone.
        let abandoned = [
            ".b.pinbundle.Ab3xY9.partial",
            ".b.pinbundle.001.zz99QQ.partial",
        ];
        let others = [
            ".b.pinbundle.x.partial",
            ".b.pinbundle.other.Ab3xY9.partial",
            ".c.pinbundle.Ab3xY9.partial",
            "b.pinbundle",
        ];
        for name in abandoned.iter().chain(&others) {
            fs_err::write(dir.path().join(name), b"x").unwrap();
        }
        let mut removed = remove_abandoned(&dest);
        removed.sort();
        let mut expected: Vec<PathBuf> = abandoned.iter().map(|n| dir.path().join(n)).collect();
        expected.sort();
        assert_eq!(removed, expected);
        assert!(held.path().exists() && held_volume.path().exists());
        for name in others {
            assert!(dir.path().join(name).exists(), "{name}");
        }
        // Once a run drops its staged file, nothing is left to sweep.
        drop(held);
        assert!(remove_abandoned(&dest).is_empty());
    }

    #[test]
    fn staging_elsewhere_and_errors_name_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        fs_err::create_dir(&sub).unwrap();
        let dest = sub.join("f");
        let (staged, file) = Stage::new(&dest)
            .in_dir(dir.path())
            .prefix(".x-")
            .suffix("")
            .create()
            .unwrap();
        assert_eq!(staged.path().parent(), Some(dir.path()));
        assert!(
            names(&sub).is_empty(),
            "nothing inside the target's directory"
        );
        staged.commit(file).unwrap();
        assert_eq!(names(&sub), ["f"]);
        let missing = dir.path().join("missing").join("f");
        let e = Stage::new(&missing).create().unwrap_err();
        assert_eq!(e.path(), dir.path().join("missing"));
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
