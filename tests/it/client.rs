//! `registry::client` against a real `docker-registry` (Debian's distribution 2.8) and, for
//! failure modes a real registry will not produce (wrong bytes, 503s, cut connections), a
//! tiny scripted HTTP server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use pinbundle::reference::{Digest, Reference};
use pinbundle::registry::client::{ClientOptions, Error, OCI_MANIFEST, RegistryClient};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::util::{free_port, noise};

/// The shared harness's real `docker-registry` (optionally with htpasswd auth).
struct Registry {
    inner: pinbundle_fixtures::registry::TestRegistry,
    host: String,
    auth: Option<(String, String)>,
}

impl Registry {
    fn start(auth: Option<(&str, &str)>) -> Registry {
        let inner = match auth {
            Some((u, p)) => pinbundle_fixtures::registry::TestRegistry::start_with_basic_auth(u, p),
            None => pinbundle_fixtures::registry::TestRegistry::start(),
        }
        .expect("start docker-registry");
        let host = inner.addr().to_string();
        Registry {
            inner,
            host,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        }
    }

    /// An auth file with this registry's credentials (or the given ones).
    fn authfile(&self, creds: Option<(&str, &str)>) -> PathBuf {
        let path = self
            .inner
            .dir()
            .join(format!("auth-{}.json", creds.is_some()));
        let auths = match creds {
            Some((u, p)) => format!(
                r#"{{"{}": {{"auth": "{}"}}}}"#,
                self.host,
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            ),
            None => "{}".to_string(),
        };
        std::fs::write(&path, format!(r#"{{"auths": {auths}}}"#)).expect("write auth file");
        path
    }

    fn options(&self, authfile: PathBuf) -> ClientOptions {
        ClientOptions {
            insecure_registries: vec![self.host.clone()],
            authfile: Some(authfile),
            retries: 2,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            ..ClientOptions::default()
        }
    }

    /// Push a one-layer OCI image as `repo:tag` through the registry API.
    async fn push(&self, repo: &str, tag: &str, layer: &[u8]) -> Image {
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let reference =
            oci_client::Reference::with_tag(self.host.clone(), repo.to_string(), tag.to_string());
        let auth = match &self.auth {
            Some((u, p)) => oci_client::secrets::RegistryAuth::Basic(u.clone(), p.clone()),
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        client.store_auth_if_needed(&self.host, &auth).await;
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = Digest::of(config);
        let layer_digest = Digest::of(layer);
        for (bytes, digest) in [(&config[..], &config_digest), (layer, &layer_digest)] {
            client
                .push_blob(&reference, bytes.to_vec(), &digest.to_string())
                .await
                .expect("push blob");
        }
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        );
        client
            .push_manifest_raw(
                &reference,
                manifest.clone().into_bytes(),
                http::HeaderValue::from_static(OCI_MANIFEST),
            )
            .await
            .expect("push manifest");
        Image {
            manifest: manifest.into_bytes(),
            layer: layer.to_vec(),
            layer_digest,
        }
    }

    fn reference(&self, rest: &str) -> Reference {
        format!("{}/{rest}", self.host).parse().expect("reference")
    }
}

struct Image {
    manifest: Vec<u8>,
    layer: Vec<u8>,
    layer_digest: Digest,
}

fn partial_of(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().expect("file name").to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

/// Fetch `image`'s layer to a fresh `dest` in `dir`, returning the bytes reported.
async fn fetch(
    client: &RegistryClient,
    reference: &Reference,
    image: &Image,
    dest: &Path,
) -> Result<u64, Error> {
    let total = AtomicU64::new(0);
    let progress = |n: u64| {
        total.fetch_add(n, Ordering::Relaxed);
    };
    client
        .fetch_blob(
            reference,
            &image.layer_digest,
            image.layer.len() as u64,
            dest,
            &progress,
        )
        .await?;
    Ok(total.load(Ordering::Relaxed))
}

#[tokio::test]
async fn manifests_by_tag_and_digest() {
    let registry = Registry::start(None);
    let image = registry.push("test/app", "v1", &noise(1000, 1)).await;
    let client = RegistryClient::new(registry.options(registry.authfile(None))).expect("client");

    let by_tag = client
        .get_manifest(&registry.reference("test/app:v1"))
        .await
        .expect("manifest by tag");
    assert_eq!(by_tag.bytes.as_ref(), image.manifest.as_slice());
    assert_eq!(by_tag.digest, Digest::of(&image.manifest));
    assert_eq!(by_tag.media_type, OCI_MANIFEST);

    let pinned = registry.reference(&format!("test/app@{}", by_tag.digest));
    let by_digest = client
        .get_manifest(&pinned)
        .await
        .expect("manifest by digest");
    assert_eq!(by_digest.digest, by_tag.digest);
    let child = client
        .get_manifest_by_digest(&registry.reference("test/app"), &by_tag.digest)
        .await
        .expect("manifest by digest");
    assert_eq!(child.bytes, by_tag.bytes);

    // Tag and digest together: fetched by digest and checked against it.
    let both = registry.reference(&format!("test/app:v1@{}", by_tag.digest));
    assert_eq!(
        client.get_manifest(&both).await.expect("tag@digest").digest,
        by_tag.digest
    );

    // A digest the registry does not have.
    let wrong = registry.reference(&format!("test/app@{}", Digest::of(b"other")));
    let err = client.get_manifest(&wrong).await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound { .. } | Error::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("test/app@sha256:"), "{err}");

    let err = client
        .get_manifest(&registry.reference("test/app:nope"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}/test/app:nope not found on {}",
            registry.host, registry.host
        )
    );
    let err = client
        .get_manifest(&registry.reference("no/such/repo:v1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn blobs_are_fetched_verified_and_resumed() {
    let registry = Registry::start(None);
    let image = registry.push("test/blob", "v1", &noise(300_000, 2)).await;
    let client = RegistryClient::new(registry.options(registry.authfile(None))).expect("client");
    let reference = registry.reference("test/blob:v1");
    let cache = tempfile::tempdir().expect("tempdir");
    let size = image.layer.len() as u64;

    // Fresh download.
    let dest = cache.path().join("fresh");
    assert_eq!(
        fetch(&client, &reference, &image, &dest)
            .await
            .expect("fetch"),
        size
    );
    assert_eq!(std::fs::read(&dest).expect("read blob"), image.layer);
    assert!(!partial_of(&dest).exists());

    // A truncated partial with correct bytes: resumed with Range.
    let dest = cache.path().join("resumed");
    std::fs::write(partial_of(&dest), &image.layer[..100_000]).expect("write partial");
    assert_eq!(
        fetch(&client, &reference, &image, &dest)
            .await
            .expect("resume"),
        size
    );
    assert_eq!(std::fs::read(&dest).expect("read blob"), image.layer);
    assert!(!partial_of(&dest).exists());

    // A corrupt partial: the resumed result does not verify, so it is fetched again.
    let dest = cache.path().join("corrupt");
    let mut bad = image.layer[..150_000].to_vec();
    bad[10] ^= 0xff;
    std::fs::write(partial_of(&dest), &bad).expect("write partial");
    assert_eq!(
        fetch(&client, &reference, &image, &dest)
            .await
            .expect("refetch"),
        size
    );
    assert_eq!(std::fs::read(&dest).expect("read blob"), image.layer);

    // A full-length corrupt partial, and one longer than the blob.
    for (name, len) in [("full", image.layer.len()), ("long", image.layer.len() + 7)] {
        let dest = cache.path().join(name);
        std::fs::write(partial_of(&dest), noise(len, 9)).expect("write partial");
        fetch(&client, &reference, &image, &dest)
            .await
            .expect("replace partial");
        assert_eq!(
            std::fs::read(&dest).expect("read blob"),
            image.layer,
            "{name}"
        );
    }

    // Two concurrent fetches of one blob: one downloads, the other waits on the lock.
    let dest = cache.path().join("concurrent");
    let (a, b) = tokio::join!(
        fetch(&client, &reference, &image, &dest),
        fetch(&client, &reference, &image, &dest)
    );
    a.expect("first fetch");
    b.expect("second fetch");
    assert_eq!(std::fs::read(&dest).expect("read blob"), image.layer);
    assert!(!partial_of(&dest).exists());

    // An unknown blob.
    let missing = Digest::of(b"missing");
    let err = client
        .fetch_blob(
            &reference,
            &missing,
            7,
            &cache.path().join("missing"),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn basic_auth_registry() {
    let registry = Registry::start(Some(("user", "s3cret-pass")));
    let image = registry.push("private/app", "v1", &noise(2000, 3)).await;
    let reference = registry.reference("private/app:v1");

    let anonymous = RegistryClient::new(registry.options(registry.authfile(None))).expect("client");
    let err = anonymous.get_manifest(&reference).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("no credentials for it in") && text.contains("auth-false.json"),
        "{text}"
    );

    let wrong_file = registry.authfile(Some(("user", "wrong-pass")));
    let wrong = RegistryClient::new(registry.options(wrong_file)).expect("client");
    let err = wrong.get_manifest(&reference).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    assert!(text.contains("were sent and rejected"), "{text}");
    assert!(!text.contains("wrong-pass"), "{text}");

    let authed =
        RegistryClient::new(registry.options(registry.authfile(Some(("user", "s3cret-pass")))))
            .expect("client");
    let manifest = authed
        .get_manifest(&reference)
        .await
        .expect("authenticated manifest");
    assert_eq!(manifest.digest, Digest::of(&image.manifest));
    let dest = tempfile::tempdir().expect("tempdir");
    let dest = dest.path().join("blob");
    fetch(&authed, &reference, &image, &dest)
        .await
        .expect("authenticated blob");
    assert_eq!(std::fs::read(&dest).expect("read blob"), image.layer);
}

#[tokio::test]
async fn unreachable_registry() {
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let authfile = dir.path().join("auth.json");
    std::fs::write(&authfile, r#"{"auths": {}}"#).expect("write");
    let client = RegistryClient::new(ClientOptions {
        insecure_registries: vec![host.clone()],
        authfile: Some(authfile),
        retries: 2,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    })
    .expect("client");
    let started = Instant::now();
    let err = client
        .get_manifest(&format!("{host}/a/b:v1").parse().expect("reference"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unreachable { registry, attempts: 1, .. } if *registry == host),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.to_string().contains(&host), "{err}");
}

#[test]
fn missing_authfile_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent-auth.json");
    let err = RegistryClient::new(ClientOptions {
        authfile: Some(path),
        ..ClientOptions::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("absent-auth.json"), "{err}");
}

// ---- a scripted HTTP server for failures a real registry does not produce ----

/// What the fake server does with the n-th blob request (0-based); the `/v2/` ping always
/// answers 200.
#[derive(Clone, Copy)]
enum Reply {
    /// 200 (or 206 for a Range request) with the right bytes.
    Serve,
    /// 200 with every byte flipped.
    Corrupt,
    /// 503 Service Unavailable.
    Unavailable,
    /// Headers for the full length, then only the first `n` bytes, then close.
    Cut(usize),
    /// 200 with the full body even when a Range was asked for.
    IgnoreRange,
}

struct Fake {
    host: String,
    blob_requests: Arc<AtomicUsize>,
    ranges: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

async fn fake_server(blob: Vec<u8>, script: Vec<Reply>) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let host = listener.local_addr().expect("addr").to_string();
    let blob = Arc::new(blob);
    let script = Arc::new(script);
    let blob_requests = Arc::new(AtomicUsize::new(0));
    let ranges = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (counter, seen) = (blob_requests.clone(), ranges.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (blob, script, counter, seen) =
                (blob.clone(), script.clone(), counter.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                if !head.contains("/blobs/") {
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                        )
                        .await;
                    return;
                }
                let range = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("range: bytes=")
                            .map(str::to_string)
                    })
                    .map(|r| r.trim_end_matches('-').to_string());
                seen.lock().expect("lock").push(range.clone());
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let reply = script.get(n).copied().unwrap_or(Reply::Serve);
                let offset: usize = range.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0);
                let response = |status: &str, body: &[u8], extra: &str| {
                    let mut r = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                };
                let bytes = match reply {
                    Reply::Serve if offset > 0 => response(
                        "206 Partial Content",
                        &blob[offset..],
                        &format!(
                            "Content-Range: bytes {offset}-{}/{}\r\n",
                            blob.len() - 1,
                            blob.len()
                        ),
                    ),
                    Reply::Serve | Reply::IgnoreRange => response("200 OK", &blob, ""),
                    Reply::Corrupt => {
                        let bad: Vec<u8> = blob.iter().map(|b| !b).collect();
                        response("200 OK", &bad, "")
                    }
                    Reply::Unavailable => response("503 Service Unavailable", b"busy", ""),
                    Reply::Cut(keep) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            blob.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&blob[..keep]);
                        r
                    }
                };
                let _ = socket.write_all(&bytes).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Fake {
        host,
        blob_requests,
        ranges,
    }
}

fn fake_client(host: &str) -> (RegistryClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let authfile = dir.path().join("auth.json");
    std::fs::write(&authfile, r#"{"auths": {}}"#).expect("write");
    let client = RegistryClient::new(ClientOptions {
        insecure_registries: vec![host.to_string()],
        authfile: Some(authfile),
        retries: 3,
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    })
    .expect("client");
    (client, dir)
}

#[tokio::test]
async fn wrong_bytes_are_never_renamed_into_place() {
    let blob = noise(5000, 4);
    let digest = Digest::of(&blob);
    let fake = fake_server(blob.clone(), vec![Reply::Corrupt]).await;
    let (client, dir) = fake_client(&fake.host);
    let reference: Reference = format!("{}/x/y:v1", fake.host).parse().expect("reference");
    let dest = dir.path().join(digest.hex());
    let err = client
        .fetch_blob(&reference, &digest, blob.len() as u64, &dest, &|_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::DigestMismatch { expected, .. } if *expected == digest.to_string()),
        "{err:?}"
    );
    assert!(err.to_string().contains("x/y"), "{err}");
    assert!(!dest.exists());
    assert!(!partial_of(&dest).exists());
}

#[tokio::test]
async fn retries_503_and_resumes_cut_transfers() {
    let blob = noise(50_000, 5);
    let digest = Digest::of(&blob);
    let script = vec![
        Reply::Unavailable,
        Reply::Cut(20_000),
        Reply::Cut(30_000),
        Reply::Serve,
    ];
    let fake = fake_server(blob.clone(), script).await;
    let (client, dir) = fake_client(&fake.host);
    let reference: Reference = format!("{}/x/y:v1", fake.host).parse().expect("reference");
    let dest = dir.path().join("blob");
    let total = AtomicU64::new(0);
    client
        .fetch_blob(&reference, &digest, blob.len() as u64, &dest, &|n| {
            total.fetch_add(n, Ordering::Relaxed);
        })
        .await
        .expect("fetch after retries");
    assert_eq!(std::fs::read(&dest).expect("read"), blob);
    assert_eq!(total.load(Ordering::Relaxed), blob.len() as u64);
    assert_eq!(fake.blob_requests.load(Ordering::SeqCst), 4);
    let ranges = fake.ranges.lock().expect("lock").clone();
    // The 503 and the first attempt ask from 0 (`bytes=0-`: a ranged GET is never hashed by
    // oci-client, only once by us); the cut at 20000 resumes there (the fake answers 200
    // for Cut, so the client restarts), then resumes at 30000.
    assert_eq!(ranges[0].as_deref(), Some("0"));
    assert_eq!(ranges[1].as_deref(), Some("0"));
    assert_eq!(ranges[2].as_deref(), Some("20000"));
    assert_eq!(ranges[3].as_deref(), Some("30000"));
}

#[tokio::test]
async fn ignored_range_restarts_from_zero() {
    let blob = noise(40_000, 6);
    let digest = Digest::of(&blob);
    let fake = fake_server(blob.clone(), vec![Reply::Cut(10_000), Reply::IgnoreRange]).await;
    let (client, dir) = fake_client(&fake.host);
    let reference: Reference = format!("{}/x/y:v1", fake.host).parse().expect("reference");
    let dest = dir.path().join("blob");
    client
        .fetch_blob(&reference, &digest, blob.len() as u64, &dest, &|_| {})
        .await
        .expect("fetch");
    assert_eq!(std::fs::read(&dest).expect("read"), blob);
    assert_eq!(fake.blob_requests.load(Ordering::SeqCst), 2);
    let ranges = fake.ranges.lock().expect("lock").clone();
    assert_eq!(ranges[1].as_deref(), Some("10000"));
}

#[tokio::test]
async fn persistent_503_gives_up_with_http_error() {
    let blob = noise(100, 7);
    let digest = Digest::of(&blob);
    let fake = fake_server(blob.clone(), vec![Reply::Unavailable; 10]).await;
    let (client, dir) = fake_client(&fake.host);
    let reference: Reference = format!("{}/x/y:v1", fake.host).parse().expect("reference");
    let err = client
        .fetch_blob(
            &reference,
            &digest,
            blob.len() as u64,
            &dir.path().join("b"),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Http { status: 503, .. }), "{err:?}");
    assert_eq!(fake.blob_requests.load(Ordering::SeqCst), 4);
}
