//! The operator's day with `create` (issue 16): a plain-HTTP registry named without
//! `--insecure-registry`, refused connections, sizes, platforms, interrupted runs, and
//! filesystems that cannot hold a mode.

use pinbundle_fixtures::registry::TestRegistry;

use crate::util::{pinbundle, run, tempdir, text};

/// A plain-HTTP registry reached as HTTPS fails at once (no retries) with the flag to pass.
#[test]
fn plain_http_registry_gets_the_insecure_registry_hint() {
    let registry = TestRegistry::start().expect("start docker-registry");
    let dir = tempdir();
    let o = run(pinbundle()
        .args(["create", &format!("{}/x/y:v1", registry.addr()), "-o"])
        .arg(dir.path().join("b.pinbundle"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache")));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("--insecure-registry {}", registry.addr())),
        "{err}"
    );
    assert!(err.contains("plain HTTP"), "{err}");
    assert!(!err.contains("gave up after"), "retried: {err}");
    assert!(!err.contains("InvalidContentType"), "{err}");
}

/// A closed port is refused at once: one attempt, naming the registry.
#[test]
fn refused_connection_is_not_retried() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let dir = tempdir();
    for insecure in [true, false] {
        let mut c = pinbundle();
        c.args(["create", &format!("{closed}/x/y:v1"), "-o"])
            .arg(dir.path().join("b.pinbundle"))
            .arg("--cache-dir")
            .arg(dir.path().join("cache"));
        if insecure {
            c.args(["--insecure-registry", &closed]);
        }
        let o = run(&mut c);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(&closed), "{err}");
        assert!(err.to_lowercase().contains("refused"), "{err}");
        assert!(!err.contains("gave up after"), "retried: {err}");
    }
}

/// A size that is not one is refused before anything is fetched, naming the text and the
/// units; `--help` says what the units mean.
#[test]
fn volume_sizes_are_explained() {
    let dir = tempdir();
    let out = dir.path().join("b.pinbundle");
    for (bad, says) in [
        ("4.7X", "unknown unit \"X\""),
        ("4,7G", "\"4,7G\""),
        ("1K", "too small"),
    ] {
        let o = run(pinbundle()
            .args(["create", "127.0.0.1:1/x/y:v1", "--volume-size", bad, "-o"])
            .arg(&out));
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
        assert!(!err.contains("cannot connect"), "{bad}: fetched: {err}");
    }
    let help = text(&run(pinbundle().args(["create", "--help"])).stdout);
    for says in ["4.7G", "4,700,000,000", "GiB", "dvd-dl", "bd25"] {
        assert!(help.contains(says), "{says} not in create --help");
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}
