//! How the CLI meets its output: a reader that goes away (`pinbundle inspect … | head -1`)
//! ends the command quietly with status 0; any other failure to write is an error (exit 2).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;

use crate::util::{head_for, pinbundle, run, tempdir, text, write_members};

/// A bundle with no images, written offline.
pub(crate) fn empty_bundle(dir: &Path) -> std::path::PathBuf {
    let (manifest, oci_layout, index_json) = head_for(std::iter::empty());
    let bytes = write_members(&[
        ("pinbundle.json".into(), manifest),
        ("oci-layout".into(), oci_layout),
        ("index.json".into(), index_json),
    ]);
    let path = dir.join("b.pinbundle");
    fs_err::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = tempdir();
    let bundle = empty_bundle(dir.path());
    for args in [
        &["inspect"][..],
        &["inspect", "--json"],
        &["verify"],
        &["verify", "--json"],
    ] {
        // A socket whose peer is gone: every write fails with EPIPE, deterministically
        // (no race with a reader that has yet to close).
        let (ours, reader) = UnixStream::pair().unwrap();
        drop(reader);
        let o = run(pinbundle()
            .args(args)
            .arg(&bundle)
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(ours))));
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o.stderr));
        assert_eq!(text(&o.stderr), "", "{args:?}");
    }
}

#[test]
fn another_write_failure_is_an_error() {
    let dir = tempdir();
    let bundle = empty_bundle(dir.path());
    let full = fs_err::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = run(pinbundle()
        .arg("inspect")
        .arg(&bundle)
        .stdout(Stdio::from(full.into_parts().0)));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).starts_with("error: No space left on device"),
        "{}",
        text(&o.stderr)
    );
}
