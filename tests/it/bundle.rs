//! The bundle format on synthetic members: round trips through the seek index, stock-tool
//! extraction, determinism, and damage of every kind being caught.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use pinbundle::bundle::format::SeekIndex;
use pinbundle::bundle::{Bundle, BundleWriter, Compression, WriterOptions};
use pinbundle::progress::Silent;
use pinbundle::reference::Digest;

use crate::util::{noise, ok, tempdir, with_index};

struct Blob {
    data: Vec<u8>,
    compression: Compression,
}

fn sample_blobs() -> Vec<Blob> {
    let mut v = vec![
        Blob {
            data: Vec::new(),
            compression: Compression::Zstd,
        },
        Blob {
            data: b"x".to_vec(),
            compression: Compression::Store,
        },
        Blob {
            data: noise(4096 - 512, 1),
            compression: Compression::Store,
        },
        Blob {
            data: noise(10_000, 2),
            compression: Compression::Store,
        },
        Blob {
            data: noise(70_000, 3),
            compression: Compression::Store,
        },
        Blob {
            data: b"compressible ".repeat(3000),
            compression: Compression::Zstd,
        },
    ];
    v.sort_by_key(|b| Digest::of(&b.data));
    v
}

/// Writes a bundle of `blobs` with small frames so members span several frames.
fn write_bundle(path: &Path, blobs: &[Blob], frame_size: usize) {
    let (manifest_bytes, oci_layout, index_json) =
        crate::util::head_for(blobs.iter().map(|b| &b.data[..]));
    let file = std::fs::File::create(path).unwrap();
    let mut w = BundleWriter::new(
        file,
        WriterOptions {
            frame_size,
            level: 3,
            mtime: 0,
        },
    );
    w.add_bytes("pinbundle.json", &manifest_bytes, Compression::Zstd)
        .unwrap();
    w.add_bytes("oci-layout", &oci_layout, Compression::Zstd)
        .unwrap();
    w.add_bytes("index.json", &index_json, Compression::Zstd)
        .unwrap();
    for b in blobs {
        let d = Digest::of(&b.data);
        w.add_member(
            &d.layout_path(),
            &b.data[..],
            b.data.len() as u64,
            &d,
            b.compression,
        )
        .unwrap();
    }
    w.finish().unwrap();
}

fn verify_ok(path: &Path) -> bool {
    let set_opts = pinbundle::bundle::SetOptions {
        allow_partial: false,
        find_siblings: true,
    };
    let opts = pinbundle::verify::VerifyOptions {
        jobs: 2,
        trusted_keys: Vec::new(),
    };
    match pinbundle::verify::verify_paths(&[path.to_path_buf()], set_opts, &opts, &Silent) {
        Ok(r) => r.ok(),
        Err(_) => false,
    }
}

#[test]
fn members_round_trip_through_the_seek_index() {
    let dir = tempdir();
    let p = dir.path().join("b.pinbundle");
    let blobs = sample_blobs();
    write_bundle(&p, &blobs, 4096);
    let b = Bundle::open(&p).unwrap();
    assert!(
        b.index().members.iter().any(|m| m.frames > 3),
        "small frames must split members"
    );
    for blob in &blobs {
        let d = Digest::of(&blob.data);
        let m = b.blob(&d).unwrap_or_else(|| panic!("blob {d} missing"));
        assert_eq!(b.read_member(m).unwrap(), blob.data);
        for off in [0usize, 1, 511, 3584, 4095, 4096, 9000, 69_999, 70_000] {
            if off > blob.data.len() {
                continue;
            }
            let mut got = Vec::new();
            b.open_member(m, off as u64).read_to_end(&mut got).unwrap();
            assert_eq!(
                got,
                &blob.data[off..],
                "blob of {} bytes from offset {off}",
                blob.data.len()
            );
        }
    }
    assert!(verify_ok(&p));
}

#[test]
fn stock_zstd_and_tar_extract_an_oci_layout() {
    let dir = tempdir();
    let p = dir.path().join("b.pinbundle");
    let blobs = sample_blobs();
    write_bundle(&p, &blobs, 4096);
    ok(Command::new("zstd").arg("-tq").arg(&p));
    let out = dir.path().join("x");
    std::fs::create_dir(&out).unwrap();
    let sh = format!("zstd -dc '{}' | tar -x -C '{}'", p.display(), out.display());
    ok(Command::new("sh").arg("-c").arg(&sh));
    for blob in &blobs {
        let d = Digest::of(&blob.data);
        let f = out.join(d.layout_path());
        assert_eq!(std::fs::read(&f).unwrap(), blob.data, "{}", f.display());
    }
    for f in ["oci-layout", "index.json", "pinbundle.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // Nothing else: stock tar sees exactly the layout.
    let listing = ok(Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc '{}' | tar -t", p.display())));
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout).lines().count(),
        3 + blobs.len()
    );
}

#[test]
fn same_input_gives_identical_bytes() {
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_bundle(&a, &sample_blobs(), 4096);
    write_bundle(&b, &sample_blobs(), 4096);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn every_flipped_byte_is_detected() {
    let dir = tempdir();
    let p = dir.path().join("b.pinbundle");
    // Small blobs keep the file small enough to flip every byte.
    let blobs: Vec<Blob> = sample_blobs()
        .into_iter()
        .filter(|b| b.data.len() < 5000)
        .collect();
    write_bundle(&p, &blobs, 2048);
    let orig = std::fs::read(&p).unwrap();
    let q = dir.path().join("flipped");
    let mut undetected = Vec::new();
    for i in 0..orig.len() {
        for bit in [0x01u8, 0x80] {
            let mut bytes = orig.clone();
            bytes[i] ^= bit;
            std::fs::write(&q, &bytes).unwrap();
            if verify_ok(&q) {
                undetected.push((i, bit));
            }
        }
    }
    assert!(
        undetected.is_empty(),
        "{} of {} flips undetected: {:?}",
        undetected.len(),
        2 * orig.len(),
        &undetected[..undetected.len().min(10)]
    );
}

#[test]
fn every_truncation_is_detected() {
    let dir = tempdir();
    let p = dir.path().join("b.pinbundle");
    write_bundle(&p, &sample_blobs(), 4096);
    let orig = std::fs::read(&p).unwrap();
    let q = dir.path().join("cut");
    let step = (orig.len() / 400).max(1);
    for len in (0..orig.len())
        .step_by(step)
        .chain(orig.len() - 70..orig.len())
    {
        std::fs::write(&q, &orig[..len]).unwrap();
        assert!(
            !verify_ok(&q),
            "truncation to {len} of {} bytes not detected",
            orig.len()
        );
        // Appending is damage too.
    }
    let mut longer = orig.clone();
    longer.push(0);
    std::fs::write(&q, &longer).unwrap();
    assert!(!verify_ok(&q));
}

#[test]
fn garbage_is_not_a_bundle() {
    let dir = tempdir();
    let p = dir.path().join("g");
    for content in [Vec::new(), b"hello".to_vec(), noise(100_000, 9)] {
        std::fs::write(&p, &content).unwrap();
        let e = Bundle::open(&p).unwrap_err();
        assert!(e.to_string().contains("is not a pinbundle bundle"), "{e}");
    }
    let out = crate::util::run(crate::util::pinbundle().arg("verify").arg(&p));
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::util::text(&out.stdout).contains("is not a pinbundle bundle"));
    let out = crate::util::run(crate::util::pinbundle().arg("inspect").arg(&p));
    assert_eq!(out.status.code(), Some(1)); // refused for its content, as verify
    let out = crate::util::run(
        crate::util::pinbundle()
            .arg("verify")
            .arg(dir.path().join("missing")),
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn crafted_indexes_are_refused() {
    let dir = tempdir();
    let p = dir.path().join("b.pinbundle");
    write_bundle(&p, &sample_blobs(), 4096);
    let orig = std::fs::read(&p).unwrap();
    let q = dir.path().join("crafted");
    let last = |i: &SeekIndex| i.members.len() - 1;
    type Edit = Box<dyn Fn(&mut SeekIndex)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "path traversal",
            Box::new(move |i| {
                let n = last(i);
                i.members[n].path = "../../etc/passwd".into()
            }),
        ),
        (
            "absolute path",
            Box::new(move |i| {
                let n = last(i);
                i.members[n].path = "/etc/passwd".into()
            }),
        ),
        (
            "blob named for another digest",
            Box::new(move |i| {
                let n = last(i);
                i.members[n].path = i.members[1].digest.layout_path()
            }),
        ),
        (
            "duplicate member",
            Box::new(move |i| {
                let m = i.members[3].clone();
                i.members.insert(4, m)
            }),
        ),
        (
            "frame outside the file",
            Box::new(|i| i.frames[2].offset += 1_000_000),
        ),
        ("overlapping frames", Box::new(|i| i.frames[2].offset -= 1)),
        ("huge frame size", Box::new(|i| i.frames[3].size = 1 << 40)),
        (
            "member past the frames",
            Box::new(move |i| {
                let n = last(i);
                i.members[n].frames += 5
            }),
        ),
        (
            "wrong size",
            Box::new(move |i| {
                let n = last(i);
                i.members[n].size += 1
            }),
        ),
        (
            "wrong digest",
            Box::new(move |i| {
                let n = last(i);
                i.members[n].digest = Digest::of(b"other")
            }),
        ),
        (
            "member dropped",
            Box::new(move |i| {
                i.members.pop();
            }),
        ),
        ("no manifest first", Box::new(|i| i.members.swap(0, 1))),
    ];
    for (name, edit) in cases {
        std::fs::write(&q, with_index(&orig, |i| edit(i))).unwrap();
        assert!(!verify_ok(&q), "crafted index accepted: {name}");
    }
    // The unmodified rewrite is accepted: the cases fail for their edit, not for the rewrite.
    std::fs::write(&q, with_index(&orig, |_| {})).unwrap();
    assert!(verify_ok(&q));
}

#[test]
fn verify_names_the_damaged_blob() {
    let dir = tempdir();
    let p = dir.path().join("b.pinbundle");
    let blobs = sample_blobs();
    write_bundle(&p, &blobs, 1 << 20);
    let b = Bundle::open(&p).unwrap();
    let victim = blobs
        .iter()
        .map(|b| Digest::of(&b.data))
        .find(|d| b.blob(d).unwrap().size > 50_000)
        .unwrap();
    let f = b.index().frames[b.blob(&victim).unwrap().frame].clone();
    drop(b);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[(f.offset + f.length / 2) as usize] ^= 0x20;
    std::fs::write(&p, &bytes).unwrap();
    let out = crate::util::run(
        crate::util::pinbundle()
            .args(["verify", "--json"])
            .arg(&p)
            .stdout(Stdio::piped()),
    );
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["digest"], victim.to_string());
}
