//! Stage 0, releases: each `--release` image resolved (tag → digest), its config and layers
//! fetched into the cache (where the bundle's writer finds them later), its payload read
//! ([`crate::release`]), and its signatures fetched from the store. What comes out is the
//! list of references to add (the release image by digest, then every component) and the
//! [`ReleaseEntry`] that `pinbundle.json` records.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use anyhow::{Context, Result, bail};

use super::fetch::platform_of_config;
use super::resolve::{self, Resolved};
use super::{CreateOptions, MAX_CONFIG};
use crate::bundle::format::{ReleaseEntry, media};
use crate::cache::BlobCache;
use crate::manifest;
use crate::progress::Reporter;
use crate::reference::{Digest, Reference};
use crate::registry::client::RegistryClient;
use crate::release::{self, MAX_SIGNATURE_LEN, MAX_SIGNATURES, PayloadFiles};

/// What `create` needs to know of releases.
#[derive(Debug, Clone, Default)]
pub struct ReleaseOptions {
    /// The release images (`--release`).
    pub references: Vec<Reference>,
    /// The signature store's base URL; `None` carries no signatures (said in a notice).
    pub signature_store: Option<String>,
}

/// One release, expanded.
pub(super) struct Expanded {
    pub entry: ReleaseEntry,
    /// The release image by digest, then the components, each once.
    pub references: Vec<Reference>,
    /// The signatures' bytes, in `entry.signatures`' order.
    pub signatures: Vec<Vec<u8>>,
}

impl Expanded {
    /// What names each reference of the releases in an error: the release, the tag name and
    /// the reference.
    pub fn origins(expanded: &[Expanded]) -> HashMap<Reference, String> {
        let mut out = HashMap::new();
        for e in expanded {
            for (tag, c) in &e.entry.components {
                if let Ok(r) = c.parse::<Reference>() {
                    out.entry(r).or_insert_with(|| {
                        format!(
                            "component \"{tag}\" ({c}) of release {} ({})",
                            e.entry.reference, e.entry.version
                        )
                    });
                }
            }
        }
        out
    }
}

/// Expands every `--release` of `opts`, one at a time (a release's own blobs are few).
pub(super) fn expand_all(
    runtime: &tokio::runtime::Runtime,
    client: &RegistryClient,
    cache: &BlobCache,
    opts: &CreateOptions,
    reporter: &dyn Reporter,
) -> Result<Vec<Expanded>> {
    let mut out = Vec::new();
    let http = match &opts.release.signature_store {
        Some(_) if !opts.release.references.is_empty() => Some(
            reqwest::Client::builder()
                .connect_timeout(opts.client.connect_timeout)
                .timeout(opts.client.request_timeout)
                .build()
                .context("setting up the signature store's HTTP client")?,
        ),
        _ => None,
    };
    for r in &opts.release.references {
        reporter.message(&format!("reading release {r}"));
        let e = runtime.block_on(expand(client, cache, opts, r, http.as_ref()))?;
        if e.signatures.is_empty() {
            reporter.notice(&format!(
                "release {r} ({}): no signatures carried (--no-release-signatures); a disconnected cluster cannot verify it, so `oc adm upgrade` needs --force",
                e.entry.version
            ));
        }
        out.push(e);
    }
    Ok(out)
}

async fn expand(
    client: &RegistryClient,
    cache: &BlobCache,
    opts: &CreateOptions,
    reference: &Reference,
    http: Option<&reqwest::Client>,
) -> Result<Expanded> {
    let platforms = resolve::requested(opts);
    // A release is one architecture: the first platform asked for that it has.
    let held = AtomicU64::new(0);
    let resolved: Resolved = resolve::resolve(client, reference, &platforms, (false, true), &held)
        .await
        .with_context(|| format!("resolving release {reference}"))?;
    let Some(instance) = resolved.instances.first() else {
        bail!("release {reference} has no image manifest");
    };
    let what = format!(
        "release {reference} (manifest {})",
        instance.manifest.digest
    );
    let fetch = |digest: Digest, size: u64| async move {
        let dest = cache.path_of(&digest);
        if !cache.contains(&digest, size) {
            client
                .fetch_blob(reference, &digest, size, &dest, &|_| {})
                .await
                .with_context(|| format!("fetching blob {digest} of release {reference}"))?;
        }
        anyhow::Ok(dest)
    };
    let config = instance.parsed.config();
    let config_digest = manifest::digest_of(config, &what)?;
    if config.size() > MAX_CONFIG {
        bail!("{what}: config {config_digest} is larger than {MAX_CONFIG} bytes");
    }
    let architecture = match &instance.platform {
        Some(p) => p.architecture.clone(),
        None => {
            let path = fetch(config_digest.clone(), config.size()).await?;
            let bytes = crate::input::read_regular(&path, MAX_CONFIG)
                .with_context(|| format!("reading config {config_digest}"))?;
            platform_of_config(&bytes, &config_digest)
                .with_context(|| what.clone())?
                .architecture
        }
    };
    let shown = reference.to_string();
    let mut files = PayloadFiles::default();
    for l in instance.parsed.layers() {
        let digest = manifest::digest_of(l, &what)?;
        let media_type = manifest::media_type_str(l);
        let Some(compression) = media::layer_compression(&media_type) else {
            bail!(
                "{what}: layer {digest} has media type {media_type}, which pinbundle cannot read"
            );
        };
        let path = fetch(digest.clone(), l.size()).await?;
        let file = std::io::BufReader::new(fs_err::File::open(&path)?);
        let (shown, digest2) = (shown.clone(), digest.clone());
        files = tokio::task::spawn_blocking(move || {
            let mut files = files;
            files
                .apply_layer(file, compression, &shown, &digest2)
                .map(|()| files)
        })
        .await
        .context("reading a release layer")??;
    }
    let payload = files.parse(&shown)?;
    let image = reference.pinned(resolved.root.digest.clone());
    let mut references: Vec<Reference> = vec![image.to_string().parse()?];
    for c in payload.components.values() {
        if !references.contains(c) {
            references.push(c.clone());
        }
    }
    let signatures = match (http, &opts.release.signature_store) {
        (Some(http), Some(store)) => {
            fetch_signatures(http, store, &resolved.root.digest, reference).await?
        }
        _ => Vec::new(),
    };
    let entry = ReleaseEntry {
        reference: shown,
        image: image.to_string(),
        digest: resolved.root.digest.clone(),
        version: payload.version,
        previous: payload.previous,
        architecture,
        components: payload
            .components
            .into_iter()
            .map(|(t, r)| (t, r.to_string()))
            .collect(),
        signatures: signatures.iter().map(|s| Digest::of(s)).collect(),
    };
    Ok(Expanded {
        entry,
        references,
        signatures,
    })
}

/// `signature-1`, `signature-2`, … of `digest` until the store answers 404. Finding none is
/// an error: a release without signatures cannot be verified offline.
async fn fetch_signatures(
    http: &reqwest::Client,
    store: &str,
    digest: &Digest,
    reference: &Reference,
) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let hint = "pass --release-signature-store URL for another store, or --no-release-signatures to carry none";
    for n in 1..=MAX_SIGNATURES {
        let url = release::signature_url(store, digest, n);
        let shown = crate::registry::client::redact_url(&url);
        let mut resp = http.get(&url).send().await.with_context(|| {
            format!("fetching signature {shown} of release {reference} ({hint})")
        })?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            break;
        }
        if !resp.status().is_success() {
            bail!(
                "signature store answered {} for {shown} (release {reference}); {hint}",
                resp.status()
            );
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .with_context(|| format!("reading {shown}"))?
        {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_SIGNATURE_LEN {
                bail!("{shown} is larger than the {MAX_SIGNATURE_LEN} bytes a signature may have");
            }
        }
        out.push(body);
    }
    if out.is_empty() {
        bail!(
            "no signature of release {reference} ({digest}) at {}: a disconnected cluster could not verify it; {hint}",
            crate::registry::client::redact_url(store)
        );
    }
    Ok(out)
}
