//! `pinbundle list`: every pin of pinbundle's drop-in, and every image the record says a load
//! put into this store, with whether the store has it, whether pinbundle loaded it and
//! whether CRI-O reports it pinned.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::record::{self, StoreKey};
use super::{CriPinned, NodeOptions};
use crate::error::error_chain;

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListReport {
    pub version: u32,
    pub drop_in: PathBuf,
    pub store: StoreKey,
    /// CRI-O's `name version`, when it answered.
    pub runtime: Option<String>,
    pub entries: Vec<ListEntry>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListEntry {
    /// The drop-in's entry, or the record's pin.
    pub pin: String,
    /// pinbundle's drop-in lists it.
    pub in_drop_in: bool,
    /// The store has an image with exactly this name.
    pub present: bool,
    pub image_id: Option<String>,
    /// A load of pinbundle put it there (the record says so); `prune` may remove it once
    /// nothing pins it.
    pub loaded_by_pinbundle: bool,
    /// The bundle it was loaded from, when recorded.
    pub bundle: Option<String>,
    pub crio: CriPinned,
}

/// Lists the pins and loaded images. CRI-O is asked only when its socket exists; otherwise
/// every entry's `crio` is [`CriPinned::Unknown`].
///
/// # Errors
/// CRI-O's configuration, the store's image list or the record cannot be read.
pub fn list(node: &NodeOptions) -> Result<ListReport> {
    let crio = node.crio()?;
    let prepared = node.store(&crio)?;
    let store = &prepared.store;
    let images = store.images().context("reading the store's image list")?;
    let recorded = record::read(&node.record_path())?;
    let key = StoreKey::of(store);
    let ours: Vec<&record::Entry> = recorded
        .images
        .iter()
        .filter(|e| e.store.is(store))
        .collect();
    let mut pins = node.drop_in_entries(&crio);
    let in_drop_in = pins.len();
    for e in &ours {
        if !pins.contains(&e.pin) {
            pins.push(e.pin.clone());
        }
    }
    let mut warnings = Vec::new();
    let (runtime, cri) = if node.cri_socket.exists() {
        match super::runtime()?.block_on(super::cri_pinned(&node.cri_socket, node.timeout, &pins)) {
            Ok((r, c)) => (Some(r), c),
            Err(e) => {
                warnings.push(format!(
                    "CRI-O could not be asked whether the images are pinned: {}",
                    error_chain(&e)
                ));
                (None, vec![CriPinned::Unknown; pins.len()])
            }
        }
    } else {
        warnings.push(format!(
            "no CRI socket at `{}`: whether CRI-O pins these is unknown",
            node.cri_socket.display()
        ));
        (None, vec![CriPinned::Unknown; pins.len()])
    };
    let entries = pins
        .into_iter()
        .zip(cri)
        .enumerate()
        .map(|(i, (pin, crio))| {
            let image = images.iter().find(|r| r.names.contains(&pin));
            let rec = ours.iter().find(|e| e.pin == pin);
            ListEntry {
                in_drop_in: i < in_drop_in,
                present: image.is_some(),
                image_id: image.map(|r| r.id.clone()),
                loaded_by_pinbundle: rec.is_some_and(|e| e.added),
                bundle: rec.map(|e| e.bundle.clone()),
                crio,
                pin,
            }
        })
        .collect();
    Ok(ListReport {
        version: 1,
        drop_in: node.drop_in.clone(),
        store: key,
        runtime,
        entries,
        warnings,
    })
}
