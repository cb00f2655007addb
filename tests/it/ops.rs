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

/// Every platform asked for must be in every image, an index or a single-platform image
/// (whose config says its platform), or `create` fails naming the image and what it has;
/// `--allow-missing-platforms` carries what there is, as long as there is one.
#[test]
fn missing_platforms_are_refused_naming_the_image() {
    let env = crate::create::Env::new();
    let dir = tempdir();
    let cache = dir.path().join("cache");
    let out = dir.path().join("b.pinbundle");
    let single = env.image("oci-one").tag_reference();
    let index = env.image("index").tag_reference();
    let refused = |refs: &[String], extra: &[&str], names: &str, missing: &str, has: &str| {
        let o = env.create(&cache, &out, refs, extra);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        for says in [names, missing, has] {
            assert!(err.contains(says), "{extra:?}: {says:?} not in {err}");
        }
        assert!(!out.exists(), "{extra:?}: wrote {}", out.display());
    };
    // A single-platform amd64 image asked for arm64: refused, not carried silently.
    refused(
        std::slice::from_ref(&single),
        &["--platform", "linux/arm64/v8"],
        &single,
        "no manifest for linux/arm64/v8",
        "it has: linux/amd64",
    );
    // With amd64 too, one missing platform is still refused without the flag …
    let both = ["--platform", "linux/amd64", "--platform", "linux/s390x"];
    refused(
        &[single.clone(), index.clone()],
        &both,
        "--allow-missing-platforms",
        "no manifest for linux/s390x",
        "it has:",
    );
    refused(
        std::slice::from_ref(&index),
        &both,
        &index,
        "no manifest for linux/s390x",
        "linux/amd64, linux/arm64/v8",
    );
    // … and with it both images are carried, with what they have.
    let mut allowed = both.to_vec();
    allowed.push("--allow-missing-platforms");
    let o = env.create(&cache, &out, &[single.clone(), index.clone()], &allowed);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let inspect = crate::create::inspect_json(&out);
    let images = inspect["images"].as_array().expect("images");
    assert_eq!(images.len(), 2, "{inspect}");
    for image in images {
        let platforms = image["platforms"].as_array().expect("platforms");
        assert_eq!(platforms.len(), 1, "{image}");
        assert_eq!(platforms[0]["architecture"], "amd64", "{image}");
    }
    std::fs::remove_file(&out).expect("remove");
    // An image with none of them is refused even with the flag.
    refused(
        std::slice::from_ref(&single),
        &["--platform", "linux/arm64", "--allow-missing-platforms"],
        &single,
        "no manifest for linux/arm64",
        "it has: linux/amd64",
    );
}
