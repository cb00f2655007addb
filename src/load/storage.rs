//! The containers-storage side of `load`: every `skopeo` invocation pinbundle makes lives here.
//!
//! Images are imported with the canonical writer, `skopeo copy`, from pinbundle's own read-only
//! registry on loopback ([`crate::registry::server`]):
//!
//! ```text
//! skopeo --policy PRIVATE/policy.json copy --src-tls-verify=false \
//!     --src-authfile PRIVATE/auth.json --retry-times 0 --preserve-digests \
//!     --digestfile TMP docker://127.0.0.1:PORT/<served name>@<digest> \
//!     containers-storage:[driver@root+runroot]<name>@<digest>
//! ```
//!
//! `PRIVATE` is a directory only this user can read ([`PrivateDir`]): the auth file holds the
//! loopback registry's per-run credential, which never appears on a command line, and the
//! policy is the one `load` generated from the original names' rules
//! ([`super::policy`]). Every child has a deadline ([`CopyTimeout`] for copies, scaled by the
//! image's size; [`SMALL_TIMEOUT`] for the rest) and is killed when it passes.
//!
//! Copying by digest gives the image the storage name `name@digest`, which is what CRI-O's
//! `pinned_images` matches (it matches names only, never digests or IDs). When the image was
//! requested by tag, a second copy, again from the digest, adds `name:tag`; it is cheap because
//! the layers are already present, and unlike a copy by tag it cannot pick up another image.
//!
//! This module does not decide what to load or pin (`load`), and never contacts anything but
//! the given 127.0.0.1 address: without an auth file no credentials are passed
//! (`--src-no-creds`).

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::bundle::format::{ImageEntry, media};
use crate::platform::Platform;
use crate::reference::{Digest, PinnedRef};
use crate::registry::server::served_name;

/// The storage driver used when a store is named explicitly without one.
pub const DEFAULT_DRIVER: &str = "overlay";
/// The graph root containers-storage uses for root when storage.conf names none.
pub const DEFAULT_GRAPHROOT: &str = "/var/lib/containers/storage";
/// The run root containers-storage uses for root when storage.conf names none.
pub const DEFAULT_RUNROOT: &str = "/run/containers/storage";
/// Drivers probed, in containers-storage's priority order, when the driver is not configured.
const DRIVER_PRIORITY: [&str; 6] = ["overlay", "btrfs", "zfs", "vfs", "devmapper", "aufs"];
/// How much of a failed child's stderr goes into the error.
const STDERR_TAIL: usize = 2048;
/// The deadline of a skopeo call that copies nothing (`--version`, `inspect`, `delete`):
/// they read small files or unlink a layer tree, so two minutes means a store lock held
/// elsewhere or a wedged child.
pub const SMALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What can go wrong talking to containers-storage. Each variant names the image, digest,
/// program or file involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error(
        "`{program}` was not found (PATH); pinbundle load needs skopeo: install the `skopeo` package (Debian/Ubuntu: `apt-get install skopeo`, RHEL/Fedora: `dnf install skopeo`)"
    )]
    SkopeoMissing { program: String },
    #[error("cannot run `{argv}`")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{what}: skopeo did not finish within {}s and was killed (`{argv}`); the store may be locked by another process or its disk very slow",
        after.as_secs()
    )]
    Timeout {
        /// What the call was for (`importing quay.io/a@sha256:…`).
        what: String,
        argv: String,
        after: Duration,
    },
    #[error("`{argv}` failed ({status}): {stderr}")]
    Skopeo {
        argv: String,
        status: String,
        /// The last bytes of the child's stderr.
        stderr: String,
    },
    #[error(
        "importing {image}: skopeo wrote manifest {found} (digest file {}), expected {expected}",
        digestfile.display()
    )]
    DigestMismatch {
        image: PinnedRef,
        expected: String,
        found: String,
        digestfile: PathBuf,
    },
    #[error(
        "{image} carries no image for this node's platform {wanted}; the bundle has: {available} (recreate the bundle with `--platform {wanted}`)"
    )]
    PlatformMissing {
        image: PinnedRef,
        wanted: String,
        available: String,
    },
    #[error("invalid containers-storage location: {detail}")]
    InvalidStore { detail: String },
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A containers-storage store, fully located: the one [`super::store_config`] resolved the
/// way CRI-O does, or one named explicitly.
///
/// With `storage_conf` set (a generated storage.conf describing exactly this store, options
/// included) skopeo gets it as `CONTAINERS_STORAGE_CONF` and a plain `containers-storage:NAME`
/// reference, so its own containers-storage applies every setting as CRI-O's does. Without
/// it, a store with a root is named in the reference (`[driver@root+runroot]`, no options);
/// [`Store::default`] is containers-storage's own default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Store {
    /// The graph root, e.g. `/var/lib/containers/storage`.
    pub root: Option<PathBuf>,
    /// The run root, e.g. `/run/containers/storage`.
    pub runroot: Option<PathBuf>,
    /// The storage driver; found as containers-storage finds it when `None`.
    pub driver: Option<String>,
    /// A separate image store (containers-storage `imagestore`): images and their layers
    /// live there, containers under `root`.
    pub imagestore: Option<PathBuf>,
    /// The storage.conf skopeo reads (`CONTAINERS_STORAGE_CONF`).
    pub storage_conf: Option<PathBuf>,
}
/// An image record of the store's `<driver>-images/images.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ImageRecord {
    /// The image ID (its config digest's hex).
    pub id: String,
    /// Storage names: `name@sha256:…`, `name:tag`. CRI-O pins match these only.
    #[serde(default)]
    pub names: Vec<String>,
    /// Manifest digests recorded for the image.
    #[serde(default)]
    pub digests: Vec<Digest>,
}

impl Store {
    /// An explicit store: `containers-storage:[driver@root+runroot]`.
    pub fn explicit(driver: &str, root: &Path, runroot: &Path) -> Store {
        Store {
            root: Some(root.to_path_buf()),
            runroot: Some(runroot.to_path_buf()),
            driver: Some(driver.to_string()),
            ..Store::default()
        }
    }

    /// The transport reference for `name` (`name@digest` or `name:tag`):
    /// `containers-storage:name` when a storage.conf describes the store (or none is named),
    /// else `containers-storage:[driver@root+runroot]name`.
    pub fn transport(&self, name: &str) -> Result<String> {
        if self.storage_conf.is_some() || self.root.is_none() && self.runroot.is_none() {
            return Ok(format!("containers-storage:{name}"));
        }
        let (Some(root), Some(runroot)) = (&self.root, &self.runroot) else {
            return Err(StorageError::InvalidStore {
                detail: "an explicit store needs both a root and a runroot".into(),
            });
        };
        if self.imagestore.is_some() {
            return Err(StorageError::InvalidStore {
                detail: "an image store can only be described by a storage.conf".into(),
            });
        }
        let driver = self.driver.as_deref().unwrap_or(DEFAULT_DRIVER);
        for (what, p) in [("root", root), ("runroot", runroot)] {
            let s = p.to_str().unwrap_or("");
            // The bracket syntax has no escaping: `]`, `+` and `@` would end its fields.
            if !p.is_absolute() || s.is_empty() || s.contains([']', '+', '@', ':']) {
                return Err(StorageError::InvalidStore {
                    detail: format!(
                        "the {what} {} must be an absolute UTF-8 path without `]`, `+`, `@` or `:`",
                        p.display()
                    ),
                });
            }
        }
        if driver.is_empty() || !driver.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(StorageError::InvalidStore {
                detail: format!("bad storage driver \"{driver}\""),
            });
        }
        Ok(format!(
            "containers-storage:[{driver}@{}+{}]{name}",
            root.display(),
            runroot.display()
        ))
    }

    /// The graph root: containers, and images unless there is an image store.
    pub fn graphroot(&self) -> PathBuf {
        self.root
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_GRAPHROOT))
    }

    /// Where image layers are written: the image store when there is one, else the graph root.
    pub fn image_root(&self) -> PathBuf {
        self.imagestore.clone().unwrap_or_else(|| self.graphroot())
    }

    /// The driver: configured, else the first of containers-storage's priority list that
    /// already has a store here, else [`DEFAULT_DRIVER`].
    pub fn driver_name(&self) -> String {
        if let Some(d) = &self.driver {
            return d.clone();
        }
        let root = self.graphroot();
        DRIVER_PRIORITY
            .iter()
            .find(|d| {
                root.join(format!("{d}-layers")).is_dir()
                    || self.image_root().join(format!("{d}-images")).is_dir()
            })
            .unwrap_or(&DEFAULT_DRIVER)
            .to_string()
    }

    /// `<image root>/<driver>-images`: what CRI-O's `ImageFsInfo` reports as the image
    /// filesystem's mountpoint (cri-o `server/image_fs_info.go`).
    pub fn images_dir(&self) -> PathBuf {
        self.image_root()
            .join(format!("{}-images", self.driver_name()))
    }

    /// The path of the store's image list (`<image root>/<driver>-images/images.json`; with
    /// an image store, containers-storage keeps it there), whether or not it exists yet.
    pub fn images_json(&self) -> PathBuf {
        self.images_dir().join("images.json")
    }

    /// The store's layer lists: `<root>/<driver>-layers/layers.json` and, with an image
    /// store, `<imagestore>/<driver>-layers/layers.json` (where image layers go).
    pub fn layers_jsons(&self) -> Vec<PathBuf> {
        let d = format!("{}-layers", self.driver_name());
        let mut out = vec![self.graphroot().join(&d).join("layers.json")];
        if let Some(i) = &self.imagestore {
            out.push(i.join(&d).join("layers.json"));
        }
        out
    }

    /// The blob digests of the store's complete layers: each layer's `compressed-diff-digest`
    /// and `diff-digest`. containers/image reuses a layer found by either (TryReusingBlob)
    /// instead of fetching the blob, which is what lets `load` import a delta bundle.
    pub fn layer_digests(&self) -> Result<std::collections::BTreeSet<Digest>> {
        #[derive(serde::Deserialize)]
        struct Layer {
            #[serde(rename = "compressed-diff-digest")]
            compressed: Option<String>,
            #[serde(rename = "diff-digest")]
            uncompressed: Option<String>,
            #[serde(default)]
            flags: std::collections::HashMap<String, serde_json::Value>,
        }
        let mut layers: Vec<Layer> = Vec::new();
        for path in self.layers_jsons() {
            let text = match fs_err::read(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::Io { path, source: e }),
            };
            let list: Vec<Layer> =
                serde_json::from_slice(&text).map_err(|e| StorageError::Parse {
                    path,
                    detail: e.to_string(),
                })?;
            layers.extend(list);
        }
        Ok(layers
            .into_iter()
            // A layer still being written is not there yet.
            .filter(|l| l.flags.get("incomplete") != Some(&serde_json::Value::Bool(true)))
            .flat_map(|l| [l.compressed, l.uncompressed])
            .flatten()
            .filter_map(|d| d.parse().ok())
            .collect())
    }

    /// Every image record of the store (empty when the store has none yet). containers-storage
    /// replaces this file atomically, so reading it without its lock sees a consistent list.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let path = self.images_json();
        let text = match fs_err::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(StorageError::Io { path, source: e });
            }
        };
        serde_json::from_slice(&text).map_err(|e| StorageError::Parse {
            path,
            detail: e.to_string(),
        })
    }

    /// The image that carries the storage name `pin` (exactly `name@sha256:…`).
    pub fn record_named(&self, pin: &PinnedRef) -> Result<Option<ImageRecord>> {
        let wanted = pin.to_string();
        Ok(self
            .images()?
            .into_iter()
            .find(|r| r.names.contains(&wanted)))
    }

    /// Whether `pin` is loaded: an image carries exactly the name `name@digest` (what CRI-O
    /// pins match; an image found by digest under another name does not count, copying again
    /// adds the name) and skopeo can read it back by that reference.
    pub fn is_present(&self, skopeo: &Skopeo, pin: &PinnedRef) -> Result<bool> {
        if self.record_named(pin)?.is_none() {
            return Ok(false);
        }
        let reference = self.transport(&pin.to_string())?;
        let args = vec![
            OsString::from("inspect"),
            OsString::from("--raw"),
            OsString::from(&reference),
        ];
        match skopeo.run(self, &args) {
            Ok(_) => Ok(true),
            // Listed but unreadable (e.g. removed meanwhile): treat as absent, the copy repairs.
            Err(StorageError::Skopeo { stderr, .. })
                if stderr.contains("does not resolve to an image ID")
                    || stderr.contains("identifier is not an image")
                    || stderr.contains("image not known") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether this skopeo writes an image store: its containers-storage creates
/// `<imagestore>/vfs-images` when a store configured with one opens (one that predates
/// `imagestore` ignores the key with a warning). Probed in a throwaway vfs store.
///
/// # Errors
/// The temp dir cannot be made; skopeo cannot run.
pub fn skopeo_writes_imagestore(skopeo: &Skopeo) -> Result<bool> {
    let dir = tempfile::Builder::new()
        .prefix("pinbundle-probe.")
        .tempdir()
        .map_err(|source| StorageError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let p = |n: &str| dir.path().join(n);
    let conf = p("storage.conf");
    let text = format!(
        "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\nimagestore = \"{}\"\n",
        p("root").display(),
        p("run").display(),
        p("images").display()
    );
    fs_err::write(&conf, text).map_err(|source| StorageError::Io {
        path: conf.clone(),
        source,
    })?;
    let store = Store {
        storage_conf: Some(conf),
        ..Store::default()
    };
    // Fails (no such image) after opening the store, which is all the probe needs.
    let args = [
        OsString::from("inspect"),
        OsString::from("--raw"),
        OsString::from("containers-storage:pinbundle.invalid/probe:none"),
    ];
    match skopeo.run(&store, &args) {
        Ok(_) | Err(StorageError::Skopeo { .. }) => {}
        Err(e) => return Err(e),
    }
    Ok(p("images").join("vfs-images").is_dir())
}

/// What [`roll_back`] did to the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolledBack {
    /// Images this load added, removed again: their IDs and the names they had.
    pub removed: Vec<RemovedImage>,
    /// What could not be undone, each said in a sentence (an image that could not be deleted,
    /// a name added to an image that was there before).
    pub left: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RemovedImage {
    pub id: String,
    pub names: Vec<String>,
}

impl RolledBack {
    /// One line for an error message.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .removed
            .iter()
            .map(|r| {
                format!(
                    "removed {} (image {})",
                    r.names.join(", "),
                    &r.id[..r.id.len().min(12)]
                )
            })
            .collect();
        parts.extend(self.left.iter().cloned());
        if parts.is_empty() {
            "the store was not changed".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Puts the store back as `before` (its image list before a load began): deletes every image
/// that was not there (`skopeo delete`, which also removes the layers only it used), and never
/// touches an image that was. A name a failed load added to an image that was there before
/// cannot be removed with skopeo: it is reported in [`RolledBack::left`].
pub fn roll_back(store: &Store, skopeo: &Skopeo, before: &[ImageRecord]) -> RolledBack {
    let mut done = RolledBack::default();
    let after = match store.images() {
        Ok(a) => a,
        Err(e) => {
            done.left.push(format!(
                "the store's image list could not be read to undo the load: {e}"
            ));
            return done;
        }
    };
    let old: std::collections::HashMap<&str, &ImageRecord> =
        before.iter().map(|r| (r.id.as_str(), r)).collect();
    for r in &after {
        match old.get(r.id.as_str()) {
            None => {
                let deleted = store.transport(&format!("@{}", r.id)).and_then(|t| {
                    skopeo.run(store, &[OsString::from("delete"), OsString::from(t)])
                });
                match deleted {
                    Ok(_) => done.removed.push(RemovedImage {
                        id: r.id.clone(),
                        names: r.names.clone(),
                    }),
                    Err(e) => done.left.push(format!(
                        "image {} ({}) could not be removed: {e}",
                        r.id,
                        r.names.join(", ")
                    )),
                }
            }
            Some(was) => {
                let added: Vec<&String> =
                    r.names.iter().filter(|n| !was.names.contains(n)).collect();
                if !added.is_empty() {
                    done.left.push(format!(
                        "image {} was present before the load and keeps the names it added: {}",
                        r.id,
                        added
                            .iter()
                            .map(|n| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
    }
    done
}

/// How `skopeo` is found and run.
#[derive(Debug, Clone)]
pub struct Skopeo {
    program: OsString,
    search_path: Option<OsString>,
}

impl Default for Skopeo {
    fn default() -> Self {
        Skopeo {
            program: OsString::from("skopeo"),
            search_path: None,
        }
    }
}

/// The output of a successful child.
#[derive(Debug)]
struct Output {
    stdout: Vec<u8>,
}

impl Skopeo {
    /// `skopeo` from `PATH`.
    pub fn new() -> Skopeo {
        Skopeo::default()
    }

    /// Runs `program` instead (a path or a name looked up in `PATH`).
    pub fn with_program(mut self, program: impl Into<OsString>) -> Skopeo {
        self.program = program.into();
        self
    }

    /// Looks the program up (and runs it) with this `PATH` instead of the inherited one.
    pub fn with_search_path(mut self, path: impl Into<OsString>) -> Skopeo {
        self.search_path = Some(path.into());
        self
    }

    /// Checks that skopeo runs; returns its version line (`skopeo version 1.9.3`).
    pub fn version(&self) -> Result<String> {
        let out = self.run(&Store::default(), &[OsString::from("--version")])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn argv(&self, args: &[OsString]) -> String {
        std::iter::once(self.program.as_os_str())
            .chain(args.iter().map(OsString::as_os_str))
            .map(OsStr::to_string_lossy)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Deletes the image with ID `id` from `store` (`skopeo delete`, which also removes the
    /// layers only it used), whatever names it has.
    ///
    /// # Errors
    /// skopeo failed or timed out.
    pub fn delete_image(&self, store: &Store, id: &str) -> Result<()> {
        let reference = store.transport(&format!("@{id}"))?;
        self.run(
            store,
            &[OsString::from("delete"), OsString::from(reference)],
        )
        .map(drop)
    }

    /// Runs skopeo with `args` under [`SMALL_TIMEOUT`].
    fn run(&self, store: &Store, args: &[OsString]) -> Result<Output> {
        let what = args.first().map_or_else(
            || "skopeo".into(),
            |a| format!("skopeo {}", a.to_string_lossy()),
        );
        self.run_timed(store, args, SMALL_TIMEOUT, &what)
    }

    /// Runs skopeo with `args`: stdin null, stdout collected, stderr's tail kept for the error;
    /// killed after `timeout` ([`StorageError::Timeout`], naming `what`).
    fn run_timed(
        &self,
        store: &Store,
        args: &[OsString],
        timeout: Duration,
        what: &str,
    ) -> Result<Output> {
        let argv = self.argv(args);
        tracing::debug!(argv = %argv, "running skopeo");
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = &self.search_path {
            cmd.env("PATH", p);
        }
        if let Some(conf) = &store.storage_conf {
            // The file describes the whole store: these would override its driver and options.
            cmd.env("CONTAINERS_STORAGE_CONF", conf)
                .env_remove("STORAGE_DRIVER")
                .env_remove("STORAGE_OPTS");
        }
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                StorageError::SkopeoMissing {
                    program: self.program.to_string_lossy().into_owned(),
                }
            } else {
                StorageError::Spawn {
                    argv: argv.clone(),
                    source,
                }
            }
        })?;
        // Drain both pipes on threads of their own so neither can fill up and block the
        // child, while this thread watches the deadline.
        let stderr_reader = drain(child.stderr.take());
        let stdout_reader = drain(child.stdout.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            let waited = child.try_wait().map_err(|source| StorageError::Spawn {
                argv: argv.clone(),
                source,
            })?;
            if let Some(status) = waited {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StorageError::Timeout {
                    what: what.to_string(),
                    argv,
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = stdout_reader.join().unwrap_or_default();
        let stderr = stderr_reader.join().unwrap_or_default();
        if !status.success() {
            return Err(StorageError::Skopeo {
                argv,
                status: describe(status),
                stderr: tail(&stderr),
            });
        }
        Ok(Output { stdout })
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// The last [`STDERR_TAIL`] bytes of `bytes`, as trimmed text.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let text = text.trim();
    if start > 0 {
        format!("…{text}")
    } else {
        text.to_string()
    }
}

/// This machine's platform in Go's terms: what skopeo picks from an index by default.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    };
    Platform {
        os: std::env::consts::OS.to_string(),
        architecture: architecture.to_string(),
        variant: None,
    }
}

/// The deadline of one `skopeo copy`: `base` plus the image's size at `bytes_per_second`.
///
/// The defaults are deliberately slack, so that only a hung copy is killed: skopeo from the
/// loopback registry into overlay was measured at 56 MB/s on a 2-core VM (field notes), and
/// the default rate assumes a disk 14 times slower (4 MiB/s) on the larger of the compressed
/// and unpacked sizes; the 5-minute base covers skopeo's start, the store lock and small
/// images. A 1 GiB image gets 5 min + 256 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyTimeout {
    pub base: Duration,
    pub bytes_per_second: u64,
}

impl Default for CopyTimeout {
    fn default() -> Self {
        CopyTimeout {
            base: Duration::from_secs(300),
            bytes_per_second: 4 << 20,
        }
    }
}

impl CopyTimeout {
    /// The deadline for copying `image`.
    pub fn for_image(&self, image: &ImageEntry) -> Duration {
        let bytes = image.size.max(image.uncompressed_size);
        let secs = bytes / self.bytes_per_second.max(1);
        self.base.saturating_add(Duration::from_secs(secs))
    }
}

/// A directory only this user can enter (mode 0700), for the files skopeo reads that others
/// must not: the auth file and the generated policy. Removed when dropped.
#[derive(Debug)]
pub struct PrivateDir(tempfile::TempDir);

impl PrivateDir {
    /// A new private directory under the system's temp dir.
    pub fn new() -> Result<PrivateDir> {
        use std::os::unix::fs::PermissionsExt as _;
        // Created with this mode, never widened by the umask, so no window where others can
        // look in.
        tempfile::Builder::new()
            .prefix("pinbundle-load.")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map(PrivateDir)
            .map_err(|source| StorageError::Io {
                path: std::env::temp_dir(),
                source,
            })
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Writes `name` in the directory with mode 0600 (created new: never an existing file).
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        use fs_err::os::unix::fs::OpenOptionsExt as _;
        use std::io::Write as _;
        let path = self.path().join(name);
        let io = |source| StorageError::Io {
            path: path.clone(),
            source,
        };
        let mut f = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        Ok(path)
    }

    /// Writes a containers-auth.json(5) file that gives `credential` for `registry` only.
    pub fn write_auth_file(
        &self,
        registry: SocketAddr,
        credential: &crate::registry::server::Credential,
    ) -> Result<PathBuf> {
        let doc = serde_json::json!({
            "auths": { registry.to_string(): { "auth": credential.basic() } }
        });
        self.write("auth.json", doc.to_string().as_bytes())
    }
}

/// Options of [`import`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub skopeo: Skopeo,
    /// Pick this platform from an index instead of the host's (`--override-os/-arch/-variant`).
    pub platform: Option<Platform>,
    /// A signature policy file for skopeo (`--policy`); `None` uses the system's policy.json.
    pub policy: Option<PathBuf>,
    /// A directory for skopeo's temporary files (`--tmpdir`); `None` uses its default.
    pub tmpdir: Option<PathBuf>,
    /// An auth file with the loopback registry's credential (`--src-authfile`); `None`
    /// copies anonymously (`--src-no-creds`).
    pub auth_file: Option<PathBuf>,
    /// The deadline of each copy.
    pub timeout: CopyTimeout,
}

/// What [`import`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The image already carried `name@digest` (and `name:tag` when tagged): nothing copied.
    AlreadyPresent,
    /// skopeo copied the image.
    Imported {
        /// The manifest digest skopeo reported (the platform instance's for an index).
        written: Digest,
        /// The `name:tag` name added, if the image has a tag.
        tagged: Option<String>,
        elapsed: Duration,
    },
}

/// Imports `image` from pinbundle's registry at `server` into `store`, as `name@digest` and
/// (when tagged) `name:tag`, unless it is already there.
///
/// # Errors
/// skopeo missing or failing (with its argv and stderr tail), a digest other than the bundle's,
/// an index without this node's platform, an unreadable store.
pub fn import(
    server: SocketAddr,
    image: &ImageEntry,
    store: &Store,
    opts: &ImportOptions,
) -> Result<ImportOutcome> {
    let started = Instant::now();
    let pin = PinnedRef {
        name: image.name.clone(),
        digest: image.digest.clone(),
    };
    let tagged = image.tag.as_ref().map(|t| format!("{}:{t}", image.name));
    // Which manifest digests skopeo may write: the image's own, or for an index the carried
    // instances of the chosen platform.
    let accepted = accepted_digests(&pin, image, opts.platform.as_ref())?;

    if let Some(record) = store.record_named(&pin)? {
        let tag_ok = tagged
            .as_ref()
            .is_none_or(|t| record.names.iter().any(|n| n == t));
        if tag_ok && store.is_present(&opts.skopeo, &pin)? {
            return Ok(ImportOutcome::AlreadyPresent);
        }
    }

    let source = format!(
        "docker://{server}/{}@{}",
        served_name(&image.name),
        image.digest
    );
    let digestfile = tempfile::Builder::new()
        .prefix("pinbundle-digest.")
        .tempfile()
        .map_err(|source| StorageError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let mut written = None;
    let timeout = opts.timeout.for_image(image);
    let targets = std::iter::once(pin.to_string()).chain(tagged.clone());
    for target in targets {
        let args = copy_args(opts, &source, &store.transport(&target)?, digestfile.path());
        let what = format!("importing {target}");
        opts.skopeo.run_timed(store, &args, timeout, &what)?;
        let found = fs_err::read_to_string(digestfile.path())
            .map_err(|e| StorageError::Io {
                path: digestfile.path().to_path_buf(),
                source: e,
            })?
            .trim()
            .to_string();
        let digest = found
            .parse::<Digest>()
            .ok()
            .filter(|d| accepted.contains(d))
            .ok_or_else(|| StorageError::DigestMismatch {
                image: pin.clone(),
                expected: accepted
                    .iter()
                    .map(Digest::to_string)
                    .collect::<Vec<_>>()
                    .join(" or "),
                found: found.clone(),
                digestfile: digestfile.path().to_path_buf(),
            })?;
        written = Some(digest);
    }
    let written = written.ok_or_else(|| StorageError::InvalidStore {
        detail: "nothing was copied".into(),
    })?;
    Ok(ImportOutcome::Imported {
        written,
        tagged,
        elapsed: started.elapsed(),
    })
}

fn accepted_digests(
    pin: &PinnedRef,
    image: &ImageEntry,
    platform: Option<&Platform>,
) -> Result<Vec<Digest>> {
    if !media::is_index(&image.media_type) {
        return Ok(vec![image.digest.clone()]);
    }
    let wanted = platform.cloned().unwrap_or_else(host_platform);
    let found: Vec<Digest> = image
        .platforms
        .iter()
        .filter(|p| wanted.matches_entry(p))
        .map(|p| p.digest.clone())
        .collect();
    if found.is_empty() {
        let available = image
            .platforms
            .iter()
            .map(|p| Platform::from(p).to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(StorageError::PlatformMissing {
            image: pin.clone(),
            wanted: wanted.to_string(),
            available: if available.is_empty() {
                "none".into()
            } else {
                available
            },
        });
    }
    Ok(found)
}

fn copy_args(opts: &ImportOptions, source: &str, dest: &str, digestfile: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if let Some(p) = &opts.platform {
        args.push("--override-os".into());
        args.push(p.os.clone().into());
        args.push("--override-arch".into());
        args.push(p.architecture.clone().into());
        if let Some(v) = &p.variant {
            args.push("--override-variant".into());
            args.push(v.clone().into());
        }
    }
    if let Some(policy) = &opts.policy {
        args.push("--policy".into());
        args.push(policy.into());
    }
    if let Some(dir) = &opts.tmpdir {
        args.push("--tmpdir".into());
        args.push(dir.into());
    }
    args.extend(["copy", "--quiet", "--src-tls-verify=false"].map(OsString::from));
    match &opts.auth_file {
        Some(f) => {
            args.push("--src-authfile".into());
            args.push(f.into());
        }
        None => args.push("--src-no-creds".into()),
    }
    for a in [
        "--retry-times",
        "0",
        // Refuse rather than convert: containers-storage accepts every manifest type, so a
        // conversion would be a bug, and it would change the digest.
        "--preserve-digests",
        "--digestfile",
    ] {
        args.push(a.into());
    }
    args.push(digestfile.into());
    args.push(source.into());
    args.push(dest.into());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_strings() {
        let s = Store::default();
        assert_eq!(s.transport("a/b@x").unwrap(), "containers-storage:a/b@x");
        let s = Store::explicit("vfs", Path::new("/r"), Path::new("/rr"));
        assert_eq!(
            s.transport("q.io/a:v1").unwrap(),
            "containers-storage:[vfs@/r+/rr]q.io/a:v1"
        );
        let s = Store {
            root: Some("/r".into()),
            runroot: Some("/rr".into()),
            ..Store::default()
        };
        assert_eq!(
            s.transport("a").unwrap(),
            "containers-storage:[overlay@/r+/rr]a"
        );
        let s = Store {
            root: Some("/r".into()),
            ..Store::default()
        };
        assert!(matches!(
            s.transport("a"),
            Err(StorageError::InvalidStore { .. })
        ));
        let s = Store::explicit("vfs", Path::new("/r+x"), Path::new("/rr"));
        assert!(s.transport("a").is_err());
    }

    #[test]
    fn copy_timeout_scales_with_the_larger_size() {
        let t = CopyTimeout::default();
        let mut img = ImageEntry {
            reference: "q.io/a:1".into(),
            name: "q.io/a".into(),
            tag: Some("1".into()),
            digest: Digest::of(b"a"),
            media_type: media::OCI_MANIFEST.into(),
            platforms: Vec::new(),
            blobs: Vec::new(),
            size: 0,
            uncompressed_size: 0,
        };
        assert_eq!(t.for_image(&img), Duration::from_secs(300));
        img.size = 1 << 30;
        img.uncompressed_size = 2 << 30;
        assert_eq!(t.for_image(&img), Duration::from_secs(300 + 512));
    }

    #[test]
    fn auth_file_is_private_and_never_in_argv() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = PrivateDir::new().unwrap();
        let cred = crate::registry::server::Credential::random();
        let addr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let file = dir.write_auth_file(addr, &cred).unwrap();
        let mode = |p: &Path| fs_err::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(dir.path()), 0o700);
        let doc: serde_json::Value = serde_json::from_slice(&fs_err::read(&file).unwrap()).unwrap();
        assert_eq!(doc["auths"]["127.0.0.1:5000"]["auth"], cred.basic());
        let opts = ImportOptions {
            auth_file: Some(file),
            ..ImportOptions::default()
        };
        let args = copy_args(&opts, "docker://x", "containers-storage:y", Path::new("d"));
        let argv = Skopeo::new().argv(&args);
        assert!(argv.contains("--src-authfile") && !argv.contains("--src-no-creds"));
        assert!(!argv.contains(&cred.password) && !argv.contains(&cred.basic()));
    }

    #[test]
    fn stderr_tail_is_bounded() {
        let long = vec![b'x'; 10_000];
        let t = tail(&long);
        assert!(t.starts_with('…') && t.len() <= STDERR_TAIL + 3);
        assert_eq!(tail(b" short \n"), "short");
    }
}
