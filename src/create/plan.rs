//! Stage 2, plan: the blobs of every resolved image, each once whatever the number of images
//! and platforms using it, and for each where its bytes come from. Pure: what the cache holds
//! is asked through a function, so plans are tested without a registry or a disk.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::MAX_CONFIG;
use super::resolve::Resolved;
use crate::bundle::format::{BlobEntry, BlobKind, media};
use crate::delta::Base;
use crate::manifest;
use crate::reference::{Digest, Reference};
use crate::registry::client::RawManifest;

/// Where one blob's bytes come from: the one record of a blob's state before the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BlobState {
    /// A manifest or index, in memory since it was resolved.
    InMemory(Arc<[u8]>),
    /// In the cache already (from an earlier run).
    Cached,
    /// To be fetched into the cache.
    ToFetch,
    /// A layer a delta's base carries: neither fetched nor written.
    LeftToBase,
}

impl BlobState {
    /// Whether the bytes are read from the cache (once fetched, if need be).
    pub fn read_from_cache(&self) -> bool {
        matches!(self, BlobState::Cached | BlobState::ToFetch)
    }

    /// Whether the writer may take the blob without waiting for a download.
    pub fn ready(&self) -> bool {
        matches!(self, BlobState::InMemory(_) | BlobState::Cached)
    }

    /// The bytes, for a blob held in memory.
    pub fn bytes(&self) -> Option<&Arc<[u8]>> {
        match self {
            BlobState::InMemory(b) => Some(b),
            _ => None,
        }
    }
}

/// A blob to carry, with one repository it can be fetched from.
#[derive(Debug, Clone)]
pub(super) struct PlannedBlob {
    pub entry: BlobEntry,
    pub source: Reference,
    pub state: BlobState,
}

/// Every blob of a run, by digest (the order blobs are fetched and written in).
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub blobs: BTreeMap<Digest, PlannedBlob>,
}

impl Plan {
    /// The plan of `resolved`: a delta of `base` leaves out the layers the base lists;
    /// `cached(digest, size)` says whether the cache holds a blob.
    pub fn new(
        resolved: &[Resolved],
        base: Option<&Base>,
        cached: &dyn Fn(&Digest, u64) -> bool,
    ) -> Result<Plan> {
        let mut blobs: BTreeMap<Digest, PlannedBlob> = BTreeMap::new();
        for r in resolved {
            add_manifest(&mut blobs, &r.root, &r.reference);
            for i in &r.instances {
                add_manifest(&mut blobs, &i.manifest, &r.reference);
            }
        }
        for r in resolved {
            for i in &r.instances {
                add_blobs(&mut blobs, r, &i.manifest, &i.parsed)?;
            }
        }
        // A delta neither fetches nor carries the layers its base lists (their uncompressed
        // sizes come from the base).
        if let Some(base) = base {
            let mut entries: Vec<&mut BlobEntry> =
                blobs.values_mut().map(|b| &mut b.entry).collect();
            crate::delta::omit_from(base, &mut entries)
                .with_context(|| format!("planning a delta of {}", base.path.display()))?;
        }
        for b in blobs.values_mut() {
            if !b.entry.carried {
                b.state = BlobState::LeftToBase;
            } else if b.state == BlobState::ToFetch && cached(&b.entry.digest, b.entry.size) {
                b.state = BlobState::Cached;
            }
        }
        Ok(Plan { blobs })
    }

    fn in_state(&self, state: &BlobState) -> impl Iterator<Item = &PlannedBlob> {
        self.blobs.values().filter(move |b| b.state == *state)
    }

    /// How many blobs are downloaded.
    pub fn blobs_to_fetch(&self) -> usize {
        self.in_state(&BlobState::ToFetch).count()
    }

    /// How many blobs the cache already holds.
    pub fn blobs_cached(&self) -> usize {
        self.in_state(&BlobState::Cached).count()
    }

    /// How many bytes are downloaded.
    pub fn bytes_to_fetch(&self) -> u64 {
        self.in_state(&BlobState::ToFetch)
            .map(|b| b.entry.size)
            .sum()
    }

    /// How many bytes the writer reads from the cache: the blobs the bundle carries that
    /// are not held in memory.
    pub fn bytes_from_cache(&self) -> u64 {
        self.blobs
            .values()
            .filter(|b| b.state != BlobState::LeftToBase && b.state.bytes().is_none())
            .map(|b| b.entry.size)
            .sum()
    }

    /// Adds release signatures: small blobs held in memory, listed in `pinbundle.json` like
    /// every other blob.
    pub fn add_signatures(&mut self, signatures: &[Vec<u8>], source: &Reference) {
        for s in signatures {
            let digest = Digest::of(s);
            self.blobs
                .entry(digest.clone())
                .or_insert_with(|| PlannedBlob {
                    entry: BlobEntry {
                        digest,
                        size: s.len() as u64,
                        media_type: media::RELEASE_SIGNATURE.into(),
                        kind: BlobKind::Signature,
                        uncompressed_size: None,
                        carried: true,
                    },
                    source: source.clone(),
                    state: BlobState::InMemory(Arc::from(&s[..])),
                });
        }
    }

    /// The blobs read from the cache, configs (`true`) or the others.
    pub fn read_from_cache(&self, configs: bool) -> impl Iterator<Item = &PlannedBlob> {
        self.blobs.values().filter(move |b| {
            b.state.read_from_cache() && (b.entry.kind == BlobKind::Config) == configs
        })
    }
}

fn add_manifest(blobs: &mut BTreeMap<Digest, PlannedBlob>, m: &RawManifest, source: &Reference) {
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
            state: BlobState::InMemory(Arc::from(&m.bytes[..])),
        });
}

/// Adds the config and layers of image manifest `m` of `r`.
fn add_blobs(
    blobs: &mut BTreeMap<Digest, PlannedBlob>,
    r: &Resolved,
    m: &RawManifest,
    parsed: &oci_spec::image::ImageManifest,
) -> Result<()> {
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
                state: BlobState::ToFetch,
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::resolve::Instance;
    use super::*;

    fn raw(json: String) -> RawManifest {
        let bytes = bytes::Bytes::from(json.into_bytes());
        RawManifest {
            digest: Digest::of(&bytes),
            bytes,
            media_type: media::OCI_MANIFEST.into(),
        }
    }

    fn desc(media_type: &str, content: &[u8], size: u64) -> String {
        format!(
            r#"{{"mediaType":"{media_type}","digest":"{}","size":{size}}}"#,
            Digest::of(content)
        )
    }

    /// A single-manifest image of `reference` with a config and these layers.
    fn image(reference: &str, config: &[u8], layers: &[(&[u8], u64)]) -> Resolved {
        let layers: Vec<String> = layers
            .iter()
            .map(|(c, n)| desc(media::OCI_LAYER_GZIP, c, *n))
            .collect();
        let m = raw(format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{},"layers":[{}]}}"#,
            media::OCI_MANIFEST,
            desc(media::OCI_CONFIG, config, config.len() as u64),
            layers.join(",")
        ));
        let parsed = serde_json::from_slice(&m.bytes).unwrap();
        Resolved {
            reference: reference.parse().unwrap(),
            root: m.clone(),
            instances: vec![Instance {
                manifest: m,
                platform: None,
                parsed,
            }],
        }
    }

    #[test]
    fn blobs_shared_by_images_are_planned_once() {
        let a = image(
            "quay.io/a:1",
            b"config-a",
            &[(b"base", 100), (b"app-a", 10)],
        );
        let b = image(
            "quay.io/b:1",
            b"config-b",
            &[(b"base", 100), (b"app-b", 20)],
        );
        let plan = Plan::new(&[a, b], None, &|_, _| false).unwrap();
        // 2 manifests, 2 configs, 3 distinct layers.
        assert_eq!(plan.blobs.len(), 7);
        let base = &plan.blobs[&Digest::of(b"base")];
        assert_eq!(base.source.to_string(), "quay.io/a:1");
        assert_eq!(base.entry.kind, BlobKind::Layer);
        assert_eq!(plan.blobs_to_fetch(), 5);
        assert_eq!(plan.blobs_cached(), 0);
        assert_eq!(plan.read_from_cache(true).count(), 2);
        assert_eq!(plan.read_from_cache(false).count(), 3);
        let manifests: Vec<_> = plan.blobs.values().filter(|b| b.state.ready()).collect();
        assert_eq!(manifests.len(), 2);
        assert!(manifests.iter().all(|b| b.state.bytes().is_some()));
        let configs = b"config-a".len() as u64 + b"config-b".len() as u64;
        assert_eq!(plan.bytes_to_fetch(), 130 + configs);
        // The writer reads everything but the manifests (held in memory) from the cache.
        assert_eq!(plan.bytes_from_cache(), 130 + configs);
    }

    #[test]
    fn what_the_cache_holds_is_not_fetched() {
        let a = image(
            "quay.io/a:1",
            b"config-a",
            &[(b"base", 100), (b"app-a", 10)],
        );
        let base = Digest::of(b"base");
        let plan = Plan::new(&[a], None, &|d, n| *d == base && n == 100).unwrap();
        assert_eq!(plan.blobs[&base].state, BlobState::Cached);
        assert!(plan.blobs[&base].state.ready());
        assert_eq!(plan.blobs_cached(), 1);
        assert_eq!(plan.blobs_to_fetch(), 2);
        assert_eq!(plan.bytes_to_fetch(), 10 + b"config-a".len() as u64);
        // Manifests stay in memory even when the cache holds everything.
        let all = Plan::new(
            &[image("quay.io/a:1", b"c", &[(b"l", 1)])],
            None,
            &|_, _| true,
        )
        .unwrap();
        assert_eq!(all.blobs_to_fetch(), 0);
        assert_eq!(all.blobs_cached(), 2);
        assert_eq!(
            all.blobs
                .values()
                .filter(|b| b.state.bytes().is_some())
                .count(),
            1
        );
    }

    #[test]
    fn conflicting_sizes_and_huge_configs_are_refused() {
        let a = image("quay.io/a:1", b"config-a", &[(b"base", 100)]);
        let b = image("quay.io/b:1", b"config-b", &[(b"base", 101)]);
        let err = Plan::new(&[a, b], None, &|_, _| false).unwrap_err();
        assert!(
            err.to_string()
                .contains("is declared with size 101, elsewhere with 100"),
            "{err}"
        );
        let mut big = image("quay.io/c:1", b"config-c", &[]);
        let m = raw(format!(
            r#"{{"schemaVersion":2,"config":{},"layers":[]}}"#,
            desc(media::OCI_CONFIG, b"config-c", MAX_CONFIG + 1)
        ));
        big.instances[0].parsed = serde_json::from_slice(&m.bytes).unwrap();
        let err = Plan::new(&[big], None, &|_, _| false).unwrap_err();
        assert!(err.to_string().contains("more than the"), "{err}");
    }
}
