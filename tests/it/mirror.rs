//! The site-mirror files read by the real tools: with pinbundle's drop-in as the only file in
//! `registries.conf.d`, skopeo and podman pull an image by its ORIGINAL name (a registry that does not
//! exist) and get it from the mirror, a real docker-registry on loopback.

use std::path::Path;
use std::process::Command;

use pinbundle::mirror::{self, Mirror, Transport};
use pinbundle::reference::Reference;
use pinbundle_fixtures::RegistryClient;
use pinbundle_fixtures::image::{Flavor, LINUX_AMD64, image_from_single, single};
use pinbundle_fixtures::layer::{Compression, TarBuilder};
use pinbundle_fixtures::registry::TestRegistry;

use crate::util::{ok, run, tempdir, text};

/// `tool` seeing `dropins` as /etc/containers/registries.conf.d (a private mount namespace:
/// the host's files are untouched; neither skopeo 1.9 nor podman has a flag for the
/// directory), with no credentials.
fn with_dropins(tool: &str, dropins: &Path, home: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/containers/registries.conf.d && exec "$@""#)
        .arg(dropins)
        .arg(tool)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .env("XDG_RUNTIME_DIR", home);
    c
}

/// A real registry acting as the site mirror, holding one image where the mapping keeps
/// `example.invalid/ns/app` (`site/ns/app`), and the mappings of that repository (asked for
/// by tag) and of `example.invalid/ns/other` (by digest only).
struct Site {
    registry: TestRegistry,
    mirror: Mirror,
    maps: Vec<mirror::Mapping>,
    digest: String,
}

impl Site {
    fn new() -> Site {
        let registry = TestRegistry::start().unwrap();
        let mut t = TarBuilder::new();
        t.file("etc/site", b"mirrored\n".to_vec());
        let layer = t
            .build(Compression::Gzip, Compression::Gzip.oci_media_type())
            .unwrap();
        let image = image_from_single(
            "ns/app",
            "v1",
            single(Flavor::Oci, "ns/app", &LINUX_AMD64, vec![layer]).unwrap(),
        );
        let pushed = RegistryClient::new(registry.addr(), None)
            .unwrap()
            .push_image("site/", &image)
            .unwrap();
        let mirror: Mirror = format!("{}/site", registry.addr()).parse().unwrap();
        let app: Reference = "example.invalid/ns/app:v1".parse().unwrap();
        let other: Reference = "example.invalid/ns/other".parse().unwrap();
        let maps = mirror::mappings(&mirror, &[(app, true), (other, false)]).unwrap();
        assert_eq!(
            maps[0].mirror,
            format!("{}/site/ns/app", registry.addr()),
            "{maps:?}"
        );
        Site {
            registry,
            mirror,
            maps,
            digest: pushed.digest,
        }
    }
}

/// Kills and reaps a daemon the test started, however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn skopeo_and_podman_pull_by_the_original_name_from_the_mirror() {
    if !crate::load::is_root() {
        eprintln!("SKIPPED: needs root for a private mount namespace");
        return;
    }
    let Site {
        registry,
        maps,
        digest,
        ..
    } = Site::new();
    let dir = tempdir();
    let conf = dir.path().join("dropins");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&conf).unwrap();
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(
        conf.join("99-pinbundle-mirror.conf"),
        mirror::registries_conf(&maps, &Transport::PlainHttp),
    )
    .unwrap();
    let by_digest = format!("docker://example.invalid/ns/app@{}", digest);
    let inspect = |conf: &Path, image: &str| {
        run(with_dropins("skopeo", conf, dir.path())
            .args(["inspect", "--raw"])
            .arg(image))
    };

    // Without the drop-in the original name leads nowhere: the mirror is what answers.
    let o = inspect(&empty, &by_digest);
    assert!(!o.status.success(), "{}", text(&o.stdout));
    let o = inspect(&conf, &by_digest);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        pinbundle::reference::Digest::of(&o.stdout).to_string(),
        digest
    );
    // Asked for by tag, so tag pulls are mirrored too.
    let o = inspect(&conf, "docker://example.invalid/ns/app:v1");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        pinbundle::reference::Digest::of(&o.stdout).to_string(),
        digest
    );
    // `other` was only ever pinned by digest: its tags are not sent to the mirror.
    let o = inspect(&conf, "docker://example.invalid/ns/other:v1");
    assert!(!o.status.success());
    assert!(
        !text(&o.stderr).contains(&registry.addr().to_string()),
        "{}",
        text(&o.stderr)
    );

    // podman, into a store of its own, by the original name.
    let root = dir.path().join("root");
    let runroot = dir.path().join("runroot");
    let podman = |args: &[&str]| {
        ok(with_dropins("podman", &conf, dir.path())
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot)
            .args(["--storage-driver", "vfs"])
            .args(args))
    };
    podman(&["pull", "-q", &by_digest["docker://".len()..]]);
    let o = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        &by_digest["docker://".len()..],
    ]);
    assert_eq!(text(&o.stdout).trim(), digest);
}

#[test]
fn containerd_pulls_by_the_original_name_through_hosts_toml() {
    if !crate::load::is_root() {
        eprintln!("SKIPPED: needs root to run containerd");
        return;
    }
    let site = Site::new();
    let dir = tempdir();
    let certs = dir.path().join("certs.d");
    for f in mirror::containerd_hosts(&site.mirror, &site.maps, &Transport::PlainHttp) {
        let d = certs.join(&f.registry);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("hosts.toml"), f.contents).unwrap();
    }
    let sock = dir.path().join("containerd.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n",
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            sock = sock.display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
    let daemon = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stderr(log)
        .spawn()
        .unwrap();
    let _daemon = KillOnDrop(daemon);
    let ctr = |args: &[&str]| {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&sock)
            .args(["--namespace", "it"])
            .args(args);
        run(&mut c)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ctr(&["version"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "containerd did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let hosts = certs.to_str().unwrap();
    let by_digest = format!("example.invalid/ns/app@{}", site.digest);
    let pull = |image: &str| {
        ctr(&[
            "image",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            hosts,
            image,
        ])
    };
    let o = pull(&by_digest);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = pull("example.invalid/ns/app:v1");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = ctr(&["image", "ls"]);
    let listed = text(&o.stdout);
    assert!(listed.contains("example.invalid/ns/app:v1"), "{listed}");
    assert!(listed.contains(&site.digest), "{listed}");
    // Without the hosts file the original registry is asked, and does not exist.
    let o = ctr(&[
        "image",
        "pull",
        "--snapshotter",
        "native",
        "example.invalid/ns/other:v1",
    ]);
    assert!(!o.status.success());
    drop(site.registry);
}

#[test]
fn manifests_writes_the_mirror_files_for_any_bundle() {
    let env = crate::create::Env::new();
    let dir = tempdir();
    let refs = vec![
        env.image("oci-one").tag_reference(),
        env.image("docker").digest_reference(),
    ];
    let bundle = env.bundle_of(dir.path(), &refs);
    let out = dir.path().join("out");
    let o = ok(crate::util::pinbundle()
        .arg("manifests")
        .arg(&bundle)
        .arg("-o")
        .arg(&out)
        .args(["--mirror", "mirror.example:5000/site"])
        .args(["--mirror-ca", "/etc/pki/site-ca.crt", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let files: Vec<String> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let p = Path::new(f["path"].as_str().unwrap());
            p.strip_prefix(&out).unwrap().display().to_string()
        })
        .collect();
    let registry = env.registry.addr().to_string();
    let idms_name = files
        .iter()
        .find(|f| f.ends_with("-imagedigestmirrorset.yaml"))
        .unwrap_or_else(|| panic!("{files:?}"));
    let idms: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(out.join(idms_name)).unwrap()).unwrap();
    assert_eq!(idms["apiVersion"], "config.openshift.io/v1");
    assert_eq!(
        idms["spec"]["imageDigestMirrors"],
        serde_json::json!([
            {"source": format!("{registry}/fixtures/docker"), "mirrors": ["mirror.example:5000/site/fixtures/docker"]},
            {"source": format!("{registry}/fixtures/oci-one"), "mirrors": ["mirror.example:5000/site/fixtures/oci-one"]},
        ])
    );
    // Only oci-one was asked for by tag.
    let itms_name = files
        .iter()
        .find(|f| f.ends_with("-imagetagmirrorset.yaml"))
        .unwrap();
    let itms: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(out.join(itms_name)).unwrap()).unwrap();
    assert_eq!(
        itms["spec"]["imageTagMirrors"][0]["source"],
        format!("{registry}/fixtures/oci-one")
    );
    assert_eq!(itms["spec"]["imageTagMirrors"].as_array().unwrap().len(), 1);
    let hosts: toml::Table = toml::from_str(
        &std::fs::read_to_string(
            out.join(format!("nodes/containerd/certs.d/{registry}/hosts.toml")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        hosts["host"]["https://mirror.example:5000/v2/site"]["ca"].as_str(),
        Some("/etc/pki/site-ca.crt")
    );
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("nodes/registries.conf.d/99-pinbundle-") && f.ends_with(".conf")),
        "{files:?}"
    );
    // Any bundle gets its PinnedImageSets too (one pool: worker), named as `load` names them.
    let sets_name = files
        .iter()
        .find(|f| f.ends_with("-pinned-image-sets.yaml"))
        .unwrap_or_else(|| panic!("{files:?}"));
    let sets: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&std::fs::read_to_string(out.join(sets_name)).unwrap())
            .unwrap();
    assert_eq!(sets.len(), 1);
    assert_eq!(sets[0]["kind"], "PinnedImageSet");
    let mut pinned: Vec<&str> = sets[0]["spec"]["pinnedImages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    pinned.sort_unstable();
    let mut want = vec![
        env.image("docker").digest_reference(),
        env.image("oci-one").digest_reference(),
    ];
    want.sort();
    assert_eq!(pinned, want);
    let stem = sets_name.strip_suffix("-pinned-image-sets.yaml").unwrap();
    assert_eq!(sets[0]["metadata"]["name"], format!("{stem}-worker"));
    // A bad mirror is refused before anything is written.
    let bad = dir.path().join("bad");
    let o = run(crate::util::pinbundle()
        .arg("manifests")
        .arg(&bundle)
        .arg("-o")
        .arg(&bad)
        .args(["--mirror", "mirror/site"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("is not a mirror"),
        "{}",
        text(&o.stderr)
    );
    assert!(!bad.exists());
}
