//! `list`, `unpin` and `prune` against a real containers-storage (written by real skopeo,
//! read back with podman) and the `crio` stand-in, which reloads the drop-in directory and
//! reports `pinned` over the CRI.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::create::Env;
use crate::load::{CRIO, Crio, Store, crio_config_args, is_root, load};
use crate::util::{pinbundle, pins_of, run, tempdir, text};

struct Node {
    dir: tempfile::TempDir,
    store: Store,
    conf: PathBuf,
    drop_in: PathBuf,
}

impl Node {
    fn new() -> Node {
        let dir = tempdir();
        let store = Store::new(dir.path(), "vfs");
        let conf = dir.path().join("crio.conf.d");
        std::fs::create_dir(&conf).unwrap();
        let drop_in = conf.join("50-pinned-images");
        Node {
            store,
            conf,
            drop_in,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn bundle(&self, env: &Env, name: &str, images: &[&str]) -> PathBuf {
        let bundle = self.path(name);
        let refs: Vec<String> = images
            .iter()
            .map(|i| env.image(i).tag_reference())
            .collect();
        let o = env.create(&self.path("cache"), &bundle, &refs, &[]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        bundle
    }

    /// `pinbundle CMD --json` with this node's store, configuration, socket, lock and state.
    fn cmd(&self, cmd: &str, socket: &Path, args: &[&str]) -> (Output, Value) {
        let o = run(pinbundle()
            .arg(cmd)
            .args(args)
            .args(self.store.args())
            .args(crio_config_args(&self.drop_in))
            .arg("--crio-drop-in")
            .arg(&self.drop_in)
            .arg("--cri-socket")
            .arg(socket)
            .args(["--confirm-timeout", "10", "--json"])
            .arg("--state-dir")
            .arg(self.path("pinbundle-state")));
        let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        (o, v)
    }

    fn entries(&self) -> Vec<String> {
        pins_of(&std::fs::read_to_string(&self.drop_in).unwrap())
    }
}

/// The pins a load report gives its images, in the bundle's order.
fn pins(report: &Value) -> Vec<String> {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pin"].as_str().unwrap().to_string())
        .collect()
}

/// `list --json`'s entry for `pin`.
fn listed<'a>(list: &'a Value, pin: &str) -> &'a Value {
    list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pin"] == pin)
        .unwrap_or_else(|| panic!("{pin} not listed: {list}"))
}

fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    );
}

#[test]
fn list_unpin_prune_follow_what_pinbundle_loaded() {
    if !is_root() {
        eprintln!("SKIPPED lifecycle test: needs root");
        return;
    }
    let _crio = CRIO.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let node = Node::new();
    let a = node.bundle(&env, "a.pinbundle", &["oci-one", "uncompressed"]);
    let b = node.bundle(&env, "b.pinbundle", &["zstd", "docker"]);

    // `uncompressed` is in the store before pinbundle's loads (loaded with another state dir
    // and not pinned): never pinbundle's to remove.
    let pre = node.path("pre");
    let (o, _) = load(
        &a,
        &node.store,
        &node.drop_in,
        &pre.join("none.sock"),
        &pre.join("load.lock"),
        &["--no-pin"],
    );
    assert_ok(&o, "pre-load");

    // Another file pins by pattern whatever is named like `zstd`.
    let other = node.conf.join("10-other");
    std::fs::write(&other, "[crio.image]\npinned_images = [\"*zstd*\"]\n").unwrap();
    let crio = Crio::start(node.dir.path(), &node.conf, &node.store);
    let pid = crio.pid().to_string();
    let reload = ["--reload", "signal", "--crio-pid", pid.as_str()];
    let lock = node.path("load.lock");

    let (o, ra) = load(&a, &node.store, &node.drop_in, &crio.socket, &lock, &reload);
    assert_ok(&o, "load a");
    let (o, rb) = load(&b, &node.store, &node.drop_in, &crio.socket, &lock, &reload);
    assert_ok(&o, "load b");
    let (pa, pb) = (pins(&ra), pins(&rb));
    let (oci_one, uncompressed, zstd, docker) = (&pa[0], &pa[1], &pb[0], &pb[1]);

    // list: all four pinned, present, and which of them pinbundle added.
    let (o, list) = node.cmd("list", &crio.socket, &[]);
    assert_ok(&o, "list");
    for p in pa.iter().chain(&pb) {
        let e = listed(&list, p);
        assert_eq!(e["inDropIn"], true, "{e}");
        assert_eq!(e["present"], true, "{e}");
        assert_eq!(e["crio"], "pinned", "{e}");
    }
    assert_eq!(
        listed(&list, oci_one)["loadedByPinbundle"],
        false,
        "oci-one was pre-loaded too: {list}"
    );
    assert_eq!(
        listed(&list, uncompressed)["loadedByPinbundle"],
        false,
        "{list}"
    );
    assert_eq!(listed(&list, zstd)["loadedByPinbundle"], true, "{list}");
    assert_eq!(listed(&list, docker)["loadedByPinbundle"], true, "{list}");
    // Without a socket CRI-O's view is unknown, not "no".
    let (o, blind) = node.cmd("list", &node.path("none.sock"), &[]);
    assert_ok(&o, "list without CRI");
    assert_eq!(listed(&blind, docker)["crio"], "unknown", "{blind}");

    // Bad input changes nothing: a name without digest, a pin only another file has.
    std::fs::write(
        &other,
        format!(
            "[crio.image]\npinned_images = [\"*zstd*\", \"quay.io/x/y@sha256:{}\"]\n",
            "c".repeat(64)
        ),
    )
    .unwrap();
    let before = std::fs::read(&node.drop_in).unwrap();
    let (o, r) = node.cmd("unpin", &crio.socket, &[docker.split('@').next().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{r}\n{}", text(&o.stderr));
    let foreign = format!("quay.io/x/y@sha256:{}", "c".repeat(64));
    let (o, r) = node.cmd("unpin", &crio.socket, &[docker, &foreign]);
    assert_eq!(o.status.code(), Some(1), "{r}\n{}", text(&o.stderr));
    assert!(
        r["refused"][0].as_str().unwrap().contains("10-other"),
        "{r}"
    );
    assert_eq!(
        std::fs::read(&node.drop_in).unwrap(),
        before,
        "a refused unpin changed the drop-in"
    );
    std::fs::write(&other, "[crio.image]\npinned_images = [\"*zstd*\"]\n").unwrap();

    // --dry-run changes nothing either.
    let (o, r) = node.cmd("unpin", &crio.socket, &["--dry-run", b.to_str().unwrap()]);
    assert_ok(&o, "unpin --dry-run");
    assert_eq!(r["removed"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(std::fs::read(&node.drop_in).unwrap(), before);

    // unpin b: its pins leave our drop-in, CRI-O reloads and stops pinning docker; zstd stays
    // pinned by the pattern, which is said.
    let reloads = crio.log().matches("Set config pinned_images").count();
    let mut args = vec![b.to_str().unwrap()];
    args.extend(reload);
    let (o, r) = node.cmd("unpin", &crio.socket, &args);
    assert_ok(&o, "unpin b");
    assert_eq!(r["confirmed"], true, "{r}");
    assert!(r["warnings"].to_string().contains("*zstd*"), "{r}");
    let left = node.entries();
    assert!(!left.contains(docker) && !left.contains(zstd), "{left:?}");
    assert!(
        left.contains(oci_one) && left.contains(uncompressed),
        "{left:?}"
    );
    crio.wait_log("Set config pinned_images", reloads + 1);
    let (_, list) = node.cmd("list", &crio.socket, &[]);
    assert_eq!(listed(&list, docker)["inDropIn"], false, "{list}");
    assert_eq!(listed(&list, docker)["crio"], "not-pinned", "{list}");
    assert_eq!(listed(&list, zstd)["crio"], "pinned", "{list}");

    // Unpin the pre-loaded image too, by reference: prune must still keep it.
    let mut args = vec![uncompressed.as_str()];
    args.extend(reload);
    let (o, r) = node.cmd("unpin", &crio.socket, &args);
    assert_ok(&o, "unpin uncompressed");
    assert_eq!(r["confirmed"], true, "{r}");

    // prune --dry-run names docker only and removes nothing.
    let (o, r) = node.cmd("prune", &crio.socket, &["--dry-run"]);
    assert_ok(&o, "prune --dry-run");
    assert_eq!(r["removed"].as_array().unwrap().len(), 1, "{r}");
    assert!(node.store.exists(docker));

    // prune removes exactly docker: zstd is pinned by the other file, uncompressed was there
    // before, oci-one is still pinned.
    let (o, r) = node.cmd("prune", &crio.socket, &[]);
    assert_ok(&o, "prune");
    let removed = r["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{r}");
    assert!(
        removed[0]["names"].to_string().contains(docker.as_str()),
        "{r}"
    );
    assert!(!node.store.exists(docker), "docker still in the store");
    for kept in [oci_one, uncompressed, zstd] {
        assert!(node.store.exists(kept), "{kept} was removed");
    }
    let kept = r["kept"].to_string();
    assert!(
        kept.contains("10-other") && kept.contains("before pinbundle loaded it"),
        "{r}"
    );
    // The record forgot it: a second prune has nothing to remove.
    let (o, r) = node.cmd("prune", &crio.socket, &[]);
    assert_ok(&o, "prune again");
    assert_eq!(r["removed"].as_array().unwrap().len(), 0, "{r}");
    let (_, list) = node.cmd("list", &crio.socket, &[]);
    assert!(
        !list["entries"].to_string().contains(docker.as_str()),
        "{list}"
    );
}
