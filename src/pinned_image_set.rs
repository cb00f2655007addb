//! OpenShift `PinnedImageSet` manifests (`machineconfiguration.openshift.io`) for the images a
//! bundle carries: on an MCO-managed node MCO owns CRI-O's pins, so the pins that survive are
//! the ones a `PinnedImageSet` asks for (MCO then finds the loaded images present and pulls
//! nothing).
//!
//! Facts from openshift/api (`machineconfiguration/{v1,v1alpha1}/types_pinnedimageset.go`,
//! `features/features.go` of each `release-4.x` branch):
//! - `v1alpha1`: OpenShift 4.16–4.18, served only with the `PinnedImages` feature gate
//!   (TechPreviewNoUpgrade). `v1`: from 4.19; 4.19.0 still gated it, the gate was lifted to
//!   Default in a 4.19 z-stream (openshift/api d37c9b385, 2025-06-20) and is on from 4.20.
//! - Both: cluster-scoped; `spec.pinnedImages` holds 1 to 500 `{name: repo@sha256:…}`.
//! - A pool takes the sets its `machineConfigSelector` selects: the default pools select the
//!   label `machineconfiguration.openshift.io/role: worker` or `master` (single-node and
//!   compact clusters have only `master` nodes).
//!
//! One YAML stream, `---`-separated, holds every set: `oc apply -f FILE` takes it whole, and
//! it is written atomically as one file.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::reference::{PinnedRef, Reference};

/// The most images one set may hold (the CRD's `maxItems`).
pub const MAX_IMAGES: usize = 500;

/// The label a pool's `machineConfigSelector` matches.
pub const ROLE_LABEL: &str = "machineconfiguration.openshift.io/role";

/// The pool a set is for when none is named.
pub const DEFAULT_POOL: &str = "worker";

/// Which version of the API the cluster serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Api {
    /// OpenShift 4.19 and later.
    #[default]
    V1,
    /// OpenShift 4.16–4.18 (TechPreviewNoUpgrade).
    V1alpha1,
}

impl Api {
    pub fn api_version(self) -> &'static str {
        match self {
            Api::V1 => "machineconfiguration.openshift.io/v1",
            Api::V1alpha1 => "machineconfiguration.openshift.io/v1alpha1",
        }
    }
}

impl std::str::FromStr for Api {
    type Err = String;

    fn from_str(s: &str) -> Result<Api, String> {
        match s {
            "v1" => Ok(Api::V1),
            "v1alpha1" => Ok(Api::V1alpha1),
            _ => Err(format!(
                "unknown PinnedImageSet API \"{}\": expected v1 or v1alpha1",
                crate::text::excerpt(s, 40)
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "\"{name}\" is not a valid name for a PinnedImageSet (lowercase letters, digits, `-` and `.`, at most 253 characters)"
    )]
    BadName { name: String },
    #[error(
        "\"{pool}\" is not a valid pool name (lowercase letters, digits and `-`, at most 63 characters, e.g. worker or master)"
    )]
    BadPool { pool: String },
    #[error(
        "{pin} cannot be pinned by a PinnedImageSet: it must be an exact `repo@sha256:…` reference"
    )]
    InvalidPin { pin: String },
    #[error("a PinnedImageSet needs at least one image")]
    NoImages,
}

/// One set: its name, the pool it targets and its images (sorted, unique).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedImageSet {
    pub name: String,
    pub pool: String,
    pub images: Vec<String>,
}

/// The sets that pin `refs` on every pool of `pools` (sorted, unique; [`DEFAULT_POOL`] when
/// empty): one per pool named `{base}-{pool}`, or, beyond [`MAX_IMAGES`] images, several
/// named `{base}-{pool}-1`, `-2`, … holding the sorted images in order. The same inputs
/// always give the same names and contents.
pub fn sets(
    base: &str,
    pools: &[String],
    refs: &[PinnedRef],
) -> Result<Vec<PinnedImageSet>, Error> {
    let images = exact_pins(refs)?;
    if images.is_empty() {
        return Err(Error::NoImages);
    }
    let mut pools: BTreeSet<&str> = pools.iter().map(String::as_str).collect();
    if pools.is_empty() {
        pools.insert(DEFAULT_POOL);
    }
    let chunks: Vec<&[String]> = images.chunks(MAX_IMAGES).collect();
    let mut out = Vec::new();
    for pool in pools {
        if !is_dns_label(pool) {
            return Err(Error::BadPool { pool: pool.into() });
        }
        for (i, chunk) in chunks.iter().enumerate() {
            let name = if chunks.len() == 1 {
                format!("{base}-{pool}")
            } else {
                format!("{base}-{pool}-{}", i + 1)
            };
            if !is_dns_subdomain(&name) {
                return Err(Error::BadName { name });
            }
            out.push(PinnedImageSet {
                name,
                pool: pool.to_string(),
                images: chunk.to_vec(),
            });
        }
    }
    Ok(out)
}

/// `sets` as one YAML stream of `api`'s documents, separated by `---`.
pub fn render(api: Api, sets: &[PinnedImageSet]) -> String {
    render_labelled(api, sets, &[])
}

/// [`render`], with `labels` beside the role label of every set (e.g. a release's name and
/// version). Keys and values must be valid label keys and values (checked by
/// [`is_label_value`] for values); values are quoted, so `4.16` stays a string.
pub fn render_labelled(api: Api, sets: &[PinnedImageSet], labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for set in sets {
        let _ = write!(
            out,
            "---\napiVersion: {}\nkind: PinnedImageSet\nmetadata:\n  name: {}\n  labels:\n    {ROLE_LABEL}: {}\n",
            api.api_version(),
            set.name,
            set.pool
        );
        for (k, v) in labels {
            let _ = writeln!(out, "    {k}: \"{v}\"");
        }
        out.push_str("spec:\n  pinnedImages:\n");
        for image in &set.images {
            // Exact references (checked by `sets`): nothing in them needs escaping.
            let _ = writeln!(out, "    - name: \"{image}\"");
        }
    }
    out
}

/// The pins as MCO takes them: exact `repo@digest` references, sorted and unique.
fn exact_pins(refs: &[PinnedRef]) -> Result<Vec<String>, Error> {
    let mut pins = BTreeSet::new();
    for r in refs {
        let s = r.to_string();
        let parsed = s.parse::<Reference>().ok();
        let exact =
            parsed.is_some_and(|p| p.tag().is_none() && p.digest().is_some() && p.to_string() == s);
        if s.contains('*') || !exact {
            return Err(Error::InvalidPin { pin: s });
        }
        pins.insert(s);
    }
    Ok(pins.into_iter().collect())
}

/// A Kubernetes label value: at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 label: a pool name that is also a valid label value.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A DNS-1123 subdomain (the rules of `metadata.name`).
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Digest;
    use serde_json::Value;

    fn pins(n: usize) -> Vec<PinnedRef> {
        (0..n)
            .map(|i| PinnedRef {
                name: format!("quay.io/t/img{i:04}"),
                digest: Digest::of(i.to_string().as_bytes()),
            })
            .collect()
    }

    fn docs(yaml: &str) -> Vec<Value> {
        serde_saphyr::from_multiple(yaml).unwrap()
    }

    #[test]
    fn one_set_per_pool_in_each_api() {
        let refs = pins(3);
        let mut want: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
        want.sort();
        for (api, version) in [
            (Api::V1, "machineconfiguration.openshift.io/v1"),
            (Api::V1alpha1, "machineconfiguration.openshift.io/v1alpha1"),
        ] {
            let pools = vec!["worker".to_string(), "master".to_string()];
            // Given twice and reversed: the same sets.
            let mut refs2 = refs.clone();
            refs2.reverse();
            refs2.push(refs[0].clone());
            let s = sets("pinbundle-0123456789ab", &pools, &refs2).unwrap();
            let d = docs(&render(api, &s));
            assert_eq!(d.len(), 2);
            for (doc, pool) in d.iter().zip(["master", "worker"]) {
                assert_eq!(doc["apiVersion"], version);
                assert_eq!(doc["kind"], "PinnedImageSet");
                assert_eq!(
                    doc["metadata"]["name"],
                    format!("pinbundle-0123456789ab-{pool}")
                );
                assert_eq!(
                    doc["metadata"]["labels"],
                    serde_json::json!({ ROLE_LABEL: pool })
                );
                let names: Vec<&str> = doc["spec"]["pinnedImages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                assert_eq!(names, want);
                assert_eq!(doc.as_object().unwrap().len(), 4, "{doc}");
            }
        }
    }

    #[test]
    fn beyond_500_images_numbered_sets_per_pool() {
        let refs = pins(MAX_IMAGES + 1);
        let pools = vec!["worker".to_string(), "master".to_string()];
        let s = sets("pb", &pools, &refs).unwrap();
        let d = docs(&render(Api::V1, &s));
        let names: Vec<&str> = d
            .iter()
            .map(|v| v["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["pb-master-1", "pb-master-2", "pb-worker-1", "pb-worker-2"]
        );
        let counts: Vec<usize> = d
            .iter()
            .map(|v| v["spec"]["pinnedImages"].as_array().unwrap().len())
            .collect();
        assert_eq!(counts, [MAX_IMAGES, 1, MAX_IMAGES, 1]);
        // Every image once per pool, none lost at the cut.
        let worker: BTreeSet<&str> = d[2..]
            .iter()
            .flat_map(|v| v["spec"]["pinnedImages"].as_array().unwrap())
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(worker.len(), MAX_IMAGES + 1);
        assert_eq!(d[0]["metadata"]["labels"][ROLE_LABEL], "master");
        // Exactly 500: one set, unnumbered.
        let s = sets("pb", &[], &pins(MAX_IMAGES)).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "pb-worker");
    }

    #[test]
    fn refuses_bad_pools_names_and_pins() {
        assert!(matches!(
            sets("pb", &["Worker".into()], &pins(1)),
            Err(Error::BadPool { .. })
        ));
        assert!(matches!(
            sets("Bad_Name", &[], &pins(1)),
            Err(Error::BadName { .. })
        ));
        assert!(matches!(sets("pb", &[], &[]), Err(Error::NoImages)));
        let star = PinnedRef {
            name: "quay.io/a*".into(),
            digest: Digest::of(b"x"),
        };
        assert!(matches!(
            sets("pb", &[], &[star]),
            Err(Error::InvalidPin { .. })
        ));
    }
}
