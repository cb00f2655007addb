//! `load` writes the store CRI-O serves: CRI-O's `[crio]` storage keys, else storage.conf,
//! explicit flags over both, an image store only where skopeo can write one, and a refusal
//! when CRI-O (`ImageFsInfo`) serves another store. Real skopeo, real containers-storage,
//! the `crio` stand-in.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::create::Env;
use crate::load::{CRIO, Crio, Store, crio_config_args, is_root, kubelet_off};
use crate::util::{pinbundle, run, tempdir, text};

/// `pinbundle load --json` reading CRI-O's configuration from `drop_in`'s directory and
/// taking the store from it (no `--storage-*` flags unless in `extra`).
fn load_unflagged(
    bundle: &Path,
    drop_in: &Path,
    socket: &Path,
    dir: &Path,
    extra: &[&str],
) -> (Output, Value) {
    let o = run(pinbundle()
        .arg("load")
        .arg(bundle)
        .args(kubelet_off())
        .args(crio_config_args(drop_in))
        .arg("--crio-drop-in")
        .arg(drop_in)
        .arg("--cri-socket")
        .arg(socket)
        .arg("--lock-file")
        .arg(dir.join("load.lock"))
        .args(["--confirm-timeout", "10", "--reload", "signal", "--json"])
        .args(extra));
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o, v)
}

/// A bundle of one small image, and its `name@digest`.
fn one_image(env: &Env, dir: &Path) -> (PathBuf, String) {
    let img = env.image("oci-one");
    (
        env.bundle_of(dir, &[img.tag_reference()]),
        img.digest_reference(),
    )
}

/// CRI-O's drop-in dir in `dir` with `file` holding `[crio]` storage keys for `store`.
fn crio_storage_conf(dir: &Path, store: &Store, driver: &str) -> (PathBuf, PathBuf) {
    let conf_dir = dir.join("crio.conf.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let file = conf_dir.join("10-storage.conf");
    std::fs::write(
        &file,
        format!(
            "[crio]\nroot = \"{}\"\nrunroot = \"{}\"\nstorage_driver = \"{driver}\"\n",
            store.root.display(),
            store.root.with_file_name("run").display()
        ),
    )
    .unwrap();
    (conf_dir.join("50-pinned-images"), file)
}

/// What overlay wrote about `mount_program` when it opened the store.
fn has_mount_program(store: &Store) -> String {
    std::fs::read_to_string(store.root.join("overlay/.has-mount-program")).unwrap()
}

#[test]
fn crio_conf_d_names_the_store_and_the_report_says_which_file() {
    if !is_root() {
        eprintln!("SKIPPED: containers-storage needs root");
        return;
    }
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let dir = tempdir();
    let (bundle, pin) = one_image(&env, dir.path());
    let store = Store::new(&dir.path().join("crio-store"), "vfs");
    let (drop_in, file) = crio_storage_conf(dir.path(), &store, "vfs");
    let crio = Crio::start(dir.path(), drop_in.parent().unwrap(), &store);

    // Dry run first: it names the store and its source, and changes nothing.
    let (o, report) = load_unflagged(&bundle, &drop_in, &crio.socket, dir.path(), &["--dry-run"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(report["store"]["root"], store.root.display().to_string());
    assert_eq!(report["store"]["from"]["root"], file.display().to_string());
    assert!(!store.root.exists());

    let (o, report) = load_unflagged(&bundle, &drop_in, &crio.socket, dir.path(), &[]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert_eq!(report["ok"], true, "{report}");
    let s = &report["store"];
    assert_eq!(s["root"], store.root.display().to_string(), "{s}");
    assert_eq!(s["driver"], "vfs");
    for key in ["root", "runroot", "driver"] {
        assert_eq!(s["from"][key], file.display().to_string(), "{s}");
    }
    assert_eq!(
        s["crossChecked"],
        store.root.join("vfs-images").display().to_string(),
        "{s}"
    );
    assert!(
        store.exists(&pin),
        "{pin} is not in the store CRI-O's config names"
    );
    assert_eq!(report["images"][0]["pinned"], true, "{report}");

    // The human report has one line saying the same.
    let o = run(pinbundle()
        .arg("load")
        .arg(&bundle)
        .args(kubelet_off())
        .args(crio_config_args(&drop_in))
        .arg("--crio-drop-in")
        .arg(&drop_in)
        .arg("--cri-socket")
        .arg(&crio.socket)
        .arg("--lock-file")
        .arg(dir.path().join("load.lock"))
        .arg("--dry-run"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let want = format!(
        "store: {} (vfs), from {}",
        store.root.display(),
        file.display()
    );
    assert!(
        text(&o.stdout).lines().any(|l| l == want),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn storage_conf_with_driver_options_is_honoured_when_crio_sets_nothing() {
    if !is_root() {
        eprintln!("SKIPPED: containers-storage needs root");
        return;
    }
    let env = Env::new();
    let dir = tempdir();
    let (bundle, pin) = one_image(&env, dir.path());
    let conf_dir = dir.path().join("crio.conf.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let drop_in = conf_dir.join("50-pinned-images");
    let no_socket = dir.path().join("no.sock");

    // Overlay records in `<root>/overlay/.has-mount-program` whether `mount_program` is set:
    // a storage.conf option that the bracket form `[overlay@root+runroot]` would drop.
    // (Importing mounts nothing, so `/bin/true` is never run.)
    let store = Store::new(&dir.path().join("sc"), "overlay");
    let sc = dir.path().join("storage.conf");
    std::fs::write(
        &sc,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n[storage.options.overlay]\nmount_program = \"/bin/true\"\n",
            store.root.display(),
            store.root.with_file_name("run").display()
        ),
    )
    .unwrap();
    let (o, report) = load_unflagged(
        &bundle,
        &drop_in,
        &no_socket,
        dir.path(),
        &["--storage-conf", sc.to_str().unwrap(), "--no-pin"],
    );
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let s = &report["store"];
    assert_eq!(s["root"], store.root.display().to_string(), "{s}");
    assert_eq!(s["driver"], "overlay");
    assert_eq!(s["storageConf"], sc.display().to_string());
    assert_eq!(s["from"]["root"], sc.display().to_string());
    assert!(s["crossChecked"].is_null());
    assert!(
        report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("could not be cross-checked")),
        "{report}"
    );
    assert!(store.exists(&pin));
    assert_eq!(
        has_mount_program(&store),
        "true",
        "mount_program from storage.conf was not applied"
    );

    // The same load with the store named by flags (no storage.conf options) mounts it: the
    // option is what made the difference.
    let flagged = Store::new(&dir.path().join("flags"), "overlay");
    let (o, _) = load_unflagged(
        &bundle,
        &drop_in,
        &no_socket,
        dir.path(),
        &[
            &flagged
                .args()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()[..],
            &["--no-pin"],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(flagged.exists(&pin));
    assert_eq!(has_mount_program(&flagged), "false");
}

#[test]
fn flags_override_crio_config() {
    if !is_root() {
        eprintln!("SKIPPED: containers-storage needs root");
        return;
    }
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let dir = tempdir();
    let (bundle, pin) = one_image(&env, dir.path());
    let configured = Store::new(&dir.path().join("configured"), "vfs");
    let (drop_in, _) = crio_storage_conf(dir.path(), &configured, "vfs");
    let flagged = Store::new(&dir.path().join("flagged"), "vfs");
    let crio = Crio::start(dir.path(), drop_in.parent().unwrap(), &flagged);
    let args = flagged.args();
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let (o, report) = load_unflagged(&bundle, &drop_in, &crio.socket, dir.path(), &extra);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert_eq!(report["store"]["from"]["root"], "--storage-root");
    assert_eq!(report["store"]["from"]["driver"], "--storage-driver");
    assert!(flagged.exists(&pin));
    assert!(!configured.root.exists());
}

#[test]
fn a_store_crio_does_not_serve_is_refused_and_nothing_changes() {
    if !is_root() {
        eprintln!("SKIPPED: containers-storage needs root");
        return;
    }
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let dir = tempdir();
    let (bundle, _) = one_image(&env, dir.path());
    let configured = Store::new(&dir.path().join("configured"), "vfs");
    let (drop_in, _) = crio_storage_conf(dir.path(), &configured, "vfs");
    let served = Store::new(&dir.path().join("served"), "vfs");
    let crio = Crio::start(dir.path(), drop_in.parent().unwrap(), &served);
    let (o, _) = load_unflagged(&bundle, &drop_in, &crio.socket, dir.path(), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    for p in [
        served.root.join("vfs-images"),
        configured.root.join("vfs-images"),
    ] {
        assert!(err.contains(&p.display().to_string()), "{err}");
    }
    assert!(!configured.root.exists() && !served.root.exists());
    assert!(!drop_in.exists(), "the pins were written");
}

#[test]
fn an_imagestore_is_written_only_where_skopeo_can() {
    if !is_root() {
        eprintln!("SKIPPED: containers-storage needs root");
        return;
    }
    let env = Env::new();
    let dir = tempdir();
    let (bundle, pin) = one_image(&env, dir.path());
    let store = Store::new(&dir.path().join("s"), "vfs");
    let (drop_in, _) = crio_storage_conf(dir.path(), &store, "vfs");
    let images = dir.path().join("images");
    let file = drop_in.with_file_name("20-imagestore.conf");
    std::fs::write(
        &file,
        format!("[crio]\nimagestore = \"{}\"\n", images.display()),
    )
    .unwrap();
    let no_socket = dir.path().join("no.sock");
    let supported = pinbundle::load::storage::skopeo_writes_imagestore(
        &pinbundle::load::storage::Skopeo::new(),
    )
    .unwrap();
    let (o, report) = load_unflagged(&bundle, &drop_in, &no_socket, dir.path(), &[]);
    if supported {
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_eq!(
            report["store"]["from"]["imagestore"],
            file.display().to_string()
        );
        let list = std::fs::read_to_string(images.join("vfs-images/images.json")).unwrap();
        assert!(list.contains(&pin), "{list}");
    } else {
        // This machine's skopeo (Debian 12: 1.9.3) predates `imagestore`.
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
        let err = text(&o.stderr);
        assert!(
            err.contains(&file.display().to_string())
                && err.contains("cannot write an image store"),
            "{err}"
        );
        assert!(!store.root.exists() && !images.exists() && !drop_in.exists());
    }
}

#[test]
fn crio_storage_options_reach_skopeo() {
    if !is_root() {
        eprintln!("SKIPPED: containers-storage needs root");
        return;
    }
    let env = Env::new();
    let dir = tempdir();
    let (bundle, pin) = one_image(&env, dir.path());
    let store = Store::new(&dir.path().join("s"), "overlay");
    let (drop_in, _) = crio_storage_conf(dir.path(), &store, "overlay");
    let opts = drop_in.with_file_name("20-options.conf");
    std::fs::write(
        &opts,
        "[crio]\nstorage_option = [\"overlay.mount_program=/bin/true\"]\n",
    )
    .unwrap();
    let (o, report) = load_unflagged(
        &bundle,
        &drop_in,
        &dir.path().join("no.sock"),
        dir.path(),
        &["--no-pin"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        report["store"]["options"][0], "overlay.mount_program=/bin/true",
        "{report}"
    );
    assert!(store.exists(&pin));
    assert_eq!(has_mount_program(&store), "true");
}
