//! Build details for `pinbundle version`: the git commit and its date, the build date, the
//! target and the compiler. Works in a clean clone and in a tarball without `.git`
//! (`unknown`); the build date is SOURCE_DATE_EPOCH when set, for reproducible builds.

use std::process::Command;

fn main() {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        let s = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !s.trim().is_empty()).then(|| s.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).map(|c| {
        // `+dirty` as of when this script last ran (it reruns when HEAD or its branch moves).
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
        if dirty { format!("{c}+dirty") } else { c }
    });
    let commit_date = git(&["log", "-1", "--format=%cI", "HEAD"]);
    let build_epoch = std::env::var("SOURCE_DATE_EPOCH").ok().or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs().to_string())
    });
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string());
    let set = |k: &str, v: Option<String>| {
        println!(
            "cargo:rustc-env={k}={}",
            v.unwrap_or_else(|| "unknown".into())
        )
    };
    set("PINBUNDLE_COMMIT", commit);
    set("PINBUNDLE_COMMIT_DATE", commit_date);
    set("PINBUNDLE_BUILD_EPOCH", build_epoch);
    set("PINBUNDLE_TARGET", std::env::var("TARGET").ok());
    set("PINBUNDLE_RUSTC", rustc_version);

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // HEAD and the branch it names (a worktree has its own HEAD, the refs are shared);
    // without .git there is nothing to watch and the script runs once.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(p) = git(&["rev-parse", "--git-path", "packed-refs"]) {
        println!("cargo:rerun-if-changed={p}");
    }
}
