//! `pinbundle create` against a hostile registry: a small HTTP server on 127.0.0.1 written
//! here, with one repository per misbehaviour (huge bodies, endless tokens, tokens that are
//! not header values, escape sequences in platforms and messages, decompression bombs,
//! silence, trickles, duplicate index entries), plus hostile local inputs (key and password
//! files that are devices or FIFOs, huge or control-laden reference lists).
//!
//! Every run must be refused or bounded: peak RSS under 256 MiB, never a panic (exit 101),
//! no raw control character on stdout or stderr, the planted secrets (the password, its
//! base64 and the token the server issued) on no output stream, and a silent or trickling
//! server abandoned within the deadline the flags set (`--timeout 1s --retries 1
//! --image-timeout 6s`: stated per case below).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use pinbundle::reference::Digest;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const MAX_RSS_KIB: u64 = 256 << 10;
const USER: &str = "planted-user";
const PASSWORD: &str = "planted-pass-7f3a";
const TOKEN: &str = "planted-token-91c2";
/// Deadline flags every run gets.
const FLAGS: &[&str] = &[
    "--timeout",
    "1s",
    "--retries",
    "1",
    "--image-timeout",
    "6s",
    "--min-rate",
    "1KiB",
];

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

// ---- the images the server serves ----

fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "mediaType": media_type,
        "digest": Digest::of(bytes).to_string(),
        "size": bytes.len(),
    })
}

fn config(os: &str, arch: &str, variant: Option<&str>) -> Vec<u8> {
    let mut c = serde_json::json!({
        "architecture": arch,
        "os": os,
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {},
    });
    if let Some(v) = variant {
        c["variant"] = v.into();
    }
    serde_json::to_vec(&c).unwrap()
}

fn gzip_layer() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let data = b"hello from a small layer\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "hello.txt", &data[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// 1 GiB of zeros as 16 identical zstd frames of 64 MiB each (a few KiB in all).
fn zstd_bomb() -> Vec<u8> {
    let frame = zstd::encode_all(&vec![0u8; 64 << 20][..], 3).unwrap();
    frame.repeat(16)
}

fn manifest(config: &[u8], layers: &[(&str, &[u8])]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": layers.iter().map(|(mt, b)| descriptor(mt, b)).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn index(entries: &[(serde_json::Value, &[u8])]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(platform, m)| {
            let mut d = descriptor(OCI_MANIFEST, m);
            d["platform"] = platform.clone();
            d
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .unwrap()
}

// ---- the server ----

/// What the server does with one request.
#[derive(Clone)]
enum Reply {
    /// A complete response.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Arc<Vec<u8>>,
    },
    /// A status and headers, then `total` bytes of `fill`, declared as `Content-Length` when
    /// `declared`, else chunked; writing stops when the client goes away.
    Endless {
        status: u16,
        headers: Vec<(String, String)>,
        fill: u8,
        total: u64,
        declared: bool,
    },
    /// Reads the request and never answers.
    Silent,
    /// Headers with the full `Content-Length`, then one byte per `every`.
    Trickle { body: Arc<Vec<u8>>, every: Duration },
}

fn full(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Reply {
    Reply::Full {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: Arc::new(body.into()),
    }
}

fn json(body: &[u8]) -> Reply {
    full(200, &[("Content-Type", OCI_MANIFEST)], body.to_vec())
}

struct Server {
    host: String,
    /// Requests seen per path (without the query).
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

type Routes = HashMap<String, Reply>;

/// The server, started once for all tests.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let routes = Arc::new(routes(&host));
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let seen = hits.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((socket, _)) = listener.accept().await {
                    tokio::spawn(serve(socket, routes.clone(), seen.clone()));
                }
            });
        });
        Server { host, hits }
    })
}

async fn serve(
    mut socket: tokio::net::TcpStream,
    routes: Arc<Routes>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match socket.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
            if head.len() > 64 << 10 {
                return;
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let target = head.split(' ').nth(1).unwrap_or("/").to_string();
        let path = target.split('?').next().unwrap_or("").to_string();
        *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
        let authorized = head
            .lines()
            .any(|l| l.to_ascii_lowercase().starts_with("authorization:"));
        // A repository under `token-*` wants a bearer token (any) before it answers.
        let repo = path.split('/').nth(2).unwrap_or("");
        let reply = if repo.starts_with("token-") && !authorized && path.starts_with("/v2/") {
            let realm = format!("http://{}/token/{repo}", server_host(&head));
            full(
                401,
                &[(
                    "WWW-Authenticate",
                    &format!("Bearer realm=\"{realm}\",service=\"hostile\""),
                )],
                "{}",
            )
        } else {
            routes.get(&path).cloned().unwrap_or_else(|| {
                full(
                    404,
                    &[],
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#,
                )
            })
        };
        let keep = match reply {
            Reply::Full {
                status,
                headers,
                body,
            } => {
                let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                bytes.extend_from_slice(&body);
                socket.write_all(&bytes).await.is_ok()
            }
            Reply::Endless {
                status,
                headers,
                fill,
                total,
                declared,
            } => {
                let mut out = format!("HTTP/1.1 {status} X\r\n");
                if declared {
                    out.push_str(&format!("Content-Length: {total}\r\n"));
                } else {
                    out.push_str("Transfer-Encoding: chunked\r\n");
                }
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                if socket.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![fill; 1 << 20];
                let mut sent = 0u64;
                while sent < total {
                    let piece = if declared {
                        socket.write_all(&chunk).await
                    } else {
                        let mut c = format!("{:x}\r\n", chunk.len()).into_bytes();
                        c.extend_from_slice(&chunk);
                        c.extend_from_slice(b"\r\n");
                        socket.write_all(&c).await
                    };
                    if piece.is_err() {
                        return;
                    }
                    sent += chunk.len() as u64;
                }
                false
            }
            Reply::Silent => {
                tokio::time::sleep(Duration::from_secs(120)).await;
                false
            }
            Reply::Trickle { body, every } => {
                let out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                if socket.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
                for b in body.iter() {
                    if socket.write_all(&[*b]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(every).await;
                }
                false
            }
        };
        if !keep {
            let _ = socket.shutdown().await;
            return;
        }
    }
}

/// The Host header of a request (the realm must name this server).
fn server_host(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("host").then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Every route of every mode. A mode is a repository: `HOST/<mode>:v1`.
fn routes(_host: &str) -> Routes {
    let mut r = Routes::new();
    let layer = gzip_layer();
    let good_config = config("linux", "amd64", None);
    let good_manifest = manifest(&good_config, &[(GZIP_LAYER, &layer)]);
    let good_digest = Digest::of(&good_manifest);
    // Blobs any repository can serve.
    let blobs = |r: &mut Routes, repo: &str, blobs: &[&[u8]]| {
        for b in blobs {
            r.insert(
                format!("/v2/{repo}/blobs/{}", Digest::of(b)),
                full(200, &[], b.to_vec()),
            );
        }
    };
    let image = |r: &mut Routes, repo: &str, m: &[u8]| {
        r.insert(format!("/v2/{repo}/manifests/v1"), json(m));
        r.insert(format!("/v2/{repo}/manifests/{}", Digest::of(m)), json(m));
    };
    // A manifest an index lists (by digest only).
    let child = |r: &mut Routes, repo: &str, m: &[u8]| {
        r.insert(format!("/v2/{repo}/manifests/{}", Digest::of(m)), json(m));
    };

    // A well-behaved image behind a token (the control case, and the token planted).
    image(&mut r, "token-good", &good_manifest);
    blobs(&mut r, "token-good", &[&good_config, &layer]);
    r.insert(
        "/token/token-good".into(),
        full(200, &[], format!(r#"{{"token":"{TOKEN}"}}"#)),
    );

    // 1. Unbounded bodies.
    r.insert(
        "/v2/huge-manifest/manifests/v1".into(),
        Reply::Endless {
            status: 200,
            headers: vec![("Content-Type".into(), OCI_MANIFEST.into())],
            fill: b' ',
            total: 3 << 30,
            declared: true,
        },
    );
    r.insert(
        "/v2/endless-manifest/manifests/v1".into(),
        Reply::Endless {
            status: 200,
            headers: vec![("Content-Type".into(), OCI_MANIFEST.into())],
            fill: b' ',
            total: 3 << 30,
            declared: false,
        },
    );
    // Many references, each endless: resolved a few at a time, each capped.
    for i in 0..24 {
        r.insert(
            format!("/v2/endless-many/manifests/t{i}"),
            Reply::Endless {
                status: 200,
                headers: vec![("Content-Type".into(), OCI_MANIFEST.into())],
                fill: b' ',
                total: 3 << 30,
                declared: false,
            },
        );
    }
    r.insert(
        "/token/token-endless".into(),
        Reply::Endless {
            status: 200,
            headers: vec![],
            fill: b'a',
            total: 2 << 30,
            declared: false,
        },
    );
    r.insert(
        "/token/token-huge".into(),
        Reply::Endless {
            status: 200,
            headers: vec![],
            fill: b'a',
            total: 2 << 30,
            declared: true,
        },
    );
    r.insert(
        "/v2/huge-error/manifests/v1".into(),
        Reply::Endless {
            status: 500,
            headers: vec![],
            fill: b'e',
            total: 1 << 30,
            declared: true,
        },
    );
    r.insert(
        "/v2/endless-error/manifests/v1".into(),
        Reply::Endless {
            status: 500,
            headers: vec![],
            fill: b'e',
            total: 1 << 30,
            declared: false,
        },
    );
    // A blob whose error body is endless.
    image(&mut r, "blob-error", &good_manifest);
    r.insert(
        format!("/v2/blob-error/blobs/{}", Digest::of(&good_config)),
        Reply::Endless {
            status: 503,
            headers: vec![],
            fill: b'e',
            total: 1 << 30,
            declared: false,
        },
    );

    // 2. Tokens that are not header values.
    for (mode, token) in [
        ("token-newline", "abc\\ndef"),
        ("token-del", "abc\\u007fdef"),
        ("token-esc", "abc\\u001b[2Jdef"),
        ("token-space", "abc def"),
        ("token-empty", ""),
    ] {
        r.insert(
            format!("/token/{mode}"),
            full(200, &[], format!(r#"{{"token":"{token}"}}"#)),
        );
    }
    r.insert(
        "/token/token-notjson".into(),
        full(200, &[], "\x1b[2J<html>"),
    );

    // 3. Registry text that is terminal input.
    let evil_variant = config("linux", "arm64", Some("v8\u{1b}[2J"));
    let evil_variant_manifest = manifest(&evil_variant, &[(GZIP_LAYER, &layer)]);
    let evil_index = index(&[(
        serde_json::json!({"os": "linux", "architecture": "amd64", "variant": "v1\u{1b}]0;pwned\u{7}\npin forged@sha256:00"}),
        &evil_variant_manifest,
    )]);
    image(&mut r, "evil-variant", &evil_index);
    child(&mut r, "evil-variant", &evil_variant_manifest);
    blobs(&mut r, "evil-variant", &[&evil_variant, &layer]);
    let evil_os = config("linux\r\npin forged", "amd64", None);
    let evil_os_manifest = manifest(&evil_os, &[(GZIP_LAYER, &layer)]);
    image(&mut r, "evil-config", &evil_os_manifest);
    blobs(&mut r, "evil-config", &[&evil_os, &layer]);
    r.insert(
        "/v2/evil-message/manifests/v1".into(),
        full(
            400,
            &[],
            r#"{"errors":[{"code":"\u001b[31mBAD","message":"\u001b[2J\u0007\rpin forged"}]}"#,
        ),
    );
    let evil_media = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/x\u{1b}[31m\u{9b}\u{202e}",
    }))
    .unwrap();
    image(&mut r, "evil-media-type", &evil_media);
    let evil_layer_type = manifest(&good_config, &[("application/x\u{1b}[2J", &layer)]);
    image(&mut r, "evil-layer-type", &evil_layer_type);

    // 4. A config too large to hold.
    let huge_config = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": Digest::of(b"x").to_string(), "size": 2u64 << 30},
        "layers": [],
    }))
    .unwrap();
    image(&mut r, "huge-config", &huge_config);

    // 5. A decompression bomb.
    let bomb = zstd_bomb();
    let bomb_manifest = manifest(&good_config, &[(ZSTD_LAYER, &bomb)]);
    image(&mut r, "zstd-bomb", &bomb_manifest);
    blobs(&mut r, "zstd-bomb", &[&good_config, &bomb]);

    // 6. Silence and trickles.
    r.insert("/v2/silent/manifests/v1".into(), Reply::Silent);
    r.insert(
        "/v2/trickle/manifests/v1".into(),
        Reply::Trickle {
            body: Arc::new(good_manifest.clone()),
            every: Duration::from_secs(5),
        },
    );
    r.insert(
        "/v2/trickle-fast/manifests/v1".into(),
        Reply::Trickle {
            body: Arc::new(good_manifest.clone()),
            every: Duration::from_millis(300),
        },
    );
    let big_layer: Vec<u8> = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        gz.write_all(&vec![7u8; 64 << 10]).unwrap();
        gz.finish().unwrap()
    };
    let trickle_blob_manifest = manifest(&good_config, &[(GZIP_LAYER, &big_layer)]);
    image(&mut r, "trickle-blob", &trickle_blob_manifest);
    blobs(&mut r, "trickle-blob", &[&good_config]);
    r.insert(
        format!("/v2/trickle-blob/blobs/{}", Digest::of(&big_layer)),
        Reply::Trickle {
            body: Arc::new(big_layer.clone()),
            every: Duration::from_millis(200),
        },
    );
    image(&mut r, "silent-blob", &good_manifest);
    blobs(&mut r, "silent-blob", &[&good_config]);
    r.insert(
        format!("/v2/silent-blob/blobs/{}", Digest::of(&layer)),
        Reply::Silent,
    );

    // 7. Duplicate and countless index entries.
    let amd64 = serde_json::json!({"os": "linux", "architecture": "amd64"});
    let dup = index(&[
        (amd64.clone(), &good_manifest),
        (amd64.clone(), &good_manifest),
        (amd64.clone(), &good_manifest),
    ]);
    image(&mut r, "dup-index", &dup);
    child(&mut r, "dup-index", &good_manifest);
    blobs(&mut r, "dup-index", &[&good_config, &layer]);
    let entries: Vec<(serde_json::Value, &[u8])> = (0..5000)
        .map(|_| (amd64.clone(), &good_manifest[..]))
        .collect();
    image(&mut r, "many-index", &index(&entries));
    child(&mut r, "many-index", &good_manifest);

    // Errors that echo what the client sent (the token) must not reach the output.
    r.insert(
        "/v2/token-echo/manifests/v1".into(),
        full(
            500,
            &[],
            format!(r#"{{"errors":[{{"code":"UNKNOWN","message":"your token {TOKEN} and password {PASSWORD} are wrong"}}]}}"#),
        ),
    );
    r.insert(
        "/token/token-echo".into(),
        full(200, &[], format!(r#"{{"token":"{TOKEN}"}}"#)),
    );
    // Challenges and redirects that must not become requests (or panics).
    for (mode, challenge) in [
        ("chal-binary", "Bearer realm=\"http://x/\u{ff}\u{fe}\""),
        ("chal-file", "Bearer realm=\"file:///etc/passwd\""),
        (
            "chal-garbage",
            "NotAScheme x=\"y\", Bearer service=no-realm",
        ),
        ("chal-none", ""),
    ] {
        let headers: Vec<(&str, &str)> = if challenge.is_empty() {
            vec![]
        } else {
            vec![("WWW-Authenticate", challenge)]
        };
        r.insert(
            format!("/v2/{mode}/manifests/v1"),
            full(401, &headers, "{}"),
        );
    }
    r.insert(
        "/v2/redirect-file/manifests/v1".into(),
        full(307, &[("Location", "file:///etc/passwd")], ""),
    );
    r.insert(
        "/v2/redirect-loop/manifests/v1".into(),
        full(307, &[("Location", "/v2/redirect-loop/manifests/v1")], ""),
    );
    let _ = good_digest;
    r
}

// ---- running create ----

struct Run {
    code: Option<i32>,
    output: Vec<u8>,
    rss_kib: u64,
    elapsed: Duration,
    dir: tempfile::TempDir,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }
}

fn authfile(dir: &Path, host: &str) -> PathBuf {
    let path = dir.join("auth.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        &path,
        format!(r#"{{"auths": {{"{host}": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
    path
}

/// `pinbundle create ARGS` under `/usr/bin/time` in a fresh directory, with the deadline
/// flags, the server marked insecure and an auth file with the planted credentials.
fn create(args: &[String]) -> Run {
    create_in(tempfile::tempdir().unwrap(), args)
}

fn create_in(dir: tempfile::TempDir, args: &[String]) -> Run {
    let host = &server().host;
    let auth = authfile(dir.path(), host);
    let rss = dir.path().join("rss");
    let started = Instant::now();
    let o = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(env!("CARGO_BIN_EXE_pinbundle"))
        .arg("create")
        .args(args)
        .arg("-o")
        .arg(dir.path().join("out.pinbundle"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["--insecure-registry", host])
        .arg("--authfile")
        .arg(&auth)
        .args(flags_besides(args))
        .env("PINBUNDLE_NO_PROGRESS", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let rss_kib = std::fs::read_to_string(&rss)
        .unwrap_or_default()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let mut output = o.stdout;
    output.extend_from_slice(&o.stderr);
    Run {
        code: o.status.code(),
        output,
        rss_kib,
        elapsed,
        dir,
    }
}

/// [`FLAGS`] without those `args` gives itself.
fn flags_besides(args: &[String]) -> Vec<&'static str> {
    FLAGS
        .chunks(2)
        .filter(|pair| !args.iter().any(|a| a == pair[0]))
        .flatten()
        .copied()
        .collect()
}

fn image_ref(mode: &str) -> String {
    format!("{}/{mode}:v1", server().host)
}

/// What every run must show, whatever it was given.
fn bounded(name: &str, run: &Run, problems: &mut Vec<String>) {
    let text = run.text();
    if run.code == Some(101) || run.code.is_none() {
        problems.push(format!(
            "{name}: exit {:?} (panic or signal): {text}",
            run.code
        ));
    }
    if run.rss_kib == 0 || run.rss_kib > MAX_RSS_KIB {
        problems.push(format!("{name}: peak RSS {} KiB", run.rss_kib));
    }
    let raw = text
        .chars()
        .find(|c| c.is_control() && *c != '\n' || ('\u{202a}'..='\u{202e}').contains(c));
    if let Some(c) = raw {
        problems.push(format!(
            "{name}: raw control character {c:?} in output: {text:?}"
        ));
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    for secret in [PASSWORD, TOKEN, b64.as_str()] {
        if text.contains(secret) {
            problems.push(format!("{name}: secret {secret} in output: {text}"));
        }
    }
    // No temporary bundle is left behind.
    for e in std::fs::read_dir(run.dir.path()).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".partial") {
            problems.push(format!("{name}: left {n}"));
        }
    }
}

/// A run that must fail (exit 2) with `expect` in its output, within `within`.
fn refused(name: &str, run: &Run, expect: &str, within: Duration, problems: &mut Vec<String>) {
    bounded(name, run, problems);
    let text = run.text();
    if run.code != Some(2) {
        problems.push(format!("{name}: exit {:?}, expected 2: {text}", run.code));
    }
    if !text.to_lowercase().contains(&expect.to_lowercase()) {
        problems.push(format!("{name}: output lacks {expect:?}: {text}"));
    }
    if run.elapsed > within {
        problems.push(format!(
            "{name}: took {:.1} s (limit {:.1} s)",
            run.elapsed.as_secs_f64(),
            within.as_secs_f64()
        ));
    }
    eprintln!(
        "{name}: exit {:?}, {:.2} s, peak RSS {} KiB",
        run.code,
        run.elapsed.as_secs_f64(),
        run.rss_kib
    );
    // `HOSTILE_SHOW=1 cargo test --test it hostile_registry -- --nocapture` shows the messages.
    if std::env::var_os("HOSTILE_SHOW").is_some() {
        eprintln!("{text}");
    }
}

fn report(problems: Vec<String>) {
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// Runs the cases side by side (most are waiting on a deadline).
fn cases(list: Vec<(&'static str, Vec<String>, &'static str, Duration)>) -> Vec<String> {
    let results: Vec<(&str, Run, &str, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = list
            .into_iter()
            .map(|(name, args, expect, within)| {
                s.spawn(move || (name, create(&args), expect, within))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut problems = Vec::new();
    for (name, run, expect, within) in &results {
        refused(name, run, expect, *within, &mut problems);
    }
    problems
}

fn one(mode: &str) -> Vec<String> {
    vec![image_ref(mode)]
}

const QUICK: Duration = Duration::from_secs(5);

#[test]
fn the_control_image_is_bundled_through_a_token() {
    let run = create(&one("token-good"));
    let mut problems = Vec::new();
    bounded("token-good", &run, &mut problems);
    assert_eq!(run.code, Some(0), "{}", run.text());
    report(problems);
}

#[test]
fn bodies_a_peer_sizes_are_capped() {
    report(cases(vec![
        // Content-Length 3 GiB: refused before reading.
        (
            "huge-manifest",
            one("huge-manifest"),
            "larger than the 4194304 bytes",
            QUICK,
        ),
        // Chunked without end: refused at 4 MiB.
        (
            "endless-manifest",
            one("endless-manifest"),
            "larger than the 4194304 bytes",
            QUICK,
        ),
        (
            "token-huge",
            one("token-huge"),
            "larger than the 1048576 bytes",
            QUICK,
        ),
        (
            "token-endless",
            one("token-endless"),
            "larger than the 1048576 bytes",
            QUICK,
        ),
        // 500s are retried (once here), their bodies read at most 1 MiB.
        ("huge-error", one("huge-error"), "HTTP 500", QUICK),
        ("endless-error", one("endless-error"), "HTTP 500", QUICK),
        ("blob-error", one("blob-error"), "HTTP 503", QUICK),
        (
            "huge-config",
            one("huge-config"),
            "more than the 4194304 accepted",
            QUICK,
        ),
        (
            "endless-many",
            (0..24)
                .map(|i| format!("{}/endless-many:t{i}", server().host))
                .collect(),
            "larger than the 4194304 bytes",
            QUICK,
        ),
    ]));
}

#[test]
fn tokens_that_are_not_header_values_are_refused_without_a_panic() {
    report(cases(vec![
        (
            "token-newline",
            one("token-newline"),
            "cannot be sent in a header (byte 3 is 0x0a)",
            QUICK,
        ),
        ("token-del", one("token-del"), "byte 3 is 0x7f", QUICK),
        ("token-esc", one("token-esc"), "byte 3 is 0x1b", QUICK),
        ("token-space", one("token-space"), "byte 3 is 0x20", QUICK),
        (
            "token-empty",
            one("token-empty"),
            "the token is empty",
            QUICK,
        ),
        ("token-notjson", one("token-notjson"), "not JSON", QUICK),
        // A registry that echoes the token and password in its error message.
        ("token-echo", one("token-echo"), "HTTP 500", QUICK),
        (
            "chal-binary",
            one("chal-binary"),
            "it is not visible ASCII text",
            QUICK,
        ),
        (
            "chal-file",
            one("chal-file"),
            "scheme \"file\" is not HTTP(S)",
            QUICK,
        ),
        (
            "chal-garbage",
            one("chal-garbage"),
            "neither Bearer with a realm nor Basic",
            QUICK,
        ),
        // (An ESC in a header is refused by the HTTP parser itself.)
        ("chal-none", one("chal-none"), "401 Unauthorized", QUICK),
        // Not followed: reqwest hands back the 307 itself.
        ("redirect-file", one("redirect-file"), "HTTP 307", QUICK),
        (
            "redirect-loop",
            one("redirect-loop"),
            "more than 5 redirects",
            QUICK,
        ),
    ]));
}

#[test]
fn registry_text_is_escaped_and_platforms_are_held_to_the_grammar() {
    report(cases(vec![
        (
            "evil-variant",
            one("evil-variant"),
            "platform variant \"v1\\x1b]0;pwned\\x07\\npin",
            QUICK,
        ),
        (
            "evil-config",
            one("evil-config"),
            "platform os \"linux\\r\\npin forged\"",
            QUICK,
        ),
        (
            "evil-message",
            one("evil-message"),
            "\\x1b[2J\\x07\\rpin forged",
            QUICK,
        ),
        (
            "evil-media-type",
            one("evil-media-type"),
            "application/x\\x1b[31m\\x9b\\u{202e}",
            QUICK,
        ),
        (
            "evil-layer-type",
            one("evil-layer-type"),
            "application/x\\x1b[2J",
            QUICK,
        ),
    ]));
}

#[test]
fn decompression_bombs_are_refused_naming_the_layer() {
    report(cases(vec![(
        "zstd-bomb",
        one("zstd-bomb"),
        "refusing it as a decompression bomb",
        Duration::from_secs(10),
    )]));
}

#[test]
fn silent_and_trickling_servers_are_abandoned_within_the_deadline() {
    // Two attempts of --timeout 1s each (headers, then the body whole), and the backoff
    // between them (at most 0.5 s): abandoned within about 4 s; 8 s allows a slow CI.
    let deadline = Duration::from_secs(8);
    report(cases(vec![
        ("silent", one("silent"), "no response within 1 s", deadline),
        ("trickle", one("trickle"), "within 1 s", deadline),
        ("trickle-fast", one("trickle-fast"), "within 1 s", deadline),
        (
            "silent-blob",
            one("silent-blob"),
            "no response within 1 s",
            deadline,
        ),
        // 5 bytes/s against --min-rate 1KiB.
        (
            "trickle-blob",
            one("trickle-blob"),
            "slower than the minimum 1024 bytes/s",
            deadline,
        ),
        // Retries that would go on for ~20 s are cut by --image-timeout 6s.
        (
            "silent-budget",
            vec![image_ref("silent"), "--retries".into(), "10".into()],
            "took longer than --image-timeout (6 s)",
            Duration::from_secs(8),
        ),
    ]));
}

#[test]
fn index_entries_are_deduplicated_and_capped() {
    let run = create(&one("dup-index"));
    let mut problems = Vec::new();
    bounded("dup-index", &run, &mut problems);
    assert_eq!(run.code, Some(0), "{}", run.text());
    let hits = server().hits.lock().unwrap().clone();
    let child: Vec<(&String, &usize)> = hits
        .iter()
        .filter(|(p, _)| p.starts_with("/v2/dup-index/manifests/sha256:"))
        .collect();
    assert_eq!(child.len(), 1, "{child:?}");
    assert_eq!(
        *child[0].1, 1,
        "the duplicated entry is fetched once: {child:?}"
    );
    problems.extend(cases(vec![(
        "many-index",
        one("many-index"),
        "index of 5000 entries, more than the 1024 accepted",
        QUICK,
    )]));
    report(problems);
}

#[test]
fn an_interrupted_create_removes_its_temporary_bundle() {
    for (signal, code) in [
        (rustix::process::Signal::INT, 130),
        (rustix::process::Signal::TERM, 143),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let host = &server().host;
        let auth = authfile(dir.path(), host);
        let child = Command::new(env!("CARGO_BIN_EXE_pinbundle"))
            .arg("create")
            .arg(image_ref("silent"))
            .arg("-o")
            .arg(dir.path().join("out.pinbundle"))
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(["--insecure-registry", host, "--timeout", "30s"])
            .arg("--authfile")
            .arg(&auth)
            .env("PINBUNDLE_NO_PROGRESS", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the temporary bundle exists, then interrupt.
        let started = Instant::now();
        let partial = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        };
        while !partial() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(partial(), "no temporary bundle appeared");
        std::thread::sleep(Duration::from_millis(300));
        rustix::process::kill_process(rustix::process::Pid::from_child(&child), signal).unwrap();
        let o = child.wait_with_output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(code),
            "{signal:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !partial(),
            "{signal:?}: the temporary bundle is still there"
        );
    }
}

#[test]
fn stale_partial_cache_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("cache/blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let old = blobs.join(format!("{}.partial", "ab".repeat(32)));
    let fresh = blobs.join(format!("{}.partial", "cd".repeat(32)));
    std::fs::write(&old, b"left by a hostile registry").unwrap();
    std::fs::write(&fresh, b"an interrupted download").unwrap();
    let status = Command::new("touch")
        .args(["-d", "8 days ago"])
        .arg(&old)
        .status()
        .unwrap();
    assert!(status.success());
    let run = create_in(dir, &one("token-good"));
    assert_eq!(run.code, Some(0), "{}", run.text());
    assert!(!old.exists(), "a week-old partial is removed");
    assert!(fresh.exists(), "a fresh partial is kept for resuming");
}

// ---- hostile local inputs ----

fn pinbundle(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    full.insert(0, image_ref("token-good"));
    create_in(dir, &full)
}

#[test]
fn key_and_password_files_must_be_small_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let fifo = fifo.to_str().unwrap().to_string();
    let big = dir.path().join("big.key");
    std::fs::write(&big, vec![b'a'; 1 << 20]).unwrap();
    let big = big.to_str().unwrap().to_string();
    let mut problems = Vec::new();
    for (name, args, expect) in [
        (
            "sign-key /dev/zero",
            vec!["--sign-key", "/dev/zero"],
            "not a regular file",
        ),
        (
            "sign-key fifo",
            vec!["--sign-key", fifo.as_str()],
            "not a regular file",
        ),
        (
            "sign-key big",
            vec!["--sign-key", big.as_str()],
            "larger than the 4096 bytes",
        ),
    ] {
        let run = pinbundle(&args);
        refused(name, &run, expect, QUICK, &mut problems);
    }

    // A password file that is a device, with a real encrypted key; and a key readable by
    // all, which is used with a warning.
    let key = dir.path().join("k");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "a password\n").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pinbundle"))
        .arg("keygen")
        .arg("-o")
        .arg(&key)
        .arg("--password-file")
        .arg(&pw)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let secret = format!("{}.key", key.display());
    let run = pinbundle(&["--sign-key", &secret, "--password-file", "/dev/zero"]);
    refused(
        "password-file /dev/zero",
        &run,
        "not a regular file",
        QUICK,
        &mut problems,
    );
    let run = pinbundle(&["--sign-key", &secret, "--password-file", &fifo]);
    refused(
        "password-file fifo",
        &run,
        "not a regular file",
        QUICK,
        &mut problems,
    );
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let run = pinbundle(&[
        "--sign-key",
        &secret,
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    bounded("world-readable key", &run, &mut problems);
    if run.code != Some(0)
        || !run
            .text()
            .contains("can be read by group or others (mode 0644)")
    {
        problems.push(format!(
            "world-readable key: no warning or failed: {}",
            run.text()
        ));
    }
    report(problems);
}

#[test]
fn reference_files_with_huge_lines_or_control_characters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("long.txt");
    // 12 MiB on one line: refused after 4 KiB, quoted in 60 characters.
    std::fs::write(&long, vec![b'a'; 12 << 20]).unwrap();
    let nul = dir.path().join("nul.txt");
    std::fs::write(&nul, b"quay.io/a/b:v1\nquay.io/\x00x\x1b[2J:v1\n").unwrap();
    let mut problems = Vec::new();
    let run = create(&["--from-file".into(), long.display().to_string()]);
    refused(
        "long line",
        &run,
        "line 1: longer than 4096 bytes",
        QUICK,
        &mut problems,
    );
    if run.output.len() > 1000 {
        problems.push(format!("long line: {} bytes of output", run.output.len()));
    }
    let run = create(&["--from-file".into(), nul.display().to_string()]);
    refused(
        "control characters",
        &run,
        "line 2: holds a control character: \"quay.io/\\x00x\\x1b[2J:v1\"",
        QUICK,
        &mut problems,
    );
    report(problems);
}

#[test]
fn a_malformed_auth_file_never_prints_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.json");
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        &auth,
        format!(r#"{{"auths": {{"a.io": {{"auth": "{b64}"}}, "b.io": {{"auth": 5, "x": "{PASSWORD}"}}, "c.io": "{b64}"}}}}"#),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pinbundle"))
        .arg("create")
        .arg(image_ref("token-good"))
        .arg("-o")
        .arg(dir.path().join("out.pinbundle"))
        .arg("--authfile")
        .arg(&auth)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(
        text.contains("auth.json") && text.contains("line 1, column"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD) && !text.contains(&b64), "{text}");
}
