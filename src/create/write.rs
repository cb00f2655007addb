//! Stage 4, write: the bundle, from memory (manifests) and the cache (blobs), to a temporary
//! file in the output's directory, renamed into place only when complete; or volumes.
//!
//! The bundle's file (or volumes), its staging and its rename belong to [`bundle::Output`];
//! the room the provisional head keeps to [`HeadReservation`]. This stage renders the head,
//! feeds the blobs in order as the downloads make them ready, and signs.
//!
//! [`bundle::Output`]: crate::bundle::Output

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::fetch::Measurement;
use super::head::{HeadSource, OCI_LAYOUT, trusted_comment};
use super::plan::PlannedBlob;
use super::{CreateOptions, CreatedVolume};
use crate::bundle::format::{
    BlobKind, BundleManifest, MANIFEST_PATH, OCI_INDEX_PATH, OCI_LAYOUT_PATH, SIGNATURE_PATH, media,
};
use crate::bundle::{Compression, HeadReservation, Output, PendingOutput, WriterOptions};
use crate::cache::BlobCache;
use crate::progress::Reporter;
use crate::reference::Digest;
use crate::sign::SignatureInfo;
use crate::sign::SigningKey;

/// `pinbundle.json` as rendered, with what it was rendered from.
struct Head {
    bm: BundleManifest,
    json: Vec<u8>,
    index_json: Vec<u8>,
}

/// A download failed, or the writer did: the other side stops.
#[derive(Debug, thiserror::Error)]
#[error("stopped because another part of create failed")]
pub(super) struct Aborted;

/// Which blobs are in the cache (or in memory) and may be written: the downloads mark them,
/// the writer waits for each in turn.
#[derive(Default)]
pub(super) struct Ready {
    state: std::sync::Mutex<(std::collections::HashSet<Digest>, bool)>,
    cv: std::sync::Condvar,
}

impl Ready {
    fn lock(&self) -> std::sync::MutexGuard<'_, (std::collections::HashSet<Digest>, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn mark(&self, d: &Digest) {
        self.lock().0.insert(d.clone());
        self.cv.notify_all();
    }

    pub(super) fn abort(&self) {
        self.lock().1 = true;
        self.cv.notify_all();
    }

    pub(super) fn aborted(&self) -> bool {
        self.lock().1
    }

    /// Waits until `d` is ready (true) or everything stops (false).
    fn wait(&self, d: &Digest) -> bool {
        let mut g = self.lock();
        loop {
            if g.0.contains(d) {
                return true;
            }
            if g.1 {
                return false;
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Adds `blobs` in order, each as soon as it is ready.
fn write_blobs(
    out: &mut Output,
    blobs: &[&PlannedBlob],
    ready: &Ready,
    cache: &BlobCache,
    reporter: &dyn Reporter,
    out_err: &dyn Fn() -> String,
) -> Result<()> {
    for b in blobs {
        if !ready.wait(&b.entry.digest) {
            return Err(anyhow::Error::new(Aborted));
        }
        let path = b.entry.digest.layout_path();
        let compression = match media::layer_compression(&b.entry.media_type) {
            Some(media::LayerCompression::Gzip | media::LayerCompression::Zstd) => {
                Compression::Store
            }
            _ => Compression::Zstd,
        };
        let (size, digest) = (b.entry.size, &b.entry.digest);
        let mut add = |r: &mut dyn Read| out.add_member(&path, r, size, digest, compression);
        match b.state.bytes() {
            Some(bytes) => add(&mut &bytes[..]),
            None => {
                let f = fs_err::File::open(cache.path_of(digest))?;
                let mut r = CountingReader {
                    inner: std::io::BufReader::with_capacity(1 << 20, f),
                    reporter,
                };
                add(&mut r).inspect_err(|_| {
                    // A damaged cache entry must not poison the next run.
                    cache.evict(digest);
                })
            }
        }
        .with_context(|| format!("{} (blob {digest})", out_err()))?;
    }
    Ok(())
}

/// The output's first temporary file, made before any network work: an output that cannot
/// be written fails first.
pub(super) struct Staged {
    pending: PendingOutput,
    out_dir: PathBuf,
    file_name: String,
}

pub(super) fn open_output(opts: &CreateOptions) -> Result<Staged> {
    let out_dir = match opts.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = opts
        .output
        .file_name()
        .with_context(|| format!("output {} has no file name", opts.output.display()))?
        .to_string_lossy()
        .into_owned();
    let pending = Output::stage(&opts.output, opts.volume_size)
        .with_context(|| format!("cannot write to the output directory {}", out_dir.display()))?;
    Ok(Staged {
        pending,
        out_dir,
        file_name,
    })
}

impl Staged {
    /// SIGINT/SIGTERM would end the process without running destructors: remove the
    /// temporary bundle (or volumes) first.
    pub(super) fn remove_on_signal(
        &self,
        runtime: &tokio::runtime::Runtime,
        started_at: std::time::SystemTime,
    ) {
        runtime.spawn(remove_partials_on_signal(
            self.out_dir.clone(),
            format!(".{}.", self.file_name),
            started_at,
        ));
    }
}

/// What the write stage works from.
pub(super) struct WriteJob<'a> {
    pub opts: &'a CreateOptions,
    pub output: Staged,
    pub blobs: &'a mut BTreeMap<Digest, PlannedBlob>,
    /// How many images the bundle holds.
    pub images: usize,
    pub source: &'a HeadSource<'a>,
    pub ready: &'a Ready,
    pub cache: &'a BlobCache,
    pub reporter: &'a dyn Reporter,
}

/// What the write stage wrote.
pub(super) struct Written {
    pub bm: BundleManifest,
    pub signature: Option<SignatureInfo>,
    pub bundle_size: u64,
    pub volumes: Vec<CreatedVolume>,
    /// Files whose mode the file system refused (a FAT or exFAT stick), with that mode.
    pub modes_refused: Vec<(PathBuf, u32)>,
}

impl Head {
    /// pinbundle.json and index.json rendered from `blobs`.
    fn render(source: &HeadSource<'_>, blobs: &BTreeMap<Digest, PlannedBlob>) -> Result<Head> {
        let (bm, index_json) = source.manifest(blobs)?;
        let json = serde_json::to_vec_pretty(&bm).context("serialising pinbundle.json")?;
        // Never write what readers refuse (bundle-format.md, section 7).
        if json.len() as u64 > crate::bundle::format::MAX_MANIFEST_LEN {
            bail!(
                "pinbundle.json would be {} bytes, more than the {} a reader accepts: split the images into several bundles",
                json.len(),
                crate::bundle::format::MAX_MANIFEST_LEN
            );
        }
        Ok(Head {
            bm,
            json,
            index_json,
        })
    }

    /// The provisional head (unmeasured layer sizes are 0) and the room it keeps: each
    /// unknown layer size, each image's sum and the total may grow from "0" to 20 digits.
    fn provisional(
        source: &HeadSource<'_>,
        blobs: &BTreeMap<Digest, PlannedBlob>,
        images: usize,
    ) -> Result<(Head, HeadReservation)> {
        let mut provisional_blobs = blobs.clone();
        let mut unknown = 0usize;
        for b in provisional_blobs.values_mut() {
            if b.entry.kind == BlobKind::Layer && b.entry.uncompressed_size.is_none() {
                b.entry.uncompressed_size = Some(0);
                unknown += 1;
            }
        }
        let head = Head::render(source, &provisional_blobs)?;
        let reservation = HeadReservation::new(&head.json, unknown + images + 1);
        Ok((head, reservation))
    }

    /// The head's members as written: pinbundle.json in the reserved room, its signature
    /// when a key is given, the OCI layout files.
    fn members(&self, room: &HeadReservation, key: Option<&SigningKey>) -> Result<HeadMembers> {
        let manifest = room.fill(&self.json)?;
        let signature = match key {
            None => None,
            Some(key) => {
                let comment = trusted_comment(&self.bm, &manifest);
                let sig = key
                    .sign(&manifest, &comment)
                    .with_context(|| format!("signing {MANIFEST_PATH} with key {}", key.id()))?;
                let info = SignatureInfo {
                    key_id: key.id(),
                    trusted_comment: comment,
                    verified_by: None,
                };
                Some((sig, info))
            }
        };
        Ok(HeadMembers {
            manifest,
            signature,
            index_json: self.index_json.clone(),
        })
    }
}

/// The members at the head of the bundle, in the order written.
struct HeadMembers {
    manifest: Vec<u8>,
    signature: Option<(Vec<u8>, SignatureInfo)>,
    index_json: Vec<u8>,
}

impl HeadMembers {
    fn refs(&self) -> Vec<(&str, &[u8])> {
        let mut head: Vec<(&str, &[u8])> = vec![(MANIFEST_PATH, &self.manifest)];
        if let Some((sig, _)) = &self.signature {
            head.push((SIGNATURE_PATH, sig));
        }
        head.push((OCI_LAYOUT_PATH, OCI_LAYOUT));
        head.push((OCI_INDEX_PATH, &self.index_json));
        head
    }
}

/// Writes the bundle while `fetch_rest` fetches (and measures) the blobs not yet in the
/// cache. pinbundle.json leads the file but is final only when every layer is measured, so
/// the head is written first with zeros for the unknown sizes, stored (not compressed) and
/// padded so the final one has the same length, and rewritten in place at the end.
pub(super) fn write(
    job: WriteJob<'_>,
    fetch_rest: impl FnOnce() -> Result<Vec<Measurement>>,
) -> Result<Written> {
    let WriteJob {
        opts,
        output: Staged { pending, .. },
        blobs,
        images,
        source,
        ready,
        cache,
        reporter,
    } = job;
    // 4. The head: pinbundle.json (provisional: unmeasured sizes are 0, and room is kept
    //    for 20 digits in each number they change), its signature, the OCI layout files.
    let (provisional, room) = Head::provisional(source, blobs, images)?;
    let key = opts.sign_key.as_ref();
    let provisional_members = provisional.members(&room, key)?;

    // 5. Write (on a thread of its own) while the rest is fetched.
    let out_err = || format!("writing {}", opts.output.display());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.max(1))
        .build()
        .context("starting worker threads")?;
    let writer_opts = WriterOptions {
        frame_size: opts.frame_size,
        level: opts.level,
        mtime: source.created_secs,
    };
    let mut out = pending
        .start(writer_opts, &provisional_members.refs())
        .with_context(out_err)?;
    let to_write: Vec<&PlannedBlob> = blobs.values().filter(|b| b.entry.carried).collect();
    let (fetched_sizes, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            pool.install(|| {
                let r = write_blobs(&mut out, &to_write, ready, cache, reporter, &out_err);
                if r.is_err() {
                    ready.abort();
                }
                r
            })
        });
        let fetched = fetch_rest();
        if fetched.is_err() {
            ready.abort();
        }
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the bundle writer panicked")));
        (fetched, written)
    });
    // The first failure is what to report; an abort only follows from it.
    match (fetched_sizes, written) {
        (Ok(sizes), Ok(())) => {
            for (d, n) in sizes.into_iter().flatten() {
                if let Some(b) = blobs.get_mut(&d) {
                    b.entry.uncompressed_size = Some(n);
                }
            }
        }
        (Err(e), Err(w)) if e.is::<Aborted>() => return Err(w),
        (Err(e), _) => return Err(e),
        (Ok(_), Err(w)) => return Err(w),
    }
    // The final head, in the room the provisional one took.
    let head = Head::render(source, blobs)?;
    if head.index_json != provisional.index_json {
        bail!("internal error: index.json changed while the layers were measured");
    }
    let members = head.members(&room, key)?;
    let written = pool.install(|| -> Result<crate::bundle::Written> {
        out.rewrite_head(&members.refs()).with_context(out_err)?;
        out.finish().with_context(out_err)
    })?;
    let bundle_size = written.size();
    let modes_refused = written
        .files
        .iter()
        .filter_map(|f| Some((f.path.clone(), f.mode_refused?)))
        .collect();
    let volumes: Vec<CreatedVolume> = match written.set {
        Some(_) => written
            .files
            .into_iter()
            .map(|v| CreatedVolume {
                path: v.path,
                size: v.size,
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Written {
        bm: head.bm,
        signature: members.signature.map(|(_, info)| info),
        bundle_size,
        volumes,
        modes_refused,
    })
}

/// On SIGINT or SIGTERM, remove this run's temporary output files (`<dir>/<prefix>….partial`
/// modified since `since`), then exit 130 or 143 as the shell would.
async fn remove_partials_on_signal(dir: PathBuf, prefix: String, since: std::time::SystemTime) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let code = tokio::select! {
        _ = int.recv() => 130,
        _ = term.recv() => 143,
    };
    if let Ok(entries) = fs_err::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with(&prefix)
                && name.ends_with(".partial")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m >= since);
            if ours {
                let _ = fs_err::remove_file(e.path());
            }
        }
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        b"interrupted: removed the temporary bundle\n",
    );
    std::process::exit(code);
}

/// Counts bytes read into the reporter.
struct CountingReader<'a, R> {
    inner: R,
    reporter: &'a dyn Reporter,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.reporter.advance(n as u64);
        Ok(n)
    }
}
