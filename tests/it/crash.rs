//! Crash safety: `create` and `load` killed with SIGKILL at seeded-random moments leave either
//! nothing or a complete result, and a re-run converges; concurrent loads serialise.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::create::Env;
use crate::util::{ok, pinbundle, pins_of, run, tempdir, text};

/// A fixed-seed xorshift PRNG: the kill points are random but the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Spawns `c` in its own process group (so its children, e.g. skopeo, die with it).
fn spawn_group(c: &mut Command) -> Child {
    c.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGKILLs the whole process group of `child` and reaps it.
fn kill_group(child: &mut Child) {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = child.wait();
}

fn create_cmd(env: &Env, cache: &Path, out: &Path, refs: &[String]) -> Command {
    let mut c = pinbundle();
    c.arg("create")
        .args(refs)
        .arg("-o")
        .arg(out)
        .arg("--cache-dir")
        .arg(cache)
        .args(["--insecure-registry", env.registry.addr()])
        .env("SOURCE_DATE_EPOCH", "1700000000");
    c
}

fn verify_ok(p: &Path) -> bool {
    run(pinbundle().arg("verify").arg(p)).status.success()
}

#[test]
fn create_killed_anywhere_leaves_nothing_or_a_complete_bundle() {
    let env = Env::new();
    let dir = tempdir();
    let refs: Vec<String> = ["oci-multi", "docker", "index"]
        .iter()
        .map(|r| env.image(r).tag_reference())
        .collect();
    let reference = dir.path().join("reference.pinbundle");
    let t = Instant::now();
    ok(&mut create_cmd(
        &env,
        &dir.path().join("c0"),
        &reference,
        &refs,
    ));
    let full = t.elapsed().as_millis() as u64;
    let expected = std::fs::read(&reference).unwrap();

    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("b.pinbundle");
    let started = Instant::now();
    let (mut complete, mut absent) = (0, 0);
    for i in 0..12 {
        // Half the runs start from an empty cache (kills during fetching), half reuse it.
        let cache = dir.path().join(format!("cache-{}", i % 6));
        let _ = std::fs::remove_file(&out);
        let mut child = spawn_group(&mut create_cmd(&env, &cache, &out, &refs));
        std::thread::sleep(Duration::from_millis(rng.below(full * 3 / 4)));
        kill_group(&mut child);
        if out.exists() {
            complete += 1;
            assert!(
                verify_ok(&out),
                "run {i}: a killed create left a bad {}",
                out.display()
            );
            assert!(std::fs::read(&out).unwrap() == expected, "run {i}: differs");
        } else {
            absent += 1;
        }
        // The re-run converges to the uninterrupted result.
        ok(&mut create_cmd(&env, &cache, &out, &refs));
        assert!(verify_ok(&out));
        assert!(
            std::fs::read(&out).unwrap() == expected,
            "run {i}: the re-run after a kill is not byte-identical"
        );
    }
    eprintln!(
        "create kills: {complete} after completion, {absent} before; {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Killed runs may leave their `.b.pinbundle.*.partial` temp file; never under the name.
    for e in std::fs::read_dir(&out_dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "b.pinbundle"
                || (name.starts_with(".b.pinbundle.") && name.ends_with(".partial")),
            "unexpected file {name}"
        );
    }
}

/// `pinbundle load` with a vfs store under `dir`, a drop-in and a lock there.
fn load_cmd(dir: &Path, bundle: &Path) -> Command {
    let mut c = pinbundle();
    c.arg("load")
        .args(crate::load::kubelet_off())
        .arg(bundle)
        .arg("--storage-root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs", "--reload", "none", "--json"])
        // No CRI-O here: the pins are written, not confirmed.
        .arg("--no-confirm")
        .args(crate::load::crio_config_args(
            &dir.join("crio.conf.d/50-pinned-images"),
        ))
        .arg("--crio-drop-in")
        .arg(dir.join("crio.conf.d/50-pinned-images"))
        .arg("--cri-socket")
        .arg(dir.join("no.sock"))
        .arg("--lock-file")
        .arg(dir.join("load.lock"));
    c
}

const OLD_PIN: &str =
    "quay.io/other/app@sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

fn images_exist(dir: &Path, pins: &[String]) -> bool {
    pins.iter().all(|p| {
        run(Command::new("podman")
            .arg("--root")
            .arg(dir.join("storage"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .args(["--storage-driver", "vfs", "image", "exists", p]))
        .status
        .success()
    })
}

#[test]
fn load_killed_anywhere_keeps_the_drop_in_whole_and_a_rerun_completes() {
    let env = Env::new();
    let dir = tempdir();
    let bundle = dir.path().join("b.pinbundle");
    let names = ["oci-one", "docker"];
    let refs: Vec<String> = names.iter().map(|r| env.image(r).tag_reference()).collect();
    let o = env.create(&dir.path().join("cache"), &bundle, &refs, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut new_pins: Vec<String> = names
        .iter()
        .map(|r| env.image(r).digest_reference())
        .chain([OLD_PIN.to_string()])
        .collect();
    new_pins.sort();
    let old = format!("[crio]\n  [crio.image]\n    pinned_images = [\"{OLD_PIN}\"]\n");

    // How long an uninterrupted load takes, in a scratch dir.
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(scratch.join("crio.conf.d")).unwrap();
    let t = Instant::now();
    ok(&mut load_cmd(&scratch, &bundle));
    let full = t.elapsed().as_millis() as u64;

    let mut rng = Rng(0x5EED_0000_0000_0002);
    let started = Instant::now();
    let (mut old_seen, mut new_seen) = (0, 0);
    for i in 0..8 {
        let d = dir.path().join(format!("node-{i}"));
        std::fs::create_dir_all(d.join("crio.conf.d")).unwrap();
        let drop_in = d.join("crio.conf.d/50-pinned-images");
        std::fs::write(&drop_in, &old).unwrap();
        let mut child = spawn_group(&mut load_cmd(&d, &bundle));
        std::thread::sleep(Duration::from_millis(rng.below(full + full / 4)));
        kill_group(&mut child);
        let now = std::fs::read_to_string(&drop_in).unwrap();
        if now == old {
            old_seen += 1;
        } else {
            new_seen += 1;
            assert_eq!(pins_of(&now), new_pins, "run {i}: a partial drop-in");
            assert!(
                images_exist(&d, &new_pins[..2]),
                "run {i}: pinned before imported"
            );
        }
        assert_eq!(
            std::fs::read_dir(d.join("crio.conf.d")).unwrap().count(),
            1,
            "run {i}: a temp file left in the drop-in dir"
        );
        // The re-run completes: every image present and pinned.
        let o = run(&mut load_cmd(&d, &bundle));
        assert_eq!(
            o.status.code(),
            Some(0),
            "run {i}: the re-run failed:\n{}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        assert_eq!(
            pins_of(&std::fs::read_to_string(&drop_in).unwrap()),
            new_pins
        );
        let images: Vec<String> = names
            .iter()
            .map(|r| env.image(r).digest_reference())
            .collect();
        assert!(
            images_exist(&d, &images),
            "run {i}: images missing after the re-run"
        );
    }
    eprintln!(
        "load kills: drop-in old {old_seen}, new {new_seen}; {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn concurrent_loads_take_turns() {
    let env = Env::new();
    let dir = tempdir();
    let bundle = dir.path().join("b.pinbundle");
    let refs = vec![env.image("oci-one").tag_reference()];
    let o = env.create(&dir.path().join("cache"), &bundle, &refs, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let d = dir.path().join("node");
    std::fs::create_dir_all(d.join("crio.conf.d")).unwrap();

    // Hold the lock ourselves so both loads are certainly running when it is released.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(d.join("load.lock"))
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let spawn = || {
        let mut child = load_cmd(&d, &bundle)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait (on the pipe, no sleeping) until it says it waits for the lock.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("waiting for it"), "{line}");
        (child, stderr, line)
    };
    let a = spawn();
    let b = spawn();
    drop(lock);
    let finish =
        |(child, mut stderr, mut log): (Child, BufReader<std::process::ChildStderr>, String)| {
            let o = child.wait_with_output().unwrap();
            std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
            assert!(o.status.success(), "{}\n{log}", text(&o.stdout));
            let report: Value = serde_json::from_slice(&o.stdout).unwrap();
            (report, log)
        };
    let (ra, la) = finish(a);
    let (rb, lb) = finish(b);
    assert!(la.contains("waiting for it") && lb.contains("waiting for it"));
    // Exactly one imported and wrote the pins; the other found it all done.
    let statuses = |r: &Value| r["images"][0]["status"].as_str().unwrap().to_string();
    let mut outcomes = vec![
        (statuses(&ra), ra["pins"]["changed"].as_bool().unwrap()),
        (statuses(&rb), rb["pins"]["changed"].as_bool().unwrap()),
    ];
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![("loaded".to_string(), true), ("present".to_string(), false)]
    );
    let drop_in = std::fs::read_to_string(d.join("crio.conf.d/50-pinned-images")).unwrap();
    assert_eq!(
        pins_of(&drop_in),
        vec![env.image("oci-one").digest_reference()]
    );
}
