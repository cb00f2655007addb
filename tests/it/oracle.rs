//! The differential oracle: for a bundle or volume set pinbundle accepts, stock `zstd -dc | tar
//! -x` (GNU tar, as root, `--same-owner -p`) and Python's `tarfile` must yield exactly the
//! members the seek indexes list: same paths, bytes and modes, nothing else (no extra files,
//! directories, links or setuid bits). Used over the re-hashed hostile corpus
//! (`rehashed.rs`) and, here, as a property test over random small bundles and volume sets.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use pinbundle::bundle::{Bundle, Compression, Output, WriterOptions};
use pinbundle::reference::Digest;

use crate::util::{run, tempdir, text};

/// Lists every tar entry of the stream on stdin as JSON: what `tarfile` makes of each header.
const PY_LIST: &str = r#"
import sys, tarfile, hashlib, json
out = []
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as t:
    for m in t:
        h = None
        if m.isreg():
            f = t.extractfile(m)
            d = hashlib.sha256()
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                d.update(b)
            h = "sha256:" + d.hexdigest()
        out.append({"name": m.name, "type": m.type.decode("latin-1"), "mode": m.mode,
                    "uid": m.uid, "gid": m.gid, "uname": m.uname, "gname": m.gname,
                    "linkname": m.linkname, "size": m.size, "sha256": h,
                    "pax": sorted(m.pax_headers.items())})
json.dump(out, sys.stdout)
"#;

/// One member as pinbundle reads it: path, sha256 of its content (not the index's digest,
/// which for a part is the whole blob's), length.
type Member = (String, String, u64);

/// The members the seek indexes of `files` list, in stream order, read through pinbundle.
fn listed(files: &[PathBuf]) -> Result<Vec<Member>, String> {
    let mut out = Vec::new();
    for f in files {
        let b = Bundle::open(f).map_err(|e| {
            format!(
                "pinbundle cannot reopen what it accepted: {}: {e}",
                f.display()
            )
        })?;
        for m in &b.index().members {
            let mut bytes = Vec::new();
            b.open_member(m, 0).read_to_end(&mut bytes).map_err(|e| {
                format!(
                    "pinbundle cannot read back {} of {}, which it accepted: {e}",
                    m.path,
                    f.display()
                )
            })?;
            out.push((
                m.path.clone(),
                Digest::of(&bytes).to_string(),
                bytes.len() as u64,
            ));
        }
    }
    Ok(out)
}

fn quoted(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| format!("'{}'", f.display()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks `files` (one bundle, or a set's volumes in order) against the stock tools; returns
/// every difference found.
pub fn check(files: &[PathBuf]) -> Result<(), String> {
    let expected = listed(files)?;
    let mut problems = Vec::new();

    // Python's tarfile: the exact sequence of entries.
    let o = run(Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; zstd -qdc -- {} | python3 -c \"$PY\"",
            quoted(files)
        ))
        .env("PY", PY_LIST));
    if !o.status.success() {
        problems.push(format!("zstd | tarfile failed: {}", text(&o.stderr)));
    } else {
        let got: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if got.len() != expected.len() {
            problems.push(format!(
                "tarfile lists {} entries, the seek indexes {}",
                got.len(),
                expected.len()
            ));
        }
        for (i, g) in got.iter().enumerate() {
            let want = expected.get(i);
            let same = want.is_some_and(|(p, d, n)| {
                g["name"] == p.as_str()
                    && g["type"] == "0"
                    && g["mode"] == 0o644
                    && g["uid"] == 0
                    && g["gid"] == 0
                    && g["uname"] == ""
                    && g["gname"] == ""
                    && g["linkname"] == ""
                    && g["size"] == *n
                    && g["sha256"] == d.as_str()
                    && g["pax"].as_array().is_some_and(Vec::is_empty)
            });
            if !same {
                problems.push(format!(
                    "tarfile entry {i} is {g}, the index lists {want:?}"
                ));
                // One extra entry shifts every later one: the first difference says it.
                break;
            }
        }
    }

    // GNU tar as root, applying modes and owners: the tree must be exactly the members.
    if crate::load::is_root() {
        let dir = tempdir();
        let o = run(Command::new("bash").arg("-c").arg(format!(
            "set -o pipefail; zstd -qdc -- {} | tar -x --same-owner -p -C '{}'",
            quoted(files),
            dir.path().display()
        )));
        if !o.status.success() {
            problems.push(format!("zstd | tar -x failed: {}", text(&o.stderr)));
        }
        let mut want: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for (p, d, n) in &expected {
            want.insert(p.clone(), (d.clone(), *n));
        }
        let mut seen = BTreeMap::new();
        walk(dir.path(), dir.path(), &mut seen);
        for (p, e) in &seen {
            match (e, want.get(p)) {
                (Entry::Dir { mode }, None) if p == "blobs" || p == "blobs/sha256" => {
                    if mode & 0o7000 != 0 {
                        problems.push(format!("tar made directory {p} with mode {mode:o}"));
                    }
                }
                (
                    Entry::File {
                        mode,
                        uid,
                        gid,
                        digest,
                        len,
                    },
                    Some((d, n)),
                ) => {
                    if *mode != 0o644 || *uid != 0 || *gid != 0 || digest != d || len != n {
                        problems.push(format!(
                            "tar extracted {p} as mode {mode:o} owner {uid}:{gid} {len} bytes {digest}, the index lists {n} bytes {d}"
                        ));
                    }
                }
                (e, _) => problems.push(format!("tar extracted {p} ({e:?}), not in the index")),
            }
        }
        for p in want.keys() {
            if !seen.contains_key(p) {
                problems.push(format!("tar did not extract {p}"));
            }
        }
    } else {
        eprintln!("SKIPPED GNU tar half of the oracle: needs root for --same-owner");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n      "))
    }
}

#[derive(Debug)]
#[allow(dead_code, reason = "`Other`'s fields are shown through Debug")]
enum Entry {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        digest: String,
        len: u64,
    },
    Other {
        mode: u32,
        kind: String,
    },
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let md = std::fs::symlink_metadata(&p).unwrap();
        let mode = md.permissions().mode() & 0o7777;
        let ft = md.file_type();
        if ft.is_dir() {
            out.insert(rel, Entry::Dir { mode });
            walk(root, &p, out);
        } else if ft.is_file() {
            out.insert(
                rel,
                Entry::File {
                    mode,
                    uid: md.uid(),
                    gid: md.gid(),
                    digest: crate::util::sha256_file(&p),
                    len: md.len(),
                },
            );
        } else {
            out.insert(
                rel,
                Entry::Other {
                    mode,
                    kind: format!("{ft:?}"),
                },
            );
        }
    }
}

/// Random small bundles and volume sets (blob count, sizes, compressibility, frame size,
/// volume size vary): each verifies, and the stock tools see exactly its members.
#[test]
fn stock_tools_see_exactly_the_members_of_random_bundles_and_sets() {
    use proptest::prelude::*;
    let dir = tempdir();
    let config = ProptestConfig {
        cases: 20,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let blob = (0usize..40_000, any::<u64>(), any::<bool>(), any::<bool>());
    let n = std::cell::Cell::new(0);
    proptest!(config, |(blobs in proptest::collection::vec(blob, 1..5),
                        frame_kib in prop_oneof![Just(1usize), Just(4), Just(16), Just(64)],
                        volume in proptest::option::of(24u64..80))| {
        n.set(n.get() + 1);
        let d = dir.path().join(format!("case{}", n.get()));
        std::fs::create_dir(&d).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let blobs: Vec<(Vec<u8>, Compression)> = blobs
            .iter()
            .map(|&(len, seed, text, store)| {
                let mut b = crate::util::noise(len, seed);
                if text {
                    b.iter_mut().for_each(|x| *x = b"abc \n"[usize::from(*x % 5)]);
                }
                (b, if store { Compression::Store } else { Compression::Zstd })
            })
            .filter(|(b, _)| seen.insert(Digest::of(b)))
            .collect();
        let files = write(&d, &blobs, frame_kib << 10, volume.map(|k| k << 10));
        let report = pinbundle::verify::verify_paths(
            &files,
            pinbundle::bundle::SetOptions::default(),
            &pinbundle::verify::VerifyOptions { jobs: 1, ..Default::default() },
            &pinbundle::progress::Silent,
        ).unwrap();
        prop_assert!(report.ok(), "pinbundle refuses its own output: {:?}", report.problems);
        let r = check(&files);
        prop_assert!(r.is_ok(), "{} files: {}", files.len(), r.unwrap_err());
    });
}

/// `blobs` as one bundle (no volume size) or a volume set under `dir`.
fn write(
    dir: &Path,
    blobs: &[(Vec<u8>, Compression)],
    frame_size: usize,
    volume_size: Option<u64>,
) -> Vec<PathBuf> {
    let (manifest, layout, index) = crate::util::head_for(blobs.iter().map(|(b, _)| &b[..]));
    let opts = WriterOptions {
        frame_size,
        level: 3,
        mtime: 1_700_000_000,
    };
    let mut sorted: Vec<_> = blobs.iter().collect();
    sorted.sort_by_key(|(b, _)| Digest::of(b));
    match volume_size {
        None => {
            let p = dir.join("b.pinbundle");
            let mut w = pinbundle::bundle::BundleWriter::new(Vec::new(), opts);
            w.add_bytes("pinbundle.json", &manifest, Compression::Store)
                .unwrap();
            w.add_bytes("oci-layout", &layout, Compression::Store)
                .unwrap();
            w.add_bytes("index.json", &index, Compression::Store)
                .unwrap();
            for (b, c) in sorted {
                w.add_bytes(&Digest::of(b).layout_path(), b, *c).unwrap();
            }
            std::fs::write(&p, w.finish().unwrap().0).unwrap();
            vec![p]
        }
        Some(size) => {
            let mut w = Output::create(
                &dir.join("v.pinbundle"),
                Some(size),
                opts,
                &[
                    ("pinbundle.json", &manifest),
                    ("oci-layout", &layout),
                    ("index.json", &index),
                ],
            )
            .unwrap();
            for (b, c) in sorted {
                let d = Digest::of(b);
                w.add_member(&d.layout_path(), &b[..], b.len() as u64, &d, *c)
                    .unwrap();
            }
            w.finish()
                .unwrap()
                .files
                .into_iter()
                .map(|v| v.path)
                .collect()
        }
    }
}
