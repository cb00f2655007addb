//! Stage 3, fetch: every blob the cache lacks, in parallel, verified while written (a re-run
//! after an interruption fetches only what is missing); each layer's uncompressed size is
//! measured as soon as it is in the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::plan::{BlobState, PlannedBlob};
use super::resolve::Resolved;
use super::write::{Aborted, Ready};
use super::{
    CreateOptions, MAX_CONFIG, MAX_EXPANSION_RATIO, MAX_MEASURE_TIME, MIN_EXPANSION_ALLOWED,
};
use crate::bundle::format::{BlobEntry, BlobKind, media};
use crate::cache::BlobCache;
use crate::layer::Measured;
use crate::manifest;
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::reference::{Digest, Reference};
use crate::registry::client::RegistryClient;

/// A layer's measured uncompressed size.
pub(super) type Measurement = Option<(Digest, u64)>;

/// Fetches blobs into the cache, marking each ready for the writer.
pub(super) struct Fetcher<'a> {
    pub opts: &'a CreateOptions,
    pub client: &'a RegistryClient,
    pub cache: &'a BlobCache,
    pub ready: &'a Ready,
    pub reporter: &'a dyn Reporter,
    /// Bytes downloaded so far.
    pub fetched_bytes: AtomicU64,
    net: tokio::sync::Semaphore,
    cpu: tokio::sync::Semaphore,
}

impl<'a> Fetcher<'a> {
    pub fn new(
        opts: &'a CreateOptions,
        client: &'a RegistryClient,
        cache: &'a BlobCache,
        ready: &'a Ready,
        reporter: &'a dyn Reporter,
    ) -> Fetcher<'a> {
        Fetcher {
            opts,
            client,
            cache,
            ready,
            reporter,
            fetched_bytes: AtomicU64::new(0),
            net: tokio::sync::Semaphore::new(opts.jobs.max(1)),
            cpu: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        }
    }

    /// Fetches (and measures) all of `blobs`, each as soon as a slot is free.
    pub fn fetch_all(
        &self,
        runtime: &tokio::runtime::Runtime,
        blobs: impl IntoIterator<Item = PlannedBlob>,
    ) -> Result<Vec<Measurement>> {
        runtime.block_on(futures_util::future::try_join_all(
            blobs.into_iter().map(|b| self.fetch(b)),
        ))
    }

    /// Fetches `b` if the cache lacks it, then measures it if it is a layer.
    async fn fetch(&self, b: PlannedBlob) -> Result<Measurement> {
        let opts = self.opts;
        let dest = self.cache.path_of(&b.entry.digest);
        if b.state == BlobState::ToFetch {
            let _permit = self.net.acquire().await.context("fetch queue closed")?;
            if self.ready.aborted() {
                return Err(anyhow::Error::new(Aborted));
            }
            let progress = |n: u64| {
                self.fetched_bytes.fetch_add(n, Ordering::Relaxed);
                self.reporter.advance(n);
            };
            let what = || format!("fetching blob {} of {}", b.entry.digest, b.source);
            tokio::time::timeout(
                opts.image_timeout,
                self.client
                    .fetch_blob(&b.source, &b.entry.digest, b.entry.size, &dest, &progress),
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
            self.ready.mark(&b.entry.digest);
        }
        if b.entry.kind != BlobKind::Layer {
            return Ok(None);
        }
        let _permit = self.cpu.acquire().await.context("worker queue closed")?;
        let (cache, entry, source) = (self.cache.clone(), b.entry.clone(), b.source.clone());
        let n = tokio::task::spawn_blocking(move || uncompressed_size(&cache, &entry, &source))
            .await
            .context("measuring a layer")??;
        Ok(Some((b.entry.digest, n)))
    }
}

/// The platforms of single-manifest images, by manifest digest: from their configs (which
/// are in the cache by now).
pub(super) fn config_platforms(
    resolved: &[Resolved],
    cache: &BlobCache,
) -> Result<HashMap<Digest, Platform>> {
    let mut config_platforms: HashMap<Digest, Platform> = HashMap::new();
    for r in resolved {
        for i in r.instances.iter().filter(|i| i.platform.is_none()) {
            let d = manifest::digest_of(i.parsed.config(), "config")?;
            let path = cache.path_of(&d);
            let bytes = crate::input::read_regular(&path, MAX_CONFIG)
                .with_context(|| format!("reading config {d} from {}", path.display()))?;
            let platform = platform_of_config(&bytes, &d)
                .with_context(|| format!("{} (manifest {})", r.reference, i.manifest.digest))?;
            config_platforms.insert(i.manifest.digest.clone(), platform);
        }
    }
    Ok(config_platforms)
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

pub(super) fn platform_of_config(bytes: &[u8], digest: &Digest) -> Result<Platform> {
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
