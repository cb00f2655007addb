//! A site mirror: where it keeps each image of a bundle, and the files that send a cluster's
//! nodes to it when they pull by the images' original names.
//!
//! One mapping serves every consumer: `quay.io/ns/repo` is kept at `MIRROR/PREFIX/ns/repo`
//! (the source registry's host is dropped, as oc-mirror does). It is the same for every
//! repository of a registry, which containerd needs (its `hosts.toml` maps a whole registry
//! host), and it must be one-to-one: `quay.io/a/b` and `docker.io/a/b` would share a mirror
//! repository, so such a bundle is refused rather than served the wrong image.
//!
//! The files, each what its consumer defines:
//! - OpenShift `ImageDigestMirrorSet` / `ImageTagMirrorSet` (`config.openshift.io/v1`;
//!   openshift/api `config/v1/types_image_{digest,tag}_mirrorset.go`): one entry per source
//!   repository, rendered by MCO into the nodes' `registries.conf`.
//! - A `registries.conf.d` drop-in (containers-registries.conf(5), v2 format) for CRI-O and
//!   podman nodes that MCO does not manage. Within one file each `prefix` appears once; a later
//!   drop-in with the same `prefix` replaces ours.
//! - containerd's `certs.d/<registry>/hosts.toml` (containerd `docs/hosts.md`), one per source
//!   registry: `override_path` keeps the mirror's prefix as the API root.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;

use serde::Serialize;

use crate::reference::{DOCKER_HUB, Reference};
use crate::text::excerpt;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "\"{}\" is not a mirror: expected HOST[:PORT][/PREFIX] (for example mirror.example:5000/site), a host with a dot or a port, or localhost",
        excerpt(.input, 200)
    )]
    BadMirror { input: String },
    #[error(
        "{first} and {second} would both be kept at {mirror}: give them different prefixes (two bundles, two mirrors or prefixes)"
    )]
    Collision {
        first: String,
        second: String,
        mirror: String,
    },
    #[error("{source_repo} cannot be mirrored under {mirror}: {reason}")]
    TooLong {
        source_repo: String,
        mirror: String,
        reason: String,
    },
}

/// `HOST[:PORT][/PREFIX]`: a registry that holds (or will hold) a bundle's images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    domain: String,
    prefix: String,
}

impl Mirror {
    /// The registry host, with its port when given.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path every image is kept under (may be empty).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where `source` (a normalised repository name, no tag or digest) is kept.
    pub fn repository(&self, source: &Reference) -> String {
        if self.prefix.is_empty() {
            format!("{}/{}", self.domain, source.path())
        } else {
            format!("{}/{}/{}", self.domain, self.prefix, source.path())
        }
    }
}

impl FromStr for Mirror {
    type Err = Error;

    fn from_str(s: &str) -> Result<Mirror, Error> {
        let bad = || Error::BadMirror { input: s.into() };
        let first = s.split('/').next().unwrap_or_default();
        // A bare `mirror/x` is a Docker Hub path to every container tool: say so instead.
        let explicit_domain = first.contains('.') || first.contains(':') || first == "localhost";
        if !explicit_domain || s.ends_with('/') {
            return Err(bad());
        }
        // The reference grammar decides what a host, port and path may be.
        let probe: Reference = format!("{s}/x").parse().map_err(|_| bad())?;
        if probe.domain() != first || probe.tag().is_some() || probe.digest().is_some() {
            return Err(bad());
        }
        let prefix = probe.path().strip_suffix("x").unwrap_or_default();
        Ok(Mirror {
            domain: probe.domain().to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }
}

/// One source repository and where the mirror keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// `domain/path`, as the nodes' pods name it.
    pub source: String,
    /// `MIRROR/PREFIX/path`.
    pub mirror: String,
    /// The source registry's host (containerd's `certs.d` directory name).
    pub registry: String,
    /// Whether some image of this repository was asked for by tag (then tag pulls are
    /// mirrored too).
    pub tagged: bool,
}

/// The mapping of every repository of `images` (each `(name, tagged)`), sorted by source,
/// each once; refused when two sources would share a mirror repository.
pub fn mappings(mirror: &Mirror, images: &[(Reference, bool)]) -> Result<Vec<Mapping>, Error> {
    let mut by_source: BTreeMap<String, Mapping> = BTreeMap::new();
    let mut by_mirror: BTreeMap<String, String> = BTreeMap::new();
    for (image, tagged) in images {
        let source = image.name();
        if let Some(m) = by_source.get_mut(&source) {
            m.tagged |= tagged;
            continue;
        }
        let target = mirror.repository(image);
        if let Err(e) = target.parse::<Reference>() {
            return Err(Error::TooLong {
                source_repo: source,
                mirror: format!("{}/{}", mirror.domain, mirror.prefix),
                reason: e.to_string(),
            });
        }
        if let Some(first) = by_mirror.insert(target.clone(), source.clone()) {
            return Err(Error::Collision {
                first,
                second: source,
                mirror: target,
            });
        }
        by_source.insert(
            source.clone(),
            Mapping {
                source,
                mirror: target,
                registry: image.domain().to_string(),
                tagged: *tagged,
            },
        );
    }
    Ok(by_source.into_values().collect())
}

/// How the nodes reach the mirror.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS with a certificate the node trusts; `ca` is the CA file's path on the nodes
    /// (containerd reads it from `hosts.toml`; CRI-O and podman from
    /// `/etc/containers/certs.d/HOST/ca.crt`).
    #[default]
    Https,
    HttpsCa(String),
    /// HTTPS without verifying the certificate.
    SkipVerify,
    /// Plain HTTP.
    PlainHttp,
}

/// The `ImageDigestMirrorSet` named `name` for `maps` (YAML).
pub fn image_digest_mirror_set(name: &str, maps: &[Mapping]) -> String {
    mirror_set(
        name,
        "ImageDigestMirrorSet",
        "imageDigestMirrors",
        maps.iter(),
    )
}

/// The `ImageTagMirrorSet` named `name` for the repositories asked for by tag, if any.
pub fn image_tag_mirror_set(name: &str, maps: &[Mapping]) -> Option<String> {
    let tagged: Vec<&Mapping> = maps.iter().filter(|m| m.tagged).collect();
    (!tagged.is_empty()).then(|| {
        mirror_set(
            name,
            "ImageTagMirrorSet",
            "imageTagMirrors",
            tagged.into_iter(),
        )
    })
}

fn mirror_set<'a>(
    name: &str,
    kind: &str,
    field: &str,
    maps: impl Iterator<Item = &'a Mapping>,
) -> String {
    let mut out = format!(
        "apiVersion: config.openshift.io/v1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n  {field}:\n"
    );
    for m in maps {
        // Both are normalised references (checked by `mappings`): nothing to escape.
        let _ = write!(
            out,
            "    - source: \"{}\"\n      mirrors:\n        - \"{}\"\n",
            m.source, m.mirror
        );
    }
    out
}

#[derive(Serialize)]
struct RegistriesConf<'a> {
    registry: Vec<RegistryTable<'a>>,
}

#[derive(Serialize)]
struct RegistryTable<'a> {
    prefix: &'a str,
    location: &'a str,
    mirror: [MirrorTable<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct MirrorTable<'a> {
    location: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    insecure: bool,
    pull_from_mirror: &'a str,
}

/// A `registries.conf.d` drop-in that sends pulls of every source repository, by digest and
/// by tag, to the mirror first.
pub fn registries_conf(maps: &[Mapping], transport: &Transport) -> String {
    let insecure = matches!(transport, Transport::SkipVerify | Transport::PlainHttp);
    let conf = RegistriesConf {
        registry: maps
            .iter()
            .map(|m| RegistryTable {
                prefix: &m.source,
                location: &m.source,
                mirror: [MirrorTable {
                    location: &m.mirror,
                    insecure,
                    pull_from_mirror: if m.tagged { "all" } else { "digest-only" },
                }],
            })
            .collect(),
    };
    let header = "# Written by pinbundle: pull these repositories from the site mirror first.\n";
    // Plain strings and booleans only: serialising cannot fail.
    format!("{header}{}", toml::to_string(&conf).unwrap_or_default())
}

#[derive(Serialize)]
struct HostsToml {
    server: String,
    host: BTreeMap<String, HostTable>,
}

#[derive(Serialize)]
struct HostTable {
    capabilities: Vec<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    override_path: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    skip_verify: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
}

/// One containerd `hosts.toml`: for `certs.d/<registry>/hosts.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    pub registry: String,
    pub contents: String,
}

/// containerd's `hosts.toml` for every source registry of `maps`: the mirror first, for
/// pulls and tag resolution, the registry itself after it.
pub fn containerd_hosts(
    mirror: &Mirror,
    maps: &[Mapping],
    transport: &Transport,
) -> Vec<HostsFile> {
    let scheme = if *transport == Transport::PlainHttp {
        "http"
    } else {
        "https"
    };
    // Without a prefix containerd adds `/v2` itself; with one, the URL is the API root.
    let (url, override_path) = if mirror.prefix.is_empty() {
        (format!("{scheme}://{}", mirror.domain), false)
    } else {
        (
            format!("{scheme}://{}/v2/{}", mirror.domain, mirror.prefix),
            true,
        )
    };
    let mut registries: Vec<&str> = maps.iter().map(|m| m.registry.as_str()).collect();
    registries.sort_unstable();
    registries.dedup();
    registries
        .into_iter()
        .map(|registry| {
            let server = if registry == DOCKER_HUB {
                "https://registry-1.docker.io".to_string()
            } else {
                format!("https://{registry}")
            };
            let table = HostTable {
                capabilities: vec!["pull", "resolve"],
                override_path,
                skip_verify: *transport == Transport::SkipVerify,
                ca: match transport {
                    Transport::HttpsCa(ca) => Some(ca.clone()),
                    _ => None,
                },
            };
            let hosts = HostsToml {
                server,
                host: BTreeMap::from([(url.clone(), table)]),
            };
            HostsFile {
                registry: registry.to_string(),
                contents: toml::to_string(&hosts).unwrap_or_default(),
            }
        })
        .collect()
}

/// One file of [`files`]: its path relative to the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorFile {
    pub name: String,
    /// `ImageDigestMirrorSet`, `ImageTagMirrorSet`, `registries.conf` or `hosts.toml`.
    pub kind: &'static str,
    /// How many repositories (or registries, for `hosts.toml`) it maps.
    pub objects: usize,
    pub contents: String,
}

/// Every file that sends nodes to `mirror` for the images of `bundle`: the OpenShift
/// objects (named `name`) at the top, for `oc apply -f DIR`, and the node files under
/// `nodes/` (which `oc apply` without `-R` leaves alone): `nodes/registries.conf.d/` and
/// `nodes/containerd/certs.d/<registry>/hosts.toml`.
pub fn files(
    bundle: &crate::bundle::format::BundleManifest,
    name: &str,
    mirror: &Mirror,
    transport: &Transport,
) -> Result<Vec<MirrorFile>, Error> {
    let images: Vec<(Reference, bool)> = bundle
        .images
        .iter()
        // Names in a read bundle are checked by `verify`; one that does not parse has no
        // mirror entry rather than a malformed one.
        .filter_map(|i| Some((i.name.parse::<Reference>().ok()?, i.tag.is_some())))
        .collect();
    let maps = mappings(mirror, &images)?;
    let mut out = vec![MirrorFile {
        name: format!("{name}-imagedigestmirrorset.yaml"),
        kind: "ImageDigestMirrorSet",
        objects: maps.len(),
        contents: image_digest_mirror_set(name, &maps),
    }];
    if let Some(itms) = image_tag_mirror_set(name, &maps) {
        out.push(MirrorFile {
            name: format!("{name}-imagetagmirrorset.yaml"),
            kind: "ImageTagMirrorSet",
            objects: maps.iter().filter(|m| m.tagged).count(),
            contents: itms,
        });
    }
    out.push(MirrorFile {
        name: format!("nodes/registries.conf.d/99-{name}.conf"),
        kind: "registries.conf",
        objects: maps.len(),
        contents: registries_conf(&maps, transport),
    });
    for h in containerd_hosts(mirror, &maps, transport) {
        out.push(MirrorFile {
            name: format!("nodes/containerd/certs.d/{}/hosts.toml", h.registry),
            kind: "hosts.toml",
            objects: 1,
            contents: h.contents,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn parses_mirrors() {
        let m: Mirror = "mirror.example:5000/site/ocp".parse().unwrap();
        assert_eq!(
            (m.domain(), m.prefix()),
            ("mirror.example:5000", "site/ocp")
        );
        assert_eq!(
            m.repository(&r("quay.io/openshift-release-dev/ocp-v4.0-art-dev")),
            "mirror.example:5000/site/ocp/openshift-release-dev/ocp-v4.0-art-dev"
        );
        let m: Mirror = "localhost".parse().unwrap();
        assert_eq!(m.repository(&r("busybox")), "localhost/library/busybox");
        let m: Mirror = "10.0.0.1:443".parse().unwrap();
        assert_eq!(m.prefix(), "");
        for bad in [
            "",
            "mirror",
            "mirror/site",
            "https://mirror.example",
            "mirror.example/Site",
            "mirror.example/site/",
            "mirror.example/site:tag",
            "mirror.example:99999",
            "mirror.example/a b",
        ] {
            assert!(bad.parse::<Mirror>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mappings_are_sorted_unique_and_one_to_one() {
        let m: Mirror = "mirror.example/site".parse().unwrap();
        let maps = mappings(
            &m,
            &[
                (r("quay.io/b/c:v1"), false),
                (r("busybox"), true),
                (r("quay.io/b/c"), true),
            ],
        )
        .unwrap();
        let got: Vec<(&str, &str, bool)> = maps
            .iter()
            .map(|m| (m.source.as_str(), m.mirror.as_str(), m.tagged))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "docker.io/library/busybox",
                    "mirror.example/site/library/busybox",
                    true
                ),
                ("quay.io/b/c", "mirror.example/site/b/c", true),
            ]
        );
        let e = mappings(
            &m,
            &[(r("quay.io/a/b"), false), (r("docker.io/a/b"), false)],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "quay.io/a/b and docker.io/a/b would both be kept at mirror.example/site/a/b"
            ),
            "{e}"
        );
        let long = format!("quay.io/{}", "a".repeat(240));
        let e = mappings(&m, &[(r(&long), false)]).unwrap_err();
        assert!(matches!(e, Error::TooLong { .. }), "{e}");
    }

    #[test]
    fn mirror_sets_have_the_fields_openshift_defines() {
        let m: Mirror = "mirror.example/site".parse().unwrap();
        let maps = mappings(&m, &[(r("quay.io/a/b"), false), (r("quay.io/a/c"), true)]).unwrap();
        let idms: serde_json::Value =
            serde_saphyr::from_str(&image_digest_mirror_set("pb-1", &maps)).unwrap();
        assert_eq!(
            idms,
            serde_json::json!({
                "apiVersion": "config.openshift.io/v1",
                "kind": "ImageDigestMirrorSet",
                "metadata": {"name": "pb-1"},
                "spec": {"imageDigestMirrors": [
                    {"source": "quay.io/a/b", "mirrors": ["mirror.example/site/a/b"]},
                    {"source": "quay.io/a/c", "mirrors": ["mirror.example/site/a/c"]},
                ]},
            })
        );
        let itms: serde_json::Value =
            serde_saphyr::from_str(&image_tag_mirror_set("pb-1", &maps).unwrap()).unwrap();
        assert_eq!(itms["kind"], "ImageTagMirrorSet");
        assert_eq!(
            itms["spec"]["imageTagMirrors"],
            serde_json::json!([{"source": "quay.io/a/c", "mirrors": ["mirror.example/site/a/c"]}])
        );
        assert!(image_tag_mirror_set("pb-1", &maps[..1]).is_none());
    }

    #[test]
    fn registries_conf_and_hosts_toml_parse_back() {
        let m: Mirror = "mirror.example:5000/site".parse().unwrap();
        let maps = mappings(&m, &[(r("quay.io/a/b"), false), (r("busybox"), true)]).unwrap();
        let conf: toml::Table =
            toml::from_str(&registries_conf(&maps, &Transport::PlainHttp)).unwrap();
        let regs = conf["registry"].as_array().unwrap();
        assert_eq!(regs.len(), 2);
        assert_eq!(regs[1]["prefix"].as_str(), Some("quay.io/a/b"));
        assert_eq!(regs[1]["location"].as_str(), Some("quay.io/a/b"));
        let mirror = &regs[1]["mirror"][0];
        assert_eq!(
            mirror["location"].as_str(),
            Some("mirror.example:5000/site/a/b")
        );
        assert_eq!(mirror["insecure"].as_bool(), Some(true));
        assert_eq!(mirror["pull-from-mirror"].as_str(), Some("digest-only"));
        assert_eq!(
            regs[0]["mirror"][0]["pull-from-mirror"].as_str(),
            Some("all")
        );
        let conf: toml::Table = toml::from_str(&registries_conf(&maps, &Transport::Https)).unwrap();
        assert!(conf["registry"][0]["mirror"][0].get("insecure").is_none());

        let files = containerd_hosts(&m, &maps, &Transport::HttpsCa("/etc/pki/site.crt".into()));
        let dirs: Vec<&str> = files.iter().map(|f| f.registry.as_str()).collect();
        assert_eq!(dirs, ["docker.io", "quay.io"]);
        let hub: toml::Table = toml::from_str(&files[0].contents).unwrap();
        assert_eq!(hub["server"].as_str(), Some("https://registry-1.docker.io"));
        let host = &hub["host"]["https://mirror.example:5000/v2/site"];
        assert_eq!(host["override_path"].as_bool(), Some(true));
        assert_eq!(host["ca"].as_str(), Some("/etc/pki/site.crt"));
        assert_eq!(
            host["capabilities"],
            toml::Value::Array(vec!["pull".into(), "resolve".into()])
        );
        let bare: Mirror = "mirror.example".parse().unwrap();
        let files = containerd_hosts(&bare, &maps, &Transport::PlainHttp);
        let quay: toml::Table = toml::from_str(&files[1].contents).unwrap();
        let host = &quay["host"]["http://mirror.example"];
        assert!(host.get("override_path").is_none(), "{quay}");
    }
}
