//! `create`, `inspect` and `verify` against a real registry with the fixture images.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pinbundle_fixtures::Pushed;
use pinbundle_fixtures::registry::TestRegistry;
use serde_json::Value;

use crate::util::{ok, pinbundle, run, sha256_file, tempdir, text};

/// A registry with every fixture image pushed.
pub struct Env {
    pub registry: TestRegistry,
    pub pushed: Vec<Pushed>,
}

impl Env {
    pub fn new() -> Env {
        let registry = TestRegistry::start().expect("start docker-registry");
        let pushed =
            pinbundle_fixtures::push_all(registry.addr(), "fixtures", None).expect("push fixtures");
        Env { registry, pushed }
    }

    pub fn image(&self, repo: &str) -> &Pushed {
        self.pushed
            .iter()
            .find(|p| p.name.ends_with(&format!("/fixtures/{repo}")))
            .unwrap_or_else(|| panic!("no fixture {repo}"))
    }

    /// `pinbundle create` with the registry marked insecure and a cache in `cache`.
    pub fn create(&self, cache: &Path, out: &Path, refs: &[String], extra: &[&str]) -> Output {
        run(pinbundle()
            .arg("create")
            .args(refs)
            .arg("-o")
            .arg(out)
            .arg("--cache-dir")
            .arg(cache)
            .args(["--insecure-registry", self.registry.addr()])
            .args(extra)
            .env("SOURCE_DATE_EPOCH", "1700000000"))
    }
}

impl Env {
    /// `dir/b.pinbundle` made from `refs` (cache in `dir/cache`); panics with create's
    /// stderr if it fails.
    pub fn bundle_of(&self, dir: &Path, refs: &[String]) -> PathBuf {
        let bundle = dir.join("b.pinbundle");
        let o = self.create(&dir.join("cache"), &bundle, refs, &[]);
        assert!(o.status.success(), "create failed: {}", text(&o.stderr));
        bundle
    }
}

pub fn inspect_json(bundle: &Path) -> Value {
    let o = ok(pinbundle().args(["inspect", "--json"]).arg(bundle));
    serde_json::from_slice(&o.stdout).expect("inspect --json is JSON")
}

fn blob_set(inspect: &Value) -> BTreeSet<String> {
    inspect["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap().to_string())
        .collect()
}

fn dir_entries(d: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn bundle_of_every_fixture_extracts_verifies_and_lists_registry_digests() {
    let env = Env::new();
    let dir = tempdir();
    let out = dir.path().join("all.pinbundle");
    let cache = dir.path().join("cache");
    // All by tag, and one more by digest.
    let mut refs: Vec<String> = env.pushed.iter().map(|p| p.tag_reference()).collect();
    refs.push(env.image("docker").digest_reference());
    let o = env.create(&cache, &out, &refs, &["--json"]);
    assert!(o.status.success(), "create failed: {}", text(&o.stderr));
    let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["images"].as_array().unwrap().len(), refs.len());

    // inspect lists exactly the requested references with the registry's digests.
    let inspect = inspect_json(&out);
    let images = inspect["images"].as_array().unwrap();
    assert_eq!(images.len(), refs.len());
    for (img, r) in images.iter().zip(&refs) {
        assert_eq!(img["reference"], *r);
        let pushed = env
            .pushed
            .iter()
            .find(|p| r.starts_with(&p.name) && r[p.name.len()..].starts_with([':', '@']))
            .unwrap();
        assert_eq!(img["digest"], pushed.digest, "{r}");
        assert_eq!(img["mediaType"], pushed.media_type, "{r}");
        assert_eq!(img["name"], pushed.name);
    }

    // Stock tools give an OCI layout whose blobs hash to their names.
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    ok(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | tar -x -C '{}'",
        out.display(),
        x.display()
    )));
    let blobs = dir_entries(&x.join("blobs/sha256"));
    assert_eq!(
        blobs.len(),
        inspect["totals"]["blobs"].as_u64().unwrap() as usize
    );
    for b in &blobs {
        let name = b.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(sha256_file(b), format!("sha256:{name}"));
    }
    let layout: Value =
        serde_json::from_slice(&std::fs::read(x.join("index.json")).unwrap()).unwrap();
    assert_eq!(layout["manifests"].as_array().unwrap().len(), refs.len());

    // Every blob of every non-index fixture is in the bundle, each once.
    let in_bundle = blob_set(&inspect);
    for p in env.pushed.iter().filter(|p| !p.is_index()) {
        for b in &p.blobs {
            assert!(
                in_bundle.contains(&b.digest),
                "{}: blob {} missing",
                p.name,
                b.digest
            );
        }
    }
    // The layer shared by oci-one and oci-multi is stored once.
    let shared = &env.image("oci-one").platforms[0].layers[0].digest;
    assert!(
        env.image("oci-multi").platforms[0]
            .layers
            .iter()
            .any(|l| &l.digest == shared)
    );
    assert_eq!(
        blobs.iter().filter(|b| b.ends_with(&shared[7..])).count(),
        1
    );

    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o644,
        "the bundle must be readable by whoever carries it"
    );
    let v = ok(pinbundle().args(["verify", "--json"]).arg(&out));
    let report: Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
}

#[test]
fn warm_cache_rerun_fetches_no_blob_and_is_byte_identical() {
    let env = Env::new();
    let dir = tempdir();
    let cache = dir.path().join("cache");
    let refs: Vec<String> = env.pushed.iter().map(|p| p.tag_reference()).collect();
    let (a, b) = (
        dir.path().join("a.pinbundle"),
        dir.path().join("b.pinbundle"),
    );
    let o = env.create(&cache, &a, &refs, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let before = env.registry.blob_get_count().unwrap();
    assert!(before > 0, "the first run must have fetched blobs");
    let o = env.create(&cache, &b, &refs, &["--jobs", "1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        env.registry.blob_get_count().unwrap(),
        before,
        "warm cache made blob requests"
    );
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same inputs, different bundles"
    );
}

#[test]
fn platform_selection_keeps_the_index_and_only_that_platforms_blobs() {
    let env = Env::new();
    let dir = tempdir();
    let cache = dir.path().join("cache");
    for repo in ["index", "manifest-list"] {
        let img = env.image(repo);
        let out = dir.path().join(format!("{repo}.pinbundle"));
        let o = env.create(
            &cache,
            &out,
            &[img.tag_reference()],
            &["--platform", "linux/arm64"],
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        let inspect = inspect_json(&out);
        let entry = &inspect["images"][0];
        assert_eq!(entry["digest"], img.digest, "index digest kept");
        let arm = img
            .platforms
            .iter()
            .find(|p| p.architecture == "arm64")
            .unwrap();
        let mut expected: BTreeSet<String> = BTreeSet::from([
            img.digest.clone(),
            arm.manifest_digest.clone(),
            arm.config_digest.clone(),
        ]);
        expected.extend(arm.layers.iter().map(|l| l.digest.clone()));
        assert_eq!(blob_set(&inspect), expected, "{repo}: only arm64's blobs");
        assert_eq!(entry["platforms"][0]["variant"], "v8");

        let all = dir.path().join(format!("{repo}-all.pinbundle"));
        let o = env.create(&cache, &all, &[img.tag_reference()], &["--all-platforms"]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_eq!(
            inspect_json(&all)["images"][0]["platforms"]
                .as_array()
                .unwrap()
                .len(),
            2
        );

        // A platform the index does not have is an error that lists what it has.
        let none = dir.path().join("none.pinbundle");
        let o = env.create(
            &cache,
            &none,
            &[img.tag_reference()],
            &["--platform", "linux/s390x"],
        );
        assert_eq!(o.status.code(), Some(1)); // a platform the image lacks: refused
        let err = text(&o.stderr);
        assert!(
            err.contains("linux/s390x") && err.contains("linux/arm64/v8"),
            "{err}"
        );
        assert!(!none.exists());
    }
}

#[test]
fn reference_files_and_pinned_image_sets_are_inputs() {
    let env = Env::new();
    let dir = tempdir();
    let list = dir.path().join("images.txt");
    std::fs::write(
        &list,
        format!(
            "# images\n{}\n\n  {}  # trailing comment\n",
            env.image("oci-one").tag_reference(),
            env.image("zstd").tag_reference()
        ),
    )
    .unwrap();
    let pis = dir.path().join("pis.yaml");
    std::fs::write(
        &pis,
        format!(
            "apiVersion: machineconfiguration.openshift.io/v1\nkind: PinnedImageSet\nmetadata:\n  name: test\nspec:\n  pinnedImages:\n  - name: {}\n",
            env.image("docker").digest_reference()
        ),
    )
    .unwrap();
    let out = dir.path().join("b.pinbundle");
    let o = env.create(
        &dir.path().join("cache"),
        &out,
        &[],
        &[
            "--from-file",
            list.to_str().unwrap(),
            "--pinned-image-set",
            pis.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let refs: Vec<String> = inspect_json(&out)["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        refs,
        [
            env.image("oci-one").tag_reference(),
            env.image("zstd").tag_reference(),
            env.image("docker").digest_reference()
        ]
    );
}

#[test]
fn basic_and_token_auth_registries() {
    let dir = tempdir();
    for (kind, registry) in [
        (
            "basic",
            TestRegistry::start_with_basic_auth("alice", "s3cret").unwrap(),
        ),
        (
            "token",
            TestRegistry::start_with_token_auth("alice", "s3cret").unwrap(),
        ),
    ] {
        let pushed =
            pinbundle_fixtures::push_all(registry.addr(), "fixtures", Some(("alice", "s3cret")))
                .unwrap();
        let reference = pushed[0].tag_reference();
        let env = Env { registry, pushed };
        let out = dir.path().join(format!("{kind}.pinbundle"));
        let cache = dir.path().join(format!("cache-{kind}"));
        // No credentials: a clear 401 error, no output.
        let empty = dir.path().join("empty-auth.json");
        std::fs::write(&empty, r#"{"auths":{}}"#).unwrap();
        let o = env.create(
            &cache,
            &out,
            std::slice::from_ref(&reference),
            &["--authfile", empty.to_str().unwrap()],
        );
        assert_eq!(o.status.code(), Some(2), "{kind}: {}", text(&o.stderr));
        let err = text(&o.stderr).to_lowercase();
        assert!(
            err.contains("unauthorized") || err.contains("401") || err.contains("authenticat"),
            "{kind}: {err}"
        );
        assert!(!out.exists());
        // With an auth file.
        let auth = dir.path().join(format!("{kind}-auth.json"));
        let token = base64_encode(b"alice:s3cret");
        std::fs::write(
            &auth,
            format!(
                r#"{{"auths":{{"{}":{{"auth":"{token}"}}}}}}"#,
                env.registry.addr()
            ),
        )
        .unwrap();
        let o = env.create(
            &cache,
            &out,
            std::slice::from_ref(&reference),
            &["--authfile", auth.to_str().unwrap()],
        );
        assert!(o.status.success(), "{kind}: {}", text(&o.stderr));
        assert!(!text(&o.stderr).contains("s3cret"), "password printed");
        assert_eq!(
            inspect_json(&out)["images"][0]["digest"],
            env.pushed[0].digest
        );
    }
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn bad_inputs_fail_clearly_and_leave_nothing_behind() {
    let env = Env::new();
    let bad = pinbundle_fixtures::push_bad_inputs(env.registry.addr(), "fixtures", None).unwrap();
    let dir = tempdir();
    let outdir = dir.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let out = outdir.join("b.pinbundle");
    let cache = dir.path().join("cache");
    let reg = env.registry.addr();
    let mut cases: Vec<(String, Vec<String>, Vec<&str>)> = vec![
        (
            "unknown tag".into(),
            vec![format!("{reg}/fixtures/oci-one:nope")],
            vec!["fixtures/oci-one:nope"],
        ),
        (
            "unknown repository".into(),
            vec![format!("{reg}/fixtures/nothing:v1")],
            vec!["fixtures/nothing"],
        ),
        (
            "unknown digest".into(),
            vec![format!("{reg}/fixtures/oci-one@sha256:{}", "ab".repeat(32))],
            vec!["fixtures/oci-one"],
        ),
        (
            "unsupported media type".into(),
            vec![bad.unknown_media.tag_reference()],
            vec!["application/vnd.example.unknown"],
        ),
        (
            "one bad among good".into(),
            vec![
                env.image("oci-one").tag_reference(),
                format!("{reg}/fixtures/missing:v1"),
            ],
            vec!["fixtures/missing"],
        ),
    ];
    if let Some(s1) = &bad.schema1 {
        cases.push((
            "schema 1".into(),
            vec![s1.tag_reference()],
            vec!["schema 1"],
        ));
    }
    for (name, refs, needles) in &cases {
        let o = env.create(&cache, &out, refs, &[]);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        for n in needles {
            assert!(
                err.contains(n),
                "{name}: error does not mention {n:?}:\n{err}"
            );
        }
        assert!(
            dir_entries(&outdir).is_empty(),
            "{name}: left {:?}",
            dir_entries(&outdir)
        );
    }
    // Unreachable registry: a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let o = run(pinbundle()
        .args([
            "create",
            &format!("{closed}/x/y:v1"),
            "--insecure-registry",
            &closed.to_string(),
            "-o",
        ])
        .arg(&out)
        .arg("--cache-dir")
        .arg(&cache));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains(&closed.to_string()),
        "{}",
        text(&o.stderr)
    );
    assert!(dir_entries(&outdir).is_empty());
    // Output directory that cannot exist.
    let o = env.create(
        &cache,
        Path::new("/proc/version/x.pinbundle"),
        &[env.image("oci-one").tag_reference()],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("/proc/version"),
        "{}",
        text(&o.stderr)
    );
    // Bad references never reach the network.
    let o = env.create(&cache, &out, &["Foo/Bar:1".to_string()], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("\"Foo/Bar:1\""));
}

#[test]
fn disk_full_leaves_no_partial_bundle() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED disk_full_leaves_no_partial_bundle: needs root to mount a small tmpfs");
        return;
    }
    let registry = TestRegistry::start().unwrap();
    let big =
        pinbundle_fixtures::push_sized(registry.addr(), "bench/big", &[3 << 20], 7, None).unwrap();
    let env = Env {
        registry,
        pushed: vec![big],
    };
    let dir = tempdir();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    ok(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small));
    let out = small.join("b.pinbundle");
    let o = env.create(
        &dir.path().join("cache"),
        &out,
        &[env.pushed[0].tag_reference()],
        &[],
    );
    let listing = dir_entries(&small);
    let _ = Command::new("umount").arg(&small).status();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("No space left on device"),
        "{}",
        text(&o.stderr)
    );
    assert!(listing.is_empty(), "left behind: {listing:?}");
}

#[test]
fn a_blob_that_fails_mid_run_stops_the_writer_and_leaves_nothing() {
    // The bundle is written while blobs are still downloading: a download that fails after
    // others were written must still leave no bundle, no temporary file and no bad cache entry.
    let registry = TestRegistry::start().unwrap();
    let img = pinbundle_fixtures::push_sized(
        registry.addr(),
        "bench/broken",
        &[256 << 10, 256 << 10, 256 << 10],
        9,
        None,
    )
    .unwrap();
    let layers: Vec<String> = img.platforms[0]
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .collect();
    // The layer written last (digest order): the others are in the bundle by then.
    let victim = layers.iter().max().unwrap().clone();
    let hex = &victim["sha256:".len()..];
    let data = registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    // Same length, other bytes: the registry serves it, the digest check refuses it.
    let len = std::fs::metadata(&data).unwrap().len() as usize;
    std::fs::write(&data, vec![0x5a; len]).unwrap();
    let env = Env {
        registry,
        pushed: vec![img],
    };
    let dir = tempdir();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let cache = dir.path().join("cache");
    for extra in [&[][..], &["--volume-size", "300KiB"][..]] {
        let o = env.create(
            &cache,
            &out_dir.join("b.pinbundle"),
            &[env.pushed[0].tag_reference()],
            extra,
        );
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(
            err.contains(&victim),
            "{extra:?}: the blob is not named: {err}"
        );
        assert!(
            dir_entries(&out_dir).is_empty(),
            "{extra:?}: left behind: {:?}",
            dir_entries(&out_dir)
        );
        assert!(
            !cache.join("blobs/sha256").join(hex).exists(),
            "the bad blob is in the cache"
        );
    }
}
