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

#[test]
fn skopeo_and_podman_pull_by_the_original_name_from_the_mirror() {
    if !crate::load::is_root() {
        eprintln!("SKIPPED: needs root for a private mount namespace");
        return;
    }
    let registry = TestRegistry::start().unwrap();
    let mut t = TarBuilder::new();
    t.file("etc/site", b"mirrored\n".to_vec());
    let layer = t
        .build(Compression::Gzip, Compression::Gzip.oci_media_type())
        .unwrap();
    // Kept where the mirror mapping puts `example.invalid/ns/app`: `site/ns/app`.
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
    let by_digest = format!("docker://example.invalid/ns/app@{}", pushed.digest);
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
        pushed.digest
    );
    // Asked for by tag, so tag pulls are mirrored too.
    let o = inspect(&conf, "docker://example.invalid/ns/app:v1");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        pinbundle::reference::Digest::of(&o.stdout).to_string(),
        pushed.digest
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
    assert_eq!(text(&o.stdout).trim(), pushed.digest);
}
