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
        // Refused for its content (a platform the image lacks): exit 1.
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {err}");
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

/// How the stand-in registry serves the layer.
#[derive(Clone, Copy, PartialEq)]
enum Serve {
    /// Send this many bytes of it, then nothing (the connection stays open).
    Stall(usize),
    /// All of it; a `Range` answered with 206, or ignored (200 from byte 0).
    Whole { ranges: bool },
}

/// A registry stand-in for one image (a config and one gzip layer), recording each layer
/// request's `Range` header.
struct Standin {
    host: String,
    serve: std::sync::Arc<std::sync::Mutex<Serve>>,
    ranges: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
    layer: Vec<u8>,
}

impl Standin {
    fn start(layer: Vec<u8>) -> Standin {
        use pinbundle::reference::Digest;
        use std::io::{BufRead as _, Write as _};
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#.to_vec();
        let descriptor = |mt: &str, b: &[u8]| serde_json::json!({"mediaType": mt, "digest": Digest::of(b).to_string(), "size": b.len()});
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
        }))
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let serve = std::sync::Arc::new(std::sync::Mutex::new(Serve::Stall(0)));
        let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, r, l) = (serve.clone(), ranges.clone(), layer.clone());
        let layer_path = format!("/v2/x/y/blobs/{}", Digest::of(&layer));
        let config_path = format!("/v2/x/y/blobs/{}", Digest::of(&config));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, r, l) = (s.clone(), r.clone(), l.clone());
                let (layer_path, config_path) = (layer_path.clone(), config_path.clone());
                let (manifest, config) = (manifest.clone(), config.clone());
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap_or(0);
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    let mut range = None;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("range")
                        {
                            range = Some(v.trim().to_string());
                        }
                    }
                    let mut out = stream;
                    let send = |out: &mut std::net::TcpStream,
                                status: &str,
                                ct: &str,
                                body: &[u8],
                                extra: &str| {
                        let head = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = out
                            .write_all(head.as_bytes())
                            .and_then(|()| out.write_all(body));
                    };
                    if path == "/v2/" {
                        send(&mut out, "200 OK", "application/json", b"{}", "");
                    } else if path == "/v2/x/y/manifests/v1" {
                        let digest =
                            format!("Docker-Content-Digest: {}\r\n", Digest::of(&manifest));
                        send(
                            &mut out,
                            "200 OK",
                            "application/vnd.oci.image.manifest.v1+json",
                            &manifest,
                            &digest,
                        );
                    } else if path == config_path {
                        send(&mut out, "200 OK", "application/octet-stream", &config, "");
                    } else if path == layer_path {
                        r.lock().unwrap().push(range.clone());
                        let serve = *s.lock().unwrap();
                        let start = range
                            .as_deref()
                            .and_then(|v| v.strip_prefix("bytes="))
                            .and_then(|v| v.strip_suffix('-'))
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        match serve {
                            Serve::Stall(n) => {
                                let head = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                    l.len()
                                );
                                let _ = out
                                    .write_all(head.as_bytes())
                                    .and_then(|()| out.write_all(&l[..n]));
                                std::thread::sleep(std::time::Duration::from_secs(60));
                            }
                            Serve::Whole { ranges: true } if start > 0 => {
                                let extra = format!(
                                    "Content-Range: bytes {start}-{}/{}\r\n",
                                    l.len() - 1,
                                    l.len()
                                );
                                send(
                                    &mut out,
                                    "206 Partial Content",
                                    "application/octet-stream",
                                    &l[start..],
                                    &extra,
                                );
                            }
                            Serve::Whole { .. } => {
                                send(&mut out, "200 OK", "application/octet-stream", &l, "");
                            }
                        }
                    } else {
                        send(&mut out, "404 Not Found", "application/json", b"{}", "");
                    }
                });
            }
        });
        Standin {
            host,
            serve,
            ranges,
            layer,
        }
    }

    fn create(&self, dir: &std::path::Path, cache: &std::path::Path) -> std::process::Command {
        let mut c = pinbundle();
        c.args(["create", &format!("{}/x/y:v1", self.host), "-o"])
            .arg(dir.join("b.pinbundle"))
            .arg("--cache-dir")
            .arg(cache)
            .args(["--insecure-registry", &self.host, "--volume-size", "1MiB"])
            .env("PINBUNDLE_NO_PROGRESS", "1")
            .stderr(std::process::Stdio::piped());
        c
    }

    fn partial_in_cache(&self, cache: &std::path::Path) -> std::path::PathBuf {
        let hex = pinbundle::reference::Digest::of(&self.layer)
            .hex()
            .to_string();
        cache.join("blobs/sha256").join(format!("{hex}.partial"))
    }
}

/// The names of `dir`'s temporary output files.
fn output_partials(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".b.pinbundle.") && n.ends_with(".partial"))
        .collect()
}

/// A gzip layer of `len` incompressible bytes.
fn random_layer(len: usize) -> Vec<u8> {
    use std::io::Write as _;
    let mut tar = tar::Builder::new(Vec::new());
    let data = crate::util::noise(len, 16);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "noise", &data[..]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// SIGTERM mid-download removes the temporary volumes; what a SIGKILL leaves is removed by
/// the next run of the same output, which resumes the blob by range from the cache's partial.
#[test]
fn interrupted_create_cleans_up_and_resumes() {
    let stand = Standin::start(random_layer(6 << 20));
    let dir = tempdir();
    let cache = dir.path().join("cache");
    let partial = stand.partial_in_cache(&cache);
    let stalled_after = 3 << 20;
    *stand.serve.lock().unwrap() = Serve::Stall(stalled_after);
    // Waits until the download has written to the cache's partial (it writes in 1 MiB
    // batches) and the output is staged.
    let wait_stalled = || {
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(30) {
            let written = std::fs::metadata(&partial).map_or(0, |m| m.len());
            if written >= 1 << 20 && !output_partials(dir.path()).is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the download never stalled with bytes written");
    };
    for (signal, code) in [
        (rustix::process::Signal::TERM, Some(143)),
        (rustix::process::Signal::KILL, None),
    ] {
        let child = stand.create(dir.path(), &cache).spawn().unwrap();
        wait_stalled();
        rustix::process::kill_process(rustix::process::Pid::from_child(&child), signal).unwrap();
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), code, "{signal:?}: {}", text(&o.stderr));
        let left = output_partials(dir.path());
        if signal == rustix::process::Signal::TERM {
            assert!(left.is_empty(), "SIGTERM left {left:?}");
        } else {
            assert!(!left.is_empty(), "SIGKILL cannot clean up");
        }
    }
    // The rerun removes the killed run's files and asks only for what the cache lacks.
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept >= 1 << 20 && kept <= stalled_after as u64, "{kept}");
    *stand.serve.lock().unwrap() = Serve::Whole { ranges: true };
    stand.ranges.lock().unwrap().clear();
    let o = stand.create(dir.path(), &cache).output().unwrap();
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("removed what an interrupted run left"),
        "{err}"
    );
    assert!(output_partials(dir.path()).is_empty());
    assert_eq!(
        *stand.ranges.lock().unwrap(),
        [Some(format!("bytes={kept}-"))],
        "resumed from the partial"
    );
    let verify = |cache_name: &str| {
        let o = run(pinbundle()
            .arg("verify")
            .arg(dir.path().join("b.pinbundle.001")));
        assert!(o.status.success(), "{cache_name}: {}", text(&o.stderr));
    };
    verify("resumed");
    // A registry that ignores the range sends it whole; a kept prefix that is wrong is not
    // trusted: the blob is fetched again from zero. Either way the bundle verifies.
    for (ranges, prefix, expect) in [
        (
            false,
            stand.layer[..2 << 20].to_vec(),
            vec![Some("bytes=2097152-".to_string())],
        ),
        (
            true,
            vec![0u8; 2 << 20],
            vec![
                Some("bytes=2097152-".to_string()),
                Some("bytes=0-".to_string()),
            ],
        ),
    ] {
        let cache = dir.path().join(format!("cache-{ranges}"));
        let partial = stand.partial_in_cache(&cache);
        std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
        std::fs::write(&partial, &prefix).unwrap();
        *stand.serve.lock().unwrap() = Serve::Whole { ranges };
        stand.ranges.lock().unwrap().clear();
        let o = stand.create(dir.path(), &cache).output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_eq!(*stand.ranges.lock().unwrap(), expect, "ranges {ranges}");
        verify(&format!("ranges {ranges}"));
    }
}
