//! `pinbundle push` into a real `docker-registry` with htpasswd auth: digests and bytes kept,
//! a second push sends nothing, a push whose registry lost a blob sends only that one, shared
//! layers are mounted, and refusals come before any request.

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use pinbundle_fixtures::registry::TestRegistry;
use serde_json::Value;

use crate::create::{Env, inspect_json};
use crate::util::{pinbundle, run, tempdir, text};

const USER: &str = "pusher";
const PASSWORD: &str = "s3cret-push";

fn authfile(dir: &Path, registry: &str, user: &str, password: &str) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join(format!("auth-{user}.json"));
    let doc = serde_json::json!({"auths": {registry: {"auth": auth}}});
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

fn push(bundle: &Path, to: &str, registry: &str, auth: &Path, extra: &[&str]) -> Output {
    run(pinbundle()
        .arg("push")
        .arg(bundle)
        .args(["--to", to, "--insecure-registry", registry, "--json"])
        .arg("--authfile")
        .arg(auth)
        .args(["--retries", "0"])
        .args(extra))
}

fn report(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "push failed ({:?}): {}",
        o.status.code(),
        text(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("push --json is JSON")
}

fn uploads(registry: &TestRegistry) -> usize {
    registry
        .requests()
        .unwrap()
        .iter()
        .filter(|r| matches!(r.method.as_str(), "POST" | "PUT" | "PATCH"))
        .count()
}

#[test]
fn push_keeps_every_digest_skips_what_is_there_and_mounts_shared_layers() {
    let env = Env::new();
    let dir = tempdir();
    let refs: Vec<String> = ["oci-one", "oci-multi", "docker", "index", "manifest-list"]
        .iter()
        .map(|r| env.image(r).tag_reference())
        .collect();
    // Every platform: docker-registry 2.8 accepts an index only with all its children.
    let bundle = dir.path().join("all.pinbundle");
    let o = env.create(
        &dir.path().join("cache"),
        &bundle,
        &refs,
        &["--all-platforms"],
    );
    assert!(o.status.success(), "create: {}", text(&o.stderr));
    let inspect = inspect_json(&bundle);

    let site = TestRegistry::start_with_basic_auth(USER, PASSWORD).unwrap();
    let auth = authfile(dir.path(), site.addr(), USER, PASSWORD);
    let to = format!("{}/site", site.addr());
    let first = report(&push(&bundle, &to, site.addr(), &auth, &[]));
    assert_eq!(first["version"], 1);
    let images = first["images"].as_array().unwrap();
    assert_eq!(images.len(), refs.len());
    assert!(images.iter().all(|i| i["status"] == "pushed"), "{first}");
    // oci-one's layer is byte-identical to oci-multi's first: one upload, one mount.
    assert!(
        first["totals"]["blobsMounted"].as_u64().unwrap() >= 1,
        "{first}"
    );
    assert!(
        first["totals"]["blobsSent"].as_u64().unwrap() >= 1,
        "{first}"
    );

    // Every manifest the bundle records, fetched back by digest: the same bytes (the digest
    // is their sha256) and, by tag, the same digest.
    let mut client =
        pinbundle_fixtures::RegistryClient::new(site.addr(), Some((USER, PASSWORD))).unwrap();
    for image in inspect["images"].as_array().unwrap() {
        let name = image["name"].as_str().unwrap();
        let path = name.split_once('/').unwrap().1;
        let repository = format!("site/{path}");
        let digest = image["digest"].as_str().unwrap();
        let mut digests = vec![digest.to_string()];
        for p in image["platforms"].as_array().unwrap() {
            digests.push(p["digest"].as_str().unwrap().to_string());
        }
        for d in &digests {
            let got = client.get_manifest(&repository, d).unwrap();
            assert_eq!(
                &pinbundle_fixtures::layer::sha256_digest(&got.bytes),
                d,
                "{repository}@{d}"
            );
        }
        let tag = image["tag"].as_str().unwrap();
        let by_tag = client.get_manifest(&repository, tag).unwrap();
        assert_eq!(
            pinbundle_fixtures::layer::sha256_digest(&by_tag.bytes),
            digest,
            "{repository}:{tag}"
        );
    }

    // skopeo copies an image back out of the site registry.
    let one = images
        .iter()
        .find(|i| i["reference"].as_str().unwrap().contains("/oci-one:"))
        .unwrap();
    let out = dir.path().join("copied");
    let o = run(std::process::Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--src-creds"])
        .arg(format!("{USER}:{PASSWORD}"))
        .arg(format!("docker://{}", one["target"].as_str().unwrap()))
        .arg(format!("oci:{}:x", out.display())));
    assert!(o.status.success(), "skopeo copy: {}", text(&o.stderr));

    // A second push sends nothing: no upload request reaches the registry.
    let before = uploads(&site);
    let second = report(&push(&bundle, &to, site.addr(), &auth, &["-j", "2"]));
    assert_eq!(uploads(&site), before, "{second}");
    let t = &second["totals"];
    assert_eq!(t["blobsSent"], 0, "{second}");
    assert_eq!(t["blobsMounted"], 0, "{second}");
    assert_eq!(t["manifestsPut"], 0, "{second}");
    assert_eq!(t["bytesSent"], 0, "{second}");
    let all = second["images"].as_array().unwrap();
    assert!(
        all.iter().all(|i| i["status"] == "alreadyPresent"),
        "{second}"
    );

    // A push that stopped before one layer and the manifests of one image were committed:
    // the registry forgets that layer's link in the docker repository and the manifest's tag.
    // The rerun sends that layer alone and puts that image's manifest again.
    let docker = inspect["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"].as_str().unwrap().ends_with("/docker"))
        .unwrap();
    let layer = docker["platforms"][0]["layers"][0].as_str().unwrap();
    let hex = layer.strip_prefix("sha256:").unwrap();
    let repo_dir = site
        .storage_dir()
        .join("docker/registry/v2/repositories/site/fixtures/docker");
    std::fs::remove_dir_all(repo_dir.join("_layers/sha256").join(hex)).unwrap();
    std::fs::remove_dir_all(repo_dir.join("_manifests/tags/v1")).unwrap();
    let size = inspect["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["digest"] == layer)
        .unwrap()["size"]
        .as_u64()
        .unwrap();
    let third = report(&push(&bundle, &to, site.addr(), &auth, &[]));
    let t = &third["totals"];
    assert_eq!(t["blobsSent"], 1, "{third}");
    assert_eq!(t["bytesSent"], size, "{third}");
    assert_eq!(t["manifestsPut"], 1, "{third}");
    let pushed: Vec<&Value> = third["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "pushed")
        .collect();
    assert_eq!(pushed.len(), 1, "{third}");
    assert!(
        pushed[0]["reference"]
            .as_str()
            .unwrap()
            .contains("/docker:")
    );
}

#[test]
fn wrong_credentials_missing_to_and_collisions_are_refused() {
    let env = Env::new();
    let dir = tempdir();
    let one = env.image("oci-one");
    let bundle = env.bundle_of(dir.path(), &[one.tag_reference()]);
    let site = TestRegistry::start_with_basic_auth(USER, PASSWORD).unwrap();
    let to = format!("{}/site", site.addr());

    // Wrong password: exit 2, the registry named, nothing stored.
    let bad = authfile(dir.path(), site.addr(), USER, "wrong");
    let o = push(&bundle, &to, site.addr(), &bad, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains(site.addr()) && err.contains("401"), "{err}");

    // No --to: a usage error, no request.
    let before = site.request_count().unwrap();
    let o = run(pinbundle().arg("push").arg(&bundle));
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--to"), "{}", text(&o.stderr));

    // The same repository under two registry names (127.0.0.1 and localhost): both would be
    // kept at site/fixtures/oci-one. Refused (exit 1) before any request.
    let port = env.registry.addr().rsplit_once(':').unwrap().1;
    let other = format!("localhost:{port}/fixtures/oci-one:v1");
    let both = dir.path().join("both.pinbundle");
    let o = env.create(
        &dir.path().join("cache"),
        &both,
        &[one.tag_reference(), other],
        &["--insecure-registry", &format!("localhost:{port}")],
    );
    assert!(o.status.success(), "create: {}", text(&o.stderr));
    let good = authfile(dir.path(), site.addr(), USER, PASSWORD);
    let o = push(&both, &to, site.addr(), &good, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("would both be kept at"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(site.request_count().unwrap(), before, "no request was sent");

    // An index of which the bundle carries one platform (create's default): docker-registry
    // 2.8 refuses it (MANIFEST_BLOB_UNKNOWN for the missing child). That image fails, named
    // with the reason; the other image is pushed; exit 2.
    let index = env.image("index");
    let partial = dir.path().join("partial.pinbundle");
    let o = env.create(
        &dir.path().join("cache"),
        &partial,
        &[index.tag_reference(), env.image("docker").tag_reference()],
        &[],
    );
    assert!(o.status.success(), "create: {}", text(&o.stderr));
    let o = push(&partial, &to, site.addr(), &good, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let images = r["images"].as_array().unwrap();
    let failed: Vec<&Value> = images.iter().filter(|i| i["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{r}");
    assert!(failed[0]["reference"].as_str().unwrap().contains("/index:"));
    let e = failed[0]["error"].as_str().unwrap();
    assert!(
        e.contains("MANIFEST_BLOB_UNKNOWN") && e.contains("--all-platforms"),
        "{e}"
    );
    assert!(images.iter().any(|i| i["status"] == "pushed"), "{r}");
}

#[test]
fn push_with_bearer_tokens_mounts_across_repositories() {
    // Tokens scoped `repository:NAME:pull,push`, and a mount's token also `pull` on the
    // repository it reads from.
    let env = Env::new();
    let dir = tempdir();
    let refs = [
        env.image("oci-one").tag_reference(),
        env.image("oci-multi").tag_reference(),
    ];
    let bundle = env.bundle_of(dir.path(), &refs);
    let site = TestRegistry::start_with_token_auth(USER, PASSWORD).unwrap();
    let auth = authfile(dir.path(), site.addr(), USER, PASSWORD);
    let r = report(&push(
        &bundle,
        &format!("{}/t", site.addr()),
        site.addr(),
        &auth,
        &[],
    ));
    assert_eq!(r["totals"]["blobsMounted"], 1, "{r}");
    let images = r["images"].as_array().unwrap();
    assert!(images.iter().all(|i| i["status"] == "pushed"), "{r}");
    let mounts = site
        .requests()
        .unwrap()
        .iter()
        .filter(|q| q.method == "POST" && q.path.contains("mount=") && q.status == 201)
        .count();
    assert_eq!(mounts, 1, "the registry mounted the shared layer once");
}

/// The files docker-registry commits under `blobs/` (each blob's `data`, once complete).
fn committed_blobs(site: &TestRegistry) -> usize {
    let root = site.storage_dir().join("docker/registry/v2/blobs/sha256");
    let Ok(prefixes) = std::fs::read_dir(&root) else {
        return 0;
    };
    prefixes
        .flatten()
        .filter_map(|p| std::fs::read_dir(p.path()).ok())
        .flat_map(|blobs| blobs.flatten())
        .filter(|b| b.path().join("data").is_file())
        .count()
}

#[test]
fn a_push_killed_midway_resumes_sending_only_what_is_missing() {
    let source = TestRegistry::start().unwrap();
    let pushed = (0..3u64)
        .map(|i| {
            let name = format!("t/big{i}");
            pinbundle_fixtures::push_sized(
                source.addr(),
                &name,
                &[12 << 20, 12 << 20],
                60 + i,
                None,
            )
            .unwrap()
        })
        .collect();
    let env = Env {
        registry: source,
        pushed,
    };
    let dir = tempdir();
    let refs: Vec<String> = env.pushed.iter().map(|p| p.tag_reference()).collect();
    let bundle = env.bundle_of(dir.path(), &refs);
    let inspect = inspect_json(&bundle);
    let blobs = inspect["blobs"].as_array().unwrap().len();

    let site = TestRegistry::start_with_basic_auth(USER, PASSWORD).unwrap();
    let auth = authfile(dir.path(), site.addr(), USER, PASSWORD);
    let to = format!("{}/site", site.addr());
    // One blob at a time; SIGKILL as soon as the registry has committed the first.
    let mut child = pinbundle()
        .arg("push")
        .arg(&bundle)
        .args(["--to", &to, "--insecure-registry", site.addr(), "-j", "1"])
        .arg("--authfile")
        .arg(&auth)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while committed_blobs(&site) == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "push ended before a blob was committed"
        );
        assert!(std::time::Instant::now() < deadline, "no blob committed");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let ended = child.try_wait().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ended.is_none(), "push finished before it was killed");
    let committed = committed_blobs(&site);
    assert!(committed < blobs, "{committed} of {blobs} blobs committed");

    // The rerun finds what the killed push committed and sends the rest.
    let r = report(&push(&bundle, &to, site.addr(), &auth, &[]));
    let t = &r["totals"];
    let skipped = t["blobsSkipped"].as_u64().unwrap() as usize;
    let sent = t["blobsSent"].as_u64().unwrap() as usize;
    assert!(skipped >= 1, "{r}");
    assert!(sent >= 1 && sent < blobs, "{r}");
    assert!(
        r["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "pushed"),
        "{r}"
    );
    // Every image is there, by tag, with its digest.
    let mut client =
        pinbundle_fixtures::RegistryClient::new(site.addr(), Some((USER, PASSWORD))).unwrap();
    for p in &env.pushed {
        let repository = format!("site/{}", p.repository());
        let got = client.get_manifest(&repository, &p.tag).unwrap();
        assert_eq!(
            pinbundle_fixtures::layer::sha256_digest(&got.bytes),
            p.digest,
            "{repository}"
        );
    }
}
