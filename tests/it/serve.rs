//! `pinbundle serve` against real clients: skopeo, podman and `pinbundle create` pull every
//! image of a bundle from it; podman with only `manifests --mirror`'s drop-in pulls by the
//! original name (its registry stopped); TLS with `serve cert-gen`'s CA; htpasswd auth; the
//! API's answers; SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use pinbundle::bundle::{BundleSet, SetOptions};
use pinbundle_fixtures::RegistryClient;
use pinbundle_fixtures::image::{Flavor, LINUX_AMD64, image_from_single, single};
use pinbundle_fixtures::layer::{Compression, TarBuilder};
use pinbundle_fixtures::registry::TestRegistry;

use crate::util::{http, noise, ok, pinbundle, run, tempdir, text};

/// The bundle built once for all tests: two images (OCI and Docker v2s2) made by `create`
/// from a real registry that is stopped afterwards.
struct Fixture {
    bundle: PathBuf,
    /// (served repository `ns/app`, original name `127.0.0.1:P/ns/app`, tag, digest)
    images: Vec<(String, String, String, String)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/serve"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let registry = TestRegistry::start().unwrap();
        let mut client = RegistryClient::new(registry.addr(), None).unwrap();
        let mut images = Vec::new();
        for (i, (repo, flavor)) in [("ns/app", Flavor::Oci), ("ns/two", Flavor::Docker)]
            .into_iter()
            .enumerate()
        {
            let mut t = TarBuilder::new();
            t.file("etc/served", noise(300 << 10, i as u64 + 7));
            let media_type = match flavor {
                Flavor::Oci => Compression::Gzip.oci_media_type(),
                Flavor::Docker => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            };
            let layer = t.build(Compression::Gzip, media_type).unwrap();
            let image = image_from_single(
                repo,
                "v1",
                single(flavor, repo, &LINUX_AMD64, vec![layer]).unwrap(),
            );
            let pushed = client.push_image("", &image).unwrap();
            images.push((
                repo.to_string(),
                pushed.name.clone(),
                pushed.tag.clone(),
                pushed.digest.clone(),
            ));
        }
        let bundle = dir.join("site.pinbundle");
        ok(pinbundle()
            .arg("create")
            .args(images.iter().map(|(_, n, t, _)| format!("{n}:{t}")))
            .arg("-o")
            .arg(&bundle)
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .args(["--insecure-registry", registry.addr()]));
        drop(registry);
        Fixture { bundle, images }
    })
}

/// A running `pinbundle serve`; SIGTERM and reaped when dropped.
struct Serve {
    child: Option<Child>,
    url: String,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        Serve::try_start(args).unwrap_or_else(|e| panic!("serve did not start: {e}"))
    }

    fn try_start(args: &[&str]) -> Result<Serve, String> {
        Serve::try_start_on(&fixture().bundle, args)
    }

    fn try_start_on(bundle: &Path, args: &[&str]) -> Result<Serve, String> {
        let dir = tempdir();
        let stderr = dir.path().join("stderr");
        let mut child = pinbundle()
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .arg(bundle)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim().is_empty() {
            let status = child.wait().unwrap();
            return Err(format!(
                "{status}: {}",
                std::fs::read_to_string(&stderr).unwrap()
            ));
        }
        Ok(Serve {
            child: Some(child),
            url: line.trim().to_string(),
            stderr,
            _dir: dir,
        })
    }

    fn addr(&self) -> SocketAddr {
        self.host().parse().unwrap()
    }

    /// `127.0.0.1:PORT`.
    fn host(&self) -> &str {
        self.url.split_once("://").unwrap().1
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap()
    }

    /// SIGTERM; the exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        ok(Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string()));
        let status = child.wait().unwrap();
        (status, self.stderr())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

fn skopeo_digest(image: &str, extra: &[&str]) -> std::process::Output {
    run(Command::new("skopeo")
        .args(["inspect", "--raw", "--retry-times", "0"])
        .args(extra)
        .arg(image))
}

fn sha256(b: &[u8]) -> String {
    pinbundle::reference::Digest::of(b).to_string()
}

#[test]
fn skopeo_podman_and_create_pull_every_image() {
    let f = fixture();
    let serve = Serve::start(&[]);
    let work = tempdir();
    for (repo, _, tag, digest) in &f.images {
        // skopeo copies every blob (each checked against its digest by skopeo).
        let dest = work.path().join(repo.replace('/', "_"));
        let digestfile = work.path().join("digest");
        ok(Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false", "--digestfile"])
            .arg(&digestfile)
            .arg(format!("docker://{}/{repo}:{tag}", serve.host()))
            .arg(format!("dir:{}", dest.display())));
        assert_eq!(&std::fs::read_to_string(&digestfile).unwrap(), digest);
        // podman into a private store.
        let podman = |args: &[&str]| {
            let mut c = Command::new("podman");
            c.arg("--root")
                .arg(work.path().join("root"))
                .arg("--runroot")
                .arg(work.path().join("runroot"))
                .args(["--storage-driver", "vfs"])
                .args(args);
            c
        };
        let reference = format!("{}/{repo}@{digest}", serve.host());
        ok(&mut podman(&[
            "pull",
            "-q",
            "--tls-verify=false",
            &reference,
        ]));
        let o = ok(&mut podman(&[
            "image",
            "inspect",
            "--format",
            "{{.Digest}}",
            &reference,
        ]));
        assert_eq!(text(&o.stdout).trim(), digest);
    }
    // pinbundle's own registry client.
    let again = work.path().join("again.pinbundle");
    ok(pinbundle()
        .arg("create")
        .args(
            f.images
                .iter()
                .map(|(repo, _, tag, _)| format!("{}/{repo}:{tag}", serve.host())),
        )
        .arg("-o")
        .arg(&again)
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
        .args(["--insecure-registry", serve.host()]));
    let set = BundleSet::open(
        &[again],
        SetOptions {
            allow_partial: false,
            find_siblings: true,
        },
    )
    .unwrap();
    let mut got: Vec<String> = set
        .manifest()
        .images
        .iter()
        .map(|i| i.digest.to_string())
        .collect();
    let mut want: Vec<String> = f.images.iter().map(|i| i.3.clone()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let (status, stderr) = serve.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("stopped: "), "{stderr}");
    assert!(stderr.contains(" 0 errors"), "{stderr}");
}

/// `tool` seeing `dropins` as /etc/containers/registries.conf.d (as tests/it/mirror.rs).
fn with_dropins(tool: &str, dropins: &Path, home: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/containers/registries.conf.d && exec "$@""#)
        .arg(dropins)
        .arg(tool)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("XDG_RUNTIME_DIR", home);
    c
}

#[test]
fn podman_pulls_the_original_name_from_serve_with_the_manifests_dropin() {
    if !crate::load::is_root() {
        eprintln!("SKIPPED: needs root for a private mount namespace");
        return;
    }
    let f = fixture();
    let serve = Serve::start(&[]);
    let out = tempdir();
    ok(pinbundle()
        .arg("manifests")
        .arg(&f.bundle)
        .args([
            "--mirror",
            serve.host(),
            "--mirror-transport",
            "plain-http",
            "-o",
        ])
        .arg(out.path()));
    let dropins = out.path().join("nodes/registries.conf.d");
    let (repo, original, _, digest) = &f.images[0];
    let reference = format!("{original}@{digest}");
    let podman = |args: &[&str]| {
        let mut c = with_dropins("podman", &dropins, out.path());
        c.arg("--root")
            .arg(out.path().join("root"))
            .arg("--runroot")
            .arg(out.path().join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        c
    };
    // The original registry is gone: only the mirror can answer.
    ok(&mut podman(&["pull", "-q", &reference]));
    let o = ok(&mut podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        &reference,
    ]));
    assert_eq!(text(&o.stdout).trim(), digest);
    let log = serve.stderr();
    assert!(
        log.contains(&format!("GET /v2/{repo}/manifests/{digest} 200")),
        "{log}"
    );
}

#[test]
fn tls_with_the_generated_ca() {
    let dir = tempdir();
    let certs = dir.path().join("certs");
    let o = ok(pinbundle()
        .args([
            "serve",
            "cert-gen",
            "--advertise",
            "127.0.0.1",
            "--advertise",
            "localhost",
        ])
        .arg("--out-dir")
        .arg(&certs));
    assert!(
        text(&o.stderr).contains("/etc/containers/certs.d/"),
        "{}",
        text(&o.stderr)
    );
    use std::os::unix::fs::PermissionsExt as _;
    for key in ["ca.key", "server.key"] {
        let mode = std::fs::metadata(certs.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // Never replaced without --force.
    let again = run(pinbundle()
        .args(["serve", "cert-gen", "--advertise", "127.0.0.1", "--out-dir"])
        .arg(&certs));
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("--force"));

    let serve = Serve::start(&[
        "--cert",
        certs.join("server.crt").to_str().unwrap(),
        "--key",
        certs.join("server.key").to_str().unwrap(),
    ]);
    assert!(serve.url.starts_with("https://"), "{}", serve.url);
    let (repo, _, tag, digest) = &fixture().images[0];
    let image = format!("docker://{}/{repo}:{tag}", serve.host());
    let cadir = dir.path().join("cadir");
    std::fs::create_dir(&cadir).unwrap();
    std::fs::copy(certs.join("ca.crt"), cadir.join("ca.crt")).unwrap();
    let o = skopeo_digest(&image, &["--cert-dir", cadir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(&sha256(&o.stdout), digest);
    // Without the CA: an unknown authority.
    let o = skopeo_digest(&image, &[]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("certificate"),
        "{}",
        text(&o.stderr)
    );
}

/// An htpasswd file in `dir` with the one user `site`, password `s3cret`; and its hash.
fn users_file(dir: &Path) -> (PathBuf, String) {
    let file = dir.join("users");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(&file, format!("site:{hash}\n")).unwrap();
    (file, hash)
}

#[test]
fn htpasswd_basic_auth() {
    let dir = tempdir();
    let (file, hash) = users_file(dir.path());
    let serve = Serve::start(&["--htpasswd", file.to_str().unwrap()]);
    let (repo, _, tag, digest) = &fixture().images[0];
    let image = format!("docker://{}/{repo}:{tag}", serve.host());
    let r = http(serve.addr(), "GET", "/v2/", &[]);
    assert_eq!(r.status, 401);
    assert!(
        r.headers["www-authenticate"].starts_with("Basic realm="),
        "{:?}",
        r.headers
    );
    let plain = ["--tls-verify=false"];
    let o = skopeo_digest(&image, &plain);
    assert!(!o.status.success());
    let o = skopeo_digest(&image, &["--tls-verify=false", "--creds", "site:wrong"]);
    assert!(!o.status.success());
    let o = skopeo_digest(&image, &["--tls-verify=false", "--creds", "site:s3cret"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(&sha256(&o.stdout), digest);

    // Any hash but bcrypt is refused at start, naming the line.
    std::fs::write(&file, format!("site:{hash}\nold:$apr1$abc$def\n")).unwrap();
    let e = Serve::try_start(&["--htpasswd", file.to_str().unwrap()])
        .err()
        .unwrap();
    assert!(e.contains("exit status: 1") && e.contains("line 2"), "{e}");
}

#[test]
fn bearer_tokens_are_issued_to_htpasswd_users_and_taken_by_skopeo_and_podman() {
    let dir = tempdir();
    let (file, _) = users_file(dir.path());
    let serve = Serve::start(&["--htpasswd", file.to_str().unwrap(), "--token-auth"]);
    let a = serve.addr();
    let r = http(a, "GET", "/v2/", &[]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers["www-authenticate"],
        format!(
            "Bearer realm=\"http://{}/token\",service=\"pinbundle\"",
            serve.host()
        )
    );
    // The token endpoint: basic credentials of a user, nothing else.
    use base64::Engine as _;
    let basic = |c: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(c)
        )
    };
    for creds in [
        None,
        Some(basic("site:wrong")),
        Some(basic("nobody:s3cret")),
    ] {
        let h: Vec<(&str, &str)> = creds
            .iter()
            .map(|c| ("Authorization", c.as_str()))
            .collect();
        let r = http(
            a,
            "GET",
            "/token?service=pinbundle&scope=repository:ns/app:pull",
            &h,
        );
        assert_eq!(r.status, 401, "{creds:?}");
    }
    let r = http(
        a,
        "GET",
        "/token?service=pinbundle",
        &[("Authorization", &basic("site:s3cret"))],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["cache-control"], "no-store");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let token = v["token"].as_str().unwrap();
    assert_eq!(v["access_token"], token);
    assert_eq!(v["expires_in"], 600);
    let bearer = format!("Bearer {token}");
    assert_eq!(
        http(a, "GET", "/v2/", &[("Authorization", &bearer)]).status,
        200
    );
    // Basic credentials go to /token only; a forged token is refused.
    let r = http(
        a,
        "GET",
        "/v2/",
        &[("Authorization", &basic("site:s3cret"))],
    );
    assert_eq!(r.status, 401);
    let forged = format!("Bearer 9{token}");
    assert_eq!(
        http(a, "GET", "/v2/", &[("Authorization", &forged)]).status,
        401
    );

    let (repo, _, tag, digest) = &fixture().images[0];
    let image = format!("docker://{}/{repo}:{tag}", serve.host());
    let o = skopeo_digest(&image, &["--tls-verify=false"]);
    assert!(!o.status.success());
    let o = skopeo_digest(&image, &["--tls-verify=false", "--creds", "site:wrong"]);
    assert!(!o.status.success());
    let o = skopeo_digest(&image, &["--tls-verify=false", "--creds", "site:s3cret"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(&sha256(&o.stdout), digest);
    // podman pulls every layer with a token.
    let store = dir.path().join("store");
    let o = run(Command::new("podman")
        .arg("--root")
        .arg(store.join("root"))
        .arg("--runroot")
        .arg(store.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "pull",
            "-q",
            "--tls-verify=false",
        ])
        .args(["--creds", "site:s3cret"])
        .arg(format!("{}/{repo}@{digest}", serve.host())));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (status, log) = serve.stop();
    assert!(status.success());
    assert!(log.contains("bearer tokens (1 user)"), "{log}");
    assert!(log.contains("GET /token?"), "{log}");
    assert!(log.contains("/blobs/sha256:"), "{log}");
}

#[test]
fn a_damaged_bundle_is_refused_at_start() {
    let dir = tempdir();
    let copy = dir.path().join("damaged.pinbundle");
    let mut bytes = std::fs::read(&fixture().bundle).unwrap();
    // A byte inside the first layer's frames (past the header, well before the index).
    let at = bytes.len() / 3;
    bytes[at] ^= 0x55;
    std::fs::write(&copy, bytes).unwrap();
    let o = run(pinbundle()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg(&copy)
        .stdout(Stdio::piped()));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());
}

#[test]
fn api_answers() {
    let f = fixture();
    let serve = Serve::start(&["--prefix", "site"]);
    let a = serve.addr();
    let (repo, _, tag, digest) = &f.images[0];
    let repo = format!("site/{repo}");

    let r = http(a, "GET", "/v2/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["docker-distribution-api-version"], "registry/2.0");

    let r = http(a, "GET", "/v2/_catalog", &[]);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!(["site/ns/app", "site/ns/two"])
    );
    let r = http(a, "GET", "/v2/_catalog?n=1", &[]);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["site/ns/app"]));
    assert!(
        r.headers["link"].contains("last=site/ns/app"),
        "{:?}",
        r.headers
    );
    let r = http(a, "GET", "/v2/_catalog?n=1&last=site/ns/app", &[]);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["site/ns/two"]));

    let r = http(a, "GET", &format!("/v2/{repo}/tags/list"), &[]);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!([tag]));
    let r = http(a, "GET", &format!("/v2/{repo}/tags/list?n=0"), &[]);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!([]));

    // Manifests: raw bytes, by tag and digest; HEAD has the headers only.
    let by_tag = http(a, "GET", &format!("/v2/{repo}/manifests/{tag}"), &[]);
    assert_eq!(by_tag.status, 200);
    assert_eq!(&sha256(&by_tag.body), digest);
    assert_eq!(&by_tag.headers["docker-content-digest"], digest);
    assert_eq!(
        by_tag.headers["content-type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let head = http(a, "HEAD", &format!("/v2/{repo}/manifests/{digest}"), &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.headers["content-length"],
        by_tag.body.len().to_string()
    );
    // The original host is not part of the served name.
    let r = http(
        a,
        "GET",
        &format!("/v2/{}/manifests/{tag}", f.images[0].1),
        &[],
    );
    assert_eq!(r.status, 404);

    // A blob, whole and in ranges.
    let m: serde_json::Value = serde_json::from_slice(&by_tag.body).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let size = m["layers"][0]["size"].as_u64().unwrap();
    let whole = http(a, "GET", &format!("/v2/{repo}/blobs/{layer}"), &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(sha256(&whole.body), layer);
    let part = http(
        a,
        "GET",
        &format!("/v2/{repo}/blobs/{layer}"),
        &[("Range", "bytes=10-19")],
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body, whole.body[10..20]);
    assert_eq!(part.headers["content-range"], format!("bytes 10-19/{size}"));
    let past = http(
        a,
        "GET",
        &format!("/v2/{repo}/blobs/{layer}"),
        &[("Range", &format!("bytes={size}-"))],
    );
    assert_eq!(past.status, 416);

    // The referrers API: an empty index for a manifest nothing refers to.
    let r = http(a, "GET", &format!("/v2/{repo}/referrers/{digest}"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["manifests"], serde_json::json!([]));

    // Read-only; OCI error bodies.
    let put = http(a, "PUT", &format!("/v2/{repo}/manifests/{tag}"), &[]);
    assert_eq!(put.status, 405);
    let post = http(a, "POST", &format!("/v2/{repo}/blobs/uploads/"), &[]);
    assert_eq!(post.status, 405);
    let r = http(a, "GET", "/v2/site/ns/none/manifests/v1", &[]);
    assert_eq!(r.status, 404);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["errors"][0]["code"], "NAME_UNKNOWN");

    let (status, stderr) = serve.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("serving 2 images"), "{stderr}");
    assert!(
        stderr.contains(&format!("GET /v2/{repo}/blobs/{layer} 206 10 ")),
        "{stderr}"
    );
    assert!(stderr.contains("stopped: "), "{stderr}");
}

#[test]
fn the_referrers_api_lists_an_artifact_whose_subject_is_a_served_image() {
    use pinbundle_fixtures::image::Manifest;
    let dir = tempdir();
    let registry = TestRegistry::start().unwrap();
    let mut client = RegistryClient::new(registry.addr(), None).unwrap();
    // ns/app:TAG, one gzip layer holding one file.
    let image_of = |tag: &str, file: &str, content: &str| {
        let mut t = TarBuilder::new();
        t.file(file, content);
        let layer = t
            .build(Compression::Gzip, Compression::Gzip.oci_media_type())
            .unwrap();
        image_from_single(
            "ns/app",
            tag,
            single(Flavor::Oci, "ns/app", &LINUX_AMD64, vec![layer]).unwrap(),
        )
    };
    let image = image_of("v1", "etc/app", "an app\n");
    let pushed = client.push_image("", &image).unwrap();
    // An attestation that refers to the image (OCI 1.1 `subject` and `artifactType`): an
    // image itself, so that `create` bundles it and `load` could import it.
    let attestation = image_of("sbom", "sbom.spdx.json", r#"{"spdxVersion":"SPDX-2.3"}"#);
    client.push_image("", &attestation).unwrap();
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let artifact_type = "application/spdx+json";
    let mut json: serde_json::Value = serde_json::from_slice(&attestation.root.bytes).unwrap();
    json["artifactType"] = artifact_type.into();
    json["subject"] = serde_json::json!({
        "mediaType": oci, "digest": pushed.digest, "size": image.root.bytes.len()
    });
    json["annotations"] = serde_json::json!({"org.example.kind": "sbom"});
    let bytes = serde_json::to_vec(&json).unwrap();
    let artifact = Manifest {
        media_type: oci.into(),
        digest: sha256(&bytes),
        bytes,
    };
    client
        .put_manifest("ns/app", "sbom", &artifact)
        .unwrap()
        .unwrap();
    let bundle = dir.path().join("referrers.pinbundle");
    ok(pinbundle()
        .arg("create")
        .arg(format!("{}:v1", pushed.name))
        .arg(format!("{}:sbom", pushed.name))
        .arg("-o")
        .arg(&bundle)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["--insecure-registry", registry.addr()]));
    drop(registry);

    let serve = Serve::try_start_on(&bundle, &[]).unwrap();
    let a = serve.addr();
    let referrers = |query: &str| {
        let r = http(
            a,
            "GET",
            &format!("/v2/ns/app/referrers/{}{query}", pushed.digest),
            &[],
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers["content-type"],
            "application/vnd.oci.image.index.v1+json"
        );
        (
            r.headers.get("oci-filters-applied").cloned(),
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap(),
        )
    };
    let (filtered, index) = referrers("");
    assert_eq!(filtered, None);
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["manifests"],
        serde_json::json!([{
            "mediaType": oci,
            "digest": artifact.digest,
            "size": artifact.bytes.len(),
            "artifactType": artifact_type,
            "annotations": {"org.example.kind": "sbom"},
        }])
    );
    let (filtered, index) = referrers("?artifactType=application%2Fspdx%2Bjson");
    assert_eq!(filtered.as_deref(), Some("artifactType"));
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let (_, index) = referrers("?artifactType=application%2Fvnd.other");
    assert_eq!(index["manifests"], serde_json::json!([]));
    // Nothing refers to the artifact itself; its manifest and blobs are served like any.
    let r = http(
        a,
        "GET",
        &format!("/v2/ns/app/referrers/{}", artifact.digest),
        &[],
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["manifests"], serde_json::json!([]));
    let r = http(
        a,
        "GET",
        &format!("/v2/ns/app/manifests/{}", artifact.digest),
        &[],
    );
    assert_eq!((r.status, &r.body), (200, &artifact.bytes));
    let layer = &attestation.blobs.last().unwrap();
    let r = http(a, "GET", &format!("/v2/ns/app/blobs/{}", layer.digest), &[]);
    assert_eq!((r.status, &r.body), (200, &*layer.bytes));
}
