//! OpenShift release payloads: what a release image says about itself, and the cluster
//! objects that let `oc adm upgrade` take it offline. Pure: no network, no files; `create`
//! fetches the layers and the signatures, this module reads them, and renders the manifests
//! the CLI writes.
//!
//! A release image carries, in one of its layers, `release-manifests/image-references` (an
//! `ImageStream` whose `spec.tags[].from.name` name every component image by digest) and
//! `release-manifests/release-metadata` (`{"version", "previous", "metadata"}`). Layers are
//! applied in order, so a later layer's copy wins and a whiteout (`.wh.NAME`, or the opaque
//! marker `.wh..wh..opq` of the directory) removes an earlier one.
//!
//! Signatures: the cluster-version operator verifies a release offline against the ConfigMaps
//! of `openshift-config-managed` labelled `release.openshift.io/verification-signatures`, whose
//! `binaryData` keys are `sha256-<hex>-<n>` (as `oc adm release mirror` writes them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;

use crate::bundle::format::BundleManifest;
use crate::bundle::format::media::LayerCompression;
use crate::pinned_image_set;
use crate::reference::{Digest, Reference};
use crate::text::excerpt;

/// Where the component list lies in the release image.
pub const IMAGE_REFERENCES: &str = "release-manifests/image-references";
/// Where the version lies in the release image.
pub const RELEASE_METADATA: &str = "release-manifests/release-metadata";
/// The most bytes read of either file (a real `image-references` is about 200 KiB).
pub const MAX_PAYLOAD_FILE: u64 = 8 << 20;
/// The most components one release may name (a real one has about 190).
pub const MAX_COMPONENTS: usize = 4096;
/// The most signatures taken from a store for one release.
pub const MAX_SIGNATURES: usize = 16;
/// The largest signature accepted (a real one is under 1 KiB).
pub const MAX_SIGNATURE_LEN: u64 = 64 << 10;
/// The public signature store of OpenShift releases.
pub const DEFAULT_SIGNATURE_STORE: &str =
    "https://mirror.openshift.com/pub/openshift-v4/signatures/openshift/release";
/// The namespace and label of the signature ConfigMaps.
pub const SIGNATURE_NAMESPACE: &str = "openshift-config-managed";
pub const SIGNATURE_LABEL: &str = "release.openshift.io/verification-signatures";
/// Labels put on a release's PinnedImageSets.
pub const RELEASE_NAME_LABEL: &str = "pinbundle.io/release";
pub const RELEASE_VERSION_LABEL: &str = "pinbundle.io/release-version";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{release}: reading layer {layer}")]
    Layer {
        release: String,
        layer: Digest,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{release}: {path} in layer {layer} is larger than the {MAX_PAYLOAD_FILE} bytes accepted"
    )]
    TooLarge {
        release: String,
        path: &'static str,
        layer: Digest,
    },
    #[error(
        "{release} is not an OpenShift release image: no layer holds {path} (pass it as an image, not with --release)"
    )]
    Missing { release: String, path: &'static str },
    #[error("{release}: {path} is not valid: {why}")]
    Invalid {
        release: String,
        path: &'static str,
        why: String,
    },
    #[error(
        "{release}: component \"{tag}\" is \"{reference}\", not an image by digest (`name@sha256:…`); a release must name its components by digest"
    )]
    NotByDigest {
        release: String,
        tag: String,
        reference: String,
    },
}

/// The two payload files, as the layers read so far leave them.
#[derive(Debug, Default, Clone)]
pub struct PayloadFiles {
    pub image_references: Option<Vec<u8>>,
    pub release_metadata: Option<Vec<u8>>,
}

/// Which of the two files a layer path is, with the path normalised (`./a` and `/a` are `a`).
fn which(path: &str) -> Option<&'static str> {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    [IMAGE_REFERENCES, RELEASE_METADATA]
        .into_iter()
        .find(|w| *w == p)
}

impl PayloadFiles {
    fn slot(&mut self, path: &'static str) -> &mut Option<Vec<u8>> {
        if path == IMAGE_REFERENCES {
            &mut self.image_references
        } else {
            &mut self.release_metadata
        }
    }

    /// Applies one layer (its compressed bytes) over what earlier layers left.
    pub fn apply_layer(
        &mut self,
        blob: impl Read,
        compression: LayerCompression,
        release: &str,
        layer: &Digest,
    ) -> Result<(), Error> {
        let io = |source| Error::Layer {
            release: release.into(),
            layer: layer.clone(),
            source,
        };
        let reader: Box<dyn Read> = match compression {
            LayerCompression::None => Box::new(blob),
            LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
            LayerCompression::Zstd => Box::new(zstd::stream::read::Decoder::new(blob).map_err(io)?),
        };
        let mut archive = tar::Archive::new(reader);
        // This layer's own entries, applied after its whiteouts (an opaque marker hides the
        // lower layers only, wherever it stands in the tar).
        let mut found: Vec<(&'static str, Option<Vec<u8>>)> = Vec::new();
        let mut hide_lower = false;
        for entry in archive.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            let path = entry.path_bytes();
            let path = String::from_utf8_lossy(&path).into_owned();
            let p = path.trim_start_matches("./").trim_start_matches('/');
            let p = p.trim_end_matches('/');
            if p == "release-manifests/.wh..wh..opq"
                || p == ".wh.release-manifests"
                || p == "release-manifests" && !entry.header().entry_type().is_dir()
            {
                hide_lower = true;
                continue;
            }
            if let Some(name) = p.strip_prefix("release-manifests/.wh.") {
                if let Some(w) = which(&format!("release-manifests/{name}")) {
                    found.push((w, None));
                }
                continue;
            }
            let Some(w) = which(p) else { continue };
            if !entry.header().entry_type().is_file() {
                // A link or directory in its place hides the lower file; pinbundle does not
                // follow links in a payload.
                found.push((w, None));
                continue;
            }
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_PAYLOAD_FILE + 1)
                .read_to_end(&mut bytes)
                .map_err(io)?;
            if bytes.len() as u64 > MAX_PAYLOAD_FILE {
                return Err(Error::TooLarge {
                    release: release.into(),
                    path: w,
                    layer: layer.clone(),
                });
            }
            found.push((w, Some(bytes)));
        }
        if hide_lower {
            *self = PayloadFiles::default();
        }
        for (w, bytes) in found {
            *self.slot(w) = bytes;
        }
        Ok(())
    }

    /// The release these files describe, once every layer is applied.
    pub fn parse(&self, release: &str) -> Result<Payload, Error> {
        let refs = self.image_references.as_deref().ok_or(Error::Missing {
            release: release.into(),
            path: IMAGE_REFERENCES,
        })?;
        let meta = self.release_metadata.as_deref().ok_or(Error::Missing {
            release: release.into(),
            path: RELEASE_METADATA,
        })?;
        let metadata = parse_metadata(meta, release)?;
        let components = parse_image_references(refs, release)?;
        Ok(Payload {
            version: metadata.version,
            previous: metadata.previous,
            components,
        })
    }
}

/// What a release payload says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub version: String,
    pub previous: Vec<String>,
    /// Tag name → component reference (by digest), sorted by tag name.
    pub components: BTreeMap<String, Reference>,
}

struct Metadata {
    version: String,
    previous: Vec<String>,
}

fn invalid(release: &str, path: &'static str, why: impl Into<String>) -> Error {
    Error::Invalid {
        release: release.into(),
        path,
        why: why.into(),
    }
}

/// A short, printable version string (it ends up in file names and labels).
fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
}

fn parse_metadata(bytes: &[u8], release: &str) -> Result<Metadata, Error> {
    #[derive(serde::Deserialize)]
    struct Doc {
        version: Option<String>,
        #[serde(default)]
        previous: Vec<String>,
    }
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| {
        invalid(
            release,
            RELEASE_METADATA,
            format!("not JSON (line {}, column {})", e.line(), e.column()),
        )
    })?;
    let version = doc
        .version
        .ok_or_else(|| invalid(release, RELEASE_METADATA, "no \"version\""))?;
    if !valid_version(&version) {
        return Err(invalid(
            release,
            RELEASE_METADATA,
            format!(
                "\"version\" \"{}\" is not a version (letters, digits, `.-_+`, at most 63)",
                excerpt(&version, 60)
            ),
        ));
    }
    let previous = doc
        .previous
        .into_iter()
        .filter(|p| valid_version(p))
        .take(MAX_COMPONENTS)
        .collect();
    Ok(Metadata { version, previous })
}

fn parse_image_references(
    bytes: &[u8],
    release: &str,
) -> Result<BTreeMap<String, Reference>, Error> {
    #[derive(serde::Deserialize)]
    struct Doc {
        kind: Option<String>,
        spec: Option<Spec>,
    }
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        tags: Vec<Tag>,
    }
    #[derive(serde::Deserialize)]
    struct Tag {
        name: String,
        from: Option<From>,
    }
    #[derive(serde::Deserialize)]
    struct From {
        kind: Option<String>,
        name: String,
    }
    let bad = |why: String| invalid(release, IMAGE_REFERENCES, why);
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| {
        bad(format!(
            "not an ImageStream in JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if doc.kind.as_deref() != Some("ImageStream") {
        return Err(bad(format!(
            "kind is \"{}\", expected ImageStream",
            excerpt(doc.kind.as_deref().unwrap_or(""), 40)
        )));
    }
    let tags = doc.spec.map(|s| s.tags).unwrap_or_default();
    if tags.is_empty() {
        return Err(bad("spec.tags is empty".into()));
    }
    if tags.len() > MAX_COMPONENTS {
        return Err(bad(format!(
            "{} tags, more than the {MAX_COMPONENTS} accepted",
            tags.len()
        )));
    }
    let mut out = BTreeMap::new();
    for t in tags {
        let tag = excerpt(&t.name, 80);
        let Some(from) = t.from else {
            return Err(bad(format!("tag \"{tag}\" has no \"from\"")));
        };
        if from.kind.as_deref() != Some("DockerImage") {
            return Err(bad(format!(
                "tag \"{tag}\": from.kind is \"{}\", expected DockerImage",
                excerpt(from.kind.as_deref().unwrap_or(""), 40)
            )));
        }
        let not_by_digest = || Error::NotByDigest {
            release: release.into(),
            tag: tag.clone(),
            reference: excerpt(&from.name, 200),
        };
        let r: Reference = from.name.parse().map_err(|_| not_by_digest())?;
        if r.digest().is_none() || r.tag().is_some() {
            return Err(not_by_digest());
        }
        if out.insert(t.name.clone(), r).is_some() {
            return Err(bad(format!("tag \"{tag}\" is listed twice")));
        }
    }
    Ok(out)
}

/// The error of reading one blob from a bundle, whatever the reader.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Reads one signature blob from a bundle: `None` when the bundle does not hold it.
pub type SignatureReader<'a> = dyn Fn(&Digest) -> Option<Result<Vec<u8>, BoxError>> + 'a;

/// How [`cluster_manifests`] writes the PinnedImageSets.
#[derive(Debug, Clone, Default)]
pub struct ManifestOptions {
    /// The machine config pools (one set per pool; [`pinned_image_set::DEFAULT_POOL`] when
    /// empty).
    pub pools: Vec<String>,
    pub api: pinned_image_set::Api,
}

/// One file for `oc apply -f DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// The file name (no directory).
    pub name: String,
    /// `ConfigMap` or `PinnedImageSet`.
    pub kind: &'static str,
    /// The release it is for (its version).
    pub version: String,
    /// How many objects (sets, or signatures in the ConfigMap).
    pub objects: usize,
    pub contents: String,
}

/// Why the cluster manifests of a bundle cannot be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("the bundle holds no OpenShift release (it was not made with `create --release`)")]
    NoRelease,
    #[error("release {version}: signature {digest} is not in the bundle")]
    SignatureMissing { version: String, digest: Digest },
    #[error("release {version}: signature {digest} could not be read")]
    SignatureUnreadable {
        version: String,
        digest: Digest,
        #[source]
        source: BoxError,
    },
    #[error("release {version}: signature {digest} holds bytes of digest {found}")]
    SignatureMismatch {
        version: String,
        digest: Digest,
        found: Digest,
    },
    #[error("release {version}: image {image} is not a `name@sha256:…` reference")]
    BadImage { version: String, image: String },
    #[error("release {version}: PinnedImageSet")]
    Sets {
        version: String,
        #[source]
        source: pinned_image_set::Error,
    },
}

/// `s` with every character a DNS name or label value cannot hold turned into `-`.
fn name_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The cluster objects of every release in `bm`: per release, its signature ConfigMap (when
/// it carries signatures) and its PinnedImageSets (the release image and every component),
/// labelled with the release's name and version. `signature(digest)` reads a signature blob
/// from the bundle; its bytes are checked against the digest `pinbundle.json` lists.
pub fn cluster_manifests(
    bm: &BundleManifest,
    signature: &SignatureReader<'_>,
    opts: &ManifestOptions,
) -> Result<Vec<ManifestFile>, ManifestError> {
    if bm.releases.is_empty() {
        return Err(ManifestError::NoRelease);
    }
    let mut out = Vec::new();
    for r in &bm.releases {
        let version = r.version.clone();
        let stem = format!(
            "release-{}-{}",
            name_part(&r.version),
            name_part(&r.architecture)
        );
        if !r.signatures.is_empty() {
            let mut sigs = Vec::new();
            for d in &r.signatures {
                let bytes = signature(d)
                    .ok_or_else(|| ManifestError::SignatureMissing {
                        version: version.clone(),
                        digest: d.clone(),
                    })?
                    .map_err(|source| ManifestError::SignatureUnreadable {
                        version: version.clone(),
                        digest: d.clone(),
                        source,
                    })?;
                let found = Digest::of(&bytes);
                if found != *d {
                    return Err(ManifestError::SignatureMismatch {
                        version,
                        digest: d.clone(),
                        found,
                    });
                }
                sigs.push(bytes);
            }
            out.push(ManifestFile {
                name: format!("{stem}-signatures.yaml"),
                kind: "ConfigMap",
                version: version.clone(),
                objects: sigs.len(),
                contents: signature_config_map(&r.digest, &sigs),
            });
        }
        let mut pins = Vec::new();
        for image in std::iter::once(&r.image).chain(r.components.values()) {
            let bad = || ManifestError::BadImage {
                version: version.clone(),
                image: excerpt(image, 200),
            };
            let parsed: Reference = image.parse().map_err(|_| bad())?;
            let digest = parsed.digest().cloned().ok_or_else(bad)?;
            pins.push(parsed.pinned(digest));
        }
        let sets = pinned_image_set::sets(&stem, &opts.pools, &pins).map_err(|source| {
            ManifestError::Sets {
                version: version.clone(),
                source,
            }
        })?;
        let release_name = r
            .reference
            .parse::<Reference>()
            .ok()
            .and_then(|p| p.path().rsplit('/').next().map(name_part))
            .unwrap_or_default();
        let version_label = name_part(&r.version);
        let mut labels = Vec::new();
        if pinned_image_set::is_label_value(&release_name) {
            labels.push((RELEASE_NAME_LABEL, release_name.as_str()));
        }
        if pinned_image_set::is_label_value(&version_label) {
            labels.push((RELEASE_VERSION_LABEL, version_label.as_str()));
        }
        out.push(ManifestFile {
            name: format!("{stem}-pinned-image-sets.yaml"),
            kind: "PinnedImageSet",
            version,
            objects: sets.len(),
            contents: pinned_image_set::render_labelled(opts.api, &sets, &labels),
        });
    }
    Ok(out)
}

/// One release of a bundle, as `inspect` and `diff` group it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSummary {
    pub version: String,
    pub digest: Digest,
    pub architecture: String,
    /// The release image and its distinct components.
    pub images: usize,
    /// Distinct blobs of those images, and their bytes.
    pub blobs: usize,
    pub bytes: u64,
    /// Bytes of blobs that nothing compared before has (an earlier release of the same
    /// bundle for `inspect`; the old bundle for `diff`) …
    pub bytes_new: u64,
    /// … and bytes of blobs that it has already.
    pub bytes_shared: u64,
    pub signatures: usize,
}

/// The releases of `bm`, each with the bytes new and shared: against `old`'s blobs when
/// given (`diff`), else against the releases before it in `bm` (`inspect`: an update path
/// `4.y.a → 4.y.b` shows what the second one adds).
pub fn summaries(bm: &BundleManifest, old: Option<&BundleManifest>) -> Vec<ReleaseSummary> {
    use std::collections::{BTreeSet, HashMap};
    let sizes: HashMap<&Digest, u64> = bm.blobs.iter().map(|b| (&b.digest, b.size)).collect();
    let images: HashMap<String, &crate::bundle::format::ImageEntry> = bm
        .images
        .iter()
        .map(|i| (format!("{}@{}", i.name, i.digest), i))
        .collect();
    let mut seen: BTreeSet<&Digest> = match old {
        Some(o) => o.blobs.iter().map(|b| &b.digest).collect(),
        None => BTreeSet::new(),
    };
    let mut out = Vec::new();
    for r in &bm.releases {
        let names: BTreeSet<&String> = std::iter::once(&r.image)
            .chain(r.components.values())
            .collect();
        let blobs: BTreeSet<&Digest> = names
            .iter()
            .filter_map(|n| images.get(n.as_str()))
            .flat_map(|i| i.blobs.iter())
            .chain(r.signatures.iter())
            .collect();
        let size = |d: &&Digest| sizes.get(*d).copied().unwrap_or(0);
        let bytes: u64 = blobs.iter().map(size).sum();
        let shared: u64 = blobs.iter().filter(|d| seen.contains(**d)).map(size).sum();
        out.push(ReleaseSummary {
            version: r.version.clone(),
            digest: r.digest.clone(),
            architecture: r.architecture.clone(),
            images: names.len(),
            blobs: blobs.len(),
            bytes,
            bytes_new: bytes - shared,
            bytes_shared: shared,
            signatures: r.signatures.len(),
        });
        if old.is_none() {
            seen.extend(blobs);
        }
    }
    out
}

/// `sha256-<hex>`: the ConfigMap's name and the prefix of its keys.
pub fn signature_prefix(digest: &Digest) -> String {
    digest.to_string().replacen(':', "-", 1)
}

/// The ConfigMap that lets the cluster-version operator verify release `digest` offline, as
/// `oc adm release mirror` writes it: `binaryData` keys `sha256-<hex>-<n>`, `n` from 1.
pub fn signature_config_map(digest: &Digest, signatures: &[Vec<u8>]) -> String {
    use base64::Engine as _;
    let prefix = signature_prefix(digest);
    let mut out = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {prefix}\n  namespace: {SIGNATURE_NAMESPACE}\n  labels:\n    {SIGNATURE_LABEL}: \"\"\nbinaryData:\n"
    );
    for (n, sig) in signatures.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {prefix}-{}: {}",
            n + 1,
            base64::engine::general_purpose::STANDARD.encode(sig)
        );
    }
    out
}

/// The URL of signature `n` (from 1) of `digest` in `store`.
pub fn signature_url(store: &str, digest: &Digest, n: usize) -> String {
    format!(
        "{}/sha256={}/signature-{n}",
        store.trim_end_matches('/'),
        digest.hex()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            match data {
                Some(d) => {
                    h.set_size(d.len() as u64);
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_cksum();
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_cksum();
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn refs_json(names: &[(&str, &str)]) -> Vec<u8> {
        let tags: Vec<serde_json::Value> = names
            .iter()
            .map(
                |(t, n)| serde_json::json!({"name": t, "from": {"kind": "DockerImage", "name": n}}),
            )
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "kind": "ImageStream", "apiVersion": "image.openshift.io/v1",
            "metadata": {"name": "4.16.1"}, "spec": {"tags": tags}
        }))
        .unwrap()
    }

    fn digest_ref(n: u8) -> String {
        format!("quay.io/o/art@{}", Digest::of(&[n]))
    }

    fn apply(files: &mut PayloadFiles, t: Vec<u8>) {
        let gz = {
            use std::io::Write as _;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&t).unwrap();
            e.finish().unwrap()
        };
        files
            .apply_layer(&gz[..], LayerCompression::Gzip, "r", &Digest::of(&gz))
            .unwrap();
    }

    #[test]
    fn later_layers_win_and_whiteouts_remove() {
        let meta = br#"{"kind":"cincinnati-metadata-v0","version":"4.16.1","previous":["4.16.0"]}"#;
        let one = refs_json(&[("cli", &digest_ref(1))]);
        let two = refs_json(&[("cli", &digest_ref(2)), ("etcd", &digest_ref(3))]);
        let mut f = PayloadFiles::default();
        apply(
            &mut f,
            tar(&[
                ("release-manifests", None),
                ("release-manifests/image-references", Some(&one)),
                ("./release-manifests/release-metadata", Some(meta)),
            ]),
        );
        apply(
            &mut f,
            tar(&[("release-manifests/image-references", Some(&two))]),
        );
        let p = f.parse("r").unwrap();
        assert_eq!(p.version, "4.16.1");
        assert_eq!(p.previous, ["4.16.0"]);
        let got: Vec<String> = p.components.values().map(|r| r.to_string()).collect();
        assert_eq!(got, [digest_ref(2), digest_ref(3)]);
        // A whiteout removes the metadata: the image is no release any more.
        apply(
            &mut f,
            tar(&[("release-manifests/.wh.release-metadata", Some(b""))]),
        );
        assert!(matches!(
            f.parse("r"),
            Err(Error::Missing {
                path: RELEASE_METADATA,
                ..
            })
        ));
        // An opaque directory hides lower layers but keeps its own layer's files.
        let mut g = f.clone();
        apply(
            &mut g,
            tar(&[
                ("release-manifests/release-metadata", Some(meta)),
                ("release-manifests/.wh..wh..opq", Some(b"")),
            ]),
        );
        assert!(g.release_metadata.is_some());
        assert!(g.image_references.is_none());
    }

    #[test]
    fn a_component_by_tag_is_refused_naming_it() {
        let refs = refs_json(&[("cli", "quay.io/o/art:latest")]);
        let e = parse_image_references(&refs, "quay.io/o/rel:4").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::NotByDigest { .. }));
        assert!(
            msg.contains("quay.io/o/rel:4") && msg.contains("\"cli\""),
            "{msg}"
        );
        assert!(msg.contains("quay.io/o/art:latest"), "{msg}");
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let big = vec![b' '; MAX_PAYLOAD_FILE as usize + 1];
        let t = tar(&[("release-manifests/image-references", Some(&big))]);
        let e = PayloadFiles::default()
            .apply_layer(&t[..], LayerCompression::None, "r", &Digest::of(b"l"))
            .unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    }

    #[test]
    fn config_map_as_oc_writes_it() {
        let d = Digest::of(b"release");
        let yaml = signature_config_map(&d, &[b"one".to_vec(), b"two".to_vec()]);
        let v: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        let prefix = format!("sha256-{}", d.hex());
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "ConfigMap");
        assert_eq!(v["metadata"]["name"], prefix);
        assert_eq!(v["metadata"]["namespace"], SIGNATURE_NAMESPACE);
        assert_eq!(v["metadata"]["labels"][SIGNATURE_LABEL], "");
        assert_eq!(v["binaryData"][format!("{prefix}-1")], "b25l");
        assert_eq!(v["binaryData"][format!("{prefix}-2")], "dHdv");
        assert_eq!(
            signature_url("https://s/x/", &d, 2),
            format!("https://s/x/sha256={}/signature-2", d.hex())
        );
    }
}
