//! `load`'s headroom and multi-platform planning with real components: kubelet's thresholds
//! (its configuration file) and `--min-free` against a small tmpfs store, a two-platform index
//! of which only one platform is imported (space and deltas), and the PinnedImageSets written
//! for it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pinbundle_fixtures::Pushed;
use pinbundle_fixtures::RegistryClient;
use pinbundle_fixtures::image::{Flavor, Image, LINUX_AMD64, LINUX_ARM64_V8};
use pinbundle_fixtures::layer::{Compression, FillerReader, Layer, TarBuilder};
use pinbundle_fixtures::registry::TestRegistry;
use serde_json::Value;

use crate::create::Env;
use crate::load::{Store, is_root, load};
use crate::util::{ok, pinbundle, tempdir, text};

/// A gzip layer holding `len` bytes of seeded filler (the same seed, the same blob).
fn layer(seed: u64, len: u64) -> Layer {
    let mut data = Vec::new();
    FillerReader::new(seed, len).read_to_end(&mut data).unwrap();
    let mut t = TarBuilder::new();
    t.file(&format!("data/layer-{seed}.bin"), data);
    t.build(Compression::Gzip, Compression::Gzip.oci_media_type())
        .unwrap()
}

/// `repo:tag`, an OCI index of a linux/amd64 and a linux/arm64/v8 image.
fn two_platforms(repo: &str, tag: &str, amd64: Vec<Layer>, arm64: Vec<Layer>) -> Image {
    use pinbundle_fixtures::image::{image_from_instances, single};
    let amd = single(Flavor::Oci, repo, &LINUX_AMD64, amd64).unwrap();
    let arm = single(Flavor::Oci, repo, &LINUX_ARM64_V8, arm64).unwrap();
    image_from_instances(Flavor::Oci, repo, tag, vec![amd, arm]).unwrap()
}

fn push(registry: &TestRegistry, image: &Image) -> Pushed {
    RegistryClient::new(registry.addr(), None)
        .unwrap()
        .push_image("", image)
        .unwrap()
}

/// The report's entry for the store's filesystem, which comes first.
fn image_fs(report: &Value) -> &Value {
    let fs = &report["space"]["filesystems"][0];
    assert_eq!(fs["imageFilesystem"], true, "{report}");
    fs
}

/// A tmpfs of `mib` MiB at `dir/name`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, name: &str, mib: u64) -> Tmpfs {
        let p = dir.join(name);
        std::fs::create_dir(&p).unwrap();
        ok(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&p));
        Tmpfs(p)
    }

    fn is_empty(&self) -> bool {
        std::fs::read_dir(&self.0).unwrap().next().is_none()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A bundle of one single-platform image with a 10 MiB layer (about 7.5 MiB compressed).
fn ten_mib_bundle(dir: &Path) -> (Env, PathBuf) {
    use pinbundle_fixtures::image::{image_from_single, single};
    let registry = TestRegistry::start().unwrap();
    let one = single(
        Flavor::Oci,
        "space/ten",
        &LINUX_AMD64,
        vec![layer(7, 10 << 20)],
    )
    .unwrap();
    let image = image_from_single("space/ten", "v1", one);
    let pushed = push(&registry, &image);
    let env = Env {
        registry,
        pushed: vec![pushed],
    };
    let bundle = env.bundle_of(dir, &[env.pushed[0].tag_reference()]);
    (env, bundle)
}

/// The numbers of "X MiB needed = A … + B … + C … + D … kept free", in hundredths of a MiB,
/// and the free space after it.
fn shortfall(err: &str) -> ([u64; 5], u64) {
    let mib = |s: &str| -> u64 {
        let (i, f) = s.trim().split_once('.').unwrap();
        i.parse::<u64>().unwrap() * 100 + f.parse::<u64>().unwrap()
    };
    let start = err.find(": ").unwrap() + 2;
    let after = &err[start..];
    let nums: Vec<u64> = after
        .split(" MiB")
        .take(6)
        .map(|chunk| mib(chunk.rsplit([' ', '(', '=', '+']).next().unwrap()))
        .collect();
    let free_at = err.rfind(" MiB free").unwrap();
    let free = mib(err[..free_at].rsplit(' ').next().unwrap());
    ([nums[0], nums[1], nums[2], nums[3], nums[4]], free)
}

fn load_space(bundle: &Path, store: &Store, dir: &Path, extra: &[&str]) -> (Output, Value) {
    let mut args = vec!["--no-pin"];
    args.extend_from_slice(extra);
    load(
        bundle,
        store,
        &dir.join("crio.conf.d/50-pinned-images"),
        &dir.join("no.sock"),
        &dir.join("lock"),
        &args,
    )
}

/// The 10 MiB bundle and an empty vfs store on a 100 MiB tmpfs.
struct Small {
    env: Env,
    bundle: PathBuf,
    store: Store,
    fs: Tmpfs,
    dir: tempfile::TempDir,
}

impl Small {
    fn new() -> Small {
        let dir = tempdir();
        let (env, bundle) = ten_mib_bundle(dir.path());
        let fs = Tmpfs::mount(dir.path(), "fs", 100);
        let store = Store::new(&fs.0, "vfs");
        Small {
            env,
            bundle,
            store,
            fs,
            dir,
        }
    }

    fn load(&self, extra: &[&str]) -> (Output, Value) {
        load_space(&self.bundle, &self.store, self.dir.path(), extra)
    }

    /// Checks that `o` refused for space, keeping `reserve` hundredths of a MiB free, with
    /// numbers that add up and nothing written; returns the message.
    fn refused(&self, o: &Output, reserve: u64) -> String {
        let err = text(&o.stderr);
        // Not enough space is a refusal of the input: exit 1.
        assert_eq!(o.status.code(), Some(1), "{err}");
        let ([needed, unpacked, staged, margin, kept], free) = shortfall(&err);
        assert_eq!(needed, unpacked + staged + margin + kept, "{err}");
        assert_eq!(kept, reserve, "{err}");
        assert!(unpacked >= 1000 && needed > free, "{err}");
        assert!(self.fs.is_empty(), "the store was written");
        err
    }

    fn loaded(&self) -> bool {
        self.store.exists(&self.env.pushed[0].digest_reference())
    }
}

#[test]
fn kubelet_thresholds_from_its_config_refuse_what_its_defaults_admit() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to mount a small tmpfs");
        return;
    }
    let small = Small::new();
    let dir = &small.dir;
    let kubelet = |name: &str, imagefs: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                "kind: KubeletConfiguration\nevictionHard:\n  imagefs.available: \"{imagefs}\"\n"
            ),
        )
        .unwrap();
        p
    };
    let strict = kubelet("strict.yaml", "30%");
    let (o, _) = small.load(&["--kubelet-config", strict.to_str().unwrap()]);
    // 30 % of 100 MiB kept free.
    let err = small.refused(&o, 3000);
    assert!(
        err.contains(&format!(
            "imagefs.available 30% of 100.00 MiB, from {})",
            strict.display()
        )),
        "{err}"
    );

    // kubelet's default for the image filesystem, 15 %: it fits.
    let default = kubelet("default.yaml", "15%");
    let (o, r) = small.load(&["--kubelet-config", default.to_str().unwrap()]);
    assert!(o.status.success(), "{}\n{r}", text(&o.stderr));
    let fs0 = image_fs(&r);
    assert_eq!(fs0["reserve"]["rule"], "imagefs.available", "{r}");
    assert_eq!(fs0["reserve"]["bytes"], 15 << 20, "{r}");
    assert!(small.loaded());
}

#[test]
fn min_free_refuses_and_says_so() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to mount a small tmpfs");
        return;
    }
    let small = Small::new();
    let (o, _) = small.load(&["--min-free", "30Mi"]);
    let err = small.refused(&o, 3000);
    assert!(err.contains("(--min-free 30Mi, the command line)"), "{err}");
    let (o, r) = small.load(&["--min-free", "15Mi"]);
    assert!(o.status.success(), "{}\n{r}", text(&o.stderr));
    assert_eq!(image_fs(&r)["reserve"]["rule"], "--min-free");
    assert!(small.loaded());
}

#[test]
fn a_two_platform_bundle_needs_room_for_one_and_writes_pinned_image_sets() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to mount a small tmpfs");
        return;
    }
    let registry = TestRegistry::start().unwrap();
    // amd64: 256 KiB; arm64: 20 MiB, which the 72 MiB store could not hold with the margin.
    let image = two_platforms(
        "space/multi",
        "v1",
        vec![layer(11, 256 << 10)],
        vec![layer(12, 20 << 20)],
    );
    let pushed = push(&registry, &image);
    let env = Env {
        registry,
        pushed: vec![pushed],
    };
    let dir = tempdir();
    let bundle = dir.path().join("multi.pinbundle");
    let o = env.create(
        &dir.path().join("cache"),
        &bundle,
        &[env.pushed[0].tag_reference()],
        &["--all-platforms"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let fs = Tmpfs::mount(dir.path(), "fs", 72);
    let store = Store::new(&fs.0, "vfs");
    let sets = dir.path().join("sets.yaml");
    let sets_arg = sets.to_str().unwrap();

    // A bad pool name is refused before anything changes.
    let (o, _) = load_space(
        &bundle,
        &store,
        dir.path(),
        &[
            "--platform",
            "linux/amd64",
            "--pinned-image-set-out",
            sets_arg,
            "--pool",
            "Bad_Pool",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("Bad_Pool"), "{}", text(&o.stderr));
    assert!(fs.is_empty() && !sets.exists());

    let (o, r) = load_space(
        &bundle,
        &store,
        dir.path(),
        &[
            "--platform",
            "linux/amd64",
            "--pinned-image-set-out",
            sets_arg,
            "--pinned-image-set-api",
            "v1alpha1",
            "--pool",
            "worker",
            "--pool",
            "master",
        ],
    );
    assert!(o.status.success(), "{}\n{r}", text(&o.stderr));
    let arm_layer = env.pushed[0].platforms[1].layers[0].size;
    assert!(
        r["space"]["staged"].as_u64().unwrap() < arm_layer,
        "the arm64 layer was counted: {r}"
    );
    assert!(store.exists(&env.pushed[0].digest_reference()));

    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&std::fs::read_to_string(&sets).unwrap()).unwrap();
    assert_eq!(docs.len(), 2);
    for (doc, pool) in docs.iter().zip(["master", "worker"]) {
        assert_eq!(
            doc["apiVersion"],
            "machineconfiguration.openshift.io/v1alpha1"
        );
        assert_eq!(doc["kind"], "PinnedImageSet");
        let name = doc["metadata"]["name"].as_str().unwrap();
        assert!(
            name.starts_with("pinbundle-") && name.ends_with(&format!("-{pool}")),
            "{name}"
        );
        assert_eq!(
            doc["metadata"]["labels"]["machineconfiguration.openshift.io/role"],
            pool
        );
        assert_eq!(
            doc["spec"]["pinnedImages"],
            serde_json::json!([{ "name": env.pushed[0].digest_reference() }])
        );
    }
}

#[test]
fn a_multi_platform_delta_needs_only_the_imported_platforms_layers() {
    if !is_root() {
        eprintln!("SKIPPED: containers-storage needs root");
        return;
    }
    let registry = TestRegistry::start().unwrap();
    // Both releases share the amd64 layer `s` and the arm64 layer `b0`: a delta of v2 against
    // v1 omits both. A node that loaded v1 for amd64 has `s`, never `b0`.
    let release = |tag: &str, own: u64| {
        two_platforms(
            "space/delta",
            tag,
            vec![layer(21, 64 << 10), layer(own, 64 << 10)],
            vec![layer(22, 64 << 10), layer(own + 100, 64 << 10)],
        )
    };
    let v1 = push(&registry, &release("v1", 31));
    let v2 = push(&registry, &release("v2", 32));
    let env = Env {
        registry,
        pushed: vec![v1, v2],
    };
    let dir = tempdir();
    let create = |name: &str, image: usize, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec!["--all-platforms"];
        args.extend_from_slice(extra);
        let o = env.create(
            &dir.path().join("cache"),
            &out,
            &[env.pushed[image].tag_reference()],
            &args,
        );
        assert!(o.status.success(), "{name}: {}", text(&o.stderr));
        out
    };
    let v1_bundle = create("v1.pinbundle", 0, &[]);
    let delta = create(
        "delta.pinbundle",
        1,
        &["--base", v1_bundle.to_str().unwrap()],
    );
    let shared_amd = &env.pushed[1].platforms[0].layers[0].digest;
    let shared_arm = &env.pushed[1].platforms[1].layers[0].digest;
    ok(pinbundle().arg("verify").arg(&delta));

    // An empty store: refused, naming the amd64 layer only.
    let scratch = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        (Store::new(&d, "vfs"), d)
    };
    let amd64 = ["--platform", "linux/amd64"];
    let (store, d) = scratch("empty");
    let (o, _) = load_space(&delta, &store, &d, &amd64);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(shared_amd.as_str()), "{err}");
    assert!(!err.contains(shared_arm.as_str()), "{err}");
    assert!(store.images_json().is_empty());

    // v1 loaded for amd64: the delta loads; `b0` is not asked for.
    let (store, d) = scratch("has-v1");
    let (o, _) = load_space(&v1_bundle, &store, &d, &amd64);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (o, r) = load_space(&delta, &store, &d, &amd64);
    assert!(o.status.success(), "{}\n{r}", text(&o.stderr));
    let from: Vec<&str> = r["delta"]["fromStorage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["digest"].as_str().unwrap())
        .collect();
    assert_eq!(from, [shared_amd.as_str()], "{r}");
    assert_eq!(r["images"][0]["status"], "loaded", "{r}");
    assert!(store.exists(&env.pushed[1].digest_reference()));
}
