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

use super::crio_config::{CrioConfig, Unparsable, walk_key};
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
        "CRI-O could not reload: {} file(s) of its configuration do not parse: {}; fix or remove them, nothing was changed",
        files.len(),
        files.iter().map(|f| format!("`{}` ({})", f.path.display(), f.reason)).collect::<Vec<_>>().join(", ")
    )]
    UnparsableDropIns { files: Vec<Unparsable> },
    #[error(
        "{} read after `{drop_in}` and set `crio.image.pinned_images`: CRI-O would use that list instead of ours; nothing was changed. Move those pins into `{drop_in}`, or pass a --crio-drop-in that CRI-O reads last",
        by.iter().map(|p| format!("`{}`", p.display())).collect::<Vec<_>>().join(", ") + if by.len() == 1 { " is" } else { " are" },
        drop_in = drop_in.display()
    )]
    Overridden { drop_in: PathBuf, by: Vec<PathBuf> },
    #[error(
        "CRI-O does not read `{drop_in}`: it is not in its drop-in directory `{config_dir}` (--crio-config-dir)",
        drop_in = drop_in.display(),
        config_dir = config_dir.display()
    )]
    NotRead {
        drop_in: PathBuf,
        config_dir: PathBuf,
    },
    #[error("invalid PinnedImageSet name \"{name}\": must be a DNS-1123 subdomain")]
    BadManifestName { name: String },
}

impl PinsError {
    /// The node's CRI-O configuration is refused for what it holds (a later file replacing our
    /// list, files CRI-O cannot decode, a crashing pattern): nothing was changed and the
    /// operator must decide, as opposed to an operational failure.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            PinsError::Overridden { .. }
                | PinsError::UnparsableDropIns { .. }
                | PinsError::CrashingPattern { .. }
        )
    }
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
    merge_carrying(path, existing, None, ours)
}

/// [`merge`], also carrying `carry`'s entries (an earlier file's list that ours replaces,
/// with that file's path for errors and warnings) into ours.
///
/// # Errors
/// As [`merge`]; a bare `"*"` among the carried entries names their file.
pub fn merge_carrying(
    path: &Path,
    existing: Option<&str>,
    carry: Option<(&Path, &[String])>,
    ours: &[PinnedRef],
) -> Result<Merged, PinsError> {
    let ours = ours
        .iter()
        .map(validate_ours)
        .collect::<Result<Vec<_>, _>>()?;
    let mut warnings = Vec::new();
    let mut old = Vec::new();
    if let Some(text) = existing {
        let table: toml::Table = toml::from_str(text).map_err(|e| PinsError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        old = pinned_images_of(path, &table)?.unwrap_or_default();
        let unrelated = unrelated_keys(&table);
        if !unrelated.is_empty() {
            return Err(PinsError::UnrelatedKeys {
                path: path.to_path_buf(),
                keys: unrelated.join(", "),
            });
        }
        old = kept_entries(path, old, &mut warnings)?;
    }
    let carried = match carry {
        Some((from, list)) => kept_entries(from, list.to_vec(), &mut warnings)?,
        None => Vec::new(),
    };
    let mut entries: BTreeSet<String> = old.into_iter().collect();
    let changed = ours.iter().chain(&carried).any(|p| !entries.contains(p));
    entries.extend(ours);
    entries.extend(carried);
    let entries: Vec<String> = entries.into_iter().collect();
    let content = (changed && !entries.is_empty()).then(|| render(&entries));
    Ok(Merged {
        content,
        entries,
        warnings,
    })
}

/// Entries of `path`'s list that our file may hold: a bare `"*"` is refused, `""` dropped
/// and `"**"` kept, each with a warning.
fn kept_entries(
    path: &Path,
    list: Vec<String>,
    warnings: &mut Vec<PinWarning>,
) -> Result<Vec<String>, PinsError> {
    if list.iter().any(|p| p == "*") {
        return Err(PinsError::CrashingPattern {
            path: path.to_path_buf(),
        });
    }
    if list.iter().any(|p| p == "**") {
        warnings.push(PinWarning::PinsEverything {
            path: path.to_path_buf(),
        });
    }
    if list.iter().any(String::is_empty) {
        warnings.push(PinWarning::DroppedEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(list.into_iter().filter(|p| !p.is_empty()).collect())
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
    merge(path, read_existing(path)?.as_deref(), ours)
}

/// The drop-in's text; `None` when it does not exist.
fn read_existing(path: &Path) -> Result<Option<String>, PinsError> {
    match fs_err::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// What our drop-in must hold so that the list CRI-O ends with is ours plus what it used
/// before: the result of [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinsPlan {
    /// Our file's new content (`None`: unchanged) and its entries, which are the effective
    /// list: CRI-O reads no later file that sets `pinned_images`.
    pub merged: Merged,
    /// Entries of an earlier file that our list replaces, carried into ours.
    pub carried: Option<Carried>,
}

/// Entries carried into our drop-in from the file whose list ours replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    pub from: PathBuf,
    /// How many of its entries our file did not hold yet.
    pub entries: usize,
}

/// Where `drop_in` stands in CRI-O's configuration and what it must hold for `ours`, read
/// from `config` (CRI-O's files in its order; `config_dir` is its drop-in directory).
///
/// CRI-O uses the `pinned_images` of the last file that sets it. So the entries of the last
/// file before ours that sets it are carried into ours (else our write would unpin them), and
/// a file after ours that sets it is refused: it would replace our list.
///
/// # Errors
/// A file of the configuration does not parse (CRI-O's reload would fail); `drop_in` is not
/// under `config_dir`; a later file sets `pinned_images`; or as [`merge`].
pub fn plan(
    config: &CrioConfig,
    config_dir: &Path,
    drop_in: &Path,
    ours: &[PinnedRef],
) -> Result<PinsPlan, PinsError> {
    // Our own file's problems get [`merge`]'s more precise errors.
    let unparsable: Vec<Unparsable> = config
        .unparsable
        .iter()
        .filter(|u| u.path != drop_in)
        .cloned()
        .collect();
    if !unparsable.is_empty() {
        return Err(PinsError::UnparsableDropIns { files: unparsable });
    }
    if !drop_in.starts_with(config_dir) || drop_in == config_dir {
        return Err(PinsError::NotRead {
            drop_in: drop_in.to_path_buf(),
            config_dir: config_dir.to_path_buf(),
        });
    }
    let ours_key = walk_key(config_dir, drop_in);
    let (mut before, mut after) = (None, Vec::new());
    for setting in config.pinned_images().filter(|s| s.from != drop_in) {
        // The main file (outside the directory) is read before every drop-in.
        if setting.from.starts_with(config_dir) && walk_key(config_dir, &setting.from) > ours_key {
            after.push(setting.from);
        } else {
            before = Some(setting);
        }
    }
    if !after.is_empty() {
        return Err(PinsError::Overridden {
            drop_in: drop_in.to_path_buf(),
            by: after,
        });
    }
    let existing = read_existing(drop_in)?;
    let carry = before.as_ref().map(|s| {
        let list: Vec<String> = s.value.iter().map(|e| (*e).to_string()).collect();
        (s.from.as_path(), list)
    });
    let merged = merge_carrying(
        drop_in,
        existing.as_deref(),
        carry.as_ref().map(|(p, l)| (*p, l.as_slice())),
        ours,
    )?;
    let carried = before.map(|s| {
        let held = existing
            .as_deref()
            .and_then(|t| toml::from_str::<toml::Table>(t).ok())
            .and_then(|t| pinned_images_of(drop_in, &t).ok().flatten())
            .unwrap_or_default();
        let ours: Vec<String> = ours.iter().map(PinnedRef::to_string).collect();
        let entries = s
            .value
            .iter()
            .filter(|e| {
                !e.is_empty() && !held.iter().any(|h| h == *e) && !ours.contains(&(**e).to_string())
            })
            .count();
        Carried {
            from: s.from,
            entries,
        }
    });
    Ok(PinsPlan {
        merged,
        carried: carried.filter(|c| c.entries > 0),
    })
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
        let files: Vec<_> = fs_err::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files, vec![path.clone()]);
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

    fn config(files: &[(&str, &str)]) -> CrioConfig {
        CrioConfig::from_texts(files.iter().map(|(p, t)| (PathBuf::from(p), *t)))
    }

    const DIR: &str = "/etc/crio/crio.conf.d";

    #[test]
    fn plan_carries_the_list_ours_replaces_and_refuses_a_later_one() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("crio.conf.d");
        let ours = dir.join("50-pinned-images");
        let pins = |e: &str| format!("[crio.image]\npinned_images = [\"{e}\"]\n");
        let early = format!("quay.io/early@{DA}");
        let main_file = root.path().join("crio.conf");
        let (main_s, early_s) = (main_file.to_str().unwrap(), dir.join("10-early"));
        let c = config(&[
            (main_s, &pins("quay.io/main*")),
            (early_s.to_str().unwrap(), &pins(&early)),
            (
                dir.join("20-other").to_str().unwrap(),
                "[crio.runtime]\nx = 1\n",
            ),
        ]);
        let p = plan(&c, &dir, &ours, &[pin("quay.io/a", DB)]).unwrap();
        // Only the last list before ours applies without ours: crio.conf's is replaced by 10-early.
        assert_eq!(
            p.merged.entries,
            vec![format!("quay.io/a@{DB}"), early.clone()]
        );
        assert_eq!(
            p.carried,
            Some(Carried {
                from: early_s.clone(),
                entries: 1
            })
        );
        // Only crio.conf sets it: crio.conf's is carried.
        let c = config(&[(main_s, &pins("quay.io/main*"))]);
        let p = plan(&c, &dir, &ours, &[pin("quay.io/a", DB)]).unwrap();
        assert!(p.merged.entries.contains(&"quay.io/main*".to_string()));
        assert_eq!(p.carried.unwrap().from, main_file);
        // "50-pinned-images.d/a" is read after "50-pinned-images": refused, naming it.
        let later = dir.join("50-pinned-images.d/a");
        let c = config(&[(later.to_str().unwrap(), &pins("x"))]);
        let e = plan(&c, &dir, &ours, &[]).unwrap_err();
        assert!(matches!(e, PinsError::Overridden { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("50-pinned-images.d/a` is read after"),
            "{e}"
        );
        // An earlier "*" is not carried into ours (it would crash CRI-O once effective).
        let c = config(&[(early_s.to_str().unwrap(), &pins("*"))]);
        let e = plan(&c, &dir, &ours, &[]).unwrap_err();
        assert!(e.to_string().contains("10-early"), "{e}");
    }

    #[test]
    fn plan_refuses_unparsable_files_and_a_drop_in_crio_does_not_read() {
        let c = config(&[
            ("/etc/crio/crio.conf.d/.hidden", "[crio.image\n"),
            (
                "/etc/crio/crio.conf.d/99-bad",
                "[crio.image]\npinned_images = 3\n",
            ),
        ]);
        let e = plan(&c, Path::new(DIR), p(), &[]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(".hidden") && msg.contains("99-bad"), "{msg}");
        let e = plan(&CrioConfig::default(), Path::new("/elsewhere"), p(), &[]).unwrap_err();
        assert!(matches!(e, PinsError::NotRead { .. }), "{e}");
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
