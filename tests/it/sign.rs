//! Signed bundles: `keygen` → `create --sign-key` → `verify`/`inspect`/`load --trust-key`,
//! stock `minisign -V` on the extracted files, and every way a signature must be refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use pinbundle::bundle::format::{MANIFEST_PATH, SIGNATURE_PATH};
use pinbundle::bundle::{Bundle, BundleWriter, Compression, WriterOptions};
use pinbundle::progress::Silent;
use pinbundle::verify::{VerifyOptions, VerifyReport, verify_paths};
use serde_json::Value;

use crate::create::{Env, inspect_json};
use crate::load::{Store, load};
use crate::util::{ok, pinbundle, run, tempdir, text};

/// `pinbundle keygen --unencrypted` (or with a password file); returns the key id.
pub(crate) fn keygen(name: &Path, password: Option<&str>) -> String {
    let mut c = pinbundle();
    c.arg("keygen").arg("-o").arg(name).arg("--json");
    match password {
        Some(pw) => {
            let f = name.with_extension("password");
            std::fs::write(&f, format!("{pw}\n")).unwrap();
            c.arg("--password-file").arg(f);
        }
        None => {
            c.arg("--unencrypted");
        }
    }
    let o = ok(c.env_remove("PINBUNDLE_KEY_PASSWORD"));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["keyId"].as_str().unwrap().to_string()
}

fn with_ext(name: &Path, ext: &str) -> PathBuf {
    let mut s = name.as_os_str().to_os_string();
    s.push(ext);
    PathBuf::from(s)
}

/// `pinbundle verify --json BUNDLE --trust-key …`: exit code and report.
fn verify(bundle: &Path, trust: &[&Path]) -> (Option<i32>, Value, String) {
    let mut c = pinbundle();
    c.args(["verify", "--json"]).arg(bundle);
    for k in trust {
        c.arg("--trust-key").arg(k);
    }
    let o = run(&mut c);
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code(), v, text(&o.stderr))
}

fn problems(report: &Value) -> String {
    report["problems"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["error"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// Rewrites `src` into `dst` member by member, with the signature member's content replaced
/// by `signature` (an attacker who rebuilds the file: every checksum and digest consistent).
fn rebuild_with_signature(src: &Path, dst: &Path, signature: &[u8]) {
    let b = Bundle::open(src).unwrap();
    let out = std::fs::File::create(dst).unwrap();
    let mut w = BundleWriter::new(
        std::io::BufWriter::new(out),
        WriterOptions {
            mtime: 1_700_000_000,
            ..WriterOptions::default()
        },
    );
    for m in &b.index().members {
        let data = if m.path == SIGNATURE_PATH {
            signature.to_vec()
        } else {
            b.read_member(m).unwrap()
        };
        w.add_bytes(&m.path, &data, Compression::Zstd).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn signed_bundle_is_deterministic_and_verifies_with_pinbundle_and_stock_minisign() {
    let env = Env::new();
    let dir = tempdir();
    let key = dir.path().join("site");
    let id = keygen(&key, Some("correct horse battery staple"));
    let (sk, pk) = (with_ext(&key, ".key"), with_ext(&key, ".pub"));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sk).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    let pw_file = with_ext(&key, ".password");
    let refs = [
        env.image("oci-one").tag_reference(),
        env.image("docker").tag_reference(),
    ];
    let cache = dir.path().join("cache");
    let a = dir.path().join("a.pinbundle");
    let b = dir.path().join("b.pinbundle");
    for out in [&a, &b] {
        let o = env.create(
            &cache,
            out,
            &refs,
            &[
                "--sign-key",
                sk.to_str().unwrap(),
                "--password-file",
                pw_file.to_str().unwrap(),
                "--json",
            ],
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        let summary: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(summary["signature"]["keyId"], id.as_str());
    }
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "same key and inputs give the same bytes"
    );
    // The same key from the environment, without a password file.
    let c = dir.path().join("c.pinbundle");
    let o = run(pinbundle()
        .arg("create")
        .args(&refs)
        .arg("-o")
        .arg(&c)
        .arg("--cache-dir")
        .arg(&cache)
        .args(["--insecure-registry", env.registry.addr()])
        .arg("--sign-key")
        .arg(&sk)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("PINBUNDLE_KEY_PASSWORD", "correct horse battery staple"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    // Without any password source (stdin is not a terminal here) it fails before fetching.
    let o = run(pinbundle()
        .arg("create")
        .args(&refs)
        .arg("-o")
        .arg(dir.path().join("d.pinbundle"))
        .arg("--sign-key")
        .arg(&sk)
        .env_remove("PINBUNDLE_KEY_PASSWORD"));
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("password"), "{}", text(&o.stderr));

    // The signature is the second member.
    let bundle = Bundle::open(&a).unwrap();
    let paths: Vec<&str> = bundle
        .index()
        .members
        .iter()
        .map(|m| m.path.as_str())
        .collect();
    assert_eq!(paths[..2], [MANIFEST_PATH, SIGNATURE_PATH]);
    drop(bundle);

    // inspect shows the signer and the trusted comment.
    let inspect = inspect_json(&a);
    assert_eq!(inspect["signature"]["keyId"], id.as_str());
    let comment = inspect["signature"]["trustedComment"].as_str().unwrap();
    assert!(
        comment.contains("created 2023-11-14T22:13:20Z") && comment.contains("images 2"),
        "{comment}"
    );
    let o = ok(pinbundle().arg("inspect").arg(&a));
    assert!(text(&o.stdout).contains(&id), "{}", text(&o.stdout));

    // verify: with the key, trusted; without, the key id is reported but not trusted.
    let (code, report, err) = verify(&a, &[&pk]);
    assert_eq!(code, Some(0), "{report} {err}");
    assert_eq!(report["signature"]["keyId"], id.as_str());
    assert_eq!(report["signature"]["verifiedBy"], pk.to_str().unwrap());
    let (code, report, _) = verify(&a, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(report["signature"]["keyId"], id.as_str());
    assert_eq!(report["signature"]["verifiedBy"], Value::Null);

    // Stock tools: extract, then minisign checks pinbundle.json with the .pub.
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    ok(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | tar -x -C '{}'",
        a.display(),
        x.display()
    )));
    assert!(x.join(SIGNATURE_PATH).is_file());
    if Command::new("minisign").arg("-v").output().is_err() {
        eprintln!("SKIPPED stock minisign check: minisign is not installed");
        return;
    }
    let o = ok(Command::new("minisign")
        .current_dir(&x)
        .args(["-Vm", MANIFEST_PATH, "-p"])
        .arg(&pk));
    let out = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert!(
        out.contains(comment),
        "minisign shows the trusted comment: {out}"
    );
    // And refuses a changed pinbundle.json.
    let mut m = std::fs::read(x.join(MANIFEST_PATH)).unwrap();
    m[10] ^= 1;
    std::fs::write(x.join(MANIFEST_PATH), m).unwrap();
    let o = run(Command::new("minisign")
        .current_dir(&x)
        .args(["-Vm", MANIFEST_PATH, "-p"])
        .arg(&pk));
    assert!(!o.status.success());

    // A key made by stock `minisign -G -W` (unencrypted) signs bundles pinbundle trusts.
    let (msk, mpk) = (dir.path().join("m.key"), dir.path().join("m.pub"));
    ok(Command::new("minisign")
        .args(["-G", "-W", "-s"])
        .arg(&msk)
        .arg("-p")
        .arg(&mpk)
        .stdin(std::process::Stdio::null()));
    let m = dir.path().join("m.pinbundle");
    let o = env.create(&cache, &m, &refs, &["--sign-key", msk.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (code, report, _) = verify(&m, &[&mpk]);
    assert_eq!(code, Some(0), "{report}");
}

#[test]
fn unsigned_wrong_key_swapped_and_altered_signatures_are_refused() {
    let env = Env::new();
    let dir = tempdir();
    let (k1, k2) = (dir.path().join("k1"), dir.path().join("k2"));
    let (id1, id2) = (keygen(&k1, None), keygen(&k2, None));
    let (pk1, pk2) = (with_ext(&k1, ".pub"), with_ext(&k2, ".pub"));
    let cache = dir.path().join("cache");
    let create = |out: &Path, image: &str, key: Option<&Path>| {
        let mut extra = vec![];
        if let Some(k) = key {
            extra = vec!["--sign-key".to_string(), k.display().to_string()];
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let o = env.create(&cache, out, &[env.image(image).tag_reference()], &extra);
        assert!(o.status.success(), "{}", text(&o.stderr));
    };
    let signed = dir.path().join("signed.pinbundle");
    let other = dir.path().join("other.pinbundle");
    let unsigned = dir.path().join("unsigned.pinbundle");
    create(&signed, "oci-one", Some(&with_ext(&k1, ".key")));
    create(&other, "oci-multi", Some(&with_ext(&k1, ".key")));
    create(&unsigned, "oci-one", None);

    // Wrong key: refused, naming the key found and the keys trusted.
    let (code, report, _) = verify(&signed, &[&pk2]);
    assert_eq!(code, Some(1), "{report}");
    let e = problems(&report);
    assert!(
        e.contains(&id1) && e.contains(&id2) && e.contains("not trusted"),
        "{e}"
    );
    assert_eq!(report["membersChecked"], 0, "refused before reading blobs");
    // Either of several trusted keys will do.
    let (code, report, _) = verify(&signed, &[&pk2, &pk1]);
    assert_eq!(code, Some(0), "{report}");

    // Unsigned with a trust key: refused. Without: fine, and says so.
    let (code, report, _) = verify(&unsigned, &[&pk1]);
    assert_eq!(code, Some(1));
    let e = problems(&report);
    assert!(e.contains("not signed") && e.contains(&id1), "{e}");
    let (code, report, _) = verify(&unsigned, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(report["signature"], Value::Null);
    assert_eq!(inspect_json(&unsigned)["signature"], Value::Null);

    // Another bundle's signature (same trusted key) in a consistently rebuilt file: refused.
    let other_sig = Bundle::open(&other)
        .unwrap()
        .signature_bytes()
        .unwrap()
        .unwrap();
    let swapped = dir.path().join("swapped.pinbundle");
    rebuild_with_signature(&signed, &swapped, &other_sig);
    let (code, report, _) = verify(&swapped, &[&pk1]);
    assert_eq!(code, Some(1), "{report}");
    let e = problems(&report);
    assert!(e.contains("does not match") && e.contains(&id1), "{e}");

    // A forged trusted comment, everything else intact: refused.
    let sig = Bundle::open(&signed)
        .unwrap()
        .signature_bytes()
        .unwrap()
        .unwrap();
    let forged = String::from_utf8(sig.clone())
        .unwrap()
        .replace("images 1", "images 9");
    assert_ne!(forged.as_bytes(), &sig[..]);
    let forged_path = dir.path().join("forged.pinbundle");
    rebuild_with_signature(&signed, &forged_path, forged.as_bytes());
    let (code, _, _) = verify(&forged_path, &[&pk1]);
    assert_eq!(code, Some(1));
    // Each byte of the signature line and the global signature, changed in a rebuilt file.
    let text_sig = String::from_utf8(sig.clone()).unwrap();
    let lines: Vec<&str> = text_sig.lines().collect();
    let start = lines[0].len() + 1;
    let keys = pinbundle::sign::read_trusted(std::slice::from_ref(&pk1), None).unwrap();
    let opts = VerifyOptions {
        jobs: 1,
        trusted_keys: keys,
    };
    let rebuilt = dir.path().join("rebuilt.pinbundle");
    for i in (start..start + lines[1].len()).step_by(7) {
        let mut s = sig.clone();
        s[i] = if s[i] == b'A' { b'B' } else { b'A' };
        rebuild_with_signature(&signed, &rebuilt, &s);
        let r = verify_with(&rebuilt, &opts).unwrap();
        assert!(!r.ok(), "signature byte {i} changed and still trusted");
    }

    // Flipping any byte of the signature member in the file fails verification, with and
    // without trusted keys.
    let b = Bundle::open(&signed).unwrap();
    let m = b.member(SIGNATURE_PATH).unwrap().clone();
    let frames = b.index().frames[m.frame..m.frame + m.frames].to_vec();
    drop(b);
    let original = std::fs::read(&signed).unwrap();
    let flipped = dir.path().join("flipped.pinbundle");
    let no_keys = VerifyOptions {
        jobs: 1,
        trusted_keys: Vec::new(),
    };
    for f in &frames {
        for off in f.offset..f.offset + f.length {
            let mut bytes = original.clone();
            bytes[off as usize] ^= 0x01;
            std::fs::write(&flipped, &bytes).unwrap();
            for o in [&opts, &no_keys] {
                let ok = verify_with(&flipped, o).map(|r| r.ok()).unwrap_or(false);
                assert!(!ok, "flip at {off} of the signature member went unnoticed");
            }
        }
    }
}

#[test]
fn load_refuses_untrusted_bundles_before_touching_anything() {
    let env = Env::new();
    let dir = tempdir();
    let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
    let (good_id, bad_id) = (keygen(&good, None), keygen(&bad, None));
    let trusted_dir = dir.path().join("trusted.d");
    std::fs::create_dir(&trusted_dir).unwrap();
    std::fs::copy(with_ext(&good, ".pub"), trusted_dir.join("good.pub")).unwrap();
    let cache = dir.path().join("cache");
    let refs = [env.image("oci-one").tag_reference()];
    let by_bad = dir.path().join("by-bad.pinbundle");
    let by_good = dir.path().join("by-good.pinbundle");
    let unsigned = dir.path().join("unsigned.pinbundle");
    for (out, key) in [
        (&by_bad, Some(&bad)),
        (&by_good, Some(&good)),
        (&unsigned, None),
    ] {
        let extra: Vec<String> = key
            .map(|k| {
                vec![
                    "--sign-key".into(),
                    with_ext(k, ".key").display().to_string(),
                ]
            })
            .unwrap_or_default();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let o = env.create(&cache, out, &refs, &extra);
        assert!(o.status.success(), "{}", text(&o.stderr));
    }

    let store = Store::new(dir.path(), "vfs");
    let drop_in = dir.path().join("crio.conf.d/50-pinned-images");
    std::fs::create_dir_all(drop_in.parent().unwrap()).unwrap();
    let existing = "[crio]\n  [crio.image]\n    pinned_images = [\"quay.io/x/y@sha256:aaaa\"]\n";
    std::fs::write(&drop_in, existing).unwrap();
    let mtime = std::fs::metadata(&drop_in).unwrap().modified().unwrap();
    let trusted_arg = trusted_dir.display().to_string();
    let no_sock = dir.path().join("no.sock");
    let lock = dir.path().join("l");
    for (bundle, extra, needle) in [
        (&by_bad, vec!["--trusted-dir", &trusted_arg], bad_id.clone()),
        (
            &unsigned,
            vec!["--trusted-dir", &trusted_arg],
            "not signed".into(),
        ),
        // An explicit --trust-key is enough to require a signature.
        (
            &unsigned,
            vec![
                "--trusted-dir",
                "/nonexistent",
                "--trust-key",
                with_ext(&good, ".pub").to_str().unwrap(),
            ],
            "not signed".into(),
        ),
    ] {
        let (o, report) = load(bundle, &store, &drop_in, &no_sock, &lock, &extra);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
        assert_eq!(report["ok"], false);
        let e = problems(&report);
        assert!(e.contains(&needle) && e.contains(&good_id), "{e}");
        assert!(!store.root.exists(), "the store was touched");
        assert_eq!(std::fs::read_to_string(&drop_in).unwrap(), existing);
        assert_eq!(
            std::fs::metadata(&drop_in).unwrap().modified().unwrap(),
            mtime
        );
    }
    // The human output names the key ids too.
    let o = run(pinbundle()
        .arg("load")
        .args(crate::load::kubelet_off())
        .arg(&by_bad)
        .args(store.args())
        .args(crate::load::crio_config_args(&drop_in))
        .arg("--crio-drop-in")
        .arg(&drop_in)
        .arg("--cri-socket")
        .arg(&no_sock)
        .arg("--lock-file")
        .arg(&lock)
        .arg("--trusted-dir")
        .arg(&trusted_dir));
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o.stdout);
    assert!(
        out.contains(&bad_id) && out.contains(&good_id) && out.contains("nothing was changed"),
        "{out}"
    );

    // Signed by the trusted key: loads (import only, into the scratch store).
    let (o, report) = load(
        &by_good,
        &store,
        &drop_in,
        &no_sock,
        &lock,
        &["--trusted-dir", &trusted_arg, "--no-pin"],
    );
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert_eq!(report["signature"]["keyId"], good_id.as_str());
    assert!(store.exists(&env.image("oci-one").digest_reference()));
    assert_eq!(std::fs::read_to_string(&drop_in).unwrap(), existing);
}

/// The index rules: the signature is optional, right after pinbundle.json, at most once.
#[test]
fn signature_member_only_right_after_the_manifest() {
    let dir = tempdir();
    let manifest = br#"{"format":"pinbundle","formatVersion":1,"creator":"t","created":"x","layout":{"ociLayout":"sha256:0000000000000000000000000000000000000000000000000000000000000000","indexJson":"sha256:0000000000000000000000000000000000000000000000000000000000000000"},"images":[],"blobs":[],"totals":{"images":0,"blobs":0,"size":0,"uncompressedSize":0}}"#;
    let write = |name: &str, paths: &[&str]| {
        let p = dir.path().join(name);
        let mut w = BundleWriter::new(std::fs::File::create(&p).unwrap(), WriterOptions::default());
        for path in paths {
            let data: &[u8] = if *path == MANIFEST_PATH {
                manifest
            } else {
                b"sig"
            };
            w.add_bytes(path, data, Compression::Zstd).unwrap();
        }
        w.finish().unwrap();
        p
    };
    let good = write("good", &[MANIFEST_PATH, SIGNATURE_PATH, "oci-layout"]);
    assert_eq!(
        Bundle::open(&good)
            .unwrap()
            .signature_bytes()
            .unwrap()
            .as_deref(),
        Some(&b"sig"[..])
    );
    for (name, paths) in [
        ("late", &[MANIFEST_PATH, "oci-layout", SIGNATURE_PATH][..]),
        (
            "twice",
            &[MANIFEST_PATH, SIGNATURE_PATH, SIGNATURE_PATH][..],
        ),
        ("first", &[SIGNATURE_PATH, MANIFEST_PATH][..]),
    ] {
        let p = write(name, paths);
        let e = Bundle::open(&p).expect_err(name).to_string();
        assert!(e.contains("seek index"), "{name}: {e}");
    }
}

/// Verifies the whole bundle at `path` with `opts`.
fn verify_with(
    path: &Path,
    opts: &VerifyOptions,
) -> Result<VerifyReport, pinbundle::bundle::Error> {
    let set_opts = pinbundle::bundle::SetOptions {
        allow_partial: false,
        find_siblings: true,
    };
    verify_paths(&[path.to_path_buf()], set_opts, opts, &Silent)
}
