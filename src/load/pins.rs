//! CRI-O `pinned_images` drop-in: render, merge, write atomically, and audit the drop-in dir.
//!
//! Owns the file `crio.conf.d/50-pinned-images` (or whatever path the caller picks); the
//! `PinnedImageSet` manifest is [`crate::pinned_image_set`]'s. It does not reload CRI-O
//! ([`super::reload`]) or ask the CRI whether the pins took effect ([`super::confirm`]).
//!
//! Facts this module relies on (see `field-notes.md`, cri-o `internal/storage/image.go`
//! `CompileRegexpsForPinnedImages`, and MCO `pkg/daemon/pinned_image_set.go`):
//! - CRI-O reads every file under `crio.conf.d`, recursively, dotfiles included, in the
//!   lexical order of `filepath.Walk`; a later file's `pinned_images` replaces the list.
//! - One file that does not parse makes the whole reload fail (the old list stays).
//! - A bare `"*"` pattern panics CRI-O (it slices `pattern[1:0]`); `"**"` pins everything;
//!   `""` matches nothing.
//! - MCO renders the file with BurntSushi/toml (two-space indent per table level, inline
//!   array), sorted and unique, and rewrites it only when the trimmed bytes differ.
//!
//! # Decisions
//! - Existing `"*"`: refuse to touch the file ([`PinsError::CrashingPattern`]); it already
//!   breaks CRI-O and a human must fix it. Existing `"**"` (and other patterns): kept, since
//!   dropping `"**"` would unpin everything; `"**"` is reported as a warning. Existing `""`:
//!   dropped with a warning (it matches nothing, so dropping it changes no behaviour).
//! - Ours: a pin that is empty or contains `*` is an error, never skipped silently.
//! - Unrelated keys in the file: refused ([`PinsError::UnrelatedKeys`]). MCO owns the file
//!   and writes only `crio.image.pinned_images`; re-serialising other keys would lose their
//!   comments and layout, and MCO would delete them anyway. Such settings belong in another
//!   drop-in. Comments in a file that holds only `pinned_images` are not preserved.
//! - Unparsable files anywhere in the drop-in dir are an error for `load`
//!   ([`DirScan::check`]): CRI-O's reload would fail, so writing our pins would achieve
//!   nothing, and CRI-O would not even start after a reboot.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::crio_config::{walk, walk_key};
use crate::reference::{PinnedRef, Reference};

/// The drop-in MCO writes for `PinnedImageSet`s, and pinbundle's default.
pub const MCO_DROP_IN: &str = "/etc/crio/crio.conf.d/50-pinned-images";

/// Mode of the drop-in, as MCO writes it.
pub const DROP_IN_MODE: u32 = 0o644;

/// Prefix of the temp file staged next to the drop-in directory (never inside it).
const TEMP_PREFIX: &str = ".pinbundle-pins-";

/// Why the drop-in could not be merged, written or audited. Each variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinsError {
    #[error("CRI-O drop-in `{path}` is not valid TOML; left unchanged")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error(
        "CRI-O drop-in `{path}`: `crio.image.pinned_images` must be an array of strings, found {found}; left unchanged"
    )]
    WrongType { path: PathBuf, found: String },
    #[error(
        "CRI-O drop-in `{path}` pins the bare pattern \"*\", which crashes CRI-O; fix or remove it before loading"
    )]
    CrashingPattern { path: PathBuf },
    #[error(
        "CRI-O drop-in `{path}` sets keys other than `crio.image.pinned_images` ({keys}); move them to another drop-in, pinbundle and MCO own this file"
    )]
    UnrelatedKeys { path: PathBuf, keys: String },
    #[error(
        "refusing to pin \"{pin}\": a pin must be an exact `name@sha256:…`, never empty or a pattern"
    )]
    InvalidPin { pin: String },
    #[error(
        "CRI-O drop-in path `{path}` has no parent directory and grandparent to stage a temp file in"
    )]
    NoParent { path: PathBuf },
    #[error("I/O error on `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CRI-O could not reload: {} file(s) in its drop-in directory do not parse: {}",
        files.len(),
        files.iter().map(|f| format!("`{}`", f.path.display())).collect::<Vec<_>>().join(", ")
    )]
    UnparsableDropIns { files: Vec<Unparsable> },
    #[error("invalid PinnedImageSet name \"{name}\": must be a DNS-1123 subdomain")]
    BadManifestName { name: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PinsError + '_ {
    move |source| PinsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Something worth telling the user that does not stop `load`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PinWarning {
    /// The existing file pins `"**"`, i.e. every image; kept as is.
    PinsEverything { path: PathBuf },
    /// The existing file had `""` entries (they match nothing); dropped.
    DroppedEmpty { path: PathBuf },
}

impl std::fmt::Display for PinWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinWarning::PinsEverything { path } => write!(
                f,
                "`{}` pins \"**\", which pins every image; kept",
                path.display()
            ),
            PinWarning::DroppedEmpty { path } => write!(
                f,
                "`{}` had empty \"\" pins, which match nothing; dropped",
                path.display()
            ),
        }
    }
}

/// The result of [`merge`]: new content (None = leave the file alone) and warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The full new file content, or `None` when every pin is already in the file.
    pub content: Option<String>,
    /// The entries the file will hold (sorted, unique), whether or not it changes.
    pub entries: Vec<String>,
    pub warnings: Vec<PinWarning>,
}

/// Render `entries` exactly as MCO does (BurntSushi/toml encoding of
/// `{crio: {image: {pinned_images: [...]}}}`), with a trailing newline.
pub fn render(entries: &[String]) -> String {
    let mut out = String::from("[crio]\n  [crio.image]\n    pinned_images = [");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_toml_string(&mut out, e);
    }
    out.push_str("]\n");
    out
}

/// A TOML basic string, escaped as BurntSushi/toml does.
fn push_toml_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Check one of our pins: an exact, normalised `name@sha256:…` (no tag, no pattern), i.e.
/// the very string stored as the image's name, which is what CRI-O matches.
fn validate_ours(pin: &PinnedRef) -> Result<String, PinsError> {
    let s = pin.to_string();
    let exact = !s.contains('*')
        && s.parse::<Reference>()
            .is_ok_and(|r| r.tag().is_none() && r.digest().is_some() && r.to_string() == s);
    if !exact {
        return Err(PinsError::InvalidPin { pin: s });
    }
    Ok(s)
}

/// Read `crio.image.pinned_images` out of a parsed drop-in, if set.
fn pinned_images_of(path: &Path, table: &toml::Table) -> Result<Option<Vec<String>>, PinsError> {
    let Some(crio) = table.get("crio") else {
        return Ok(None);
    };
    let wrong = |found: &str| PinsError::WrongType {
        path: path.to_path_buf(),
        found: found.to_string(),
    };
    let Some(image) = crio
        .as_table()
        .ok_or_else(|| wrong("`crio` not a table"))?
        .get("image")
    else {
        return Ok(None);
    };
    let image = image
        .as_table()
        .ok_or_else(|| wrong("`crio.image` not a table"))?;
    let Some(list) = image.get("pinned_images") else {
        return Ok(None);
    };
    let array = list.as_array().ok_or_else(|| wrong(list.type_str()))?;
    array
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| wrong(&format!("an array holding a {}", v.type_str())))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Keys other than `crio.image.pinned_images` (and its enclosing tables), dotted.
fn unrelated_keys(table: &toml::Table) -> Vec<String> {
    let mut keys = Vec::new();
    for (k, v) in table {
        if k != "crio" {
            keys.push(k.clone());
            continue;
        }
        let Some(crio) = v.as_table() else { continue };
        for (k2, v2) in crio {
            if k2 != "image" {
                keys.push(format!("crio.{k2}"));
                continue;
            }
            let Some(image) = v2.as_table() else { continue };
            keys.extend(
                image
                    .keys()
                    .filter(|k3| *k3 != "pinned_images")
                    .map(|k3| format!("crio.image.{k3}")),
            );
        }
    }
    keys
}

/// Merge this bundle's pins into the existing drop-in content. Pure: no I/O; `path` only
/// names the file in errors and warnings.
///
/// The result holds the union of the existing entries and ours, sorted and unique, rendered
/// with [`render`]; `content` is `None` when every one of our pins is already listed (then
/// the caller writes nothing and skips the reload).
///
/// # Errors
/// The existing content does not parse, has `pinned_images` of the wrong type, has a bare
/// `"*"`, or has unrelated keys; or one of ours is empty or a pattern.
pub fn merge(path: &Path, existing: Option<&str>, ours: &[PinnedRef]) -> Result<Merged, PinsError> {
    let ours = ours
        .iter()
        .map(validate_ours)
        .collect::<Result<Vec<_>, _>>()?;
    let mut warnings = Vec::new();
    let mut entries = BTreeSet::new();
    if let Some(text) = existing {
        let table: toml::Table = toml::from_str(text).map_err(|e| PinsError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        let old = pinned_images_of(path, &table)?.unwrap_or_default();
        let unrelated = unrelated_keys(&table);
        if !unrelated.is_empty() {
            return Err(PinsError::UnrelatedKeys {
                path: path.to_path_buf(),
                keys: unrelated.join(", "),
            });
        }
        if old.iter().any(|p| p == "*") {
            return Err(PinsError::CrashingPattern {
                path: path.to_path_buf(),
            });
        }
        if old.iter().any(|p| p == "**") {
            warnings.push(PinWarning::PinsEverything {
                path: path.to_path_buf(),
            });
        }
        if old.iter().any(String::is_empty) {
            warnings.push(PinWarning::DroppedEmpty {
                path: path.to_path_buf(),
            });
        }
        entries.extend(old.into_iter().filter(|p| !p.is_empty()));
    }
    let changed = ours.iter().any(|p| !entries.contains(p));
    entries.extend(ours);
    let entries: Vec<String> = entries.into_iter().collect();
    let content = (changed && !entries.is_empty()).then(|| render(&entries));
    Ok(Merged {
        content,
        entries,
        warnings,
    })
}

/// Write `content` to `path` atomically: a temp file in the drop-in directory's PARENT
/// (CRI-O reads every file inside the directory, so a temp file there would break a
/// concurrent reload), fsync, mode 0644, rename into place, fsync the directory.
/// Creates the drop-in directory (0755) if missing.
///
/// # Errors
/// Any I/O failure, naming the path involved.
pub fn write_atomic(path: &Path, content: &str) -> Result<(), PinsError> {
    let no_parent = || PinsError::NoParent {
        path: path.to_path_buf(),
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(no_parent)?;
    let stage_dir = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(no_parent)?;
    if !dir.is_dir() {
        fs_err::create_dir_all(dir).map_err(io_err(dir))?;
        fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(dir))?;
    }
    let (staged, mut file) = crate::atomic::Stage::new(path)
        .in_dir(stage_dir)
        .prefix(TEMP_PREFIX)
        .suffix("")
        .mode(DROP_IN_MODE)
        .create()
        .map_err(atomic_err)?;
    file.write_all(content.as_bytes())
        .map_err(io_err(staged.path()))?;
    staged.commit(file).map_err(atomic_err)?;
    Ok(())
}

/// A stage-and-rename failure, naming the path as before: the staging directory, the
/// temporary file, the drop-in or its directory.
fn atomic_err(e: crate::atomic::Error) -> PinsError {
    PinsError::Io {
        path: e.path().to_path_buf(),
        source: e.into_io(),
    }
}

/// Read the drop-in at `path` (absent = None), merge our pins, and write it if it changed.
/// Returns the merge result; `content.is_some()` means the file was written and CRI-O
/// needs a reload.
///
/// # Errors
/// As [`merge`] and [`write_atomic`]; a file that cannot be read is an I/O error.
pub fn update(path: &Path, ours: &[PinnedRef]) -> Result<Merged, PinsError> {
    let merged = check_update(path, ours)?;
    if let Some(content) = &merged.content {
        write_atomic(path, content)?;
    }
    Ok(merged)
}

/// What [`update`] would do, without writing: `Err` exactly when [`update`] would refuse the
/// existing file or one of our pins. `load` calls it before importing anything.
///
/// # Errors
/// As [`merge`]; a file that cannot be read is an I/O error.
pub fn check_update(path: &Path, ours: &[PinnedRef]) -> Result<Merged, PinsError> {
    let existing = match fs_err::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(path)(e)),
    };
    merge(path, existing.as_deref(), ours)
}

/// A drop-in file that CRI-O would fail to decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unparsable {
    pub path: PathBuf,
    /// The parser's message.
    pub reason: String,
}

/// What the drop-in directory holds, in CRI-O's reading order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirScan {
    /// Every file CRI-O reads, in its order.
    pub files: Vec<PathBuf>,
    /// Files read AFTER ours that set `pinned_images`: their list replaces ours.
    pub overriding: Vec<PathBuf>,
    /// Files read BEFORE ours that set `pinned_images`: our list replaces theirs, so their
    /// pins stop applying unless they are also in ours.
    pub shadowed: Vec<PathBuf>,
    /// Files that do not parse (or whose `pinned_images` has the wrong type).
    pub unparsable: Vec<Unparsable>,
}

impl DirScan {
    /// `Err` when CRI-O's reload cannot succeed (an unparsable file).
    ///
    /// # Errors
    /// [`PinsError::UnparsableDropIns`] listing every such file.
    pub fn check(&self) -> Result<(), PinsError> {
        if self.unparsable.is_empty() {
            Ok(())
        } else {
            Err(PinsError::UnparsableDropIns {
                files: self.unparsable.clone(),
            })
        }
    }
}

/// Audit the directory holding `drop_in` (ours, which may not exist yet) as CRI-O reads it.
///
/// # Errors
/// Only when the directory cannot be listed; findings are data.
pub fn scan_dir(drop_in: &Path) -> Result<DirScan, PinsError> {
    let Some(dir) = drop_in.parent() else {
        return Ok(DirScan::default());
    };
    let mut scan = DirScan::default();
    if !dir.is_dir() {
        return Ok(scan);
    }
    walk(dir, &mut scan.files).map_err(|e| match e {
        super::crio_config::ConfigError::Io { path, source } => PinsError::Io { path, source },
    })?;
    // Where ours sits in the walk order, whether or not it exists yet.
    let ours_key = walk_key(dir, drop_in);
    for f in &scan.files {
        if f == drop_in {
            continue;
        }
        let text = match fs_err::read(f) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => {
                scan.unparsable.push(Unparsable {
                    path: f.clone(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let parsed = toml::from_str::<toml::Table>(&text)
            .map_err(|e| e.message().to_string())
            .and_then(|t| pinned_images_of(f, &t).map_err(|e| e.to_string()));
        match parsed {
            Err(reason) => scan.unparsable.push(Unparsable {
                path: f.clone(),
                reason,
            }),
            Ok(None) => {}
            Ok(Some(_)) if walk_key(dir, f) > ours_key => scan.overriding.push(f.clone()),
            Ok(Some(_)) => scan.shadowed.push(f.clone()),
        }
    }
    Ok(scan)
}

/// Signs that the Machine Config Operator manages this node.
pub const MCO_MARKERS: &[&str] = &[
    // The MCD records the applied config here (`currentconfig`) on every managed node.
    "etc/machine-config-daemon",
    // Written by the MCS-served ignition at first boot.
    "etc/mcs-machine-config-content.json",
];

/// The MCO markers present under `root` (`/` in production).
pub fn detect_mco(root: &Path) -> Vec<PathBuf> {
    MCO_MARKERS
        .iter()
        .map(|m| root.join(m))
        .filter(|p| p.exists())
        .collect()
}

/// The warning to print when [`detect_mco`] found something.
pub fn mco_warning(drop_in: &Path, markers: &[PathBuf]) -> String {
    format!(
        "this node is managed by the Machine Config Operator ({}): MCO owns `{}` and rewrites or deletes it from the node's PinnedImageSets; apply a PinnedImageSet (`--pinned-image-set-out`) so the pins survive",
        markers
            .iter()
            .map(|m| format!("`{}`", m.display()))
            .collect::<Vec<_>>()
            .join(", "),
        drop_in.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DA: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const DB: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn pin(name: &str, d: &str) -> PinnedRef {
        PinnedRef {
            name: name.to_string(),
            digest: d.parse().unwrap(),
        }
    }

    fn p() -> &'static Path {
        Path::new("/etc/crio/crio.conf.d/50-pinned-images")
    }

    #[test]
    fn renders_mco_format() {
        let m = merge(p(), None, &[pin("quay.io/b", DB), pin("quay.io/a", DA)]).unwrap();
        assert_eq!(
            m.content.unwrap(),
            format!(
                "[crio]\n  [crio.image]\n    pinned_images = [\"quay.io/a@{DA}\", \"quay.io/b@{DB}\"]\n"
            )
        );
        assert!(m.warnings.is_empty());
    }

    #[test]
    fn rendered_output_parses_back() {
        let entries = vec!["a\"b\\c".to_string(), "x".to_string()];
        let t: toml::Table = toml::from_str(&render(&entries)).unwrap();
        assert_eq!(pinned_images_of(p(), &t).unwrap().unwrap(), entries);
    }

    #[test]
    fn union_sorted_unique() {
        let existing = format!(
            "[crio]\n  [crio.image]\n    pinned_images = [\"registry.k8s.io/pause*\", \"quay.io/b@{DB}\"]\n"
        );
        let ours = [
            pin("quay.io/a", DA),
            pin("quay.io/a", DA),
            pin("quay.io/b", DB),
        ];
        let m = merge(p(), Some(&existing), &ours).unwrap();
        assert_eq!(
            m.entries,
            vec![
                format!("quay.io/a@{DA}"),
                format!("quay.io/b@{DB}"),
                "registry.k8s.io/pause*".to_string()
            ]
        );
        assert_eq!(m.content.unwrap(), render(&m.entries));
    }

    #[test]
    fn unchanged_is_none() {
        let ours = [pin("quay.io/a", DA)];
        let first = merge(p(), None, &ours).unwrap().content.unwrap();
        let again = merge(p(), Some(&first), &ours).unwrap();
        assert_eq!(again.content, None);
        // Differently formatted but already holding our pin: still nothing to do.
        let hand = format!("[crio.image]\npinned_images = ['quay.io/a@{DA}', 'x']\n");
        assert_eq!(merge(p(), Some(&hand), &ours).unwrap().content, None);
        // Nothing to pin and no file: nothing to write.
        assert_eq!(merge(p(), None, &[]).unwrap().content, None);
    }

    #[test]
    fn refuses_bare_star_and_bad_files() {
        let star = "[crio.image]\npinned_images = [\"*\"]\n";
        let e = merge(p(), Some(star), &[pin("quay.io/a", DA)]).unwrap_err();
        assert!(matches!(e, PinsError::CrashingPattern { .. }), "{e}");
        assert!(e.to_string().contains("50-pinned-images"));

        let e = merge(p(), Some("[crio.image\n"), &[]).unwrap_err();
        assert!(matches!(e, PinsError::Parse { .. }));
        assert!(e.to_string().contains("50-pinned-images"));

        let e = merge(
            p(),
            Some("[crio.image]\npinned_images = \"quay.io/a\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, PinsError::WrongType { .. }), "{e}");
        let e = merge(p(), Some("[crio.image]\npinned_images = [1]\n"), &[]).unwrap_err();
        assert!(matches!(e, PinsError::WrongType { .. }), "{e}");

        let e = merge(
            p(),
            Some("[crio.image]\npinned_images = []\npause_image = \"x\"\n[crio.runtime]\nx = 1\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "CRI-O drop-in `/etc/crio/crio.conf.d/50-pinned-images` sets keys other than `crio.image.pinned_images` (crio.image.pause_image, crio.runtime); move them to another drop-in, pinbundle and MCO own this file"
        );
    }

    #[test]
    fn keeps_double_star_drops_empty() {
        let existing = "[crio.image]\npinned_images = [\"**\", \"\"]\n";
        let m = merge(p(), Some(existing), &[pin("quay.io/a", DA)]).unwrap();
        assert_eq!(m.entries, vec!["**".to_string(), format!("quay.io/a@{DA}")]);
        assert_eq!(m.warnings.len(), 2);
        assert!(!m.content.unwrap().contains("\"\""));
    }

    #[test]
    fn rejects_bad_ours() {
        for name in [
            "",
            "quay.io/*",
            " quay.io/a",
            "busybox",
            "quay.io/a:v1",
            "Quay.io/A",
        ] {
            let e = merge(p(), None, &[pin(name, DA)]).unwrap_err();
            assert!(matches!(e, PinsError::InvalidPin { .. }), "{name}: {e}");
        }
    }

    #[test]
    fn atomic_write_mode_and_no_temp_left() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("crio.conf.d/50-pinned-images");
        let ours = [pin("quay.io/a", DA)];
        let m = update(&path, &ours).unwrap();
        assert!(m.content.is_some());
        let meta = fs_err::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        assert_eq!(fs_err::read_to_string(&path).unwrap(), m.content.unwrap());
        // Nothing else inside the drop-in dir, and no temp left next to it.
        let scan = scan_dir(&path).unwrap();
        assert_eq!(scan.files, vec![path.clone()]);
        let leftovers: Vec<_> = fs_err::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(TEMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Second run: unchanged, file untouched.
        let before = fs_err::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(update(&path, &ours).unwrap().content, None);
        assert_eq!(fs_err::metadata(&path).unwrap().modified().unwrap(), before);
        // A mode-0600 existing file comes back 0644 after a change.
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        update(&path, &[pin("quay.io/b", DB)]).unwrap();
        let meta = fs_err::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    }

    #[test]
    fn scan_finds_overriding_shadowed_and_unparsable() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("crio.conf.d");
        fs_err::create_dir_all(dir.join("50-pinned-images.d")).unwrap();
        fs_err::create_dir_all(dir.join("zz")).unwrap();
        let pins = "[crio.image]\npinned_images = [\"x\"]\n";
        fs_err::write(dir.join("10-early"), pins).unwrap();
        fs_err::write(dir.join("20-other"), "[crio.runtime]\nx = 1\n").unwrap();
        // "50-pinned-images.d/…" is walked AFTER "50-pinned-images" (name order), and
        // ".hidden" and "zz/nested" are read too.
        fs_err::write(dir.join("50-pinned-images.d/a"), pins).unwrap();
        fs_err::write(dir.join("zz/nested"), pins).unwrap();
        fs_err::write(dir.join(".hidden"), "[crio.image\n").unwrap();
        fs_err::write(dir.join("99-bad-type"), "[crio.image]\npinned_images = 3\n").unwrap();
        let ours = dir.join("50-pinned-images");
        let scan = scan_dir(&ours).unwrap();
        assert_eq!(scan.shadowed, vec![dir.join("10-early")]);
        assert_eq!(
            scan.overriding,
            vec![dir.join("50-pinned-images.d/a"), dir.join("zz/nested")]
        );
        let bad: Vec<_> = scan.unparsable.iter().map(|u| u.path.clone()).collect();
        assert_eq!(bad, vec![dir.join(".hidden"), dir.join("99-bad-type")]);
        let e = scan.check().unwrap_err();
        assert!(e.to_string().contains(".hidden"), "{e}");
        assert_eq!(scan.files.first(), Some(&dir.join(".hidden")));
    }

    #[test]
    fn walk_order_is_component_wise() {
        // Go's Walk visits "a/x" before "a.conf" although "a.conf" < "a/x" as strings.
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        fs_err::create_dir_all(dir.join("a")).unwrap();
        fs_err::write(dir.join("a/x"), "").unwrap();
        fs_err::write(dir.join("a.conf"), "").unwrap();
        let scan = scan_dir(&dir.join("zzz")).unwrap();
        assert_eq!(scan.files, vec![dir.join("a/x"), dir.join("a.conf")]);
    }

    #[test]
    fn mco_detection() {
        let root = tempfile::tempdir().unwrap();
        assert!(detect_mco(root.path()).is_empty());
        fs_err::create_dir_all(root.path().join("etc/machine-config-daemon")).unwrap();
        let found = detect_mco(root.path());
        assert_eq!(found.len(), 1);
        assert!(mco_warning(Path::new(MCO_DROP_IN), &found).contains("50-pinned-images"));
    }
}
