//! The signature policy of the ORIGINAL names: `load` admits an image only when pulling its
//! original reference through this node's CRI-O would, and makes skopeo apply that decision.
//!
//! skopeo judges the source it reads, `docker://127.0.0.1:PORT/<served name>@<digest>`: under
//! the node's own policy that loopback name falls to `default` (OpenShift's
//! `allowedRegistries` makes it `reject`), and a repository's signature requirement is
//! never seen. So `load` evaluates the policy for each image's original name here, refuses
//! what it rejects or what needs signatures (bundles carry none yet), and hands skopeo a
//! generated policy ([`Admission::skopeo_policy`]) whose only scopes are the loopback
//! repositories, each carrying the requirements of its original scope, under
//! `default: reject`.
//!
//! Facts (containers/image `signature/policy_config.go`, `policy_eval.go`,
//! `docker/policyconfiguration/naming.go`):
//! - The file is a JSON object with `default` (required) and `transports`; any other key, a
//!   requirement list that is empty, or a requirement of an unknown type makes the whole
//!   policy invalid, whatever image is asked about.
//! - For the `docker` transport the first scope present wins, searched in this order: the
//!   full reference (`host/ns/repo:tag` or `…@digest`), the repository, each parent
//!   namespace up to the host (with its port), the wildcard domains `*.example.com`,
//!   `*.com` (port stripped), the transport default `""`; then the global `default`.
//! - Every requirement of the list must accept. `signedBaseLayer` is parsed but accepts
//!   nothing.
//! - CRI-O's `[crio.image] signature_policy` names the file (empty: the system default,
//!   `/etc/containers/policy.json`); from 1.33 a pod's namespace may have its own file
//!   under `signature_policy_dir` (`<dir>/<namespace>.json`), used instead for that pod.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::bundle::format::ImageEntry;
use crate::registry::server::served_name;

/// The policy CRI-O (and every containers/image tool) uses when none is configured.
pub const DEFAULT_POLICY: &str = "/etc/containers/policy.json";
/// CRI-O's default `signature_policy_dir` (per-namespace policies, CRI-O ≥ 1.33).
pub const DEFAULT_POLICY_DIR: &str = "/etc/crio/policies";

/// A policy file that cannot be used at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error(
        "cannot read the signature policy `{}`; nothing was changed (CRI-O could not pull under it either)",
        path.display()
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the signature policy `{}` is invalid ({detail}); nothing was changed (see containers-policy.json(5))",
        path.display()
    )]
    Invalid { path: PathBuf, detail: String },
}

/// Images the policy does not admit; nothing was touched.
#[derive(Debug, thiserror::Error)]
#[error("{}", reasons.join("; "))]
pub struct Refused {
    /// One sentence per image refused.
    pub reasons: Vec<String>,
    /// The decision for every image, in the manifest's order.
    pub decisions: Vec<Decision>,
}

/// A requirement type of containers-policy.json(5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InsecureAcceptAnything,
    Reject,
    SignedBy,
    SigstoreSigned,
    SignedBaseLayer,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "insecureAcceptAnything" => Kind::InsecureAcceptAnything,
            "reject" => Kind::Reject,
            "signedBy" => Kind::SignedBy,
            "sigstoreSigned" => Kind::SigstoreSigned,
            "signedBaseLayer" => Kind::SignedBaseLayer,
            _ => return None,
        })
    }
}

/// One requirement: its type, and the object as written (copied into skopeo's policy).
#[derive(Debug, Clone)]
struct Requirement {
    kind: Kind,
    raw: Value,
}

/// A parsed containers-policy.json(5).
#[derive(Debug, Clone)]
pub struct Policy {
    pub path: PathBuf,
    default: Vec<Requirement>,
    /// `transports.docker`, scope → requirements.
    docker: BTreeMap<String, Vec<Requirement>>,
}

/// What the policy decided for one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The policy file evaluated.
    pub file: PathBuf,
    /// The rule that applies: `transports.docker["quay.io/org"]`, `transports.docker[""]`
    /// or `default`.
    pub scope: String,
    /// The deciding requirement type: `reject` if any, else a signature type if any
    /// (`signedBy`, `sigstoreSigned`, `signedBaseLayer`), else `insecureAcceptAnything`.
    pub requirement: String,
    pub admitted: bool,
}

impl Policy {
    /// Reads and checks `path` as containers/image would.
    pub fn read(path: &Path) -> Result<Policy, PolicyError> {
        let bytes = fs_err::read(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(path, &bytes)
    }

    /// Parses `bytes` (read from `path`).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Policy, PolicyError> {
        let invalid = |detail: String| PolicyError::Invalid {
            path: path.to_path_buf(),
            detail,
        };
        let doc: serde_json::Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if let Some(k) = doc.keys().find(|k| *k != "default" && *k != "transports") {
            return Err(invalid(format!("unknown key {k:?}")));
        }
        let default = requirements(doc.get("default"), "default")
            .map_err(invalid)?
            .ok_or_else(|| invalid("the \"default\" policy is missing".into()))?;
        let mut docker = BTreeMap::new();
        if let Some(t) = doc.get("transports") {
            let t = t
                .as_object()
                .ok_or_else(|| invalid("\"transports\" is not an object".into()))?;
            // containers/image parses every transport's scopes: an error anywhere counts.
            for (transport, scopes) in t {
                let scopes = scopes
                    .as_object()
                    .ok_or_else(|| invalid(format!("transports.{transport} is not an object")))?;
                for (scope, reqs) in scopes {
                    let label = scope_label(transport, scope);
                    let reqs = requirements(Some(reqs), &label)
                        .map_err(invalid)?
                        .unwrap_or_default();
                    if transport == "docker" {
                        docker.insert(scope.clone(), reqs);
                    }
                }
            }
        }
        Ok(Policy {
            path: path.to_path_buf(),
            default,
            docker,
        })
    }

    /// The rule for `identity` (`name:tag` or `name@digest`) of repository `name`: its scope
    /// label and requirements.
    fn rule(&self, identity: &str, name: &str) -> (String, &[Requirement]) {
        std::iter::once(identity.to_string())
            .chain(namespaces(name))
            .chain(std::iter::once(String::new()))
            .find_map(|scope| {
                self.docker
                    .get(&scope)
                    .map(|r| (scope_label("docker", &scope), r.as_slice()))
            })
            .unwrap_or_else(|| ("default".into(), self.default.as_slice()))
    }

    /// The decision for `identity` of repository `name`.
    fn decide(&self, identity: &str, name: &str) -> (Decision, &[Requirement]) {
        let (scope, reqs) = self.rule(identity, name);
        let kinds: Vec<Kind> = reqs.iter().map(|r| r.kind).collect();
        let deciding = [
            Kind::Reject,
            Kind::SigstoreSigned,
            Kind::SignedBy,
            Kind::SignedBaseLayer,
        ]
        .into_iter()
        .find(|k| kinds.contains(k))
        .unwrap_or(Kind::InsecureAcceptAnything);
        let decision = Decision {
            file: self.path.clone(),
            scope,
            requirement: kind_name(deciding).into(),
            admitted: deciding == Kind::InsecureAcceptAnything,
        };
        (decision, reqs)
    }
}

/// Where the policy comes from, in CRI-O's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--signature-policy`: the operator named it.
    Flag,
    /// CRI-O's `[crio.image] signature_policy`.
    Crio,
    /// The system default.
    Default,
}

/// The decisions for a bundle's images, and what skopeo is to be given.
#[derive(Debug, Clone)]
pub struct Admission {
    pub source: Source,
    /// One per image, in the manifest's order.
    pub decisions: Vec<Decision>,
    /// Served repository → the requirements of its original scope, for admitted images.
    grants: BTreeMap<String, Vec<Value>>,
}

/// Evaluates `policy` for each image's original names: `name@digest` (the pin) and, when
/// tagged, `name:tag`; both are stored, so both must be admitted.
///
/// # Errors
/// [`Refused`] naming each image rejected or needing signatures.
pub fn admit(policy: &Policy, source: Source, images: &[ImageEntry]) -> Result<Admission, Refused> {
    let mut decisions = Vec::with_capacity(images.len());
    let mut grants = BTreeMap::new();
    let mut reasons = Vec::new();
    for img in images {
        let identities = std::iter::once(format!("{}@{}", img.name, img.digest))
            .chain(img.tag.iter().map(|t| format!("{}:{t}", img.name)));
        let evaluated: Vec<(Decision, &[Requirement])> =
            identities.map(|id| policy.decide(&id, &img.name)).collect();
        let Some((decision, reqs)) = evaluated
            .iter()
            .find(|(d, _)| !d.admitted)
            .or(evaluated.first())
            .cloned()
        else {
            continue;
        };
        if decision.admitted {
            grants.insert(
                served_name(&img.name),
                reqs.iter().map(|r| r.raw.clone()).collect(),
            );
        } else {
            reasons.push(refusal(&img.reference, &decision, source));
        }
        decisions.push(decision);
    }
    if reasons.is_empty() {
        Ok(Admission {
            source,
            decisions,
            grants,
        })
    } else {
        Err(Refused { reasons, decisions })
    }
}

fn refusal(image: &str, d: &Decision, source: Source) -> String {
    let rule = format!(
        "rule {} of `{}` requires {}",
        d.scope,
        d.file.display(),
        d.requirement
    );
    if d.requirement == kind_name(Kind::Reject) {
        format!("{image} is refused: {rule}; CRI-O would not pull it")
    } else {
        let escape = match source {
            Source::Flag => "",
            _ => {
                "; to load it anyway, pass `--signature-policy FILE` naming a policy that admits it"
            }
        };
        format!(
            "{image} is refused: {rule}, and bundles carry no image signatures yet, so it cannot be admitted as CRI-O would admit a pull{escape}"
        )
    }
}

impl Admission {
    /// The policy skopeo is given for copies from the loopback registry at `addr`: each
    /// admitted image's served repository carries its original scope's requirements, and
    /// everything else is rejected.
    pub fn skopeo_policy(&self, addr: SocketAddr) -> Vec<u8> {
        let scopes: serde_json::Map<String, Value> = self
            .grants
            .iter()
            .map(|(repo, reqs)| (format!("{addr}/{repo}"), Value::Array(reqs.clone())))
            .collect();
        let doc = serde_json::json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": scopes},
        });
        serde_json::to_vec_pretty(&doc).unwrap_or_default()
    }
}

/// Warnings for CRI-O ≥ 1.33's per-namespace policies in `dir`: the pod's namespace is
/// unknown at load time, so a namespace file whose rule for an image rejects it or requires
/// signatures is named (pods in that namespace cannot use the image), never refused.
pub fn namespaced_warnings(dir: &Path, images: &[ImageEntry]) -> Vec<String> {
    let Ok(entries) = fs_err::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let ns = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let policy = match Policy::read(&file) {
            Ok(p) => p,
            Err(e) => {
                out.push(format!(
                    "{e}: CRI-O ≥ 1.33 uses it for pods in namespace `{ns}`"
                ));
                continue;
            }
        };
        for img in images {
            let (d, _) = policy.decide(&format!("{}@{}", img.name, img.digest), &img.name);
            if !d.admitted {
                out.push(format!(
                    "`{}` (CRI-O ≥ 1.33, pods in namespace `{ns}`) has rule {} requiring {} for {}: pods in that namespace cannot run it from this load",
                    file.display(),
                    d.scope,
                    d.requirement,
                    img.reference
                ));
            }
        }
    }
    out
}

/// The requirement list `v` (`None` when absent).
fn requirements(v: Option<&Value>, label: &str) -> Result<Option<Vec<Requirement>>, String> {
    let Some(v) = v else { return Ok(None) };
    let list = v
        .as_array()
        .ok_or_else(|| format!("{label} is not a list of requirements"))?;
    if list.is_empty() {
        return Err(format!(
            "{label}: the list of requirements must not be empty"
        ));
    }
    list.iter()
        .map(|r| {
            let kind = r
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{label}: a requirement without a \"type\""))?;
            let kind = Kind::parse(kind)
                .ok_or_else(|| format!("{label}: unknown requirement type {kind:?}"))?;
            Ok(Requirement {
                kind,
                raw: r.clone(),
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::InsecureAcceptAnything => "insecureAcceptAnything",
        Kind::Reject => "reject",
        Kind::SignedBy => "signedBy",
        Kind::SigstoreSigned => "sigstoreSigned",
        Kind::SignedBaseLayer => "signedBaseLayer",
    }
}

fn scope_label(transport: &str, scope: &str) -> String {
    format!("transports.{transport}[{scope:?}]")
}

/// The scopes after the full reference, as containers/image's `DockerReferenceNamespaces`:
/// the repository, its parent namespaces up to the host, then the wildcard domains.
fn namespaces(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut n = name;
    loop {
        out.push(n.to_string());
        match n.rfind('/') {
            Some(i) => n = &n[..i],
            None => break,
        }
    }
    let mut host = n.split(':').next().unwrap_or(n);
    while let Some(i) = host.find('.') {
        host = &host[i + 1..];
        out.push(format!("*.{host}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::format::media;
    use crate::reference::Digest;

    fn image(name: &str, tag: Option<&str>) -> ImageEntry {
        let digest = Digest::of(name.as_bytes());
        ImageEntry {
            reference: match tag {
                Some(t) => format!("{name}:{t}"),
                None => format!("{name}@{digest}"),
            },
            name: name.into(),
            tag: tag.map(str::to_string),
            digest,
            media_type: media::OCI_MANIFEST.into(),
            platforms: Vec::new(),
            blobs: Vec::new(),
            size: 0,
            uncompressed_size: 0,
        }
    }

    fn policy(json: &str) -> Policy {
        Policy::parse(Path::new("/p.json"), json.as_bytes()).unwrap()
    }

    #[test]
    fn namespaces_in_containers_image_order() {
        assert_eq!(
            namespaces("registry.example.com:5000/ns/app"),
            [
                "registry.example.com:5000/ns/app",
                "registry.example.com:5000/ns",
                "registry.example.com:5000",
                "*.example.com",
                "*.com"
            ]
        );
        assert_eq!(
            namespaces("docker.io/library/busybox"),
            [
                "docker.io/library/busybox",
                "docker.io/library",
                "docker.io",
                "*.io"
            ]
        );
    }

    #[test]
    fn the_first_scope_found_decides() {
        let p = policy(
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{
                "quay.io/org/app:v1":[{"type":"reject"}],
                "quay.io/org":[{"type":"insecureAcceptAnything"}],
                "*.io":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"/k"}],
                "":[{"type":"insecureAcceptAnything"},{"type":"reject"}]},
              "docker-daemon":{"":[{"type":"insecureAcceptAnything"}]}}}"#,
        );
        let d = |id: &str, name: &str| p.decide(id, name).0;
        let ok = d("quay.io/org/app@sha256:x", "quay.io/org/app");
        assert_eq!(ok.scope, r#"transports.docker["quay.io/org"]"#);
        assert!(ok.admitted);
        let tagged = d("quay.io/org/app:v1", "quay.io/org/app");
        assert_eq!(
            (tagged.requirement.as_str(), tagged.admitted),
            ("reject", false)
        );
        let wild = d("ghcr.io/x/y:1", "ghcr.io/x/y");
        assert_eq!(
            (wild.scope.as_str(), wild.requirement.as_str()),
            (r#"transports.docker["*.io"]"#, "signedBy")
        );
        // Every requirement of the list must accept.
        let dflt = d("example.com/a:1", "example.com/a");
        assert_eq!(dflt.scope, r#"transports.docker[""]"#);
        assert!(!dflt.admitted);
        let p = policy(r#"{"default":[{"type":"insecureAcceptAnything"}]}"#);
        assert_eq!(p.decide("a.b/c:1", "a.b/c").0.scope, "default");
    }

    #[test]
    fn invalid_policies_are_refused_whole() {
        for bad in [
            "",
            "[]",
            r#"{"transports":{}}"#,
            r#"{"default":[]}"#,
            r#"{"default":[{"type":"accept"}]}"#,
            r#"{"default":[{"type":"reject"}],"extra":1}"#,
            // An error in another transport still invalidates the file.
            r#"{"default":[{"type":"reject"}],"transports":{"atomic":{"a":[{"type":"nope"}]}}}"#,
        ] {
            let e = Policy::parse(Path::new("/p.json"), bad.as_bytes()).unwrap_err();
            assert!(matches!(e, PolicyError::Invalid { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("/p.json"), "{e}");
        }
    }

    #[test]
    fn admission_refuses_and_grants() {
        let p = policy(
            r#"{"default":[{"type":"reject"}],"transports":{"docker":{
                "quay.io":[{"type":"insecureAcceptAnything"}],
                "quay.io/signed":[{"type":"sigstoreSigned","keyData":"AA==","signedIdentity":{"type":"matchRepository"}}]}}}"#,
        );
        let good = image("quay.io/org/app", Some("v1"));
        let adm = admit(&p, Source::Default, std::slice::from_ref(&good)).unwrap();
        assert!(adm.decisions[0].admitted);
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let generated: Value = serde_json::from_slice(&adm.skopeo_policy(addr)).unwrap();
        assert_eq!(generated["default"][0]["type"], "reject");
        assert_eq!(
            generated["transports"]["docker"]["127.0.0.1:4000/quay.io/org/app"][0]["type"],
            "insecureAcceptAnything"
        );
        assert_eq!(
            generated["transports"]["docker"].as_object().unwrap().len(),
            1
        );

        let images = [
            good,
            image("docker.io/library/x", None),
            image("quay.io/signed/a", None),
        ];
        let r = admit(&p, Source::Crio, &images).unwrap_err();
        assert_eq!(r.reasons.len(), 2);
        assert!(
            r.reasons[0].contains("docker.io/library/x@")
                && r.reasons[0].contains("rule default of `/p.json` requires reject"),
            "{}",
            r.reasons[0]
        );
        assert!(
            r.reasons[1].contains("sigstoreSigned")
                && r.reasons[1].contains("no image signatures")
                && r.reasons[1].contains("--signature-policy"),
            "{}",
            r.reasons[1]
        );
        assert_eq!(r.decisions.len(), 3);
        let r = admit(&p, Source::Flag, &images[2..]).unwrap_err();
        assert!(
            !r.reasons[0].contains("--signature-policy"),
            "{}",
            r.reasons[0]
        );
    }

    #[test]
    fn namespaced_policies_warn() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(
            dir.path().join("prod.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{
                "quay.io/org":[{"type":"sigstoreSigned","keyData":"AA=="}]}}}"#,
        )
        .unwrap();
        fs_err::write(
            dir.path().join("dev.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        let w = namespaced_warnings(dir.path(), &[image("quay.io/org/app", Some("1"))]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("prod.json") && w[0].contains("`prod`"),
            "{w:?}"
        );
        assert!(namespaced_warnings(&dir.path().join("none"), &[]).is_empty());
    }
}
