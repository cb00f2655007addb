//! All or nothing: a load that fails after its first import removes again what it added and
//! leaves every image that was there before as it was; and an unsigned bundle's layer sizes
//! are measured, not believed.

use std::path::{Path, PathBuf};
use std::process::Command;

use pinbundle::bundle::format::{MANIFEST_PATH, SIGNATURE_PATH};
use serde_json::Value;

use crate::create::Env;
use crate::load::{Store, is_root, load};
use crate::util::{members, ok, pinbundle, tempdir, text, write_members};

/// The store's images as (id, names sorted), sorted: what "as it was" compares.
fn images(store: &Store) -> Vec<(String, Vec<String>)> {
    let v: Value = serde_json::from_str(&store.images_json()).unwrap_or(Value::Array(vec![]));
    let mut out: Vec<(String, Vec<String>)> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let mut names: Vec<String> = i["names"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            names.sort();
            (i["id"].as_str().unwrap_or("").to_string(), names)
        })
        .collect();
    out.sort();
    out
}

/// The store's layer IDs, sorted.
fn layers(store: &Store, driver: &str) -> Vec<String> {
    let p = store.root.join(format!("{driver}-layers/layers.json"));
    let v: Value = std::fs::read(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Array(vec![]));
    let mut ids: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// `bundle` rebuilt with `pinbundle.json` edited by `edit` (and, with `key`, signed again by
/// it): a signer who states wrong sizes, or an attacker who cannot sign.
fn with_manifest(bundle: &Path, out: &Path, key: Option<&Path>, edit: impl Fn(&mut Value)) {
    let mut ms = members(bundle);
    let mut doc: Value = serde_json::from_slice(&ms[0].1).unwrap();
    assert_eq!(ms[0].0, MANIFEST_PATH);
    edit(&mut doc);
    let json = serde_json::to_vec_pretty(&doc).unwrap();
    ms[0].1 = json.clone();
    if let Some(key) = key {
        let signer = pinbundle::sign::SecretKeyFile::read(key)
            .unwrap()
            .unlock(None)
            .unwrap();
        let sig = signer.sign(&json, "pinbundle test re-signed").unwrap();
        let at = ms.iter().position(|(p, _)| p == SIGNATURE_PATH).unwrap();
        ms[at].1 = sig;
    }
    std::fs::write(out, write_members(&ms)).unwrap();
}

/// Sets the declared uncompressed size of the layer `digest` (and keeps the totals
/// consistent, as a careful forger would).
fn declare(doc: &mut Value, digest: &str, size: u64) {
    let mut old = 0;
    for b in doc["blobs"].as_array_mut().unwrap() {
        if b["digest"] == digest {
            old = b["uncompressedSize"].as_u64().unwrap();
            b["uncompressedSize"] = size.into();
        }
    }
    let fix = |v: &mut Value| *v = (v.as_u64().unwrap() - old + size).into();
    for img in doc["images"].as_array_mut().unwrap() {
        if img["blobs"].as_array().unwrap().iter().any(|d| d == digest) {
            fix(&mut img["uncompressedSize"]);
        }
    }
    fix(&mut doc["totals"]["uncompressedSize"]);
}

fn largest_layer(env: &Env, i: usize) -> String {
    env.pushed[i]
        .blobs
        .iter()
        .max_by_key(|l| l.size)
        .unwrap()
        .digest
        .to_string()
}

/// A test registry with one single-layer image per `(repository, compressed size, seed)`.
fn registry_with(images: &[(&str, u64, u64)]) -> Env {
    let registry = pinbundle_fixtures::registry::TestRegistry::start().unwrap();
    let pushed = images
        .iter()
        .map(|&(name, size, seed)| {
            pinbundle_fixtures::push_sized(registry.addr(), name, &[size], seed, None).unwrap()
        })
        .collect();
    Env { registry, pushed }
}

#[test]
fn unsigned_bundle_that_understates_a_layer_is_refused_before_any_write() {
    let env = registry_with(&[("t/under", 1 << 20, 11)]);
    let dir = tempdir();
    let honest = env.bundle_of(dir.path(), &[env.pushed[0].tag_reference()]);
    let store = Store::new(dir.path(), "vfs");
    let drop_in = dir.path().join("crio.conf.d/50-pinned-images");
    let sock = dir.path().join("no.sock");
    let lock = dir.path().join("lock");

    // An honest unsigned bundle: its sizes are measured, and the report says so.
    let (o, r) = load(&honest, &store, &drop_in, &sock, &lock, &["--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(r["space"]["sizes"], "measured", "{r}");
    let layer = largest_layer(&env, 0);
    let real = r["space"]["unpacked"].as_u64().unwrap();
    assert!(real > 1 << 20, "{r}");

    // The same bundle claiming the layer unpacks to 1000 bytes.
    let lying = dir.path().join("lying.pinbundle");
    with_manifest(&honest, &lying, None, |d| declare(d, &layer, 1000));
    let verify = crate::util::run(pinbundle().arg("verify").arg(&lying));
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    let (o, r) = load(&lying, &store, &drop_in, &sock, &lock, &[]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}"); // refused for its content
    assert!(
        err.contains(&layer) && err.contains("unpacks to more than the 1000 bytes"),
        "{err}"
    );
    assert_eq!(r, Value::Null, "no report for a refusal before any change");
    assert!(!store.root.exists(), "the store was touched");
    assert!(!drop_in.exists(), "the drop-in was written");
}

/// A store in `store_dir` (vfs), its drop-in, socket and lock paths, with `env.pushed[0]`
/// loaded and pinned before the test: what must be untouched afterwards.
struct Node {
    store: Store,
    drop_in: PathBuf,
    sock: PathBuf,
    lock: PathBuf,
    images: Vec<(String, Vec<String>)>,
    layers: Vec<String>,
    pins: Vec<u8>,
}

impl Node {
    fn with_preloaded(env: &Env, dir: &Path, store_dir: &Path) -> Node {
        let store = Store::new(store_dir, "vfs");
        let drop_in = dir.join("crio.conf.d/50-pinned-images");
        let (sock, lock) = (dir.join("no.sock"), dir.join("lock"));
        std::fs::create_dir_all(dir.join("pre")).unwrap();
        let pre = env.bundle_of(&dir.join("pre"), &[env.pushed[0].tag_reference()]);
        let (o, _) = load(&pre, &store, &drop_in, &sock, &lock, &[]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        Node {
            images: images(&store),
            layers: layers(&store, "vfs"),
            pins: std::fs::read(&drop_in).unwrap(),
            store,
            drop_in,
            sock,
            lock,
        }
    }

    /// Asserts the store and the pins are as they were before the test.
    fn assert_unchanged(&self) {
        assert_eq!(
            images(&self.store),
            self.images,
            "the store's images changed"
        );
        assert_eq!(
            layers(&self.store, "vfs"),
            self.layers,
            "the layers changed"
        );
        assert_eq!(
            std::fs::read(&self.drop_in).unwrap(),
            self.pins,
            "the pins changed"
        );
    }
}

/// A `skopeo` on PATH that runs the real one, but first flips a byte of the bundle at
/// `offset`, once, at the first `copy`: the bundle changes after `load` verified it.
fn tampering_skopeo(dir: &Path, bundle: &Path, offset: u64) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("skopeo");
    let mark = dir.join("tampered");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
for a in "$@"; do
  # mkdir is atomic: of copies started at once, exactly one flips the byte, and the others
  # start only once it is flipped.
  if [ "$a" = copy ]; then
    if mkdir '{mark}' 2>/dev/null; then
      python3 -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(int(sys.argv[2])); b=f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0]^1]))' '{bundle}' {offset}
      touch '{mark}/done'
    fi
    i=0
    while [ ! -e '{mark}/done' ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
  fi
done
exec /usr/bin/skopeo "$@"
"#,
            mark = mark.display(),
            bundle = bundle.display(),
        ),
    )
    .unwrap();
    ok(Command::new("chmod").arg("755").arg(&script));
    bin
}

#[test]
fn bytes_changed_after_verify_roll_back_the_images_this_load_added() {
    let env = registry_with(&[
        ("t/pre", 64 << 10, 21),
        ("t/first", 256 << 10, 22),
        ("t/second", 1 << 20, 23),
    ]);
    let dir = tempdir();
    // An image that was there before, and a pin of it.
    let node = Node::with_preloaded(&env, dir.path(), dir.path());

    let refs: Vec<String> = env.pushed.iter().map(|p| p.tag_reference()).collect();
    std::fs::create_dir_all(dir.path().join("all")).unwrap();
    let bundle = env.bundle_of(
        &dir.path().join("all"),
        &[refs[1].clone(), refs[2].clone(), refs[0].clone()],
    );
    // The middle of the second image's layer, which the first import never reads.
    let b = pinbundle::bundle::Bundle::open(&bundle).unwrap();
    let layer: pinbundle::reference::Digest = largest_layer(&env, 2).parse().unwrap();
    let m = b.blob(&layer).unwrap();
    let f = &b.index().frames[m.frame];
    let offset = f.offset + f.length / 2;
    drop(b);
    let bin = tampering_skopeo(dir.path(), &bundle, offset);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let o = crate::util::run(
        pinbundle()
            .env("PATH", &path)
            .arg("load")
            .args(crate::load::kubelet_off())
            .arg(&bundle)
            .args(node.store.args())
            .args(crate::load::crio_config_args(&node.drop_in))
            .arg("--crio-drop-in")
            .arg(&node.drop_in)
            .arg("--cri-socket")
            .arg(&node.sock)
            .arg("--lock-file")
            .arg(&node.lock)
            .args(["--reload", "none", "--json"]),
    );
    let r: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    assert_eq!(o.status.code(), Some(2), "{}\n{r}", text(&o.stderr));
    assert!(dir.path().join("tampered").exists(), "skopeo never copied");
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap_or("").contains(&refs[2]), "{r}");
    let removed = r["rolledBack"]["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{r}");
    let first_pin = env.pushed[1].digest_reference();
    assert!(
        removed[0]["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == &*first_pin),
        "{r}"
    );
    assert_eq!(r["rolledBack"]["left"], Value::Array(vec![]), "{r}");
    assert_eq!(r["images"][0]["status"], "rolled-back", "{r}");
    assert_eq!(r["images"][1]["status"], "failed", "{r}");
    node.assert_unchanged();
}

#[test]
fn a_store_that_fills_up_midway_is_rolled_back() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to mount a small tmpfs");
        return;
    }
    // t/big unpacks to about 100 MiB: more than the 80 MiB filesystem holds.
    let env = registry_with(&[
        ("t/pre", 64 << 10, 31),
        ("t/small", 256 << 10, 32),
        ("t/big", 76 << 20, 33),
    ]);
    let dir = tempdir();
    let fs = dir.path().join("fs");
    std::fs::create_dir(&fs).unwrap();
    ok(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=80m", "tmpfs"])
        .arg(&fs));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(fs.clone());
    let node = Node::with_preloaded(&env, dir.path(), &fs);

    // Signed by a trusted key that states the big layer's size wrong: the declared sizes
    // are used (and pass), the disk fills during the second import.
    let key = dir.path().join("site");
    ok(pinbundle()
        .arg("keygen")
        .arg("-o")
        .arg(&key)
        .arg("--unencrypted"));
    let secret = dir.path().join("site.key");
    let public = dir.path().join("site.pub");
    let refs: Vec<String> = env.pushed.iter().map(|p| p.tag_reference()).collect();
    let out = dir.path().join("signed.pinbundle");
    let o = env.create(
        &dir.path().join("cache"),
        &out,
        &[refs[1].clone(), refs[2].clone(), refs[0].clone()],
        &["--sign-key", secret.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let lying = dir.path().join("lying.pinbundle");
    let layer = largest_layer(&env, 2);
    with_manifest(&out, &lying, Some(&secret), |d| declare(d, &layer, 1000));

    let (o, r) = load(
        &lying,
        &node.store,
        &node.drop_in,
        &node.sock,
        &node.lock,
        &["--trust-key", public.to_str().unwrap(), "--reload", "none"],
    );
    assert_eq!(o.status.code(), Some(2), "{}\n{r}", text(&o.stderr));
    assert_eq!(r["space"]["sizes"], "declared", "{r}");
    assert!(r["signature"]["verifiedBy"].is_string(), "{r}");
    let err = r["error"].as_str().unwrap_or("");
    assert!(
        err.contains(&refs[2]) && err.contains("no space left"),
        "{r}"
    );
    assert_eq!(
        r["rolledBack"]["removed"].as_array().map(Vec::len),
        Some(1),
        "{r}"
    );
    node.assert_unchanged();
}
