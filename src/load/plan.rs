//! The decisions of `load`'s plan phase, kept pure so they can be tested without a store, a
//! registry or CRI-O: which images the bundle can serve for this platform, which are already
//! in the store and which must be imported. The facts they decide from (the store's records,
//! its layers, free space) are gathered by [`super::run`].

use std::collections::BTreeSet;

use anyhow::Result;

use super::report::ImageStatus;
use super::storage::ImageRecord;
use crate::bundle::format::{BundleManifest, ImageEntry, media};
use crate::platform::Platform;
use crate::reference::Digest;

/// Refuses when an image is an index that carries no manifest for `platform` (a variant is
/// only compared when `platform` names one).
pub fn check_platforms(manifest: &BundleManifest, platform: &Platform) -> Result<()> {
    for img in &manifest.images {
        if media::is_index(&img.media_type)
            && !img.platforms.iter().any(|p| platform.matches_entry(p))
        {
            let carried: Vec<String> = img
                .platforms
                .iter()
                .map(|p| crate::platform::shown(&p.os, &p.architecture, None).to_string())
                .collect();
            // Refused for its content (exit 1).
            return Err(crate::error::Refused(format!(
                "{} carries no {platform} image (it has {}); re-create the bundle with `--platform {platform}` or pass `--platform`",
                img.reference,
                carried.join(", ")
            ))
            .into());
        }
    }
    Ok(())
}

/// The blobs skopeo fetches to import `img` on `platform`: all of a single-platform image's;
/// of an index, the index and the instances `platform` matches (those skopeo may pick), none
/// of the other platforms' (a bundle may carry them, a delta may omit them, neither is
/// copied).
pub fn import_blobs<'m>(img: &'m ImageEntry, platform: &Platform) -> BTreeSet<&'m Digest> {
    if !media::is_index(&img.media_type) {
        return img.blobs.iter().collect();
    }
    let mut blobs = BTreeSet::from([&img.digest]);
    for p in img.platforms.iter().filter(|p| platform.matches_entry(p)) {
        blobs.insert(&p.digest);
        blobs.insert(&p.config);
        blobs.extend(&p.layers);
    }
    blobs
}

/// The platform skopeo takes of `img` on `platform`: an index's first matching instance (as
/// containers/image picks), a single-platform image's own; `None` when the bundle does not say.
pub fn chosen_platform(img: &ImageEntry, platform: &Platform) -> Option<Platform> {
    let entry = if media::is_index(&img.media_type) {
        img.platforms.iter().find(|p| platform.matches_entry(p))
    } else {
        img.platforms.first()
    };
    entry.map(Platform::from)
}

/// The bytes skopeo reads from the loopback registry for each image of `imports`, in order:
/// its blobs not read already for an earlier one (skopeo reuses those from the store) and not
/// `reused` from the store by a delta. They add up to what the whole import reads.
pub fn import_bytes(
    manifest: &BundleManifest,
    imports: &[(usize, BTreeSet<&Digest>)],
    reused: &BTreeSet<Digest>,
) -> Vec<u64> {
    let sizes: std::collections::HashMap<&Digest, u64> =
        manifest.blobs.iter().map(|b| (&b.digest, b.size)).collect();
    let mut seen: BTreeSet<&Digest> = BTreeSet::new();
    imports
        .iter()
        .map(|(_, blobs)| {
            blobs
                .iter()
                .filter(|d| !reused.contains(**d) && seen.insert(**d))
                .map(|d| sizes.get(*d).copied().unwrap_or(0))
                .fold(0u64, u64::saturating_add)
        })
        .collect()
}

/// The waves `load` imports `imports` in: every image of a wave may be copied at the same
/// time as the others of its wave, and after all of the waves before it. Each blob (a base
/// layer, a config) belongs to the first image that has it; an image waits for the wave after
/// each owner of a blob it shares, so a shared layer is unpacked once, by its owner, and the
/// others find it in the store (two copies of one layer at once would both unpack it). Images
/// that share a blob only with their owner run together. Returns positions in `imports`, each
/// wave in their order.
pub fn import_waves(imports: &[(usize, BTreeSet<&Digest>)]) -> Vec<Vec<usize>> {
    let mut owner: std::collections::HashMap<&Digest, usize> = std::collections::HashMap::new();
    let mut wave_of: Vec<usize> = Vec::with_capacity(imports.len());
    for (pos, (_, blobs)) in imports.iter().enumerate() {
        let mut wave = 0;
        for d in blobs {
            match owner.get(*d) {
                Some(&o) => wave = wave.max(wave_of[o] + 1),
                None => {
                    owner.insert(*d, pos);
                }
            }
        }
        wave_of.push(wave);
    }
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (pos, &w) in wave_of.iter().enumerate() {
        if waves.len() <= w {
            waves.resize_with(w + 1, Vec::new);
        }
        waves[w].push(pos);
    }
    waves
}

/// Whether `record` (the store's image named `name@digest`, if any) is `img` as the bundle
/// would leave it: with a tag, the store must also carry the `name:tag` name.
pub fn is_present(img: &ImageEntry, record: Option<&ImageRecord>) -> bool {
    record.is_some_and(|r| match &img.tag {
        None => true,
        Some(tag) => r.names.iter().any(|n| *n == format!("{}:{tag}", img.name)),
    })
}

/// Which images are to be imported: each image's status before importing (`present`, else
/// `would-load` in a dry run or `not-loaded`), and the indexes of those not present.
/// `records[i]` is the store's record for image `i`.
pub fn missing(
    manifest: &BundleManifest,
    records: &[Option<ImageRecord>],
    dry_run: bool,
) -> (Vec<ImageStatus>, Vec<usize>) {
    let mut statuses = Vec::with_capacity(manifest.images.len());
    let mut missing = Vec::new();
    for (i, (img, record)) in manifest.images.iter().zip(records).enumerate() {
        if is_present(img, record.as_ref()) {
            statuses.push(ImageStatus::Present);
        } else {
            statuses.push(if dry_run {
                ImageStatus::WouldLoad
            } else {
                ImageStatus::NotLoaded
            });
            missing.push(i);
        }
    }
    (statuses, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::format::PlatformEntry;

    fn image(name: &str, tag: Option<&str>, media_type: &str) -> ImageEntry {
        ImageEntry {
            reference: format!("{name}:{}", tag.unwrap_or("x")),
            name: name.into(),
            tag: tag.map(str::to_string),
            digest: Digest::of(name.as_bytes()),
            media_type: media_type.into(),
            platforms: Vec::new(),
            blobs: Vec::new(),
            size: 0,
            uncompressed_size: 0,
        }
    }

    fn manifest(images: Vec<ImageEntry>) -> BundleManifest {
        BundleManifest::for_test(images, Vec::new())
    }

    fn record(names: &[&str]) -> Option<ImageRecord> {
        Some(ImageRecord {
            id: "0".into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            digests: Vec::new(),
        })
    }

    #[test]
    fn present_needs_the_tag_name_too() {
        let img = image("q.io/a", Some("v1"), media::OCI_MANIFEST);
        let pin = format!("q.io/a@{}", img.digest);
        assert!(!is_present(&img, None));
        assert!(!is_present(&img, record(&[&pin]).as_ref()));
        assert!(is_present(&img, record(&[&pin, "q.io/a:v1"]).as_ref()));
        let untagged = image("q.io/b", None, media::OCI_MANIFEST);
        assert!(is_present(&untagged, record(&[]).as_ref()));
    }

    #[test]
    fn missing_images_and_their_statuses() {
        let m = manifest(vec![
            image("q.io/a", Some("v1"), media::OCI_MANIFEST),
            image("q.io/b", None, media::OCI_MANIFEST),
        ]);
        let records = [None, record(&[])];
        let (statuses, missing) = super::missing(&m, &records, false);
        assert_eq!(statuses, [ImageStatus::NotLoaded, ImageStatus::Present]);
        assert_eq!(missing, [0]);
        let (statuses, _) = super::missing(&m, &records, true);
        assert_eq!(statuses[0], ImageStatus::WouldLoad);
    }

    #[test]
    fn an_index_must_carry_the_platform() {
        let mut img = image("q.io/a", Some("v1"), media::OCI_INDEX);
        img.platforms.push(PlatformEntry {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
            digest: Digest::of(b"m"),
            media_type: media::OCI_MANIFEST.into(),
            config: Digest::of(b"c"),
            layers: Vec::new(),
        });
        let m = manifest(vec![img]);
        let p = |s: &str| s.parse::<Platform>().unwrap();
        assert!(check_platforms(&m, &p("linux/arm64")).is_ok());
        assert!(check_platforms(&m, &p("linux/arm64/v8")).is_ok());
        let err = check_platforms(&m, &p("linux/amd64"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("carries no linux/amd64 image (it has linux/arm64)"),
            "{err}"
        );
        // A single-platform image is not checked here: skopeo takes what it is.
        let m = manifest(vec![image("q.io/b", None, media::OCI_MANIFEST)]);
        assert!(check_platforms(&m, &p("linux/amd64")).is_ok());
    }

    #[test]
    fn bytes_read_per_image_count_each_blob_once() {
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let blob = |d: &Digest, size| crate::bundle::format::BlobEntry {
            digest: d.clone(),
            size,
            media_type: media::OCI_LAYER_GZIP.into(),
            kind: crate::bundle::format::BlobKind::Layer,
            uncompressed_size: None,
            carried: true,
        };
        let m = BundleManifest::for_test(
            Vec::new(),
            vec![blob(&a, 10), blob(&b, 200), blob(&c, 3000)],
        );
        let imports = [(0, BTreeSet::from([&a, &b])), (1, BTreeSet::from([&b, &c]))];
        assert_eq!(import_bytes(&m, &imports, &BTreeSet::new()), [210, 3000]);
        // A layer a delta takes from the store is not read at all.
        assert_eq!(
            import_bytes(&m, &imports, &BTreeSet::from([c.clone()])),
            [210, 0]
        );
    }

    #[test]
    fn shared_blobs_are_imported_first_and_once() {
        let d: Vec<Digest> = (0..8u8).map(|i| Digest::of(&[i])).collect();
        let set = |ix: &[usize]| ix.iter().map(|&i| &d[i]).collect::<BTreeSet<_>>();
        // 0 owns the base layer (0); 1 and 2 share only it; 3 shares 1's layer (2) as well;
        // 4 shares nothing.
        let imports = [
            (10, set(&[0, 1])),
            (11, set(&[0, 2, 3])),
            (12, set(&[0, 4])),
            (13, set(&[0, 2, 5])),
            (14, set(&[6, 7])),
        ];
        assert_eq!(import_waves(&imports), [vec![0, 4], vec![1, 2], vec![3]]);
        // Nothing shared: one wave, in order; nothing to import: no wave.
        let apart = [(0, set(&[0])), (1, set(&[1])), (2, set(&[2]))];
        assert_eq!(import_waves(&apart), [vec![0, 1, 2]]);
        assert!(import_waves(&[]).is_empty());
        // The same config twice (one image under two names): one after the other.
        let twice = [(0, set(&[0, 1])), (1, set(&[0, 1]))];
        assert_eq!(import_waves(&twice), [vec![0], vec![1]]);
    }

    #[test]
    fn the_platform_taken() {
        let entry = |arch: &str| PlatformEntry {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
            digest: Digest::of(arch.as_bytes()),
            media_type: media::OCI_MANIFEST.into(),
            config: Digest::of(b"c"),
            layers: Vec::new(),
        };
        let p = |s: &str| s.parse::<Platform>().unwrap();
        let mut index = image("q.io/a", Some("v1"), media::OCI_INDEX);
        index.platforms = vec![entry("amd64"), entry("arm64")];
        let shown =
            |img: &ImageEntry, on: &str| chosen_platform(img, &p(on)).map(|p| p.to_string());
        assert_eq!(shown(&index, "linux/arm64").as_deref(), Some("linux/arm64"));
        assert_eq!(shown(&index, "linux/s390x"), None);
        let mut single = image("q.io/b", None, media::OCI_MANIFEST);
        single.platforms = vec![entry("amd64")];
        assert_eq!(
            shown(&single, "linux/arm64").as_deref(),
            Some("linux/amd64")
        );
    }

    #[test]
    fn an_index_imports_only_the_matching_platform() {
        let entry = |arch: &str, variant: Option<&str>| PlatformEntry {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(str::to_string),
            digest: Digest::of(format!("m-{arch}").as_bytes()),
            media_type: media::OCI_MANIFEST.into(),
            config: Digest::of(format!("c-{arch}").as_bytes()),
            layers: vec![Digest::of(format!("l-{arch}").as_bytes())],
        };
        let mut img = image("q.io/a", Some("v1"), media::OCI_INDEX);
        img.platforms = vec![entry("amd64", None), entry("arm64", Some("v8"))];
        img.blobs = img
            .platforms
            .iter()
            .flat_map(|p| [p.digest.clone(), p.config.clone(), p.layers[0].clone()])
            .chain([img.digest.clone()])
            .collect();
        let p = |s: &str| s.parse::<Platform>().unwrap();
        let arm = &img.platforms[1];
        assert_eq!(
            import_blobs(&img, &p("linux/arm64")),
            BTreeSet::from([&img.digest, &arm.digest, &arm.config, &arm.layers[0]])
        );
        assert_eq!(import_blobs(&img, &p("linux/arm64/v8")).len(), 4);
        assert_eq!(
            import_blobs(&img, &p("linux/s390x")),
            BTreeSet::from([&img.digest])
        );
        // A single-platform image: everything it lists.
        let mut single = image("q.io/b", None, media::OCI_MANIFEST);
        single.blobs = vec![Digest::of(b"x"), Digest::of(b"y")];
        assert_eq!(import_blobs(&single, &p("linux/s390x")).len(), 2);
    }
}
