//! Split volumes: the writer's limits and parts (library level, many shapes), then `create
//! --volume-size`, `verify`, `inspect`, stock-tool extraction and `load` against a real
//! registry and store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use pinbundle::bundle::{Bundle, BundleSet, Compression, Output, SetOptions, WriterOptions};
use pinbundle::reference::Digest;
use serde_json::Value;

use crate::create::Env;
use crate::load::{Store, is_root};
use crate::util::{ok, pinbundle, run, tempdir, text};

/// Deterministic noise (incompressible) or text (compressible) of `len` bytes.
fn content(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
    let bytes = crate::util::noise(len, seed);
    if compressible {
        bytes
            .iter()
            .map(|b| b"abcdefgh "[usize::from(b % 9)])
            .collect()
    } else {
        bytes
    }
}

fn head(blobs: &[(Vec<u8>, Compression)]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    crate::util::head_for(blobs.iter().map(|(b, _)| &b[..]))
}

/// Writes `blobs` as volumes of `size` under `dir/v.pinbundle.NNN`; returns their paths.
fn write_set(
    dir: &Path,
    blobs: &[(Vec<u8>, Compression)],
    size: u64,
    frame_size: usize,
) -> Vec<PathBuf> {
    let (manifest, layout, index) = head(blobs);
    let mut w = Output::create(
        &dir.join("v.pinbundle"),
        Some(size),
        WriterOptions {
            frame_size,
            level: 3,
            mtime: 0,
        },
        &[
            ("pinbundle.json", &manifest),
            ("oci-layout", &layout),
            ("index.json", &index),
        ],
    )
    .unwrap();
    for (b, c) in blobs {
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

#[test]
fn volumes_respect_their_size_and_rejoin_every_blob() {
    let kib = 1024usize;
    // Sizes around frame and volume boundaries, empty blobs, compressible ones that the
    // writer can only measure after compressing, and one bigger than several volumes.
    let shapes: Vec<(usize, bool, Compression)> = vec![
        (0, false, Compression::Zstd),
        (1, false, Compression::Store),
        (511, true, Compression::Zstd),
        (8 * kib, false, Compression::Store),
        (8 * kib + 1, false, Compression::Store),
        (100 * kib, true, Compression::Zstd),
        (150 * kib, false, Compression::Zstd),
        (333 * kib + 7, false, Compression::Store),
        (700 * kib, false, Compression::Store),
    ];
    for (volume_size, frame_size) in [(64 * kib as u64, 4 * kib), (200 * kib as u64, 8 * kib)] {
        let dir = tempdir();
        let blobs: Vec<(Vec<u8>, Compression)> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(len, text, c))| (content(len, i as u64 + 1, text), c))
            .collect();
        let paths = write_set(dir.path(), &blobs, volume_size, frame_size);
        assert!(paths.len() > 3, "{} volumes of {volume_size}", paths.len());
        let mut split = 0;
        for (i, p) in paths.iter().enumerate() {
            let len = std::fs::metadata(p).unwrap().len();
            assert!(
                len <= volume_size,
                "{} is {len} > {volume_size}",
                p.display()
            );
            // Each volume is a bundle of its own, numbered, and verifies alone.
            let b = Bundle::open(p).unwrap();
            let v = b.index().volume.clone().unwrap();
            assert_eq!((v.index, v.count), (i as u32 + 1, paths.len() as u32));
            split += b
                .index()
                .members
                .iter()
                .filter(|m| m.part.is_some())
                .count();
            let r = pinbundle::verify::verify_paths(
                std::slice::from_ref(p),
                SetOptions {
                    allow_partial: true,
                    find_siblings: false,
                },
                &Default::default(),
                &pinbundle::progress::Silent,
            )
            .unwrap();
            assert!(r.ok(), "{}: {:?}", p.display(), r.problems);
        }
        assert!(split >= 3, "only {split} parts");
        // Together, in reverse order, every blob reads back whole.
        let mut shuffled = paths.clone();
        shuffled.reverse();
        let set = BundleSet::open(&shuffled, SetOptions::default()).unwrap();
        for (b, _) in &blobs {
            let loc = set.blob(&Digest::of(b)).unwrap();
            assert_eq!(&set.read_blob(loc).unwrap(), b);
            set.verify_blob(loc, |_| {}).unwrap();
        }
        // No temporary files are left beside the volumes.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), paths.len(), "{names:?}");
    }
}

#[test]
fn a_volume_too_small_for_its_head_is_refused() {
    let dir = tempdir();
    let blobs = vec![(content(10_000, 1, false), Compression::Store)];
    let (manifest, layout, index) = head(&blobs);
    let big_manifest = [manifest.clone(), content(80_000, 9, false)].concat();
    let r = Output::create(
        &dir.path().join("v"),
        Some(64 << 10),
        WriterOptions::default(),
        &[
            ("pinbundle.json", &big_manifest),
            ("oci-layout", &layout),
            ("index.json", &index),
        ],
    );
    let e = r
        .err()
        .expect("a 64 KiB volume cannot hold an 80 KB manifest");
    assert!(e.to_string().contains("--volume-size"), "{e}");
}

/// `create` once as a file and once as volumes from the same images.
struct Made {
    env: Env,
    dir: tempfile::TempDir,
    refs: Vec<String>,
    single: PathBuf,
    volumes: Vec<PathBuf>,
    volume_size: u64,
}

fn make() -> Made {
    let env = Env::new();
    let big = pinbundle_fixtures::push_sized(
        env.registry.addr(),
        "bench/vol",
        &[400 << 10, 150 << 10],
        11,
        None,
    )
    .unwrap();
    let dir = tempdir();
    let refs = vec![
        big.tag_reference(),
        env.image("oci-multi").tag_reference(),
        env.image("docker").tag_reference(),
    ];
    let single = dir.path().join("one.pinbundle");
    let o = env.create(&dir.path().join("cache"), &single, &refs, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // A third of the bundle plus room for each volume's head and index: three volumes, and
    // the 400 KiB layer is larger than one of them.
    let volume_size = std::fs::metadata(&single).unwrap().len() / 3 + (40 << 10);
    let out = dir.path().join("set").join("b.pinbundle");
    std::fs::create_dir(out.parent().unwrap()).unwrap();
    let o = env.create(
        &dir.path().join("cache"),
        &out,
        &refs,
        &["--volume-size", &volume_size.to_string(), "--json"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let volumes: Vec<PathBuf> = report["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| PathBuf::from(v["path"].as_str().unwrap()))
        .collect();
    Made {
        env,
        dir,
        refs,
        single,
        volumes,
        volume_size,
    }
}

fn verify_json(args: &[&Path], extra: &[&str]) -> (i32, Value) {
    let o = run(pinbundle()
        .args(["verify", "--json"])
        .args(extra)
        .args(args));
    let v = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (o.status.code().unwrap_or(-1), v)
}

#[test]
fn a_three_volume_set_verifies_alone_and_together_extracts_and_loads_in_any_order() {
    let m = make();
    assert_eq!(m.volumes.len(), 3, "{:?}", m.volumes);
    let names: Vec<String> = m
        .volumes
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["b.pinbundle.001", "b.pinbundle.002", "b.pinbundle.003"]
    );
    let set_dir = m.volumes[0].parent().unwrap().to_path_buf();
    assert_eq!(
        std::fs::read_dir(&set_dir).unwrap().count(),
        3,
        "stray files"
    );
    for v in &m.volumes {
        let len = std::fs::metadata(v).unwrap().len();
        assert!(len <= m.volume_size, "{} is {len} bytes", v.display());
        // Alone.
        let (code, r) = verify_json(&[v], &["--partial"]);
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["volumes"]["present"].as_array().unwrap().len(), 1);
        assert_eq!(r["volumes"]["missing"].as_array().unwrap().len(), 2);
    }
    // The 400 KiB layer does not fit one volume: it is cut into parts.
    let parts: usize = m
        .volumes
        .iter()
        .map(|v| {
            Bundle::open(v)
                .unwrap()
                .index()
                .members
                .iter()
                .filter(|e| e.part.is_some())
                .count()
        })
        .sum();
    assert!(parts >= 2, "{parts} parts");

    // Together: from the first volume, a shuffled list, or the directory.
    let [a, b, c] = [&m.volumes[0], &m.volumes[1], &m.volumes[2]];
    for args in [vec![a.as_path()], vec![c, a, b], vec![set_dir.as_path()]] {
        let (code, r) = verify_json(&args, &[]);
        assert_eq!(code, 0, "{args:?}: {r}");
        assert_eq!(r["volumes"]["count"], 3);
        assert_eq!(r["images"], 3);
    }
    let o = ok(pinbundle().args(["inspect", "--json"]).arg(b));
    let inspect: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(inspect["volumes"]["present"].as_array().unwrap().len(), 3);
    let single = crate::create::inspect_json(&m.single);
    assert_eq!(inspect["blobs"], single["blobs"]);
    assert_eq!(inspect["images"], single["images"]);

    // Stock tools: cat, zstd -dc | tar -x (one tar stream: only the last volume ends the
    // archive), then cat the parts back together.
    let whole = m.dir.path().join("whole");
    let mut cat = Command::new("cat");
    cat.args(&m.volumes);
    std::fs::write(&whole, ok(&mut cat).stdout).unwrap();
    let x = m.dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    ok(Command::new("sh").current_dir(&x).arg("-c").arg(format!(
        "zstd -dcq '{}' | tar -x && for p in blobs/sha256/*.part-001; do \
         b=${{p%.part-001}}; cat \"$b\".part-* > \"$b\" && rm \"$b\".part-*; done",
        whole.display()
    )));
    let mut extracted: BTreeMap<String, u64> = BTreeMap::new();
    for e in std::fs::read_dir(x.join("blobs/sha256")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            crate::util::sha256_file(&p),
            format!("sha256:{name}"),
            "extracted blob {name} does not match its name"
        );
        extracted.insert(name, std::fs::metadata(&p).unwrap().len());
    }
    let listed: BTreeMap<String, u64> = single["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["digest"].as_str().unwrap()[7..].to_string(),
                b["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(extracted, listed);
    // One volume alone extracts too, with the parts it holds.
    let y = m.dir.path().join("y");
    std::fs::create_dir(&y).unwrap();
    ok(Command::new("sh")
        .current_dir(&y)
        .arg("-c")
        .arg(format!("zstd -dcq '{}' | tar -x", b.display())));
    assert!(y.join("pinbundle.json").is_file());

    // Load from the volumes in shuffled order.
    if !is_root() {
        eprintln!("SKIPPED volume load: needs root");
        return;
    }
    let store = Store::new(m.dir.path(), "vfs");
    let o = run(pinbundle()
        .arg("load")
        .args(crate::load::kubelet_off())
        .args([c, a, b])
        .args(store.args())
        .arg("--no-pin")
        .arg("--lock-file")
        .arg(m.dir.path().join("lock"))
        .arg("--json"));
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["volumes"]["present"].as_array().unwrap().len(), 3);
    let inspect_images = single["images"].as_array().unwrap();
    for i in inspect_images {
        let pin = format!(
            "{}@{}",
            i["name"].as_str().unwrap(),
            i["digest"].as_str().unwrap()
        );
        assert!(store.exists(&pin), "{pin} not in the store");
    }
    assert_eq!(inspect_images.len(), m.refs.len());
}

#[test]
fn missing_foreign_and_damaged_volumes_are_named_before_anything_is_loaded() {
    let m = make();
    let [a, b, c] = [&m.volumes[0], &m.volumes[1], &m.volumes[2]];
    // Missing: volume 2 moved away.
    let away = m.dir.path().join("away.002");
    std::fs::rename(b, &away).unwrap();
    let (code, r) = verify_json(&[a], &[]);
    assert_eq!(code, 1, "{r}");
    let err = r["problems"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("volume 2") && err.contains("b.pinbundle.002"),
        "{err}"
    );
    let store = Store::new(m.dir.path(), "vfs");
    let drop_in = m.dir.path().join("crio.conf.d/50-pinned-images");
    let o = run(pinbundle()
        .arg("load")
        .args(crate::load::kubelet_off())
        .args([c, a])
        .args(store.args())
        .args(crate::load::crio_config_args(&drop_in))
        .arg("--crio-drop-in")
        .arg(&drop_in)
        .arg("--lock-file")
        .arg(m.dir.path().join("lock")));
    assert!(!o.status.success());
    let out = text(&o.stdout) + &text(&o.stderr);
    assert!(out.contains("b.pinbundle.002"), "{out}");
    assert!(!store.root.exists(), "the store was touched");
    assert!(!drop_in.exists(), "the drop-in was written");
    std::fs::rename(&away, b).unwrap();

    // Foreign: a volume of another set in the list is named.
    let other = m.dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let o = m.env.create(
        &m.dir.path().join("cache"),
        &other.join("o.pinbundle"),
        &m.refs[1..],
        &["--volume-size", "100KiB"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stranger = other.join("o.pinbundle.001");
    let (code, r) = verify_json(&[a, b, &stranger], &[]);
    assert_eq!(code, 1, "{r}");
    let err = r["problems"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("o.pinbundle.001") && err.contains("another set"),
        "{err}"
    );

    // Damage inside a part is found when the set is verified, naming the blob.
    let vol = Bundle::open(b).unwrap();
    let part = vol
        .index()
        .members
        .iter()
        .find(|e| e.part.is_some())
        .expect("volume 2 holds a part")
        .clone();
    let frame = vol.index().frames[part.frame + 1].clone();
    drop(vol);
    let mut bytes = std::fs::read(b).unwrap();
    bytes[(frame.offset + frame.length / 2) as usize] ^= 0x10;
    std::fs::write(b, &bytes).unwrap();
    let (code, r) = verify_json(&[a], &[]);
    assert_eq!(code, 1, "{r}");
    let digest = part.digest.to_string();
    assert!(
        r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["digest"] == digest.as_str()),
        "{r}"
    );
}

/// Opens and verifies `paths` as a set; true when both succeed without problems.
fn set_ok(paths: &[PathBuf]) -> bool {
    let r = pinbundle::verify::verify_paths(
        paths,
        SetOptions::default(),
        &Default::default(),
        &pinbundle::progress::Silent,
    );
    matches!(r, Ok(r) if r.ok())
}

#[test]
fn tampered_volume_indexes_are_refused() {
    let dir = tempdir();
    let blobs: Vec<(Vec<u8>, Compression)> = (0..4)
        .map(|i| (content(90 << 10, i + 1, false), Compression::Store))
        .collect();
    let paths = write_set(dir.path(), &blobs, 96 << 10, 4 << 10);
    assert!(paths.len() >= 3);
    assert!(set_ok(&paths), "the untouched set verifies");
    // The volume holding the first part that continues in the next volume.
    let (vi, mi) = paths
        .iter()
        .enumerate()
        .find_map(|(vi, p)| {
            let b = Bundle::open(p).unwrap();
            let mi = b.index().members.iter().position(|m| m.part.is_some())?;
            Some((vi, mi))
        })
        .expect("a split blob");
    let orig = std::fs::read(&paths[vi]).unwrap();
    type Edit = Box<dyn Fn(&mut pinbundle::bundle::format::SeekIndex)>;
    let edits: Vec<(&str, Edit)> = vec![
        ("volume field removed", Box::new(|i| i.volume = None)),
        (
            "index beyond count",
            Box::new(|i| {
                let v = i.volume.as_mut().unwrap();
                v.index = v.count + 1;
            }),
        ),
        (
            "another set",
            Box::new(|i| i.volume.as_mut().unwrap().set = Digest::of(b"other")),
        ),
        (
            "count changed",
            Box::new(|i| i.volume.as_mut().unwrap().count += 1),
        ),
        (
            "part offset moved",
            Box::new(move |i| i.members[mi].part.as_mut().unwrap().offset += 512),
        ),
        (
            "part renumbered",
            Box::new(move |i| {
                let m = &mut i.members[mi];
                m.part.as_mut().unwrap().index += 1;
                m.path =
                    pinbundle::bundle::format::part_path(&m.digest, m.part.as_ref().unwrap().index);
            }),
        ),
        (
            "part path traversal",
            Box::new(move |i| i.members[mi].path = "../../etc/passwd".into()),
        ),
        (
            "part turned whole",
            Box::new(move |i| {
                let m = &mut i.members[mi];
                m.part = None;
                m.path = m.digest.layout_path();
            }),
        ),
    ];
    for (what, edit) in edits {
        std::fs::write(&paths[vi], crate::util::with_index(&orig, |i| edit(i))).unwrap();
        assert!(!set_ok(&paths), "{what}: accepted");
    }
    std::fs::write(&paths[vi], &orig).unwrap();
    assert!(set_ok(&paths));
    // Only the last volume ends the tar archive: an end-of-archive moved is refused.
    let last = paths.len() - 1;
    let last_orig = std::fs::read(&paths[last]).unwrap();
    let cut = crate::util::with_frames(&last_orig, |frames, index| {
        frames.pop();
        index.frames.pop();
    });
    std::fs::write(&paths[last], cut).unwrap();
    assert!(
        !set_ok(&paths),
        "last volume without its end-of-archive: accepted"
    );
    std::fs::write(&paths[last], &last_orig).unwrap();
    let first_orig = std::fs::read(&paths[0]).unwrap();
    let eof_frame = {
        let b = Bundle::open(&paths[last]).unwrap();
        let f = b.index().frames.last().unwrap().clone();
        (
            last_orig[f.offset as usize..(f.offset + f.length) as usize].to_vec(),
            f,
        )
    };
    let grown = crate::util::with_frames(&first_orig, |frames, index| {
        frames.push(eof_frame.0.clone());
        index.frames.push(eof_frame.1.clone());
    });
    std::fs::write(&paths[0], grown).unwrap();
    assert!(!set_ok(&paths), "end-of-archive in volume 1: accepted");
    std::fs::write(&paths[0], &first_orig).unwrap();
    assert!(set_ok(&paths));
    // The same volume twice (a copy under another name) is named.
    let copy = dir.path().join("copy.001");
    std::fs::copy(&paths[0], &copy).unwrap();
    let mut with_copy = paths.clone();
    with_copy.push(copy.clone());
    let e = BundleSet::open(&with_copy, SetOptions::default()).unwrap_err();
    assert!(e.to_string().contains("given twice"), "{e}");
}
