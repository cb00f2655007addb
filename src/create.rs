//! `pinbundle create`: references → plan → blobs → bundle.
//!
//! 1. Resolve: fetch every reference's manifest (raw bytes kept), and for an index the
//!    manifests of the chosen platforms.
//! 2. Plan: the set of blobs, each once, whatever the number of images using it.
//! 3. Fetch: every blob not yet in the content-addressed cache, in parallel, verified while
//!    written; a re-run after an interruption fetches only what is missing.
//! 4. Write: the bundle, from memory (manifests) and the cache (blobs), to a temporary file in
//!    the output's directory, renamed into place only when complete.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::bundle::format::{
    BaseRef, BlobEntry, BlobKind, BundleManifest, FORMAT_NAME, FORMAT_VERSION, ImageEntry,
    LayoutDigests, MANIFEST_PATH, OCI_INDEX_PATH, OCI_LAYOUT_PATH, PlatformEntry, SIGNATURE_PATH,
    Totals, media,
};
use crate::bundle::{BundleWriter, Compression, VolumeWriter, WriterOptions};
use crate::cache::BlobCache;
use crate::layer::Measured;
use crate::manifest::{self, Parsed};
use crate::progress::Reporter;
use crate::reference::{Digest, Reference};
use crate::registry::client::{ClientOptions, RawManifest, RegistryClient};
use crate::sign::SigningKey;
use crate::text::excerpt;
use crate::verify::SignatureInfo;

/// The platform type of [`CreateOptions::platforms`] (it lives in [`crate::platform`]).
pub use crate::platform::Platform;

/// The largest image config accepted (as containers/image).
pub const MAX_CONFIG: u64 = 4 << 20;
/// The most manifest and index bytes one run holds in memory (all references together).
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// The most entries an index may list.
pub const MAX_INDEX_ENTRIES: usize = 1024;
/// A layer may expand to at most this many times its compressed size …
pub const MAX_EXPANSION_RATIO: u64 = 1000;
/// … or this many bytes, whichever is more, when its uncompressed size is measured.
pub const MIN_EXPANSION_ALLOWED: u64 = 256 << 20;
/// The longest measuring one layer may take.
pub const MAX_MEASURE_TIME: std::time::Duration = std::time::Duration::from_secs(300);
/// The longest line accepted in `--from-file`.
pub const MAX_LINE: usize = 4096;
/// The largest `--from-file` or `--pinned-image-set` file accepted.
pub const MAX_INPUT_FILE: u64 = 16 << 20;
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub references: Vec<Reference>,
    pub output: PathBuf,
    /// Platforms kept from indexes; empty means linux/amd64.
    pub platforms: Vec<Platform>,
    pub all_platforms: bool,
    pub client: ClientOptions,
    pub cache_dir: PathBuf,
    pub jobs: usize,
    pub level: i32,
    pub frame_size: usize,
    /// Write volumes `OUTPUT.001`, … of at most this many bytes instead of one file.
    pub volume_size: Option<u64>,
    /// Seconds since the epoch to record as the creation time (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<u64>,
    /// Sign `pinbundle.json` with this key (the member `pinbundle.json.minisig`).
    pub sign_key: Option<SigningKey>,
    /// Write a delta of this base (a bundle or its exported index): layers it lists are
    /// neither fetched nor carried.
    pub base: Option<PathBuf>,
    /// The most resolving one image may take (every manifest, token, retry and backoff),
    /// and the most each blob's download may take with its retries.
    pub image_timeout: std::time::Duration,
}

/// The summary of a `create` run (the `--json` document).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateReport {
    pub version: u32,
    pub output: PathBuf,
    pub images: Vec<CreatedImage>,
    pub blobs: usize,
    /// Sum of blob sizes (each once).
    pub size: u64,
    /// The bundle file's size (with volumes, their sum).
    pub bundle_size: u64,
    /// The volumes written (empty when one file was written).
    pub volumes: Vec<CreatedVolume>,
    pub blobs_fetched: usize,
    pub blobs_cached: usize,
    pub bytes_fetched: u64,
    /// The signature written, `null` when unsigned.
    pub signature: Option<SignatureInfo>,
    /// The base of a delta, `null` for a full bundle.
    pub base: Option<BaseRef>,
    /// Blobs in the file, and layers left to the base (`blobs` counts both).
    pub blobs_carried: usize,
    pub blobs_omitted: usize,
    pub bytes_omitted: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedVolume {
    pub path: PathBuf,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedImage {
    pub reference: String,
    pub digest: Digest,
    /// What `load` pins: `name@digest`.
    pub pin: String,
    pub media_type: String,
    pub platforms: Vec<String>,
    pub size: u64,
}

/// Reads references from a file: one per line, `#` starts a comment. A line longer than
/// [`MAX_LINE`] or holding a control character is refused with a short, escaped excerpt;
/// the file is read line by line, so a huge line costs no memory.
pub fn read_reference_file(path: &Path) -> Result<Vec<Reference>> {
    use std::io::BufRead as _;
    let (file, meta) = crate::input::open_regular(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_INPUT_FILE {
        bail!(
            "{} is {} bytes, more than the {MAX_INPUT_FILE} accepted for a list of references",
            path.display(),
            meta.len()
        );
    }
    let mut reader = std::io::BufReader::new(file).take(MAX_INPUT_FILE);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for n in 1.. {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            break;
        }
        let at = || format!("{}, line {n}", path.display());
        let text = String::from_utf8_lossy(&buf);
        if buf.len() > MAX_LINE && !buf.ends_with(b"\n") {
            bail!(
                "{}: longer than {MAX_LINE} bytes: \"{}\"",
                at(),
                excerpt(&text, 60)
            );
        }
        let line = text.trim_end_matches(['\n', '\r']);
        if line.chars().any(|c| c.is_control() && c != '\t') {
            bail!(
                "{}: holds a control character: \"{}\"",
                at(),
                excerpt(line, 60)
            );
        }
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(line.parse().with_context(at)?);
    }
    Ok(out)
}

/// Reads the images of an OpenShift `PinnedImageSet` (`spec.pinnedImages[].name`).
pub fn read_pinned_image_set(path: &Path) -> Result<Vec<Reference>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        kind: Option<String>,
        spec: Option<Spec>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Spec {
        #[serde(default)]
        pinned_images: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        name: String,
    }
    let bytes = crate::input::read_regular(path, MAX_INPUT_FILE)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
    // The parser's message may quote the file: escaped and cut short.
    let doc: Doc = serde_saphyr::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid PinnedImageSet YAML document: {}",
            path.display(),
            excerpt(&e.to_string(), 200)
        )
    })?;
    if doc.kind.as_deref() != Some("PinnedImageSet") {
        bail!(
            "{} has kind \"{}\", expected PinnedImageSet",
            path.display(),
            excerpt(&doc.kind.unwrap_or_default(), 60)
        );
    }
    let items = doc.spec.map(|s| s.pinned_images).unwrap_or_default();
    if items.is_empty() {
        bail!("{} lists no spec.pinnedImages", path.display());
    }
    items
        .into_iter()
        .enumerate()
        .map(|(n, i)| {
            if i.name.len() > MAX_LINE || i.name.chars().any(char::is_control) {
                bail!(
                    "{}: spec.pinnedImages[{n}].name \"{}\": invalid image reference (too long, or holds a control character)",
                    path.display(),
                    excerpt(&i.name, 60)
                );
            }
            i.name
                .parse()
                .with_context(|| format!("spec.pinnedImages[{n}].name in {}", path.display()))
        })
        .collect()
}

/// A blob to carry, with one repository it can be fetched from.
#[derive(Debug, Clone)]
struct PlannedBlob {
    entry: BlobEntry,
    source: Reference,
    /// The raw bytes, for manifests and indexes (already fetched).
    bytes: Option<Arc<[u8]>>,
}

/// One resolved image, before sizes are known.
struct Resolved {
    reference: Reference,
    root: RawManifest,
    /// (digest, media type, platform from the index if any, manifest)
    instances: Vec<(
        RawManifest,
        Option<Platform>,
        oci_spec::image::ImageManifest,
    )>,
}

/// Where blobs go: one file, or volumes.
enum Sink {
    /// A handle of the temporary file that is renamed into place at the end.
    File(BundleWriter<BufWriter<std::fs::File>>),
    Volumes(Box<VolumeWriter>),
}

/// `pinbundle.json` as rendered, with what it was rendered from.
struct Head {
    bm: BundleManifest,
    json: Vec<u8>,
    index_json: Vec<u8>,
}

/// `json` padded with spaces and a final newline to exactly `len` bytes (JSON allows
/// trailing whitespace): the room the provisional `pinbundle.json` took.
fn padded(json: &[u8], len: usize) -> Result<Vec<u8>> {
    if json.len() >= len {
        bail!(
            "internal error: pinbundle.json is {} bytes, more than the {len} reserved",
            json.len()
        );
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(json);
    out.resize(len - 1, b' ');
    out.push(b'\n');
    Ok(out)
}

/// A download failed, or the writer did: the other side stops.
#[derive(Debug, thiserror::Error)]
#[error("stopped because another part of create failed")]
struct Aborted;

/// Which blobs are in the cache (or in memory) and may be written: the downloads mark them,
/// the writer waits for each in turn.
#[derive(Default)]
struct Ready {
    state: std::sync::Mutex<(std::collections::HashSet<Digest>, bool)>,
    cv: std::sync::Condvar,
}

impl Ready {
    fn lock(&self) -> std::sync::MutexGuard<'_, (std::collections::HashSet<Digest>, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark(&self, d: &Digest) {
        self.lock().0.insert(d.clone());
        self.cv.notify_all();
    }

    fn abort(&self) {
        self.lock().1 = true;
        self.cv.notify_all();
    }

    fn aborted(&self) -> bool {
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
    sink: &mut Sink,
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
        let mut add = |r: &mut dyn Read| match sink {
            Sink::File(w) => w.add_member(&path, r, size, digest, compression),
            Sink::Volumes(w) => w.add_member(&path, r, size, digest, compression),
        };
        match &b.bytes {
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

/// Runs `create`.
pub fn create(opts: &CreateOptions, reporter: &dyn Reporter) -> Result<CreateReport> {
    let started = Instant::now();
    // Temporary files of this run are those modified since (less the file system's
    // timestamp granularity).
    let started_at = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    if opts.references.is_empty() {
        bail!("no image references given (arguments, --from-file or --pinned-image-set)");
    }
    // Fail before any network work when the output cannot be written.
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
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .suffix(".partial")
        .tempfile_in(&out_dir)
        .with_context(|| format!("cannot write to the output directory {}", out_dir.display()))?;
    let cache = BlobCache::open(&opts.cache_dir).context("creating the blob cache")?;
    let base = match &opts.base {
        Some(p) => Some(
            crate::delta::Base::open(p)
                .with_context(|| format!("reading the base {}", p.display()))?,
        ),
        None => None,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.jobs.clamp(1, 8))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // SIGINT/SIGTERM would end the process without running destructors: remove the
    // temporary bundle (or volumes) first.
    runtime.spawn(remove_partials_on_signal(
        out_dir.clone(),
        format!(".{file_name}."),
        started_at,
    ));
    let client =
        RegistryClient::new(opts.client.clone()).context("setting up the registry client")?;

    // 1. Resolve.
    let mut refs: Vec<Reference> = Vec::new();
    for r in &opts.references {
        if !refs.contains(r) {
            refs.push(r.clone());
        }
    }
    reporter.message(&format!("resolving {} references", refs.len()));
    let platforms = if opts.platforms.is_empty() {
        vec![Platform::linux_amd64()]
    } else {
        opts.platforms.clone()
    };
    // A few at a time, so N references cost N × (at most) 4 MiB only in what is kept.
    let held = AtomicU64::new(0);
    let resolved: Vec<Resolved> = runtime.block_on(async {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        futures_util::stream::iter(refs.iter().map(|r| {
            let (client, platforms, held) = (&client, &platforms, &held);
            async move {
                tokio::time::timeout(
                    opts.image_timeout,
                    resolve(client, r, platforms, opts.all_platforms, held),
                )
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "resolving {r} took longer than --image-timeout ({} s)",
                        opts.image_timeout.as_secs_f64()
                    )
                })?
            }
        }))
        .buffered(opts.jobs.clamp(1, 8))
        .try_collect()
        .await
    })?;

    // 2. Plan.
    let mut blobs: BTreeMap<Digest, PlannedBlob> = BTreeMap::new();
    let mut add_manifest = |m: &RawManifest, source: &Reference| {
        let kind = if media::is_index(&m.media_type) {
            BlobKind::Index
        } else {
            BlobKind::Manifest
        };
        blobs
            .entry(m.digest.clone())
            .or_insert_with(|| PlannedBlob {
                entry: BlobEntry {
                    digest: m.digest.clone(),
                    size: m.bytes.len() as u64,
                    media_type: m.media_type.clone(),
                    kind,
                    uncompressed_size: None,
                    carried: true,
                },
                source: source.clone(),
                bytes: Some(Arc::from(&m.bytes[..])),
            });
    };
    for r in &resolved {
        add_manifest(&r.root, &r.reference);
        for (m, _, _) in &r.instances {
            add_manifest(m, &r.reference);
        }
    }
    for r in &resolved {
        for (m, _, parsed) in &r.instances {
            let what = format!("{} (manifest {})", r.reference, m.digest);
            let descs = std::iter::once((parsed.config(), BlobKind::Config))
                .chain(parsed.layers().iter().map(|l| (l, BlobKind::Layer)));
            for (d, kind) in descs {
                let digest = manifest::digest_of(d, &what)?;
                let size = d.size();
                // The config is read into memory (for its platform): bounded before it is
                // fetched.
                if kind == BlobKind::Config && size > MAX_CONFIG {
                    bail!(
                        "{what}: config {digest} is declared with {size} bytes, more than the {MAX_CONFIG} accepted"
                    );
                }
                if let Some(existing) = blobs.get(&digest) {
                    if existing.entry.size != size {
                        bail!(
                            "{what}: blob {digest} is declared with size {size}, elsewhere with {}",
                            existing.entry.size
                        );
                    }
                    continue;
                }
                blobs.insert(
                    digest.clone(),
                    PlannedBlob {
                        entry: BlobEntry {
                            digest,
                            size,
                            media_type: manifest::media_type_str(d),
                            kind,
                            uncompressed_size: None,
                            carried: true,
                        },
                        source: r.reference.clone(),
                        bytes: None,
                    },
                );
            }
        }
    }

    // A delta neither fetches nor carries the layers its base lists (their uncompressed sizes
    // come from the base).
    if let Some(base) = &base {
        let mut entries: Vec<&mut BlobEntry> = blobs.values_mut().map(|b| &mut b.entry).collect();
        crate::delta::omit_from(base, &mut entries)
            .with_context(|| format!("planning a delta of {}", base.path.display()))?;
    }

    // 3. Fetch what the cache lacks, and write the bundle behind the downloads. Configs come
    //    first: their platforms go into pinbundle.json. Then every other blob is downloaded
    //    in digest order while a writer thread follows in the same order, adding each blob
    //    as soon as it is in the cache. Each layer's uncompressed size (for `load`'s space
    //    check) is measured as soon as the layer is in the cache, and remembered beside it.
    //    pinbundle.json leads the file but is final only when every layer is measured, so
    //    the head is written first with zeros for the unknown sizes, stored (not
    //    compressed) and padded so the final one has the same length, and rewritten in place
    //    at the end.
    cache.sweep_partials(blobs.keys());
    let is_cached: BTreeMap<&Digest, bool> = blobs
        .values()
        .filter(fetched)
        .map(|b| {
            (
                &b.entry.digest,
                cache.contains(&b.entry.digest, b.entry.size),
            )
        })
        .collect();
    let blobs_fetched = is_cached.values().filter(|c| !**c).count();
    let blobs_cached = is_cached.len() - blobs_fetched;
    let fetch_total: u64 = blobs
        .values()
        .filter(|b| is_cached.get(&b.entry.digest) == Some(&false))
        .map(|b| b.entry.size)
        .sum();
    let fetched_bytes = AtomicU64::new(0);
    let ready = Ready::default();
    for b in blobs.values() {
        if b.bytes.is_some() || is_cached.get(&b.entry.digest) == Some(&true) {
            ready.mark(&b.entry.digest);
        }
    }
    let net = tokio::sync::Semaphore::new(opts.jobs.max(1));
    let cpu =
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()));
    let fetch_one = |b: &PlannedBlob| {
        let (ready, net, cpu, fetched_bytes, client, cache, is_cached) = (
            &ready,
            &net,
            &cpu,
            &fetched_bytes,
            &client,
            &cache,
            &is_cached,
        );
        let b = b.clone();
        async move {
            let dest = cache.path_of(&b.entry.digest);
            if is_cached.get(&b.entry.digest) == Some(&false) {
                let _permit = net.acquire().await.context("fetch queue closed")?;
                if ready.aborted() {
                    return Err(anyhow::Error::new(Aborted));
                }
                let progress = |n: u64| {
                    fetched_bytes.fetch_add(n, Ordering::Relaxed);
                    reporter.advance(n);
                };
                let what = || format!("fetching blob {} of {}", b.entry.digest, b.source);
                tokio::time::timeout(
                    opts.image_timeout,
                    client.fetch_blob(&b.source, &b.entry.digest, b.entry.size, &dest, &progress),
                )
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "took longer than --image-timeout ({} s)",
                        opts.image_timeout.as_secs_f64()
                    )
                })
                .with_context(what)?
                .with_context(what)?;
                ready.mark(&b.entry.digest);
            }
            if b.entry.kind != BlobKind::Layer {
                return Ok(None);
            }
            let _permit = cpu.acquire().await.context("worker queue closed")?;
            let (cache, entry, source) = (cache.clone(), b.entry.clone(), b.source.clone());
            let n = tokio::task::spawn_blocking(move || uncompressed_size(&cache, &entry, &source))
                .await
                .context("measuring a layer")??;
            anyhow::Ok(Some((b.entry.digest.clone(), n)))
        }
    };
    let write_total: u64 = blobs
        .values()
        .filter(|b| b.entry.carried)
        .map(|b| b.entry.size)
        .sum();
    reporter.start(
        &format!("fetching {blobs_fetched} blobs ({blobs_cached} cached), writing"),
        fetch_total + write_total,
    );
    let configs = blobs
        .values()
        .filter(fetched)
        .filter(|b| b.entry.kind == BlobKind::Config);
    runtime.block_on(futures_util::future::try_join_all(configs.map(&fetch_one)))?;

    // Platforms of single-manifest images come from their configs.
    let mut config_platforms: HashMap<Digest, Platform> = HashMap::new();
    for r in &resolved {
        for (m, p, parsed) in &r.instances {
            if p.is_none() {
                let d = manifest::digest_of(parsed.config(), "config")?;
                let path = cache.path_of(&d);
                let bytes = crate::input::read_regular(&path, MAX_CONFIG)
                    .with_context(|| format!("reading config {d} from {}", path.display()))?;
                let platform = platform_of_config(&bytes, &d)
                    .with_context(|| format!("{} (manifest {})", r.reference, m.digest))?;
                config_platforms.insert(m.digest.clone(), platform);
            }
        }
    }

    // 4. The head: pinbundle.json (provisional: unmeasured sizes are 0, and room is kept
    //    for 20 digits in each number they change), its signature, the OCI layout files.
    let created_secs = opts.source_date_epoch.unwrap_or_else(now_secs);
    let oci_layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
    let head_of = |blobs: &BTreeMap<Digest, PlannedBlob>| -> Result<Head> {
        let images: Vec<ImageEntry> = resolved
            .iter()
            .map(|r| image_entry(r, blobs, &config_platforms))
            .collect::<Result<_>>()?;
        let index_json = oci_index_json(&images, blobs)?;
        let entries: Vec<BlobEntry> = blobs.values().map(|b| b.entry.clone()).collect();
        let omitted: Vec<&BlobEntry> = entries.iter().filter(|b| !b.carried).collect();
        let bytes_omitted: u64 = omitted.iter().map(|b| b.size).sum();
        let totals = Totals {
            images: images.len(),
            blobs: entries.len(),
            size: entries.iter().map(|b| b.size).sum(),
            uncompressed_size: entries.iter().filter_map(|b| b.uncompressed_size).sum(),
            omitted_blobs: base.as_ref().map(|_| omitted.len()),
            omitted_size: base.as_ref().map(|_| bytes_omitted),
        };
        let bm = BundleManifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            creator: format!("pinbundle {}", env!("CARGO_PKG_VERSION")),
            created: rfc3339(created_secs),
            base: base.as_ref().map(crate::delta::Base::base_ref),
            layout: LayoutDigests {
                oci_layout: Digest::of(&oci_layout),
                index_json: Digest::of(&index_json),
            },
            images,
            blobs: entries,
            totals,
        };
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
    };
    let mut provisional_blobs = blobs.clone();
    let mut unknown = 0usize;
    for b in provisional_blobs.values_mut() {
        if b.entry.kind == BlobKind::Layer && b.entry.uncompressed_size.is_none() {
            b.entry.uncompressed_size = Some(0);
            unknown += 1;
        }
    }
    let provisional = head_of(&provisional_blobs)?;
    drop(provisional_blobs);
    // Each unknown layer size, each image's sum and the total may grow from "0" to 20 digits.
    let manifest_len = provisional.json.len() + 19 * (unknown + resolved.len() + 1) + 1;
    let sign = |bm: &BundleManifest, bytes: &[u8]| -> Result<Option<(Vec<u8>, SignatureInfo)>> {
        let Some(key) = &opts.sign_key else {
            return Ok(None);
        };
        let comment = trusted_comment(bm, bytes);
        let sig = key
            .sign(bytes, &comment)
            .with_context(|| format!("signing {MANIFEST_PATH} with key {}", key.id()))?;
        Ok(Some((
            sig,
            SignatureInfo {
                key_id: key.id(),
                trusted_comment: comment,
                verified_by: None,
            },
        )))
    };
    let provisional_bytes = padded(&provisional.json, manifest_len)?;
    let provisional_sig = sign(&provisional.bm, &provisional_bytes)?;
    let head_members = |manifest: &'_ [u8], sig: Option<&'_ [u8]>, index_json: &'_ [u8]| {
        let mut head: Vec<(&str, Vec<u8>)> = vec![(MANIFEST_PATH, manifest.to_vec())];
        if let Some(sig) = sig {
            head.push((SIGNATURE_PATH, sig.to_vec()));
        }
        head.push((OCI_LAYOUT_PATH, oci_layout.clone()));
        head.push((OCI_INDEX_PATH, index_json.to_vec()));
        head
    };
    let provisional_head = head_members(
        &provisional_bytes,
        provisional_sig.as_ref().map(|(s, _)| &s[..]),
        &provisional.index_json,
    );
    let provisional_refs: Vec<(&str, &[u8])> =
        provisional_head.iter().map(|(p, b)| (*p, &b[..])).collect();

    // 5. Write (on a thread of its own) while the rest is fetched.
    let out_err = || format!("writing {}", opts.output.display());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.max(1))
        .build()
        .context("starting worker threads")?;
    let writer_opts = WriterOptions {
        frame_size: opts.frame_size,
        level: opts.level,
        mtime: created_secs,
    };
    let mut sink = match opts.volume_size {
        None => {
            let file = tmp.as_file().try_clone().with_context(out_err)?;
            let mut w = BundleWriter::new(BufWriter::with_capacity(1 << 20, file), writer_opts)
                .with_writeback(tmp.as_file())
                .with_context(out_err)?;
            for (path, bytes) in &provisional_refs {
                w.add_bytes(path, bytes, Compression::Store)
                    .with_context(out_err)?;
            }
            Sink::File(w)
        }
        Some(volume_size) => Sink::Volumes(Box::new(
            VolumeWriter::new(&opts.output, volume_size, writer_opts, &provisional_refs)
                .with_context(out_err)?,
        )),
    };
    let to_write: Vec<&PlannedBlob> = blobs.values().filter(|b| b.entry.carried).collect();
    let (fetched_sizes, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            pool.install(|| {
                let r = write_blobs(&mut sink, &to_write, &ready, &cache, reporter, &out_err);
                if r.is_err() {
                    ready.abort();
                }
                r
            })
        });
        let rest = blobs
            .values()
            .filter(fetched)
            .filter(|b| b.entry.kind != BlobKind::Config);
        let fetched = runtime.block_on(futures_util::future::try_join_all(rest.map(&fetch_one)));
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
    let head = head_of(&blobs)?;
    if head.index_json != provisional.index_json {
        bail!("internal error: index.json changed while the layers were measured");
    }
    let manifest_bytes = padded(&head.json, manifest_len)?;
    let signature = sign(&head.bm, &manifest_bytes)?;
    let bm = head.bm;
    let final_head = head_members(
        &manifest_bytes,
        signature.as_ref().map(|(s, _)| &s[..]),
        &head.index_json,
    );
    let final_refs: Vec<(&str, &[u8])> = final_head.iter().map(|(p, b)| (*p, &b[..])).collect();
    let bytes_omitted = bm.totals.omitted_size.unwrap_or(0);
    let blobs_omitted = bm.totals.omitted_blobs.unwrap_or(0);
    let (bundle_size, volumes) = match sink {
        Sink::File(mut w) => {
            let file = pool.install(|| -> Result<std::fs::File> {
                w.rewrite_head(&final_refs).with_context(out_err)?;
                let (buf, _index) = w.finish().with_context(out_err)?;
                let file = buf
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(out_err)?;
                file.sync_all().with_context(out_err)?;
                file.try_clone().with_context(out_err)
            })?;
            reporter.finish();
            let bundle_size = file.metadata().with_context(out_err)?.len();
            // Temporary files are created 0600; a bundle is meant to be read by whoever
            // carries it.
            std::fs::set_permissions(
                tmp.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            )
            .with_context(out_err)?;
            tmp.persist(&opts.output)
                .map_err(|e| e.error)
                .with_context(|| {
                    format!("renaming the finished bundle to {}", opts.output.display())
                })?;
            if let Ok(d) = std::fs::File::open(&out_dir) {
                let _ = d.sync_all();
            }
            (bundle_size, Vec::new())
        }
        Sink::Volumes(mut w) => {
            drop(tmp);
            let written = pool.install(|| -> Result<Vec<crate::bundle::WrittenVolume>> {
                w.rewrite_head(&final_refs).with_context(out_err)?;
                w.finish().with_context(out_err)
            })?;
            reporter.finish();
            let volumes: Vec<CreatedVolume> = written
                .into_iter()
                .map(|v| CreatedVolume {
                    path: v.path,
                    size: v.size,
                })
                .collect();
            (volumes.iter().map(|v| v.size).sum(), volumes)
        }
    };

    Ok(CreateReport {
        version: 1,
        output: opts.output.clone(),
        images: bm
            .images
            .iter()
            .map(|i| CreatedImage {
                reference: i.reference.clone(),
                digest: i.digest.clone(),
                pin: format!("{}@{}", i.name, i.digest),
                media_type: i.media_type.clone(),
                platforms: i
                    .platforms
                    .iter()
                    .map(|p| Platform::from(p).to_string())
                    .collect(),
                size: i.size,
            })
            .collect(),
        blobs: bm.totals.blobs,
        size: bm.totals.size,
        bundle_size,
        volumes,
        blobs_fetched,
        blobs_cached,
        bytes_fetched: fetched_bytes.load(Ordering::Relaxed),
        signature: signature.map(|(_, info)| info),
        base: bm.base.clone(),
        blobs_carried: bm.totals.blobs - blobs_omitted,
        blobs_omitted,
        bytes_omitted,
        seconds: started.elapsed().as_secs_f64(),
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
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with(&prefix)
                && name.ends_with(".partial")
                && e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|m| m >= since);
            if ours {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        b"interrupted: removed the temporary bundle\n",
    );
    std::process::exit(code);
}

/// The signed comment: what a reader sees in `minisign -V` and `inspect`, authenticated with
/// the signature. One line, from the manifest only (so signing stays deterministic).
fn trusted_comment(bm: &BundleManifest, manifest_bytes: &[u8]) -> String {
    format!(
        "pinbundle created {} images {} blobs {} manifest {}",
        bm.created,
        bm.totals.images,
        bm.totals.blobs,
        Digest::of(manifest_bytes)
    )
}

/// Counts `m` into the manifest bytes the run holds, refusing past [`MAX_MANIFEST_BYTES`].
fn hold(held: &AtomicU64, m: &RawManifest, what: &str) -> Result<()> {
    let total = held.fetch_add(m.bytes.len() as u64, Ordering::Relaxed) + m.bytes.len() as u64;
    if total > MAX_MANIFEST_BYTES {
        bail!("{what}: the manifests of this run add up to more than {MAX_MANIFEST_BYTES} bytes");
    }
    Ok(())
}

/// Resolves one reference to its manifests.
async fn resolve(
    client: &RegistryClient,
    reference: &Reference,
    platforms: &[Platform],
    all_platforms: bool,
    held: &AtomicU64,
) -> Result<Resolved> {
    let root = client
        .get_manifest(reference)
        .await
        .with_context(|| format!("resolving {reference}"))?;
    let what = format!("{reference} (manifest {})", root.digest);
    hold(held, &root, &what)?;
    let instances = match manifest::parse(&root.bytes, &root.media_type, &what)? {
        Parsed::Image(m) => {
            manifest::check_image_media_types(&m, &what)?;
            vec![(root.clone(), None, *m)]
        }
        Parsed::Index(index) => {
            if index.manifests().len() > MAX_INDEX_ENTRIES {
                bail!(
                    "{what} is an index of {} entries, more than the {MAX_INDEX_ENTRIES} accepted",
                    index.manifests().len()
                );
            }
            let mut chosen: Vec<(Digest, Platform)> = Vec::new();
            let mut available = Vec::new();
            for d in index.manifests() {
                let Some(p) = d.platform() else { continue };
                let (os, arch, variant) = (
                    p.os().to_string(),
                    p.architecture().to_string(),
                    p.variant().clone(),
                );
                // Attestation manifests (buildkit) are not runnable images.
                if os == "unknown" || arch == "unknown" {
                    continue;
                }
                let shown = crate::platform::shown(&os, &arch, variant.as_deref()).to_string();
                let wanted = all_platforms
                    || platforms
                        .iter()
                        .any(|w| w.matches(&os, &arch, variant.as_deref()));
                if available.len() < 64 {
                    available.push(excerpt(&shown, 60));
                }
                if !wanted {
                    continue;
                }
                let digest = manifest::digest_of(d, &what)?;
                // The same manifest listed twice is fetched and recorded once.
                if chosen.iter().any(|(c, _)| *c == digest) {
                    continue;
                }
                // What enters pinbundle.json is held to the --platform grammar.
                let plat = Platform::from_peer(&os, &arch, variant.as_deref())
                    .map_err(|why| anyhow::anyhow!("{what}: entry {digest}: {why}"))?;
                chosen.push((digest, plat));
            }
            if chosen.is_empty() {
                let wanted: Vec<String> = platforms.iter().map(|p| p.to_string()).collect();
                bail!(
                    "{what} has no manifest for {} (available: {})",
                    wanted.join(", "),
                    available.join(", ")
                );
            }
            let mut out = Vec::new();
            for (digest, plat) in chosen {
                let child = client
                    .get_manifest_by_digest(reference, &digest)
                    .await
                    .with_context(|| {
                        format!("fetching the {plat} manifest {digest} of {reference}")
                    })?;
                let child_what = format!("{reference} ({plat} manifest {digest})");
                hold(held, &child, &child_what)?;
                match manifest::parse(&child.bytes, &child.media_type, &child_what)? {
                    Parsed::Image(m) => {
                        manifest::check_image_media_types(&m, &child_what)?;
                        out.push((child, Some(plat), *m));
                    }
                    Parsed::Index(_) => {
                        bail!("{child_what} is a nested index, which is not supported")
                    }
                }
            }
            out
        }
    };
    Ok(Resolved {
        reference: reference.clone(),
        root,
        instances,
    })
}

/// Whether `b` comes from the cache (or the registry): blobs, but not manifests (fetched while
/// resolving) nor the layers a delta leaves to its base.
fn fetched(b: &&PlannedBlob) -> bool {
    b.bytes.is_none() && b.entry.carried
}

/// The most bytes layer `b` may expand to: [`MAX_EXPANSION_RATIO`] times its size, at
/// least [`MIN_EXPANSION_ALLOWED`].
fn expansion_limit(b: &BlobEntry) -> u64 {
    b.size
        .saturating_mul(MAX_EXPANSION_RATIO)
        .max(MIN_EXPANSION_ALLOWED)
}

/// The size of a layer's uncompressed tar stream, remembered in `<cache>/meta/<hex>.size`.
/// Measuring stops, and the layer is refused, past [`expansion_limit`] bytes or
/// [`MAX_MEASURE_TIME`]: a decompression bomb must cost neither minutes nor a false
/// "64 GiB" in the signed manifest.
fn uncompressed_size(cache: &BlobCache, b: &BlobEntry, source: &Reference) -> Result<u64> {
    let limit = expansion_limit(b);
    if let Some(n) = cache.remembered_size(&b.digest).filter(|n| *n <= limit) {
        return Ok(n);
    }
    let path = cache.path_of(&b.digest);
    let f = std::io::BufReader::with_capacity(1 << 20, fs_err::File::open(&path)?);
    let what = || {
        format!(
            "decompressing layer {} of {source} ({})",
            b.digest, b.media_type
        )
    };
    let deadline = Instant::now() + MAX_MEASURE_TIME;
    let compression = match media::layer_compression(&b.media_type) {
        Some(c @ (media::LayerCompression::Gzip | media::LayerCompression::Zstd)) => c,
        _ => return Ok(b.size),
    };
    let n = match crate::layer::measure(f, compression, limit, Some(deadline)).with_context(what)? {
        Measured::Exactly(n) => n,
        Measured::Exceeds(_) => bail!(
            "layer {} of {source} expands to more than {limit} bytes ({MAX_EXPANSION_RATIO} times its {} compressed bytes, or {MIN_EXPANSION_ALLOWED}); refusing it as a decompression bomb",
            b.digest,
            b.size
        ),
        Measured::TooSlow(n) => bail!(
            "layer {} of {source} took more than {} s to decompress ({n} bytes so far); refusing it",
            b.digest,
            MAX_MEASURE_TIME.as_secs()
        ),
    };
    cache.remember_size(&b.digest, n)?;
    Ok(n)
}

fn platform_of_config(bytes: &[u8], digest: &Digest) -> Result<Platform> {
    #[derive(serde::Deserialize)]
    struct Config {
        os: Option<String>,
        architecture: Option<String>,
        variant: Option<String>,
    }
    // serde's message would quote the registry's text; say only where it broke.
    let c: Config = serde_json::from_slice(bytes).map_err(|e| {
        anyhow::anyhow!(
            "config {digest} is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    Platform::from_peer(
        c.os.as_deref().unwrap_or("unknown"),
        c.architecture.as_deref().unwrap_or("unknown"),
        c.variant.as_deref(),
    )
    .map_err(|why| anyhow::anyhow!("config {digest}: {why}"))
}

fn image_entry(
    r: &Resolved,
    blobs: &BTreeMap<Digest, PlannedBlob>,
    config_platforms: &HashMap<Digest, Platform>,
) -> Result<ImageEntry> {
    let mut needed: Vec<Digest> = vec![r.root.digest.clone()];
    let mut platforms = Vec::new();
    for (m, plat, parsed) in &r.instances {
        let what = format!("{} (manifest {})", r.reference, m.digest);
        let config = manifest::digest_of(parsed.config(), &what)?;
        let layers: Vec<Digest> = parsed
            .layers()
            .iter()
            .map(|l| manifest::digest_of(l, &what))
            .collect::<Result<_, _>>()?;
        let plat = match plat {
            Some(p) => p.clone(),
            None => config_platforms
                .get(&m.digest)
                .cloned()
                .unwrap_or_else(Platform::linux_amd64),
        };
        needed.push(m.digest.clone());
        needed.push(config.clone());
        needed.extend(layers.iter().cloned());
        platforms.push(PlatformEntry {
            os: plat.os,
            architecture: plat.architecture,
            variant: plat.variant,
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            config,
            layers,
        });
    }
    needed.sort();
    needed.dedup();
    let size = needed
        .iter()
        .filter_map(|d| blobs.get(d))
        .map(|b| b.entry.size)
        .sum();
    let uncompressed_size = needed
        .iter()
        .filter_map(|d| blobs.get(d))
        .filter_map(|b| b.entry.uncompressed_size)
        .sum();
    Ok(ImageEntry {
        reference: r.reference.to_string(),
        name: r.reference.name(),
        tag: r.reference.effective_tag().map(str::to_string),
        digest: r.root.digest.clone(),
        media_type: r.root.media_type.clone(),
        platforms,
        blobs: needed,
        size,
        uncompressed_size,
    })
}

/// The OCI layout's `index.json`: one descriptor per image, named by its full reference so
/// stock tools can address it (`skopeo copy oci:DIR:quay.io/a/b:v1 …`).
fn oci_index_json(images: &[ImageEntry], blobs: &BTreeMap<Digest, PlannedBlob>) -> Result<Vec<u8>> {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|i| {
            let size = blobs.get(&i.digest).map_or(0, |b| b.entry.size);
            serde_json::json!({
                "mediaType": i.media_type,
                "digest": i.digest.to_string(),
                "size": size,
                "annotations": {
                    "org.opencontainers.image.ref.name": i.reference,
                    "io.containerd.image.name": i.reference,
                },
            })
        })
        .collect();
    let mut v = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    }))?;
    v.push(b'\n');
    Ok(v)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
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
