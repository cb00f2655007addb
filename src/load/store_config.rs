//! Which containers-storage `load` writes: the one resolver of the store, the way CRI-O finds
//! the store it serves, and the storage.conf that makes skopeo write exactly that store.
//!
//! Order, per key (`root`, `runroot`, `storage_driver`; cri-o `pkg/config/config.go`
//! `DefaultConfig`, `UpdateFromDropInFile`; containers/storage `types/options.go`):
//! 1. `load`'s own `--storage-root`, `--runroot`, `--storage-driver` (as `crio --root` etc.);
//! 2. CRI-O's `[crio]` `root`, `runroot`, `storage_driver`, `imagestore` (the last file that
//!    sets them; an empty root/runroot/driver keeps the value below) and `storage_option`
//!    (appended to storage.conf's driver options);
//! 3. containers-storage's storage.conf: `CONTAINERS_STORAGE_CONF` (`--storage-conf`), else
//!    `/etc/containers/storage.conf` when it exists, else `/usr/share/containers/storage.conf`;
//!    only when one of them exists do `STORAGE_DRIVER` and `STORAGE_OPTS` apply (they
//!    replace its driver and its driver options); `overlay2` means `overlay`. This
//!    containers-storage has no storage.conf.d drop-ins;
//! 4. the defaults: `/var/lib/containers/storage`, `/run/containers/storage`, and a driver
//!    probed at start (an existing `<driver>-layers`, else overlay).
//!
//! skopeo gets the result as a generated storage.conf (`CONTAINERS_STORAGE_CONF`) and a plain
//! `containers-storage:NAME`: the storage.conf that applies, with the four locations set to
//! the resolved ones and CRI-O's `storage_option`s written into its option tables, so
//! skopeo's own containers-storage reads every option as CRI-O's does. The bracket form
//! `[driver@root+runroot:opts]` cannot carry an image store or an option holding a comma
//! (`mountopt = "nodev,metacopy=on"`), and drops storage.conf's options.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::crio_config::{CrioConfig, Key};
use super::storage::{self, DEFAULT_GRAPHROOT, DEFAULT_RUNROOT, Skopeo, Store};

/// storage.conf locations for root, in containers-storage's order (after
/// `CONTAINERS_STORAGE_CONF`).
pub const STORAGE_CONF_PATHS: [&str; 2] = [
    "/etc/containers/storage.conf",
    "/usr/share/containers/storage.conf",
];

/// Where a value of the store came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A `load` flag, e.g. `--storage-root`.
    Flag(&'static str),
    /// A CRI-O configuration file or a storage.conf.
    File(PathBuf),
    /// An environment variable, e.g. `STORAGE_DRIVER`.
    Env(&'static str),
    /// containers-storage's default.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "{flag}"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(var) => write!(f, "${var}"),
            Origin::Default => f.write_str("default"),
        }
    }
}

impl serde::Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub from: Origin,
}

fn sourced<T>(value: T, from: Origin) -> Sourced<T> {
    Sourced { value, from }
}

/// What the command line says about the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreFlags {
    /// `--storage-root`.
    pub root: Option<PathBuf>,
    /// `--runroot`.
    pub runroot: Option<PathBuf>,
    /// `--storage-driver`.
    pub driver: Option<String>,
    /// `--storage-conf`: the storage.conf to read, as `CONTAINERS_STORAGE_CONF`.
    pub storage_conf: Option<PathBuf>,
}

/// The environment containers-storage reads, and where it looks for storage.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageEnv {
    /// `CONTAINERS_STORAGE_CONF`.
    pub storage_conf: Option<PathBuf>,
    /// `STORAGE_DRIVER`.
    pub driver: Option<String>,
    /// `STORAGE_OPTS` (comma-separated).
    pub opts: Option<String>,
    /// [`STORAGE_CONF_PATHS`].
    pub conf_paths: Vec<PathBuf>,
}

impl StorageEnv {
    /// This process's environment and the system paths.
    pub fn from_process() -> StorageEnv {
        let var = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
        StorageEnv {
            storage_conf: std::env::var_os("CONTAINERS_STORAGE_CONF").map(PathBuf::from),
            driver: var("STORAGE_DRIVER").filter(|d| !d.is_empty()),
            opts: var("STORAGE_OPTS"),
            conf_paths: STORAGE_CONF_PATHS.iter().map(PathBuf::from).collect(),
        }
    }
}

/// Why the store cannot be resolved or must not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreConfigError {
    #[error("cannot read the storage.conf `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse the storage.conf `{}`: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
    #[error("{what} `{value}` (set in {from}) must be an absolute path")]
    NotAbsolute {
        what: &'static str,
        value: String,
        from: Origin,
    },
    #[error(
        "imagestore {} (set in {from}) is the graph root: containers-storage refuses an image store that is not a directory of its own",
        path.display()
    )]
    ImageStoreIsRoot { path: PathBuf, from: Origin },
    #[error(
        "storage option `{option}` (set in {from}) has no storage.conf equivalent, so skopeo cannot be made to apply it; write it as a `[storage.options.<driver>]` key in storage.conf, or name the store with --storage-root/--runroot/--storage-driver"
    )]
    Option { option: String, from: Origin },
    #[error("cannot write the storage.conf for skopeo in {}", dir.display())]
    Write {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The load refuses because the store it would write is not the one CRI-O serves: nothing
/// was changed (exit 1).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreRefused {
    #[error(
        "CRI-O at `{}` serves images from {} (ImageFsInfo) but `load` would write {} (root from {root_from}, driver from {driver_from}): refusing to import into a store CRI-O does not serve; point --crio-config/--crio-config-dir (or --storage-root/--runroot/--storage-driver, --storage-conf) at CRI-O's actual configuration",
        socket.display(), served.display(), ours.display()
    )]
    Mismatch {
        socket: PathBuf,
        served: PathBuf,
        ours: PathBuf,
        root_from: Origin,
        driver_from: Origin,
    },
    #[error(
        "CRI-O stores images in the image store {} (imagestore, set in {from}), but this skopeo ({skopeo}) cannot write an image store (its containers-storage predates `imagestore`): refusing to import where CRI-O would not see the images; install a skopeo built with containers-storage 1.48 or later",
        path.display()
    )]
    ImageStoreUnsupported {
        path: PathBuf,
        from: Origin,
        skopeo: String,
    },
}

/// The store, resolved: each location with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub root: Sourced<PathBuf>,
    pub runroot: Sourced<PathBuf>,
    /// `None`: containers-storage picks one when the store opens.
    pub driver: Option<Sourced<String>>,
    pub imagestore: Option<Sourced<PathBuf>>,
    /// Driver options beyond storage.conf's own tables: `STORAGE_OPTS` entries, then CRI-O's
    /// `storage_option`s, in the order CRI-O passes them.
    pub options: Vec<Sourced<String>>,
    /// The storage.conf containers-storage reads, if any.
    pub storage_conf: Option<PathBuf>,
    /// Its content (`[storage]` and its option tables), empty without one.
    conf: toml::Table,
    /// Whether `STORAGE_OPTS` replaced storage.conf's driver options.
    opts_replaced: bool,
}

/// Resolves the store as CRI-O would (see the module docs for the order).
///
/// # Errors
/// A storage.conf that cannot be read or parsed (containers-storage fails on it too); a
/// relative path; an image store equal to the graph root.
pub fn resolve(
    flags: &StoreFlags,
    crio: &CrioConfig,
    env: &StorageEnv,
) -> Result<Resolved, StoreConfigError> {
    let (storage_conf, conf) = read_storage_conf(flags, env)?;
    let storage = conf.get("storage").and_then(toml::Value::as_table);
    let conf_str = |key: &str| {
        storage
            .and_then(|t| t.get(key))
            .and_then(toml::Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let from_conf = || Origin::File(storage_conf.clone().unwrap_or_default());
    let crio_get = |key: Key| {
        crio.get(key)
            .map(|s| sourced(s.value, Origin::File(s.from)))
    };
    let path_of = |flag: Option<&PathBuf>, flag_name, key, conf_key, default: &str| {
        flag.map(|p| sourced(p.clone(), Origin::Flag(flag_name)))
            .or_else(|| crio_get(key).map(|s| sourced(PathBuf::from(s.value), s.from)))
            .or_else(|| conf_str(conf_key).map(|v| sourced(PathBuf::from(v), from_conf())))
            .unwrap_or_else(|| sourced(PathBuf::from(default), Origin::Default))
    };
    let root = path_of(
        flags.root.as_ref(),
        "--storage-root",
        Key::Root,
        "graphroot",
        DEFAULT_GRAPHROOT,
    );
    let runroot = path_of(
        flags.runroot.as_ref(),
        "--runroot",
        Key::RunRoot,
        "runroot",
        DEFAULT_RUNROOT,
    );
    // STORAGE_DRIVER and STORAGE_OPTS act only while a storage.conf is read.
    let env_applies = storage_conf.is_some();
    let driver = flags
        .driver
        .clone()
        .map(|d| sourced(d, Origin::Flag("--storage-driver")))
        .or_else(|| crio_get(Key::StorageDriver))
        .or_else(|| {
            env.driver
                .clone()
                .filter(|_| env_applies)
                .map(|d| sourced(d, Origin::Env("STORAGE_DRIVER")))
        })
        .or_else(|| conf_str("driver").map(|d| sourced(d, from_conf())))
        .map(|mut d| {
            if d.value == "overlay2" {
                d.value = "overlay".into();
            }
            d
        });
    // CRI-O decodes `imagestore` over storage.conf's: an empty one there clears it.
    let imagestore = crio_get(Key::ImageStore)
        .or_else(|| conf_str("imagestore").map(|v| sourced(v, from_conf())))
        .filter(|s| !s.value.is_empty())
        .map(|s| sourced(PathBuf::from(s.value), s.from));

    let mut options = Vec::new();
    let opts_replaced = env_applies && env.opts.is_some();
    if let Some(opts) = env.opts.as_ref().filter(|_| env_applies) {
        options.extend(
            opts.split(',')
                .filter(|o| !o.is_empty())
                .map(|o| sourced(o.to_string(), Origin::Env("STORAGE_OPTS"))),
        );
    }
    for opt in crio.storage_options() {
        let from = crio
            .parsed()
            .filter(|(_, t)| {
                t.get("crio")
                    .and_then(|c| c.get("storage_option"))
                    .and_then(toml::Value::as_array)
                    .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(&opt)))
            })
            .last()
            .map_or(Origin::Default, |(p, _)| Origin::File(p.to_path_buf()));
        options.retain(|o: &Sourced<String>| o.value != opt);
        options.push(sourced(opt, from));
    }

    for (what, s) in [("root", &root), ("runroot", &runroot)]
        .into_iter()
        .chain(imagestore.as_ref().map(|i| ("imagestore", i)))
    {
        if !s.value.is_absolute() {
            return Err(StoreConfigError::NotAbsolute {
                what,
                value: s.value.display().to_string(),
                from: s.from.clone(),
            });
        }
    }
    if let Some(i) = imagestore.as_ref().filter(|i| i.value == root.value) {
        return Err(StoreConfigError::ImageStoreIsRoot {
            path: i.value.clone(),
            from: i.from.clone(),
        });
    }
    Ok(Resolved {
        root,
        runroot,
        driver,
        imagestore,
        options,
        storage_conf,
        conf,
        opts_replaced,
    })
}

/// The storage.conf containers-storage reads for root, and its content.
fn read_storage_conf(
    flags: &StoreFlags,
    env: &StorageEnv,
) -> Result<(Option<PathBuf>, toml::Table), StoreConfigError> {
    // An explicit file must exist (containers-storage fails without it); the system files
    // are skipped when absent.
    let path = match flags.storage_conf.as_ref().or(env.storage_conf.as_ref()) {
        Some(p) => p.clone(),
        None => match env.conf_paths.iter().find(|p| p.exists()) {
            Some(p) => p.clone(),
            None => return Ok((None, toml::Table::new())),
        },
    };
    let text = fs_err::read_to_string(&path).map_err(|e| StoreConfigError::Io {
        path: path.clone(),
        source: e,
    })?;
    let table = toml::from_str::<toml::Table>(&text).map_err(|e| StoreConfigError::Parse {
        path: path.clone(),
        detail: e.message().to_string(),
    })?;
    Ok((Some(path), table))
}

/// The storage.conf keys that become driver options (containers/storage
/// `pkg/config.GetGraphDriverOptions` and `ReloadConfigurationFile`): cleared when
/// `STORAGE_OPTS` replaces them.
const OPTION_KEYS: [&str; 11] = [
    "additionalimagestores",
    "additionallayerstores",
    "size",
    "mount_program",
    "skip_mount_home",
    "ignore_chown_errors",
    "force_mask",
    "mountopt",
    "inodes",
    "use_composefs",
    "min_space",
];

/// Where a driver option `DRIVER.KEY=VALUE` goes in storage.conf: the table and key that
/// containers-storage turns back into exactly that option.
fn option_place(option: &str) -> Option<(Vec<String>, String, String)> {
    let (key, value) = option.split_once('=')?;
    let (driver, key) = key.split_once('.')?;
    let driver = match driver.to_ascii_lowercase().as_str() {
        "overlay2" => "overlay".to_string(),
        d => d.to_string(),
    };
    let key = key.to_ascii_lowercase();
    let options = || vec!["storage".to_string(), "options".to_string()];
    let in_driver = |k: &str| {
        let mut t = options();
        t.push(driver.clone());
        Some((t, k.to_string(), value.to_string()))
    };
    match (driver.as_str(), key.as_str()) {
        // The list keys, one option per entry.
        (_, "imagestore") => Some((options(), "additionalimagestores".into(), value.into())),
        (_, "additionallayerstore") => {
            Some((options(), "additionallayerstores".into(), value.into()))
        }
        (
            "overlay",
            k @ ("ignore_chown_errors"
            | "mount_program"
            | "mountopt"
            | "size"
            | "inodes"
            | "skip_mount_home"
            | "force_mask"
            | "use_composefs"),
        )
        | ("vfs", k @ "ignore_chown_errors")
        | ("btrfs", k @ ("min_space" | "size"))
        | ("zfs", k @ ("mountopt" | "size"))
        | ("aufs", k @ "mountopt") => in_driver(k),
        ("zfs", "fsname") => in_driver("name"),
        _ => None,
    }
}

fn table_at<'t>(root: &'t mut toml::Table, path: &[String]) -> &'t mut toml::Table {
    let mut t = root;
    for name in path {
        let entry = t
            .entry(name.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = match entry {
            toml::Value::Table(inner) => inner,
            _ => unreachable!("replaced by a table above"),
        };
    }
    t
}

impl Resolved {
    /// The storage.conf that describes exactly this store to skopeo: the one that applies,
    /// with the locations and the driver set and the extra options in its option tables.
    ///
    /// # Errors
    /// An option with no storage.conf equivalent.
    pub fn storage_conf_text(&self) -> Result<String, StoreConfigError> {
        let mut conf = self.conf.clone();
        let storage = table_at(&mut conf, &["storage".to_string()]);
        let set = |t: &mut toml::Table, k: &str, v: &Path| {
            t.insert(k.into(), toml::Value::String(v.display().to_string()));
        };
        set(storage, "graphroot", &self.root.value);
        set(storage, "runroot", &self.runroot.value);
        match &self.imagestore {
            Some(i) => set(storage, "imagestore", &i.value),
            None => {
                storage.remove("imagestore");
            }
        }
        match &self.driver {
            Some(d) => {
                storage.insert("driver".into(), toml::Value::String(d.value.clone()));
            }
            None => {
                storage.remove("driver");
            }
        }
        if self.opts_replaced {
            let options = table_at(storage, &["options".to_string()]);
            for k in OPTION_KEYS {
                options.remove(k);
            }
            for d in ["overlay", "vfs", "btrfs", "zfs", "aufs", "thinpool"] {
                options.remove(d);
            }
        }
        for opt in &self.options {
            let Some((path, key, value)) = option_place(&opt.value) else {
                return Err(StoreConfigError::Option {
                    option: opt.value.clone(),
                    from: opt.from.clone(),
                });
            };
            let t = table_at(&mut conf, &path);
            if key.ends_with('s') && path.len() == 2 {
                // A list key: each option adds an entry.
                let list = t
                    .entry(key)
                    .or_insert_with(|| toml::Value::Array(Vec::new()));
                if let toml::Value::Array(a) = list {
                    a.push(toml::Value::String(value));
                }
            } else {
                t.insert(key, toml::Value::String(value));
            }
        }
        let body = toml::to_string(&conf).map_err(|e| StoreConfigError::Parse {
            path: self.storage_conf.clone().unwrap_or_default(),
            detail: e.to_string(),
        })?;
        Ok(format!(
            "# Generated by `pinbundle load`: the store CRI-O serves, for skopeo.\n{body}"
        ))
    }

    /// Writes [`Resolved::storage_conf_text`] into a private temp dir; the store skopeo is
    /// handed from then on.
    ///
    /// # Errors
    /// See [`Resolved::storage_conf_text`]; the temp dir cannot be written.
    pub fn prepare(self) -> Result<PreparedStore, StoreConfigError> {
        let text = self.storage_conf_text()?;
        let write_err = |source| StoreConfigError::Write {
            dir: std::env::temp_dir(),
            source,
        };
        let dir = tempfile::Builder::new()
            .prefix("pinbundle-store.")
            .tempdir()
            .map_err(write_err)?;
        let path = dir.path().join("storage.conf");
        fs_err::write(&path, text).map_err(write_err)?;
        let store = Store {
            root: Some(self.root.value.clone()),
            runroot: Some(self.runroot.value.clone()),
            driver: self.driver.as_ref().map(|d| d.value.clone()),
            imagestore: self.imagestore.as_ref().map(|i| i.value.clone()),
            storage_conf: Some(path),
        };
        Ok(PreparedStore {
            store,
            resolved: self,
            _dir: dir,
        })
    }

    /// The report's view.
    pub fn report(&self, store: &Store) -> StoreReport {
        StoreReport {
            root: self.root.value.clone(),
            runroot: self.runroot.value.clone(),
            driver: store.driver_name(),
            imagestore: self.imagestore.as_ref().map(|i| i.value.clone()),
            options: self.options.iter().map(|o| o.value.clone()).collect(),
            storage_conf: self.storage_conf.clone(),
            from: StoreFrom {
                root: self.root.from.clone(),
                runroot: self.runroot.from.clone(),
                driver: self
                    .driver
                    .as_ref()
                    .map_or(Origin::Default, |d| d.from.clone()),
                imagestore: self.imagestore.as_ref().map(|i| i.from.clone()),
            },
            cross_checked: None,
        }
    }
}

/// The resolved store, with the generated storage.conf alive as long as this value.
#[derive(Debug)]
pub struct PreparedStore {
    pub store: Store,
    pub resolved: Resolved,
    _dir: tempfile::TempDir,
}

/// The store in `load --json`: where images go and where each location came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreReport {
    pub root: PathBuf,
    pub runroot: PathBuf,
    pub driver: String,
    pub imagestore: Option<PathBuf>,
    /// Driver options beyond storage.conf's tables (`STORAGE_OPTS`, CRI-O's `storage_option`).
    pub options: Vec<String>,
    /// The storage.conf containers-storage reads (`null`: none, its defaults apply).
    pub storage_conf: Option<PathBuf>,
    pub from: StoreFrom,
    /// The image filesystem CRI-O reported (`ImageFsInfo`) and that matched; `null` when
    /// CRI-O could not be asked.
    pub cross_checked: Option<PathBuf>,
}

/// Where each location came from: a file, a flag (`--storage-root`), an environment variable
/// (`$STORAGE_DRIVER`) or `default`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreFrom {
    pub root: Origin,
    pub runroot: Origin,
    pub driver: Origin,
    pub imagestore: Option<Origin>,
}

impl StoreReport {
    /// One line: `/var/lib/containers/storage (overlay), from FILE` or, when the values
    /// come from several places, each named.
    pub fn summary(&self) -> String {
        let mut place = format!("{} ({})", self.root.display(), self.driver);
        if let Some(i) = &self.imagestore {
            place.push_str(&format!(", images in {}", i.display()));
        }
        let f = &self.from;
        let mut sources = vec![&f.root, &f.runroot, &f.driver];
        sources.extend(&f.imagestore);
        sources.dedup();
        if sources.iter().all(|s| *s == sources[0]) {
            format!("{place}, from {}", sources[0])
        } else if sources.iter().all(|s| matches!(s, Origin::Flag(_))) {
            format!("{place}, from the command line")
        } else {
            let mut parts = vec![
                format!("root from {}", f.root),
                format!("runroot from {}", f.runroot),
                format!("driver from {}", f.driver),
            ];
            if let Some(i) = &f.imagestore {
                parts.push(format!("imagestore from {i}"));
            }
            format!("{place}; {}", parts.join(", "))
        }
    }
}

/// Refuses an image store this skopeo cannot write: it would put the images where CRI-O
/// does not look. Probed, not guessed from a version: a containers-storage that knows
/// `imagestore` creates `<imagestore>/vfs-images` when a store opens.
///
/// # Errors
/// [`StoreRefused::ImageStoreUnsupported`]; skopeo or the probe's temp dir failing.
pub fn check_imagestore(resolved: &Resolved, skopeo: &Skopeo) -> anyhow::Result<()> {
    let Some(imagestore) = &resolved.imagestore else {
        return Ok(());
    };
    if storage::skopeo_writes_imagestore(skopeo)? {
        return Ok(());
    }
    Err(StoreRefused::ImageStoreUnsupported {
        path: imagestore.value.clone(),
        from: imagestore.from.clone(),
        skopeo: skopeo.version().unwrap_or_else(|_| "skopeo".into()),
    }
    .into())
}

/// What asking CRI-O for its image filesystem gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrossCheck {
    /// CRI-O serves this store (the mountpoint it reported).
    Matched(PathBuf),
    /// CRI-O could not be asked; the warning says why.
    Unchecked(String),
}

/// Asks CRI-O at `socket` which image filesystem it serves (`ImageFsInfo`) and compares it
/// with `store`'s `<image root>/<driver>-images`.
///
/// # Errors
/// [`StoreRefused::Mismatch`] when CRI-O answers with another path.
pub fn cross_check(
    store: &Store,
    resolved: &Resolved,
    socket: &Path,
    timeout: Duration,
) -> Result<CrossCheck, StoreRefused> {
    let unchecked = |why: String| {
        Ok(CrossCheck::Unchecked(format!(
            "the store {} could not be cross-checked with CRI-O: {why}",
            store.images_dir().display()
        )))
    };
    if !socket.exists() {
        return unchecked(format!("no CRI socket at `{}`", socket.display()));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return unchecked(format!("cannot start the async runtime: {e}")),
    };
    let asked = runtime.block_on(async {
        let mut client = super::cri::CriClient::connect(socket, timeout).await?;
        client.image_fs_mountpoints().await
    });
    let served = match asked {
        Ok(m) => m,
        Err(e) if e.is_timeout() => {
            return unchecked(format!(
                "CRI-O at `{}` did not answer ImageFsInfo within {} s",
                socket.display(),
                timeout.as_secs()
            ));
        }
        Err(e) => return unchecked(crate::error::error_chain(&e)),
    };
    let ours = store.images_dir();
    let canonical = |p: &Path| fs_err::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    match served.first() {
        None => unchecked(format!(
            "CRI-O at `{}` reported no image filesystem",
            socket.display()
        )),
        Some(s) if canonical(s) == canonical(&ours) => Ok(CrossCheck::Matched(s.clone())),
        Some(s) => Err(StoreRefused::Mismatch {
            socket: socket.to_path_buf(),
            served: s.clone(),
            ours,
            root_from: resolved
                .imagestore
                .as_ref()
                .map_or(&resolved.root.from, |i| &i.from)
                .clone(),
            driver_from: resolved
                .driver
                .as_ref()
                .map_or(Origin::Default, |d| d.from.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(conf_paths: &[&Path]) -> StorageEnv {
        StorageEnv {
            storage_conf: None,
            driver: None,
            opts: None,
            conf_paths: conf_paths.iter().map(|p| p.to_path_buf()).collect(),
        }
    }

    fn crio(files: &[(&str, &str)]) -> CrioConfig {
        CrioConfig::from_texts(files.iter().map(|(p, t)| (PathBuf::from(p), *t)))
    }

    #[test]
    fn nothing_configured_gives_containers_storage_defaults() {
        let r = resolve(&StoreFlags::default(), &crio(&[]), &env(&[])).unwrap();
        assert_eq!(r.root, sourced(DEFAULT_GRAPHROOT.into(), Origin::Default));
        assert_eq!(r.runroot, sourced(DEFAULT_RUNROOT.into(), Origin::Default));
        assert_eq!(r.driver, None);
        assert_eq!(r.storage_conf, None);
    }

    #[test]
    fn flags_then_crio_then_env_then_storage_conf() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc-storage.conf");
        let usr = dir.path().join("usr-storage.conf");
        fs_err::write(
            &etc,
            "[storage]\ndriver = \"overlay2\"\ngraphroot = \"/etc-root\"\nrunroot = \"/etc-run\"\nimagestore = \"/etc-img\"\n",
        )
        .unwrap();
        fs_err::write(&usr, "[storage]\ngraphroot = \"/usr-root\"\n").unwrap();
        let e = env(&[&etc, &usr]);

        // storage.conf alone: the first that exists; overlay2 is overlay.
        let r = resolve(&StoreFlags::default(), &crio(&[]), &e).unwrap();
        assert_eq!(r.storage_conf.as_deref(), Some(etc.as_path()));
        assert_eq!(
            r.root,
            sourced("/etc-root".into(), Origin::File(etc.clone()))
        );
        assert_eq!(r.driver.as_ref().unwrap().value, "overlay");
        assert_eq!(r.imagestore.as_ref().unwrap().value, Path::new("/etc-img"));

        // STORAGE_DRIVER beats storage.conf; CRI-O beats both; an empty CRI-O value inherits,
        // an empty imagestore clears storage.conf's.
        let mut e2 = e.clone();
        e2.driver = Some("vfs".into());
        let c = crio(&[
            (
                "/c/crio.conf",
                "[crio]\nroot = \"/crio-root\"\nstorage_driver = \"btrfs\"\n",
            ),
            (
                "/c/crio.conf.d/10",
                "[crio]\nroot = \"\"\nrunroot = \"\"\nimagestore = \"\"\n",
            ),
        ]);
        let r = resolve(&StoreFlags::default(), &crio(&[]), &e2).unwrap();
        assert_eq!(r.driver.unwrap().from, Origin::Env("STORAGE_DRIVER"));
        let r = resolve(&StoreFlags::default(), &c, &e2).unwrap();
        assert_eq!(
            r.root,
            sourced("/crio-root".into(), Origin::File("/c/crio.conf".into()))
        );
        assert_eq!(r.runroot.from, Origin::File(etc.clone()));
        assert_eq!(r.driver.unwrap().value, "btrfs");
        assert_eq!(r.imagestore, None);

        // Flags beat everything, per key.
        let flags = StoreFlags {
            root: Some("/flag-root".into()),
            ..StoreFlags::default()
        };
        let r = resolve(&flags, &c, &e2).unwrap();
        assert_eq!(r.root.from, Origin::Flag("--storage-root"));
        assert_eq!(r.driver.unwrap().value, "btrfs");

        // --storage-conf (like CONTAINERS_STORAGE_CONF) replaces the search.
        let flags = StoreFlags {
            storage_conf: Some(usr.clone()),
            ..StoreFlags::default()
        };
        let r = resolve(&flags, &crio(&[]), &e).unwrap();
        assert_eq!(r.root.value, Path::new("/usr-root"));
        assert_eq!(r.driver, None);
    }

    #[test]
    fn env_applies_only_with_a_storage_conf() {
        let mut e = env(&[Path::new("/nonexistent/storage.conf")]);
        e.driver = Some("vfs".into());
        e.opts = Some("vfs.ignore_chown_errors=true".into());
        let r = resolve(&StoreFlags::default(), &crio(&[]), &e).unwrap();
        assert_eq!(r.driver, None);
        assert!(r.options.is_empty());
    }

    #[test]
    fn an_explicit_storage_conf_must_exist_and_parse() {
        let flags = StoreFlags {
            storage_conf: Some("/nonexistent/storage.conf".into()),
            ..StoreFlags::default()
        };
        let e = resolve(&flags, &crio(&[]), &env(&[])).unwrap_err();
        assert!(matches!(e, StoreConfigError::Io { .. }), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("storage.conf");
        fs_err::write(&bad, "[storage\n").unwrap();
        let flags = StoreFlags {
            storage_conf: Some(bad.clone()),
            ..StoreFlags::default()
        };
        let e = resolve(&flags, &crio(&[]), &env(&[])).unwrap_err();
        assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
    }

    #[test]
    fn relative_paths_and_an_imagestore_at_the_root_are_refused() {
        let c = crio(&[("/c/10", "[crio]\nroot = \"var/lib\"\n")]);
        let e = resolve(&StoreFlags::default(), &c, &env(&[])).unwrap_err();
        assert!(e.to_string().contains("/c/10"), "{e}");
        let c = crio(&[("/c/10", "[crio]\nroot = \"/s\"\nimagestore = \"/s\"\n")]);
        let e = resolve(&StoreFlags::default(), &c, &env(&[])).unwrap_err();
        assert!(
            matches!(e, StoreConfigError::ImageStoreIsRoot { .. }),
            "{e}"
        );
    }

    #[test]
    fn the_generated_storage_conf_keeps_options_and_adds_crio_ones() {
        let dir = tempfile::tempdir().unwrap();
        let sc = dir.path().join("storage.conf");
        fs_err::write(
            &sc,
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"/g\"\n[storage.options]\npull_options = {enable_partial_images = \"false\"}\n[storage.options.overlay]\nmountopt = \"nodev\"\n",
        )
        .unwrap();
        let c = crio(&[(
            "/c/10",
            "[crio]\nroot = \"/crio\"\nstorage_option = [\"overlay.mountopt=nodev,metacopy=on\", \"overlay.imagestore=/ro\"]\n",
        )]);
        let r = resolve(&StoreFlags::default(), &c, &env(&[&sc])).unwrap();
        let text = r.storage_conf_text().unwrap();
        let t: toml::Table = toml::from_str(&text).unwrap();
        let s = &t["storage"];
        assert_eq!(s["graphroot"].as_str(), Some("/crio"));
        assert_eq!(s["runroot"].as_str(), Some(DEFAULT_RUNROOT));
        assert_eq!(s["driver"].as_str(), Some("overlay"));
        let o = &s["options"];
        assert_eq!(o["overlay"]["mountopt"].as_str(), Some("nodev,metacopy=on"));
        assert_eq!(o["additionalimagestores"][0].as_str(), Some("/ro"));
        assert_eq!(
            o["pull_options"]["enable_partial_images"].as_str(),
            Some("false")
        );

        // An option storage.conf cannot say is refused, naming where it came from.
        let c = crio(&[("/c/20", "[crio]\nstorage_option = [\"overlay.bogus=1\"]\n")]);
        let r = resolve(&StoreFlags::default(), &c, &env(&[])).unwrap();
        let e = r.storage_conf_text().unwrap_err();
        assert!(
            e.to_string().contains("overlay.bogus=1") && e.to_string().contains("/c/20"),
            "{e}"
        );
    }

    #[test]
    fn storage_opts_replace_the_files_driver_options() {
        let dir = tempfile::tempdir().unwrap();
        let sc = dir.path().join("storage.conf");
        fs_err::write(
            &sc,
            "[storage]\ndriver = \"overlay\"\n[storage.options]\nmountopt = \"a\"\n[storage.options.overlay]\nmountopt = \"b\"\nsize = \"10G\"\n",
        )
        .unwrap();
        let mut e = env(&[&sc]);
        e.opts = Some("overlay.size=5G".into());
        let r = resolve(&StoreFlags::default(), &crio(&[]), &e).unwrap();
        let t: toml::Table = toml::from_str(&r.storage_conf_text().unwrap()).unwrap();
        let o = t["storage"]["options"].as_table().unwrap();
        assert_eq!(o.get("mountopt"), None);
        assert_eq!(o["overlay"].as_table().unwrap().len(), 1);
        assert_eq!(o["overlay"]["size"].as_str(), Some("5G"));
    }

    #[test]
    fn summary_names_one_source_or_each() {
        let r = resolve(
            &StoreFlags::default(),
            &crio(&[(
                "/etc/crio/crio.conf.d/10-storage.conf",
                "[crio]\nroot = \"/r\"\nrunroot = \"/rr\"\nstorage_driver = \"vfs\"\n",
            )]),
            &env(&[]),
        )
        .unwrap();
        let store = Store {
            driver: Some("vfs".into()),
            ..Store::default()
        };
        assert_eq!(
            r.report(&store).summary(),
            "/r (vfs), from /etc/crio/crio.conf.d/10-storage.conf"
        );
        let c = crio(&[("/c/10", "[crio]\nroot = \"/r\"\n")]);
        let r = resolve(&StoreFlags::default(), &c, &env(&[])).unwrap();
        assert_eq!(
            r.report(&store).summary(),
            "/r (vfs); root from /c/10, runroot from default, driver from default"
        );
    }
}
