//! What `pinbundle.json` says: the images and blobs of a plan, their totals, and the OCI
//! layout files, rendered from the resolved manifests and what fetching measured.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;

use super::plan::PlannedBlob;
use super::resolve::{Instance, Resolved};
use crate::bundle::format::{
    BlobEntry, BundleManifest, FORMAT_NAME, FORMAT_VERSION, ImageEntry, LayoutDigests,
    PlatformEntry, ReleaseEntry, Totals, media,
};
use crate::delta::Base;
use crate::manifest;
use crate::platform::Platform;
use crate::reference::Digest;

/// The `oci-layout` member.
pub(super) const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// What the head is rendered from, besides the blobs.
pub(super) struct HeadSource<'a> {
    pub resolved: &'a [Resolved],
    pub config_platforms: &'a HashMap<Digest, Platform>,
    pub base: Option<&'a Base>,
    /// The releases expanded, for `pinbundle.json`'s `releases`.
    pub releases: Vec<ReleaseEntry>,
    pub created_secs: u64,
}

impl HeadSource<'_> {
    /// `pinbundle.json` (as a value) and `index.json` (as bytes) for `blobs`.
    pub fn manifest(
        &self,
        blobs: &BTreeMap<Digest, PlannedBlob>,
    ) -> Result<(BundleManifest, Vec<u8>)> {
        let images: Vec<ImageEntry> = self
            .resolved
            .iter()
            .map(|r| image_entry(r, blobs, self.config_platforms))
            .collect::<Result<_>>()?;
        let index_json = oci_index_json(&images, blobs)?;
        let entries: Vec<BlobEntry> = blobs.values().map(|b| b.entry.clone()).collect();
        let omitted: Vec<&BlobEntry> = entries.iter().filter(|b| !b.carried).collect();
        let bytes_omitted: u64 = omitted.iter().map(|b| b.size).sum();
        let totals = Totals {
            images: images.len(),
            blobs: entries.len(),
            size: entries.iter().map(|b| b.size).sum(),
            uncompressed_size: entries.iter().filter_map(|b| b.uncompressed_size).sum(),
            omitted_blobs: self.base.map(|_| omitted.len()),
            omitted_size: self.base.map(|_| bytes_omitted),
        };
        let bm = BundleManifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            creator: format!("pinbundle {}", env!("CARGO_PKG_VERSION")),
            created: rfc3339(self.created_secs),
            base: self.base.map(Base::base_ref),
            layout: LayoutDigests {
                oci_layout: Digest::of(OCI_LAYOUT),
                index_json: Digest::of(&index_json),
            },
            images,
            releases: self.releases.clone(),
            blobs: entries,
            totals,
        };
        Ok((bm, index_json))
    }
}

/// The signed comment: what a reader sees in `minisign -V` and `inspect`, authenticated with
/// the signature. One line, from the manifest only (so signing stays deterministic).
pub(super) fn trusted_comment(bm: &BundleManifest, manifest_bytes: &[u8]) -> String {
    format!(
        "pinbundle created {} images {} blobs {} manifest {}",
        bm.created,
        bm.totals.images,
        bm.totals.blobs,
        Digest::of(manifest_bytes)
    )
}

fn image_entry(
    r: &Resolved,
    blobs: &BTreeMap<Digest, PlannedBlob>,
    config_platforms: &HashMap<Digest, Platform>,
) -> Result<ImageEntry> {
    let mut needed: Vec<Digest> = vec![r.root.digest.clone()];
    let mut platforms = Vec::new();
    for Instance {
        manifest: m,
        platform: plat,
        parsed,
    } in &r.instances
    {
        let what = format!("{} (manifest {})", r.reference, m.digest);
        let config = manifest::digest_of(parsed.config(), &what)?;
        let layers: Vec<Digest> = parsed
            .layers()
            .iter()
            .map(|l| manifest::digest_of(l, &what))
            .collect::<Result<_, _>>()?;
        let plat = match plat {
            Some(p) => p.clone(),
            None => config_platforms
                .get(&m.digest)
                .cloned()
                .unwrap_or_else(Platform::linux_amd64),
        };
        needed.push(m.digest.clone());
        needed.push(config.clone());
        needed.extend(layers.iter().cloned());
        platforms.push(PlatformEntry {
            os: plat.os,
            architecture: plat.architecture,
            variant: plat.variant,
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            config,
            layers,
        });
    }
    needed.sort();
    needed.dedup();
    let size = needed
        .iter()
        .filter_map(|d| blobs.get(d))
        .map(|b| b.entry.size)
        .sum();
    let uncompressed_size = needed
        .iter()
        .filter_map(|d| blobs.get(d))
        .filter_map(|b| b.entry.uncompressed_size)
        .sum();
    Ok(ImageEntry {
        reference: r.reference.to_string(),
        name: r.reference.name(),
        tag: r.reference.effective_tag().map(str::to_string),
        digest: r.root.digest.clone(),
        media_type: r.root.media_type.clone(),
        platforms,
        blobs: needed,
        size,
        uncompressed_size,
    })
}

/// The OCI layout's `index.json`: one descriptor per image, named by its full reference so
/// stock tools can address it (`skopeo copy oci:DIR:quay.io/a/b:v1 …`).
fn oci_index_json(images: &[ImageEntry], blobs: &BTreeMap<Digest, PlannedBlob>) -> Result<Vec<u8>> {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|i| {
            let size = blobs.get(&i.digest).map_or(0, |b| b.entry.size);
            serde_json::json!({
                "mediaType": i.media_type,
                "digest": i.digest.to_string(),
                "size": size,
                "annotations": {
                    "org.opencontainers.image.ref.name": i.reference,
                    "io.containerd.image.name": i.reference,
                },
            })
        })
        .collect();
    let mut v = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    }))?;
    v.push(b'\n');
    Ok(v)
}

pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}
