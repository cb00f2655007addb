//! Snapshots of what the CLI prints: every `--help`, and the `--json` and human output of
//! `create`, `verify`, `inspect`, `diff` and `load` for fixture images from a real registry
//! (loaded into a vfs store, confirmed by the `crio` stand-in). They guard refactors against
//! any change of output; review a changed snapshot with `cargo insta review`.
//!
//! What differs between runs is scrubbed: temp paths, the registry's port, digests (numbered
//! in order of first appearance, see [`Scrub`]), durations, free space and process ids.

use std::path::Path;
use std::process::Output;

use crate::create::Env;
use crate::load::{CRIO, Crio, Store, crio_config_args, load, load_command};
use crate::util::{Scrub, ok, pinbundle, run, tempdir, text};

/// The subcommands, as `--help` names them.
const SUBCOMMANDS: &[&str] = &[
    "create",
    "verify",
    "inspect",
    "load",
    "keygen",
    "index-export",
    "diff",
    "manifests",
    "list",
    "unpin",
    "prune",
    "completions",
    "version",
    "serve",
    "serve cert-gen",
    "push",
];

/// insta settings with the filters for what varies by run but is not a digest or a path.
fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_prepend_module_to_snapshot(false);
    s.add_filter(r#""seconds": [0-9.e+-]+"#, r#""seconds": "[seconds]""#);
    s.add_filter(r"in [0-9]+\.[0-9]s\b", "in [seconds]s");
    s.add_filter(r#""free": [0-9]+"#, r#""free": "[free]""#);
    s.add_filter(r#""capacity": [0-9]+"#, r#""capacity": "[capacity]""#);
    s.add_filter(r"\([0-9.]+ [KMGT]?i?B free;", "([free] free;");
    s.add_filter(r"pid [0-9]+", "pid [pid]");
    // The name `manifests` gives a bundle's objects: a prefix of its pinbundle.json's digest.
    s.add_filter(r"pinbundle-[0-9a-f]{12}\b", "pinbundle-[identity]");
    s
}

#[test]
fn help_texts() {
    let settings = settings();
    let _bound = settings.bind_to_scope();
    let help = |args: &[&str]| {
        let o = ok(pinbundle()
            .args(args)
            .arg("--help")
            // clap shows an env var's value in the help; the width follows the terminal.
            .env_remove("PINBUNDLE_NO_PROGRESS")
            .env_remove("PINBUNDLE_STATE_DIR")
            .env("COLUMNS", "100"));
        text(&o.stdout)
    };
    insta::assert_snapshot!("help", help(&[]));
    for sub in SUBCOMMANDS {
        let words: Vec<&str> = sub.split(' ').collect();
        insta::assert_snapshot!(format!("help_{}", words.join("_")), help(&words));
    }
}

/// Exit code, stdout and stderr in one text.
fn shown(o: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

#[test]
fn outputs_of_create_verify_inspect_diff_and_load() {
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let dir = tempdir();
    let d = dir.path();
    let mut scrub = Scrub::new()
        .replace(d.display().to_string(), "[TMP]")
        .replace(env.registry.addr(), "[REGISTRY]")
        .replace(env.registry.addr().replace(':', "__"), "[REGISTRY]");
    let settings = settings();
    let _bound = settings.bind_to_scope();
    let mut snap = |name: &str, o: &Output| {
        let t = scrub.apply(&shown(o));
        insta::assert_snapshot!(name, t);
    };
    let cache = d.join("cache");
    let (a, b) = (d.join("a.pinbundle"), d.join("b.pinbundle"));
    let tag = |r: &str| env.image(r).tag_reference();

    // a: one single-platform image and one index; b: one of them again, and another.
    snap(
        "create_json",
        &env.create(&cache, &a, &[tag("oci-one"), tag("index")], &["--json"]),
    );
    snap(
        "create_human",
        &env.create(&cache, &b, &[tag("oci-one"), tag("docker")], &[]),
    );
    let cli = |args: &[&str], files: &[&Path]| run(pinbundle().args(args).args(files));
    snap("verify_json", &cli(&["verify", "--json"], &[&a]));
    snap("verify_human", &cli(&["verify"], &[&a]));
    snap("inspect_json", &cli(&["inspect", "--json"], &[&a]));
    snap("inspect_human", &cli(&["inspect"], &[&a]));
    snap("diff_json", &cli(&["diff", "--json"], &[&a, &b]));
    snap("diff_human", &cli(&["diff"], &[&a, &b]));

    // load a, then b into the same store: b's first image is already there.
    let store = Store::new(d, "vfs");
    let conf_dir = d.join("crio.conf.d");
    fs_err::create_dir(&conf_dir).unwrap();
    let drop_in = conf_dir.join("50-pinned-images");
    let crio = Crio::start(d, &conf_dir, &store);
    let lock = d.join("load.lock");
    let reload = ["--reload", "signal"];
    let (o, _) = load(&a, &store, &drop_in, &crio.socket, &lock, &reload);
    snap("load_json", &o);
    let o = run(load_command(&b, &store, &drop_in, &crio.socket, &lock).args(reload));
    snap("load_human", &o);

    // The lifecycle of what was loaded, on the same node and record as the loads above.
    let node = |cmd: &str, args: &[&str]| {
        run(pinbundle()
            .arg(cmd)
            .args(args)
            .args(store.args())
            .args(crio_config_args(&drop_in))
            .arg("--crio-drop-in")
            .arg(&drop_in)
            .arg("--cri-socket")
            .arg(&crio.socket)
            .arg("--state-dir")
            .arg(d.join("pinbundle-state")))
    };
    snap("list_json", &node("list", &["--json"]));
    snap("list_human", &node("list", &[]));
    let (lock_arg, b_arg) = (lock.to_str().unwrap(), b.to_str().unwrap());
    let unpin = ["--json", "--reload", "signal", "--confirm-timeout", "10"];
    snap(
        "unpin_json",
        &node(
            "unpin",
            &[&unpin[..], &["--lock-file", lock_arg, b_arg]].concat(),
        ),
    );
    let prune = ["--json", "--lock-file", lock_arg];
    snap("prune_json", &node("prune", &prune));
    snap(
        "manifests_json",
        &cli(&["manifests", "--json", "-o"], &[&d.join("manifests"), &a]),
    );
}

#[test]
fn outputs_of_version_and_keygen() {
    let mut settings = settings();
    // A new key's id is random.
    settings.add_filter(r#""keyId": "[0-9A-Fa-f]+""#, r#""keyId": "[key id]""#);
    let _bound = settings.bind_to_scope();
    let dir = tempdir();
    let mut scrub = Scrub::new().replace(dir.path().display().to_string(), "[TMP]");
    // What varies by build: commit, dates, toolchain.
    let mut version = serde_json::from_slice::<serde_json::Value>(
        &ok(pinbundle().args(["version", "--json"])).stdout,
    )
    .unwrap();
    for key in [
        "pinbundle",
        "commit",
        "commitDate",
        "buildDate",
        "target",
        "rustc",
    ] {
        let v = version
            .get_mut(key)
            .unwrap_or_else(|| panic!("version --json has no {key}"));
        assert!(v.as_str().is_some_and(|s| !s.is_empty()), "{key}: {v}");
        *v = format!("[{key}]").into();
    }
    insta::assert_snapshot!(
        "version_json",
        serde_json::to_string_pretty(&version).unwrap()
    );
    let o = run(pinbundle()
        .args(["keygen", "--unencrypted", "--json", "-o"])
        .arg(dir.path().join("site")));
    insta::assert_snapshot!("keygen_json", scrub.apply(&shown(&o)));
}
