//! Stage 1, resolve: every reference to its manifests, raw bytes kept; for an index, the
//! manifests of the chosen platforms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};

use super::{CreateOptions, MAX_INDEX_ENTRIES, MAX_MANIFEST_BYTES};
use crate::manifest::{self, Parsed};
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::reference::{Digest, Reference};
use crate::registry::client::{RawManifest, RegistryClient};
use crate::text::excerpt;

/// One resolved image, before sizes are known.
pub(super) struct Resolved {
    pub reference: Reference,
    /// The manifest or index the reference names.
    pub root: RawManifest,
    /// The image manifests carried: the root itself, or the chosen entries of an index.
    pub instances: Vec<Instance>,
}

/// One image manifest of a [`Resolved`] image.
pub(super) struct Instance {
    pub manifest: RawManifest,
    /// The platform the index declared for it; `None` for a single-manifest image (whose
    /// config says).
    pub platform: Option<Platform>,
    pub parsed: oci_spec::image::ImageManifest,
}

/// Resolves every distinct reference of `opts`, a few at a time, so N references cost
/// N × (at most) 4 MiB only in what is kept.
pub(super) fn resolve_all(
    runtime: &tokio::runtime::Runtime,
    client: &RegistryClient,
    opts: &CreateOptions,
    origins: &HashMap<Reference, String>,
    reporter: &dyn Reporter,
) -> Result<Vec<Resolved>> {
    let mut refs: Vec<Reference> = Vec::new();
    for r in &opts.references {
        if !refs.contains(r) {
            refs.push(r.clone());
        }
    }
    reporter.message(&format!("resolving {} references", refs.len()));
    let platforms = requested(opts);
    let all_platforms = opts.all_platforms;
    let allow_missing = opts.allow_missing_platforms;
    let held = AtomicU64::new(0);
    runtime.block_on(async {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        futures_util::stream::iter(refs.iter().map(|r| {
            let (platforms, held) = (&platforms, &held);
            async move {
                tokio::time::timeout(
                    opts.image_timeout,
                    resolve(client, r, platforms, (all_platforms, allow_missing), held),
                )
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "resolving {r} took longer than --image-timeout ({} s)",
                        opts.image_timeout.as_secs_f64()
                    )
                })
                .and_then(|r| r)
                // A release's component is named by the release and its tag name.
                .map_err(|e| match origins.get(r) {
                    Some(o) => e.context(o.clone()),
                    None => e,
                })
            }
        }))
        .buffered(opts.jobs.clamp(1, 8))
        .try_collect()
        .await
    })
}

/// The platforms asked for: `--platform`, or linux/amd64.
pub(super) fn requested(opts: &CreateOptions) -> Vec<Platform> {
    if opts.platforms.is_empty() {
        vec![Platform::linux_amd64()]
    } else {
        opts.platforms.clone()
    }
}

/// The error for an image that lacks `missing` of the platforms asked for.
fn missing_platforms(what: &str, missing: &[&Platform], has: &[String]) -> anyhow::Error {
    let has = if has.is_empty() {
        "none".to_string()
    } else {
        has.join(", ")
    };
    if missing.is_empty() {
        return anyhow::Error::new(crate::error::Refused(format!(
            "{what} has no runnable manifest (it has: {has})"
        )));
    }
    let missing: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
    // Refused for its content (exit 1), not an operational failure.
    anyhow::Error::new(crate::error::Refused(format!(
        "{what} has no manifest for {} (it has: {has}); ask only for platforms it has, or pass --allow-missing-platforms to carry it without them",
        missing.join(", "),
    )))
}

/// Every single-manifest image must be of every platform asked for (its config says which
/// it is), as an index must have an entry for each ([`resolve`] checks those): otherwise the
/// bundle would fail only on the node. With `--allow-missing-platforms`, of one of them.
pub(super) fn check_single_platforms(
    resolved: &[Resolved],
    config_platforms: &std::collections::HashMap<Digest, Platform>,
    opts: &CreateOptions,
) -> Result<()> {
    if opts.all_platforms {
        return Ok(());
    }
    let wanted = requested(opts);
    for r in resolved {
        for i in r.instances.iter().filter(|i| i.platform.is_none()) {
            let Some(has) = config_platforms.get(&i.manifest.digest) else {
                continue;
            };
            let matches =
                |w: &Platform| w.matches(&has.os, &has.architecture, has.variant.as_deref());
            let missing: Vec<&Platform> = wanted.iter().filter(|w| !matches(w)).collect();
            let none_match = missing.len() == wanted.len();
            if !missing.is_empty() && (!opts.allow_missing_platforms || none_match) {
                let what = format!(
                    "{} (a single-platform image, manifest {})",
                    r.reference, i.manifest.digest
                );
                return Err(missing_platforms(&what, &missing, &[has.to_string()]));
            }
        }
    }
    Ok(())
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
pub(super) async fn resolve(
    client: &RegistryClient,
    reference: &Reference,
    platforms: &[Platform],
    (all_platforms, allow_missing): (bool, bool),
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
            vec![Instance {
                manifest: root.clone(),
                platform: None,
                parsed: *m,
            }]
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
            // Which of `platforms` some runnable entry has.
            let mut found = vec![false; platforms.len()];
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
                for (hit, w) in found.iter_mut().zip(platforms) {
                    *hit |= w.matches(&os, &arch, variant.as_deref());
                }
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
            let missing: Vec<&Platform> = platforms
                .iter()
                .zip(&found)
                .filter(|(_, hit)| !**hit)
                .map(|(p, _)| p)
                .collect();
            if chosen.is_empty() || (!all_platforms && !allow_missing && !missing.is_empty()) {
                let missing = if chosen.is_empty() && !all_platforms {
                    platforms.iter().collect()
                } else {
                    missing
                };
                return Err(missing_platforms(&what, &missing, &available));
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
                        out.push(Instance {
                            manifest: child,
                            platform: Some(plat),
                            parsed: *m,
                        });
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
