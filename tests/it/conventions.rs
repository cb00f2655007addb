//! The conventions every command shares: the exit-code table, `--json` documents that carry
//! a `version`, completions, man pages, `version`, the log flags, and a reader that goes away.

use std::os::unix::net::UnixStream;
use std::process::Stdio;

use serde_json::Value;

use crate::cli::empty_bundle;
use crate::util::{ok, pinbundle, run, tempdir, text};

#[test]
fn exit_codes_follow_the_table() {
    let dir = tempdir();
    let help = text(&ok(pinbundle().arg("--help")).stdout);
    assert!(help.contains("Exit codes (every command):"), "{help}");
    assert!(help.contains("  2  usage or operational error"), "{help}");

    // Content refused: a file that is not a bundle (inspect, diff) exits 1.
    let junk = dir.path().join("junk.pinbundle");
    fs_err::write(&junk, b"not a bundle at all").unwrap();
    let o = run(pinbundle().arg("inspect").arg(&junk));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("not a pinbundle bundle"));
    let o = run(pinbundle().arg("verify").arg(&junk));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));

    // Operational: a file that cannot be read exits 2, and so does a usage error.
    let missing = dir.path().join("missing.pinbundle");
    let o = run(pinbundle().arg("inspect").arg(&missing));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let o = run(pinbundle().args(["inspect", "--no-such-flag"]));
    assert_eq!(o.status.code(), Some(2));
    let o = run(pinbundle().args(["--log-level", "pinbundle=[", "version"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

#[test]
fn every_json_document_has_a_version_and_camel_case_keys() {
    let dir = tempdir();
    let bundle = empty_bundle(dir.path());
    let doc = |args: &[&str]| -> Value {
        let o = ok(pinbundle().args(args));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let b = bundle.to_str().unwrap();
    let key = dir.path().join("k");
    for (args, version) in [
        (vec!["verify", "--json", b], 2),
        (vec!["inspect", "--json", b], 1),
        (vec!["diff", "--json", b, b], 1),
        (vec!["version", "--json"], 1),
        (
            vec![
                "keygen",
                "--unencrypted",
                "--json",
                "-o",
                key.to_str().unwrap(),
            ],
            1,
        ),
    ] {
        let v = doc(&args);
        assert_eq!(v["version"], version, "{args:?}: {v}");
        // Every key of the document is camelCase (no snake_case left).
        fn keys(v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        out.push(k.clone());
                        keys(v, out);
                    }
                }
                Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        keys(&v, &mut all);
        assert!(
            all.iter().all(|k| !k.contains('_') && !k.contains('-')),
            "{args:?}: {all:?}"
        );
    }
    let v = doc(&["verify", "--json", b]);
    assert_eq!(
        v["membersChecked"].as_u64().map(|n| n > 0),
        Some(true),
        "{v}"
    );
}

#[test]
fn version_names_the_build() {
    let o = ok(pinbundle().args(["version", "--json"]));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pinbundle"], env!("CARGO_PKG_VERSION"));
    // This test runs from a git checkout: the commit is the one HEAD names.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let head = text(&head.stdout).trim().to_string();
    let commit = v["commit"].as_str().unwrap();
    if !head.is_empty() {
        assert!(
            commit.starts_with(&head) || commit == "unknown",
            "{commit} vs {head}"
        );
    }
    for k in ["commitDate", "buildDate", "target", "rustc"] {
        assert!(v[k].as_str().is_some_and(|s| !s.is_empty()), "{k}: {v}");
    }
    assert!(v["rustc"].as_str().unwrap().starts_with("rustc "), "{v}");
    let human = text(&ok(pinbundle().arg("version")).stdout);
    assert!(human.contains(commit), "{human}");
    let short = text(&ok(pinbundle().arg("--version")).stdout);
    assert!(short.contains(commit), "{short}");
}

#[test]
fn completions_and_man_pages_are_generated() {
    for (shell, marker) in [
        ("bash", "complete -F _pinbundle"),
        ("zsh", "#compdef pinbundle"),
        ("fish", "complete -c pinbundle"),
        ("elvish", "pinbundle"),
        ("powershell", "pinbundle"),
    ] {
        let o = ok(pinbundle().args(["completions", shell]));
        let script = text(&o.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        // Subcommands and their flags are in it.
        assert!(
            script.contains("verify") && script.contains("trust-key"),
            "{shell}"
        );
    }
    let o = run(pinbundle().args(["completions", "tcsh"]));
    assert_eq!(o.status.code(), Some(2));

    let dir = tempdir();
    let out = dir.path().join("man");
    ok(pinbundle().args(["man", "--out-dir"]).arg(&out));
    let top = fs_err::read_to_string(out.join("pinbundle.1")).unwrap();
    assert!(top.contains(".TH pinbundle 1"), "{top}");
    for sub in [
        "create", "verify", "inspect", "load", "keygen", "diff", "version",
    ] {
        let page = fs_err::read_to_string(out.join(format!("pinbundle-{sub}.1"))).unwrap();
        assert!(
            page.contains(&format!(".TH pinbundle-{sub} 1")),
            "{sub}: {page}"
        );
    }
    let load = fs_err::read_to_string(out.join("pinbundle-load.1")).unwrap();
    assert!(load.contains("trust\\-key"), "{load}");
}

#[test]
fn quiet_and_log_flags() {
    let dir = tempdir();
    let bundle = empty_bundle(dir.path());
    // -v and -q contradict each other.
    let o = run(pinbundle().args(["-v", "-q", "version"]));
    assert_eq!(o.status.code(), Some(2));
    // The flags are global: after the subcommand too; logs never reach stdout.
    let quiet = ok(pinbundle().arg("verify").arg(&bundle).arg("-q"));
    let loud = ok(pinbundle()
        .arg("verify")
        .arg(&bundle)
        .args(["--log-level", "trace"]));
    assert_eq!(quiet.stdout, loud.stdout);
    // RUST_LOG is read when no flag is given, and an unusable one falls back to warn.
    let o = ok(pinbundle()
        .arg("verify")
        .arg(&bundle)
        .env("RUST_LOG", "[[["));
    assert_eq!(o.stdout, quiet.stdout);
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempdir();
    let bundle = empty_bundle(dir.path());
    let b = bundle.to_str().unwrap();
    for args in [
        &["diff", b, b][..],
        &["diff", "--json", b, b],
        &["version"],
        &["version", "--json"],
        &["completions", "bash"],
        &["--help"],
    ] {
        let (ours, reader) = UnixStream::pair().unwrap();
        drop(reader);
        let o = run(pinbundle()
            .args(args)
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(ours))));
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o.stderr));
        assert!(o.stderr.is_empty(), "{args:?}: {}", text(&o.stderr));
    }
}
