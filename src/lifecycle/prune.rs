//! `pinbundle prune`: removes from the store the images pinbundle added (the record says so)
//! that no file of CRI-O's configuration pins and no container uses. Never an image that
//! was in the store before the load that recorded it, nor one that has a name pinbundle did
//! not give it.
//!
//! "Used by a container" is read from the store itself (`<driver>-containers/containers.json`
//! under the graph root): CRI-O, podman and buildah create a storage container for every
//! container and pod sandbox, so this sees them whether or not CRI-O answers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::NodeOptions;
use super::record::{Locked, StoreKey};
use crate::error::error_chain;
use crate::load::storage::{Skopeo, Store};

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub node: NodeOptions,
    pub dry_run: bool,
    pub skopeo: Skopeo,
    /// The load lock: prune waits for a running load.
    pub lock: PathBuf,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    pub version: u32,
    pub dry_run: bool,
    pub store: Option<StoreKey>,
    /// Images removed (or that would be, with `--dry-run`).
    pub removed: Vec<PrunedImage>,
    /// Recorded images kept, each with why.
    pub kept: Vec<KeptImage>,
    /// Record entries whose image is no longer in the store: dropped from the record.
    pub forgotten: Vec<String>,
    /// Images that could not be removed.
    pub errors: Vec<String>,
}

impl PruneReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrunedImage {
    pub image_id: String,
    pub names: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeptImage {
    pub image_id: String,
    pub pins: Vec<String>,
    pub reason: String,
}

/// A storage container (`containers.json`): only what prune needs.
#[derive(serde::Deserialize)]
struct Container {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    image: String,
}

/// Runs `prune`.
///
/// # Errors
/// Operational failures: CRI-O's configuration (a file that does not parse: its pins are
/// unknown), the store's lists or the record cannot be read, the record cannot be written.
pub fn prune(opts: &PruneOptions, reporter: &dyn crate::progress::Reporter) -> Result<PruneReport> {
    let node = &opts.node;
    let _lock = if opts.dry_run {
        None
    } else {
        Some(crate::load::run::lock(&opts.lock, reporter)?)
    };
    let crio = node.crio()?;
    if let Some(u) = crio.unparsable.first() {
        anyhow::bail!(
            "`{}` does not parse ({}): its pins are unknown, so nothing can be pruned safely",
            u.path.display(),
            u.reason
        );
    }
    let pin_files = super::pin_files(&crio);
    let prepared = node.store(&crio)?;
    let store = &prepared.store;
    let images = store.images().context("reading the store's image list")?;
    let containers = containers(store)?;
    let mut locked = Locked::open(&node.state_dir)?;
    let mut report = PruneReport {
        version: 1,
        dry_run: opts.dry_run,
        store: Some(StoreKey::of(store)),
        ..PruneReport::default()
    };
    // This store's entries, by image.
    let mut by_image: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, e) in locked.record.images.iter().enumerate() {
        if e.store.is(store) {
            by_image.entry(e.image_id.clone()).or_default().push(i);
        }
    }
    let mut drop_entries = Vec::new();
    for (id, idx) in by_image {
        let entries: Vec<&super::record::Entry> =
            idx.iter().map(|&i| &locked.record.images[i]).collect();
        let pins: Vec<String> = entries.iter().map(|e| e.pin.clone()).collect();
        let Some(image) = images.iter().find(|r| r.id == id) else {
            report.forgotten.extend(pins);
            drop_entries.extend(idx);
            continue;
        };
        let keep = |reason: String| KeptImage {
            image_id: id.clone(),
            pins: pins.clone(),
            reason,
        };
        if entries.iter().any(|e| !e.added) {
            report.kept.push(keep(
                "it was in the store before pinbundle loaded it".to_string(),
            ));
            continue;
        }
        let foreign: Vec<&String> = image
            .names
            .iter()
            .filter(|n| !pins.contains(n) && !entries.iter().any(|e| e.names.contains(n)))
            .collect();
        if !foreign.is_empty() {
            report.kept.push(keep(format!(
                "it also has names pinbundle did not give it: {}",
                foreign
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
            continue;
        }
        let pinned_by: Vec<String> = pin_files
            .iter()
            .filter(|(_, list)| {
                list.iter()
                    .any(|p| image.names.iter().any(|n| super::pattern_pins(p, n)))
            })
            .map(|(f, _)| format!("`{}`", f.display()))
            .collect();
        if !pinned_by.is_empty() {
            report
                .kept
                .push(keep(format!("pinned by {}", pinned_by.join(", "))));
            continue;
        }
        if let Some(c) = containers.iter().find(|c| c.image == id) {
            report.kept.push(keep(format!(
                "used by container {}",
                c.names.first().unwrap_or(&c.id)
            )));
            continue;
        }
        if !opts.dry_run
            && let Err(e) = opts.skopeo.delete_image(store, &id)
        {
            report.errors.push(format!(
                "image {id} ({}) could not be removed: {}",
                image.names.join(", "),
                error_chain(&e)
            ));
            continue;
        }
        report.removed.push(PrunedImage {
            image_id: id,
            names: image.names.clone(),
        });
        drop_entries.extend(idx);
    }
    if !opts.dry_run && !drop_entries.is_empty() {
        let mut i = 0;
        locked.record.images.retain(|_| {
            i += 1;
            !drop_entries.contains(&(i - 1))
        });
        locked.save()?;
    }
    Ok(report)
}

/// The store's containers (none when it has no container list yet).
fn containers(store: &Store) -> Result<Vec<Container>> {
    let path = store.graphroot().join(format!(
        "{}-containers/containers.json",
        store.driver_name()
    ));
    match fs_err::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("reading the store's container list {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}
