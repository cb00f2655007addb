//! `registry::server` and `load::storage` against real components: a real `docker-registry`
//! holding images made offline with podman, a bundle made by `create`, real `skopeo` reading the
//! served bundle, and real containers-storage stores (vfs and overlay) checked with podman.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use pinbundle::bundle::chain::ChainHasher;
use pinbundle::bundle::format::ImageEntry;
use pinbundle::bundle::{Bundle, BundleSet};
use pinbundle::create::{CreateOptions, Platform};
use pinbundle::load::storage::{self, ImportOptions, ImportOutcome, Skopeo, StorageError, Store};
use pinbundle::progress::Silent;
use pinbundle::reference::{Digest, PinnedRef};
use pinbundle::registry::ClientOptions;
use pinbundle::registry::server::{self, BundleServer, served_name};

use crate::util::{Reply, free_port, http, noise, ok};

/// The shared harness's real `docker-registry`, with its address at hand.
struct Registry {
    _inner: pinbundle_fixtures::registry::TestRegistry,
    host: String,
}

impl Registry {
    fn start() -> Registry {
        let inner =
            pinbundle_fixtures::registry::TestRegistry::start().expect("start docker-registry");
        let host = inner.addr().to_string();
        Registry {
            _inner: inner,
            host,
        }
    }
}

/// The bundle built once for all tests, and what it holds.
struct Fixture {
    bundle: PathBuf,
    /// `t/one:v1` (OCI manifest), `t/two:v1` (Docker v2s2), `t/multi:v1` (OCI index, only
    /// linux/amd64 carried).
    one: ImageEntry,
    two: ImageEntry,
    multi: ImageEntry,
    /// The arm64 instance the index lists but the bundle does not carry.
    multi_missing: Digest,
    layer_size: usize,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| build_fixture(6 << 20, "test"))
}

/// Builds `<CARGO_TARGET_TMPDIR>/load_server/<file>.pinbundle` with layers of `layer_size`
/// incompressible bytes.
fn build_fixture(layer_size: usize, file: &str) -> Fixture {
    let work = tempfile::tempdir().expect("tempdir");
    let (root, runroot) = (work.path().join("R"), work.path().join("RR"));
    let registry = Registry::start();
    let store = format!("[vfs@{}+{}]", root.display(), runroot.display());
    for (name, seed) in [("localhost/t:1", 1u64), ("localhost/t:2", 2)] {
        let content = work.path().join(format!("content-{seed}"));
        std::fs::create_dir_all(&content).unwrap();
        std::fs::write(content.join("noise"), noise(layer_size, seed)).unwrap();
        std::fs::copy("/etc/hostname", content.join("hostname")).unwrap();
        let mut tar = Command::new("tar")
            .arg("c")
            .arg("-C")
            .arg(&content)
            .arg(".")
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let out = Command::new("podman")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot)
            .args(["--storage-driver", "vfs", "import", "-", name])
            .stdin(tar.stdout.take().expect("tar stdout"))
            .output()
            .expect("podman import");
        assert!(tar.wait().expect("wait for tar").success());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let push = |src: &str, dest: &str, extra: &[&str]| {
        ok(Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("containers-storage:{store}{src}"))
            .arg(format!("docker://{}/{dest}", registry.host)));
    };
    push("localhost/t:1", "t/one:v1", &[]);
    push("localhost/t:1", "t/two:v1", &["--format", "v2s2"]);
    push("localhost/t:1", "t/multi:amd", &[]);
    push("localhost/t:2", "t/multi:arm", &[]);
    // A hand-made index over the two, pushed with curl.
    let get = |repo: &str, tag: &str| -> Vec<u8> {
        ok(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/{repo}:{tag}", registry.host),
        ]))
        .stdout
    };
    let amd = get("t/multi", "amd");
    let arm = get("t/multi", "arm");
    let oci = "application/vnd.oci.image.manifest.v1+json";
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"{oci}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{oci}","digest":"{}","size":{},"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#,
        Digest::of(&amd),
        amd.len(),
        Digest::of(&arm),
        arm.len()
    );
    let index_file = work.path().join("index.json");
    std::fs::write(&index_file, &index).unwrap();
    ok(Command::new("curl").args([
        "-sf",
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.index.v1+json",
        "--data-binary",
        &format!("@{}", index_file.display()),
        &format!("http://{}/v2/t/multi/manifests/v1", registry.host),
    ]));

    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("load_server");
    std::fs::create_dir_all(&out_dir).unwrap();
    let bundle = out_dir.join(format!("{file}.pinbundle"));
    let opts = CreateOptions {
        references: ["t/one:v1", "t/two:v1", "t/multi:v1"]
            .iter()
            .map(|r| format!("{}/{r}", registry.host).parse().unwrap())
            .collect(),
        output: bundle.clone(),
        platforms: vec![Platform::linux_amd64()],
        all_platforms: false,
        allow_missing_platforms: false,
        client: ClientOptions {
            insecure_registries: vec![registry.host.clone()],
            ..ClientOptions::default()
        },
        cache_dir: work.path().join("cache"),
        jobs: 2,
        level: 3,
        frame_size: 256 << 10,
        volume_size: None,
        source_date_epoch: Some(0),
        sign_key: None,
        base: None,
        image_timeout: std::time::Duration::from_secs(600),
        release: Default::default(),
    };
    pinbundle::create::create(&opts, &Silent).expect("create the bundle");
    let b = Bundle::open(&bundle).expect("open the bundle");
    let by_tag = |tag: &str| {
        let name = format!("{}/t/{tag}", registry.host);
        b.manifest()
            .images
            .iter()
            .find(|i| i.name == name)
            .cloned()
            .expect("image in bundle")
    };
    Fixture {
        bundle: bundle.clone(),
        one: by_tag("one"),
        two: by_tag("two"),
        multi: by_tag("multi"),
        multi_missing: Digest::of(&arm),
        layer_size,
    }
}

fn open_bundle(path: &Path) -> Arc<BundleSet> {
    Arc::new(BundleSet::single(Bundle::open(path).expect("open bundle")).expect("one file"))
}

fn error_code(r: &Reply) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("error JSON");
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn raw_http_manifests_blobs_ranges_and_errors() {
    let f = fixture();
    let bundle = open_bundle(&f.bundle);
    let srv = server::serve_in_thread(
        BundleServer::new(Arc::clone(&bundle)),
        BundleServer::LOOPBACK_EPHEMERAL,
    )
    .unwrap();
    let addr = srv.addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    let r = http(addr, "GET", "/v2/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"{}");
    assert_eq!(r.headers["docker-distribution-api-version"], "registry/2.0");

    for image in [&f.one, &f.two, &f.multi] {
        let repo = served_name(&image.name);
        let original = bundle
            .read_blob(bundle.blob(&image.digest).unwrap())
            .unwrap();
        let media = &bundle
            .manifest()
            .blobs
            .iter()
            .find(|b| b.digest == image.digest)
            .unwrap()
            .media_type;
        assert_eq!(media, &image.media_type);
        for reference in [image.digest.to_string(), image.tag.clone().unwrap()] {
            let r = http(
                addr,
                "GET",
                &format!("/v2/{repo}/manifests/{reference}"),
                &[],
            );
            assert_eq!(r.status, 200, "{repo} {reference}");
            assert_eq!(r.body, original);
            assert_eq!(&r.headers["content-type"], media);
            assert_eq!(r.headers["docker-content-digest"], image.digest.to_string());
            assert_eq!(r.headers["content-length"], original.len().to_string());
        }
        let r = http(
            addr,
            "HEAD",
            &format!("/v2/{repo}/manifests/{}", image.digest),
            &[],
        );
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        assert_eq!(r.headers["content-length"], original.len().to_string());
        assert_eq!(&r.headers["content-type"], media);
    }
    // Docker v2s2 keeps its media type.
    assert_eq!(
        f.two.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    // Blobs: the biggest layer of image one (several frames).
    let repo = served_name(&f.one.name);
    let layer = f.one.platforms[0].layers[0].clone();
    let member = bundle.blob(&layer).unwrap().clone();
    let frames = bundle.part(&member, 0).1.frames;
    assert!(frames > 3, "layer spans {frames} frames");
    // A layer is streamed, never read whole (read_blob is for manifests).
    let mut whole = Vec::new();
    std::io::Read::read_to_end(&mut bundle.open_blob(&member, 0), &mut whole).unwrap();
    let path = format!("/v2/{repo}/blobs/{layer}");
    let r = http(addr, "GET", &path, &[]);
    assert_eq!(r.status, 200);
    assert!(r.complete);
    assert_eq!(Digest::of(&r.body), layer);
    assert_eq!(r.headers["content-type"], "application/octet-stream");
    assert_eq!(r.headers["accept-ranges"], "bytes");
    assert_eq!(r.headers["docker-content-digest"], layer.to_string());
    assert_eq!(r.headers["content-length"], whole.len().to_string());

    let n = whole.len();
    let start = 300_000; // inside the second frame
    let r = http(addr, "GET", &path, &[("Range", &format!("bytes={start}-"))]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &whole[start..]);
    assert_eq!(
        r.headers["content-range"],
        format!("bytes {start}-{}/{n}", n - 1)
    );
    let r = http(addr, "GET", &path, &[("Range", "bytes=262140-262150")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &whole[262140..=262150]);
    assert_eq!(
        r.headers["content-range"],
        format!("bytes 262140-262150/{n}")
    );
    assert_eq!(r.headers["content-length"], "11");
    let r = http(addr, "GET", &path, &[("Range", &format!("bytes={n}-"))]);
    assert_eq!(r.status, 416);
    assert_eq!(r.headers["content-range"], format!("bytes */{n}"));
    let r = http(addr, "HEAD", &path, &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.headers["content-length"], n.to_string());

    // 404s.
    let r = http(
        addr,
        "GET",
        &format!(
            "/v2/{}/manifests/{}",
            served_name(&f.multi.name),
            f.multi_missing
        ),
        &[],
    );
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    let r = http(addr, "GET", &format!("/v2/{repo}/manifests/nope"), &[]);
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    let missing = Digest::of(b"not here");
    let r = http(addr, "GET", &format!("/v2/{repo}/blobs/{missing}"), &[]);
    assert_eq!((r.status, error_code(&r).as_str()), (404, "BLOB_UNKNOWN"));
    // A blob of image two (its v2s2 manifest) is not served under image one's
    // repository...
    let two_only = f.two.digest.clone();
    assert!(!f.one.blobs.contains(&two_only));
    let r = http(addr, "GET", &format!("/v2/{repo}/blobs/{two_only}"), &[]);
    assert_eq!((r.status, error_code(&r).as_str()), (404, "BLOB_UNKNOWN"));
    let r = http(
        addr,
        "GET",
        &format!("/v2/{repo}/manifests/{two_only}"),
        &[],
    );
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    // ...but under its own.
    let r = http(
        addr,
        "HEAD",
        &format!("/v2/{}/blobs/{two_only}", served_name(&f.two.name)),
        &[],
    );
    assert_eq!(r.status, 200);
    let r = http(
        addr,
        "GET",
        &format!("/v2/no/such/manifests/{}", f.one.digest),
        &[],
    );
    assert_eq!((r.status, error_code(&r).as_str()), (404, "NAME_UNKNOWN"));
    let r = http(addr, "GET", "/v2/_catalog", &[]);
    assert_eq!(r.status, 404);
    // Read-only.
    for (method, p) in [
        ("POST", format!("/v2/{repo}/blobs/uploads/")),
        ("PUT", format!("/v2/{repo}/manifests/v2")),
        ("DELETE", format!("/v2/{repo}/manifests/{}", f.one.digest)),
    ] {
        let r = http(addr, method, &p, &[]);
        assert_eq!(r.status, 405, "{method} {p}");
        assert_eq!(r.headers["allow"], "GET, HEAD");
    }
    let r = http(addr, "GET", &format!("/v2/{repo}/tags/list"), &[]);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["v1"]));
    let stats = srv.server().stats();
    assert_eq!(stats.version_checks, 1);
    assert_eq!(stats.manifests, 9);
    assert_eq!(stats.blobs, 5);
    assert_eq!(stats.range_requests, 2);
    assert_eq!(stats.range_not_satisfiable, 1);
    assert_eq!(stats.not_found, 7);
    assert_eq!(stats.method_not_allowed, 3);
    assert_eq!(stats.aborted, 0);
    drop(srv);
}

#[test]
fn skopeo_reads_the_served_bundle_with_exact_digests() {
    let f = fixture();
    let srv = server::serve_in_thread(
        BundleServer::new(open_bundle(&f.bundle)),
        BundleServer::LOOPBACK_EPHEMERAL,
    )
    .unwrap();
    let addr = srv.addr();
    let work = tempfile::tempdir().unwrap();
    for image in [&f.one, &f.two, &f.multi] {
        let src = format!(
            "docker://{addr}/{}@{}",
            served_name(&image.name),
            image.digest
        );
        let raw = ok(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &src]))
            .stdout;
        assert_eq!(Digest::of(&raw), image.digest);
        let info = ok(Command::new("skopeo").args(["inspect", "--tls-verify=false", &src])).stdout;
        let v: serde_json::Value = serde_json::from_slice(&info).unwrap();
        assert_eq!(v["Architecture"], "amd64");
        // `dir:` keeps every manifest type as is; `oci:` only OCI ones (field notes).
        let dest = if image.media_type.contains("docker") {
            format!(
                "dir:{}",
                work.path()
                    .join(image.tag.clone().unwrap() + "-dir")
                    .display()
            )
        } else {
            format!(
                "oci:{}:x",
                work.path().join(image.tag.clone().unwrap()).display()
            )
        };
        let digestfile = work.path().join("digest");
        ok(Command::new("skopeo").args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--preserve-digests",
            "--digestfile",
            digestfile.to_str().unwrap(),
            &src,
            &dest,
        ]));
        let written: Digest = std::fs::read_to_string(&digestfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if image.platforms.len() == 1 && image.media_type.contains("index") {
            assert_eq!(written, image.platforms[0].digest);
        } else {
            assert_eq!(written, image.digest, "{}", image.reference);
        }
    }
    // By tag too.
    let by_tag = format!("docker://{addr}/{}:v1", served_name(&f.two.name));
    let raw =
        ok(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &by_tag])).stdout;
    assert_eq!(Digest::of(&raw), f.two.digest);
    let stats = srv.server().stats();
    assert!(stats.blobs >= 6, "{stats:?}");
    assert_eq!(stats.aborted, 0);
}

#[test]
fn a_damaged_frame_breaks_the_transfer() {
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let damaged = work.path().join("damaged.pinbundle");
    std::fs::copy(&f.bundle, &damaged).unwrap();
    let layer = f.one.platforms[0].layers[0].clone();
    let (frame_offset, frame_len) = {
        let b = Bundle::open(&damaged).unwrap();
        let m = b.blob(&layer).unwrap().clone();
        let fr = &b.index().frames[m.frame + 2];
        (fr.offset, fr.length)
    };
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[(frame_offset + frame_len / 2) as usize] ^= 0x40;
    std::fs::write(&damaged, bytes).unwrap();

    let srv = server::serve_in_thread(
        BundleServer::new(open_bundle(&damaged)),
        BundleServer::LOOPBACK_EPHEMERAL,
    )
    .unwrap();
    let repo = served_name(&f.one.name);
    let r = http(srv.addr(), "GET", &format!("/v2/{repo}/blobs/{layer}"), &[]);
    // Either the head went out and the body stops short, or the connection dropped before
    // hyper flushed anything: never a complete body.
    assert!(r.status == 200 || r.status == 0, "status {}", r.status);
    assert!(
        !r.complete,
        "a damaged frame must not yield a complete body"
    );
    assert!(r.body.len() < f.layer_size);
    // Ranges that avoid the damaged frame still work.
    let r = http(
        srv.addr(),
        "GET",
        &format!("/v2/{repo}/blobs/{layer}"),
        &[("Range", "bytes=0-99")],
    );
    assert_eq!((r.status, r.body.len(), r.complete), (206, 100, true));
    // skopeo sees a failed copy, not a wrong image.
    let src = format!("docker://{}/{repo}@{}", srv.addr(), f.one.digest);
    let out = Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--src-tls-verify=false",
            "--retry-times",
            "0",
            &src,
        ])
        .arg(format!("oci:{}:x", work.path().join("out").display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(srv.server().stats().aborted >= 2);
}

#[test]
fn concurrent_transfers_share_a_small_frame_budget_without_stalling() {
    let f = fixture();
    let bundle = open_bundle(&f.bundle);
    let frame = 256u64 << 10;
    // Two frames for eight clients of two layers of 24 frames each: most wait for room.
    let budget = 2 * frame + 1024;
    let srv = server::serve_in_thread(
        BundleServer::new(Arc::clone(&bundle)).with_frame_budget(budget),
        BundleServer::LOOPBACK_EPHEMERAL,
    )
    .unwrap();
    let layers = [
        (
            served_name(&f.one.name),
            f.one.platforms[0].layers[0].clone(),
        ),
        (
            served_name(&f.two.name),
            f.two.platforms[0].layers[0].clone(),
        ),
    ];
    let replies: Vec<(Digest, Reply)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let (repo, layer) = &layers[i % 2];
                let addr = srv.addr();
                s.spawn(move || {
                    let r = http(addr, "GET", &format!("/v2/{repo}/blobs/{layer}"), &[]);
                    (layer.clone(), r)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (layer, r) in &replies {
        assert_eq!((r.status, r.complete), (200, true), "{layer}");
        assert_eq!(&Digest::of(&r.body), layer);
    }
    let st = srv.server().frame_stats();
    // No transfer waited out the budget (a transfer holding one frame while it waits for the
    // next would make them wait for each other), and the bytes live at once stayed within it.
    assert_eq!(st.over_budget, 0, "{st:?}");
    assert!(st.used <= budget, "{st:?}");
    assert!(st.decoded >= 24, "{st:?}");
}

/// The set opened and every blob verified, as `serve` and `load` do before serving.
fn verified_bundle(path: &Path) -> Arc<BundleSet> {
    let set = open_bundle(path);
    let report = pinbundle::verify::verify_open(&set, &Default::default(), &Silent).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    set
}

#[test]
fn each_frame_sent_is_proved_once_per_decode_and_concurrent_clients_share_the_proof() {
    let f = fixture();
    let repo = served_name(&f.one.name);
    let layer = f.one.platforms[0].layers[0].clone();
    let path = format!("/v2/{repo}/blobs/{layer}");
    let hashed = |srv: &server::RunningServer| srv.server().stats().blob_bytes_hashed;
    let get = |srv: &server::RunningServer| {
        let r = http(srv.addr(), "GET", &path, &[]);
        assert_eq!((r.status, r.complete), (200, true));
        assert_eq!(Digest::of(&r.body), layer);
        r.body.len() as u64
    };
    // Eight clients at once on a verified blob: each frame is proved once, for all of them.
    let roomy = server::serve_in_thread(
        BundleServer::new(verified_bundle(&f.bundle)).with_frame_budget(1 << 30),
        BundleServer::LOOPBACK_EPHEMERAL,
    )
    .unwrap();
    let lens: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8).map(|_| s.spawn(|| get(&roomy))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let len = lens[0];
    assert_eq!(
        hashed(&roomy),
        len,
        "concurrent transfers hashed a frame twice"
    );
    // Cached and proved: a later transfer, and a range, hash nothing.
    get(&roomy);
    let r = http(roomy.addr(), "GET", &path, &[("Range", "bytes=10-1000000")]);
    assert_eq!((r.status, r.body.len()), (206, 999_991));
    assert_eq!(hashed(&roomy), len);
    // Room for one frame: every transfer decodes the frames anew and proves them again, a
    // range only the frames it touches (whole frames: the proof is of a frame's content).
    let tight = server::serve_in_thread(
        BundleServer::new(verified_bundle(&f.bundle)).with_frame_budget(1),
        BundleServer::LOOPBACK_EPHEMERAL,
    )
    .unwrap();
    assert_eq!(get(&tight), len);
    assert_eq!(hashed(&tight), len);
    get(&tight);
    assert_eq!(hashed(&tight), 2 * len);
    let r = http(tight.addr(), "GET", &path, &[("Range", "bytes=10-1000000")]);
    assert_eq!((r.status, r.body.len(), r.complete), (206, 999_991, true));
    let range = hashed(&tight) - 2 * len;
    assert!(
        (999_991..len).contains(&range),
        "a range proved {range} bytes"
    );
    // A set given unverified: the first whole transfer hashes the blob and keeps its proof;
    // the next proves the frames against it once, the one after hashes nothing.
    let fresh = server::serve_in_thread(
        BundleServer::new(open_bundle(&f.bundle)).with_frame_budget(1 << 30),
        BundleServer::LOOPBACK_EPHEMERAL,
    )
    .unwrap();
    assert!(fresh.server().bundle().chain(&layer).is_none());
    get(&fresh);
    assert_eq!(hashed(&fresh), len);
    assert!(fresh.server().bundle().chain(&layer).is_some());
    get(&fresh);
    get(&fresh);
    assert_eq!(hashed(&fresh), 2 * len);
}

#[test]
fn a_frame_that_is_not_the_one_verified_is_never_sent() {
    let f = fixture();
    let repo = served_name(&f.one.name);
    let layer = f.one.platforms[0].layers[0].clone();
    let set = open_bundle(&f.bundle);
    // What a file rewritten after it was verified looks like to the server: its frames pass
    // their own checks (XXH3 forged, zstd checksum recomputed) but are not the bytes the
    // verify pass hashed to the digest. Here the file stays and the proof on record is of
    // the layer with one byte of frame 5 changed.
    let loc = set.blob(&layer).unwrap().clone();
    let mut content = Vec::new();
    set.open_blob(&loc, 0).read_to_end(&mut content).unwrap();
    let (b, m) = set.part(&loc, 0);
    let mut sizes = Vec::new();
    let mut left = m.size;
    for (k, fr) in b.index().frames_of(m).iter().enumerate() {
        let lead = if k == 0 { m.data_offset } else { 0 };
        let here = (fr.size - lead).min(left);
        sizes.push(here as usize);
        left -= here;
    }
    assert!(sizes.len() > 6, "{} frames", sizes.len());
    let before: usize = sizes[..5].iter().sum();
    content[before + 7] ^= 1;
    let mut h = ChainHasher::default();
    let mut at = 0;
    for n in sizes {
        h.update(&content[at..at + n]);
        h.end_frame();
        at += n;
    }
    let frames = set.frames_of(&loc);
    set.keep_chain(&layer, h.finish(frames, &Digest::of(&content)).unwrap());
    let srv =
        server::serve_in_thread(BundleServer::new(set), BundleServer::LOOPBACK_EPHEMERAL).unwrap();
    let path = format!("/v2/{repo}/blobs/{layer}");
    // The frames before it are handed to the connection, nothing of it. (What the client
    // reads of an aborted response depends on how soon the reset overtakes the data.)
    let r = http(srv.addr(), "GET", &path, &[]);
    assert!(!r.complete && r.body.len() <= before, "{}", r.body.len());
    assert_eq!(r.body[..], content[..r.body.len()]);
    assert_eq!(srv.server().stats().blob_bytes, before as u64);
    let range = format!("bytes={}-{}", before + 1, before + 100);
    let r = http(srv.addr(), "GET", &path, &[("Range", &range)]);
    assert!(!r.complete && r.body.is_empty());
    let r = http(srv.addr(), "GET", &path, &[("Range", "bytes=0-99")]);
    assert_eq!((r.status, r.body.len(), r.complete), (206, 100, true));
    let st = srv.server().stats();
    assert_eq!((st.aborted, st.blob_bytes), (2, before as u64 + 100));
}

/// A temporary store, with the overlay mount removed before the directory goes.
struct TempStore {
    dir: tempfile::TempDir,
    store: Store,
}

impl TempStore {
    fn new(driver: &str) -> TempStore {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::explicit(driver, &dir.path().join("root"), &dir.path().join("run"));
        TempStore { dir, store }
    }

    fn podman(&self, args: &[&str]) -> std::process::Output {
        Command::new("podman")
            .arg("--root")
            .arg(self.store.root.as_ref().unwrap())
            .arg("--runroot")
            .arg(self.store.runroot.as_ref().unwrap())
            .arg("--storage-driver")
            .arg(self.store.driver.as_ref().unwrap())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        let overlay = self.dir.path().join("root").join("overlay");
        // The overlay driver leaves a private bind mount (field notes).
        let _ = Command::new("umount")
            .arg(&overlay)
            .stderr(Stdio::null())
            .status();
    }
}

fn import_into(driver: &str) {
    let f = fixture();
    let srv = server::serve_in_thread(
        BundleServer::new(open_bundle(&f.bundle)),
        BundleServer::LOOPBACK_EPHEMERAL,
    )
    .unwrap();
    let ts = TempStore::new(driver);
    let opts = ImportOptions::default();
    for image in [&f.one, &f.two, &f.multi] {
        let pin = PinnedRef {
            name: image.name.clone(),
            digest: image.digest.clone(),
        };
        assert!(!ts.store.is_present(&opts.skopeo, &pin).unwrap());
        let started = Instant::now();
        let outcome = storage::import(srv.addr(), image, &ts.store, &opts).unwrap();
        eprintln!(
            "{driver}: imported {} ({} bytes) in {:?}",
            image.reference,
            image.size,
            started.elapsed()
        );
        let ImportOutcome::Imported {
            written, tagged, ..
        } = outcome
        else {
            panic!("expected an import, got {outcome:?}");
        };
        let expected = if image.media_type.contains("index") {
            &image.platforms[0].digest
        } else {
            &image.digest
        };
        assert_eq!(&written, expected);
        let tagged = tagged.unwrap();
        assert_eq!(tagged, format!("{}:v1", image.name));

        // Real podman finds it by the exact pin and by tag.
        let out = ts.podman(&["image", "exists", &pin.to_string()]);
        assert!(out.status.success(), "podman image exists {pin}");
        let out = ts.podman(&["image", "inspect", &pin.to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let tags: Vec<String> = serde_json::from_value(v[0]["RepoTags"].clone()).unwrap();
        let digests: Vec<String> = serde_json::from_value(v[0]["RepoDigests"].clone()).unwrap();
        assert!(tags.contains(&tagged), "{tags:?}");
        assert!(digests.contains(&pin.to_string()), "{digests:?}");
        // The storage names CRI-O matches. Images one and two share a config, hence an image
        // ID, so the second import adds its names to the same image.
        let record = ts.store.record_named(&pin).unwrap().unwrap();
        for name in [pin.to_string(), tagged.clone()] {
            assert!(
                record.names.contains(&name),
                "{name} not in {:?}",
                record.names
            );
        }
        assert!(ts.store.is_present(&opts.skopeo, &pin).unwrap());
        let before = srv.server().stats();
        let again = storage::import(srv.addr(), image, &ts.store, &opts).unwrap();
        assert_eq!(again, ImportOutcome::AlreadyPresent);
        assert_eq!(
            srv.server().stats(),
            before,
            "a skipped import asks nothing"
        );
    }
    // The same digest under another name is not "present": the pin would not match it.
    let other = PinnedRef {
        name: "quay.io/other/name".into(),
        digest: f.one.digest.clone(),
    };
    assert!(!ts.store.is_present(&opts.skopeo, &other).unwrap());
    assert_eq!(srv.server().stats().aborted, 0);
}

#[test]
fn import_into_vfs() {
    import_into("vfs");
}

#[test]
fn import_into_overlay() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: import_into_overlay needs root for native overlay");
        return;
    }
    import_into("overlay");
}

#[test]
fn missing_skopeo_is_named() {
    let f = fixture();
    let empty = tempfile::tempdir().unwrap();
    let opts = ImportOptions {
        skopeo: Skopeo::new().with_search_path(empty.path()),
        ..ImportOptions::default()
    };
    let err = opts.skopeo.version().unwrap_err();
    assert!(matches!(err, StorageError::SkopeoMissing { .. }));
    let msg = err.to_string();
    assert!(msg.contains("`skopeo` package"), "{msg}");
    let ts = TempStore::new("vfs");
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let err = storage::import(addr, &f.one, &ts.store, &opts).unwrap_err();
    assert!(matches!(err, StorageError::SkopeoMissing { .. }), "{err}");
}

#[test]
fn index_without_the_wanted_platform_is_refused_with_the_list() {
    let f = fixture();
    let ts = TempStore::new("vfs");
    let opts = ImportOptions {
        platform: Some("linux/arm64".parse().unwrap()),
        ..ImportOptions::default()
    };
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let err = storage::import(addr, &f.multi, &ts.store, &opts).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StorageError::PlatformMissing { .. }), "{msg}");
    assert!(
        msg.contains("linux/arm64") && msg.contains("linux/amd64"),
        "{msg}"
    );
}

#[test]
fn skopeo_failure_carries_argv_and_stderr() {
    let f = fixture();
    let ts = TempStore::new("vfs");
    // Nothing listens here.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let err = storage::import(addr, &f.one, &ts.store, &ImportOptions::default()).unwrap_err();
    let StorageError::Skopeo { argv, stderr, .. } = &err else {
        panic!("expected a skopeo failure, got {err}");
    };
    assert!(
        argv.contains("--src-no-creds") && argv.contains(&f.one.digest.to_string()),
        "{argv}"
    );
    assert!(stderr.contains("connection refused"), "{stderr}");
}

/// Time to import one image of `PINBUNDLE_MEASURE_MB` MiB (one layer) into overlay; skipped
/// unless the variable is set.
#[test]
fn measure_import_throughput() {
    let Some(mb) = std::env::var("PINBUNDLE_MEASURE_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        eprintln!("skipped: set PINBUNDLE_MEASURE_MB to measure");
        return;
    };
    let f = build_fixture(mb << 20, "measure");
    let srv = server::serve_in_thread(
        BundleServer::new(open_bundle(&f.bundle)),
        BundleServer::LOOPBACK_EPHEMERAL,
    )
    .unwrap();
    for driver in ["overlay", "vfs"] {
        let ts = TempStore::new(driver);
        let started = Instant::now();
        let outcome =
            storage::import(srv.addr(), &f.one, &ts.store, &ImportOptions::default()).unwrap();
        let secs = started.elapsed().as_secs_f64();
        assert!(matches!(outcome, ImportOutcome::Imported { .. }));
        eprintln!(
            "MEASURE {driver}: {} MB in {secs:.2} s = {:.0} MB/s (name@digest + name:tag)",
            f.one.size / 1_000_000,
            f.one.size as f64 / 1e6 / secs
        );
    }
}
