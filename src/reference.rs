//! Image references and digests: parsing and normalisation, no I/O.
//!
//! The grammar follows the distribution reference grammar:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component [ "/" path-component ]*
//! domain     := host [ ":" port ]      (has a "." or ":", or is "localhost")
//! tag        := [\w][\w.-]{0,127}
//! digest     := "sha256:" [0-9a-f]{64}
//! ```
//!
//! A name without a domain is on Docker Hub (`docker.io`), and a single Docker Hub component
//! is in `library/`: `busybox` is `docker.io/library/busybox`. This normalised form is what
//! containers-storage records as an image name, and CRI-O matches pins against those names, so
//! every name pinbundle writes is normalised.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Docker Hub's canonical domain, as containers-storage names it.
pub const DOCKER_HUB: &str = "docker.io";
/// The namespace of Docker Hub's official images.
pub const OFFICIAL_NAMESPACE: &str = "library";
/// The tag assumed when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";

/// Why a reference or digest did not parse. Every variant carries the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("invalid image reference \"{0}\": empty")]
    Empty(String),
    #[error("invalid image reference \"{input}\": repository must be lowercase")]
    Uppercase { input: String },
    #[error("invalid image reference \"{input}\": bad path component \"{component}\"")]
    BadComponent { input: String, component: String },
    #[error("invalid image reference \"{input}\": bad tag \"{tag}\"")]
    BadTag { input: String, tag: String },
    #[error("invalid image reference \"{input}\": bad domain \"{domain}\"")]
    BadDomain { input: String, domain: String },
    #[error("invalid image reference \"{input}\": name longer than 255 characters")]
    TooLong { input: String },
    #[error(
        "invalid digest \"{0}\": expected \"sha256:\" and 64 lowercase hex digits (only sha256 is supported)"
    )]
    BadDigest(String),
}

/// A sha256 content digest, `sha256:<64 lowercase hex>`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_hash(sha2::Sha256::digest(bytes).into())
    }

    /// A digest from a finished sha256 hash.
    pub fn from_hash(hash: [u8; 32]) -> Digest {
        Digest {
            hex: hex::encode(hash),
        }
    }

    /// The 64 hex digits, which name the blob in `blobs/sha256/`.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The path of this blob inside an OCI image layout.
    pub fn layout_path(&self) -> String {
        format!("blobs/sha256/{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| ParseError::BadDigest(s.to_string()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseError::BadDigest(s.to_string()));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A parsed, normalised image reference.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// The registry host (with port), e.g. `quay.io` or `127.0.0.1:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The normalised repository name, `domain/path`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The tag a registry is asked for: the given tag, or `latest` when the reference names
    /// neither tag nor digest.
    pub fn effective_tag(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t),
            (None, None) => Some(DEFAULT_TAG),
            (None, Some(_)) => None,
        }
    }

    /// The same repository pinned to `digest`.
    pub fn pinned(&self, digest: Digest) -> PinnedRef {
        PinnedRef {
            name: self.name(),
            digest,
        }
    }

    /// The normalised `name:tag` form, when the reference has a tag (explicit or `latest`).
    pub fn tagged_name(&self) -> Option<String> {
        self.effective_tag().map(|t| format!("{}:{t}", self.name()))
    }
}

fn is_domain(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[start..i];
        if sep.is_empty() {
            return false; // not a separator either
        }
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || d.starts_with('[') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'[' | b']' | b':'))
}

impl FromStr for Reference {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(ParseError::Empty(input.to_string()));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>()?)),
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(ParseError::BadTag {
                input: input.to_string(),
                tag: t.to_string(),
            });
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, remainder)) if is_domain(first) => {
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let (domain, path) = match domain.as_str() {
            "index.docker.io" | "registry-1.docker.io" => (DOCKER_HUB.to_string(), path),
            _ => (domain, path),
        };
        if !valid_domain(&domain) {
            return Err(ParseError::BadDomain {
                input: input.to_string(),
                domain,
            });
        }
        let path = if domain == DOCKER_HUB && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path
        };
        if path.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(ParseError::Uppercase {
                input: input.to_string(),
            });
        }
        if let Some(bad) = path.split('/').find(|c| !valid_path_component(c)) {
            return Err(ParseError::BadComponent {
                input: input.to_string(),
                component: bad.to_string(),
            });
        }
        if domain.len() + 1 + path.len() > 255 {
            return Err(ParseError::TooLong {
                input: input.to_string(),
            });
        }
        Ok(Reference {
            domain,
            path,
            tag: tag.map(str::to_string),
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A normalised repository name pinned to a digest: `name@sha256:…`. This is the exact
/// string stored as an image name and written as a CRI-O pin.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PinnedRef {
    pub name: String,
    pub digest: Digest,
}

impl fmt::Display for PinnedRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.digest)
    }
}

impl fmt::Debug for PinnedRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn norm(s: &str) -> String {
        s.parse::<Reference>().unwrap().to_string()
    }

    #[test]
    fn normalises_docker_hub() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("org/app"), "docker.io/org/app");
        assert_eq!(norm("index.docker.io/busybox"), "docker.io/library/busybox");
        assert_eq!(norm("quay.io/org/app:v1"), "quay.io/org/app:v1");
        assert_eq!(norm("localhost/app"), "localhost/app");
    }

    #[test]
    fn port_is_not_a_tag() {
        let r: Reference = "127.0.0.1:5000/a/b".parse().unwrap();
        assert_eq!(r.domain(), "127.0.0.1:5000");
        assert_eq!(r.path(), "a/b");
        assert_eq!(r.tag(), None);
        assert_eq!(r.effective_tag(), Some("latest"));
        let r: Reference = format!("127.0.0.1:5000/a/b:v2@{D}").parse().unwrap();
        assert_eq!(r.tag(), Some("v2"));
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(
            r.pinned(r.digest().unwrap().clone()).to_string(),
            format!("127.0.0.1:5000/a/b@{D}")
        );
    }

    #[test]
    fn digest_only_has_no_effective_tag() {
        let r: Reference = format!("quay.io/a@{D}").parse().unwrap();
        assert_eq!(r.effective_tag(), None);
        assert_eq!(r.tagged_name(), None);
    }

    #[test]
    fn rejects_bad_input_naming_it() {
        let e = "Foo/bar:1".parse::<Reference>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid image reference \"Foo/bar:1\": repository must be lowercase"
        );
        assert!(matches!(
            "a//b".parse::<Reference>(),
            Err(ParseError::BadComponent { .. })
        ));
        assert!(matches!(
            "a:b:c".parse::<Reference>(),
            Err(ParseError::BadComponent { .. })
        ));
        assert!(matches!(
            "a@sha256:12".parse::<Reference>(),
            Err(ParseError::BadDigest(_))
        ));
        assert!(matches!(
            "a@md5:12".parse::<Reference>(),
            Err(ParseError::BadDigest(_))
        ));
        assert!(matches!("".parse::<Reference>(), Err(ParseError::Empty(_))));
        assert!("a/-b".parse::<Reference>().is_err());
        assert!(matches!(
            "a:b/c:d/e".parse::<Reference>(),
            Err(ParseError::BadDomain { .. }) | Err(ParseError::BadComponent { .. })
        ));
        assert!(matches!(
            "a:-x".parse::<Reference>(),
            Err(ParseError::BadTag { .. })
        ));
        assert!("a/b_".parse::<Reference>().is_err());
        assert!("a/b___c".parse::<Reference>().is_err());
    }

    #[test]
    fn digest_roundtrip_and_case() {
        let d: Digest = D.parse().unwrap();
        assert_eq!(d.to_string(), D);
        assert_eq!(d.layout_path(), format!("blobs/sha256/{}", &D[7..]));
        assert!(
            D.to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<Digest>()
                .is_err()
        );
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
