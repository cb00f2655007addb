//! `load` under the signature policy of the original names (policy files shaped like MCO's
//! allowedRegistries and ClusterImagePolicy output), the loopback registry's per-run
//! credential and skopeo's deadline. Real skopeo and a vfs containers-storage in temp dirs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pinbundle::bundle::format::ImageEntry;
use pinbundle::bundle::{BundleSet, SetOptions};
use pinbundle::load::storage::{
    self, CopyTimeout, ImportOptions, PrivateDir, Skopeo, StorageError,
};
use pinbundle::registry::server::{self, BundleServer, Credential};
use serde_json::{Value, json};

use crate::create::Env;
use crate::load::{Store, load, load_command};
use crate::util::{http, run, tempdir, text};

/// The base policy MCO starts from, with `allowedRegistries` applied as
/// `updatePolicyJSON` does: `default` reject, an `insecureAcceptAnything` scope per allowed
/// registry under `docker` (and `atomic`), `docker-daemon` untouched.
fn allowed_registries(allowed: &[&str]) -> Value {
    let scopes: serde_json::Map<String, Value> = allowed
        .iter()
        .map(|r| (r.to_string(), json!([{"type": "insecureAcceptAnything"}])))
        .collect();
    json!({
        "default": [{"type": "reject"}],
        "transports": {
            "atomic": scopes.clone(),
            "docker": scopes,
            "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}
        }
    })
}

/// A ClusterImagePolicy for `scope` as MCO writes it: `sigstoreSigned` with the public key
/// inline and a `signedIdentity`, the rest accepted.
fn cluster_image_policy(scope: &str) -> Value {
    let req = json!([{
        "type": "sigstoreSigned",
        "keyData": "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0KLS0tLS1FTkQgUFVCTElDIEtFWS0tLS0tCg==",
        "signedIdentity": {"type": "matchRepoDigestOrExact"}
    }]);
    json!({
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {
            "atomic": {scope: req.clone()},
            "docker": {scope: req},
            "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}
        }
    })
}

/// A test node: a crio.conf.d whose `signature_policy` names `policy.json` in the temp dir.
struct Node {
    dir: tempfile::TempDir,
    store: Store,
}

impl Node {
    fn new(policy: &Value) -> Node {
        let dir = tempdir();
        let conf_dir = dir.path().join("crio.conf.d");
        std::fs::create_dir(&conf_dir).unwrap();
        let file = dir.path().join("policy.json");
        std::fs::write(&file, serde_json::to_vec_pretty(policy).unwrap()).unwrap();
        std::fs::write(
            conf_dir.join("10-policy.conf"),
            format!("[crio.image]\nsignature_policy = \"{}\"\n", file.display()),
        )
        .unwrap();
        let store = Store::new(dir.path(), "vfs");
        Node { dir, store }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn drop_in(&self) -> std::path::PathBuf {
        self.path("crio.conf.d/50-pinned-images")
    }

    /// `load --json --no-pin` (no CRI-O here: the import is what is judged).
    fn load(&self, bundle: &Path, extra: &[&str]) -> (std::process::Output, Value) {
        let mut args = vec!["--no-pin"];
        args.extend_from_slice(extra);
        load(
            bundle,
            &self.store,
            &self.drop_in(),
            &self.path("no.sock"),
            &self.path("l"),
            &args,
        )
    }

    /// `load --no-pin` with the human output.
    fn human(&self, bundle: &Path) -> std::process::Output {
        let mut c = load_command(
            bundle,
            &self.store,
            &self.drop_in(),
            &self.path("no.sock"),
            &self.path("l"),
        );
        run(c.arg("--no-pin"))
    }

    fn untouched(&self) -> bool {
        !self.store.root.exists() && !self.drop_in().exists()
    }
}

#[test]
fn allowed_registries_admit_the_allowed_and_refuse_the_rest() {
    let env = Env::new();
    let one = env.image("oci-one");
    let other = env.image("zstd");
    // MCO's shape, allowing one repository of the test registry; the loopback registry
    // `load` serves from is not allowed, which used to make every import fail.
    let node = Node::new(&allowed_registries(&[&one.name]));
    let policy_file = node.path("policy.json");
    let work = tempdir();

    let both = env.bundle_of(work.path(), &[one.tag_reference(), other.tag_reference()]);
    let (o, report) = node.load(&both, &[]);
    exits(&o, 1);
    assert_eq!(report["ok"], false);
    let refused = report["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{report}");
    let why = refused[0].as_str().unwrap();
    assert!(
        why.contains(&other.tag_reference())
            && why.contains(&policy_file.display().to_string())
            && why.contains("rule default")
            && why.contains("reject"),
        "{why}"
    );
    assert_eq!(report["images"][0]["policy"]["admitted"], true, "{report}");
    assert_eq!(report["images"][1]["policy"]["requirement"], "reject");
    assert!(node.untouched(), "a refused load touched the node");

    // The same refusal, in words.
    let o = node.human(&both);
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o.stdout);
    assert!(
        out.contains("refused by the signature policy, nothing was changed"),
        "{out}"
    );

    // The allowed image alone loads, although the machine's rules reject its loopback name.
    let dir = tempdir();
    let alone = env.bundle_of(dir.path(), &[one.tag_reference()]);
    let o = node.human(&alone);
    exits(&o, 0);
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!(
            "policy: {} admits every image (transports.docker[\"{}\"])",
            policy_file.display(),
            one.name
        )),
        "{out}"
    );
    assert!(node.store.exists(&one.digest_reference()));
}

#[test]
fn a_cluster_image_policy_needs_signatures_unless_another_policy_is_named() {
    let env = Env::new();
    let one = env.image("oci-one");
    let scope = one.name.rsplit_once('/').unwrap().0.to_string();
    let node = Node::new(&cluster_image_policy(&scope));
    let work = tempdir();
    let bundle = env.bundle_of(work.path(), &[one.tag_reference()]);

    let (o, report) = node.load(&bundle, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let why = report["refused"][0].as_str().unwrap_or_default();
    assert!(
        why.contains("sigstoreSigned")
            && why.contains(&format!("transports.docker[\"{scope}\"]"))
            && why.contains("bundles carry no image signatures")
            && why.contains("--signature-policy"),
        "{report}"
    );
    assert!(node.untouched());

    // The operator names another policy deliberately. It rejects by default, which would
    // also reject the loopback name skopeo reads: only the original name's rule counts.
    let accepting = node.path("accept.json");
    std::fs::write(&accepting, allowed_registries(&[&scope]).to_string()).unwrap();
    // CRI-O ≥ 1.33 would apply a namespace's own policy at container creation: said, not
    // refused (the pod's namespace is unknown here).
    let namespaced = node.path("policies");
    std::fs::create_dir(&namespaced).unwrap();
    std::fs::write(
        namespaced.join("payments.json"),
        cluster_image_policy(&scope).to_string(),
    )
    .unwrap();
    std::fs::write(
        node.path("crio.conf.d/20-policy-dir.conf"),
        format!(
            "[crio.image]\nsignature_policy_dir = \"{}\"\n",
            namespaced.display()
        ),
    )
    .unwrap();
    let (o, report) = node.load(
        &bundle,
        &["--signature-policy", accepting.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{report}", text(&o.stderr));
    assert_eq!(
        report["images"][0]["policy"],
        json!({
            "file": accepting,
            "scope": format!("transports.docker[\"{scope}\"]"),
            "requirement": "insecureAcceptAnything",
            "admitted": true
        })
    );
    assert_eq!(report["images"][0]["status"], "loaded");
    assert!(node.store.exists(&one.digest_reference()));
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("payments.json") && warnings.contains("namespace `payments`"),
        "{warnings}"
    );

    // The named policy requiring signatures refuses too, without suggesting itself.
    let (o, report) = node.load(
        &bundle,
        &[
            "--signature-policy",
            node.path("policy.json").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        !report["refused"][0]
            .as_str()
            .unwrap()
            .contains("--signature-policy"),
        "{report}"
    );
}

#[test]
fn an_unreadable_or_invalid_policy_changes_nothing() {
    let env = Env::new();
    let one = env.image("oci-one");
    let node = Node::new(&json!({"default": [{"type": "acceptEverything"}]}));
    let work = tempdir();
    let bundle = env.bundle_of(work.path(), &[one.tag_reference()]);
    let (o, _) = node.load(&bundle, &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains(&node.path("policy.json").display().to_string())
            && err.contains("acceptEverything"),
        "{err}"
    );
    let (o, _) = node.load(&bundle, &["--signature-policy", "/nonexistent/policy.json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("/nonexistent/policy.json"));
    assert!(node.untouched());
}

/// Asserts the exit code, showing both outputs when it differs.
fn exits(o: &std::process::Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// A bundle of the `oci-one` fixture in `dir`, opened, and its image.
fn oci_one(dir: &Path) -> (Arc<BundleSet>, ImageEntry) {
    let env = Env::new();
    let path = env.bundle_of(dir, &[env.image("oci-one").tag_reference()]);
    let opts = SetOptions {
        allow_partial: false,
        find_siblings: true,
    };
    let bundle = Arc::new(BundleSet::open(&[path], opts).unwrap());
    let image = bundle.manifest().images[0].clone();
    (bundle, image)
}

#[test]
fn the_loopback_registry_answers_only_with_the_run_credential() {
    let work = tempdir();
    let (bundle, image) = oci_one(work.path());
    let credential = Credential::random();
    let srv = server::serve_in_thread(
        BundleServer::new(bundle).with_credential(&credential),
        BundleServer::LOOPBACK_EPHEMERAL,
    )
    .unwrap();
    let path = format!(
        "/v2/{}/manifests/{}",
        BundleServer::repository_of(&image),
        image.digest
    );
    for (what, auth) in [
        ("no credential", None),
        (
            "another password",
            Some(Credential {
                password: "guess".into(),
                ..credential.clone()
            }),
        ),
    ] {
        let header = auth.map(|c| format!("Basic {}", c.basic()));
        let extra: Vec<(&str, &str)> = header
            .iter()
            .map(|h| ("Authorization", h.as_str()))
            .collect();
        let r = http(srv.addr(), "GET", &path, &extra);
        assert_eq!(r.status, 401, "{what}");
        assert!(
            r.headers["www-authenticate"].starts_with("Basic realm="),
            "{what}: {:?}",
            r.headers
        );
    }
    let good = format!("Basic {}", credential.basic());
    let r = http(srv.addr(), "GET", &path, &[("Authorization", &good)]);
    assert_eq!(r.status, 200);

    // skopeo without the auth file is refused; with it, it copies.
    let dir = tempdir();
    let store = storage::Store::explicit("vfs", &dir.path().join("r"), &dir.path().join("rr"));
    let err = storage::import(srv.addr(), &image, &store, &ImportOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("401") || msg.contains("unauthorized") || msg.contains("authentication"),
        "{msg}"
    );
    let private = PrivateDir::new().unwrap();
    let opts = ImportOptions {
        auth_file: Some(private.write_auth_file(srv.addr(), &credential).unwrap()),
        ..ImportOptions::default()
    };
    let done = storage::import(srv.addr(), &image, &store, &opts).unwrap();
    assert!(
        matches!(done, storage::ImportOutcome::Imported { .. }),
        "{done:?}"
    );
}

#[test]
fn a_hung_skopeo_is_killed_at_its_deadline() {
    let work = tempdir();
    let (_bundle, image) = oci_one(work.path());
    let fake = work.path().join("skopeo");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let store = storage::Store::explicit("vfs", &work.path().join("r"), &work.path().join("rr"));
    let opts = ImportOptions {
        skopeo: Skopeo::new().with_program(&fake),
        timeout: CopyTimeout {
            base: Duration::from_secs(1),
            bytes_per_second: u64::MAX,
        },
        ..ImportOptions::default()
    };
    let addr = "127.0.0.1:9".parse().unwrap();
    let err = storage::import(addr, &image, &store, &opts).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StorageError::Timeout { .. }), "{msg}");
    assert!(
        msg.contains(&format!("importing {}@{}", image.name, image.digest))
            && msg.contains("within 1s"),
        "{msg}"
    );
}
