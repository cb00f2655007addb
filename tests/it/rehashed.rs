//! The attacker who re-hashes (issue 14): hostile inputs that change a real bundle's
//! structure and then recompute every checksum that is not a secret (frame XXH3, zstd content
//! checksums, the seek index's sha256, the footer), so that only the signature and the
//! digests it covers stand in the way. At least one input per class of the issue, for signed
//! and unsigned bundles and volume sets. Each goes through `verify` and `load` (vfs store in a
//! temp dir, a drop-in with an existing pin, `--reload none`, no CRI socket, under `timeout`
//! and `/usr/bin/time`), which must refuse it (exit 1 or 2, no signal, no hang) with an error
//! naming the problem, with peak RSS under 128 MiB, no raw control character in their output,
//! and no change to the store or the drop-in. Inputs `verify` accepts go through the
//! differential oracle (`oracle.rs`).
//!
//! The suite prints one line per input that got through, and the summary
//! `re-hashed hostile inputs: N, rejected: N, changes: N`.

use std::path::{Path, PathBuf};
use std::process::Command;

use pinbundle::bundle::format::{PartInfo, VolumeInfo, media, part_path};
use pinbundle::reference::Digest;
use serde_json::{Value, json};

use crate::create::Env;
use crate::reserialise::{
    BLOCK, Decoded, Frame, retarget_header, skippable_frame, stored_frame, tar_entry, zstd_frame,
};
use crate::util::{pinbundle, run, tempdir, text};

/// Peak RSS allowed for `verify` and `load` on any input (issue 14).
const MAX_RSS_KIB: u64 = 128 << 10;
const EXISTING_PINS: &str = "[crio]\n  [crio.image]\n    pinned_images = [\"quay.io/other/app@sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\"]\n";

enum Input {
    File(Vec<u8>),
    /// Volume files `v.pinbundle.NNN`, all given on the command line.
    Volumes(Vec<Vec<u8>>),
    /// A directory of `n` hard links to one file.
    Dir(usize, Vec<u8>),
    /// A FIFO where the bundle should be.
    Fifo,
    /// `verify BASE`; `load DELTA --base BASE`.
    Delta {
        delta: Vec<u8>,
        base: Vec<u8>,
    },
}

struct Case {
    class: u8,
    name: String,
    input: Input,
    /// Run with `--trust-key` (the bundle was signed with it).
    trust: bool,
    /// Fragments (lowercase) of which the output must contain one.
    expect: &'static [&'static str],
    /// `verify` may accept it (what is wrong shows only when loading).
    verify_may_pass: bool,
    timeout: u64,
}

fn case(class: u8, name: impl Into<String>, input: Input, expect: &'static [&'static str]) -> Case {
    Case {
        class,
        name: name.into(),
        input,
        trust: false,
        expect,
        verify_may_pass: false,
        timeout: 60,
    }
}

/// What running one case found.
struct Outcome {
    problems: Vec<String>,
    changed: bool,
    /// The files `verify` accepted (for the oracle), if it did.
    accepted: Option<Vec<PathBuf>>,
    rss: (u64, u64),
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    crate::util::files_under(dir)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// Images or layers a vfs store holds (0 when it does not exist).
fn store_entries(root: &Path) -> usize {
    ["vfs-images/images.json", "vfs-layers/layers.json"]
        .iter()
        .map(|f| {
            std::fs::read(root.join(f))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(0)
        })
        .sum()
}

/// A raw control character (C0 other than newline and tab, DEL, C1) in `b`.
fn raw_control(b: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(b);
    s.chars()
        .find(|&c| {
            (c.is_control() && c != '\n' && c != '\t')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .map(|c| format!("{:?}", c))
}

/// Runs `pinbundle ARGS` under `timeout` and `/usr/bin/time`: exit code (124 on timeout),
/// stdout, stderr and peak RSS in KiB.
fn timed(
    dir: &Path,
    tag: &str,
    secs: u64,
    args: &[String],
) -> (Option<i32>, Vec<u8>, Vec<u8>, u64) {
    let rss = dir.join(format!("{tag}.rss"));
    let o = run(Command::new("timeout")
        .args([
            "-k",
            "3",
            &secs.to_string(),
            "/usr/bin/time",
            "-f",
            "%M",
            "-o",
        ])
        .arg(&rss)
        .arg(env!("CARGO_BIN_EXE_pinbundle"))
        .args(args)
        .env("PINBUNDLE_NO_PROGRESS", "1")
        .env("PINBUNDLE_STATE_DIR", crate::util::STATE_DIR));
    let kib = std::fs::read_to_string(&rss)
        .unwrap_or_default()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (o.status.code(), o.stdout, o.stderr, kib)
}

fn run_case(dir: &Path, key: &Path, c: &Case) -> Outcome {
    let d = dir.join(format!(
        "{}-{}",
        c.class,
        c.name.replace(|ch: char| !ch.is_ascii_alphanumeric(), "_")
    ));
    std::fs::create_dir_all(&d).unwrap();
    let mut problems = Vec::new();
    let s = |p: &Path| p.display().to_string();
    // (verify args, load args, files for the oracle)
    let (verify_args, load_args, files): (Vec<String>, Vec<String>, Vec<PathBuf>) = match &c.input {
        Input::File(b) => {
            let p = d.join("b.pinbundle");
            std::fs::write(&p, b).unwrap();
            (vec![s(&p)], vec![s(&p)], vec![p])
        }
        Input::Volumes(vs) => {
            let ps: Vec<PathBuf> = (1..=vs.len())
                .map(|i| d.join(format!("v.pinbundle.{i:03}")))
                .collect();
            for (p, b) in ps.iter().zip(vs) {
                std::fs::write(p, b).unwrap();
            }
            let a: Vec<String> = ps.iter().map(|p| s(p)).collect();
            (a.clone(), a, ps)
        }
        Input::Dir(n, b) => {
            let v = d.join("vols");
            std::fs::create_dir(&v).unwrap();
            let first = v.join("f00000");
            std::fs::write(&first, b).unwrap();
            for i in 1..*n {
                std::fs::hard_link(&first, v.join(format!("f{i:05}"))).unwrap();
            }
            (vec![s(&v)], vec![s(&v)], Vec::new())
        }
        Input::Fifo => {
            let p = d.join("b.pinbundle");
            crate::util::ok(Command::new("mkfifo").arg(&p));
            (vec![s(&p)], vec![s(&p)], Vec::new())
        }
        Input::Delta { delta, base } => {
            let (dp, bp) = (d.join("delta.pinbundle"), d.join("base.pinbundle"));
            std::fs::write(&dp, delta).unwrap();
            std::fs::write(&bp, base).unwrap();
            (
                vec![s(&bp)],
                vec![s(&dp), "--base".into(), s(&bp)],
                vec![bp],
            )
        }
    };
    let trust: Vec<String> = if c.trust {
        vec!["--trust-key".into(), s(&key.with_extension("pub"))]
    } else {
        Vec::new()
    };
    let conf = d.join("crio.conf.d");
    std::fs::create_dir(&conf).unwrap();
    let drop_in = conf.join("50-pinned-images");
    std::fs::write(&drop_in, EXISTING_PINS).unwrap();
    let before = snapshot(&conf);

    let check = |what: &str,
                 (code, stdout, stderr, kib): &(Option<i32>, Vec<u8>, Vec<u8>, u64),
                 may_pass: bool,
                 problems: &mut Vec<String>| {
        let out = format!("{}{}", text(stdout), text(stderr)).to_lowercase();
        let shown = || {
            let o = out.trim().replace('\n', " | ");
            text(&o.as_bytes()[..o.len().min(300)])
        };
        match code {
            Some(124) => problems.push(format!("{what} hung (killed after {}s)", c.timeout)),
            Some(0) if may_pass => {}
            Some(1 | 2) => {
                if !c.expect.iter().any(|e| out.contains(e)) {
                    problems.push(format!(
                        "{what} refused but without naming the problem ({:?}): {}",
                        c.expect,
                        shown()
                    ));
                }
            }
            other => problems.push(format!(
                "{what} exit {other:?} (expected 1 or 2): {}",
                shown()
            )),
        }
        if *kib > MAX_RSS_KIB {
            problems.push(format!("{what} peak RSS {} MiB", kib >> 10));
        }
        for (stream, b) in [("stdout", stdout), ("stderr", stderr)] {
            if let Some(ch) = raw_control(b) {
                problems.push(format!(
                    "{what} wrote a raw control character {ch} to {stream}"
                ));
            }
        }
    };

    let mut va = vec!["verify".to_string()];
    // A delta's base needs no signature: `verify` checks it alone, without the key.
    if !matches!(c.input, Input::Delta { .. }) {
        va.extend(trust.iter().cloned());
    }
    va.extend(verify_args);
    let v = timed(&d, "verify", c.timeout, &va);
    check("verify", &v, c.verify_may_pass, &mut problems);
    let accepted = (v.0 == Some(0)).then(|| files.clone());

    let storage = d.join("storage");
    let mut la = vec!["load".to_string()];
    la.extend(load_args);
    la.extend(trust);
    la.extend(
        [
            "--storage-root",
            &s(&storage),
            "--runroot",
            &s(&d.join("run")),
            "--storage-driver",
            "vfs",
            "--reload",
            "none",
            "--crio-config",
            &s(&d.join("no-crio.conf")),
            "--crio-config-dir",
            &s(drop_in.parent().expect("in a dir")),
            "--crio-drop-in",
            &s(&drop_in),
            "--cri-socket",
            &s(&d.join("no.sock")),
            "--lock-file",
            &s(&d.join("load.lock")),
        ]
        .map(String::from),
    );
    let l = timed(&d, "load", c.timeout, &la);
    check("load", &l, false, &mut problems);
    let mut changed = false;
    if store_entries(&storage) != 0 {
        problems.push("CHANGE: load left images or layers in the store".into());
        changed = true;
    }
    if snapshot(&conf) != before {
        problems.push("CHANGE: load changed the drop-in directory".into());
        changed = true;
    }
    if storage.exists() {
        let _ = Command::new("umount").arg("-R").arg(&storage).output();
    }
    if problems.is_empty() {
        let _ = std::fs::remove_dir_all(d.join("storage"));
    }
    Outcome {
        problems,
        changed,
        accepted,
        rss: (v.3, l.3),
    }
}

// ---- mutations of one decoded file; `Err` when the file has nothing they apply to ----

type Mutation = fn(&mut Decoded) -> Result<(), String>;

/// Whole blob members, largest first.
fn blobs(d: &Decoded) -> Vec<usize> {
    let mut v: Vec<usize> = (0..d.index.members.len())
        .filter(|&i| {
            let m = &d.index.members[i];
            m.path.starts_with("blobs/") && m.part.is_none() && m.size > 0
        })
        .collect();
    v.sort_by_key(|&i| std::cmp::Reverse(d.index.members[i].size));
    v
}

/// A frame of a blob (or part) holding content, not just a tar header; stored or compressed.
fn blob_frame(d: &Decoded, stored: bool) -> Result<usize, String> {
    d.index
        .members
        .iter()
        .filter(|m| m.path.starts_with("blobs/"))
        .flat_map(|m| {
            let header_only = m.frames > 1 && d.frames[m.frame].size == BLOCK as u64;
            m.frame + usize::from(header_only)..m.frame + m.frames
        })
        .find(|&fi| d.frames[fi].is_stored() == stored && d.frames[fi].size >= BLOCK as u64)
        .ok_or_else(|| {
            format!(
                "no {} blob frame",
                if stored { "stored" } else { "compressed" }
            )
        })
}

/// Class 1: the largest whole blob becomes `<hex>.part-001` (with volume fields when the file
/// has none) holding other bytes of the same size; the digest stays the signed one.
fn single_part_swap(d: &mut Decoded) -> Result<(), String> {
    // A layer: manifests and configs are read whole by verify anyway.
    let layers: Vec<String> = manifest_json(d)["blobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["kind"] == "layer")
        .filter_map(|b| b["digest"].as_str().map(String::from))
        .collect();
    let mi = *blobs(d)
        .iter()
        .find(|&&i| layers.contains(&d.index.members[i].digest.to_string()))
        .ok_or("no whole layer")?;
    single_part_swap_of(d, mi)
}

fn single_part_swap_of(d: &mut Decoded, mi: usize) -> Result<(), String> {
    let m = d.index.members[mi].clone();
    let swapped: Vec<u8> = d.content(mi).iter().map(|b| b ^ 0x5a).collect();
    let path = part_path(&m.digest, 1);
    let header = retarget_header(&d.header(mi).ok_or("no header")?, &path, m.size);
    let frame_size = d.frames[m.frame..m.frame + m.frames]
        .iter()
        .map(|f| f.size as usize)
        .max()
        .unwrap_or(BLOCK);
    let stored = d.frames[m.frame].is_stored();
    d.rewrite_member(mi, header, &swapped, frame_size, stored);
    let e = &mut d.index.members[mi];
    e.path = path;
    e.part = Some(PartInfo {
        index: 1,
        offset: 0,
    });
    if d.index.volume.is_none() {
        d.index.volume = Some(VolumeInfo {
            set: d.index.members[0].digest.clone(),
            index: 1,
            count: 1,
        });
    }
    Ok(())
}

/// Class 3: a stored frame's zstd content checksum is wrong (XXH3 recomputed over it).
fn stored_bad_checksum(d: &mut Decoded) -> Result<(), String> {
    let fi = blob_frame(d, true)?;
    let mut raw = d.frames[fi].bytes();
    let n = raw.len();
    raw[n - 1] ^= 1;
    d.frames[fi].raw = Some(raw);
    Ok(())
}

/// Class 4: tar entries hidden before a blob's header by a `dataOffset` above 512.
fn hidden(d: &mut Decoded, entries: Vec<u8>) -> Result<(), String> {
    let mi = *blobs(d).last().ok_or("no blob")?;
    let fi = d.index.members[mi].frame;
    let mut content = entries.clone();
    content.extend_from_slice(&d.frames[fi].content);
    d.frames[fi].set_content(content);
    d.index.members[mi].data_offset += entries.len() as u64;
    Ok(())
}

fn hidden_setuid(d: &mut Decoded) -> Result<(), String> {
    hidden(d, tar_entry("evil-suid", b"#!/bin/sh\nid\n", 0o4755))
}

fn hidden_index_json(d: &mut Decoded) -> Result<(), String> {
    hidden(
        d,
        tar_entry(
            "index.json",
            br#"{"schemaVersion":2,"manifests":[]}"#,
            0o644,
        ),
    )
}

/// Class 7: bytes after a frame inside its extent.
fn with_tail(d: &mut Decoded, stored: bool, tail: &[u8]) -> Result<(), String> {
    let fi = blob_frame(d, stored)?;
    let mut raw = d.frames[fi].bytes();
    raw.extend_from_slice(tail);
    d.frames[fi].raw = Some(raw);
    Ok(())
}

fn skippable_in_stored(d: &mut Decoded) -> Result<(), String> {
    with_tail(d, true, &skippable_frame(0, b"unsigned bytes ride along"))
}

fn skippable_in_compressed(d: &mut Decoded) -> Result<(), String> {
    with_tail(d, false, &skippable_frame(7, b"unsigned bytes ride along"))
}

fn empty_frame_in_stored(d: &mut Decoded) -> Result<(), String> {
    with_tail(d, true, &stored_frame(b"", true, true))
}

fn empty_frame_in_compressed(d: &mut Decoded) -> Result<(), String> {
    with_tail(d, false, &zstd_frame(b"", true, true))
}

/// Class 7: a frame re-encoded without the content checksum or the content size.
fn reencode(d: &mut Decoded, stored: bool, size: bool, checksum: bool) -> Result<(), String> {
    let fi = blob_frame(d, stored)?;
    let c = &d.frames[fi].content;
    let raw = if stored {
        stored_frame(c, size, checksum)
    } else {
        zstd_frame(c, size, checksum)
    };
    d.frames[fi].raw = Some(raw);
    Ok(())
}

fn no_checksum_stored(d: &mut Decoded) -> Result<(), String> {
    reencode(d, true, true, false)
}
fn no_checksum_compressed(d: &mut Decoded) -> Result<(), String> {
    reencode(d, false, true, false)
}
fn no_size_stored(d: &mut Decoded) -> Result<(), String> {
    reencode(d, true, false, true)
}
fn no_size_compressed(d: &mut Decoded) -> Result<(), String> {
    reencode(d, false, false, true)
}

const DIGEST: &[&str] = &["digest", "sha256"];
const CHECKSUM: &[&str] = &["checksum"];
const DATA_OFFSET: &[&str] = &["dataoffset", "data offset"];
const EXTRA_FRAME: &[&str] = &[
    "trailing",
    "skippable",
    "extra",
    "more than one",
    "exactly one",
    "one zstd frame",
    "after the frame",
    "after its frame",
];
const CONTENT_SIZE: &[&str] = &["content size"];

/// The structural mutations, each with its class and the fragments its refusal must name.
fn mutations() -> Vec<(u8, &'static str, Mutation, &'static [&'static str])> {
    vec![
        (
            1,
            "single part, swapped same-size layer",
            single_part_swap as Mutation,
            DIGEST,
        ),
        (
            3,
            "stored frame, wrong zstd content checksum",
            stored_bad_checksum as Mutation,
            CHECKSUM,
        ),
        (
            4,
            "dataOffset > 512 hides a setuid file",
            hidden_setuid as Mutation,
            DATA_OFFSET,
        ),
        (
            4,
            "dataOffset > 512 hides a second index.json",
            hidden_index_json as Mutation,
            DATA_OFFSET,
        ),
        (
            7,
            "skippable frame inside a stored frame's extent",
            skippable_in_stored as Mutation,
            EXTRA_FRAME,
        ),
        (
            7,
            "skippable frame inside a compressed frame's extent",
            skippable_in_compressed as Mutation,
            EXTRA_FRAME,
        ),
        (
            7,
            "empty zstd frame inside a stored frame's extent",
            empty_frame_in_stored as Mutation,
            EXTRA_FRAME,
        ),
        (
            7,
            "empty zstd frame inside a compressed frame's extent",
            empty_frame_in_compressed as Mutation,
            EXTRA_FRAME,
        ),
        (
            7,
            "stored frame without content checksum",
            no_checksum_stored as Mutation,
            CHECKSUM,
        ),
        (
            7,
            "compressed frame without content checksum",
            no_checksum_compressed as Mutation,
            CHECKSUM,
        ),
        (
            7,
            "stored frame without content size",
            no_size_stored as Mutation,
            CONTENT_SIZE,
        ),
        (
            7,
            "compressed frame without content size",
            no_size_compressed as Mutation,
            CONTENT_SIZE,
        ),
    ]
}

// ---- pinbundle.json edits (unsigned: an attacker cannot re-sign) ----

fn manifest_json(d: &Decoded) -> Value {
    serde_json::from_slice(&d.content(0)).unwrap()
}

fn with_manifest(d: &Decoded, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut d = d.clone();
    let mut m = manifest_json(&d);
    edit(&mut m);
    d.set_manifest(&serde_json::to_vec_pretty(&m).unwrap());
    d.encode()
}

/// Layer digests of pinbundle.json, in order.
fn layer_entries(m: &Value) -> Vec<usize> {
    m["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, b)| b["kind"] == "layer")
        .map(|(i, _)| i)
        .collect()
}

/// Sets every layer's `uncompressedSize` by `size(i)` and the images' and totals' sums to the
/// wrapping sums (what a writer that does not check would write).
fn set_uncompressed(m: &mut Value, size: impl Fn(usize) -> u64) {
    let layers = layer_entries(m);
    let mut by_digest = std::collections::BTreeMap::new();
    for (n, &i) in layers.iter().enumerate() {
        m["blobs"][i]["uncompressedSize"] = json!(size(n));
        by_digest.insert(
            m["blobs"][i]["digest"].as_str().unwrap().to_string(),
            size(n),
        );
    }
    let total = by_digest.values().fold(0u64, |a, b| a.wrapping_add(*b));
    m["totals"]["uncompressedSize"] = json!(total);
    for img in m["images"].as_array_mut().unwrap() {
        let sum = img["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| by_digest.get(b.as_str().unwrap()))
            .fold(0u64, |a, b| a.wrapping_add(*b));
        img["uncompressedSize"] = json!(sum);
    }
}

/// Class 5: a manifest blob of 3 GiB of zeros (193 frames, about 100 KiB on disk) that the
/// first image points at, listed in pinbundle.json and index.json.
fn zero_manifest(d: &Decoded) -> Vec<u8> {
    const FRAME: usize = 16 << 20;
    const LEN: u64 = 3 << 30;
    let mut d = d.clone();
    let zeros = vec![0u8; FRAME];
    let digest = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for _ in 0..LEN / FRAME as u64 {
            h.update(&zeros);
        }
        Digest::from_hash(h.finalize().into())
    };
    let path = digest.layout_path();
    let template = d.header(d.member("oci-layout").unwrap()).unwrap();
    let mut first = retarget_header(&template, &path, LEN).to_vec();
    first.extend_from_slice(&zeros[BLOCK..]);
    let small = |content: &[u8], stored| {
        let f = Frame::new(content.to_vec(), stored);
        Frame {
            raw: Some(f.bytes()),
            content: Vec::new(),
            ..f
        }
    };
    let mut frames = vec![small(&first, false)];
    let zero_frame = small(&zeros, false);
    frames.extend(std::iter::repeat_n(
        zero_frame,
        (LEN as usize - (FRAME - BLOCK)) / FRAME,
    ));
    frames.push(small(&zeros[..BLOCK], true));
    let before = d
        .index
        .members
        .iter()
        .position(|m| m.path.starts_with("blobs/") && m.path > path)
        .unwrap_or(d.index.members.len());
    let entry = pinbundle::bundle::format::MemberEntry {
        path,
        digest: digest.clone(),
        size: LEN,
        frame: 0,
        frames: 0,
        data_offset: BLOCK as u64,
        part: None,
    };
    d.insert_member(before, entry, frames);
    // index.json names it.
    let ii = d.member("index.json").unwrap();
    let mut index: Value = serde_json::from_slice(&d.content(ii)).unwrap();
    index["manifests"][0]["digest"] = json!(digest.to_string());
    index["manifests"][0]["size"] = json!(LEN);
    index["manifests"][0]["mediaType"] = json!(media::OCI_MANIFEST);
    let ib = serde_json::to_vec(&index).unwrap();
    let h = retarget_header(&d.header(ii).unwrap(), "index.json", ib.len() as u64);
    d.rewrite_member(ii, h, &ib, 16 << 20, true);
    d.redigest(ii);
    let mut m = manifest_json(&d);
    m["layout"]["indexJson"] = json!(Digest::of(&ib).to_string());
    let list = m["blobs"].as_array_mut().unwrap();
    list.push(json!({"digest": digest.to_string(), "size": LEN,
                     "mediaType": media::OCI_MANIFEST, "kind": "manifest"}));
    list.sort_by_key(|b| b["digest"].as_str().unwrap().to_string());
    m["totals"]["blobs"] = json!(m["totals"]["blobs"].as_u64().unwrap() + 1);
    m["totals"]["size"] = json!(m["totals"]["size"].as_u64().unwrap() + LEN);
    let img = &mut m["images"][0];
    img["digest"] = json!(digest.to_string());
    img["mediaType"] = json!(media::OCI_MANIFEST);
    img["platforms"][0]["digest"] = json!(digest.to_string());
    img["platforms"][0]["mediaType"] = json!(media::OCI_MANIFEST);
    img["blobs"]
        .as_array_mut()
        .unwrap()
        .push(json!(digest.to_string()));
    img["size"] = json!(img["size"].as_u64().unwrap() + LEN);
    d.set_manifest(&serde_json::to_vec_pretty(&m).unwrap());
    d.encode()
}

/// Class 2: `count` volumes of one "set", each only the head, with pinbundle.json padded with
/// spaces to `len` bytes (compressed to a few KiB); no blob anywhere.
fn padded_set(d: &Decoded, len: usize, count: u32) -> Vec<Vec<u8>> {
    let mut head = d.clone();
    let k = head.member("index.json").unwrap();
    let end = head.index.members[k].frame + head.index.members[k].frames;
    let eoa = head.frames.last().unwrap().clone();
    head.index.members.truncate(k + 1);
    head.frames.truncate(end);
    let mut bytes = head.content(0);
    while bytes.last() == Some(&b'\n') {
        bytes.pop();
    }
    bytes.resize(len - 1, b' ');
    bytes.push(b'\n');
    let h = retarget_header(
        &head.header(0).unwrap(),
        "pinbundle.json",
        bytes.len() as u64,
    );
    head.rewrite_member(0, h, &bytes, 16 << 20, false);
    head.redigest(0);
    drop(bytes);
    let m0 = &head.index.members[0];
    for f in &mut head.frames[m0.frame..m0.frame + m0.frames] {
        f.raw = Some(f.bytes());
        f.content = Vec::new();
    }
    let set = head.index.members[0].digest.clone();
    (1..=count)
        .map(|i| {
            let mut v = head.clone();
            v.index.volume = Some(VolumeInfo {
                set: set.clone(),
                index: i,
                count,
            });
            if i == count {
                v.frames.push(eoa.clone());
            }
            v.encode()
        })
        .collect()
}

/// Applies `m` to the first volume of `set` it applies to.
fn in_set(set: &[Vec<u8>], m: Mutation) -> Result<Vec<Vec<u8>>, String> {
    for (i, v) in set.iter().enumerate() {
        let mut d = Decoded::decode(v)?;
        if m(&mut d).is_ok() {
            let mut out = set.to_vec();
            out[i] = d.encode();
            return Ok(out);
        }
    }
    Err("applies to no volume".into())
}

/// Everything the cases are made from.
struct World {
    _env: Env,
    dir: tempfile::TempDir,
    key: PathBuf,
    unsigned: Vec<u8>,
    signed: Vec<u8>,
    set: Vec<Vec<u8>>,
    delta: Vec<u8>,
    base: Vec<u8>,
}

fn world() -> World {
    let env = Env::new();
    let addr = env.registry.addr().to_string();
    let big =
        pinbundle_fixtures::push_sized(&addr, "rehash/big", &[300 << 10, 100 << 10], 21, None)
            .unwrap();
    let release = |tag, last| {
        pinbundle_fixtures::push_release(
            &addr,
            "rehash/app",
            tag,
            &[(200 << 10, 1), (100 << 10, 2), last],
            None,
        )
        .unwrap()
    };
    let (v1, v2) = (release("v1", (50 << 10, 3)), release("v2", (50 << 10, 4)));
    let dir = tempdir();
    let key = dir.path().join("site");
    crate::util::ok(
        pinbundle()
            .args(["keygen", "--unencrypted", "-o"])
            .arg(&key),
    );
    let sign = [
        "--sign-key".to_string(),
        key.with_extension("key").display().to_string(),
    ];
    let sign: Vec<&str> = sign.iter().map(String::as_str).collect();
    let cache = dir.path().join("cache");
    std::fs::create_dir(dir.path().join("set")).unwrap();
    let refs = [env.image("oci-one").tag_reference(), big.tag_reference()];
    let make = |name: &str, refs: &[String], extra: &[&str]| {
        let out = dir.path().join(name);
        let o = env.create(&cache, &out, refs, extra);
        assert!(o.status.success(), "create {name}: {}", text(&o.stderr));
        (out, o)
    };
    let (u, _) = make("unsigned.pinbundle", &refs, &[]);
    let (s, _) = make("signed.pinbundle", &refs, &sign);
    let size = (std::fs::metadata(&u).unwrap().len() / 3 + (40 << 10)).to_string();
    let mut extra = sign.clone();
    extra.extend(["--volume-size", &size, "--json"]);
    let (_, o) = make("set/v.pinbundle", &refs, &extra);
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let set: Vec<Vec<u8>> = report["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| std::fs::read(v["path"].as_str().unwrap()).unwrap())
        .collect();
    assert!(set.len() >= 2, "the set has several volumes");
    let (b, _) = make("v1.pinbundle", &[v1.tag_reference()], &[]);
    let b_path = b.display().to_string();
    let mut extra = sign.clone();
    extra.extend(["--base", &b_path]);
    let (dl, _) = make("delta.pinbundle", &[v2.tag_reference()], &extra);
    let read = |p: &Path| std::fs::read(p).unwrap();
    // Seeds for `cargo fuzz run bundle_struct` (fuzz/fuzz_targets/bundle_struct.rs).
    if let Some(out) = std::env::var_os("PINBUNDLE_FUZZ_SEEDS") {
        let out = PathBuf::from(out);
        std::fs::create_dir_all(&out).unwrap();
        for (p, name) in [
            (&u, "unsigned"),
            (&s, "signed"),
            (&b, "base"),
            (&dl, "delta"),
        ] {
            std::fs::copy(p, out.join(format!("{name}.pinbundle"))).unwrap();
        }
        for v in report["volumes"].as_array().unwrap() {
            let p = PathBuf::from(v["path"].as_str().unwrap());
            let n = p.extension().unwrap().to_string_lossy().into_owned();
            std::fs::copy(&p, out.join(format!("set.pinbundle.{n}"))).unwrap();
        }
        std::fs::copy(key.with_extension("pub"), out.join("site.pub")).unwrap();
    }
    World {
        unsigned: read(&u),
        signed: read(&s),
        delta: read(&dl),
        base: read(&b),
        set,
        key,
        dir,
        _env: env,
    }
}

#[test]
fn rehashed_hostile_inputs_are_refused_and_change_nothing() {
    let w = world();
    let started = std::time::Instant::now();
    let unsigned = Decoded::decode(&w.unsigned).unwrap();
    let signed = Decoded::decode(&w.signed).unwrap();
    // The re-serialiser is exact: decoding and encoding an intact file changes no byte, and
    // a header it makes for a member's own path and size is that member's header.
    for (name, b) in [
        ("unsigned", &w.unsigned),
        ("signed", &w.signed),
        ("delta", &w.delta),
    ]
    .into_iter()
    .chain(w.set.iter().map(|v| ("volume", v)))
    {
        let d = Decoded::decode(b).unwrap();
        assert!(d.encode() == *b, "re-encoding the {name} bundle changed it");
        for (mi, m) in d.index.members.iter().enumerate() {
            let h = d.header(mi).unwrap();
            assert_eq!(
                retarget_header(&h, &m.path, m.size),
                h,
                "{name}: {}",
                m.path
            );
        }
    }

    let mut cases = Vec::new();
    for (class, name, m, expect) in mutations() {
        for (target, trust) in [("unsigned", false), ("signed", true)] {
            let mut d = if trust {
                signed.clone()
            } else {
                unsigned.clone()
            };
            m(&mut d).unwrap_or_else(|e| panic!("{name} on {target}: {e}"));
            let mut c = case(
                class,
                format!("{name} ({target})"),
                Input::File(d.encode()),
                expect,
            );
            c.trust = trust;
            cases.push(c);
        }
        let set = in_set(&w.set, m).unwrap_or_else(|e| panic!("{name} on the set: {e}"));
        let mut c = case(
            class,
            format!("{name} (signed set)"),
            Input::Volumes(set),
            expect,
        );
        c.trust = true;
        cases.push(c);
    }

    // Class 1 as the hostile `--base` of a signed delta: a layer the delta omits, swapped.
    let delta_m = Decoded::decode(&w.delta)
        .map(|d| manifest_json(&d))
        .unwrap();
    let omitted: Vec<String> = delta_m["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["carried"] == false)
        .map(|b| b["digest"].as_str().unwrap().to_string())
        .collect();
    assert!(!omitted.is_empty(), "the delta omits layers");
    let mut base = Decoded::decode(&w.base).unwrap();
    let mi = base
        .index
        .members
        .iter()
        .position(|m| omitted.contains(&m.digest.to_string()))
        .unwrap();
    single_part_swap_of(&mut base, mi).unwrap();
    let mut c = case(
        1,
        "single part, swapped layer in the --base of a signed delta",
        Input::Delta {
            delta: w.delta.clone(),
            base: base.encode(),
        },
        DIGEST,
    );
    c.trust = true;
    cases.push(c);

    // Class 2: memory before trust.
    const TOO_LARGE: &[&str] = &["too large", "larger than", "exceeds", "at most", "limit"];
    const PADDED_OK: &[&str] = &["not signed", "unsigned", "signature", "missing"];
    for (target, d, trust) in [("unsigned", &unsigned, false), ("signed", &signed, true)] {
        let mut c = case(
            2,
            format!("40 volumes, pinbundle.json padded to 64 MiB ({target})"),
            Input::Volumes(padded_set(d, 64 << 20, 40)),
            TOO_LARGE,
        );
        c.trust = trust;
        cases.push(c);
        let mut c = case(
            2,
            format!("40 volumes, pinbundle.json padded to 7.5 MiB ({target})"),
            Input::Volumes(padded_set(d, 15 << 19, 40)),
            PADDED_OK,
        );
        c.trust = trust;
        cases.push(c);
    }
    let mut c = case(
        2,
        "directory of 3000 files",
        Input::Dir(3000, w.set[0].clone()),
        &["too many", "1024"],
    );
    c.trust = true;
    cases.push(c);

    // Class 5: a 3 GiB zero manifest blob in a small unsigned bundle.
    cases.push(case(
        5,
        "3 GiB zero manifest blob (unsigned)",
        Input::File(zero_manifest(&unsigned)),
        &[
            "too large",
            "larger than",
            "exceeds",
            "at most",
            "limit",
            "not a valid image manifest",
        ],
    ));

    // Class 6: sizes not to be trusted.
    const SIZES: &[&str] = &[
        "uncompressed",
        "declared",
        "overflow",
        "wrap",
        "space",
        "too large",
        "add up",
    ];
    let mut c = case(
        6,
        "layers declare uncompressedSize 1 (unsigned)",
        Input::File(with_manifest(&unsigned, |m| set_uncompressed(m, |_| 1))),
        SIZES,
    );
    c.verify_may_pass = true;
    cases.push(c);
    let mut c = case(
        6,
        "uncompressedSize sums wrap around u64 (unsigned)",
        Input::File(with_manifest(&unsigned, |m| {
            set_uncompressed(m, |n| if n == 0 { u64::MAX - 100 } else { 300 })
        })),
        SIZES,
    );
    c.verify_may_pass = true;
    cases.push(c);

    // Class 8: terminal escapes in unsigned text.
    cases.push(case(
        8,
        "escape sequences in reference, creator and media type (unsigned)",
        Input::File(with_manifest(&unsigned, |m| {
            m["creator"] = json!("pinbundle 0.1.0\u{1b}[2J\u{1b}[H\u{1b}]0;owned\u{7}");
            let r = m["images"][0]["reference"].as_str().unwrap().to_string();
            m["images"][0]["reference"] = json!(format!(
                "{r}\u{1b}[1A\r\u{1b}[32mok: signed by trusted key\u{1b}[0m"
            ));
            let mt = m["blobs"][0]["mediaType"].as_str().unwrap().to_string();
            m["blobs"][0]["mediaType"] = json!(format!("{mt}\u{1b}[31m\u{202e}"));
        })),
        &["reference", "media type", "invalid"],
    ));

    // Class 9: names that are not references.
    for bad in ["-x.io/a", "..:1/a", "quay.io:99999999999999999999/a"] {
        cases.push(case(
            9,
            format!("reference {bad} (unsigned)"),
            Input::File(with_manifest(&unsigned, |m| {
                m["images"][0]["name"] = json!(bad);
                m["images"][0]["reference"] = json!(format!("{bad}:v1"));
                m["images"][0]["tag"] = json!("v1");
            })),
            &["reference"],
        ));
    }

    // Class 10: a FIFO is not a bundle, and must not block.
    for trust in [false, true] {
        let mut c = case(
            10,
            format!(
                "FIFO as the bundle{}",
                if trust { " (--trust-key)" } else { "" }
            ),
            Input::Fifo,
            &["regular file", "fifo", "not a file"],
        );
        c.trust = trust;
        c.timeout = 10;
        cases.push(c);
    }

    // The intact inputs: accepted, and the oracle holds on them.
    let intact = [
        ("unsigned", Input::File(w.unsigned.clone()), false),
        ("signed", Input::File(w.signed.clone()), true),
        ("signed set", Input::Volumes(w.set.clone()), true),
    ];
    let mut failures = Vec::new();
    let mut oracle_checked = 0;
    for (name, input, trust) in intact {
        let files = match &input {
            Input::File(b) => {
                let p = w
                    .dir
                    .path()
                    .join(format!("intact-{}.pinbundle", name.replace(' ', "-")));
                std::fs::write(&p, b).unwrap();
                vec![p]
            }
            Input::Volumes(vs) => (1..=vs.len())
                .map(|i| {
                    let p = w.dir.path().join(format!("intact.pinbundle.{i:03}"));
                    std::fs::write(&p, &vs[i - 1]).unwrap();
                    p
                })
                .collect(),
            _ => unreachable!(),
        };
        let mut c = pinbundle();
        c.arg("verify").args(&files);
        if trust {
            c.arg("--trust-key").arg(w.key.with_extension("pub"));
        }
        let o = run(&mut c);
        assert!(o.status.success(), "intact {name}: {}", text(&o.stderr));
        oracle_checked += 1;
        if let Err(e) = crate::oracle::check(&files) {
            failures.push(format!("oracle on the intact {name}: {e}"));
        }
    }

    let mut rejected = 0;
    let mut changes = 0;
    let mut through = Vec::new();
    let mut rss = Vec::new();
    for c in &cases {
        let o = run_case(w.dir.path(), &w.key, c);
        if matches!(c.class, 2 | 5) {
            rss.push(format!(
                "  class {} {}: verify {} MiB, load {} MiB",
                c.class,
                c.name,
                o.rss.0 >> 10,
                o.rss.1 >> 10
            ));
        }
        if let Some(files) = &o.accepted
            && !files.is_empty()
        {
            oracle_checked += 1;
            if let Err(e) = crate::oracle::check(files) {
                failures.push(format!(
                    "oracle on accepted class {} {}: {e}",
                    c.class, c.name
                ));
            }
        }
        changes += usize::from(o.changed);
        if o.problems.is_empty() {
            rejected += 1;
        } else {
            through.push(format!(
                "GOT THROUGH class {} {}:\n    {}",
                c.class,
                c.name,
                o.problems.join("\n    ")
            ));
        }
    }
    for t in &through {
        println!("{t}");
    }
    println!("peak RSS:\n{}", rss.join("\n"));
    println!("oracle: {oracle_checked} accepted inputs checked");
    println!(
        "re-hashed hostile inputs: {}, rejected: {rejected}, changes: {changes}",
        cases.len()
    );
    eprintln!("({:.1}s)", started.elapsed().as_secs_f64());
    failures.extend(through);
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
