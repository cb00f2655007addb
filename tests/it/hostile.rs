//! Hostile inputs: a real bundle (fixture image from a real registry) damaged or crafted in
//! every way we know, and hostile drop-in directories. Each input goes through `verify` and
//! `load` (vfs store, drop-in with content, `--reload none`, no CRI socket); each must be
//! refused with a message naming what is wrong, exit 1 or 2 (never a crash), bounded memory,
//! and leave the store and the drop-in exactly as they were.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use pinbundle::bundle::format::{SeekIndex, media};
use pinbundle::bundle::{BundleWriter, Compression, WriterOptions};
use pinbundle::reference::Digest;
use serde_json::{Value, json};

use crate::create::Env;
use crate::util::{
    files_under, members, pinbundle, run, stored_frame, tempdir, text, with_frames, with_index,
    write_members,
};

type IndexEdit = Box<dyn Fn(&mut SeekIndex)>;
type HeaderEdit = Box<dyn Fn(&mut tar::Header)>;
type Files = Vec<(&'static str, &'static str)>;

/// Peak RSS allowed for `verify` of any hostile input (frames are ≤ 64 MiB by the format).
const MAX_RSS_KIB: u64 = 256 << 10;

/// What the bundle is; the drop-in directory it meets.
struct Case {
    name: String,
    bundle: Vec<u8>,
    /// A fragment the `verify` and `load` output must contain (case-insensitive).
    expect: &'static str,
    /// Files to put in the drop-in dir besides our pre-existing drop-in (path, content).
    drop_ins: Vec<(&'static str, &'static str)>,
}

fn case(name: impl Into<String>, bundle: Vec<u8>, expect: &'static str) -> Case {
    Case {
        name: name.into(),
        bundle,
        expect,
        drop_ins: Vec::new(),
    }
}

/// The real bundle's members with `pinbundle.json` and blobs edited by `edit`, which gets the
/// manifest as JSON and may add blobs with [`Crafted::add`].
struct Crafted {
    manifest: Value,
    blobs: BTreeMap<Digest, Vec<u8>>,
    fixed: Vec<(String, Vec<u8>)>,
}

impl Crafted {
    fn new(members: &[(String, Vec<u8>)]) -> Crafted {
        let mut c = Crafted {
            manifest: Value::Null,
            blobs: BTreeMap::new(),
            fixed: Vec::new(),
        };
        for (p, d) in members {
            if p == "pinbundle.json" {
                c.manifest = serde_json::from_slice(d).unwrap();
            } else if p.starts_with("blobs/") {
                c.blobs.insert(Digest::of(d), d.clone());
            } else {
                c.fixed.push((p.clone(), d.clone()));
            }
        }
        c
    }

    /// The blob of the first image's top-level manifest, as JSON.
    fn top(&self) -> Value {
        let d: Digest = self.manifest["images"][0]["digest"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        serde_json::from_slice(&self.blobs[&d]).unwrap()
    }

    /// Adds a blob, lists it in pinbundle.json, returns its digest.
    fn add(&mut self, bytes: Vec<u8>, media_type: &str, kind: &str) -> Digest {
        let d = Digest::of(&bytes);
        let entry = json!({"digest": d.to_string(), "size": bytes.len(),
                           "mediaType": media_type, "kind": kind});
        let list = self.manifest["blobs"].as_array_mut().unwrap();
        list.push(entry);
        list.sort_by_key(|b| b["digest"].as_str().unwrap().to_string());
        self.blobs.insert(d.clone(), bytes);
        d
    }

    /// Makes the first image's top-level manifest `digest` of `media_type`.
    fn point_image_at(&mut self, digest: &Digest, media_type: &str) {
        let img = &mut self.manifest["images"][0];
        img["digest"] = json!(digest.to_string());
        img["mediaType"] = json!(media_type);
        if media::is_manifest(media_type) {
            img["platforms"][0]["digest"] = json!(digest.to_string());
            img["platforms"][0]["mediaType"] = json!(media_type);
        }
    }

    fn bytes_with_manifest(&self, manifest: Vec<u8>) -> Vec<u8> {
        let mut m = vec![("pinbundle.json".to_string(), manifest)];
        m.extend(self.fixed.iter().cloned());
        m.extend(self.blobs.iter().map(|(d, b)| (d.layout_path(), b.clone())));
        write_members(&m)
    }

    fn bytes(&self) -> Vec<u8> {
        let mut m = self.manifest.clone();
        consistent_totals(&mut m);
        self.bytes_with_manifest(serde_json::to_vec_pretty(&m).unwrap())
    }
}

/// Makes the sums of a crafted `pinbundle.json` add up (images' sizes, totals), as a careful
/// forger would, so each case is refused for what it targets. Leaves a document without the
/// expected shape alone.
fn consistent_totals(m: &mut Value) {
    let Some(blobs) = m["blobs"].as_array() else {
        return;
    };
    let sizes: BTreeMap<String, (u64, u64)> = blobs
        .iter()
        .filter_map(|b| {
            let d = b["digest"].as_str()?.to_string();
            let size = b["size"].as_u64()?;
            Some((d, (size, b["uncompressedSize"].as_u64().unwrap_or(0))))
        })
        .collect();
    let (count, size, unpacked) = (
        sizes.len(),
        sizes.values().map(|s| s.0).fold(0u64, u64::wrapping_add),
        sizes.values().map(|s| s.1).fold(0u64, u64::wrapping_add),
    );
    if let Some(images) = m["images"].as_array_mut() {
        for img in images.iter_mut() {
            let Some(list) = img["blobs"].as_array() else {
                continue;
            };
            let mine: Vec<(u64, u64)> = list
                .iter()
                .filter_map(|d| sizes.get(d.as_str()?).copied())
                .collect();
            img["size"] = json!(mine.iter().map(|s| s.0).fold(0u64, u64::wrapping_add));
            img["uncompressedSize"] = json!(mine.iter().map(|s| s.1).fold(0u64, u64::wrapping_add));
        }
    }
    let images = m["images"].as_array().map_or(0, Vec::len);
    if m["totals"].is_object() {
        m["totals"]["images"] = json!(images);
        m["totals"]["blobs"] = json!(count);
        m["totals"]["size"] = json!(size);
        m["totals"]["uncompressedSize"] = json!(unpacked);
    }
}

/// Decompresses a frame of `orig`.
fn frame_content(orig: &[u8], index: &SeekIndex, i: usize) -> Vec<u8> {
    let f = &index.frames[i];
    zstd::bulk::decompress(
        &orig[f.offset as usize..(f.offset + f.length) as usize],
        f.size as usize,
    )
    .unwrap()
}

/// Rewrites the first frame of `member` with its tar header edited (checksum recomputed).
fn with_tar_header(orig: &[u8], member: &str, edit: impl Fn(&mut tar::Header)) -> Vec<u8> {
    let index = seek_index(orig);
    let m = index.members.iter().find(|m| m.path == member).unwrap();
    let mut content = frame_content(orig, &index, m.frame);
    let mut h = tar::Header::from_byte_slice(&content[..512]).clone();
    edit(&mut h);
    h.set_cksum();
    content[..512].copy_from_slice(h.as_bytes());
    let i = m.frame;
    with_frames(orig, |frames, _| frames[i] = stored_frame(&content))
}

/// Replaces frame `i` with `frame`, keeping the index's claimed `size`.
fn with_frame(orig: &[u8], i: usize, frame: Vec<u8>) -> Vec<u8> {
    with_frames(orig, |frames, _| frames[i] = frame)
}

/// A zstd frame of RLE blocks: the header declares `declared` content bytes (8-byte field) or
/// none, with the given window descriptor when not single-segment; `blocks` blocks of 128 KiB.
fn rle_bomb(declared: Option<u64>, window_descriptor: u8, blocks: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    match declared {
        // FCS 8 bytes, not single segment, checksum flag.
        Some(n) => {
            f.push(0b1100_0100);
            f.push(window_descriptor);
            f.extend_from_slice(&n.to_le_bytes());
        }
        None => {
            f.push(0b0000_0100);
            f.push(window_descriptor);
        }
    }
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = last | (1 << 1) | ((128u32 << 10) << 3); // RLE block of 128 KiB
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.push(0);
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f
}

/// The seek index of a bundle in memory.
fn seek_index(bytes: &[u8]) -> SeekIndex {
    let mut fb = [0u8; 64];
    fb.copy_from_slice(&bytes[bytes.len() - 64..]);
    let f = pinbundle::bundle::format::Footer::decode(&fb).unwrap();
    let s = f.index_offset as usize;
    serde_json::from_slice(&bytes[s..s + f.index_len as usize]).unwrap()
}

fn flip(orig: &[u8], at: usize) -> Vec<u8> {
    let mut b = orig.to_vec();
    b[at] ^= 0x10;
    b
}

/// Every file under `dir` with its content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    if !dir.exists() {
        return BTreeMap::new();
    }
    files_under(dir)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

const EXISTING_PINS: &str = "[crio]\n  [crio.image]\n    pinned_images = [\"quay.io/other/app@sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\"]\n";

/// Runs one case; returns a description of what went wrong, if anything.
fn run_case(dir: &Path, c: &Case) -> Result<(), String> {
    let d = dir.join(c.name.replace(|ch: char| !ch.is_ascii_alphanumeric(), "_"));
    std::fs::create_dir_all(&d).unwrap();
    let bundle = d.join("b.pinbundle");
    std::fs::write(&bundle, &c.bundle).unwrap();
    let conf = d.join("crio.conf.d");
    std::fs::create_dir(&conf).unwrap();
    let drop_in = conf.join("50-pinned-images");
    std::fs::write(&drop_in, EXISTING_PINS).unwrap();
    for (p, content) in &c.drop_ins {
        std::fs::write(conf.join(p), content).unwrap();
    }
    let before = snapshot(&conf);
    let mut problems = Vec::new();
    let expect = c.expect.to_lowercase();

    // verify, under /usr/bin/time for its peak RSS.
    let rss = d.join("rss");
    let o = run(Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(env!("CARGO_BIN_EXE_pinbundle"))
        .args(["verify", "--json"])
        .arg(&bundle)
        .env("PINBUNDLE_NO_PROGRESS", "1")
        .env("PINBUNDLE_STATE_DIR", crate::util::STATE_DIR));
    let out = format!("{}{}", text(&o.stdout), text(&o.stderr));
    let kib: u64 = std::fs::read_to_string(&rss)
        .unwrap_or_default()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    if c.drop_ins.is_empty() {
        if !matches!(o.status.code(), Some(1 | 2)) {
            problems.push(format!("verify exit {:?} (expected 1 or 2)", o.status));
        }
        if !out.to_lowercase().contains(&expect) {
            problems.push(format!("verify output lacks {:?}: {out}", c.expect));
        }
    } else if !o.status.success() {
        problems.push(format!("verify of the intact bundle failed: {out}"));
    }
    if kib == 0 || kib > MAX_RSS_KIB {
        problems.push(format!("verify peak RSS {kib} KiB (limit {MAX_RSS_KIB})"));
    }

    // load.
    let storage = d.join("storage");
    let runroot = d.join("run");
    let o = run(pinbundle()
        .arg("load")
        .args(crate::load::kubelet_off())
        .arg(&bundle)
        .arg("--storage-root")
        .arg(&storage)
        .arg("--runroot")
        .arg(&runroot)
        .args(["--storage-driver", "vfs", "--reload", "none", "--json"])
        .args(crate::load::crio_config_args(&drop_in))
        .arg("--crio-drop-in")
        .arg(&drop_in)
        .arg("--cri-socket")
        .arg(d.join("no.sock"))
        .arg("--lock-file")
        .arg(d.join("load.lock")));
    let out = format!("{}{}", text(&o.stdout), text(&o.stderr));
    if !matches!(o.status.code(), Some(1 | 2)) {
        problems.push(format!("load exit {:?} (expected 1 or 2): {out}", o.status));
    }
    if !out.to_lowercase().contains(&expect) {
        problems.push(format!("load output lacks {:?}: {out}", c.expect));
    }
    if storage.exists() || runroot.exists() {
        problems.push("CHANGE: load created the store".into());
    }
    if snapshot(&conf) != before {
        problems.push("CHANGE: load changed the drop-in directory".into());
    }
    if problems.is_empty() {
        std::fs::remove_dir_all(&d).unwrap();
        Ok(())
    } else {
        Err(problems.join("\n    "))
    }
}

#[test]
fn hostile_inputs_are_refused_and_change_nothing() {
    let env = Env::new();
    let dir = tempdir();
    let real = dir.path().join("real.pinbundle");
    let o = env.create(
        &dir.path().join("cache"),
        &real,
        &[env.image("oci-one").tag_reference()],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let orig = std::fs::read(&real).unwrap();
    let index = seek_index(&orig);
    let member = |p: &str| index.members.iter().find(|m| m.path == p).unwrap().clone();
    // A blob in stored frames (a gzip layer): its tar header lies in the file as is.
    let layer = index
        .members
        .iter()
        .filter(|m| m.path.starts_with("blobs/"))
        .filter(|m| orig[index.frames[m.frame].offset as usize + 4] == 0b1110_0100)
        .max_by_key(|m| m.size)
        .expect("the fixture has a layer in stored frames")
        .clone();
    let lf = index.frames[layer.frame].clone();
    let frame_mid = |p: &str| {
        let f = &index.frames[member(p).frame];
        (f.offset + f.length / 2) as usize
    };
    let eoa = index.frames.last().unwrap().clone();
    let index_start = orig.len() - 64 - {
        let mut fb = [0u8; 64];
        fb.copy_from_slice(&orig[orig.len() - 64..]);
        pinbundle::bundle::format::Footer::decode(&fb)
            .unwrap()
            .index_len as usize
    };
    let footer = orig.len() - 64;
    let lo = lf.offset as usize;
    let mut cases: Vec<Case> = vec![
        // A flipped byte in every kind of region.
        case(
            "flip: layer blob",
            flip(&orig, frame_mid(&layer.path)),
            "checksum mismatch",
        ),
        case(
            "flip: pinbundle.json",
            flip(&orig, frame_mid("pinbundle.json")),
            "frame 0",
        ),
        case(
            "flip: index.json",
            flip(&orig, frame_mid("index.json")),
            "checksum mismatch",
        ),
        case(
            "flip: oci-layout",
            flip(&orig, frame_mid("oci-layout")),
            "checksum mismatch",
        ),
        case("flip: zstd magic", flip(&orig, lo), "checksum mismatch"),
        case(
            "flip: zstd frame header",
            flip(&orig, lo + 4),
            "checksum mismatch",
        ),
        case(
            "flip: zstd content size",
            flip(&orig, lo + 6),
            "checksum mismatch",
        ),
        case(
            "flip: block header",
            flip(&orig, lo + 13),
            "checksum mismatch",
        ),
        case(
            "flip: tar header (name)",
            flip(&orig, lo + 16 + 3),
            "checksum mismatch",
        ),
        case(
            "flip: tar header (mode)",
            flip(&orig, lo + 16 + 100),
            "checksum mismatch",
        ),
        case(
            "flip: tar header (typeflag)",
            flip(&orig, lo + 16 + 156),
            "checksum mismatch",
        ),
        case(
            "flip: zstd content checksum",
            flip(&orig, lo + lf.length as usize - 1),
            "checksum mismatch",
        ),
        case(
            "flip: end-of-archive frame",
            flip(&orig, (eoa.offset + eoa.length / 2) as usize),
            "checksum mismatch",
        ),
        case(
            "flip: index frame magic",
            flip(&orig, index_start - 8),
            "skippable frame header",
        ),
        case(
            "flip: index frame length",
            flip(&orig, index_start - 4),
            "skippable frame header",
        ),
        case(
            "flip: seek index",
            flip(&orig, index_start + 10),
            "seek index is damaged",
        ),
        case(
            "flip: seek index end",
            flip(&orig, footer - 2),
            "seek index is damaged",
        ),
        case(
            "flip: footer magic",
            flip(&orig, footer),
            "not a pinbundle bundle",
        ),
        case("flip: footer version", flip(&orig, footer + 8), "version"),
        case(
            "flip: footer flags",
            flip(&orig, footer + 12),
            "unknown flags",
        ),
        case(
            "flip: footer index offset",
            flip(&orig, footer + 16),
            "does not end at the footer",
        ),
        case(
            "flip: footer index length",
            flip(&orig, footer + 24),
            "does not end at the footer",
        ),
        case(
            "flip: footer index sha256",
            flip(&orig, footer + 40),
            "seek index is damaged",
        ),
        case(
            "appended byte",
            [&orig[..], &[0]].concat(),
            "not a pinbundle bundle",
        ),
        case(
            "prepended byte",
            [&[0], &orig[..]].concat(),
            "does not end at the footer",
        ),
    ];
    // Truncation at many offsets.
    let step = (orig.len() / 40).max(1);
    for len in (0..orig.len())
        .step_by(step)
        .chain(orig.len() - 70..orig.len())
    {
        let expect = if len < 72 {
            "not a pinbundle bundle"
        } else {
            "bundle"
        };
        cases.push(case(
            format!("truncated to {len}"),
            orig[..len].to_vec(),
            expect,
        ));
    }

    // Crafted seek indexes with valid digests.
    let n = index.members.len();
    let edits: Vec<(&str, &'static str, IndexEdit)> = vec![
        (
            "frame outside the file",
            "frame 1 starts at",
            Box::new(|i| i.frames[1].offset += 1 << 40),
        ),
        (
            "frame length past the end",
            "implausible sizes",
            Box::new(|i| {
                let l = i.frames.len() - 1;
                i.frames[l].length += 1 << 20
            }),
        ),
        (
            "overlapping frames",
            "frame 2 starts at",
            Box::new(|i| i.frames[2].offset -= 1),
        ),
        (
            "huge frame size",
            "implausible sizes",
            Box::new(|i| i.frames[1].size = 1 << 40),
        ),
        (
            "duplicate member",
            "appears twice",
            Box::new(move |i| {
                let m = i.members[n - 1].clone();
                i.members.push(m)
            }),
        ),
        (
            "member absent from the index",
            "does not start at the next frame",
            Box::new(|i| {
                i.members.remove(1);
            }),
        ),
        (
            "last member absent from the index",
            "end-of-archive",
            Box::new(|i| {
                i.members.pop();
            }),
        ),
        (
            "index entry absent from the tar",
            "does not match the seek index",
            Box::new(move |i| {
                // oci-layout's frame claimed by index.json's entry.
                let oci = i
                    .members
                    .iter()
                    .position(|m| m.path == "oci-layout")
                    .unwrap();
                let idx = i
                    .members
                    .iter()
                    .position(|m| m.path == "index.json")
                    .unwrap();
                let (size, digest) = (i.members[oci].size, i.members[oci].digest.clone());
                i.members[oci].path = "index.json".into();
                i.members[idx].path = "oci-layout".into();
                let _ = (size, digest);
            }),
        ),
        (
            "path with ..",
            "does not allow",
            Box::new(move |i| i.members[n - 1].path = "blobs/sha256/../../../etc/passwd".into()),
        ),
        (
            "absolute path",
            "does not allow",
            Box::new(move |i| i.members[n - 1].path = "/etc/passwd".into()),
        ),
        (
            "unknown member name",
            "does not allow",
            Box::new(|i| i.members[1].path = "evil.sh".into()),
        ),
        (
            "blob named for another digest",
            "does not allow",
            Box::new(move |i| i.members[n - 1].path = i.members[n - 2].digest.layout_path()),
        ),
        (
            "member runs past the frames",
            "runs past",
            Box::new(move |i| i.members[n - 1].frames += 3),
        ),
        (
            "member size beyond its frames",
            "does not fit its frames",
            Box::new(move |i| i.members[n - 1].size += 4096),
        ),
        (
            "member digest swapped",
            "digest",
            Box::new(move |i| {
                let d = i.members[n - 2].digest.clone();
                i.members[n - 1].digest = d;
            }),
        ),
        (
            "manifest not first",
            "not pinbundle.json",
            Box::new(|i| i.members.swap(0, 1)),
        ),
        (
            "data offset inside the header",
            "does not fit its frames",
            Box::new(|i| i.members[1].data_offset = 100),
        ),
        ("no members", "no members", Box::new(|i| i.members.clear())),
        (
            "unsupported index version",
            "format version",
            Box::new(|i| i.format_version = 2),
        ),
    ];
    for (name, expect, edit) in edits {
        cases.push(case(
            format!("index: {name}"),
            with_index(&orig, |i| edit(i)),
            expect,
        ));
    }
    // Seek index bytes that are not what the structure allows, with a valid digest.
    let raw_index = |ib: Vec<u8>| {
        let (data_end, footer) = {
            let mut fb = [0u8; 64];
            fb.copy_from_slice(&orig[orig.len() - 64..]);
            let f = pinbundle::bundle::format::Footer::decode(&fb).unwrap();
            (f.index_offset as usize - 8, f)
        };
        let mut out = orig[..data_end].to_vec();
        out.extend_from_slice(&crate::util::index_tail(data_end, &ib, footer));
        out
    };
    let mut deep = b"{\"formatVersion\":1,\"frames\":".to_vec();
    deep.extend(std::iter::repeat_n(b'[', 200_000));
    deep.extend(std::iter::repeat_n(b']', 200_000));
    deep.push(b'}');
    cases.push(case(
        "index: deeply nested JSON",
        raw_index(deep),
        "invalid seek index",
    ));
    let mut unknown: Value = serde_json::to_value(&index).unwrap();
    unknown["signature"] = json!("x");
    cases.push(case(
        "index: unknown field",
        raw_index(serde_json::to_vec(&unknown).unwrap()),
        "unknown field",
    ));
    cases.push(case(
        "index: not JSON",
        raw_index(b"\xff\xfe garbage".to_vec()),
        "invalid seek index",
    ));

    // Tar headers rewritten (frame bytes, XXH3, zstd checksum all valid).
    let lp = layer.path.clone();
    let header_edits: Vec<(&str, &'static str, HeaderEdit)> = vec![
        (
            "hardlink",
            "tar header does not match",
            Box::new(|h| h.set_entry_type(tar::EntryType::Link)),
        ),
        (
            "symlink",
            "tar header does not match",
            Box::new(|h| {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name("/etc/shadow").unwrap();
            }),
        ),
        (
            "directory",
            "tar header does not match",
            Box::new(|h| h.set_entry_type(tar::EntryType::Directory)),
        ),
        (
            "path with ..",
            "tar header does not match",
            Box::new(|h| {
                let name = &mut h.as_old_mut().name;
                name.fill(0);
                name[..14].copy_from_slice(b"blobs/../../.x");
            }),
        ),
        (
            "absolute path",
            "tar header does not match",
            Box::new(|h| {
                h.as_old_mut().name[..4].copy_from_slice(b"/etc");
            }),
        ),
        (
            "size",
            "tar header does not match",
            Box::new(|h| h.set_size(1)),
        ),
        (
            "setuid mode",
            "fields the format fixes",
            Box::new(|h| h.set_mode(0o4755)),
        ),
        (
            "owner",
            "fields the format fixes",
            Box::new(|h| h.set_uid(1000)),
        ),
        (
            "link name on a regular file",
            "fields the format fixes",
            Box::new(|h| h.set_link_name("x").unwrap()),
        ),
        (
            "user name",
            "fields the format fixes",
            Box::new(|h| h.set_username("root").unwrap()),
        ),
        (
            "not ustar",
            "fields the format fixes",
            Box::new(|h| h.as_ustar_mut().unwrap().magic[0] = b'x'),
        ),
    ];
    for (name, expect, edit) in header_edits {
        cases.push(case(
            format!("tar header: {name}"),
            with_tar_header(&orig, &lp, edit),
            expect,
        ));
    }
    // Padding and end-of-archive rewritten, frames otherwise valid.
    let last_layer_frame = layer.frame + layer.frames - 1;
    let mut padded = frame_content(&orig, &index, last_layer_frame);
    *padded.last_mut().unwrap() = b'!';
    assert!(layer.size % 512 != 0, "the fixture layer has padding");
    cases.push(case(
        "tar padding not zero",
        with_frame(&orig, last_layer_frame, stored_frame(&padded)),
        "non-zero tar padding",
    ));
    let eoa_i = index.frames.len() - 1;
    let mut hidden = vec![0u8; 1024];
    hidden[..512].copy_from_slice(
        tar::Header::from_byte_slice(&frame_content(&orig, &index, layer.frame)[..512]).as_bytes(),
    );
    cases.push(case(
        "end-of-archive hides a member",
        with_frame(&orig, eoa_i, stored_frame(&hidden)),
        "end-of-archive is not zero",
    ));
    cases.push(case(
        "frame decompresses to more than its size",
        with_frames(&orig, |f, i| {
            let mut big = frame_content(&orig, &index, eoa_i);
            big.extend_from_slice(&[0; 512]);
            f[eoa_i] = stored_frame(&big);
            let _ = i;
        }),
        "frame",
    ));
    // Decompression bombs: frames whose headers claim or produce far more than the index says.
    let fi = layer.frame;
    cases.push(case(
        "bomb: content size 1 TiB, 1 GiB of RLE blocks",
        with_frame(&orig, fi, rle_bomb(Some(1 << 40), 0x58, 8192)),
        "frame",
    ));
    cases.push(case(
        "bomb: window 2 GiB (log 31)",
        with_frame(&orig, fi, rle_bomb(None, 0xF8, 8192)),
        "frame",
    ));
    cases.push(case(
        "bomb: no content size, 1 GiB of RLE",
        with_frame(&orig, fi, rle_bomb(None, 0x58, 8192)),
        "frame",
    ));
    cases.push(case(
        "bomb: index claims the maximum frame, frame makes 1 GiB",
        with_frames(&orig, |f, i| {
            f[fi] = rle_bomb(None, 0x58, 8192);
            i.frames[fi].size = pinbundle::bundle::format::MAX_FRAME_SIZE;
        }),
        "frame",
    ));

    // Crafted pinbundle.json and manifests (everything re-encoded validly).
    let base = members(&real);
    let top = Crafted::new(&base).top();
    let craft = |edit: &dyn Fn(&mut Crafted)| {
        let mut c = Crafted::new(&base);
        edit(&mut c);
        c.bytes()
    };
    let with_top = |f: &dyn Fn(&mut Value)| {
        let mut t = top.clone();
        f(&mut t);
        craft(&|c: &mut Crafted| {
            let d = c.add(
                serde_json::to_vec(&t).unwrap(),
                media::OCI_MANIFEST,
                "manifest",
            );
            c.point_image_at(&d, media::OCI_MANIFEST);
        })
    };
    cases.push(case(
        "manifest: missing blob",
        with_top(&|t| t["layers"][0]["digest"] = json!(Digest::of(b"absent").to_string())),
        "missing from the bundle",
    ));
    cases.push(case(
        "manifest: wrong layer size",
        with_top(&|t| {
            let s = t["layers"][0]["size"].as_u64().unwrap();
            t["layers"][0]["size"] = json!(s + 1)
        }),
        "declares",
    ));
    cases.push(case(
        "manifest: wrong config size",
        with_top(&|t| t["config"]["size"] = json!(1)),
        "declares",
    ));
    cases.push(case(
        "manifest: unknown layer media type",
        with_top(&|t| t["layers"][0]["mediaType"] = json!("application/x-evil")),
        "unsupported media type",
    ));
    cases.push(case(
        "manifest: unknown config media type",
        with_top(&|t| t["config"]["mediaType"] = json!("application/x-evil")),
        "unsupported media type",
    ));
    cases.push(case(
        "manifest: not a manifest",
        with_top(&|t| *t = json!({"hello": "world"})),
        "not a valid image manifest",
    ));
    cases.push(case(
        "manifest: schema 1",
        craft(&|c| {
            let d = c.add(
                br#"{"schemaVersion":1,"name":"x","tag":"v1","fsLayers":[],"history":[]}"#.to_vec(),
                media::DOCKER_SCHEMA1,
                "manifest",
            );
            c.point_image_at(&d, media::DOCKER_SCHEMA1);
        }),
        "schema 1",
    ));
    cases.push(case(
        "manifest: unknown top-level media type",
        craft(&|c| {
            c.manifest["images"][0]["mediaType"] = json!("application/x-evil");
        }),
        "unsupported media type",
    ));
    cases.push(case(
        "manifest: deeply nested JSON",
        craft(&|c| {
            let mut deep = b"{\"schemaVersion\":2,\"config\":".to_vec();
            deep.extend(std::iter::repeat_n(b'[', 100_000));
            deep.extend(std::iter::repeat_n(b']', 100_000));
            deep.push(b'}');
            let d = c.add(deep, media::OCI_MANIFEST, "manifest");
            c.point_image_at(&d, media::OCI_MANIFEST);
        }),
        "not a valid image manifest",
    ));
    let top_digest = Digest::of(&serde_json::to_vec(&top).unwrap());
    let _ = top_digest;
    cases.push(case(
        "index: nested index",
        craft(&|c| {
            let real_top = c.manifest["images"][0]["digest"]
                .as_str()
                .unwrap()
                .to_string();
            let size = c.blobs[&real_top.parse::<Digest>().unwrap()].len();
            let inner = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [
            {"mediaType": media::OCI_MANIFEST, "digest": real_top, "size": size,
             "platform": {"os": "linux", "architecture": "amd64"}}]});
            let inner_bytes = serde_json::to_vec(&inner).unwrap();
            let inner_len = inner_bytes.len();
            let inner_d = c.add(inner_bytes, media::OCI_INDEX, "index");
            let outer = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [
            {"mediaType": media::OCI_INDEX, "digest": inner_d.to_string(), "size": inner_len,
             "platform": {"os": "linux", "architecture": "amd64"}}]});
            let outer_d = c.add(
                serde_json::to_vec(&outer).unwrap(),
                media::OCI_INDEX,
                "index",
            );
            c.point_image_at(&outer_d, media::OCI_INDEX);
            let p = &mut c.manifest["images"][0]["platforms"][0];
            p["digest"] = json!(inner_d.to_string());
            p["mediaType"] = json!(media::OCI_INDEX);
        }),
        "nested index",
    ));
    cases.push(case(
        "index: references itself",
        craft(&|c| {
            let real_top = c.manifest["images"][0]["digest"]
                .as_str()
                .unwrap()
                .to_string();
            let outer = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [
            {"mediaType": media::OCI_MANIFEST, "digest": real_top, "size": 1,
             "platform": {"os": "linux", "architecture": "amd64"}}]});
            let outer_d = c.add(
                serde_json::to_vec(&outer).unwrap(),
                media::OCI_INDEX,
                "index",
            );
            c.point_image_at(&outer_d, media::OCI_INDEX);
            c.manifest["images"][0]["platforms"][0]["digest"] = json!(outer_d.to_string());
            c.manifest["images"][0]["platforms"][0]["mediaType"] = json!(media::OCI_INDEX);
        }),
        "is not in its index",
    ));
    cases.push(case(
        "pinbundle.json: image name not normalised",
        craft(&|c| c.manifest["images"][0]["name"] = json!("Quay.IO/../etc")),
        "not a normalised image reference",
    ));
    cases.push(case(
        "pinbundle.json: tag smuggles arguments",
        craft(&|c| c.manifest["images"][0]["tag"] = json!("v1 --dest-creds=x")),
        "not a normalised image reference",
    ));
    cases.push(case("pinbundle.json: blob listed but absent", craft(&|c| {
        c.manifest["blobs"].as_array_mut().unwrap().push(json!({"digest": Digest::of(b"nope").to_string(), "size": 4, "mediaType": "x", "kind": "layer"}));
    }), "missing from the bundle"));
    cases.push(case(
        "pinbundle.json: blob present but not listed",
        craft(&|c| {
            c.blobs.insert(Digest::of(b"extra"), b"extra".to_vec());
        }),
        "not listed in pinbundle.json",
    ));
    cases.push(case(
        "pinbundle.json: wrong blob size",
        craft(&|c| c.manifest["blobs"][0]["size"] = json!(1)),
        "pinbundle.json says",
    ));
    cases.push(case(
        "pinbundle.json: layout digest",
        craft(&|c| c.manifest["layout"]["indexJson"] = json!(Digest::of(b"x").to_string())),
        "differs from pinbundle.json",
    ));
    cases.push(case(
        "pinbundle.json: other format",
        craft(&|c| c.manifest["format"] = json!("evil")),
        "invalid pinbundle.json",
    ));
    cases.push(case(
        "pinbundle.json: version 2",
        craft(&|c| c.manifest["formatVersion"] = json!(2)),
        "invalid pinbundle.json",
    ));
    cases.push(case(
        "pinbundle.json: not JSON",
        Crafted::new(&base).bytes_with_manifest(b"\x00not json".to_vec()),
        "invalid pinbundle.json",
    ));
    let mut deep = b"{\"format\":\"pinbundle\",\"x\":".to_vec();
    deep.extend(std::iter::repeat_n(b'[', 1_000_000));
    deep.extend(std::iter::repeat_n(b']', 1_000_000));
    deep.push(b'}');
    cases.push(case(
        "pinbundle.json: deeply nested unknown field",
        Crafted::new(&base).bytes_with_manifest(deep),
        "invalid pinbundle.json",
    ));
    // `base` (typed since delta bundles) must refuse deep nesting without overflowing the stack.
    let mut deep = serde_json::to_vec(&Crafted::new(&base).manifest).unwrap();
    deep.pop();
    deep.extend_from_slice(b",\"base\":");
    deep.extend(std::iter::repeat_n(b'[', 1_000_000));
    deep.extend(std::iter::repeat_n(b']', 1_000_000));
    deep.push(b'}');
    cases.push(case(
        "pinbundle.json: deeply nested value",
        Crafted::new(&base).bytes_with_manifest(deep),
        "invalid pinbundle.json",
    ));
    let mut huge = serde_json::to_vec(&Crafted::new(&base).manifest).unwrap();
    huge.pop();
    huge.extend_from_slice(b",\"padding\":\"");
    huge.extend(std::iter::repeat_n(b'a', 9 << 20));
    huge.extend_from_slice(b"\"}");
    cases.push(case(
        "pinbundle.json: 9 MiB",
        Crafted::new(&base).bytes_with_manifest(huge),
        "larger than the format allows",
    ));

    // An intact bundle meets a hostile drop-in directory: load must refuse before importing.
    let drop_in_cases: Vec<(&str, &'static str, Files)> = vec![
        (
            "unparsable file in the dir",
            "do not parse",
            vec![("10-broken.conf", "[crio\nx = ")],
        ),
        (
            "half-written temp file in the dir",
            "do not parse",
            vec![(
                ".pinbundle-pins-abc",
                "[crio]\n  [crio.image]\n    pinned_images = [\"quay.io/a@sha256:",
            )],
        ),
        (
            "wrong type in another file",
            "do not parse",
            vec![("99-other", "[crio.image]\npinned_images = 5\n")],
        ),
        (
            "our drop-in is not TOML",
            "not valid toml",
            vec![("50-pinned-images", "pinned_images = [")],
        ),
        (
            "our drop-in has the wrong type",
            "must be an array of strings",
            vec![("50-pinned-images", "[crio.image]\npinned_images = \"x\"\n")],
        ),
        (
            "our drop-in pins \"*\"",
            "crashes cri-o",
            vec![(
                "50-pinned-images",
                "[crio.image]\npinned_images = [\"*\"]\n",
            )],
        ),
        (
            "our drop-in has other keys",
            "sets keys other than",
            vec![(
                "50-pinned-images",
                "[crio.runtime]\nlog_level = \"debug\"\n",
            )],
        ),
    ];
    for (name, expect, files) in drop_in_cases {
        cases.push(Case {
            name: format!("drop-in: {name}"),
            bundle: orig.clone(),
            expect,
            drop_ins: files,
        });
    }

    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    for c in &cases {
        if let Err(e) = run_case(dir.path(), c) {
            failures.push(format!("{}:\n    {e}", c.name));
        }
    }
    let changes = failures.iter().filter(|f| f.contains("CHANGE:")).count();
    println!(
        "hostile inputs: {}, rejected: {}, changes: {changes}",
        cases.len(),
        cases.len() - failures.len()
    );
    eprintln!("({:.1}s)", started.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{} of {} hostile inputs not handled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A small valid bundle (synthetic, no registry) for the property test.
fn small_bundle() -> Vec<u8> {
    let layer: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let mut members = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        (
            "index.json".to_string(),
            br#"{"schemaVersion":2,"manifests":[]}"#.to_vec(),
        ),
    ];
    let mut c = Crafted {
        manifest: json!({"format": "pinbundle", "formatVersion": 1, "creator": "test",
            "created": "1970-01-01T00:00:00Z",
            "layout": {"ociLayout": Digest::of(&members[0].1).to_string(),
                       "indexJson": Digest::of(&members[1].1).to_string()},
            "images": [], "blobs": [],
            "totals": {"images": 0, "blobs": 2, "size": 0, "uncompressedSize": 0}}),
        blobs: BTreeMap::new(),
        fixed: std::mem::take(&mut members),
    };
    c.add(layer, media::OCI_LAYER_GZIP, "layer");
    c.add(config, media::OCI_CONFIG, "config");
    consistent_totals(&mut c.manifest);
    let mut w = BundleWriter::new(
        Vec::new(),
        WriterOptions {
            frame_size: 1024,
            level: 1,
            mtime: 0,
        },
    );
    w.add_bytes(
        "pinbundle.json",
        &serde_json::to_vec(&c.manifest).unwrap(),
        Compression::Zstd,
    )
    .unwrap();
    for (p, d) in &c.fixed {
        w.add_bytes(p, d, Compression::Zstd).unwrap();
    }
    for (d, b) in &c.blobs {
        w.add_bytes(&d.layout_path(), b, Compression::Store)
            .unwrap();
    }
    w.finish().unwrap().0
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bits: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Truncate {
        to: usize,
    },
    /// Adds `delta` to a numeric field of a frame or member, index re-encoded validly.
    IndexEdit {
        entry: usize,
        field: u8,
        delta: i64,
    },
}

fn mutation() -> impl proptest::strategy::Strategy<Value = Mutation> {
    use proptest::prelude::*;
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|to| Mutation::Truncate { to }),
        (
            any::<usize>(),
            0u8..7,
            prop_oneof![-600i64..=-1, 1i64..=600]
        )
            .prop_map(|(entry, field, delta)| Mutation::IndexEdit {
                entry,
                field,
                delta
            }),
    ]
}

fn apply(orig: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = orig.to_vec();
    let n = orig.len();
    match m {
        Mutation::Flip { at, bits } => b[at % n] ^= bits,
        Mutation::Insert { at, bytes } => {
            let at = at % (n + 1);
            b.splice(at..at, bytes.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let at = at % n;
            b.drain(at..(at + len).min(n));
        }
        Mutation::Truncate { to } => b.truncate(to % n),
        Mutation::IndexEdit {
            entry,
            field,
            delta,
        } => {
            let add = |v: &mut u64| *v = v.saturating_add_signed(*delta);
            let addu = |v: &mut usize| *v = (*v as u64).saturating_add_signed(*delta) as usize;
            b = with_index(orig, |i| {
                let (f, m) = (entry % i.frames.len(), entry % i.members.len());
                match field {
                    0 => add(&mut i.frames[f].offset),
                    1 => add(&mut i.frames[f].length),
                    2 => add(&mut i.frames[f].size),
                    3 => add(&mut i.members[m].size),
                    4 => addu(&mut i.members[m].frame),
                    5 => addu(&mut i.members[m].frames),
                    _ => add(&mut i.members[m].data_offset),
                }
            });
        }
    }
    b
}

/// Whether `path`, a whole bundle, verifies without a signature policy.
fn verify_ok(path: &Path) -> Result<bool, pinbundle::bundle::Error> {
    let set_opts = pinbundle::bundle::SetOptions {
        allow_partial: false,
        find_siblings: true,
    };
    let opts = pinbundle::verify::VerifyOptions {
        jobs: 1,
        trusted_keys: Vec::new(),
    };
    pinbundle::verify::verify_paths(
        &[path.to_path_buf()],
        set_opts,
        &opts,
        &pinbundle::progress::Silent,
    )
    .map(|r| r.ok())
}

#[test]
fn hostile_mutations_never_verify_ok() {
    use proptest::prelude::*;
    let orig = small_bundle();
    let dir = tempdir();
    let p = dir.path().join("b.pinbundle");
    std::fs::write(&p, &orig).unwrap();
    assert!(verify_ok(&p).unwrap());
    let q = dir.path().join("m.pinbundle");
    let config = ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(m in mutation())| {
        let bytes = apply(&orig, &m);
        std::fs::write(&q, &bytes).unwrap();
        let t = std::time::Instant::now();
        let ok = verify_ok(&q).unwrap_or(false);
        prop_assert!(t.elapsed() < std::time::Duration::from_secs(2), "{m:?} took {:?}", t.elapsed());
        prop_assert!(!ok || bytes == orig, "mutation accepted: {m:?}");
    });
}
