//! The content-addressed blob cache that `create` fills from registries and writes bundles
//! from. This module is the one owner of its layout:
//!
//! - `<root>/blobs/sha256/<hex>`: a blob, renamed into place only after its size and sha256
//!   were verified, so a file of the right size there is a verified blob;
//! - `<root>/blobs/sha256/<hex>.partial`: a download in progress, `flock`ed by its fetcher,
//!   resumed by the next one ([`Staged`]);
//! - `<root>/meta/<hex>.size`: a layer's measured uncompressed size.
//!
//! Errors name the file. The synchronous calls use `fs_err`, whose messages carry the path;
//! the asynchronous ones (downloads) return [`IoError`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::reference::Digest;

/// A partial cache file this old is removed; one for a blob this run does not need, after
/// [`STALE_UNNEEDED_PARTIAL`].
pub const STALE_PARTIAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// See [`STALE_PARTIAL`].
pub const STALE_UNNEEDED_PARTIAL: Duration = Duration::from_secs(24 * 3600);

/// The suffix of a download in progress.
const PARTIAL: &str = ".partial";

/// An I/O error on a cache file, naming it.
#[derive(Debug, thiserror::Error)]
#[error("i/o error on {path}")]
pub struct IoError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// `|source| IoError { path, source }`, for `map_err`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IoError + '_ {
    move |source| IoError {
        path: path.to_path_buf(),
        source,
    }
}

/// A blob cache rooted at a directory.
#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
    blobs: PathBuf,
}

impl BlobCache {
    /// The cache at `root`, creating its blob directory.
    pub fn open(root: &Path) -> std::io::Result<BlobCache> {
        let blobs = root.join("blobs").join("sha256");
        fs_err::create_dir_all(&blobs)?;
        Ok(BlobCache {
            root: root.to_path_buf(),
            blobs,
        })
    }

    /// Where blob `digest` is (or will be) kept.
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// Whether the cache holds blob `digest` of `size` bytes completely. Only a verified
    /// download is renamed into place, so the right size means a verified blob (and the bundle
    /// writer hashes it again as it copies it).
    pub fn contains(&self, digest: &Digest, size: u64) -> bool {
        fs_err::metadata(self.path_of(digest)).is_ok_and(|m| m.len() == size)
    }

    /// Removes blob `digest`, which turned out damaged: it must not poison the next run.
    pub fn evict(&self, digest: &Digest) {
        let _ = fs_err::remove_file(self.path_of(digest));
    }

    fn size_memo(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("meta")
            .join(format!("{}.size", digest.hex()))
    }

    /// The uncompressed size remembered for layer `digest`, if any (and readable).
    pub fn remembered_size(&self, digest: &Digest) -> Option<u64> {
        crate::input::read_regular(&self.size_memo(digest), 64)
            .ok()
            .and_then(|s| String::from_utf8(s).ok())
            .and_then(|s| s.trim().parse().ok())
    }

    /// Remembers layer `digest`'s uncompressed size (written aside, then renamed).
    pub fn remember_size(&self, digest: &Digest, size: u64) -> std::io::Result<()> {
        let memo = self.size_memo(digest);
        let meta = self.root.join("meta");
        fs_err::create_dir_all(&meta)?;
        let tmp = meta.join(format!(".{}.size.tmp", digest.hex()));
        fs_err::write(&tmp, size.to_string())?;
        fs_err::rename(&tmp, &memo)
    }

    /// Removes partial downloads nobody will resume: older than [`STALE_PARTIAL`], or older
    /// than [`STALE_UNNEEDED_PARTIAL`] and not of one of `needed`. One locked by a running
    /// fetch is left alone. Best effort: what cannot be read is left as it is.
    pub fn sweep_partials<'a>(&self, needed: impl IntoIterator<Item = &'a Digest>) {
        let needed: HashSet<String> = needed
            .into_iter()
            .map(|d| format!("{}{PARTIAL}", d.hex()))
            .collect();
        let Ok(entries) = fs_err::read_dir(&self.blobs) else {
            return;
        };
        let now = SystemTime::now();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(PARTIAL) {
                continue;
            }
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            let stale =
                age > STALE_PARTIAL || (age > STALE_UNNEEDED_PARTIAL && !needed.contains(&name));
            if !stale {
                continue;
            }
            let Ok(file) = fs_err::File::open(e.path()) else {
                continue;
            };
            if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .is_ok()
            {
                let _ = fs_err::remove_file(e.path());
            }
        }
    }
}

/// A blob on its way into the cache: bytes go to `<dest>.partial` (locked against other
/// fetchers) and are hashed as they are written; only [`Verified::commit`] renames the file
/// to `dest`, and only [`Staged::verify`] gives a [`Verified`].
pub struct Staged {
    file: tokio::fs::File,
    path: PathBuf,
    dest: PathBuf,
    hasher: sha2::Sha256,
    /// Bytes on disk (and hashed).
    len: u64,
}

/// A [`Staged`] blob whose bytes matched the expected digest.
pub struct Verified(Staged);

/// A [`Staged`] blob whose bytes did not match: what they hash to, and the staged file (to
/// restart or discard).
pub struct Mismatch {
    pub staged: Box<Staged>,
    pub found: Digest,
}

impl Staged {
    /// Opens (or resumes) the partial file of `dest`, a blob of `size` bytes, waiting for
    /// another fetcher's lock. `None` when `dest` exists, before or after the wait: only a
    /// verified rename can have put it there. What an earlier run left is kept (and hashed)
    /// unless it is longer than `size`.
    pub async fn open(dest: &Path, digest: &Digest, size: u64) -> Result<Option<Staged>, IoError> {
        let mut name = dest
            .file_name()
            .map_or_else(|| digest.hex().into(), |n| n.to_os_string());
        name.push(PARTIAL);
        let path = dest.with_file_name(name);
        if tokio::fs::try_exists(dest).await.map_err(io(dest))? {
            return Ok(None);
        }
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .await
            .map_err(io(&path))?;
        lock_exclusive(&file).await.map_err(io(&path))?;
        if tokio::fs::try_exists(dest).await.map_err(io(dest))? {
            // Another fetcher finished while this one waited for the lock; drop the empty
            // partial this open may have created.
            if file.metadata().await.map_err(io(&path))?.len() == 0 {
                let _ = tokio::fs::remove_file(&path).await;
            }
            return Ok(None);
        }
        let len = file.metadata().await.map_err(io(&path))?.len();
        let mut staged = Staged {
            file,
            path,
            dest: dest.to_path_buf(),
            hasher: sha2::Sha256::new(),
            len,
        };
        if len > size {
            staged.restart().await?;
        } else if len > 0 {
            hash_file(&mut staged.file, &mut staged.hasher)
                .await
                .map_err(io(&staged.path))?;
        }
        Ok(Some(staged))
    }

    /// The partial file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many bytes are staged.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops what is staged, to start again from byte 0.
    pub async fn restart(&mut self) -> Result<(), IoError> {
        let path = &self.path;
        self.file.set_len(0).await.map_err(io(path))?;
        self.file
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(io(path))?;
        self.hasher = sha2::Sha256::new();
        self.len = 0;
        Ok(())
    }

    /// Appends `bytes`.
    pub async fn append(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        self.hasher.update(bytes);
        self.file.write_all(bytes).await.map_err(io(&self.path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Checks what is staged against `expected`.
    pub fn verify(mut self, expected: &Digest) -> Result<Verified, Mismatch> {
        let found = Digest::from_hash(std::mem::take(&mut self.hasher).finalize().into());
        if found == *expected {
            Ok(Verified(self))
        } else {
            Err(Mismatch {
                staged: Box::new(self),
                found,
            })
        }
    }

    /// Removes the partial file: what a peer sent is of no use.
    pub async fn discard(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

impl Verified {
    /// Renames the verified file into place.
    pub async fn commit(self) -> Result<(), IoError> {
        let Staged {
            mut file,
            path,
            dest,
            ..
        } = self.0;
        file.flush().await.map_err(io(&path))?;
        // No fsync: forcing every blob to disk doubled `create`'s time. A blob a crash left
        // short or zeroed behind its name is caught when the bundle writer hashes it again,
        // which also evicts it.
        tokio::fs::rename(&path, &dest).await.map_err(io(&dest))
    }
}

/// Hash the whole file from the start; leaves the position at the end.
async fn hash_file(file: &mut tokio::fs::File, hasher: &mut sha2::Sha256) -> std::io::Result<()> {
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// Take an exclusive `flock` on the partial file, waiting for another fetcher to finish.
async fn lock_exclusive(file: &tokio::fs::File) -> std::io::Result<()> {
    use rustix::fs::{FlockOperation, flock};
    loop {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> (tempfile::TempDir, BlobCache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        (dir, cache)
    }

    fn age(path: &Path, by: Duration) {
        let f = fs_err::File::options().write(true).open(path).unwrap();
        f.file().set_modified(SystemTime::now() - by).unwrap();
    }

    #[test]
    fn layout_contains_and_evict() {
        let (dir, cache) = cache();
        let d = Digest::of(b"blob");
        assert_eq!(
            cache.path_of(&d),
            dir.path().join("blobs/sha256").join(d.hex())
        );
        assert!(!cache.contains(&d, 4));
        fs_err::write(cache.path_of(&d), b"blo").unwrap();
        assert!(!cache.contains(&d, 4), "a short file is not the blob");
        fs_err::write(cache.path_of(&d), b"blob").unwrap();
        assert!(cache.contains(&d, 4));
        cache.evict(&d);
        assert!(!cache.path_of(&d).exists());
    }

    #[test]
    fn sizes_are_remembered() {
        let (dir, cache) = cache();
        let d = Digest::of(b"layer");
        assert_eq!(cache.remembered_size(&d), None);
        cache.remember_size(&d, 12345).unwrap();
        assert_eq!(cache.remembered_size(&d), Some(12345));
        let memo = dir.path().join("meta").join(format!("{}.size", d.hex()));
        fs_err::write(&memo, b"not a number").unwrap();
        assert_eq!(cache.remembered_size(&d), None);
    }

    #[test]
    fn sweep_removes_stale_partials_but_not_locked_or_fresh_ones() {
        let (_dir, cache) = cache();
        let [needed, unneeded, old, locked, fresh] =
            [b"a", b"b", b"c", b"d", b"e"].map(|b| Digest::of(b));
        let partial = |d: &Digest| cache.path_of(d).with_extension("partial");
        for d in [&needed, &unneeded, &old, &locked, &fresh] {
            fs_err::write(partial(d), b"x").unwrap();
        }
        let day_and_more = STALE_UNNEEDED_PARTIAL + Duration::from_secs(60);
        for d in [&needed, &unneeded, &locked] {
            age(&partial(d), day_and_more);
        }
        age(&partial(&old), STALE_PARTIAL + Duration::from_secs(60));
        let held = fs_err::File::open(partial(&locked)).unwrap();
        rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
        cache.sweep_partials([&needed, &old]);
        assert!(partial(&needed).exists(), "a needed partial is resumed");
        assert!(!partial(&unneeded).exists());
        assert!(!partial(&old).exists(), "too old even if needed");
        assert!(
            partial(&locked).exists(),
            "a running fetch keeps its partial"
        );
        assert!(partial(&fresh).exists());
    }

    #[tokio::test]
    async fn staged_blobs_commit_only_when_verified() {
        let (_dir, cache) = cache();
        let blob = b"hello, cache";
        let d = Digest::of(blob);
        let dest = cache.path_of(&d);
        let mut s = Staged::open(&dest, &d, blob.len() as u64)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.path(), dest.with_extension("partial"));
        s.append(&blob[..5]).await.unwrap();
        drop(s);
        // A later run resumes the partial, hashing what it holds.
        let mut s = Staged::open(&dest, &d, blob.len() as u64)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.len(), 5);
        s.append(&blob[5..]).await.unwrap();
        s.verify(&d).ok().unwrap().commit().await.unwrap();
        assert!(cache.contains(&d, blob.len() as u64));
        assert!(!dest.with_extension("partial").exists());
        assert!(Staged::open(&dest, &d, 1).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_mismatch_is_reported_and_discarded_and_long_partials_restart() {
        let (_dir, cache) = cache();
        let d = Digest::of(b"right");
        let dest = cache.path_of(&d);
        fs_err::write(dest.with_extension("partial"), b"far too long").unwrap();
        let mut s = Staged::open(&dest, &d, 5).await.unwrap().unwrap();
        assert!(s.is_empty(), "a partial longer than the blob starts over");
        s.append(b"wrong").await.unwrap();
        let Err(m) = s.verify(&d) else {
            panic!("wrong bytes verified")
        };
        assert_eq!(m.found, Digest::of(b"wrong"));
        m.staged.discard().await;
        assert!(!dest.with_extension("partial").exists());
        assert!(!dest.exists());
    }
}
