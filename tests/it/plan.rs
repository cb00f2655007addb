//! `load --dry-run` shows the whole plan and changes nothing; a signed load names its key;
//! progress on a terminal ends each phase with its result.

use std::path::Path;
use std::process::Command;

use crate::create::Env;
use crate::load::{Store, load, load_command};
use crate::util::{files_under, ok, run, tempdir, text};

/// Every file under `dir` with its size and mtime: what "nothing written" is checked against.
fn tree(dir: &Path) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    if !dir.exists() {
        return Vec::new();
    }
    files_under(dir)
        .into_iter()
        .map(|p| {
            let m = std::fs::symlink_metadata(&p).unwrap();
            (p, m.len(), m.modified().unwrap())
        })
        .collect()
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let env = Env::new();
    let dir = tempdir();
    let (one, index) = (env.image("oci-one"), env.image("index"));
    let first = dir.path().join("first");
    std::fs::create_dir(&first).unwrap();
    let a = env.bundle_of(&first, &[one.tag_reference()]);
    let b = env.bundle_of(dir.path(), &[one.tag_reference(), index.tag_reference()]);
    let store = Store::new(dir.path(), "vfs");
    let conf_dir = dir.path().join("crio.conf.d");
    std::fs::create_dir(&conf_dir).unwrap();
    let other = format!("quay.io/x/y@sha256:{}", "a".repeat(64));
    std::fs::write(
        conf_dir.join("10-other"),
        format!("[crio]\n  [crio.image]\n    pinned_images = [\"{other}\"]\n"),
    )
    .unwrap();
    let drop_in = conf_dir.join("50-pinned-images");
    let (sock, lock) = (dir.path().join("no.sock"), dir.path().join("l"));
    // The first image loaded and pinned for real: the dry run must find it present.
    let (o, _) = load(&a, &store, &drop_in, &sock, &lock, &["--reload", "none"]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let dry_lock = dir.path().join("dry.lock");
    let (store_before, conf_before) = (tree(&store.root), tree(&conf_dir));
    let record_before = tree(Path::new("/var/lib/pinbundle"));
    let dry = |json: bool| {
        let mut c = load_command(&b, &store, &drop_in, &sock, &dry_lock);
        c.args(["--dry-run", "--reload", "none"])
            .env("TMPDIR", &tmp);
        if json {
            c.arg("--json");
        }
        run(&mut c)
    };
    let (o, t) = (dry(true), dry(false));
    for o in [&o, &t] {
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    assert_eq!(tree(&store.root), store_before, "the store changed");
    assert_eq!(tree(&conf_dir), conf_before, "the drop-in dir changed");
    assert_eq!(tree(Path::new("/var/lib/pinbundle")), record_before);
    assert_eq!(tree(&tmp), Vec::new(), "temporary files were left");
    assert!(!dry_lock.exists(), "a dry run took the load lock");

    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["dryRun"], true);
    let (pin_one, pin_index) = (one.digest_reference(), index.digest_reference());
    assert_eq!(v["images"][0]["status"], "present");
    assert_eq!(v["images"][1]["status"], "would-load");
    let platform = v["images"][1]["platform"].as_str().unwrap().to_string();
    assert!(platform.starts_with("linux/"), "{v}");
    assert_eq!(v["pins"]["dropIn"], drop_in.display().to_string());
    assert_eq!(v["pins"]["changed"], true);
    assert_eq!(v["pins"]["added"], serde_json::json!([pin_index]));
    assert_eq!(v["pins"]["alreadyThere"], serde_json::json!([pin_one]));
    assert_eq!(v["pins"]["entries"], 3);
    assert_eq!(v["reload"], "none: you would run `systemctl reload crio`");
    assert!(
        v["reloadReason"].as_str().unwrap().contains("--no-confirm"),
        "{v}"
    );
    assert_eq!(v["store"]["driver"], "vfs");
    assert_eq!(v["store"]["from"]["driver"], "--storage-driver");
    assert!(!v["space"]["filesystems"].as_array().unwrap().is_empty());
    assert_eq!(v["signature"], serde_json::Value::Null);

    let t = text(&t.stdout);
    let has = |needle: &str| assert!(t.contains(needle), "no {needle:?} in:\n{t}");
    has(&format!(
        "pins: {} would be updated (3 entries: 1 to add, 1 already there)",
        drop_in.display()
    ));
    has("reload: would be none: you would run `systemctl reload crio` (");
    has("signature: none (the bundle is unsigned and no trusted key is configured)");
    has("dry run: nothing was changed; 1 image to import, 1 already present (skipped)");
    has(&format!("store: {}", store.root.display()));
    has("space: ");
    assert!(
        t.lines().any(
            |l| l.starts_with("would-load") && l.ends_with(&format!("{pin_index}  {platform}"))
        ),
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("present") && l.contains(&pin_one)),
        "{t}"
    );
}

#[test]
fn a_signed_load_names_the_key_and_its_comment() {
    let env = Env::new();
    let dir = tempdir();
    let key = dir.path().join("site");
    let id = crate::sign::keygen(&key, None);
    let bundle = dir.path().join("s.pinbundle");
    let o = env.create(
        &dir.path().join("cache"),
        &bundle,
        &[env.image("oci-one").tag_reference()],
        &["--sign-key", &format!("{}.key", key.display())],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let store = Store::new(dir.path(), "vfs");
    let pubkey = format!("{}.pub", key.display());
    let o = run(load_in(dir.path(), &bundle, &store).args(["--dry-run", "--trust-key", &pubkey]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let t = text(&o.stdout);
    let line = t
        .lines()
        .find(|l| l.starts_with("signature: "))
        .unwrap_or_else(|| panic!("no signature line:\n{t}"));
    assert!(
        line.starts_with(&format!("signature: good, key {id}, trusted comment \"")),
        "{line}"
    );
    assert!(line.ends_with(&format!("(trusted key {pubkey})")), "{line}");
}

/// `load` of `bundle` into `store`, with the drop-in, socket and lock under `dir`.
fn load_in(dir: &Path, bundle: &Path, store: &Store) -> Command {
    load_command(
        bundle,
        store,
        &dir.join("crio.conf.d/50-pinned-images"),
        &dir.join("no.sock"),
        &dir.join("l"),
    )
}

/// `script` gives the command a terminal, so progress is drawn as a person sees it.
fn on_a_terminal(c: &Command) -> String {
    let mut line = shell_words(c.get_program().to_str().unwrap());
    for a in c.get_args() {
        line.push(' ');
        line.push_str(&shell_words(a.to_str().unwrap()));
    }
    // Wide enough that the bar's message (the image in flight) is not cut at 80 columns.
    let line = format!("stty cols 400; {line}");
    // The command's own environment too (its state dir above all), but progress drawn.
    let mut script = Command::new("script");
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            script.env(k, v);
        }
    }
    let o = ok(script
        .args(["-qec", &line, "/dev/null"])
        .env("TERM", "xterm")
        .env_remove("PINBUNDLE_NO_PROGRESS"));
    text(&o.stdout)
}

fn shell_words(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn progress_on_a_terminal_ends_each_phase_with_its_result() {
    let env = Env::new();
    let dir = tempdir();
    let one = env.image("oci-one");
    let bundle = dir.path().join("b.pinbundle");
    let mut create = crate::util::pinbundle();
    create
        .arg("create")
        .arg(one.tag_reference())
        .arg("-o")
        .arg(&bundle)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["--insecure-registry", env.registry.addr()]);
    let t = on_a_terminal(&create);
    assert!(
        t.lines().any(|l| l.contains("fetched ")
            && l.contains("; wrote ")
            && l.trim_end().ends_with(" s")),
        "{t}"
    );
    let store = Store::new(dir.path(), "vfs");
    let mut c = load_in(dir.path(), &bundle, &store);
    c.args(["--reload", "none"]);
    let t = on_a_terminal(&c);
    assert!(t.contains("verified ") && t.contains(" blobs, "), "{t}");
    assert!(t.contains("imported 1 image, "), "{t}");
    // The bar named the image in flight.
    assert!(t.contains(&one.tag_reference()), "{t}");
    // Without a terminal: no progress at all (the images are present now: nothing imported).
    let o = run(load_in(dir.path(), &bundle, &store).args(["--reload", "none"]));
    assert!(
        !text(&o.stderr).contains("verified "),
        "{}",
        text(&o.stderr)
    );
}
