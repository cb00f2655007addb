//! Writing straight onto a USB stick: FAT32 and exFAT hold no file modes, and the kernel
//! answers a chmod to 0644 there with EPERM (`fat_setattr`; files show the mount's fmask).
//! No vfat module here, so a `bindfs --chmod-deny` mount stands in: a FUSE passthrough whose
//! chmod fails with EPERM while create, write, fsync, flock, rename and unlink work.
//! Without bindfs or a usable /dev/fuse the tests say SKIPPED and why.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use pinbundle::atomic::{Stage, remove_abandoned};
use serde_json::Value;

use crate::create::Env;
use crate::util::{ok, pinbundle, run, tempdir, text};

/// A directory where chmod fails with EPERM, unmounted on drop.
struct NoChmod {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl NoChmod {
    /// Mounts `bindfs --chmod-deny` over a fresh directory, or says why it cannot.
    fn mount() -> Result<NoChmod, String> {
        if !Path::new("/dev/fuse").exists() {
            return Err("no /dev/fuse in this container".into());
        }
        let dir = tempdir();
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("stick"));
        for d in [&backing, &mnt] {
            std::fs::create_dir(d).unwrap();
        }
        let o = Command::new("bindfs")
            .arg("--chmod-deny")
            .arg(&backing)
            .arg(&mnt)
            .output()
            .map_err(|e| format!("cannot run bindfs ({e}); scripts/install-deps installs it"))?;
        if !o.status.success() {
            return Err(format!("bindfs failed: {}", text(&o.stderr).trim()));
        }
        let m = NoChmod { mnt, _dir: dir };
        // The stand-in must refuse what FAT refuses, or the tests below prove nothing.
        let probe = m.mnt.join("probe");
        std::fs::write(&probe, b"").unwrap();
        let e = std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644))
            .expect_err("bindfs --chmod-deny let a chmod through");
        assert_eq!(e.raw_os_error(), Some(libc_eperm()), "{e}");
        std::fs::remove_file(&probe).unwrap();
        Ok(m)
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for NoChmod {
    fn drop(&mut self) {
        let unmounted = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn libc_eperm() -> i32 {
    rustix::io::Errno::PERM.raw_os_error()
}

/// The mount, or `None` after printing why the test is skipped.
fn stick(test: &str) -> Option<NoChmod> {
    match NoChmod::mount() {
        Ok(m) => Some(m),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

#[test]
fn every_staging_step_works_where_chmod_is_refused() {
    let Some(stick) = stick("every_staging_step_works_where_chmod_is_refused") else {
        return;
    };
    let dest = stick.mnt.join("site.pinbundle");

    // Temporary name beside the final one, locked while staged.
    let (staged, mut file) = Stage::new(&dest).create().unwrap();
    assert_eq!(staged.path().parent(), Some(stick.mnt.as_path()));
    let tmp_name = staged.path().file_name().unwrap().to_string_lossy();
    assert!(
        tmp_name.starts_with(".site.pinbundle.") && tmp_name.ends_with(".partial"),
        "{tmp_name}"
    );
    let other = std::fs::File::open(staged.path()).unwrap();
    assert!(
        rustix::fs::flock(&other, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err(),
        "the staged file is not locked"
    );
    assert!(remove_abandoned(&dest).is_empty(), "a held file was swept");

    // Sealed (chmod refused, fsync done), not yet under its name; then renamed into place.
    file.write_all(b"bundle bytes").unwrap();
    let sealed = staged.seal(file).unwrap();
    assert_eq!(sealed.mode_refused(), Some(0o644));
    assert!(!dest.exists());
    assert_eq!(sealed.rename().unwrap(), dest);
    pinbundle::atomic::sync_dir(&stick.mnt).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"bundle bytes");
    assert_eq!(stick.names(), ["site.pinbundle"]);

    // Aborted before and after sealing: nothing is left, the old file is untouched.
    let (staged, mut file) = Stage::new(&dest).create().unwrap();
    file.write_all(b"half").unwrap();
    drop((staged, file));
    let (staged, file) = Stage::new(&dest).create().unwrap();
    drop(staged.seal(file).unwrap());
    assert_eq!(stick.names(), ["site.pinbundle"]);
    assert_eq!(std::fs::read(&dest).unwrap(), b"bundle bytes");

    // `commit` (what the small files use) succeeds there too.
    let (staged, mut file) = Stage::new(&dest).create().unwrap();
    file.write_all(b"new").unwrap();
    staged.commit(file).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"new");
}

/// The `modeNotSet` warnings of a `create --json` report, as (path, mode).
fn mode_warnings(report: &Value) -> Vec<(String, String)> {
    report["warnings"]
        .as_array()
        .expect("warnings is a list")
        .iter()
        .map(|w| {
            assert_eq!(w["kind"], "modeNotSet", "{w}");
            (
                w["path"].as_str().unwrap().to_owned(),
                w["mode"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn create_writes_onto_a_stick_that_refuses_chmod_and_says_so() {
    let Some(stick) = stick("create_writes_onto_a_stick_that_refuses_chmod_and_says_so") else {
        return;
    };
    let env = Env::new();
    let cache = tempdir();
    // A 250 KiB layer: several volumes of 100 KiB.
    let big =
        pinbundle_fixtures::push_sized(env.registry.addr(), "stick/big", &[250 << 10], 5, None)
            .unwrap();
    let refs = [big.tag_reference(), env.image("docker").tag_reference()];

    // One file, with --json: complete, verified, one warning naming it.
    let single = stick.mnt.join("site.pinbundle");
    let o = env.create(cache.path(), &single, &refs, &["--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let shown = single.to_string_lossy().into_owned();
    assert_eq!(mode_warnings(&report), [(shown.clone(), "0644".to_owned())]);
    ok(pinbundle().arg("verify").arg(&single));

    // The text report says what was not done and why.
    let o = env.create(cache.path(), &single, &refs, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "warning: could not set mode 0644 on {shown} (the file system refused chmod"
        )),
        "{stderr}"
    );

    // Volumes: every one is written, renamed and named in a warning.
    let set = stick.mnt.join("set.pinbundle");
    let o = env.create(
        cache.path(),
        &set,
        &refs,
        &["--volume-size", "100KiB", "--json"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let volumes: Vec<(String, String)> = report["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["path"].as_str().unwrap().to_owned(), "0644".to_owned()))
        .collect();
    assert!(volumes.len() > 1, "{report}");
    assert_eq!(mode_warnings(&report), volumes);
    let first = stick.mnt.join("set.pinbundle.001");
    ok(pinbundle().arg("verify").arg(&first));

    // Nothing staged is left behind, only the outputs.
    let names = stick.names();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
    assert!(names.contains(&"site.pinbundle".to_owned()), "{names:?}");

    // Where chmod works the report has no warnings and the mode is set.
    let plain = cache.path().join("plain.pinbundle");
    let o = run(pinbundle()
        .arg("create")
        .args(&refs)
        .arg("-o")
        .arg(&plain)
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["--insecure-registry", env.registry.addr(), "--json"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(mode_warnings(&report).is_empty(), "{report}");
    let mode = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}
