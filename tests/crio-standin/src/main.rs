//! `crio`: a CRI-O stand-in for pinbundle's tests (CRI-O itself cannot run here).
//!
//! It reproduces, independently of pinbundle's code, the CRI-O behaviour that `load`
//! depends on:
//! - the drop-in directory is read recursively in Go `filepath.Walk` order (names sorted
//!   per directory, dotfiles included); a later `crio.image.pinned_images` replaces the list;
//!   one file that fails to decode fails the whole (re)load and keeps the old list;
//! - the main file (`--config`, when it exists) is read first, then the drop-in directory;
//! - SIGHUP re-reads them and logs `Reloading configuration`,
//!   `Set config pinned_images to "…"` (only when changed) / `Unable to reload
//!   configuration: …`, then, from 1.30.6 / 1.31.0, `Configuration reload completed`;
//! - SIGUSR1 stands for a restart (`systemctl restart crio`, see `systemctl` next to this
//!   crate): the process logs `Restarting`, drops its socket and re-executes itself, so it
//!   reads its configuration afresh as a new CRI-O would, under the same PID (the test's
//!   child handle stays valid);
//! - pins match image STORAGE NAMES only (cri-o `CompileRegexpsForPinnedImages`): exact
//!   (case-insensitive, anchored), `prefix*` (case-insensitive, unanchored), `*keyword*`
//!   (case-insensitive substring); a bare `*` panics, like CRI-O;
//! - images come from a real containers-storage `<root>/<driver>-images/images.json`,
//!   re-read at every call, so `pinned` is computed at query time; `ImageFsInfo` reports
//!   `<root>/<driver>-images` as CRI-O does;
//! - `--version` picks the release's known behaviour ([`Behaviour`]): `ImageStatus` fills
//!   `pinned` only from 1.29.7 / 1.30.6 / 1.31.0 (false before; `ListImages` always tells);
//!   1.28.0–1.29.3 never apply `pinned_images` on reload; 1.29.4–1.29.6 and 1.30.0–1.30.2
//!   unpin the entries a reload leaves unchanged (cri-o #8202).
//!
//! Usage: `crio --socket PATH --config-dir DIR --storage-root DIR [--config FILE]
//! [--storage-driver overlay] [--version 1.31.0] [--log FILE]`

// Test code: a failing std::fs call panics with the path in the test's own message.
#![allow(clippy::disallowed_methods)]

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::server::UnaryService;
use tonic::{Request, Response, Status};

mod proto {
    //! runtime.v1 messages, declared independently of pinbundle's client.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionRequest {
        #[prost(string, tag = "1")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionResponse {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(string, tag = "2")]
        pub runtime_name: String,
        #[prost(string, tag = "3")]
        pub runtime_version: String,
        #[prost(string, tag = "4")]
        pub runtime_api_version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageSpec {
        #[prost(string, tag = "1")]
        pub image: String,
        #[prost(map = "string, string", tag = "2")]
        pub annotations: std::collections::HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageFilter {
        #[prost(message, optional, tag = "1")]
        pub image: Option<ImageSpec>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListImagesRequest {
        #[prost(message, optional, tag = "1")]
        pub filter: Option<ImageFilter>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Int64Value {
        #[prost(int64, tag = "1")]
        pub value: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, repeated, tag = "2")]
        pub repo_tags: Vec<String>,
        #[prost(string, repeated, tag = "3")]
        pub repo_digests: Vec<String>,
        #[prost(uint64, tag = "4")]
        pub size: u64,
        #[prost(message, optional, tag = "5")]
        pub uid: Option<Int64Value>,
        #[prost(string, tag = "6")]
        pub username: String,
        #[prost(message, optional, tag = "7")]
        pub spec: Option<ImageSpec>,
        #[prost(bool, tag = "8")]
        pub pinned: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListImagesResponse {
        #[prost(message, repeated, tag = "1")]
        pub images: Vec<Image>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageStatusRequest {
        #[prost(message, optional, tag = "1")]
        pub image: Option<ImageSpec>,
        #[prost(bool, tag = "2")]
        pub verbose: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageStatusResponse {
        #[prost(message, optional, tag = "1")]
        pub image: Option<Image>,
        #[prost(map = "string, string", tag = "2")]
        pub info: std::collections::HashMap<String, String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageFsInfoRequest {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FilesystemIdentifier {
        #[prost(string, tag = "1")]
        pub mountpoint: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UInt64Value {
        #[prost(uint64, tag = "1")]
        pub value: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FilesystemUsage {
        #[prost(int64, tag = "1")]
        pub timestamp: i64,
        #[prost(message, optional, tag = "2")]
        pub fs_id: Option<FilesystemIdentifier>,
        #[prost(message, optional, tag = "3")]
        pub used_bytes: Option<UInt64Value>,
        #[prost(message, optional, tag = "4")]
        pub inodes_used: Option<UInt64Value>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageFsInfoResponse {
        #[prost(message, repeated, tag = "1")]
        pub image_filesystems: Vec<FilesystemUsage>,
        #[prost(message, repeated, tag = "2")]
        pub container_filesystems: Vec<FilesystemUsage>,
    }
}

struct Args {
    socket: PathBuf,
    config: Option<PathBuf>,
    config_dir: PathBuf,
    storage_root: PathBuf,
    storage_driver: String,
    version: String,
    log: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut socket, mut config_dir, mut storage_root, mut log) = (None, None, None, None);
    let mut config = None;
    let mut storage_driver = "overlay".to_string();
    let mut version = "1.31.0".to_string();
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--socket" => socket = Some(PathBuf::from(val()?)),
            "--config-dir" => config_dir = Some(PathBuf::from(val()?)),
            "--config" => config = Some(PathBuf::from(val()?)),
            "--storage-root" => storage_root = Some(PathBuf::from(val()?)),
            "--storage-driver" => storage_driver = val()?,
            "--version" => version = val()?,
            "--log" => log = Some(PathBuf::from(val()?)),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        socket: socket.ok_or("--socket is required")?,
        config,
        config_dir: config_dir.ok_or("--config-dir is required")?,
        storage_root: storage_root.ok_or("--storage-root is required")?,
        storage_driver,
        version,
        log,
    })
}

struct Logger {
    file: Option<Mutex<std::fs::File>>,
}

impl Logger {
    fn log(&self, msg: &str) {
        use std::io::Write as _;
        eprintln!("crio-standin: {msg}");
        if let Some(f) = &self.file
            && let Ok(mut f) = f.lock()
        {
            let _ = writeln!(f, "{msg}");
            let _ = f.flush();
        }
    }
}

// ---------------------------------------------------------------- versions

/// What a CRI-O release does with pins, by its version (field-notes, upstream cri-o).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Behaviour {
    /// `ImageStatus` fills `pinned` (cri-o #8362; backports #8325 to 1.29.7, #8556 to 1.30.6).
    image_status_pinned: bool,
    /// A reload re-reads `pinned_images` at all (from 1.29.4 / 1.30.0).
    reload_applies_pins: bool,
    /// A reload pins only the entries it adds, dropping those it keeps (cri-o #8202).
    reload_drops_unchanged: bool,
    /// A reload ends by logging `Configuration reload completed` (from 1.30.6 / 1.31.0).
    logs_reload_completed: bool,
}

impl Behaviour {
    fn of(version: &str) -> Behaviour {
        let core = version.trim_start_matches('v');
        let core = core.split(['-', '+']).next().unwrap_or("");
        let mut parts = core.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor, patch) = (
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
            parts.next().unwrap_or(0),
        );
        let v = (major, minor, patch);
        Behaviour {
            image_status_pinned: v >= (1, 31, 0)
                || ((1, 30, 6)..(1, 31, 0)).contains(&v)
                || ((1, 29, 7)..(1, 30, 0)).contains(&v),
            reload_applies_pins: v >= (1, 29, 4),
            reload_drops_unchanged: ((1, 29, 4)..=(1, 29, 6)).contains(&v)
                || ((1, 30, 0)..=(1, 30, 2)).contains(&v),
            logs_reload_completed: v >= (1, 30, 6),
        }
    }
}

// ---------------------------------------------------------------- configuration

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for n in names {
        let p = dir.join(n);
        if std::fs::symlink_metadata(&p)?.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// The `pinned_images` CRI-O would end up with after reading `config` (when it exists) and
/// then `dir` (None = never set).
fn read_pins(config: Option<&Path>, dir: &Path) -> Result<Option<Vec<String>>, String> {
    let mut files: Vec<PathBuf> = config
        .filter(|c| c.exists())
        .map(Path::to_path_buf)
        .into_iter()
        .collect();
    if dir.exists() {
        walk(dir, &mut files).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut pins = None;
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let value: toml::Value =
            toml::from_str(&text).map_err(|e| format!("{}: {}", f.display(), e.message()))?;
        if let Some(list) = value
            .get("crio")
            .and_then(|c| c.get("image"))
            .and_then(|i| i.get("pinned_images"))
        {
            let arr = list
                .as_array()
                .ok_or_else(|| format!("{}: pinned_images is not an array", f.display()))?;
            let strings = arr
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("{}: pinned_images holds a non-string", f.display()))?;
            pins = Some(strings);
        }
    }
    Ok(pins)
}

#[derive(Clone)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Keyword(String),
}

fn compile(patterns: &[String]) -> Vec<Pattern> {
    patterns
        .iter()
        .map(|p| {
            if p.starts_with('*') && p.ends_with('*') {
                // CRI-O slices pattern[1:len-1]: a bare "*" is out of range and panics.
                if p.len() < 2 {
                    panic!(
                        "runtime error: slice bounds out of range [1:0] (pinned_images = [\"*\"])"
                    );
                }
                Pattern::Keyword(p[1..p.len() - 1].to_lowercase())
            } else if let Some(prefix) = p.strip_suffix('*') {
                Pattern::Prefix(prefix.to_lowercase())
            } else {
                Pattern::Exact(p.to_lowercase())
            }
        })
        .collect()
}

fn matches(patterns: &[Pattern], name: &str) -> bool {
    let name = name.to_lowercase();
    patterns.iter().any(|p| match p {
        Pattern::Exact(e) => name == *e,
        // "prefix.*" unanchored: the prefix anywhere in the name.
        Pattern::Prefix(pre) => name.contains(pre.as_str()),
        Pattern::Keyword(k) => name.contains(k.as_str()),
    })
}

// ---------------------------------------------------------------- storage

#[derive(serde::Deserialize, Clone, Debug)]
struct StoredImage {
    id: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    digests: Vec<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default, rename = "big-data-sizes")]
    big_data_sizes: std::collections::HashMap<String, u64>,
}

impl StoredImage {
    fn all_digests(&self) -> Vec<&str> {
        self.digest
            .iter()
            .map(String::as_str)
            .chain(self.digests.iter().map(String::as_str))
            .collect()
    }
}

fn load_images(root: &Path, driver: &str) -> Result<Vec<StoredImage>, Status> {
    let path = root.join(format!("{driver}-images")).join("images.json");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| Status::internal(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Status::internal(format!("{}: {e}", path.display()))),
    }
}

/// docker.io normalisation, written independently of pinbundle's `Reference`.
fn normalise(name: &str) -> String {
    let first = name.split('/').next().unwrap_or("");
    let has_domain =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_domain {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    }
}

/// Repository of a stored name: without `@digest` and without `:tag`.
fn repo_of(name: &str) -> &str {
    let no_digest = name.split('@').next().unwrap_or(name);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

fn find<'a>(images: &'a [StoredImage], spec: &str) -> Option<&'a StoredImage> {
    let id = spec.strip_prefix("sha256:").unwrap_or(spec);
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return images.iter().find(|i| i.id == id);
    }
    let spec = normalise(spec);
    if let Some((repo, digest)) = spec.split_once('@') {
        // containers-storage: a digest lookup only finds images with a name in that repo.
        return images.iter().find(|i| {
            i.names.iter().any(|n| repo_of(n) == repo) && i.all_digests().contains(&digest)
        });
    }
    let tagged = if spec
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
    {
        spec
    } else {
        format!("{spec}:latest")
    };
    images.iter().find(|i| i.names.contains(&tagged))
}

fn to_cri(img: &StoredImage, pins: &[Pattern]) -> proto::Image {
    let mut repo_tags = Vec::new();
    let mut repo_digests = Vec::new();
    let mut repos = Vec::new();
    for n in &img.names {
        if n.contains('@') {
            repo_digests.push(n.clone());
        } else {
            repo_tags.push(n.clone());
        }
        repos.push(repo_of(n).to_string());
    }
    for r in repos {
        for d in img.all_digests() {
            let rd = format!("{r}@{d}");
            if !repo_digests.contains(&rd) {
                repo_digests.push(rd);
            }
        }
    }
    repo_tags.sort();
    repo_digests.sort();
    proto::Image {
        id: img.id.clone(),
        repo_tags,
        repo_digests,
        size: img
            .size
            .unwrap_or_else(|| img.big_data_sizes.values().sum::<u64>().max(1)),
        uid: None,
        username: String::new(),
        spec: None,
        // Storage names only: never the digests or the ID.
        pinned: img.names.iter().any(|n| matches(pins, n)),
    }
}

// ---------------------------------------------------------------- gRPC

struct State {
    args: Args,
    pins: Mutex<Vec<Pattern>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct Unary<F>(F);

impl<Req, Resp, F> UnaryService<Req> for Unary<F>
where
    F: FnMut(Req) -> Result<Resp, Status>,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Future = std::future::Ready<Result<Response<Resp>, Status>>;
    fn call(&mut self, request: Request<Req>) -> Self::Future {
        std::future::ready((self.0)(request.into_inner()).map(Response::new))
    }
}

#[derive(Clone)]
struct Cri(Arc<State>);

impl Cri {
    fn pins(&self) -> Vec<Pattern> {
        self.0.pins.lock().map(|p| p.clone()).unwrap_or_default()
    }
    fn images(&self) -> Result<Vec<StoredImage>, Status> {
        load_images(&self.0.args.storage_root, &self.0.args.storage_driver)
    }

    /// As cri-o `server/image_fs_info.go` without an image store: the image filesystem and
    /// the container filesystem are both `<root>/<driver>-images`.
    fn image_fs_info(&self) -> proto::ImageFsInfoResponse {
        let mountpoint = self
            .0
            .args
            .storage_root
            .join(format!("{}-images", self.0.args.storage_driver));
        let usage = proto::FilesystemUsage {
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            fs_id: Some(proto::FilesystemIdentifier {
                mountpoint: mountpoint.display().to_string(),
            }),
            used_bytes: Some(proto::UInt64Value { value: 0 }),
            inodes_used: Some(proto::UInt64Value { value: 0 }),
        };
        proto::ImageFsInfoResponse {
            image_filesystems: vec![usage.clone()],
            container_filesystems: vec![usage],
        }
    }
}

impl<B> tower_service::Service<http::Request<B>> for Cri
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let resp = match req.uri().path() {
                "/runtime.v1.RuntimeService/Version" => {
                    let version = me.0.args.version.clone();
                    let svc = Unary(move |_: proto::VersionRequest| {
                        Ok(proto::VersionResponse {
                            version: "0.1.0".to_string(),
                            runtime_name: "cri-o".to_string(),
                            runtime_version: version.clone(),
                            runtime_api_version: "v1".to_string(),
                        })
                    });
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                        .unary(svc, req)
                        .await
                }
                "/runtime.v1.ImageService/ListImages" => {
                    let svc = Unary(move |_: proto::ListImagesRequest| {
                        let pins = me.pins();
                        Ok(proto::ListImagesResponse {
                            images: me.images()?.iter().map(|i| to_cri(i, &pins)).collect(),
                        })
                    });
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                        .unary(svc, req)
                        .await
                }
                "/runtime.v1.ImageService/ImageFsInfo" => {
                    let svc = Unary(move |_: proto::ImageFsInfoRequest| Ok(me.image_fs_info()));
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                        .unary(svc, req)
                        .await
                }
                "/runtime.v1.ImageService/ImageStatus" => {
                    let svc = Unary(move |r: proto::ImageStatusRequest| {
                        let spec = r.image.map(|s| s.image).unwrap_or_default();
                        if spec.is_empty() {
                            return Err(Status::invalid_argument("ImageSpec is empty"));
                        }
                        let images = me.images()?;
                        let behaviour = Behaviour::of(&me.0.args.version);
                        Ok(proto::ImageStatusResponse {
                            image: find(&images, &spec).map(|i| proto::Image {
                                // Before the fix the field is never set.
                                pinned: behaviour.image_status_pinned
                                    && to_cri(i, &me.pins()).pinned,
                                ..to_cri(i, &me.pins())
                            }),
                            info: Default::default(),
                        })
                    });
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                        .unary(svc, req)
                        .await
                }
                other => {
                    Status::unimplemented(format!("{other} is not implemented by the stand-in"))
                        .into_http()
                }
            };
            Ok(resp)
        })
    }
}

fn join(pins: &[String]) -> String {
    pins.join(",")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("crio-standin: {e}");
            std::process::exit(2);
        }
    };
    let logger = Arc::new(Logger {
        file: args.log.as_ref().map(|p| {
            Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .unwrap_or_else(|e| panic!("opening log {}: {e}", p.display())),
            )
        }),
    });
    let initial = match read_pins(args.config.as_deref(), &args.config_dir) {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            logger.log(&format!("Failed to load configuration: {e}"));
            std::process::exit(1);
        }
    };
    logger.log(&format!("Set config pinned_images to {:?}", join(&initial)));
    let state = Arc::new(State {
        pins: Mutex::new(compile(&initial)),
        args,
    });
    let mut current = initial;

    let _ = std::fs::remove_file(&state.args.socket);
    let listener = match tokio::net::UnixListener::bind(&state.args.socket) {
        Ok(l) => l,
        Err(e) => {
            logger.log(&format!("binding {}: {e}", state.args.socket.display()));
            std::process::exit(1);
        }
    };

    let behaviour = Behaviour::of(&state.args.version);
    let reload_state = state.clone();
    let reload_logger = logger.clone();
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            logger.log(&format!("installing SIGHUP handler: {e}"));
            std::process::exit(1);
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload_logger.log("Reloading configuration");
            let completed = || {
                if behaviour.logs_reload_completed {
                    reload_logger.log("Configuration reload completed");
                }
            };
            match read_pins(
                reload_state.args.config.as_deref(),
                &reload_state.args.config_dir,
            ) {
                Err(e) => reload_logger.log(&format!("Unable to reload configuration: {e}")),
                Ok(_) if !behaviour.reload_applies_pins => {
                    // 1.28.0–1.29.3: the reload never looks at pinned_images.
                    completed();
                }
                Ok(new) => {
                    // CRI-O rebuilds the config from its defaults on every reload, so no
                    // `pinned_images` anywhere means an empty list.
                    let new = new.unwrap_or_default();
                    if new != current {
                        let effective: Vec<String> = if behaviour.reload_drops_unchanged {
                            new.iter()
                                .filter(|p| !current.contains(p))
                                .cloned()
                                .collect()
                        } else {
                            new.clone()
                        };
                        let compiled = compile(&effective);
                        if let Ok(mut p) = reload_state.pins.lock() {
                            *p = compiled;
                        }
                        reload_logger.log(&format!("Set config pinned_images to {:?}", join(&new)));
                        current = new;
                    }
                    completed();
                }
            }
        }
    });

    let restart_logger = logger.clone();
    let restart_socket = state.args.socket.clone();
    let mut usr1 =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                logger.log(&format!("installing SIGUSR1 handler: {e}"));
                std::process::exit(1);
            }
        };
    tokio::spawn(async move {
        if usr1.recv().await.is_some() {
            use std::os::unix::process::CommandExt as _;
            restart_logger.log("Restarting");
            let _ = std::fs::remove_file(&restart_socket);
            let mut argv = std::env::args_os();
            let program = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("crio"));
            argv.next();
            let e = std::process::Command::new(program).args(argv).exec();
            restart_logger.log(&format!("re-executing: {e}"));
            std::process::exit(1);
        }
    });

    logger.log(&format!("listening on {}", state.args.socket.display()));
    let incoming = futures_util::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    });
    if let Err(e) = tonic::transport::Server::builder()
        .serve_with_incoming(Cri(state), incoming)
        .await
    {
        logger.log(&format!("server error: {e}"));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned(pattern: &str, name: &str) -> bool {
        matches(&compile(&[pattern.to_string()]), name)
    }

    #[test]
    fn pattern_rules_follow_crio() {
        assert!(pinned("quay.io/a@sha256:1", "QUAY.io/a@sha256:1"));
        assert!(!pinned("quay.io/a", "quay.io/a:1"));
        // prefix* is not anchored at the start.
        assert!(pinned("io/a*", "quay.io/a:1"));
        assert!(pinned("*Fedora*", "quay.io/crio/fedora34:latest"));
        assert!(pinned("**", "anything"));
        assert!(!pinned("", "anything"));
        assert!(std::panic::catch_unwind(|| compile(&["*".to_string()])).is_err());
    }

    #[test]
    fn behaviour_by_version() {
        let b = Behaviour::of;
        assert!(!b("1.30.5").image_status_pinned && b("1.30.6").image_status_pinned);
        assert!(!b("1.29.6").image_status_pinned && b("1.29.7").image_status_pinned);
        assert!(b("1.31.0").image_status_pinned && b("1.36.3").image_status_pinned);
        assert!(!b("1.28.2").image_status_pinned && !b("1.28.2").reload_applies_pins);
        assert!(!b("1.29.3").reload_applies_pins && b("1.29.4").reload_applies_pins);
        for v in ["1.29.4", "1.29.6", "1.30.0", "v1.30.2"] {
            assert!(b(v).reload_drops_unchanged, "{v}");
        }
        for v in ["1.29.3", "1.29.7", "1.30.3", "1.31.0"] {
            assert!(!b(v).reload_drops_unchanged, "{v}");
        }
        for v in ["1.28.0", "1.29.7", "1.30.5"] {
            assert!(!b(v).logs_reload_completed, "{v}");
        }
        for v in ["1.30.6", "1.31.0", "1.36.3"] {
            assert!(b(v).logs_reload_completed, "{v}");
        }
    }

    #[test]
    fn lookup_by_digest_needs_a_name_in_the_repo() {
        let img = StoredImage {
            id: "a".repeat(64),
            digest: Some("sha256:d".to_string()),
            digests: vec![],
            names: vec!["localhost/x:1".to_string()],
            size: None,
            big_data_sizes: Default::default(),
        };
        let images = [img];
        assert!(find(&images, "localhost/x@sha256:d").is_some());
        assert!(find(&images, "localhost/y@sha256:d").is_none());
        assert!(find(&images, "localhost/x:1").is_some());
        assert!(find(&images, "localhost/x").is_none());
        assert!(find(&images, &"a".repeat(64)).is_some());
        // Pinning by digest does not pin an image only stored under a tag.
        assert!(!to_cri(&images[0], &compile(&["localhost/x@sha256:d".to_string()])).pinned);
    }
}
