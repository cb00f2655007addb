//! Will the images fit? The store needs the unpacked layers of the images not yet present,
//! skopeo's temp dir their compressed blobs; on one filesystem, both.
//!
//! The unpacked sizes come from facts: a bundle signed by a trusted key may state them (the
//! signer measured them), an unsigned one may not. Its layers are decompressed here, each
//! stopped as soon as it passes the size `pinbundle.json` declares, so a layer that would
//! unpack larger than declared is refused before anything changes, and a bomb costs no more
//! than its declared size.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use super::storage::Store;
use crate::bundle::BundleSet;
use crate::bundle::format::{BlobEntry, BlobKind, BundleManifest, media};
use crate::layer::{self, Measured};
use crate::progress::Reporter;
use crate::reference::Digest;

/// Extra room asked for beyond the data itself: metadata, tar-split, rounding.
const SPACE_MARGIN_FIXED: u64 = 64 << 20;
const SPACE_MARGIN_PERCENT: u64 = 5;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpaceError {
    #[error(
        "not enough free space on the filesystem of {}: {} MiB needed ({} MiB of layers unpacked, {} MiB staged, plus margin), {} MiB free; nothing was changed",
        dir.display(), needed >> 20, unpacked >> 20, staged >> 20, free >> 20
    )]
    NotEnough {
        dir: PathBuf,
        needed: u64,
        unpacked: u64,
        staged: u64,
        free: u64,
    },
    #[error(
        "layer {digest} unpacks to more than the {declared} bytes declared in pinbundle.json (the bundle is not signed by a trusted key, so its sizes were measured); refused, nothing was changed"
    )]
    Understated { digest: Digest, declared: u64 },
    #[error("measuring layer {digest} ({media_type}) failed; nothing was changed")]
    Unmeasurable {
        digest: Digest,
        media_type: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the sizes of the images to load add up to more than 2^64 bytes; nothing was changed")]
    Overflow,
    #[error("starting threads to measure layers: {0}")]
    Threads(String),
    #[error("checking free space of {}", dir.display())]
    Statvfs {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the unpacked sizes behind the decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sizes {
    /// `pinbundle.json`'s, signed by a trusted key.
    Declared,
    /// Measured during this load (an unsigned bundle's sizes are not taken on trust).
    Measured,
}

/// One filesystem's share of the space check.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsSpace {
    pub path: PathBuf,
    pub needed: u64,
    pub free: u64,
}

/// What the space check decided from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpaceReport {
    pub sizes: Sizes,
    /// Unpacked bytes of the layers (and other blobs) to import.
    pub unpacked: u64,
    /// Compressed bytes skopeo stages.
    pub staged: u64,
    pub filesystems: Vec<FsSpace>,
}

/// What to check.
pub struct SpaceCheck<'a> {
    pub store: &'a Store,
    /// skopeo's `--tmpdir`; `$TMPDIR` or `/var/tmp` when `None`.
    pub tmpdir: Option<&'a Path>,
    /// The bundle, then any `--base` bundles: where layers are measured from.
    pub sources: Vec<&'a BundleSet>,
    /// Whether a trusted key signed the bundle: then its declared sizes are used.
    pub trusted: bool,
    /// Threads for measuring (0: one per core).
    pub jobs: usize,
}

impl SpaceCheck<'_> {
    /// Checks that the images `missing` (indexes into `manifest.images`) fit, leaving out
    /// `reused` layers (a delta's, already in the store).
    pub fn run(
        &self,
        manifest: &BundleManifest,
        missing: &[usize],
        reused: &BTreeSet<Digest>,
        reporter: &dyn Reporter,
    ) -> Result<SpaceReport, SpaceError> {
        let needed = needed_blobs(manifest, missing, reused);
        let sizes = if self.trusted {
            Sizes::Declared
        } else {
            Sizes::Measured
        };
        let measured = if self.trusted {
            BTreeMap::new()
        } else {
            let layers: Vec<_> = needed
                .iter()
                .filter(|b| b.kind == BlobKind::Layer)
                .collect();
            self.measure(&layers, reporter)?
        };
        let (unpacked, staged) = totals(&needed, &measured)?;
        let mut report = SpaceReport {
            sizes,
            unpacked,
            staged,
            filesystems: Vec::new(),
        };
        if unpacked == 0 {
            return Ok(report);
        }
        let store = free_space(existing_ancestor(&self.store.image_root()))?;
        let tmp = free_space(existing_ancestor(&big_files_tmpdir(self.tmpdir)))?;
        report.filesystems = fit(unpacked, staged, store, tmp)?;
        Ok(report)
    }

    /// Decompresses each layer, in parallel, up to its declared size: its measured size, or
    /// [`SpaceError::Understated`] when it unpacks to more. A layer with no declared size
    /// is stopped at the store's free space.
    fn measure(
        &self,
        layers: &[&&crate::bundle::format::BlobEntry],
        reporter: &dyn Reporter,
    ) -> Result<BTreeMap<Digest, u64>, SpaceError> {
        let free = rustix::fs::statvfs(existing_ancestor(&self.store.image_root()))
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize))
            .unwrap_or(u64::MAX);
        let total = layers
            .iter()
            .map(|b| b.size)
            .fold(0u64, u64::saturating_add);
        reporter.start("measuring layers (the bundle is not signed)", total);
        let out = Mutex::new(BTreeMap::new());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.jobs)
            .build()
            .map_err(|e| SpaceError::Threads(e.to_string()))?;
        let result = pool.install(|| {
            layers.par_iter().try_for_each(|b| {
                let unmeasurable = |source| SpaceError::Unmeasurable {
                    digest: b.digest.clone(),
                    media_type: b.media_type.clone(),
                    source,
                };
                let Some((set, loc)) = self
                    .sources
                    .iter()
                    .find_map(|s| s.blob(&b.digest).map(|l| (s, l)))
                else {
                    // Not carried here: the store has it (a delta) and reuses it.
                    return Ok(());
                };
                let compression = media::layer_compression(&b.media_type)
                    .unwrap_or(media::LayerCompression::None);
                let limit = b.uncompressed_size.unwrap_or(free);
                let r = std::io::BufReader::with_capacity(1 << 20, set.open_blob(loc, 0));
                let n = match layer::measure(r, compression, limit, None).map_err(unmeasurable)? {
                    Measured::Exactly(n) => n,
                    Measured::Exceeds(_) if b.uncompressed_size.is_some() => {
                        return Err(SpaceError::Understated {
                            digest: b.digest.clone(),
                            declared: limit,
                        });
                    }
                    // Larger than all the free space there is.
                    Measured::Exceeds(n) | Measured::TooSlow(n) => n.saturating_add(1),
                };
                reporter.advance(b.size);
                out.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(b.digest.clone(), n);
                Ok(())
            })
        });
        reporter.finish();
        result?;
        Ok(out.into_inner().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The blobs of the images `missing` to import (each once), leaving out `reused` layers.
fn needed_blobs<'m>(
    manifest: &'m BundleManifest,
    missing: &[usize],
    reused: &BTreeSet<Digest>,
) -> Vec<&'m BlobEntry> {
    let blobs: BTreeMap<_, _> = manifest.blobs.iter().map(|b| (&b.digest, b)).collect();
    missing
        .iter()
        .flat_map(|&i| manifest.images[i].blobs.iter())
        .filter(|d| !reused.contains(*d))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter_map(|d| blobs.get(d).copied())
        .collect()
}

/// The unpacked bytes the store needs (a layer's measured size, else its declared one) and
/// the compressed bytes skopeo stages, for `needed`.
fn totals(
    needed: &[&BlobEntry],
    measured: &BTreeMap<Digest, u64>,
) -> Result<(u64, u64), SpaceError> {
    let (mut unpacked, mut staged) = (0u64, 0u64);
    for b in needed {
        let n = match b.kind {
            BlobKind::Layer => measured
                .get(&b.digest)
                .copied()
                .unwrap_or(b.uncompressed_size.unwrap_or(b.size)),
            _ => b.size,
        };
        staged = staged.checked_add(b.size).ok_or(SpaceError::Overflow)?;
        unpacked = unpacked.checked_add(n).ok_or(SpaceError::Overflow)?;
    }
    Ok((unpacked, staged))
}

/// A filesystem's free space, as `statvfs` says: its id, so two directories on one
/// filesystem share it.
struct Free {
    path: PathBuf,
    fsid: u64,
    free: u64,
}

fn free_space(dir: PathBuf) -> Result<Free, SpaceError> {
    let st = rustix::fs::statvfs(&dir).map_err(|e| SpaceError::Statvfs {
        dir: dir.clone(),
        source: e.into(),
    })?;
    Ok(Free {
        path: dir,
        fsid: st.f_fsid,
        free: st.f_bavail.saturating_mul(st.f_frsize),
    })
}

/// Decides whether `unpacked` bytes fit in the store's filesystem and `staged` in the temp
/// dir's (both, with a margin, when they are one): what each filesystem needs and has, or
/// [`SpaceError::NotEnough`] for the first that is short.
fn fit(unpacked: u64, staged: u64, store: Free, tmp: Free) -> Result<Vec<FsSpace>, SpaceError> {
    let margin = |n: u64| {
        n.checked_add(n / 100 * SPACE_MARGIN_PERCENT)
            .and_then(|n| n.checked_add(SPACE_MARGIN_FIXED))
            .ok_or(SpaceError::Overflow)
    };
    let mut per_fs: BTreeMap<u64, FsSpace> = BTreeMap::new();
    for (fs, need) in [(store, margin(unpacked)?), (tmp, margin(staged)?)] {
        let e = per_fs.entry(fs.fsid).or_insert(FsSpace {
            path: fs.path,
            needed: 0,
            free: fs.free,
        });
        e.needed = e.needed.checked_add(need).ok_or(SpaceError::Overflow)?;
    }
    let filesystems: Vec<FsSpace> = per_fs.into_values().collect();
    if let Some(fs) = filesystems.iter().find(|fs| fs.needed > fs.free) {
        return Err(SpaceError::NotEnough {
            dir: fs.path.clone(),
            needed: fs.needed,
            unpacked,
            staged,
            free: fs.free,
        });
    }
    Ok(filesystems)
}

/// Where skopeo stages blobs: `--tmpdir`, else `$TMPDIR`, else `/var/tmp` (containers/image's
/// order for big files).
fn big_files_tmpdir(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os("TMPDIR")
                .filter(|t| !t.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// The closest existing ancestor of `p` (the store may not exist yet).
fn existing_ancestor(p: &Path) -> PathBuf {
    let mut p = p.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::format::ImageEntry;

    fn blob(data: &[u8], kind: BlobKind, unpacked: Option<u64>) -> BlobEntry {
        BlobEntry {
            digest: Digest::of(data),
            size: data.len() as u64,
            media_type: media::OCI_LAYER_GZIP.into(),
            kind,
            uncompressed_size: unpacked,
            carried: true,
        }
    }

    fn manifest(images: Vec<Vec<Digest>>, blobs: Vec<BlobEntry>) -> BundleManifest {
        let images = images
            .into_iter()
            .enumerate()
            .map(|(i, blobs)| ImageEntry {
                reference: format!("q.io/a:{i}"),
                name: "q.io/a".into(),
                tag: Some(i.to_string()),
                digest: Digest::of(i.to_string().as_bytes()),
                media_type: media::OCI_MANIFEST.into(),
                platforms: Vec::new(),
                blobs,
                size: 0,
                uncompressed_size: 0,
            })
            .collect();
        BundleManifest::for_test(images, blobs)
    }

    #[test]
    fn needed_counts_shared_blobs_once_and_skips_reused_layers() {
        let (a, b, c) = (
            blob(b"aaaa", BlobKind::Layer, Some(40)),
            blob(b"bb", BlobKind::Layer, Some(20)),
            blob(b"c", BlobKind::Config, None),
        );
        let m = manifest(
            vec![
                vec![a.digest.clone(), c.digest.clone()],
                vec![a.digest.clone(), b.digest.clone()],
            ],
            vec![a.clone(), b.clone(), c.clone()],
        );
        let needed = needed_blobs(&m, &[0, 1], &BTreeSet::new());
        assert_eq!(needed.len(), 3);
        assert_eq!(totals(&needed, &BTreeMap::new()).unwrap(), (61, 7));
        // A measured size wins over the declared one.
        let measured = [(a.digest.clone(), 50)].into();
        assert_eq!(totals(&needed, &measured).unwrap(), (71, 7));
        let reused = [a.digest.clone()].into();
        let needed = needed_blobs(&m, &[1], &reused);
        assert_eq!(totals(&needed, &BTreeMap::new()).unwrap(), (20, 2));
        assert!(needed_blobs(&m, &[], &BTreeSet::new()).is_empty());
    }

    #[test]
    fn fit_adds_up_one_filesystem_and_names_the_short_one() {
        let fs = |fsid, free| Free {
            path: PathBuf::from(format!("/fs{fsid}")),
            fsid,
            free,
        };
        let need = |n: u64| n + n / 100 * SPACE_MARGIN_PERCENT + SPACE_MARGIN_FIXED;
        // Two filesystems: each needs its own share.
        let two = fit(1000, 100, fs(1, u64::MAX), fs(2, u64::MAX)).unwrap();
        assert_eq!(
            two.iter().map(|f| f.needed).collect::<Vec<_>>(),
            [need(1000), need(100)]
        );
        // One: both shares, on it.
        let one = fit(1000, 100, fs(1, u64::MAX), fs(1, u64::MAX)).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].needed, need(1000) + need(100));
        let err = fit(1000, 100, fs(1, need(1000)), fs(2, need(100) - 1)).unwrap_err();
        let SpaceError::NotEnough { dir, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(dir, PathBuf::from("/fs2"));
        assert!(matches!(
            fit(u64::MAX, 0, fs(1, u64::MAX), fs(2, u64::MAX)),
            Err(SpaceError::Overflow)
        ));
    }
}
