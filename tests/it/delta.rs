//! Delta bundles with real components: two releases of one image that share their first two
//! layers, pushed to a real registry; `create --base`, `index-export`, `verify`, `inspect`,
//! `diff`, and `load` into real containers-storage with real skopeo.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pinbundle::bundle::Bundle;
use pinbundle::reference::Digest;
use pinbundle_fixtures::Pushed;
use pinbundle_fixtures::registry::TestRegistry;
use serde_json::{Value, json};

use crate::create::{Env, inspect_json};
use crate::load::{Store, is_root, load};
use crate::util::{http, members, ok, pinbundle, run, sha256_file, tempdir, text};

/// Bytes a delta may spend beyond the blobs it carries, compared with the full bundle: its
/// longer pinbundle.json and seek index.
const OVERHEAD: u64 = 16 << 10;

/// v1 and v2 of `app/x`, a full bundle of each and a delta of v2 against v1.
struct Releases {
    env: Env,
    dir: tempfile::TempDir,
    v1: PathBuf,
    v2: PathBuf,
    delta: PathBuf,
    /// `create --json` of the delta.
    created: Value,
}

impl Releases {
    fn new() -> Releases {
        let registry = TestRegistry::start().expect("start docker-registry");
        let release = |tag, last| {
            pinbundle_fixtures::push_release(
                registry.addr(),
                "app/x",
                tag,
                &[(1 << 20, 1), (1 << 20, 2), last],
                None,
            )
            .expect("push a release")
        };
        let pushed = vec![release("v1", (256 << 10, 3)), release("v2", (256 << 10, 4))];
        let env = Env { registry, pushed };
        let dir = tempdir();
        let cache = dir.path().join("cache");
        let make = |name: &str, image: usize, extra: &[&str]| {
            let out = dir.path().join(name);
            let o = env.create(&cache, &out, &[env.pushed[image].tag_reference()], extra);
            assert!(o.status.success(), "create {name}: {}", text(&o.stderr));
            (out, o)
        };
        let (v1, _) = make("v1.pinbundle", 0, &[]);
        let (v2, _) = make("v2.pinbundle", 1, &[]);
        // A cache of its own: what the delta's create fetched is what its cache holds.
        let delta = dir.path().join("delta.pinbundle");
        let o = env.create(
            &dir.path().join("delta-cache"),
            &delta,
            &[env.pushed[1].tag_reference()],
            &["--json", "--base", v1.to_str().unwrap()],
        );
        assert!(o.status.success(), "create delta: {}", text(&o.stderr));
        let created = serde_json::from_slice(&o.stdout).unwrap();
        Releases {
            env,
            dir,
            v1,
            v2,
            delta,
            created,
        }
    }

    fn v1(&self) -> &Pushed {
        &self.env.pushed[0]
    }

    fn v2(&self) -> &Pushed {
        &self.env.pushed[1]
    }

    /// The layers v1 and v2 share (digest, size).
    fn shared(&self) -> Vec<(String, u64)> {
        let old: BTreeSet<&str> = self.v1().platforms[0]
            .layers
            .iter()
            .map(|l| l.digest.as_str())
            .collect();
        self.v2().platforms[0]
            .layers
            .iter()
            .filter(|l| old.contains(l.digest.as_str()))
            .map(|l| (l.digest.clone(), l.size))
            .collect()
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// A bundle of `members` with `pinbundle.json` edited by `edit` (blobs stay sorted).
fn rewritten(
    mut members: Vec<(String, Vec<u8>)>,
    edit: impl FnOnce(&mut Value, &mut Vec<(String, Vec<u8>)>),
) -> Vec<u8> {
    let mut manifest: Value = serde_json::from_slice(&members[0].1).unwrap();
    edit(&mut manifest, &mut members);
    members[0].1 = serde_json::to_vec_pretty(&manifest).unwrap();
    crate::util::write_members(&members)
}

fn verify_json(bundle: &Path) -> (Option<i32>, Value) {
    let o = run(pinbundle().args(["verify", "--json"]).arg(bundle));
    (
        o.status.code(),
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
    )
}

#[test]
fn delta_is_smaller_by_the_shared_layers_and_records_its_base() {
    let r = Releases::new();
    let shared = r.shared();
    assert_eq!(shared.len(), 2, "the fixtures share their first two layers");
    let shared_bytes: u64 = shared.iter().map(|(_, s)| s).sum();

    // 1. Smaller by the shared layers, which were not even fetched.
    let (full, delta) = (file_len(&r.v2), file_len(&r.delta));
    assert!(
        delta + shared_bytes <= full + OVERHEAD,
        "delta {delta} vs full {full}, shared {shared_bytes}"
    );
    assert!(delta < full - shared_bytes / 2, "delta {delta} full {full}");
    for (d, _) in &shared {
        let hex = d.strip_prefix("sha256:").unwrap();
        assert!(
            !r.dir
                .path()
                .join("delta-cache/blobs/sha256")
                .join(hex)
                .exists(),
            "create fetched the omitted layer {d}"
        );
    }
    assert_eq!(r.created["blobsOmitted"], 2, "{}", r.created);
    assert_eq!(r.created["bytesOmitted"], shared_bytes);

    // Exactly the shared layers are carried:false; every blob is still listed.
    let b = Bundle::open(&r.delta).unwrap();
    let m = b.manifest();
    let omitted: BTreeSet<String> = m
        .blobs
        .iter()
        .filter(|b| !b.carried)
        .map(|b| b.digest.to_string())
        .collect();
    let expected: BTreeSet<String> = shared.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(omitted, expected);
    let full_manifest = Bundle::open(&r.v2).unwrap().manifest().clone();
    assert_eq!(m.blobs.len(), full_manifest.blobs.len());
    assert_eq!(
        m.images, full_manifest.images,
        "the same images, sizes included"
    );
    for d in &omitted {
        assert!(b.blob(&d.parse().unwrap()).is_none(), "{d} is a member");
    }

    // The base's identity is the sha256 of v1's pinbundle.json, which index-export writes.
    let v1_identity = Digest::of(Bundle::open(&r.v1).unwrap().manifest_bytes());
    let base = m.base.as_ref().expect("a delta has a base");
    assert_eq!(base.manifest, v1_identity);
    let index = r.dir.path().join("v1.index.json");
    ok(pinbundle()
        .arg("index-export")
        .arg(&r.v1)
        .arg("-o")
        .arg(&index));
    assert_eq!(sha256_file(&index), v1_identity.to_string());

    // A delta made from the exported index is the same file.
    let again = r.dir.path().join("delta-from-index.pinbundle");
    let o = r.env.create(
        &r.dir.path().join("cache"),
        &again,
        &[r.v2().tag_reference()],
        &["--base", index.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        std::fs::read(&again).unwrap() == std::fs::read(&r.delta).unwrap(),
        "a delta of the index differs from a delta of the bundle"
    );

    // 2. verify passes and says it is a delta; inspect shows of what.
    let (code, report) = verify_json(&r.delta);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["base"]["manifest"], v1_identity.to_string());
    let inspect = inspect_json(&r.delta);
    assert_eq!(inspect["base"]["manifest"], v1_identity.to_string());
    assert_eq!(
        inspect["base"]["created"], m.created,
        "same SOURCE_DATE_EPOCH"
    );
    assert_eq!(inspect["totals"]["omittedBlobs"], 2);
    assert_eq!(inspect["totals"]["omittedSize"], shared_bytes);
    let o = ok(pinbundle().arg("inspect").arg(&r.delta));
    assert!(
        text(&o.stdout).contains(&format!("delta:   of {v1_identity}")),
        "{}",
        text(&o.stdout)
    );
    // A full bundle has none of it.
    let full_inspect = inspect_json(&r.v2);
    assert!(full_inspect.get("base").is_none());
    assert!(full_inspect["totals"].get("omittedBlobs").is_none());

    // 6. diff: the image changed; blobs and bytes as pushed.
    let o = ok(pinbundle().args(["diff", "--json"]).arg(&r.v1).arg(&r.v2));
    let diff: Value = serde_json::from_slice(&o.stdout).unwrap();
    let images = diff["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{diff}");
    assert_eq!(images[0]["status"], "changed");
    assert_eq!(images[0]["oldReference"], r.v1().tag_reference());
    assert_eq!(images[0]["newReference"], r.v2().tag_reference());
    assert_eq!(images[0]["oldDigest"], r.v1().digest);
    assert_eq!(images[0]["newDigest"], r.v2().digest);
    let only = |a: &Pushed, b: &Pushed| {
        let other: BTreeSet<&str> = b.blobs.iter().map(|x| x.digest.as_str()).collect();
        let blobs: Vec<u64> = a
            .blobs
            .iter()
            .filter(|x| !other.contains(x.digest.as_str()))
            .map(|x| x.size)
            .collect();
        // Plus the image's own manifest.
        json!({"blobs": blobs.len() + 1, "size": blobs.iter().sum::<u64>() + a.size})
    };
    assert_eq!(diff["blobs"]["onlyNew"], only(r.v2(), r.v1()), "{diff}");
    assert_eq!(diff["blobs"]["onlyOld"], only(r.v1(), r.v2()), "{diff}");
    assert_eq!(
        diff["blobs"]["shared"],
        json!({"blobs": 2, "size": shared_bytes})
    );
    // The exported index stands in for its bundle.
    let o = ok(pinbundle()
        .args(["diff", "--json"])
        .arg(&index)
        .arg(&r.delta));
    let by_index: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(by_index["blobs"], diff["blobs"]);
    assert_eq!(by_index["old"]["identity"], v1_identity.to_string());

    // The loopback registry serves an omitted layer only from a base bundle that carries it.
    {
        use pinbundle::registry::server::{self, BundleServer};
        let one = |p: &Path| {
            std::sync::Arc::new(
                pinbundle::bundle::BundleSet::single(Bundle::open(p).unwrap()).unwrap(),
            )
        };
        let delta = one(&r.delta);
        let path = format!(
            "/v2/{}/blobs/{}",
            server::served_name(&m.images[0].name),
            shared[0].0
        );
        let alone = server::serve_in_thread(
            BundleServer::new(delta.clone()),
            BundleServer::LOOPBACK_EPHEMERAL,
        )
        .unwrap();
        assert_eq!(http(alone.addr(), "GET", &path, &[]).status, 404);
        drop(alone);
        let base = one(&r.v1);
        let with_base = server::serve_in_thread(
            BundleServer::new(delta).with_bases(vec![base]),
            BundleServer::LOOPBACK_EPHEMERAL,
        )
        .unwrap();
        let crate::util::Reply { status, body, .. } = http(with_base.addr(), "GET", &path, &[]);
        assert_eq!(status, 200);
        assert_eq!(Digest::of(&body).to_string(), shared[0].0);
    }

    // 7. Hostile: an omitted layer that is a member anyway, and carried:false without a base.
    let layer = &shared[0].0;
    let layer_path = format!("blobs/sha256/{}", layer.strip_prefix("sha256:").unwrap());
    let layer_bytes = {
        let b = Bundle::open(&r.v1).unwrap();
        let m = b.member(&layer_path).unwrap().clone();
        b.read_member(&m).unwrap()
    };
    let present = rewritten(members(&r.delta), |_, ms| {
        ms.push((layer_path.clone(), layer_bytes.clone()));
    });
    let no_base = rewritten(members(&r.v2), |m, ms| {
        for b in m["blobs"].as_array_mut().unwrap() {
            if b["digest"] == *layer {
                b["carried"] = json!(false);
            }
        }
        ms.retain(|(p, _)| *p != layer_path);
    });
    let stripped_base = rewritten(members(&r.delta), |m, _| {
        m.as_object_mut().unwrap().remove("base");
    });
    for (name, bytes, expect) in [
        ("present", present, "but present in the bundle"),
        ("no-base", no_base, "not a delta"),
        ("stripped-base", stripped_base, "not a delta"),
    ] {
        let p = r.dir.path().join(format!("{name}.pinbundle"));
        std::fs::write(&p, bytes).unwrap();
        let (code, report) = verify_json(&p);
        assert_eq!(code, Some(1), "{name}: {report}");
        let errors: Vec<&str> = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["error"].as_str())
            .collect();
        assert!(
            errors.iter().any(|e| e.contains(expect)),
            "{name}: {errors:?}"
        );
        assert!(
            report["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["digest"] == *layer),
            "{name}: the layer is named: {report}"
        );
        // load refuses it too, before touching anything.
        let store = Store::new(&r.dir.path().join(name), "vfs");
        let drop_in = r.dir.path().join(name).join("50-pinned-images");
        let (o, _) = load(
            &p,
            &store,
            &drop_in,
            Path::new("/nonexistent.sock"),
            &r.dir.path().join(name).join("lock"),
            &["--reload", "none"],
        );
        assert_eq!(o.status.code(), Some(1), "{name}: {}", text(&o.stdout));
        assert!(!store.root.exists() && !drop_in.exists(), "{name}");
    }
}

#[test]
fn delta_loads_where_the_base_is_and_is_refused_where_it_is_not() {
    if !is_root() {
        eprintln!("SKIPPED delta load test: containers-storage needs root");
        return;
    }
    let r = Releases::new();
    let shared = r.shared();
    let scratch = |name: &str| {
        let d = r.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let store = Store::new(&d, "vfs");
        let drop_in = d.join("crio.conf.d/50-pinned-images");
        (d, store, drop_in)
    };
    let pins = |drop_in: &Path| crate::util::pins_of(&std::fs::read_to_string(drop_in).unwrap());
    let no_sock = Path::new("/nonexistent/crio.sock");

    // 4. An empty store and no base: refused, naming both missing layers; nothing changed.
    let (d, store, drop_in) = scratch("empty");
    let (o, _) = load(
        &r.delta,
        &store,
        &drop_in,
        no_sock,
        &d.join("lock"),
        &["--reload", "none"],
    );
    let err = text(&o.stderr);
    // Refused for its content: exit 1.
    assert_eq!(o.status.code(), Some(1), "{err}\n{}", text(&o.stdout));
    for (digest, size) in &shared {
        assert!(err.contains(digest.as_str()), "{digest} not listed: {err}");
        let shown = format!("{digest} ({})", pinbundle::size::human(*size));
        assert!(err.contains(&shown), "{shown}: {err}");
    }
    assert!(err.contains("--base"), "says how to fix it: {err}");
    assert!(err.contains(&r.v2().tag_reference()), "{err}");
    assert!(
        store.images_json().is_empty() && !store.exists(&r.v2().digest_reference()),
        "the store was written"
    );
    assert!(!drop_in.exists(), "the drop-in was written");

    // 3. A store that holds v1: the delta loads, its omitted layers reused from the store.
    let (d, store, drop_in) = scratch("has-v1");
    let (o, _) = load(
        &r.v1,
        &store,
        &drop_in,
        no_sock,
        &d.join("lock"),
        &["--reload", "none"],
    );
    assert!(o.status.success(), "load v1: {}", text(&o.stderr));
    let (o, report) = load(
        &r.delta,
        &store,
        &drop_in,
        no_sock,
        &d.join("lock"),
        &["--reload", "none"],
    );
    assert!(
        o.status.success(),
        "load delta: {}\n{}",
        text(&o.stderr),
        text(&o.stdout)
    );
    assert_eq!(report["images"][0]["status"], "loaded", "{report}");
    assert_eq!(report["delta"]["fromStorage"].as_array().unwrap().len(), 2);
    assert_eq!(report["delta"]["fromBases"].as_array().unwrap().len(), 0);
    assert!(store.exists(&r.v2().digest_reference()));
    assert!(store.exists(&r.v1().digest_reference()));
    let mut want = vec![r.v1().digest_reference(), r.v2().digest_reference()];
    want.sort();
    assert_eq!(pins(&drop_in), want);

    // 5. An empty store with the base bundle given: the layers come from it.
    let (d, store, drop_in) = scratch("with-base");
    let (o, report) = load(
        &r.delta,
        &store,
        &drop_in,
        no_sock,
        &d.join("lock"),
        &["--reload", "none", "--base", r.v1.to_str().unwrap()],
    );
    assert!(
        o.status.success(),
        "load delta --base: {}\n{}",
        text(&o.stderr),
        text(&o.stdout)
    );
    let from_bases = report["delta"]["fromBases"].as_array().unwrap();
    assert_eq!(from_bases.len(), 2, "{report}");
    assert!(
        from_bases
            .iter()
            .all(|s| s["bundle"] == r.v1.to_str().unwrap())
    );
    assert!(store.exists(&r.v2().digest_reference()));
    assert_eq!(pins(&drop_in), vec![r.v2().digest_reference()]);
    // An exported index carries no blobs: not a base for load.
    let index = d.join("v1.json");
    ok(pinbundle()
        .arg("index-export")
        .arg(&r.v1)
        .arg("-o")
        .arg(&index));
    let (d, store, drop_in) = scratch("index-base");
    let (o, _) = load(
        &r.delta,
        &store,
        &drop_in,
        no_sock,
        &d.join("lock"),
        &["--reload", "none", "--base", index.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("carries no blobs"),
        "{}",
        text(&o.stderr)
    );
    assert!(!drop_in.exists());
}

#[test]
fn a_delta_and_its_base_as_volume_sets_load_together() {
    if !is_root() {
        eprintln!("SKIPPED delta volume load test: containers-storage needs root");
        return;
    }
    let r = Releases::new();
    let cache = r.dir.path().join("cache");
    let sets = r.dir.path().join("sets");
    std::fs::create_dir(&sets).unwrap();
    // v1 in volumes smaller than its 1 MiB layers: they are cut into parts.
    let v1 = sets.join("v1.pinbundle");
    let o = r.env.create(
        &cache,
        &v1,
        &[r.v1().tag_reference()],
        &["--volume-size", "600KiB"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let first = sets.join("v1.pinbundle.001");
    let delta = sets.join("delta.pinbundle");
    let o = r.env.create(
        &cache,
        &delta,
        &[r.v2().tag_reference()],
        &["--volume-size", "600KiB", "--base", first.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The same delta as from the whole v1 bundle: a base's identity does not depend on how
    // it was cut.
    let whole = inspect_json(&r.delta);
    let cut = inspect_json(&sets.join("delta.pinbundle.001"));
    assert_eq!(cut["base"], whole["base"]);
    assert_eq!(cut["blobs"], whole["blobs"]);

    let d = r.dir.path().join("store");
    std::fs::create_dir(&d).unwrap();
    let store = Store::new(&d, "vfs");
    let drop_in = d.join("crio.conf.d/50-pinned-images");
    let (o, report) = load(
        &sets.join("delta.pinbundle.001"),
        &store,
        &drop_in,
        Path::new("/nonexistent/crio.sock"),
        &d.join("lock"),
        &["--reload", "none", "--base", first.to_str().unwrap()],
    );
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stderr),
        text(&o.stdout)
    );
    assert_eq!(
        report["delta"]["fromBases"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    assert!(store.exists(&r.v2().digest_reference()));
}
