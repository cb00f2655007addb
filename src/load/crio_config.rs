//! CRI-O's configuration as CRI-O itself reads it: the one parser of `crio.conf` and
//! `crio.conf.d` that the store, the policy and the pins are all taken from.
//!
//! Facts (cri-o `pkg/config/config.go`, `UpdateFromFile`, `UpdateFromDropInFile`,
//! `UpdateFromPath`):
//! - CRI-O reads `--config` (default `/etc/crio/crio.conf`) when it exists, then every file
//!   under `--config-dir` (default `/etc/crio/crio.conf.d`) in the order of Go's
//!   `filepath.Walk`: recursively, sorted by name, any name, dotfiles included.
//! - Each file is decoded over the result so far: a key a later file sets replaces the
//!   earlier value (lists too: a later `pinned_images` replaces the list), keys it does not
//!   set keep theirs. Exceptions: an empty `root`, `runroot` or `storage_driver` keeps the
//!   value before it (ultimately storage.conf's), and `storage_option` lists accumulate,
//!   duplicates keeping their last place.
//! - One file that does not decode (bad TOML, or a known key of the wrong type) fails the
//!   whole (re)load; unknown keys are ignored.

use std::path::{Path, PathBuf};

/// The main configuration file CRI-O reads by default.
pub const DEFAULT_CONFIG: &str = "/etc/crio/crio.conf";
/// The drop-in directory CRI-O reads by default.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/crio/crio.conf.d";

/// Why the configuration could not be read at all (findings about single files are data:
/// see [`CrioConfig::unparsable`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read CRI-O's configuration at `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A file that CRI-O would fail to decode, and so fail to start or reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparsable {
    pub path: PathBuf,
    /// The parser's message, or which key has the wrong type.
    pub reason: String,
}

/// A value and the file that set it last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub from: PathBuf,
}

/// A string key CRI-O reads from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `[crio] root`: the store's graph root.
    Root,
    /// `[crio] runroot`.
    RunRoot,
    /// `[crio] storage_driver`.
    StorageDriver,
    /// `[crio] imagestore`: a separate image store (containers-storage `imagestore`).
    ImageStore,
    /// `[crio.image] signature_policy`: the policy.json CRI-O pulls under.
    SignaturePolicy,
    /// `[crio.image] signature_policy_dir`: per-namespace policies (CRI-O ≥ 1.33).
    SignaturePolicyDir,
    /// `[crio.image] big_files_temporary_dir`: where pulls stage big files.
    BigFilesTemporaryDir,
}

impl Key {
    /// The table path and key name.
    fn path(self) -> (&'static [&'static str], &'static str) {
        const CRIO: &[&str] = &["crio"];
        const IMAGE: &[&str] = &["crio", "image"];
        match self {
            Key::Root => (CRIO, "root"),
            Key::RunRoot => (CRIO, "runroot"),
            Key::StorageDriver => (CRIO, "storage_driver"),
            Key::ImageStore => (CRIO, "imagestore"),
            Key::SignaturePolicy => (IMAGE, "signature_policy"),
            Key::SignaturePolicyDir => (IMAGE, "signature_policy_dir"),
            Key::BigFilesTemporaryDir => (IMAGE, "big_files_temporary_dir"),
        }
    }

    /// Whether an empty value keeps the one before it (storage.conf's, ultimately).
    fn empty_inherits(self) -> bool {
        matches!(self, Key::Root | Key::RunRoot | Key::StorageDriver)
    }

    const ALL: [Key; 7] = [
        Key::Root,
        Key::RunRoot,
        Key::StorageDriver,
        Key::ImageStore,
        Key::SignaturePolicy,
        Key::SignaturePolicyDir,
        Key::BigFilesTemporaryDir,
    ];

    /// The dotted name, for messages.
    pub fn dotted(self) -> String {
        let (tables, key) = self.path();
        format!("{}.{key}", tables.join("."))
    }
}

/// The list keys.
const STORAGE_OPTION: (&[&str], &str) = (&["crio"], "storage_option");
const PINNED_IMAGES: (&[&str], &str) = (&["crio", "image"], "pinned_images");

/// CRI-O's configuration files, read and parsed, in CRI-O's order.
#[derive(Debug, Clone, Default)]
pub struct CrioConfig {
    /// Every file CRI-O reads, in its order (the main file first, when it exists).
    pub files: Vec<PathBuf>,
    /// The files that decoded, in the same order.
    parsed: Vec<(PathBuf, toml::Table)>,
    /// The files that did not.
    pub unparsable: Vec<Unparsable>,
}

impl CrioConfig {
    /// Reads `config` (skipped when absent) and every file under `config_dir` (none when the
    /// directory is absent), as CRI-O does at start and on reload.
    ///
    /// # Errors
    /// Only when a directory cannot be listed; a file that cannot be read or decoded is
    /// recorded in [`CrioConfig::unparsable`].
    pub fn read(config: &Path, config_dir: &Path) -> Result<CrioConfig, ConfigError> {
        let mut files = Vec::new();
        if fs_err::symlink_metadata(config).is_ok() {
            files.push(config.to_path_buf());
        }
        if config_dir.is_dir() {
            walk(config_dir, &mut files)?;
        }
        let mut out = CrioConfig {
            files: Vec::new(),
            parsed: Vec::new(),
            unparsable: Vec::new(),
        };
        for path in files {
            out.add(path);
        }
        Ok(out)
    }

    /// A configuration made of these contents, as if read from these paths in this order.
    #[must_use]
    pub fn from_texts<'a>(files: impl IntoIterator<Item = (PathBuf, &'a str)>) -> CrioConfig {
        let mut out = CrioConfig::default();
        for (path, text) in files {
            out.add_text(path, text);
        }
        out
    }

    fn add(&mut self, path: PathBuf) {
        match fs_err::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                self.add_text(path, &text);
            }
            Err(e) => {
                self.files.push(path.clone());
                self.unparsable.push(Unparsable {
                    path,
                    reason: e.to_string(),
                });
            }
        }
    }

    fn add_text(&mut self, path: PathBuf, text: &str) {
        self.files.push(path.clone());
        let parsed = toml::from_str::<toml::Table>(text)
            .map_err(|e| e.message().to_string())
            .and_then(|t| check_types(&t).map(|()| t));
        match parsed {
            Ok(table) => self.parsed.push((path, table)),
            Err(reason) => self.unparsable.push(Unparsable { path, reason }),
        }
    }

    /// The files that decoded, with their tables, in CRI-O's order.
    pub fn parsed(&self) -> impl Iterator<Item = (&Path, &toml::Table)> {
        self.parsed.iter().map(|(p, t)| (p.as_path(), t))
    }

    /// The value CRI-O ends with for `key`, and the file that set it; `None` when no file
    /// sets it (then CRI-O's default, or storage.conf's for the storage keys, applies).
    #[must_use]
    pub fn get(&self, key: Key) -> Option<Setting<String>> {
        let (tables, name) = key.path();
        self.parsed.iter().rev().find_map(|(path, t)| {
            let v = lookup(t, tables, name)?.as_str()?;
            (!(v.is_empty() && key.empty_inherits())).then(|| Setting {
                value: v.to_string(),
                from: path.clone(),
            })
        })
    }

    /// `[crio] storage_option` as CRI-O accumulates it over the files: every file's options
    /// appended, a duplicate keeping only its last place.
    #[must_use]
    pub fn storage_options(&self) -> Vec<String> {
        let all: Vec<&str> = self
            .string_lists(STORAGE_OPTION)
            .flat_map(|s| s.value)
            .collect();
        let mut out: Vec<String> = Vec::new();
        for (i, opt) in all.iter().enumerate() {
            if !all[i + 1..].contains(opt) {
                out.push((*opt).to_string());
            }
        }
        out
    }

    /// Every file that sets `[crio.image] pinned_images`, in order, with its list. The last
    /// one is the list CRI-O uses.
    pub fn pinned_images(&self) -> impl Iterator<Item = Setting<Vec<&str>>> {
        self.string_lists(PINNED_IMAGES)
    }

    fn string_lists(
        &self,
        (tables, name): (&'static [&'static str], &'static str),
    ) -> impl Iterator<Item = Setting<Vec<&str>>> {
        self.parsed.iter().filter_map(move |(path, t)| {
            let list = lookup(t, tables, name)?.as_array()?;
            Some(Setting {
                value: list.iter().filter_map(toml::Value::as_str).collect(),
                from: path.clone(),
            })
        })
    }
}

fn lookup<'t>(table: &'t toml::Table, tables: &[&str], key: &str) -> Option<&'t toml::Value> {
    let mut t = table;
    for name in tables {
        t = t.get(*name)?.as_table()?;
    }
    t.get(key)
}

/// CRI-O's decoder fails on a known key of the wrong type; so do we, for the keys we read.
fn check_types(table: &toml::Table) -> Result<(), String> {
    for prefix in [&["crio"][..], &["crio", "image"][..]] {
        let mut t = Some(table);
        let mut dotted = Vec::new();
        for name in prefix {
            dotted.push(*name);
            t = match t.and_then(|t| t.get(*name)) {
                None => None,
                Some(toml::Value::Table(inner)) => Some(inner),
                Some(v) => {
                    return Err(format!(
                        "`{}` must be a table, found {}",
                        dotted.join("."),
                        v.type_str()
                    ));
                }
            };
        }
    }
    let wrong = |dotted: String, want: &str, v: &toml::Value| {
        Err(format!("`{dotted}` must be {want}, found {}", v.type_str()))
    };
    for key in Key::ALL {
        let (tables, name) = key.path();
        if let Some(v) = lookup(table, tables, name).filter(|v| !v.is_str()) {
            return wrong(key.dotted(), "a string", v);
        }
    }
    for (tables, name) in [STORAGE_OPTION, PINNED_IMAGES] {
        let Some(v) = lookup(table, tables, name) else {
            continue;
        };
        let dotted = format!("{}.{name}", tables.join("."));
        match v.as_array() {
            None => return wrong(dotted, "an array of strings", v),
            Some(items) => {
                if let Some(bad) = items.iter().find(|i| !i.is_str()) {
                    return Err(format!(
                        "`{dotted}` must be an array of strings, found an array holding a {}",
                        bad.type_str()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Files under `dir` in the order of Go's `filepath.Walk`: entries of each directory sorted
/// by name (bytes), directories descended into in place. Symlinks are not followed into
/// (Walk uses lstat) but are listed, as CRI-O then reads them as files.
pub(crate) fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ConfigError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigError::Io { path, source }
    };
    let mut names = Vec::new();
    for entry in fs_err::read_dir(dir).map_err(io(dir))? {
        names.push(entry.map_err(io(dir))?.file_name());
    }
    names.sort();
    for name in names {
        let p = dir.join(name);
        let meta = fs_err::symlink_metadata(&p).map_err(io(&p))?;
        if meta.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// A sort key equal to the walk order: the list of path components below `dir`
/// (component-wise comparison is what a depth-first walk over sorted names yields).
pub(crate) fn walk_key(dir: &Path, p: &Path) -> Vec<std::ffi::OsString> {
    p.strip_prefix(dir)
        .unwrap_or(p)
        .components()
        .map(|c| c.as_os_str().to_os_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(files: &[(&str, &str)]) -> CrioConfig {
        CrioConfig::from_texts(files.iter().map(|(p, t)| (PathBuf::from(p), *t)))
    }

    #[test]
    fn a_later_file_replaces_a_key_and_empty_storage_keys_inherit() {
        let c = config(&[
            (
                "/etc/crio/crio.conf",
                "[crio]\nroot = \"/var/lib/a\"\nimagestore = \"/img\"\n",
            ),
            (
                "/etc/crio/crio.conf.d/10-x",
                "[crio]\nroot = \"/var/lib/b\"\n",
            ),
            (
                "/etc/crio/crio.conf.d/20-y",
                "[crio]\nroot = \"\"\nimagestore = \"\"\n",
            ),
        ]);
        let root = c.get(Key::Root).expect("root is set");
        assert_eq!(root.value, "/var/lib/b");
        assert_eq!(root.from, Path::new("/etc/crio/crio.conf.d/10-x"));
        // An empty imagestore is a value of its own, not an inherit.
        assert_eq!(c.get(Key::ImageStore).map(|s| s.value), Some(String::new()));
        assert_eq!(c.get(Key::SignaturePolicy), None);
    }

    #[test]
    fn storage_options_accumulate_and_pinned_images_replace() {
        let c = config(&[
            (
                "a",
                "[crio]\nstorage_option = [\"x=1\", \"y=2\"]\n[crio.image]\npinned_images = [\"a@sha256:1\"]\n",
            ),
            (
                "b",
                "[crio]\nstorage_option = [\"x=1\", \"z=3\"]\n[crio.image]\npinned_images = [\"b@sha256:2\"]\n",
            ),
        ]);
        assert_eq!(c.storage_options(), ["y=2", "x=1", "z=3"]);
        let lists: Vec<_> = c.pinned_images().collect();
        assert_eq!(lists.len(), 2);
        assert_eq!(lists[1].value, ["b@sha256:2"]);
        assert_eq!(lists[1].from, Path::new("b"));
    }

    #[test]
    fn a_known_key_of_the_wrong_type_makes_the_file_unparsable() {
        let c = config(&[
            ("good", "[crio.image]\nsignature_policy = \"/p.json\"\n"),
            ("bad", "[crio]\nroot = 5\n"),
            ("worse", "[crio.image]\npinned_images = [1]\n"),
            ("broken", "[crio\n"),
            ("unknown-keys-are-fine", "[crio.runtime]\nwhatever = 1\n"),
        ]);
        let bad: Vec<_> = c.unparsable.iter().map(|u| u.path.clone()).collect();
        assert_eq!(bad, ["bad", "worse", "broken"].map(PathBuf::from));
        assert!(
            c.unparsable[0].reason.contains("crio.root"),
            "{:?}",
            c.unparsable
        );
        assert_eq!(c.files.len(), 5);
        assert_eq!(
            c.get(Key::SignaturePolicy).map(|s| s.value),
            Some("/p.json".to_string())
        );
    }

    #[test]
    fn read_follows_crio_order_and_skips_what_is_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("crio.conf.d");
        fs_err::create_dir_all(d.join("sub")).expect("mkdir");
        fs_err::write(d.join("20-b"), "[crio]\nroot = \"/b\"\n").expect("write");
        fs_err::write(d.join("sub/x"), "[crio]\nroot = \"/sub\"\n").expect("write");
        fs_err::write(d.join(".hidden"), "[crio]\nroot = \"/hidden\"\n").expect("write");
        let c = CrioConfig::read(&dir.path().join("crio.conf"), &d).expect("read");
        assert_eq!(
            c.files,
            [d.join(".hidden"), d.join("20-b"), d.join("sub/x")]
        );
        assert_eq!(c.get(Key::Root).map(|s| s.value), Some("/sub".to_string()));
        let none = CrioConfig::read(&dir.path().join("nope"), &dir.path().join("nope.d"))
            .expect("absent is empty");
        assert!(none.files.is_empty());
    }
}
