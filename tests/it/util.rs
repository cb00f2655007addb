//! Shared helpers for the integration tests.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The pinbundle binary under test.
pub fn pinbundle() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pinbundle"));
    c.env("PINBUNDLE_NO_PROGRESS", "1")
        .env("PINBUNDLE_STATE_DIR", STATE_DIR);
    c
}

/// Where the tests' `load` keeps its record: under target/, never this machine's
/// /var/lib/pinbundle. A test that runs the binary through a wrapper (`timeout`, `ip netns
/// exec`) sets `PINBUNDLE_STATE_DIR` or passes `--state-dir` itself; one that needs its own
/// record passes its own.
pub const STATE_DIR: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/pinbundle-state");

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

/// Splits a bundle into the bytes before its seek index frame, the seek index and the footer.
fn split_tail(
    orig: &[u8],
) -> (
    usize,
    pinbundle::bundle::format::SeekIndex,
    pinbundle::bundle::format::Footer,
) {
    use pinbundle::bundle::format::{FOOTER_LEN, Footer};
    let mut fb = [0u8; FOOTER_LEN];
    fb.copy_from_slice(&orig[orig.len() - FOOTER_LEN..]);
    let footer = Footer::decode(&fb).unwrap();
    let start = footer.index_offset as usize;
    let index = serde_json::from_slice(&orig[start..start + footer.index_len as usize]).unwrap();
    (start - 8, index, footer)
}

/// The skippable index frame and footer for `index_bytes` placed at `data_end`, with a valid
/// digest (as an attacker who rewrites the index would make it).
pub fn index_tail(
    data_end: usize,
    index_bytes: &[u8],
    footer: pinbundle::bundle::format::Footer,
) -> Vec<u8> {
    use pinbundle::bundle::format::{FOOTER_LEN, Footer, INDEX_FRAME_MAGIC};
    use sha2::Digest as _;
    let mut out = Vec::new();
    out.extend_from_slice(&INDEX_FRAME_MAGIC.to_le_bytes());
    out.extend_from_slice(&((index_bytes.len() + FOOTER_LEN) as u32).to_le_bytes());
    out.extend_from_slice(index_bytes);
    let f = Footer {
        index_offset: data_end as u64 + 8,
        index_len: index_bytes.len() as u64,
        index_sha256: sha2::Sha256::digest(index_bytes).into(),
        ..footer
    };
    out.extend_from_slice(&f.encode());
    out
}

/// Rewrites the seek index (with a valid digest, as an attacker could) and returns the bytes.
pub fn with_index(
    orig: &[u8],
    edit: impl FnOnce(&mut pinbundle::bundle::format::SeekIndex),
) -> Vec<u8> {
    let (data_end, mut index, footer) = split_tail(orig);
    edit(&mut index);
    let ib = serde_json::to_vec(&index).unwrap();
    let mut out = orig[..data_end].to_vec();
    out.extend_from_slice(&index_tail(data_end, &ib, footer));
    out
}

/// Rewrites data frames (their compressed bytes; `size` as the edit leaves it) and then the
/// index, recomputing every frame's offset, length and XXH3: damage only the deeper checks
/// (zstd, tar, sha256) can catch.
pub fn with_frames(
    orig: &[u8],
    edit: impl FnOnce(&mut Vec<Vec<u8>>, &mut pinbundle::bundle::format::SeekIndex),
) -> Vec<u8> {
    let (_, mut index, footer) = split_tail(orig);
    let mut frames: Vec<Vec<u8>> = index
        .frames
        .iter()
        .map(|f| orig[f.offset as usize..(f.offset + f.length) as usize].to_vec())
        .collect();
    edit(&mut frames, &mut index);
    let mut out = Vec::new();
    for (f, bytes) in index.frames.iter_mut().zip(&frames) {
        f.offset = out.len() as u64;
        f.length = bytes.len() as u64;
        f.xxh3 = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes));
        out.extend_from_slice(bytes);
    }
    let ib = serde_json::to_vec(&index).unwrap();
    let tail = index_tail(out.len(), &ib, footer);
    out.extend_from_slice(&tail);
    out
}

/// A zstd frame of raw blocks holding `content` (single segment, content size, checksum):
/// how writers store a member.
pub fn stored_frame(content: &[u8]) -> Vec<u8> {
    crate::reserialise::stored_frame(content, true, true)
}

/// The `pinned_images` entries of a CRI-O drop-in's text; panics if it does not parse.
pub fn pins_of(text: &str) -> Vec<String> {
    let t: toml::Value = toml::from_str(text).expect("the drop-in parses");
    t["crio"]["image"]["pinned_images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The head of a test bundle holding `blobs` (no images): `pinbundle.json`, `oci-layout` and
/// `index.json`, each blob listed as a layer.
pub fn head_for<'a>(blobs: impl Iterator<Item = &'a [u8]>) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    use pinbundle::bundle::format::{BlobEntry, BlobKind, BundleManifest, LayoutDigests, Totals};
    use pinbundle::reference::Digest;
    let oci_layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
    let index_json = br#"{"schemaVersion":2,"manifests":[]}"#.to_vec();
    let mut entries: Vec<BlobEntry> = blobs
        .map(|b| BlobEntry {
            digest: Digest::of(b),
            size: b.len() as u64,
            media_type: "application/octet-stream".into(),
            kind: BlobKind::Layer,
            uncompressed_size: Some(b.len() as u64),
            carried: true,
        })
        .collect();
    entries.sort_by(|a, b| a.digest.cmp(&b.digest));
    let manifest = BundleManifest {
        format: "pinbundle".into(),
        format_version: 1,
        creator: "test".into(),
        created: "1970-01-01T00:00:00Z".into(),
        base: None,
        layout: LayoutDigests {
            oci_layout: Digest::of(&oci_layout),
            index_json: Digest::of(&index_json),
        },
        images: Vec::new(),
        releases: Vec::new(),
        totals: Totals {
            images: 0,
            blobs: entries.len(),
            size: entries.iter().map(|b| b.size).sum(),
            uncompressed_size: entries.iter().filter_map(|b| b.uncompressed_size).sum(),
            omitted_blobs: None,
            omitted_size: None,
        },
        blobs: entries,
    };
    (
        serde_json::to_vec_pretty(&manifest).unwrap(),
        oci_layout,
        index_json,
    )
}

/// A raw HTTP/1.1 exchange (`Connection: close`): status, headers, body, and whether the body
/// was as long as `Content-Length` said.
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub complete: bool,
}

pub fn http(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // A server that aborts may reset the connection: keep what arrived.
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        // The server dropped the connection before its response head was flushed.
        return Reply {
            status: 0,
            headers: HashMap::new(),
            body: Vec::new(),
            complete: false,
        };
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let complete = if method == "HEAD" {
        body.is_empty()
    } else {
        headers
            .get("content-length")
            .is_none_or(|l| l.parse::<usize>().unwrap() == body.len())
    };
    Reply {
        status,
        headers,
        body,
        complete,
    }
}

/// A port nothing listens on (bound once, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every member of a bundle, by path, in file order.
pub fn members(p: &Path) -> Vec<(String, Vec<u8>)> {
    let b = pinbundle::bundle::Bundle::open(p).unwrap();
    b.index()
        .members
        .iter()
        .map(|m| (m.path.clone(), b.read_member(m).unwrap()))
        .collect()
}

/// Writes members (pinbundle.json, oci-layout, index.json, blobs) as a bundle.
pub fn write_members(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = pinbundle::bundle::BundleWriter::new(
        Vec::new(),
        pinbundle::bundle::WriterOptions::default(),
    );
    let (fixed, mut blobs): (Vec<_>, Vec<_>) =
        members.iter().partition(|(p, _)| !p.starts_with("blobs/"));
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, data) in fixed.into_iter().chain(blobs) {
        w.add_bytes(p, data, pinbundle::bundle::Compression::Zstd)
            .unwrap();
    }
    w.finish().unwrap().0
}

/// Makes command output comparable across runs before it is snapshotted: the given strings
/// (temp dirs, the registry's address) become placeholders, and each distinct 64-hex digest
/// becomes `<N>`, numbered in order of first appearance across every text this scrubber sees
/// (so "the same digest twice" stays visible in a snapshot).
#[allow(dead_code)]
pub struct Scrub {
    replace: Vec<(String, String)>,
    digests: std::collections::HashMap<String, usize>,
}

#[allow(dead_code)]
impl Scrub {
    pub fn new() -> Scrub {
        Scrub {
            replace: Vec::new(),
            digests: std::collections::HashMap::new(),
        }
    }

    /// Replaces `from` with `to` (longest first, so a path inside another is handled).
    pub fn replace(mut self, from: impl Into<String>, to: &str) -> Scrub {
        self.replace.push((from.into(), to.to_string()));
        self.replace
            .sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
        self
    }

    pub fn apply(&mut self, text: &str) -> String {
        let mut t = text.to_string();
        for (from, to) in &self.replace {
            t = t.replace(from.as_str(), to);
        }
        let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        let mut out = String::with_capacity(t.len());
        let mut rest = t.as_str();
        while let Some(start) = rest.find(hex) {
            let len = rest[start..]
                .find(|c| !hex(c))
                .unwrap_or(rest.len() - start);
            let before = rest[..start].chars().next_back();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
            let after = rest[start + len..].chars().next();
            out.push_str(&rest[..start]);
            let run = &rest[start..start + len];
            if len == 64 && !word(before) && !word(after) {
                let n = self.digests.len() + 1;
                let n = *self.digests.entry(run.to_string()).or_insert(n);
                out.push_str(&format!("<{n}>"));
            } else {
                out.push_str(run);
            }
            rest = &rest[start + len..];
        }
        out.push_str(rest);
        out
    }
}
