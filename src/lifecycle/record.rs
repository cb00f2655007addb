//! The record of what `load` put into a store: `STATE_DIR/loaded.json`, a small versioned
//! JSON file. `prune` removes only images this record says pinbundle added; `list` shows
//! which pins came from a load.
//!
//! Read-modify-write happens under an exclusive `flock` of `STATE_DIR/loaded.lock`, and the
//! file is replaced atomically ([`crate::atomic`]), so two loads never lose each other's
//! entries and a reader never sees half a file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::load::storage::Store;

/// Where the record lives by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pinbundle";
/// The record's file name inside the state directory.
pub const RECORD_NAME: &str = "loaded.json";
const LOCK_NAME: &str = "loaded.lock";
/// The record format this build writes.
pub const RECORD_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error("I/O error on `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{path}` is not a pinbundle record ({detail}); move it aside, pinbundle then starts a new one"
    )]
    Parse { path: PathBuf, detail: String },
    #[error("`{path}` has record version {found}; this pinbundle reads version {RECORD_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("writing `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: crate::atomic::Error,
    },
}

/// The whole record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub version: u32,
    pub images: Vec<Entry>,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            version: RECORD_VERSION,
            images: Vec::new(),
        }
    }
}

/// One image a load put (or found) in a store under a pin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The pin, `name@sha256:…`, which is also the image's storage name.
    pub pin: String,
    /// The image ID in containers-storage (its config digest's hex).
    pub image_id: String,
    /// The image's storage names right after the load (the pin, and the tag skopeo adds):
    /// a name beyond these was given by someone else.
    #[serde(default)]
    pub names: Vec<String>,
    pub store: StoreKey,
    /// The bundle it came from: its path as given and its identity (the sha256 of its
    /// `pinbundle.json`).
    pub bundle: String,
    pub bundle_identity: String,
    /// When it was loaded (RFC 3339, UTC).
    pub loaded_at: String,
    /// pinbundle created the image: it was not in the store before that load. An image that
    /// was there already is never pinbundle's to remove.
    pub added: bool,
}

/// The store an entry is in, as `load` resolved it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreKey {
    pub root: PathBuf,
    pub runroot: PathBuf,
    pub driver: String,
    pub imagestore: Option<PathBuf>,
}

impl StoreKey {
    pub fn of(store: &Store) -> StoreKey {
        StoreKey {
            root: store.graphroot(),
            runroot: store.runroot.clone().unwrap_or_default(),
            driver: store.driver_name(),
            imagestore: store.imagestore.clone(),
        }
    }

    /// The same store: the image root decides where images live.
    pub fn is(&self, store: &Store) -> bool {
        let other = StoreKey::of(store);
        self.root == other.root && self.imagestore == other.imagestore
    }
}

/// The record in `state_dir`, held under its lock until dropped.
pub struct Locked {
    path: PathBuf,
    pub record: Record,
    _lock: fs_err::File,
}

impl Locked {
    /// Takes the lock (waiting for another holder) and reads the record; a missing file is
    /// an empty record. Creates `state_dir` (0755) when missing.
    ///
    /// # Errors
    /// The directory or lock cannot be made; the file cannot be read or is not a record.
    pub fn open(state_dir: &Path) -> Result<Locked, RecordError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RecordError::Io { path, source }
        };
        fs_err::create_dir_all(state_dir).map_err(io(state_dir))?;
        let lock_path = state_dir.join(LOCK_NAME);
        let lock = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(&lock_path)(e.into()))?;
        let path = state_dir.join(RECORD_NAME);
        let record = read(&path)?;
        Ok(Locked {
            path,
            record,
            _lock: lock,
        })
    }

    /// Replaces the file with `self.record`, atomically.
    ///
    /// # Errors
    /// Staging, writing or renaming failed.
    pub fn save(&self) -> Result<(), RecordError> {
        let write = |source| RecordError::Write {
            path: self.path.clone(),
            source,
        };
        let mut text = serde_json::to_string_pretty(&self.record).unwrap_or_default();
        text.push('\n');
        let (staged, mut file) = crate::atomic::Stage::new(&self.path)
            .create()
            .map_err(write)?;
        file.write_all(text.as_bytes())
            .map_err(|e| write(staged.write_error(e)))?;
        staged.commit(file).map_err(write)
    }

    /// Adds `entry`, replacing one for the same pin in the same store.
    pub fn note(&mut self, mut entry: Entry) {
        // The same image loaded again, maybe under another name: still the one pinbundle
        // added (the later load found it present because the earlier one put it there).
        entry.added |=
            self.record.images.iter().any(|e| {
                e.added && e.image_id == entry.image_id && e.store.root == entry.store.root
            });
        self.record
            .images
            .retain(|e| !(e.pin == entry.pin && e.store.root == entry.store.root));
        self.record.images.push(entry);
    }
}

/// Notes a load of `bundle`'s `pins` into `store`. `imported` is the store's image list from
/// before the import, `None` when nothing was imported: an image counts as added by
/// pinbundle only when its ID was not in that list.
///
/// # Errors
/// As [`Locked::open`] and [`Locked::save`]; the store's image list cannot be read.
pub fn note_load(
    state_dir: &Path,
    store: &Store,
    bundle: &crate::bundle::BundleSet,
    pins: &[crate::reference::PinnedRef],
    imported: Option<&[crate::load::storage::ImageRecord]>,
) -> Result<(), RecordError> {
    let images = store.images().map_err(|e| RecordError::Parse {
        path: store.images_json(),
        detail: crate::error::error_chain(&e),
    })?;
    let mut locked = Locked::open(state_dir)?;
    let identity = crate::reference::Digest::of(bundle.manifest_bytes()).to_string();
    let at = now();
    for pin in pins {
        let name = pin.to_string();
        let Some(image) = images.iter().find(|r| r.names.contains(&name)) else {
            continue;
        };
        locked.note(Entry {
            pin: name,
            image_id: image.id.clone(),
            names: image.names.clone(),
            store: StoreKey::of(store),
            bundle: bundle.path().display().to_string(),
            bundle_identity: identity.clone(),
            loaded_at: at.clone(),
            added: imported.is_some_and(|before| before.iter().all(|r| r.id != image.id)),
        });
    }
    locked.save()
}

/// Reads the record at `path` without the lock (a consistent snapshot: it is replaced
/// atomically); a missing file is an empty record.
///
/// # Errors
/// The file cannot be read, is not a record, or has another version.
pub fn read(path: &Path) -> Result<Record, RecordError> {
    let bytes = match fs_err::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Record::default()),
        Err(source) => {
            return Err(RecordError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let record: Record = serde_json::from_slice(&bytes).map_err(|e| RecordError::Parse {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if record.version != RECORD_VERSION {
        return Err(RecordError::Version {
            path: path.to_path_buf(),
            found: record.version,
        });
    }
    Ok(record)
}

/// The current time as the record writes it.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pin: &str, id: &str, added: bool) -> Entry {
        Entry {
            pin: pin.into(),
            image_id: id.into(),
            names: vec![pin.into()],
            store: StoreKey {
                root: "/s".into(),
                runroot: "/r".into(),
                driver: "overlay".into(),
                imagestore: None,
            },
            bundle: "b".into(),
            bundle_identity: "sha256:0".into(),
            loaded_at: now(),
            added,
        }
    }

    #[test]
    fn a_reload_keeps_that_pinbundle_added_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Locked::open(dir.path()).unwrap();
        l.note(entry("a@sha256:1", "id1", true));
        l.note(entry("a@sha256:1", "id1", false));
        l.note(entry("b@sha256:2", "id2", false));
        l.save().unwrap();
        drop(l);
        let r = read(&dir.path().join(RECORD_NAME)).unwrap();
        assert_eq!(r.images.len(), 2);
        assert!(r.images.iter().any(|e| e.pin == "a@sha256:1" && e.added));
        assert!(r.images.iter().any(|e| e.pin == "b@sha256:2" && !e.added));
    }

    #[test]
    fn another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECORD_NAME);
        fs_err::write(&path, r#"{"version": 9, "images": []}"#).unwrap();
        assert!(matches!(
            read(&path),
            Err(RecordError::Version { found: 9, .. })
        ));
    }
}
