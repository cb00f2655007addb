//! Delta bundles (bundle-format.md, section 8.2): what `create --base`, `load --base`,
//! `index-export` and `diff` share.
//!
//! A bundle's identity is the sha256 of the exact bytes of its `pinbundle.json`; an exported
//! index is exactly those bytes, so it has the same identity as its bundle. A delta lists every
//! blob of its images but carries only the layers its base does not list; it records the
//! base's identity. This module opens bases ([`Base`]), decides what a delta omits
//! ([`omittable_layers`]), checks before `load` touches anything that every omitted layer can
//! be had ([`plan_load`]), and compares two bundles ([`diff`]). It runs no skopeo and writes
//! nothing but an exported index; `load::storage` reads the node's store for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::bundle::format::{
    BaseRef, BlobEntry, BlobKind, BundleManifest, FORMAT_NAME, FORMAT_VERSION, MAX_MANIFEST_LEN,
};
use crate::bundle::{self, Bundle, BundleSet, SetOptions};
use crate::reference::Digest;

/// The version of `diff --json`'s document.
pub const DIFF_JSON_VERSION: u32 = 1;

/// What can go wrong with bases and deltas. Each variant names the file or blobs involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Bundle(#[from] bundle::Error),
    #[error(transparent)]
    Write(#[from] crate::atomic::Error),
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is neither a bundle nor an index exported with `pinbundle index-export`: {detail}",
        path.display()
    )]
    NotAnIndex { path: PathBuf, detail: String },
    #[error(
        "{} is an exported index, which carries no blobs; `load --base` needs the base bundle itself",
        path.display()
    )]
    IndexNotBundle { path: PathBuf },
    #[error(
        "the base {} says layer {digest} has {base_size} bytes, the image says {size}",
        path.display()
    )]
    SizeConflict {
        path: PathBuf,
        digest: Digest,
        base_size: u64,
        size: u64,
    },
    #[error(
        "the base bundle {}: its copy of layer {digest} is damaged",
        path.display()
    )]
    BaseDamaged {
        path: PathBuf,
        digest: Digest,
        #[source]
        source: Box<bundle::Error>,
    },
    #[error("{}", unavailable_message(.base, .missing))]
    Unavailable {
        base: Option<BaseRef>,
        missing: Vec<MissingBlob>,
    },
}

/// A base: an earlier bundle, or its exported index.
#[derive(Debug, Clone)]
pub struct Base {
    pub path: PathBuf,
    /// sha256 of the exact bytes of its `pinbundle.json`.
    pub identity: Digest,
    pub manifest: BundleManifest,
    /// The open bundle (or volume set); `None` for an exported index.
    pub bundle: Option<Arc<BundleSet>>,
}

impl Base {
    /// Opens `path` as a bundle (a volume brings the siblings it finds: a base's missing
    /// volumes only mean fewer blobs to take from it) or, when it is not one, as an exported
    /// `pinbundle.json`.
    pub fn open(path: &Path) -> Result<Base, Error> {
        let set_opts = SetOptions {
            allow_partial: true,
            find_siblings: true,
        };
        match BundleSet::open(&[path.to_path_buf()], set_opts) {
            Ok(b) => Ok(Base {
                path: path.to_path_buf(),
                identity: Digest::of(b.manifest_bytes()),
                manifest: b.manifest().clone(),
                bundle: Some(Arc::new(b)),
            }),
            Err(bundle::Error::NotABundle { .. }) => Base::open_index(path),
            Err(e) => Err(e.into()),
        }
    }

    fn open_index(path: &Path) -> Result<Base, Error> {
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let not_index = |detail: String| Error::NotAnIndex {
            path: path.to_path_buf(),
            detail,
        };
        // std::fs deliberately: the typed error names the path; fs-err would repeat it.
        #[allow(clippy::disallowed_methods)]
        let file = std::fs::File::open(path).map_err(io_err)?;
        // Bounded like the reader bounds `pinbundle.json`: a huge file is refused, not read.
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > MAX_MANIFEST_LEN {
            return Err(not_index(format!(
                "larger than {} MiB",
                MAX_MANIFEST_LEN >> 20
            )));
        }
        let manifest: BundleManifest =
            serde_json::from_slice(&bytes).map_err(|e| not_index(e.to_string()))?;
        if manifest.format != FORMAT_NAME || manifest.format_version != FORMAT_VERSION {
            return Err(not_index(format!(
                "format \"{}\" version {} (expected \"{FORMAT_NAME}\" version {FORMAT_VERSION})",
                manifest.format, manifest.format_version
            )));
        }
        Ok(Base {
            path: path.to_path_buf(),
            identity: Digest::of(&bytes),
            manifest,
            bundle: None,
        })
    }

    /// What a delta of this base records.
    pub fn base_ref(&self) -> BaseRef {
        BaseRef {
            manifest: self.identity.clone(),
            created: self.manifest.created.clone(),
        }
    }

    /// The open bundle, or an error for an exported index.
    pub fn require_bundle(&self) -> Result<Arc<BundleSet>, Error> {
        self.bundle.clone().ok_or_else(|| Error::IndexNotBundle {
            path: self.path.clone(),
        })
    }
}

/// Writes the exact bytes of `bundle`'s `pinbundle.json` to `out` (staged, then renamed), and
/// returns the identity they share.
pub fn export_index(bundle: &Path, out: &Path) -> Result<Digest, Error> {
    let b = Bundle::open(bundle)?;
    let bytes = b.manifest_bytes();
    // An index is as public as the bundle it describes (Stage's default mode, 0644).
    let (staged, mut file) = crate::atomic::Stage::new(out).create()?;
    file.write_all(bytes).map_err(|e| staged.write_error(e))?;
    staged.commit(file)?;
    Ok(Digest::of(bytes))
}

/// The layers `base` lists (carried or not: a node that loaded a delta base had them all),
/// with their entries: what a delta of it omits. Only layers: indexes, manifests and configs
/// are a few KiB, and containers-storage cannot hand a config back by digest.
pub fn omittable_layers(base: &Base) -> BTreeMap<&Digest, &BlobEntry> {
    base.manifest
        .blobs
        .iter()
        .filter(|b| b.kind == BlobKind::Layer && b.uncompressed_size.is_some())
        .map(|b| (&b.digest, b))
        .collect()
}

/// Marks the layers of `entries` that `base` lists as not carried, taking their uncompressed
/// size from the base (so `create` need not fetch them). Returns how many were marked.
pub fn omit_from(base: &Base, entries: &mut [&mut BlobEntry]) -> Result<usize, Error> {
    let have = omittable_layers(base);
    let mut n = 0;
    for e in entries.iter_mut().filter(|e| e.kind == BlobKind::Layer) {
        let Some(b) = have.get(&e.digest) else {
            continue;
        };
        if b.size != e.size {
            return Err(Error::SizeConflict {
                path: base.path.clone(),
                digest: e.digest.clone(),
                base_size: b.size,
                size: e.size,
            });
        }
        e.carried = false;
        e.uncompressed_size = b.uncompressed_size;
        n += 1;
    }
    Ok(n)
}

/// An omitted layer nothing given can provide.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MissingBlob {
    pub digest: Digest,
    pub size: u64,
    /// The references that need it.
    pub images: Vec<String>,
}

/// An omitted layer and where `load` takes it from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OmittedSource {
    pub digest: Digest,
    pub size: u64,
    /// The base bundle that carries it; `null` when the node's store already has it.
    pub bundle: Option<PathBuf>,
}

/// Where each omitted layer of the images to import comes from (`load --json`'s `delta`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadPlan {
    /// The delta's base.
    pub base: Option<BaseRef>,
    /// Served from `--base` bundles (each checked against its digest first).
    pub from_bases: Vec<OmittedSource>,
    /// Already in the node's containers-storage; skopeo reuses them.
    pub from_storage: Vec<OmittedSource>,
}

impl LoadPlan {
    /// The digests skopeo will not copy (already in the store).
    pub fn reused(&self) -> BTreeSet<Digest> {
        self.from_storage.iter().map(|s| s.digest.clone()).collect()
    }
}

/// For the images `import` (indexes into `manifest.images`, each with the blobs skopeo fetches
/// for it: of an index, only the platform imported), finds every blob the bundle does not
/// carry in `in_store` (layer digests the node's store has, compressed or not) or in one of
/// `bases`, whose copy is then verified. Refuses, listing every blob found nowhere; blobs of
/// platforms that are not imported may be missing.
pub fn plan_load(
    manifest: &BundleManifest,
    import: &[(usize, BTreeSet<&Digest>)],
    bases: &[Arc<BundleSet>],
    in_store: &BTreeSet<Digest>,
) -> Result<LoadPlan, Error> {
    let omitted: BTreeMap<&Digest, &BlobEntry> = manifest
        .blobs
        .iter()
        .filter(|b| !b.carried)
        .map(|b| (&b.digest, b))
        .collect();
    let mut needed: BTreeMap<&Digest, Vec<String>> = BTreeMap::new();
    for (i, blobs) in import {
        let img = &manifest.images[*i];
        for d in img
            .blobs
            .iter()
            .filter(|d| blobs.contains(d) && omitted.contains_key(d))
        {
            needed.entry(d).or_default().push(img.reference.clone());
        }
    }
    let mut plan = LoadPlan {
        base: manifest.base.clone(),
        from_bases: Vec::new(),
        from_storage: Vec::new(),
    };
    let mut missing = Vec::new();
    for (digest, images) in needed {
        let size = omitted.get(digest).map_or(0, |b| b.size);
        // The store first: skopeo reuses a layer it has and never asks for the blob.
        if in_store.contains(digest) {
            plan.from_storage.push(OmittedSource {
                digest: digest.clone(),
                size,
                bundle: None,
            });
            continue;
        }
        let carrier = bases
            .iter()
            .find_map(|b| b.blob(digest).map(|m| (b, m.clone())));
        match carrier {
            Some((b, member)) => {
                b.verify_blob(&member, |_| {})
                    .map_err(|source| Error::BaseDamaged {
                        path: b.path().to_path_buf(),
                        digest: digest.clone(),
                        source: Box::new(source),
                    })?;
                plan.from_bases.push(OmittedSource {
                    digest: digest.clone(),
                    size,
                    bundle: Some(b.path().to_path_buf()),
                });
            }
            None => missing.push(MissingBlob {
                digest: digest.clone(),
                size,
                images,
            }),
        }
    }
    if !missing.is_empty() {
        return Err(Error::Unavailable {
            base: manifest.base.clone(),
            missing,
        });
    }
    Ok(plan)
}

/// One line: error messages reach the terminal escaped, where a newline would show as `\n`.
fn unavailable_message(base: &Option<BaseRef>, missing: &[MissingBlob]) -> String {
    let total = missing
        .iter()
        .map(|m| m.size)
        .fold(0u64, u64::saturating_add);
    let mut s = format!(
        "this delta bundle does not carry {} ({}) that {} neither in this node's containers-storage nor in a bundle given with `--base`; nothing was changed. Missing:",
        if missing.len() == 1 {
            "1 layer".to_string()
        } else {
            format!("{} layers", missing.len())
        },
        crate::size::human(total),
        if missing.len() == 1 { "is" } else { "are" }
    );
    for m in missing {
        let _ = write!(
            s,
            " {} ({}), needed by {};",
            m.digest,
            crate::size::human(m.size),
            m.images.join(", ")
        );
    }
    let of = base
        .as_ref()
        .map(|b| format!(" (its base is {}, created {})", b.manifest, b.created))
        .unwrap_or_default();
    let _ = write!(
        s,
        " load the base bundle first, or pass it with `--base BUNDLE`{of}"
    );
    s
}

/// One side of a [`DiffReport`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffSide {
    pub path: PathBuf,
    pub identity: Digest,
    pub created: String,
    /// Its base, when it is a delta.
    pub base: Option<BaseRef>,
    pub images: usize,
    pub blobs: usize,
    pub size: u64,
}

/// How one image differs.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageChange {
    pub status: ChangeStatus,
    pub name: String,
    pub old_reference: Option<String>,
    pub new_reference: Option<String>,
    pub old_digest: Option<Digest>,
    pub new_digest: Option<Digest>,
}

/// How an image differs between two bundles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeStatus {
    /// Only in the new bundle.
    Added,
    /// Only in the old bundle.
    Removed,
    /// The same reference, or the same repository, with another digest.
    Changed,
    Unchanged,
}

impl ChangeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeStatus::Added => "added",
            ChangeStatus::Removed => "removed",
            ChangeStatus::Changed => "changed",
            ChangeStatus::Unchanged => "unchanged",
        }
    }
}

impl std::fmt::Display for ChangeStatus {
    /// Pads like a string, so renderers can align columns.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A count of blobs and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    pub blobs: usize,
    pub size: u64,
}

impl Count {
    fn add(&mut self, size: u64) {
        self.blobs += 1;
        self.size = self.size.saturating_add(size);
    }
}

/// Blobs of the two bundles (every blob listed, carried or not), each once.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobDiff {
    /// What a delta of OLD would have to carry (at least).
    pub only_new: Count,
    pub shared: Count,
    pub only_old: Count,
}

/// What `pinbundle diff OLD NEW` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffReport {
    pub version: u32,
    pub old: DiffSide,
    pub new: DiffSide,
    pub images: Vec<ImageChange>,
    pub blobs: BlobDiff,
    /// NEW's OpenShift releases, each with its bytes new and shared with OLD (absent when
    /// NEW has none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<crate::release::ReleaseSummary>,
}

fn side(b: &Base) -> DiffSide {
    let m = &b.manifest;
    DiffSide {
        path: b.path.clone(),
        identity: b.identity.clone(),
        created: m.created.clone(),
        base: m.base.clone(),
        images: m.images.len(),
        blobs: m.blobs.len(),
        size: m.blobs.iter().map(|b| b.size).fold(0, u64::saturating_add),
    }
}

/// Compares two bundles (or exported indexes). Images are matched by reference; what is left
/// on both sides is then matched by repository in order (`app:v1` → `app:v2` is a change).
pub fn diff(old: &Base, new: &Base) -> DiffReport {
    let (om, nm) = (&old.manifest, &new.manifest);
    let mut images = Vec::new();
    let mut old_left: Vec<usize> = Vec::new();
    for (i, o) in om.images.iter().enumerate() {
        match nm.images.iter().find(|n| n.reference == o.reference) {
            Some(n) => images.push(ImageChange {
                status: if n.digest == o.digest {
                    ChangeStatus::Unchanged
                } else {
                    ChangeStatus::Changed
                },
                name: o.name.clone(),
                old_reference: Some(o.reference.clone()),
                new_reference: Some(n.reference.clone()),
                old_digest: Some(o.digest.clone()),
                new_digest: Some(n.digest.clone()),
            }),
            None => old_left.push(i),
        }
    }
    for n in nm
        .images
        .iter()
        .filter(|n| !om.images.iter().any(|o| o.reference == n.reference))
    {
        let pos = old_left.iter().position(|&i| om.images[i].name == n.name);
        let o = pos.map(|p| &om.images[old_left.remove(p)]);
        images.push(ImageChange {
            status: match o {
                Some(o) if o.digest == n.digest => ChangeStatus::Unchanged,
                Some(_) => ChangeStatus::Changed,
                None => ChangeStatus::Added,
            },
            name: n.name.clone(),
            old_reference: o.map(|o| o.reference.clone()),
            new_reference: Some(n.reference.clone()),
            old_digest: o.map(|o| o.digest.clone()),
            new_digest: Some(n.digest.clone()),
        });
    }
    for &i in &old_left {
        let o = &om.images[i];
        images.push(ImageChange {
            status: ChangeStatus::Removed,
            name: o.name.clone(),
            old_reference: Some(o.reference.clone()),
            new_reference: None,
            old_digest: Some(o.digest.clone()),
            new_digest: None,
        });
    }
    let old_blobs: BTreeMap<&Digest, u64> = om.blobs.iter().map(|b| (&b.digest, b.size)).collect();
    let new_blobs: BTreeMap<&Digest, u64> = nm.blobs.iter().map(|b| (&b.digest, b.size)).collect();
    let mut blobs = BlobDiff::default();
    for (d, &size) in &new_blobs {
        if old_blobs.contains_key(d) {
            blobs.shared.add(size);
        } else {
            blobs.only_new.add(size);
        }
    }
    for (d, &size) in &old_blobs {
        if !new_blobs.contains_key(d) {
            blobs.only_old.add(size);
        }
    }
    DiffReport {
        version: DIFF_JSON_VERSION,
        old: side(old),
        new: side(new),
        images,
        blobs,
        releases: crate::release::summaries(nm, Some(om)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::format::ImageEntry;

    fn entry(data: &[u8], kind: BlobKind) -> BlobEntry {
        BlobEntry {
            digest: Digest::of(data),
            size: data.len() as u64,
            media_type: "x".into(),
            kind,
            uncompressed_size: (kind == BlobKind::Layer).then_some(data.len() as u64 * 2),
            carried: true,
        }
    }

    fn manifest(images: &[(&str, &str, &[u8])], blobs: Vec<BlobEntry>) -> BundleManifest {
        let entries = images
            .iter()
            .map(|(name, tag, top)| ImageEntry {
                reference: format!("{name}:{tag}"),
                name: name.to_string(),
                tag: Some(tag.to_string()),
                digest: Digest::of(top),
                media_type: "x".into(),
                platforms: Vec::new(),
                blobs: blobs.iter().map(|b| b.digest.clone()).collect(),
                size: 0,
                uncompressed_size: 0,
            })
            .collect();
        let mut m = BundleManifest::for_test(entries, blobs);
        m.totals.images = images.len();
        m.totals.blobs = m.blobs.len();
        m
    }

    fn base(m: BundleManifest) -> Base {
        let bytes = serde_json::to_vec(&m).unwrap();
        Base {
            path: "base".into(),
            identity: Digest::of(&bytes),
            manifest: m,
            bundle: None,
        }
    }

    #[test]
    fn omits_only_layers_the_base_lists() {
        let b = base(manifest(
            &[("q.io/a", "v1", b"m1")],
            vec![
                entry(b"l1", BlobKind::Layer),
                entry(b"c1", BlobKind::Config),
            ],
        ));
        let mut l1 = entry(b"l1", BlobKind::Layer);
        l1.uncompressed_size = None;
        let mut l2 = entry(b"l2", BlobKind::Layer);
        let mut c1 = entry(b"c1", BlobKind::Config);
        let n = omit_from(&b, &mut [&mut l1, &mut l2, &mut c1]).unwrap();
        assert_eq!(n, 1);
        assert!(!l1.carried && l2.carried && c1.carried);
        assert_eq!(l1.uncompressed_size, Some(4), "taken from the base");
        let mut liar = entry(b"l1", BlobKind::Layer);
        liar.size = 99;
        assert!(matches!(
            omit_from(&b, &mut [&mut liar]),
            Err(Error::SizeConflict { .. })
        ));
    }

    #[test]
    fn carried_true_is_not_serialised() {
        let mut e = entry(b"l1", BlobKind::Layer);
        let full = serde_json::to_string(&e).unwrap();
        assert!(!full.contains("carried"), "{full}");
        e.carried = false;
        let delta = serde_json::to_string(&e).unwrap();
        assert!(delta.contains(r#""carried":false"#), "{delta}");
        let back: BlobEntry = serde_json::from_str(&full).unwrap();
        assert!(back.carried);
    }

    #[test]
    fn plan_refuses_and_lists_what_nothing_provides() {
        let mut m = manifest(
            &[("q.io/a", "v2", b"m2")],
            vec![
                entry(b"l1", BlobKind::Layer),
                entry(b"l2", BlobKind::Layer),
                entry(b"c", BlobKind::Config),
            ],
        );
        m.blobs[0].carried = false;
        m.blobs[1].carried = false;
        let in_store: BTreeSet<Digest> = [Digest::of(b"l1")].into();
        let every = [(0, m.images[0].blobs.iter().collect())];
        let err = plan_load(&m, &every, &[], &in_store).unwrap_err();
        let Error::Unavailable { missing, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].digest, Digest::of(b"l2"));
        assert_eq!(missing[0].images, ["q.io/a:v2"]);
        assert!(err.to_string().contains(&Digest::of(b"l2").to_string()));
        // Nothing to import: nothing needed.
        assert!(plan_load(&m, &[], &[], &in_store).is_ok());
        let all: BTreeSet<Digest> = [Digest::of(b"l1"), Digest::of(b"l2")].into();
        let plan = plan_load(&m, &every, &[], &all).unwrap();
        assert_eq!(plan.from_storage.len(), 2);
        assert_eq!(plan.reused().len(), 2);
        // l2 belongs to a platform that is not imported: not needed.
        let l2 = Digest::of(b"l2");
        let one = [(0, m.images[0].blobs.iter().filter(|d| **d != l2).collect())];
        let plan = plan_load(&m, &one, &[], &in_store).unwrap();
        assert_eq!(plan.reused(), in_store);
    }

    #[test]
    fn diff_matches_by_reference_then_repository() {
        let shared = entry(b"base layer", BlobKind::Layer);
        let old = base(manifest(
            &[("q.io/a", "v1", b"a1"), ("q.io/gone", "v1", b"g")],
            vec![shared.clone(), entry(b"old", BlobKind::Layer)],
        ));
        let new = base(manifest(
            &[("q.io/a", "v2", b"a2"), ("q.io/new", "v1", b"n")],
            vec![shared.clone(), entry(b"newer", BlobKind::Layer)],
        ));
        let d = diff(&old, &new);
        let status: Vec<(&str, &str)> = d
            .images
            .iter()
            .map(|i| (i.status.as_str(), i.name.as_str()))
            .collect();
        assert_eq!(
            status,
            [
                ("changed", "q.io/a"),
                ("added", "q.io/new"),
                ("removed", "q.io/gone")
            ]
        );
        assert_eq!(d.blobs.shared, Count { blobs: 1, size: 10 });
        assert_eq!(d.blobs.only_new, Count { blobs: 1, size: 5 });
        assert_eq!(d.blobs.only_old, Count { blobs: 1, size: 3 });
    }

    #[test]
    fn diff_json_is_unchanged() {
        let shared = entry(b"base layer", BlobKind::Layer);
        let old = base(manifest(
            &[
                ("q.io/a", "v1", b"a1"),
                ("q.io/gone", "v1", b"g"),
                ("q.io/same", "v1", b"s"),
            ],
            vec![shared.clone()],
        ));
        let new = base(manifest(
            &[
                ("q.io/a", "v2", b"a2"),
                ("q.io/new", "v1", b"n"),
                ("q.io/same", "v1", b"s"),
            ],
            vec![shared],
        ));
        let json = serde_json::to_string(&diff(&old, &new).images).unwrap();
        assert_eq!(
            json,
            r#"[{"status":"unchanged","name":"q.io/same","oldReference":"q.io/same:v1","newReference":"q.io/same:v1","oldDigest":"sha256:043a718774c572bd8a25adbeb1bfcd5c0256ae11cecf9f9c3f925d0e52beaf89","newDigest":"sha256:043a718774c572bd8a25adbeb1bfcd5c0256ae11cecf9f9c3f925d0e52beaf89"},{"status":"changed","name":"q.io/a","oldReference":"q.io/a:v1","newReference":"q.io/a:v2","oldDigest":"sha256:f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114","newDigest":"sha256:2c3a4249d77070058649dbd822dcaf7957586fce428cfb2ca88b94741eda8b07"},{"status":"added","name":"q.io/new","oldReference":null,"newReference":"q.io/new:v1","oldDigest":null,"newDigest":"sha256:1b16b1df538ba12dc3f97edbb85caa7050d46c148134290feba80f8236c83db9"},{"status":"removed","name":"q.io/gone","oldReference":"q.io/gone:v1","newReference":null,"oldDigest":"sha256:cd0aa9856147b6c5b4ff2b7dfee5da20aa38253099ef1b4a64aced233c9afe29","newDigest":null}]"#
        );
    }
}
