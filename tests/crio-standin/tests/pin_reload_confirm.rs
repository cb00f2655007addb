//! End to end: pinbundle's pins.rs writes the drop-in, reload.rs sends SIGHUP to a running
//! `crio` stand-in, confirm.rs asks it over the CRI. The store is a real containers-storage
//! made by podman/skopeo (vfs driver, so no mounts are left behind).

// Test code: a failing std::fs call panics with the path in the test's own message.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pinbundle::load::confirm::{PinnedBy, VersionIssue, confirm};
use pinbundle::load::cri::CriClient;
use pinbundle::load::crio_config::CrioConfig;
use pinbundle::load::pins;
use pinbundle::load::reload::{ReloadEnv, ReloadMode, ReloadOutcome, find_crio, reload};
use pinbundle::reference::PinnedRef;

const REPO: &str = "localhost/pinbundle-test";

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Store {
    root: PathBuf,
    run: PathBuf,
}

impl Store {
    fn spec(&self) -> String {
        format!(
            "containers-storage:[vfs@{}+{}]",
            self.root.display(),
            self.run.display()
        )
    }

    /// Import a one-file image as `REPO:1`; returns its manifest digest and image ID.
    fn import(&self, dir: &Path) -> (String, String) {
        fs_err::write(dir.join("hello.txt"), "hello\n").unwrap();
        let script = format!(
            "tar -C {dir} -c hello.txt | podman --root {root} --runroot {run} --storage-driver vfs import - {REPO}:1",
            dir = dir.display(),
            root = self.root.display(),
            run = self.run.display()
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let images: serde_json::Value = serde_json::from_slice(
            &fs_err::read(self.root.join("vfs-images/images.json")).unwrap(),
        )
        .unwrap();
        let img = &images[0];
        (
            img["digest"].as_str().unwrap().to_string(),
            img["id"].as_str().unwrap().to_string(),
        )
    }

    /// Give the image the name `REPO@digest`, as `load` does with skopeo.
    fn add_digest_name(&self, digest: &str) {
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--preserve-digests",
                &format!("{}{REPO}:1", self.spec()),
                &format!("{}{REPO}@{digest}", self.spec()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

struct StandIn {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl StandIn {
    fn start(dir: &Path, tag: &str, config_dir: &Path, store: &Store, version: &str) -> StandIn {
        let socket = dir.join(format!("{tag}.sock"));
        let log = dir.join(format!("{tag}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_crio"))
            .arg("--socket")
            .arg(&socket)
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--storage-root")
            .arg(&store.root)
            .args(["--storage-driver", "vfs", "--version", version])
            .arg("--log")
            .arg(&log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let s = StandIn { child, socket, log };
        s.wait_log("listening on", 1);
        s
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    fn log_count(&self, needle: &str) -> usize {
        fs_err::read_to_string(&self.log)
            .map(|s| s.matches(needle).count())
            .unwrap_or(0)
    }

    fn wait_log(&self, needle: &str, count: usize) {
        let start = Instant::now();
        while self.log_count(needle) < count {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "stand-in never logged {needle:?} x{count}; log:\n{}",
                fs_err::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const FAST: Duration = Duration::from_millis(400);
const POLL: Duration = Duration::from_millis(50);

#[tokio::test(flavor = "multi_thread")]
async fn pin_reload_confirm_against_standin() {
    if !have("podman") || !have("skopeo") {
        eprintln!(
            "!!! SKIPPING pin_reload_confirm_against_standin: podman and skopeo are required"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = Store {
        root: tmp.path().join("storage"),
        run: tmp.path().join("run"),
    };
    let (digest, id) = store.import(tmp.path());
    let ours = PinnedRef {
        name: REPO.to_string(),
        digest: digest.parse().unwrap(),
    };
    let conf = tmp.path().join("crio.conf.d");
    fs_err::create_dir_all(&conf).unwrap();
    let drop_in = conf.join("50-pinned-images");
    let crio = StandIn::start(tmp.path(), "a", &conf, &store, "1.31.0");
    let env = ReloadEnv {
        pid: Some(crio.pid()),
        systemd_marker: tmp.path().join("no-systemd"),
        ..ReloadEnv::default()
    };

    // The client resolves by name@digest, by tag and by ID, and lists.
    let mut client = CriClient::connect(&crio.socket, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        client
            .image_status(&format!("{REPO}:1"))
            .await
            .unwrap()
            .unwrap()
            .id,
        id
    );
    assert_eq!(client.image_status(&id).await.unwrap().unwrap().id, id);
    assert!(
        client
            .image_status("localhost/absent:1")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(client.list_images().await.unwrap().len(), 1);

    // 1. No pins yet: present (found by digest within its repo) but not pinned.
    let r = confirm(&crio.socket, std::slice::from_ref(&ours), FAST, POLL)
        .await
        .unwrap();
    assert_eq!(r.runtime_name, "cri-o");
    assert_eq!(r.version_issue, None);
    assert!(
        r.images[0].present && !r.images[0].pinned && r.timed_out && !r.is_ok(),
        "{r:?}"
    );

    // 2. Write the drop-in with pins.rs and SIGHUP the explicit PID.
    let merged = pins::update(&drop_in, std::slice::from_ref(&ours)).unwrap();
    assert!(merged.content.is_some());
    assert!(read_config(&conf).unparsable.is_empty());
    let out = reload(ReloadMode::Signal, &env).unwrap();
    assert_eq!(out, ReloadOutcome::Signalled { pid: crio.pid() });
    crio.wait_log(&format!("Set config pinned_images to \"{ours}\""), 1);
    crio.wait_log("Configuration reload completed", 1);

    // 3. Pinned by name@digest, but the image is stored only as REPO:1: CRI-O matches
    //    storage names, so it is still NOT pinned (field-notes).
    let r = confirm(&crio.socket, std::slice::from_ref(&ours), FAST, POLL)
        .await
        .unwrap();
    assert!(r.images[0].present && !r.images[0].pinned, "{r:?}");

    // 4. Give it the digested name (what load's skopeo copy does): pinned at once, no reload.
    store.add_digest_name(&digest);
    let r = confirm(
        &crio.socket,
        std::slice::from_ref(&ours),
        Duration::from_secs(5),
        POLL,
    )
    .await
    .unwrap();
    assert!(r.is_ok() && !r.timed_out, "{r:?}");
    assert_eq!(r.images[0].id.as_deref(), Some(id.as_str()));
    assert_eq!(r.images[0].pinned_by, Some(PinnedBy::ImageStatus));
    assert_eq!(r.image_status_pinned, Some(true));

    // 5. Same pins again: nothing written, so the caller skips the reload.
    assert_eq!(
        pins::update(&drop_in, std::slice::from_ref(&ours))
            .unwrap()
            .content,
        None
    );

    // 6. A half-written file inside the drop-in dir: the scan flags it, and CRI-O's reload
    //    fails, keeping the old list (still pinned).
    let junk = conf.join(".50-pinned-images.tmp");
    fs_err::write(&junk, "[crio.image]\npinned_images = [\"loc").unwrap();
    let e = pins::plan(&read_config(&conf), &conf, &drop_in, &[]).unwrap_err();
    assert!(e.to_string().contains(".50-pinned-images.tmp"), "{e}");
    reload(ReloadMode::Signal, &env).unwrap();
    crio.wait_log("Unable to reload configuration", 1);
    let r = confirm(&crio.socket, std::slice::from_ref(&ours), FAST, POLL)
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    fs_err::remove_file(&junk).unwrap();

    // 7. A later drop-in replaces our list: the plan refuses it, and after a reload (found
    //    through /proc discovery this time) the image is no longer pinned.
    fs_err::write(
        conf.join("99-later"),
        "[crio.image]\npinned_images = [\"quay.io/other*\"]\n",
    )
    .unwrap();
    let e = pins::plan(&read_config(&conf), &conf, &drop_in, &[]).unwrap_err();
    assert!(e.to_string().contains("99-later` is read after"), "{e}");
    // Other `crio` processes may run on this host (other tests, a real CRI-O): discovery is
    // tested over a /proc that holds only the process this test started (issue 16).
    assert!(find_crio(Path::new("/proc")).unwrap().contains(&crio.pid()));
    let only_ours = tmp.path().join("proc");
    fs_err::create_dir_all(&only_ours).unwrap();
    std::os::unix::fs::symlink(
        format!("/proc/{}", crio.pid()),
        only_ours.join(crio.pid().to_string()),
    )
    .unwrap();
    assert_eq!(find_crio(&only_ours).unwrap(), vec![crio.pid()]);
    let discovered = ReloadEnv {
        pid: None,
        proc_root: only_ours,
        ..env.clone()
    };
    assert_eq!(
        reload(ReloadMode::Auto, &discovered).unwrap(),
        ReloadOutcome::Signalled { pid: crio.pid() }
    );
    crio.wait_log("Set config pinned_images to \"quay.io/other*\"", 1);
    let r = confirm(&crio.socket, std::slice::from_ref(&ours), FAST, POLL)
        .await
        .unwrap();
    assert!(
        r.images[0].present && !r.images[0].pinned && r.timed_out,
        "{r:?}"
    );
    drop(crio);

    // 8. A CRI-O version whose reload unpins unchanged entries: the report says so.
    fs_err::remove_file(conf.join("99-later")).unwrap();
    let old = StandIn::start(tmp.path(), "b", &conf, &store, "1.30.1");
    let r = confirm(
        &old.socket,
        std::slice::from_ref(&ours),
        Duration::from_secs(5),
        POLL,
    )
    .await
    .unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.version_issue, Some(VersionIssue::ReloadUnpinsUnchanged));
    assert!(r.version_advice().unwrap().contains("restart CRI-O"));
    // Its ImageStatus never says pinned: confirmed through ListImages.
    assert_eq!(r.image_status_pinned, Some(false));
    assert_eq!(r.images[0].pinned_by, Some(PinnedBy::ListImages));

    // 9. On that release a reload that adds an entry unpins the entries it keeps (#8202):
    //    ours was pinned at start-up and is not after the reload.
    let other = PinnedRef {
        name: "localhost/other".to_string(),
        digest: format!("sha256:{}", "e".repeat(64)).parse().unwrap(),
    };
    pins::update(&drop_in, &[ours.clone(), other]).unwrap();
    reload(
        ReloadMode::Signal,
        &ReloadEnv {
            pid: Some(old.pid()),
            ..env.clone()
        },
    )
    .unwrap();
    old.wait_log("Set config pinned_images", 2);
    // Before 1.30.6 a reload logs no completion line.
    assert_eq!(old.log_count("Configuration reload completed"), 0);
    let r = confirm(&old.socket, std::slice::from_ref(&ours), FAST, POLL)
        .await
        .unwrap();
    assert!(
        r.images[0].present && !r.images[0].pinned && r.timed_out,
        "{r:?}"
    );
}

fn read_config(conf: &Path) -> CrioConfig {
    CrioConfig::read(&conf.with_extension("no-crio.conf"), conf).unwrap()
}

#[tokio::test]
async fn confirm_errors_only_when_the_cri_is_unreachable() {
    let tmp = tempfile::tempdir().unwrap();
    let e = confirm(&tmp.path().join("none.sock"), &[], FAST, POLL)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("none.sock"), "{e}");
}
