//! Shared helpers for the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The pinbundle binary under test.
pub fn pinbundle() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pinbundle"));
    c.env("PINBUNDLE_NO_PROGRESS", "1");
    c
}

/// Runs a command, returning its output; panics with stdout/stderr if it could not start.
pub fn run(c: &mut Command) -> Output {
    c.output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs and requires success.
pub fn ok(c: &mut Command) -> Output {
    let o = run(c);
    assert!(
        o.status.success(),
        "{c:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

/// sha256 of a file, as `sha256:<hex>`.
pub fn sha256_file(p: &Path) -> String {
    pinbundle::reference::Digest::of(&std::fs::read(p).unwrap()).to_string()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pinbundle-it-")
        .tempdir()
        .unwrap()
}

#[allow(dead_code)]
pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[allow(dead_code)]
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
