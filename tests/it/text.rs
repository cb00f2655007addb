//! Text from a bundle is data: names outside the one reference grammar are refused by
//! `verify` and `load` (which then change nothing), and whatever a crafted `pinbundle.json`
//! carries reaches the terminal escaped, refusals included, while `--json` keeps it exact.
//! The bundles are synthetic (one image, no registry), written with `BundleWriter`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use pinbundle::bundle::format::media;
use pinbundle::reference::Digest;
use serde_json::{Value, json};

use crate::util::{files_under, noise, pinbundle, run, tempdir, text, write_members};

/// Control characters, a CR that returns to the line start, a newline that starts a fake
/// line, and a bidi override: what must never reach the terminal raw.
const EVIL: &str =
    "x\x1b[2K\r\nsigned by key 0123456789ABCDEF, verified with trusted key\u{202e}\x07\u{9b}";

/// A valid one-image bundle: its `pinbundle.json` as JSON, and the other members.
struct Synthetic {
    manifest: Value,
    members: Vec<(String, Vec<u8>)>,
}

impl Synthetic {
    fn new(name: &str, tag: &str) -> Synthetic {
        let layer = noise(3000, 14);
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let descriptor = |media_type: &str, b: &[u8]| json!({"mediaType": media_type, "digest": Digest::of(b).to_string(), "size": b.len()});
        let image = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": descriptor(media::OCI_CONFIG, &config),
            "layers": [descriptor(media::OCI_LAYER_GZIP, &layer)],
        }))
        .unwrap();
        let oci_layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
        let index_json = br#"{"schemaVersion":2,"manifests":[]}"#.to_vec();
        let mut blobs: BTreeMap<Digest, (Vec<u8>, &str, &str)> = BTreeMap::new();
        blobs.insert(
            Digest::of(&layer),
            (layer.clone(), media::OCI_LAYER_GZIP, "layer"),
        );
        blobs.insert(
            Digest::of(&config),
            (config.clone(), media::OCI_CONFIG, "config"),
        );
        blobs.insert(
            Digest::of(&image),
            (image.clone(), media::OCI_MANIFEST, "manifest"),
        );
        let entries: Vec<Value> = blobs
            .iter()
            .map(|(d, (b, mt, kind))| {
                let mut e = json!({"digest": d.to_string(), "size": b.len(), "mediaType": mt, "kind": kind});
                if *kind == "layer" {
                    e["uncompressedSize"] = json!(b.len());
                }
                e
            })
            .collect();
        let size: usize = blobs.values().map(|(b, _, _)| b.len()).sum();
        let d = |b: &[u8]| Digest::of(b).to_string();
        let manifest = json!({
            "format": "pinbundle", "formatVersion": 1, "creator": "test",
            "created": "1970-01-01T00:00:00Z",
            "layout": {"ociLayout": d(&oci_layout), "indexJson": d(&index_json)},
            "images": [{
                "reference": format!("{name}:{tag}"), "name": name, "tag": tag,
                "digest": d(&image), "mediaType": media::OCI_MANIFEST,
                "platforms": [{"os": "linux", "architecture": "amd64", "digest": d(&image),
                               "mediaType": media::OCI_MANIFEST, "config": d(&config),
                               "layers": [d(&layer)]}],
                "blobs": [d(&image), d(&config), d(&layer)],
                "size": size, "uncompressedSize": layer.len(),
            }],
            "blobs": entries,
            "totals": {"images": 1, "blobs": 3, "size": size, "uncompressedSize": layer.len()},
        });
        let mut members = vec![
            ("oci-layout".to_string(), oci_layout),
            ("index.json".to_string(), index_json),
        ];
        members.extend(
            blobs
                .iter()
                .map(|(d, (b, _, _))| (d.layout_path(), b.clone())),
        );
        Synthetic { manifest, members }
    }

    fn write(&self, path: &Path) {
        let mut m = vec![(
            "pinbundle.json".to_string(),
            serde_json::to_vec_pretty(&self.manifest).unwrap(),
        )];
        m.extend(self.members.iter().cloned());
        std::fs::write(path, write_members(&m)).unwrap();
    }
}

/// A node for `load`: an existing drop-in with a pin, a store that does not exist yet.
struct Node {
    dir: PathBuf,
}

const EXISTING_PINS: &str = "[crio]\n  [crio.image]\n    pinned_images = [\"quay.io/other/app@sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\"]\n";

impl Node {
    fn new(dir: PathBuf) -> Node {
        std::fs::create_dir_all(dir.join("crio.conf.d")).unwrap();
        std::fs::write(dir.join("crio.conf.d/50-pinned-images"), EXISTING_PINS).unwrap();
        Node { dir }
    }

    fn load(&self, bundle: &Path, extra: &[&str]) -> Output {
        let d = &self.dir;
        run(pinbundle()
            .arg("load")
            .args(crate::load::kubelet_off())
            .arg(bundle)
            .arg("--storage-root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--storage-driver", "vfs", "--reload", "none"])
            .args(crate::load::crio_config_args(
                &d.join("crio.conf.d/50-pinned-images"),
            ))
            .arg("--crio-drop-in")
            .arg(d.join("crio.conf.d/50-pinned-images"))
            .arg("--cri-socket")
            .arg(d.join("no.sock"))
            .arg("--lock-file")
            .arg(d.join("load.lock"))
            .arg("--trusted-dir")
            .arg(d.join("no-keys"))
            .args(extra))
    }

    /// Panics unless the store is absent and the drop-in directory is as it was.
    fn assert_unchanged(&self, what: &str) {
        assert!(
            !self.dir.join("storage").exists() && !self.dir.join("run").exists(),
            "{what}: load created the store"
        );
        let conf = self.dir.join("crio.conf.d");
        assert_eq!(
            files_under(&conf),
            [conf.join("50-pinned-images")],
            "{what}: files added to the drop-in directory"
        );
        assert_eq!(
            std::fs::read_to_string(conf.join("50-pinned-images")).unwrap(),
            EXISTING_PINS,
            "{what}: the drop-in changed"
        );
    }
}

fn bundle_cmd(cmd: &str, bundle: &Path, json: bool) -> Output {
    let mut c = pinbundle();
    c.arg(cmd).arg(bundle);
    if json {
        c.arg("--json");
    }
    run(&mut c)
}

/// A character a terminal would act on (what `pinbundle::text::escape` rewrites).
fn raw_control(s: &str) -> Option<char> {
    s.chars()
        .filter(|&c| c != '\n')
        .find(|&c| pinbundle::text::needs_escape(c))
}

#[test]
fn names_outside_the_reference_grammar_are_refused_and_change_nothing() {
    let dir = tempdir();
    let intact = dir.path().join("intact.pinbundle");
    Synthetic::new("quay.io/org/app", "v1").write(&intact);
    let o = bundle_cmd("verify", &intact, false);
    assert!(
        o.status.success(),
        "the synthetic bundle verifies: {}",
        text(&o.stdout)
    );

    for name in [
        "quay.io:99999999999999999999/a",
        "-x.io/a",
        "..:1/a",
        "quay.io:0/a",
    ] {
        let bundle = dir.path().join("bad.pinbundle");
        Synthetic::new(name, "v1").write(&bundle);
        let o = bundle_cmd("verify", &bundle, true);
        assert_eq!(
            o.status.code(),
            Some(1),
            "verify of {name}: {}",
            text(&o.stdout)
        );
        let report: Value = serde_json::from_slice(&o.stdout).unwrap();
        let errors: Vec<&str> = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["error"].as_str().unwrap())
            .collect();
        assert!(
            errors.iter().any(|e| e.contains("bad domain")),
            "{name}: {errors:?}"
        );

        let node = Node::new(dir.path().join(format!("node-{}", name.len())));
        let o = node.load(&bundle, &[]);
        let out = format!("{}{}", text(&o.stdout), text(&o.stderr));
        assert_eq!(o.status.code(), Some(1), "load of {name}: {out}");
        assert!(out.contains("bad domain"), "load of {name}: {out}");
        node.assert_unchanged(name);
    }
}

#[test]
fn bundle_text_reaches_the_terminal_escaped_and_json_stays_exact() {
    let dir = tempdir();
    // Unsigned text everywhere `inspect` shows it: the reference stays valid, so `verify`
    // goes on to whatever else it finds.
    let mut shown = Synthetic::new("quay.io/org/app", "v1");
    shown.manifest["creator"] = json!(EVIL);
    shown.manifest["created"] = json!(EVIL);
    shown.manifest["images"][0]["platforms"][0]["variant"] = json!(EVIL);
    for b in shown.manifest["blobs"].as_array_mut().unwrap() {
        if b["kind"] == "layer" {
            b["mediaType"] = json!(format!("application/{EVIL}"));
        }
    }
    // A reference-like field that breaks the grammar: refused, and the refusal quotes it.
    let mut refused = Synthetic::new("quay.io/org/app", "v1");
    refused.manifest["creator"] = json!(EVIL);
    refused.manifest["images"][0]["reference"] = json!(format!("quay.io/org/app:v1{EVIL}"));
    refused.manifest["images"][0]["mediaType"] = json!(format!("application/{EVIL}"));

    for (what, s) in [("shown", &shown), ("refused", &refused)] {
        let bundle = dir.path().join(format!("{what}.pinbundle"));
        s.write(&bundle);
        let node = Node::new(dir.path().join(format!("node-{what}")));
        let mut runs = vec![
            ("inspect", bundle_cmd("inspect", &bundle, false)),
            ("verify", bundle_cmd("verify", &bundle, false)),
            ("load --dry-run", node.load(&bundle, &["--dry-run"])),
        ];
        if what == "refused" {
            runs.push(("load", node.load(&bundle, &[])));
        }
        for (cmd, o) in &runs {
            for (stream, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
                let t = text(bytes);
                if let Some(c) = raw_control(&t) {
                    panic!("{what}: {cmd} wrote {c:?} raw to {stream}:\n{t}");
                }
                assert!(
                    !t.lines().any(|l| l.starts_with("signed by key")),
                    "{what}: {cmd} painted a line on {stream}:\n{t}"
                );
            }
        }
        // The text was shown (escaped), not dropped.
        let inspect = text(&runs[0].1.stdout);
        assert!(
            inspect.contains("x\\x1b[2K\\r\\nsigned by key"),
            "{inspect}"
        );
        assert!(inspect.contains("\\u{202e}\\x07\\x9b"), "{inspect}");
        if what == "refused" {
            let verify = text(&runs[1].1.stdout);
            assert_eq!(runs[1].1.status.code(), Some(1), "{verify}");
            assert!(verify.contains("invalid image reference"), "{verify}");
            for (cmd, o) in &runs[2..] {
                assert_eq!(o.status.code(), Some(1), "{cmd}: {}", text(&o.stdout));
            }
        }
        node.assert_unchanged(what);

        // --json: the exact values, with no raw control character in the document either.
        let o = bundle_cmd("inspect", &bundle, true);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let t = text(&o.stdout);
        assert_eq!(raw_control(&t), None, "{t}");
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["creator"], json!(EVIL));
        assert_eq!(v["images"], s.manifest["images"]);
        assert_eq!(v["blobs"], s.manifest["blobs"]);
        for (cmd, o) in [
            ("verify", bundle_cmd("verify", &bundle, true)),
            (
                "load --dry-run",
                node.load(&bundle, &["--dry-run", "--json"]),
            ),
        ] {
            let t = text(&o.stdout);
            assert_eq!(raw_control(&t), None, "{what}: {cmd} --json: {t}");
            serde_json::from_str::<Value>(&t)
                .unwrap_or_else(|e| panic!("{what}: {cmd} --json: {e}: {t}"));
        }
    }
}

#[test]
fn input_files_use_the_same_grammar() {
    use pinbundle::create::{read_pinned_image_set, read_reference_file};
    let dir = tempdir();
    let list = dir.path().join("refs.txt");
    std::fs::write(
        &list,
        "# images\n  busybox:1.36  # trimmed\nquay.io:443/a/b\n",
    )
    .unwrap();
    let refs: Vec<String> = read_reference_file(&list)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(refs, ["docker.io/library/busybox:1.36", "quay.io:443/a/b"]);
    std::fs::write(&list, "busybox\nquay.io:99999999999999999999/a\n").unwrap();
    let e = format!("{:#}", read_reference_file(&list).unwrap_err());
    assert!(e.contains("line 2") && e.contains("bad domain"), "{e}");

    let set = dir.path().join("set.yaml");
    let yaml = |names: &[&str]| {
        let items: String = names
            .iter()
            .map(|n| format!("    - name: {}\n", serde_json::to_string(n).unwrap()))
            .collect();
        format!(
            "apiVersion: machineconfiguration.openshift.io/v1\nkind: PinnedImageSet\nmetadata:\n  name: x\nspec:\n  pinnedImages:\n{items}"
        )
    };
    let pinned = format!("quay.io/a@sha256:{}", "0".repeat(64));
    std::fs::write(&set, yaml(&[&pinned])).unwrap();
    assert_eq!(read_pinned_image_set(&set).unwrap().len(), 1);
    for bad in ["-x.io/a", "..:1/a", "x.io/a//b", "quay.io/a\n\x1b[2J"] {
        std::fs::write(&set, yaml(&["busybox", bad])).unwrap();
        let e = format!("{:#}", read_pinned_image_set(&set).unwrap_err());
        assert!(e.contains("spec.pinnedImages[1].name"), "{bad:?}: {e}");
        assert!(e.contains("invalid image reference"), "{bad:?}: {e}");
        assert_eq!(raw_control(&e), None, "{bad:?}: {e}");
    }
}

/// File names come from the stick too (a directory argument lists them), and error chains
/// quote them: both reach the terminal escaped.
#[test]
fn paths_and_error_chains_are_escaped() {
    let dir = tempdir();
    let evil_dir = dir.path().join(format!("d{EVIL}"));
    std::fs::create_dir(&evil_dir).unwrap();
    let good = evil_dir.join(format!("b{EVIL}.pinbundle"));
    Synthetic::new("quay.io/org/app", "v1").write(&good);
    let garbage = evil_dir.join(format!("g{EVIL}.pinbundle"));
    std::fs::write(&garbage, b"not a bundle").unwrap();
    for (what, path, ok) in [("intact", &good, true), ("garbage", &garbage, false)] {
        for cmd in ["inspect", "verify"] {
            let o = bundle_cmd(cmd, path, false);
            assert_eq!(o.status.success(), ok, "{what}: {cmd}: {}", text(&o.stderr));
            for (stream, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
                let t = text(bytes);
                assert_eq!(raw_control(&t), None, "{what}: {cmd}: {stream}: {t}");
                assert!(
                    !t.lines().any(|l| l.starts_with("signed by key")),
                    "{what}: {cmd} painted a line on {stream}:\n{t}"
                );
            }
            let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
            assert!(
                all.contains("\\x1b[2K\\r\\nsigned by key"),
                "{what}: {cmd}: {all}"
            );
        }
    }
}
