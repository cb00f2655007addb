//! `load` and the pins of the rest of the node (issue 10, points 3, 4 and 9): what earlier
//! CRI-O configuration files pin is carried into our drop-in and confirmed after the reload; a
//! later file that would replace our list is refused; releases whose reload mishandles pins are
//! restarted; a load that cannot confirm its pins exits 1. Real skopeo and containers-storage;
//! CRI-O is the `crio` stand-in behaving like the release under test, restarted through the
//! stand-in `systemctl` (tests/crio-standin/systemctl).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::create::Env;
use crate::load::{CRIO, Crio, Store, crio_config_args, is_root, kubelet_off, load_command};
use crate::util::{pinbundle, pins_of, run, tempdir, text};

/// The stand-in for `systemctl` that drives the `crio` stand-in.
const SYSTEMCTL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/crio-standin/systemctl");

/// A node: a store, CRI-O's configuration directory and our drop-in in it.
struct Node {
    dir: tempfile::TempDir,
    store: Store,
    conf: PathBuf,
    drop_in: PathBuf,
}

impl Node {
    fn new() -> Node {
        let dir = tempdir();
        let store = Store::new(dir.path(), "vfs");
        let conf = dir.path().join("crio.conf.d");
        std::fs::create_dir(&conf).unwrap();
        let drop_in = conf.join("50-pinned-images");
        Node {
            store,
            conf,
            drop_in,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `pinbundle load --json` against `socket`.
    fn load<S: AsRef<OsStr>>(&self, bundle: &Path, socket: &Path, extra: &[S]) -> (Output, Value) {
        let lock = self.path("load.lock");
        let o = run(
            load_command(bundle, &self.store, &self.drop_in, socket, &lock)
                .arg("--json")
                .args(extra),
        );
        let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        (o, v)
    }

    /// Loads `reference` into the store without pinning it: an image that another file of
    /// CRI-O's configuration pins. Returns its pin.
    fn preload(&self, env: &Env, name: &str) -> String {
        let bundle = self.path("foreign.pinbundle");
        let o = env.create(
            &self.path("cache"),
            &bundle,
            &[env.image(name).tag_reference()],
            &[],
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        let (o, _) = self.load(&bundle, &self.path("none.sock"), &[OsStr::new("--no-pin")]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let pin = env.image(name).digest_reference();
        assert!(self.store.exists(&pin));
        pin
    }

    fn bundle(&self, env: &Env, name: &str) -> PathBuf {
        let bundle = self.path("ours.pinbundle");
        let o = env.create(
            &self.path("cache"),
            &bundle,
            &[env.image(name).tag_reference()],
            &[],
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        bundle
    }
}

fn pins_file(entries: &[&str]) -> String {
    let quoted: Vec<String> = entries.iter().map(|e| format!("\"{e}\"")).collect();
    format!("[crio.image]\npinned_images = [{}]\n", quoted.join(", "))
}

/// The status the report gives `entry` among the effective list's other entries.
fn other_status(report: &Value, entry: &str) -> Value {
    report["cri"]["others"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["entry"] == entry)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

/// `--reload signal` to the stand-in's own PID: other `crio` processes may run on this host
/// (other test runs), so /proc discovery is not what these tests are about.
fn signal(crio: &Crio) -> [std::ffi::OsString; 4] {
    [
        "--reload".into(),
        "signal".into(),
        "--crio-pid".into(),
        crio.pid().to_string().into(),
    ]
}

fn assert_confirmed(o: &Output, report: &Value) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["cri"]["confirmed"], true, "{report}");
    assert_eq!(report["images"][0]["pinned"], true, "{report}");
}

/// The arguments and environment that make `load` see systemd running the stand-in.
fn with_systemd<'c>(c: &'c mut Command, crio: &Crio, node: &Node) -> &'c mut Command {
    let marker = node.path("run-systemd-system");
    std::fs::create_dir_all(&marker).unwrap();
    c.arg("--systemctl")
        .arg(SYSTEMCTL)
        .arg("--systemd-marker")
        .arg(marker)
        .env("CRIO_STANDIN_PID", crio.pid().to_string())
        .env("CRIO_STANDIN_LOG", crio.log_path())
}

#[test]
fn an_earlier_drop_ins_pins_are_carried_into_ours_and_confirmed() {
    if !is_root() {
        eprintln!("SKIPPED pins test: needs root");
        return;
    }
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let node = Node::new();
    let foreign = node.preload(&env, "docker");
    let absent = format!("quay.io/absent/app@sha256:{}", "c".repeat(64));
    let early = node.conf.join("10-early");
    std::fs::write(
        &early,
        pins_file(&[&foreign, "registry.k8s.io/pause*", &absent]),
    )
    .unwrap();
    let crio = Crio::start(node.dir.path(), &node.conf, &node.store);
    // Before the load CRI-O pins what 10-early lists.
    crio.wait_log(&foreign, 1);
    let bundle = node.bundle(&env, "oci-one");
    let (o, report) = node.load(&bundle, &crio.socket, &signal(&crio));
    assert_confirmed(&o, &report);
    // Our file holds the earlier list too, and the report says from where.
    let ours = env.image("oci-one").digest_reference();
    let mut want = vec![
        foreign.clone(),
        "registry.k8s.io/pause*".into(),
        absent.clone(),
        ours,
    ];
    want.sort();
    assert_eq!(
        pins_of(&std::fs::read_to_string(&node.drop_in).unwrap()),
        want
    );
    assert_eq!(
        report["pins"]["carried"]["from"],
        early.display().to_string(),
        "{report}"
    );
    assert_eq!(report["pins"]["carried"]["entries"], 3, "{report}");
    // After the reload every entry of the effective list was checked: the carried image is
    // still pinned, the absent one and the pattern are reported.
    assert_eq!(other_status(&report, &foreign), "pinned", "{report}");
    assert_eq!(other_status(&report, &absent), "absent", "{report}");
    assert_eq!(
        other_status(&report, "registry.k8s.io/pause*"),
        "pattern",
        "{report}"
    );
    // The human form says it too.
    let o = run(load_command(
        &bundle,
        &node.store,
        &node.drop_in,
        &crio.socket,
        &node.path("load.lock"),
    )
    .args(signal(&crio)));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!("cri: also pinned_images: pinned {foreign}")),
        "{out}"
    );
}

#[test]
fn a_later_file_that_sets_pinned_images_is_refused_and_nothing_changes() {
    let env = Env::new();
    let node = Node::new();
    let later = node.conf.join("90-later");
    std::fs::write(&later, pins_file(&["quay.io/other*"])).unwrap();
    let bundle = node.bundle(&env, "oci-one");
    let (o, _) = node.load(&bundle, &node.path("none.sock"), &[] as &[&OsStr]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("`{}` is read after", later.display())),
        "{err}"
    );
    assert!(!node.store.root.exists(), "the store was touched");
    assert!(!node.drop_in.exists(), "the drop-in was written");
}

#[test]
fn crio_confs_pinned_images_are_carried() {
    if !is_root() {
        eprintln!("SKIPPED pins test: needs root");
        return;
    }
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let node = Node::new();
    let foreign = node.preload(&env, "docker");
    let main = node.path("crio.conf");
    std::fs::write(&main, format!("[crio]\n{}", pins_file(&[&foreign]))).unwrap();
    let crio = Crio::start_with(
        node.dir.path(),
        &node.conf,
        &node.store,
        "1.31.3",
        &[OsStr::new("--config"), main.as_os_str()],
    );
    let bundle = node.bundle(&env, "oci-one");
    let o = run(pinbundle()
        .arg("load")
        .arg(&bundle)
        .args(kubelet_off())
        .args(node.store.args())
        .arg("--crio-config")
        .arg(&main)
        .arg("--crio-config-dir")
        .arg(&node.conf)
        .arg("--cri-socket")
        .arg(&crio.socket)
        .arg("--lock-file")
        .arg(node.path("load.lock"))
        .args(signal(&crio))
        .arg("--json"));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    assert_confirmed(&o, &report);
    // No --crio-drop-in: the default is 50-pinned-images in the configuration directory.
    assert_eq!(report["pins"]["dropIn"], node.drop_in.display().to_string());
    assert_eq!(
        report["pins"]["carried"]["from"],
        main.display().to_string(),
        "{report}"
    );
    assert!(pins_of(&std::fs::read_to_string(&node.drop_in).unwrap()).contains(&foreign));
    assert_eq!(other_status(&report, &foreign), "pinned", "{report}");
}

/// A load against the stand-in behaving like `version`, with `foreign` already pinned by our
/// drop-in (an entry the reload keeps), under `--reload auto` and a systemd that runs it.
fn restart_on(version: &str) -> (Crio, Node, Value, String) {
    let env = Env::new();
    let node = Node::new();
    let foreign = node.preload(&env, "docker");
    std::fs::write(&node.drop_in, pins_file(&[&foreign])).unwrap();
    let crio = Crio::start_as(node.dir.path(), &node.conf, &node.store, version);
    let bundle = node.bundle(&env, "oci-one");
    let lock = node.path("load.lock");
    let mut c = load_command(&bundle, &node.store, &node.drop_in, &crio.socket, &lock);
    let o = run(with_systemd(&mut c, &crio, &node).arg("--json"));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    assert_confirmed(&o, &report);
    assert_eq!(other_status(&report, &foreign), "pinned", "{report}");
    assert!(
        crio.log().contains("systemctl restart crio"),
        "{}",
        crio.log()
    );
    assert_eq!(
        crio.log().matches("Restarting").count(),
        1,
        "{}",
        crio.log()
    );
    (crio, node, report, foreign)
}

#[test]
fn a_release_whose_reload_unpins_kept_entries_is_restarted() {
    if !is_root() {
        eprintln!("SKIPPED pins test: needs root");
        return;
    }
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let (crio, _node, report, _) = restart_on("1.29.5");
    let why = report["reload"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("systemctl restart crio (cri-o 1.29.5 unpins unchanged")
            && why.contains("#8202"),
        "{report}"
    );
    // Restarted, not reloaded: no SIGHUP ever reached it.
    assert_eq!(crio.log().matches("Reloading configuration").count(), 0);
}

#[test]
fn a_release_whose_reload_ignores_new_pins_is_restarted() {
    if !is_root() {
        eprintln!("SKIPPED pins test: needs root");
        return;
    }
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let (_crio, _node, report, _) = restart_on("1.28.4");
    let why = report["reload"].as_str().unwrap_or_default();
    assert!(
        why.contains("cri-o 1.28.4 does not apply new `pinned_images` on reload"),
        "{report}"
    );
}

#[test]
fn a_reload_that_unpins_kept_entries_is_not_confirmed_and_without_systemd_says_what_to_run() {
    if !is_root() {
        eprintln!("SKIPPED pins test: needs root");
        return;
    }
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let node = Node::new();
    let foreign = node.preload(&env, "docker");
    std::fs::write(&node.drop_in, pins_file(&[&foreign])).unwrap();
    let crio = Crio::start_as(node.dir.path(), &node.conf, &node.store, "1.30.1");
    let bundle = node.bundle(&env, "oci-one");
    // SIGHUP asked for explicitly: ours is pinned, the kept entry is not, and confirming the
    // whole effective list sees it (exit 1, saying why).
    let (o, report) = node.load(&bundle, &crio.socket, &signal(&crio));
    let err = report["warnings"].to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(report["cri"]["confirmed"], false, "{report}");
    assert_eq!(report["images"][0]["pinned"], true, "{report}");
    assert_eq!(other_status(&report, &foreign), "not-pinned", "{report}");
    assert!(
        err.contains("cri-o/cri-o#8202") && err.contains("--reload restart"),
        "{err}"
    );
    // `auto` without systemd: a process we did not start cannot be restarted; the message
    // names it and its command line, and the pins are not confirmed. (The file is unchanged
    // now, but CRI-O's pins differ from it: the rerun acts again.)
    let nowhere = node.path("no-systemd");
    let (o, report) = node.load(
        &bundle,
        &crio.socket,
        &[
            OsStr::new("--systemd-marker"),
            nowhere.as_os_str(),
            OsStr::new("--crio-pid"),
            OsStr::new(&crio.pid().to_string()),
        ],
    );
    let err = report["warnings"].to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(report["cri"].is_null(), "{report}");
    assert!(
        err.contains("CRI-O must be restarted, but systemd does not run it")
            && err.contains(&format!("`kill {}`", crio.pid()))
            && err.contains("--storage-root"),
        "{err}"
    );
    assert!(err.contains("running CRI-O's pins differ"), "{err}");
}

#[test]
fn no_socket_exits_1_unless_no_confirm() {
    if !is_root() {
        eprintln!("SKIPPED pins test: needs root");
        return;
    }
    let env = Env::new();
    let node = Node::new();
    let bundle = node.bundle(&env, "oci-one");
    let socket = node.path("absent.sock");
    let cmd = |extra: &[&str]| {
        let mut c = pinbundle();
        c.arg("load")
            .arg(&bundle)
            .args(kubelet_off())
            .args(node.store.args())
            .args(crio_config_args(&node.drop_in))
            .arg("--cri-socket")
            .arg(&socket)
            .arg("--lock-file")
            .arg(node.path("load.lock"))
            .args(["--reload", "none"])
            .args(extra);
        run(&mut c)
    };
    let o = cmd(&[]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("no CRI socket at `{}`", socket.display()))
            && err.contains("not confirmed"),
        "{err}"
    );
    assert!(pins_of(&std::fs::read_to_string(&node.drop_in).unwrap()).len() == 1);
    let o = cmd(&["--no-confirm", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert!(report["cri"].is_null());
    assert!(
        report["warnings"].to_string().contains("--no-confirm"),
        "{report}"
    );
}

#[test]
fn a_rerun_reloads_again_when_the_running_pins_differ_from_the_file() {
    if !is_root() {
        eprintln!("SKIPPED pins test: needs root");
        return;
    }
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let node = Node::new();
    let crio = Crio::start(node.dir.path(), &node.conf, &node.store);
    let bundle = node.bundle(&env, "oci-one");
    // The pins are written but CRI-O is never told (a reload that failed, say).
    let (o, _) = node.load(
        &bundle,
        &crio.socket,
        &[
            OsStr::new("--reload"),
            OsStr::new("none"),
            OsStr::new("--no-confirm"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(crio.log().matches("Reloading configuration").count(), 0);
    // The rerun finds the file unchanged, asks CRI-O, and reloads.
    let (o, report) = node.load(&bundle, &crio.socket, &signal(&crio));
    assert_confirmed(&o, &report);
    assert_eq!(report["pins"]["changed"], false, "{report}");
    assert!(
        report["reload"]
            .as_str()
            .unwrap_or_default()
            .starts_with("SIGHUP to crio"),
        "{report}"
    );
    assert!(
        report["warnings"]
            .to_string()
            .contains("pins differ from it"),
        "{report}"
    );
    assert_eq!(crio.log().matches("Reloading configuration").count(), 1);
    // And once they agree, a rerun leaves CRI-O alone.
    let (o, report) = node.load(&bundle, &crio.socket, &signal(&crio));
    assert_confirmed(&o, &report);
    assert!(report["reload"].is_null(), "{report}");
    assert_eq!(crio.log().matches("Reloading configuration").count(), 1);
}
