//! The order of `load`'s imports: images that share no blob are copied at once (up to
//! `--jobs`), and an image that shares a layer waits until the image that owns it is in the
//! store, so the shared layer is unpacked once.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::create::Env;
use crate::load::{Store, load_command};
use crate::util::{ok, run, tempdir, text};

/// A `skopeo` on PATH that logs `start ARGS` and `end ARGS` of every `copy` to `log`, and
/// holds each copy until two have started (at most 20 s): copies that may run at once then
/// provably overlap, and a load that copied one at a time would show it.
fn logging_skopeo(dir: &Path, log: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("skopeo");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
case " $* " in
*" copy "*)
  echo "start $*" >> '{log}'
  i=0
  while [ "$(grep -c '^start' '{log}')" -lt 2 ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done
  /usr/bin/skopeo "$@"; rc=$?
  echo "end $*" >> '{log}'
  exit $rc ;;
esac
exec /usr/bin/skopeo "$@"
"#,
            log = log.display()
        ),
    )
    .unwrap();
    ok(Command::new("chmod").arg("755").arg(&script));
    bin
}

#[test]
fn images_sharing_a_layer_wait_for_its_owner_and_the_others_run_at_once() {
    let env = Env::new();
    let dir = tempdir();
    // oci-one owns the base layer oci-multi shares; uncompressed shares nothing.
    let refs: Vec<String> = ["oci-one", "oci-multi", "uncompressed"]
        .iter()
        .map(|r| env.image(r).tag_reference())
        .collect();
    let bundle = dir.path().join("b.pinbundle");
    let o = env.create(&dir.path().join("cache"), &bundle, &refs, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    let log = dir.path().join("copies.log");
    let bin = logging_skopeo(dir.path(), &log);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let store = Store::new(dir.path(), "vfs");
    let drop_in = dir.path().join("crio.conf.d/50-pinned-images");
    let o = run(load_command(
        &bundle,
        &store,
        &drop_in,
        &dir.path().join("no.sock"),
        &dir.path().join("lock"),
    )
    .env("PATH", &path)
    .args(["--no-pin", "--jobs", "2", "--json"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    for r in &refs {
        assert!(store.exists(r), "{r} is not in the store");
    }

    // The log's lines for each image, by position.
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let at = |event: &str, image: &str| -> Vec<usize> {
        let needle = format!("/{image}");
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with(event) && l.contains(&needle))
            .map(|(i, _)| i)
            .collect()
    };
    let (one_start, one_end) = (at("start", "oci-one"), at("end", "oci-one"));
    let (multi_start, plain_start) = (at("start", "oci-multi"), at("start", "uncompressed"));
    let plain_end = at("end", "uncompressed");
    let all = [&one_start, &one_end, &multi_start, &plain_start, &plain_end];
    assert!(all.iter().all(|v| !v.is_empty()), "{lines:#?}");
    // The owner of the shared layer is in the store before its sharer is copied.
    assert!(
        one_end.iter().max() < multi_start.iter().min(),
        "{lines:#?}"
    );
    // The image that shares nothing ran beside the owner.
    assert!(
        plain_start.iter().min() < one_end.iter().min(),
        "{lines:#?}"
    );
    assert!(
        one_start.iter().min() < plain_end.iter().min(),
        "{lines:#?}"
    );
    // The shared layer is in the store once.
    let layers =
        std::fs::read_to_string(store.root.join("vfs-layers/layers.json")).unwrap_or_default();
    let base = &env.image("oci-one").platforms[0].layers[0].digest;
    assert_eq!(
        layers.matches(base.as_str()).count(),
        1,
        "{base} in layers.json: {layers}"
    );
}
