//! `pinbundle create`: references → plan → blobs → bundle, one stage per module, each
//! handing a value to the next.
//!
//! 1. [`resolve`]: fetch every reference's manifest (raw bytes kept), and for an index the
//!    manifests of the chosen platforms.
//! 2. [`plan`]: the set of blobs, each once, whatever the number of images using it, and
//!    where each one's bytes come from (memory, the cache, the registry, or a delta's base).
//!    Pure, so tested without a registry.
//! 3. [`fetch`]: every blob not yet in the content-addressed cache, in parallel, verified
//!    while written; a re-run after an interruption fetches only what is missing.
//! 4. [`write`]: the bundle, from memory (manifests) and the cache (blobs), to a temporary
//!    file in the output's directory, renamed into place only when complete; [`head`] renders
//!    what `pinbundle.json` says.

mod fetch;
mod head;
mod input;
mod plan;
mod release;
mod resolve;
mod write;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use self::fetch::Fetcher;
use self::head::HeadSource;
pub use self::input::{read_pinned_image_set, read_reference_file};
use self::plan::{Plan, PlannedBlob};
pub use self::release::ReleaseOptions;
use self::write::{Ready, WriteJob, Written};
use crate::bundle::format::BaseRef;
use crate::cache::BlobCache;
use crate::progress::Reporter;
use crate::reference::{Digest, Reference};
use crate::registry::client::{ClientOptions, RegistryClient};
use crate::sign::SignatureInfo;
use crate::sign::SigningKey;

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
    /// Carry an image that lacks some of `platforms` (it must still have one of them);
    /// without, every image must have every platform asked for.
    pub allow_missing_platforms: bool,
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
    /// OpenShift releases to expand (`--release`) and where their signatures come from.
    pub release: ReleaseOptions,
}

/// The summary of a `create` run (the `--json` document, whose `blobsCarried` is
/// [`CreateReport::blobs_carried`]).
#[derive(Debug, Clone)]
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
    /// Layers left to the base.
    pub blobs_omitted: usize,
    pub bytes_omitted: u64,
    pub seconds: f64,
    /// What went right but not as asked (the bundle is complete).
    pub warnings: Vec<CreateWarning>,
}

impl Serialize for CreateReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut r = s.serialize_struct("CreateReport", 17)?;
        r.serialize_field("version", &self.version)?;
        r.serialize_field("output", &self.output)?;
        r.serialize_field("images", &self.images)?;
        r.serialize_field("blobs", &self.blobs)?;
        r.serialize_field("size", &self.size)?;
        r.serialize_field("bundleSize", &self.bundle_size)?;
        r.serialize_field("volumes", &self.volumes)?;
        r.serialize_field("blobsFetched", &self.blobs_fetched)?;
        r.serialize_field("blobsCached", &self.blobs_cached)?;
        r.serialize_field("bytesFetched", &self.bytes_fetched)?;
        r.serialize_field("signature", &self.signature)?;
        r.serialize_field("base", &self.base)?;
        r.serialize_field("blobsCarried", &self.blobs_carried())?;
        r.serialize_field("blobsOmitted", &self.blobs_omitted)?;
        r.serialize_field("bytesOmitted", &self.bytes_omitted)?;
        r.serialize_field("seconds", &self.seconds)?;
        r.serialize_field("warnings", &self.warnings)?;
        r.end()
    }
}

/// Something `create` could not do as asked that leaves the bundle whole (`--json`:
/// `{"kind": "modeNotSet", "path": …, "mode": "0644"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
#[non_exhaustive]
pub enum CreateWarning {
    /// The file system refused to set the file's mode: FAT32 and exFAT hold no modes (the
    /// kernel answers EPERM; files there show the mount's fmask). The file is complete.
    ModeNotSet {
        path: PathBuf,
        #[serde(serialize_with = "octal_mode")]
        mode: u32,
    },
}

fn octal_mode<S: serde::Serializer>(mode: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{mode:04o}"))
}

impl std::fmt::Display for CreateWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateWarning::ModeNotSet { path, mode } => write!(
                f,
                "could not set mode {mode:04o} on {} (the file system refused chmod; FAT and exFAT mounts take modes from the fmask mount option)",
                path.display()
            ),
        }
    }
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

/// Runs `create`: resolve → plan → fetch → write.
pub fn create(opts: &CreateOptions, reporter: &dyn Reporter) -> Result<CreateReport> {
    let started = Instant::now();
    // Temporary files of this run are those modified since (less the file system's
    // timestamp granularity).
    let started_at = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    if opts.references.is_empty() && opts.release.references.is_empty() {
        bail!(
            "no image references given (arguments, --from-file, --pinned-image-set or --release)"
        );
    }
    let output = write::open_output(opts)?;
    // A run killed too hard to clean up (SIGKILL, a power cut) left its temporary files; the
    // one just staged is locked, so it stays.
    let abandoned = crate::atomic::remove_abandoned(&opts.output);
    if !abandoned.is_empty() {
        let names: Vec<String> = abandoned
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        reporter.notice(&format!(
            "removed what an interrupted run left of {}: {}",
            opts.output.display(),
            names.join(", ")
        ));
    }
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
    output.remove_on_signal(&runtime, started_at);
    let client =
        RegistryClient::new(opts.client.clone()).context("setting up the registry client")?;

    let releases = release::expand_all(&runtime, &client, &cache, opts, reporter)?;
    let with_releases;
    let opts = if releases.is_empty() {
        opts
    } else {
        let mut o = opts.clone();
        o.references
            .extend(releases.iter().flat_map(|e| e.references.iter().cloned()));
        with_releases = o;
        &with_releases
    };
    let origins = release::Expanded::origins(&releases);
    let resolved = resolve::resolve_all(&runtime, &client, opts, &origins, reporter)?;
    let mut plan = Plan::new(&resolved, base.as_ref(), &|d, n| cache.contains(d, n))?;
    for e in &releases {
        plan.add_signatures(&e.signatures, &e.references[0]);
    }
    cache.sweep_partials(plan.blobs.keys());

    // Configs come first: their platforms go into pinbundle.json. Then every other blob is
    // downloaded in digest order while a writer thread follows in the same order, adding
    // each blob as soon as it is in the cache.
    let ready = Ready::default();
    for b in plan.blobs.values().filter(|b| b.state.ready()) {
        ready.mark(&b.entry.digest);
    }
    let fetcher = Fetcher::new(opts, &client, &cache, &ready, reporter);
    let (blobs_fetched, blobs_cached) = (plan.blobs_to_fetch(), plan.blobs_cached());
    // One count for the bar: the bytes fetched, which the writer follows closely; only when
    // everything is cached, the bytes the writer reads from the cache. (Both at once made
    // the total twice the bundle.)
    let (total, writer_reporter): (u64, &dyn Reporter) = match plan.bytes_to_fetch() {
        0 => (plan.bytes_from_cache(), reporter),
        n => (n, &crate::progress::Silent),
    };
    reporter.start(
        &format!(
            "fetching {} ({blobs_cached} cached), writing",
            crate::progress::count(blobs_fetched, "blob")
        ),
        total,
    );
    fetcher.fetch_all(&runtime, plan.read_from_cache(true).cloned())?;
    let config_platforms = fetch::config_platforms(&resolved, &cache)?;
    resolve::check_single_platforms(&resolved, &config_platforms, opts)?;
    let source = HeadSource {
        resolved: &resolved,
        config_platforms: &config_platforms,
        base: base.as_ref(),
        releases: releases.iter().map(|e| e.entry.clone()).collect(),
        created_secs: opts.source_date_epoch.unwrap_or_else(head::now_secs),
    };
    let rest: Vec<PlannedBlob> = plan.read_from_cache(false).cloned().collect();
    let written = write::write(
        WriteJob {
            opts,
            output,
            blobs: &mut plan.blobs,
            images: resolved.len(),
            source: &source,
            ready: &ready,
            cache: &cache,
            reporter: writer_reporter,
        },
        || fetcher.fetch_all(&runtime, rest),
    )
    .inspect_err(|_| reporter.finish())?;
    let fetched = FetchCounts {
        blobs_fetched,
        blobs_cached,
        bytes_fetched: fetcher.fetched_bytes.load(Ordering::Relaxed),
    };
    reporter.done(&format!(
        "fetched {}, {} ({blobs_cached} cached); wrote {}",
        crate::progress::count(blobs_fetched, "blob"),
        crate::size::human(fetched.bytes_fetched),
        crate::size::human(written.bundle_size)
    ));
    Ok(CreateReport::new(opts, written, fetched, started))
}

/// What the fetch stage counted.
struct FetchCounts {
    blobs_fetched: usize,
    blobs_cached: usize,
    bytes_fetched: u64,
}

impl CreateReport {
    fn new(
        opts: &CreateOptions,
        written: Written,
        fetched: FetchCounts,
        started: Instant,
    ) -> CreateReport {
        let bm = written.bm;
        CreateReport {
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
            bundle_size: written.bundle_size,
            volumes: written.volumes,
            blobs_fetched: fetched.blobs_fetched,
            blobs_cached: fetched.blobs_cached,
            bytes_fetched: fetched.bytes_fetched,
            signature: written.signature,
            base: bm.base.clone(),
            blobs_omitted: bm.totals.omitted_blobs.unwrap_or(0),
            bytes_omitted: bm.totals.omitted_size.unwrap_or(0),
            seconds: started.elapsed().as_secs_f64(),
            warnings: written
                .modes_refused
                .into_iter()
                .map(|(path, mode)| CreateWarning::ModeNotSet { path, mode })
                .collect(),
        }
    }

    /// Blobs in the file (`blobs` counts these and the layers left to the base).
    pub fn blobs_carried(&self) -> usize {
        self.blobs - self.blobs_omitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--json` keeps its field order, with the derived `blobsCarried` where it always was;
    /// warnings last, each with its kind.
    #[test]
    fn report_json_keeps_its_fields_and_order() {
        let report = CreateReport {
            version: 1,
            output: "b.pinbundle".into(),
            images: Vec::new(),
            blobs: 7,
            size: 100,
            bundle_size: 120,
            volumes: Vec::new(),
            blobs_fetched: 2,
            blobs_cached: 3,
            bytes_fetched: 50,
            signature: None,
            base: None,
            blobs_omitted: 2,
            bytes_omitted: 40,
            seconds: 1.5,
            warnings: vec![CreateWarning::ModeNotSet {
                path: "b.pinbundle".into(),
                mode: 0o644,
            }],
        };
        assert_eq!(report.blobs_carried(), 5);
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"version":1,"output":"b.pinbundle","images":[],"blobs":7,"size":100,"bundleSize":120,"volumes":[],"blobsFetched":2,"blobsCached":3,"bytesFetched":50,"signature":null,"base":null,"blobsCarried":5,"blobsOmitted":2,"bytesOmitted":40,"seconds":1.5,"warnings":[{"kind":"modeNotSet","path":"b.pinbundle","mode":"0644"}]}"#
        );
    }
}
