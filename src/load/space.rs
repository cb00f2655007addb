//! Will the images fit? The store needs the unpacked layers of the images not yet present
//! (of the platform that is imported only), skopeo's temp dir their compressed blobs; on one
//! filesystem, both. Beyond that, what must stay free: kubelet's eviction thresholds
//! ([`kubelet`]: `imagefs.available` on the store's filesystem, `nodefs.available` on its root
//! dir's) or `--min-free`, whichever is larger. Going past kubelet's image GC threshold is a
//! warning, not a refusal: GC deletes only unused images that are not pinned, so the images
//! loaded (pinned) stay; what it costs is other cached images, the operator's call. With
//! kubelet's defaults the eviction threshold (15 % free) refuses before GC (85 % used) starts.
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

pub mod kubelet;

use kubelet::{Kubelet, KubeletError, Signal};

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
    #[error("{0}")]
    NotEnough(Box<Shortfall>),
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
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
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

/// What must stay free on a filesystem, and the rule that asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reserve {
    pub bytes: u64,
    /// `imagefs.available`, `nodefs.available` (kubelet's eviction signals) or `--min-free`.
    pub rule: String,
    /// The threshold as written: `15%`, `10Gi`.
    pub threshold: String,
    /// `kubelet's default`, `from FILE` (kubelet's configuration) or `the command line`.
    pub from: String,
}

/// One filesystem's share of the space check: `needed` = `unpacked` + `staged` + `margin` +
/// the reserve's bytes.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsSpace {
    pub path: PathBuf,
    pub needed: u64,
    pub free: u64,
    pub capacity: u64,
    /// Whether the store is on it (kubelet's image filesystem).
    pub image_filesystem: bool,
    pub unpacked: u64,
    pub staged: u64,
    /// Metadata, tar-split, rounding: 5 % + 64 MiB of each of `unpacked` and `staged`.
    pub margin: u64,
    /// What must stay free; `null` when nothing asks for any.
    pub reserve: Option<Reserve>,
}

/// A filesystem too full for the import.
#[derive(Debug, Clone)]
pub struct Shortfall(pub FsSpace);

impl std::fmt::Display for Shortfall {
    /// Every number in one unit, rounded so that the parts add up to what is shown as needed
    /// (parts up, free down: still more than free whenever it is).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fs = &self.0;
        let (unit, name) = if fs.needed.max(fs.free) >= 10 << 30 {
            (1u128 << 30, "GiB")
        } else {
            (1u128 << 20, "MiB")
        };
        let up = |n: u64| (u128::from(n) * 100).div_ceil(unit);
        let shown = |h: u128| format!("{}.{:02} {name}", h / 100, h % 100);
        let reserve = fs.reserve.as_ref();
        let parts = [
            up(fs.unpacked),
            up(fs.staged),
            up(fs.margin),
            up(reserve.map_or(0, |r| r.bytes)),
        ];
        write!(
            f,
            "not enough free space on the filesystem of {}: {} needed = {} of layers unpacked + {} staged by skopeo + {} margin + {} kept free",
            fs.path.display(),
            shown(parts.iter().sum()),
            shown(parts[0]),
            shown(parts[1]),
            shown(parts[2]),
            shown(parts[3]),
        )?;
        if let Some(r) = reserve {
            write!(f, " ({} {}", r.rule, r.threshold)?;
            if r.threshold.ends_with('%') {
                write!(f, " of {}", shown(u128::from(fs.capacity) * 100 / unit))?;
            }
            write!(f, ", {})", r.from)?;
        }
        write!(
            f,
            ", {} free; nothing was changed",
            shown(u128::from(fs.free) * 100 / unit)
        )
    }
}

/// `--min-free`: a size to keep free on the store's filesystem, as written and in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinFree {
    pub bytes: u64,
    pub written: String,
}

impl std::str::FromStr for MinFree {
    type Err = String;

    fn from_str(s: &str) -> Result<MinFree, String> {
        kubelet::parse_quantity(s)
            .map(|bytes| MinFree {
                bytes,
                written: s.trim().to_string(),
            })
            .ok_or_else(|| {
                format!(
                    "invalid size \"{}\": expected bytes or a quantity like 16Gi or 500M",
                    crate::text::excerpt(s, 40)
                )
            })
    }
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
    /// For the load's warnings: an unusable kubelet configuration, image GC ahead.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// What to check.
pub struct SpaceCheck<'a> {
    pub store: &'a Store,
    /// skopeo's `--tmpdir`; `/var/tmp` when `None`.
    pub tmpdir: Option<&'a Path>,
    /// The bundle, then any `--base` bundles: where layers are measured from.
    pub sources: Vec<&'a BundleSet>,
    /// Whether a trusted key signed the bundle: then its declared sizes are used.
    pub trusted: bool,
    /// Threads for measuring (0: one per core).
    pub jobs: usize,
    /// Kubelet's configuration (`--kubelet-config`); [`kubelet::DEFAULT_PATHS`] when `None`.
    pub kubelet_config: Option<&'a Path>,
    /// `--min-free`.
    pub min_free: Option<&'a MinFree>,
}

impl SpaceCheck<'_> {
    /// Checks that the blobs `wanted` (those skopeo fetches for the images to import) fit,
    /// leaving out `reused` layers (a delta's, already in the store), with what must stay
    /// free.
    pub fn run(
        &self,
        manifest: &BundleManifest,
        wanted: &BTreeSet<&Digest>,
        reused: &BTreeSet<Digest>,
        reporter: &dyn Reporter,
    ) -> Result<SpaceReport, SpaceError> {
        let (kubelet, warning) = Kubelet::read(self.kubelet_config)?;
        let needed = needed_blobs(manifest, wanted, reused);
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
            warnings: warning.into_iter().collect(),
        };
        if unpacked == 0 {
            return Ok(report);
        }
        let store = free_space(existing_ancestor(&self.store.image_root()))?;
        let tmp = free_space(existing_ancestor(&big_files_tmpdir(self.tmpdir)))?;
        let rules = Rules {
            kubelet: &kubelet,
            min_free: self.min_free,
            // Kubelet's root dir: not there (no kubelet on this node), no nodefs rule.
            node_fsid: free_space(existing_ancestor(Path::new(kubelet::ROOT_DIR)))
                .ok()
                .map(|f| f.fsid),
        };
        report.filesystems = fit(unpacked, staged, store, tmp, &rules)?;
        report.warnings.extend(
            report
                .filesystems
                .iter()
                .find(|f| f.image_filesystem)
                .and_then(|f| gc_warning(f, &kubelet)),
        );
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

/// The blobs `wanted` (each once), leaving out `reused` layers.
fn needed_blobs<'m>(
    manifest: &'m BundleManifest,
    wanted: &BTreeSet<&Digest>,
    reused: &BTreeSet<Digest>,
) -> Vec<&'m BlobEntry> {
    manifest
        .blobs
        .iter()
        .filter(|b| wanted.contains(&b.digest) && !reused.contains(&b.digest))
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
    capacity: u64,
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
        // Kubelet's capacity (cadvisor's): what its percentages are of.
        capacity: st.f_blocks.saturating_mul(st.f_frsize),
    })
}

/// What must stay free, and where.
struct Rules<'a> {
    kubelet: &'a Kubelet,
    min_free: Option<&'a MinFree>,
    /// The filesystem of kubelet's root dir, if it has one here.
    node_fsid: Option<u64>,
}

impl Rules<'_> {
    /// The largest reserve that applies to a filesystem of `capacity` bytes: kubelet's
    /// `imagefs.available` and `--min-free` on the store's, `nodefs.available` on its root
    /// dir's.
    fn reserve(&self, capacity: u64, image_fs: bool, fsid: u64) -> Option<Reserve> {
        let kubelet = |rule: &str, s: &Option<Signal>| {
            s.as_ref().map(|s| Reserve {
                bytes: s.threshold.bytes(capacity),
                rule: rule.into(),
                threshold: s.written.clone(),
                from: self.kubelet.source.to_string(),
            })
        };
        let min_free = self.min_free.map(|m| Reserve {
            bytes: m.bytes,
            rule: "--min-free".into(),
            threshold: m.written.clone(),
            from: "the command line".into(),
        });
        let candidates = [
            image_fs.then(|| kubelet("imagefs.available", &self.kubelet.imagefs)),
            (self.node_fsid == Some(fsid))
                .then(|| kubelet("nodefs.available", &self.kubelet.nodefs)),
            image_fs.then_some(min_free),
        ];
        // The first of the largest: kubelet's rule when `--min-free` asks for no more.
        candidates
            .into_iter()
            .flatten()
            .flatten()
            .rev()
            .max_by_key(|r| r.bytes)
    }
}

/// Decides whether `unpacked` bytes fit in the store's filesystem and `staged` in the temp
/// dir's (both, each with a margin, when they are one), leaving what `rules` keep free: what
/// each filesystem needs and has, or [`SpaceError::NotEnough`] for the first that is short.
fn fit(
    unpacked: u64,
    staged: u64,
    store: Free,
    tmp: Free,
    rules: &Rules,
) -> Result<Vec<FsSpace>, SpaceError> {
    let margin = |n: u64| {
        (n / 100)
            .checked_mul(SPACE_MARGIN_PERCENT)
            .and_then(|m| m.checked_add(SPACE_MARGIN_FIXED))
            .ok_or(SpaceError::Overflow)
    };
    let add = |a: u64, b: u64| a.checked_add(b).ok_or(SpaceError::Overflow);
    // The store's filesystem first, then the temp dir's when it is another: a stable order
    // for the report, whatever the device numbers.
    let mut per_fs: Vec<(u64, FsSpace)> = Vec::new();
    for (fs, u, st, image_fs) in [(store, unpacked, 0, true), (tmp, 0, staged, false)] {
        let i = match per_fs.iter().position(|(id, _)| *id == fs.fsid) {
            Some(i) => i,
            None => {
                per_fs.push((
                    fs.fsid,
                    FsSpace {
                        path: fs.path,
                        needed: 0,
                        free: fs.free,
                        capacity: fs.capacity,
                        image_filesystem: false,
                        unpacked: 0,
                        staged: 0,
                        margin: 0,
                        reserve: None,
                    },
                ));
                per_fs.len() - 1
            }
        };
        let e = &mut per_fs[i].1;
        e.image_filesystem |= image_fs;
        e.unpacked = add(e.unpacked, u)?;
        e.staged = add(e.staged, st)?;
        e.margin = add(e.margin, margin(u.max(st))?)?;
    }
    let mut filesystems = Vec::new();
    for (fsid, mut fs) in per_fs {
        fs.reserve = rules.reserve(fs.capacity, fs.image_filesystem, fsid);
        fs.needed = add(
            add(fs.unpacked, fs.staged)?,
            add(fs.margin, fs.reserve.as_ref().map_or(0, |r| r.bytes))?,
        )?;
        filesystems.push(fs);
    }
    if let Some(fs) = filesystems.iter().find(|fs| fs.needed > fs.free) {
        return Err(SpaceError::NotEnough(Box::new(Shortfall(fs.clone()))));
    }
    Ok(filesystems)
}

/// A warning when, after the import, the store's filesystem is at or above kubelet's image GC
/// threshold (kubelet's own arithmetic: `100 - available * 100 / capacity`).
fn gc_warning(fs: &FsSpace, kubelet: &Kubelet) -> Option<String> {
    if kubelet.gc_high_percent >= 100 || fs.capacity == 0 {
        return None;
    }
    let after = u128::from(fs.free.saturating_sub(fs.unpacked));
    let used = 100u128.saturating_sub(after * 100 / u128::from(fs.capacity));
    (used >= u128::from(kubelet.gc_high_percent)).then(|| {
        format!(
            "after this load {} will be {used}% used, at or above kubelet's imageGCHighThresholdPercent {} ({}): kubelet will delete unused images that are not pinned until usage drops to its low threshold",
            fs.path.display(),
            kubelet.gc_high_percent,
            kubelet.source
        )
    })
}

/// Where skopeo stages blobs: `--tmpdir`, else `/var/tmp`. containers/image's big-file temp
/// dir never reads `$TMPDIR` (`internal/tmpdir`; skopeo 1.9 seen staging in /var/tmp with
/// TMPDIR set elsewhere).
fn big_files_tmpdir(explicit: Option<&Path>) -> PathBuf {
    explicit.map_or_else(|| PathBuf::from("/var/tmp"), Path::to_path_buf)
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
        let all: BTreeSet<&Digest> = [&a.digest, &b.digest, &c.digest].into();
        let needed = needed_blobs(&m, &all, &BTreeSet::new());
        assert_eq!(needed.len(), 3);
        assert_eq!(totals(&needed, &BTreeMap::new()).unwrap(), (61, 7));
        // A measured size wins over the declared one.
        let measured = [(a.digest.clone(), 50)].into();
        assert_eq!(totals(&needed, &measured).unwrap(), (71, 7));
        let reused = [a.digest.clone()].into();
        let needed = needed_blobs(&m, &[&a.digest, &b.digest].into(), &reused);
        assert_eq!(totals(&needed, &BTreeMap::new()).unwrap(), (20, 2));
        assert!(needed_blobs(&m, &BTreeSet::new(), &BTreeSet::new()).is_empty());
    }

    fn fs(fsid: u64, free: u64, capacity: u64) -> Free {
        Free {
            path: PathBuf::from(format!("/fs{fsid}")),
            fsid,
            free,
            capacity,
        }
    }

    fn margin(n: u64) -> u64 {
        n / 100 * SPACE_MARGIN_PERCENT + SPACE_MARGIN_FIXED
    }

    #[test]
    fn fit_adds_up_one_filesystem_and_names_the_short_one() {
        let off = Kubelet {
            imagefs: None,
            nodefs: None,
            gc_high_percent: 100,
            source: kubelet::Source::Default,
        };
        let rules = Rules {
            kubelet: &off,
            min_free: None,
            node_fsid: None,
        };
        let max = u64::MAX / 4;
        // Two filesystems: each needs its own share.
        let two = fit(1000, 100, fs(1, max, max), fs(2, max, max), &rules).unwrap();
        assert_eq!(
            two.iter().map(|f| f.needed).collect::<Vec<_>>(),
            [1000 + margin(1000), 100 + margin(100)]
        );
        // One: both shares, on it.
        let one = fit(1000, 100, fs(1, max, max), fs(1, max, max), &rules).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].needed, 1100 + margin(1000) + margin(100));
        assert!(one[0].image_filesystem);
        let err = fit(
            1000,
            100,
            fs(1, 1000 + margin(1000), max),
            fs(2, 100 + margin(100) - 1, max),
            &rules,
        )
        .unwrap_err();
        let SpaceError::NotEnough(short) = err else {
            panic!("{err}")
        };
        assert_eq!(short.0.path, PathBuf::from("/fs2"));
        assert!(matches!(
            fit(u64::MAX, 0, fs(1, max, max), fs(2, max, max), &rules),
            Err(SpaceError::Overflow)
        ));
    }

    #[test]
    fn the_largest_reserve_applies_and_the_message_adds_up() {
        let k = Kubelet::defaults();
        let gib = 1u64 << 30;
        let min_free: MinFree = "2Gi".parse().unwrap();
        let mut rules = Rules {
            kubelet: &k,
            min_free: None,
            node_fsid: Some(2),
        };
        // The store's filesystem: imagefs.available 15 % of 10 GiB; the temp dir's (kubelet's
        // root dir's) nodefs.available 10 % of 20 GiB.
        let fit_both = |rules: &Rules| {
            fit(
                gib,
                gib / 2,
                fs(1, 9 * gib, 10 * gib),
                fs(2, 20 * gib, 20 * gib),
                rules,
            )
            .unwrap()
        };
        let r = fit_both(&rules);
        let rule = |f: &FsSpace| f.reserve.as_ref().map(|r| (r.rule.clone(), r.bytes));
        assert_eq!(rule(&r[0]), Some(("imagefs.available".into(), 3 * gib / 2)));
        assert_eq!(rule(&r[1]), Some(("nodefs.available".into(), 2 * gib)));
        // --min-free wins when larger, on the store's filesystem only.
        rules.min_free = Some(&min_free);
        let r = fit_both(&rules);
        assert_eq!(rule(&r[0]), Some(("--min-free".into(), 2 * gib)));
        assert_eq!(rule(&r[1]), Some(("nodefs.available".into(), 2 * gib)));
        // Short: the message's parts add up to what it says is needed.
        let free = gib + margin(gib) + 3 * gib / 2 - 1;
        rules.min_free = None;
        let err = fit(gib, 0, fs(1, free, 10 * gib), fs(1, free, 10 * gib), &rules)
            .unwrap_err()
            .to_string();
        // 1 GiB unpacked, margins 5 % + 64 MiB of it and 64 MiB for the (empty) staging.
        assert!(
            err.contains(
                "/fs1: 2739.20 MiB needed = 1024.00 MiB of layers unpacked + 0.00 MiB staged by skopeo + 179.20 MiB margin + 1536.00 MiB kept free (imagefs.available 15% of 10240.00 MiB, kubelet's default), 2675.19 MiB free; nothing was changed"
            ),
            "{err}"
        );
    }

    #[test]
    fn image_gc_ahead_is_a_warning() {
        let mut k = Kubelet::defaults();
        let f = |free, unpacked| FsSpace {
            path: "/s".into(),
            needed: 0,
            free,
            capacity: 100,
            image_filesystem: true,
            unpacked,
            staged: 0,
            margin: 0,
            reserve: None,
        };
        assert_eq!(gc_warning(&f(50, 34), &k), None);
        let w = gc_warning(&f(50, 35), &k).unwrap();
        assert!(
            w.contains("85% used") && w.contains("imageGCHighThresholdPercent 85"),
            "{w}"
        );
        k.gc_high_percent = 100;
        assert_eq!(gc_warning(&f(50, 50), &k), None);
    }
}
