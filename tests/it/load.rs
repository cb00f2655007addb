//! `load` with real components: a real registry → `create` → `load` into a real
//! containers-storage with real skopeo, checked with real podman; CRI-O is the `crio` stand-in
//! (tests/crio-standin), which reads the drop-in directory and answers over the CRI socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::create::Env;
use crate::util::{ok, pinbundle, run, tempdir, text};

/// Tests that run a `crio` stand-in take this: reload finds CRI-O by scanning /proc, which
/// must see exactly one.
pub(crate) static CRIO: Mutex<()> = Mutex::new(());

pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A containers-storage in a temp dir; unmounts overlay's leftovers when dropped.
pub(crate) struct Store {
    pub(crate) root: PathBuf,
    run: PathBuf,
    driver: &'static str,
}

impl Store {
    pub(crate) fn new(dir: &Path, driver: &'static str) -> Store {
        Store {
            root: dir.join("storage"),
            run: dir.join("run"),
            driver,
        }
    }

    pub(crate) fn args(&self) -> Vec<String> {
        vec![
            "--storage-root".into(),
            self.root.display().to_string(),
            "--runroot".into(),
            self.run.display().to_string(),
            "--storage-driver".into(),
            self.driver.into(),
        ]
    }

    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.run)
            .args(["--storage-driver", self.driver]);
        c
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        run(self.podman().args(["image", "exists", name]))
            .status
            .success()
    }

    /// The storage names (what CRI-O matches pins against) of the image that has `name`.
    fn names(&self, name: &str) -> Vec<String> {
        let images: Value = serde_json::from_str(&self.images_json()).unwrap();
        images
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                i["names"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|n| n.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .find(|names| names.iter().any(|n| n == name))
            .unwrap_or_default()
    }

    /// `images.json` as the store has it (or empty when nothing was ever written).
    pub(crate) fn images_json(&self) -> String {
        std::fs::read_to_string(
            self.root
                .join(format!("{}-images/images.json", self.driver)),
        )
        .unwrap_or_default()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.root.join("overlay"))
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.run.join("overlay"))
            .stderr(Stdio::null())
            .status();
    }
}

/// The `crio` stand-in, listening on a socket in `dir`.
pub(crate) struct Crio {
    child: Child,
    pub(crate) socket: PathBuf,
    log: PathBuf,
}

fn crio_binary() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_pinbundle")).with_file_name("crio");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        ok(Command::new(cargo).args(["build", "-q", "-p", "crio-standin"]));
    }
    bin
}

impl Crio {
    pub(crate) fn start(dir: &Path, drop_in_dir: &Path, store: &Store) -> Crio {
        Crio::start_as(dir, drop_in_dir, store, "1.31.3")
    }

    /// The stand-in behaving like CRI-O `version` (see tests/crio-standin: which calls
    /// report `pinned`, how a reload treats the list).
    pub(crate) fn start_as(dir: &Path, drop_in_dir: &Path, store: &Store, version: &str) -> Crio {
        Crio::start_with(dir, drop_in_dir, store, version, &[])
    }

    /// [`Crio::start_as`] with more arguments for the stand-in (`--config FILE`).
    pub(crate) fn start_with(
        dir: &Path,
        drop_in_dir: &Path,
        store: &Store,
        version: &str,
        extra: &[&std::ffi::OsStr],
    ) -> Crio {
        let socket = dir.join("crio.sock");
        let log = dir.join("crio.log");
        let child = Command::new(crio_binary())
            .args(extra)
            .arg("--socket")
            .arg(&socket)
            .arg("--config-dir")
            .arg(drop_in_dir)
            .arg("--storage-root")
            .arg(&store.root)
            .args(["--storage-driver", store.driver, "--version", version])
            .arg("--log")
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let c = Crio { child, socket, log };
        c.wait_log("listening on", 1);
        c
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn wait_log(&self, needle: &str, count: usize) {
        let start = Instant::now();
        while self.log().matches(needle).count() < count {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "crio never logged {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Crio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pinbundle load` with the test's paths. A `socket` that does not exist means the test
/// runs no CRI-O: it passes `--no-confirm` (without it such a load exits 1, pins unconfirmed).
pub(crate) fn load_command(
    bundle: &Path,
    store: &Store,
    drop_in: &Path,
    socket: &Path,
    lock: &Path,
) -> Command {
    let mut c = pinbundle();
    c.arg("load")
        .arg(bundle)
        .args(store.args())
        .args(crio_config_args(drop_in))
        .args(kubelet_off())
        .arg("--crio-drop-in")
        .arg(drop_in)
        .arg("--cri-socket")
        .arg(socket)
        .arg("--lock-file")
        .arg(lock)
        .args(["--confirm-timeout", "10"])
        // Never the machine's /var/lib/pinbundle.
        .env(
            "PINBUNDLE_STATE_DIR",
            lock.with_file_name("pinbundle-state"),
        );
    if !socket.exists() {
        c.arg("--no-confirm");
    }
    c
}

/// Every kubelet threshold off (tests/it/kubelet-off.yaml): no load test reads this machine's
/// kubelet files or depends on how full its disk is.
pub(crate) fn kubelet_off() -> [&'static str; 2] {
    [
        "--kubelet-config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/kubelet-off.yaml"),
    ]
}

/// CRI-O's configuration as the test's CRI-O reads it: the drop-in's directory, and no main
/// file (never the machine's `/etc/crio`).
pub(crate) fn crio_config_args(drop_in: &Path) -> Vec<std::ffi::OsString> {
    let dir = drop_in.parent().expect("the drop-in is in a directory");
    vec![
        "--crio-config".into(),
        dir.with_extension("no-crio.conf").into(),
        "--crio-config-dir".into(),
        dir.into(),
    ]
}

/// Runs `pinbundle load --json` with the test's paths; returns the output and parsed report.
pub(crate) fn load(
    bundle: &Path,
    store: &Store,
    drop_in: &Path,
    socket: &Path,
    lock: &Path,
    extra: &[&str],
) -> (Output, Value) {
    let o = run(load_command(bundle, store, drop_in, socket, lock)
        .arg("--json")
        .args(extra));
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o, v)
}

fn drop_in_entries(path: &Path) -> Vec<String> {
    crate::util::pins_of(&std::fs::read_to_string(path).unwrap())
}

#[test]
fn load_imports_every_kind_pins_reloads_and_confirms() {
    if !is_root() {
        eprintln!("SKIPPED load test: overlay containers-storage needs root");
        return;
    }
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let dir = tempdir();
    let bundle = dir.path().join("b.pinbundle");
    let mut refs: Vec<String> = [
        "oci-one",
        "oci-multi",
        "uncompressed",
        "zstd",
        "index",
        "manifest-list",
        "special",
    ]
    .iter()
    .map(|r| env.image(r).tag_reference())
    .collect();
    refs.push(env.image("docker").digest_reference());
    let o = env.create(&dir.path().join("cache"), &bundle, &refs, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    let store = Store::new(dir.path(), "overlay");
    let conf_dir = dir.path().join("crio.conf.d");
    std::fs::create_dir(&conf_dir).unwrap();
    let drop_in = conf_dir.join("50-pinned-images");
    let existing = format!("quay.io/other/app@sha256:{}", "c".repeat(64));
    std::fs::write(
        &drop_in,
        format!("[crio]\n  [crio.image]\n    pinned_images = [\"{existing}\"]\n"),
    )
    .unwrap();
    let crio = Crio::start(dir.path(), &conf_dir, &store);
    let lock = dir.path().join("load.lock");

    let pis = dir.path().join("pis.yaml");
    let (o, report) = load(
        &bundle,
        &store,
        &drop_in,
        &crio.socket,
        &lock,
        &[
            "--reload",
            "signal",
            "--pinned-image-set-out",
            pis.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "load failed:\n{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["cri"]["confirmed"], true);
    crio.wait_log("Set config pinned_images", 1);

    // Every image is in the store under name@digest (the index digest for multi-arch) and,
    // when requested by tag, name:tag.
    let mut pins = vec![existing.clone()];
    for r in &refs {
        let p = env
            .pushed
            .iter()
            .find(|p| r.starts_with(&p.name) && r[p.name.len()..].starts_with([':', '@']))
            .unwrap();
        let pin = p.digest_reference();
        assert!(store.exists(&pin), "{pin} not in the store");
        let names = store.names(&pin);
        assert!(names.contains(&pin), "{pin}: names {names:?}");
        if r.contains(":v1") {
            assert!(names.contains(&p.tag_reference()), "{r}: names {names:?}");
        }
        pins.push(pin);
        let img = report["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["reference"] == *r)
            .unwrap();
        assert_eq!(img["status"], "loaded");
        assert_eq!(img["pinned"], true, "{img}");
    }
    pins.sort();
    pins.dedup();
    assert_eq!(
        drop_in_entries(&drop_in),
        pins,
        "the drop-in holds exactly the union"
    );
    // The PinnedImageSet for MCO-managed nodes lists exactly this bundle's images.
    let yaml = std::fs::read_to_string(&pis).unwrap();
    assert!(yaml.contains("kind: PinnedImageSet"), "{yaml}");
    let listed: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- name: "))
        .map(|n| n.trim_matches('"'))
        .collect();
    let ours: Vec<&str> = pins
        .iter()
        .filter(|p| **p != existing)
        .map(String::as_str)
        .collect();
    assert_eq!(listed, ours, "{yaml}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&drop_in).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o644);
    assert_eq!(
        std::fs::read_dir(&conf_dir).unwrap().count(),
        1,
        "no temp file left in the drop-in dir"
    );

    // A second load changes nothing: no import, no write, no reload.
    let before = (
        std::fs::read(&drop_in).unwrap(),
        std::fs::metadata(&drop_in).unwrap().modified().unwrap(),
        store.images_json(),
    );
    let (o, report) = load(
        &bundle,
        &store,
        &drop_in,
        &crio.socket,
        &lock,
        &["--reload", "signal"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        report["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "present"),
        "{report}"
    );
    assert_eq!(report["pins"]["changed"], false);
    assert!(report["reload"].is_null());
    let after = (
        std::fs::read(&drop_in).unwrap(),
        std::fs::metadata(&drop_in).unwrap().modified().unwrap(),
        store.images_json(),
    );
    assert_eq!(before, after);
    assert_eq!(
        crio.log().matches("Reloading configuration").count(),
        1,
        "second load reloaded CRI-O"
    );
}

#[test]
fn damaged_bundle_changes_nothing() {
    let env = Env::new();
    let dir = tempdir();
    let bundle = env.bundle_of(dir.path(), &[env.image("oci-multi").tag_reference()]);
    // Flip a byte in the middle of the largest layer.
    let b = pinbundle::bundle::Bundle::open(&bundle).unwrap();
    let m = b
        .index()
        .members
        .iter()
        .filter(|m| m.path.starts_with("blobs/"))
        .max_by_key(|m| m.size)
        .unwrap()
        .clone();
    let f = b.index().frames[m.frame].clone();
    drop(b);
    let mut bytes = std::fs::read(&bundle).unwrap();
    bytes[(f.offset + f.length / 2) as usize] ^= 1;
    std::fs::write(&bundle, &bytes).unwrap();

    let store = Store::new(dir.path(), "vfs");
    let drop_in = dir.path().join("crio.conf.d/50-pinned-images");
    let (o, report) = load(
        &bundle,
        &store,
        &drop_in,
        &dir.path().join("no.sock"),
        &dir.path().join("l"),
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(report["ok"], false);
    let problem = &report["problems"][0];
    assert_eq!(problem["digest"], m.digest.to_string());
    assert_eq!(problem["images"][0], env.image("oci-multi").tag_reference());
    assert!(!store.root.exists(), "the store was touched");
    assert!(!drop_in.exists(), "the drop-in was written");
    // Damage to the bundle's own manifest is refused the same way.
    let mut bytes = std::fs::read(&bundle).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&bundle, &bytes).unwrap();
    let (o, report) = load(
        &bundle,
        &store,
        &drop_in,
        &dir.path().join("no.sock"),
        &dir.path().join("l"),
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        report["problems"][0]["error"]
            .as_str()
            .unwrap()
            .contains("frame 0"),
        "{report}"
    );
    assert!(!store.root.exists() && !drop_in.exists());
}

#[test]
fn not_enough_space_is_refused_before_any_write() {
    if !is_root() {
        eprintln!("SKIPPED space test: needs root to mount a small tmpfs");
        return;
    }
    let registry = pinbundle_fixtures::registry::TestRegistry::start().unwrap();
    let big =
        pinbundle_fixtures::push_sized(registry.addr(), "bench/big", &[4 << 20], 3, None).unwrap();
    let env = Env {
        registry,
        pushed: vec![big],
    };
    let dir = tempdir();
    let bundle = env.bundle_of(dir.path(), &[env.pushed[0].tag_reference()]);
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    ok(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small));
    let store = Store::new(&small, "vfs");
    let drop_in = dir.path().join("crio.conf.d/50-pinned-images");
    let (o, _) = load(
        &bundle,
        &store,
        &drop_in,
        &dir.path().join("no.sock"),
        &dir.path().join("l"),
        &[],
    );
    let left: Vec<_> = std::fs::read_dir(&small).unwrap().collect();
    let _ = Command::new("umount").arg(&small).status();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("not enough free space") && err.contains("MiB free"),
        "{err}"
    );
    assert!(left.is_empty(), "the store was written: {left:?}");
    assert!(!drop_in.exists());
}

#[test]
fn load_in_a_network_namespace_with_only_loopback() {
    if !is_root() {
        eprintln!("SKIPPED netns test: needs root");
        return;
    }
    let env = Env::new();
    let dir = tempdir();
    let bundle = env.bundle_of(
        dir.path(),
        &[
            env.image("docker").tag_reference(),
            env.image("index").tag_reference(),
        ],
    );
    let ns = format!("pinbundle-test-{}", std::process::id());
    ok(Command::new("ip").args(["netns", "add", &ns]));
    let store = Store::new(dir.path(), "vfs");
    let drop_in = dir.path().join("crio.conf.d/50-pinned-images");
    let o = run(Command::new("ip")
        .args(["netns", "exec", &ns, "sh", "-c"])
        .arg(format!(
            "ip link set lo up && '{}' load '{}' {} --kubelet-config '{}' --crio-config /nonexistent --crio-config-dir '{}' --crio-drop-in '{}' --cri-socket /nonexistent --no-confirm --reload none --lock-file '{}' --state-dir '{}' --json",
            env!("CARGO_BIN_EXE_pinbundle"),
            bundle.display(),
            store.args().join(" "),
            kubelet_off()[1],
            dir.path().join("crio.conf.d").display(),
            drop_in.display(),
            dir.path().join("l").display(),
            dir.path().join("state").display()
        )));
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(store.exists(&env.image("docker").digest_reference()));
    assert!(store.exists(&env.image("index").digest_reference()));
    assert_eq!(drop_in_entries(&drop_in).len(), 2);
}

#[test]
fn dry_run_changes_nothing() {
    let env = Env::new();
    let dir = tempdir();
    let bundle = env.bundle_of(dir.path(), &[env.image("oci-one").tag_reference()]);
    let store = Store::new(dir.path(), "vfs");
    let drop_in = dir.path().join("crio.conf.d/50-pinned-images");
    let (o, report) = load(
        &bundle,
        &store,
        &drop_in,
        &dir.path().join("no.sock"),
        &dir.path().join("l"),
        &["--dry-run"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(report["images"][0]["status"], "would-load");
    assert!(!store.root.exists() && !drop_in.exists());
}

/// One image loaded, pinned, reloaded by SIGHUP and confirmed against the stand-in behaving
/// like CRI-O `version`; returns the report.
fn load_against(version: &str) -> Value {
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let dir = tempdir();
    let bundle = env.bundle_of(dir.path(), &[env.image("oci-one").tag_reference()]);
    let store = Store::new(dir.path(), "vfs");
    let conf_dir = dir.path().join("crio.conf.d");
    std::fs::create_dir(&conf_dir).unwrap();
    let drop_in = conf_dir.join("50-pinned-images");
    let crio = Crio::start_as(dir.path(), &conf_dir, &store, version);
    let (o, report) = load(
        &bundle,
        &store,
        &drop_in,
        &crio.socket,
        &dir.path().join("l"),
        &["--reload", "signal"],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{version}:\n{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    crio.wait_log("Set config pinned_images", 2);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["cri"]["version"], version);
    assert_eq!(report["cri"]["confirmed"], true, "{report}");
    assert_eq!(report["cri"]["timedOut"], false, "{report}");
    assert_eq!(report["images"][0]["pinned"], true, "{report}");
    report
}

#[test]
fn confirms_through_list_images_where_image_status_lacks_pinned() {
    if !is_root() {
        eprintln!("SKIPPED stand-in version test: needs root");
        return;
    }
    // 1.30.5: reloads correctly, but ImageStatus always says `pinned: false` (only ListImages
    // tells); the load used to time out here and exit 1. No version advice: nothing is wrong.
    let report = load_against("1.30.5");
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
}

#[test]
fn confirms_through_image_status_on_current_crio() {
    if !is_root() {
        eprintln!("SKIPPED stand-in version test: needs root");
        return;
    }
    let report = load_against("1.36.3");
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
}

#[test]
fn a_socket_that_never_answers_is_reported_and_exits_1() {
    let env = Env::new();
    let dir = tempdir();
    let bundle = env.bundle_of(dir.path(), &[env.image("oci-one").tag_reference()]);
    let store = Store::new(dir.path(), "vfs");
    let drop_in = dir.path().join("crio.conf.d/50-pinned-images");
    // Bound and listening, never accepted: connecting succeeds, nothing ever answers.
    let socket = dir.path().join("hung.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let start = Instant::now();
    let (o, report) = load(
        &bundle,
        &store,
        &drop_in,
        &socket,
        &dir.path().join("l"),
        &["--reload", "none"],
    );
    let took = start.elapsed();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert_eq!(report["ok"], false, "{report}");
    assert!(report["cri"].is_null(), "{report}");
    assert_eq!(report["pins"]["changed"], true, "{report}");
    // load_command's --confirm-timeout 10: one call may take all of it.
    let want = format!("CRI-O at `{}` did not answer within 10 s", socket.display());
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains(&want), "{warnings}");
    assert!(!warnings.contains("transport error"), "{warnings}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    // The human form says the same on stderr.
    let o = run(
        load_command(&bundle, &store, &drop_in, &socket, &dir.path().join("l"))
            .args(["--reload", "none"]),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains(&want), "{}", text(&o.stderr));
}
