//! Image references and digests: parsing and normalisation, no I/O.
//!
//! One grammar for every reference pinbundle takes in: the command line, `--from-file`,
//! PinnedImageSet YAML and every name read from a bundle. It is the distribution reference
//! grammar (github.com/distribution/reference, `regexp.go`), with sha256 as the only digest
//! algorithm and the port bounded:
//!
//! ```text
//! reference        := name [ ":" tag ] [ "@" digest ]
//! name             := [ domain "/" ] path-component [ "/" path-component ]*
//! domain           := host [ ":" port ]  (first component with a "." or ":", or "localhost")
//! host             := domain-component [ "." domain-component ]* | "[" [a-fA-F0-9:]+ "]"
//! domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
//! port             := [0-9]+, 1 to 65535, no leading zero
//! path-component   := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag              := [\w][\w.-]{0,127}
//! digest           := "sha256:" [0-9a-f]{64}
//! ```
//!
//! The normalised name (`domain/path`) is at most 255 characters. A name without a domain is
//! on Docker Hub (`docker.io`), and a single Docker Hub component is in `library/`:
//! `busybox` is `docker.io/library/busybox`. This normalised form is what containers-storage
//! records as an image name, and CRI-O matches pins against those names, so every name
//! pinbundle writes is normalised. Nothing is trimmed: whitespace is an error.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::text::excerpt;

/// Docker Hub's canonical domain, as containers-storage names it.
pub const DOCKER_HUB: &str = "docker.io";
/// The namespace of Docker Hub's official images.
pub const OFFICIAL_NAMESPACE: &str = "library";
/// The tag assumed when a reference names neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
/// The longest normalised name (`domain/path`) distribution accepts.
pub const NAME_MAX: usize = 255;

/// How much of a bad input an error message quotes (escaped).
const QUOTE_MAX: usize = 300;

/// Why a reference or digest did not parse. Every variant carries the input; messages quote
/// it escaped and cut ([`excerpt`]), since it may come from a hostile bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("invalid image reference \"{}\": empty", excerpt(.0, QUOTE_MAX))]
    Empty(String),
    #[error("invalid image reference \"{}\": repository must be lowercase", excerpt(.input, QUOTE_MAX))]
    Uppercase { input: String },
    #[error(
        "invalid image reference \"{}\": bad path component \"{}\": {reason}",
        excerpt(.input, QUOTE_MAX),
        excerpt(.component, QUOTE_MAX)
    )]
    BadComponent {
        input: String,
        component: String,
        reason: &'static str,
    },
    #[error(
        "invalid image reference \"{}\": bad tag \"{}\": expected [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}",
        excerpt(.input, QUOTE_MAX),
        excerpt(.tag, QUOTE_MAX)
    )]
    BadTag { input: String, tag: String },
    #[error(
        "invalid image reference \"{}\": bad domain \"{}\": {reason}",
        excerpt(.input, QUOTE_MAX),
        excerpt(.domain, QUOTE_MAX)
    )]
    BadDomain {
        input: String,
        domain: String,
        reason: &'static str,
    },
    #[error(
        "invalid image reference \"{}\": name longer than {NAME_MAX} characters",
        excerpt(.input, QUOTE_MAX)
    )]
    TooLong { input: String },
    #[error(
        "invalid image reference \"{}\": a 64-digit hex string is an image ID, not a repository name",
        excerpt(.0, QUOTE_MAX)
    )]
    Identifier(String),
    #[error(
        "invalid digest \"{}\": expected \"sha256:\" and 64 lowercase hex digits",
        excerpt(.0, QUOTE_MAX)
    )]
    BadDigest(String),
    #[error(
        "unsupported digest \"{}\": algorithm \"{}\" (only sha256 is supported)",
        excerpt(.input, QUOTE_MAX),
        excerpt(.algorithm, QUOTE_MAX)
    )]
    UnsupportedAlgorithm { input: String, algorithm: String },
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
        let Some(hex) = s.strip_prefix("sha256:") else {
            // Well-formed in distribution's terms (`algorithm:hex`) but not sha256: say so.
            return Err(match s.split_once(':') {
                Some((algorithm, encoded))
                    if valid_algorithm(algorithm)
                        && encoded.len() >= 32
                        && encoded.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    ParseError::UnsupportedAlgorithm {
                        input: s.to_string(),
                        algorithm: algorithm.to_string(),
                    }
                }
                _ => ParseError::BadDigest(s.to_string()),
            });
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseError::BadDigest(s.to_string()));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }
}

/// `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*`
fn valid_algorithm(a: &str) -> bool {
    a.split(['-', '_', '+', '.']).all(|part| {
        let mut b = part.bytes();
        b.next().is_some_and(|c| c.is_ascii_alphabetic()) && b.all(|c| c.is_ascii_alphanumeric())
    })
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

/// Whether the first component of a name is a domain, as distribution's
/// `splitDockerDomain` decides (except that an uppercase component stays a path, and so is
/// refused as not lowercase).
fn is_domain(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// Why `c` is not `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`, if it is not.
fn path_component_error(c: &str) -> Option<&'static str> {
    let b = c.as_bytes();
    if b.is_empty() {
        return Some("empty (a leading, trailing or doubled \"/\")");
    }
    if !b
        .iter()
        .all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
    {
        return Some("only a-z, 0-9, \".\", \"_\" and \"-\" are allowed");
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Some("must start and end with a letter or digit");
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run between alphanumerics: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return Some("separators are one \".\", one or two \"_\", or dashes");
        }
    }
    None
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&c| word(c) || matches!(c, b'.' | b'-'))
}

/// `[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn valid_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
}

/// Why `d` is not `host [":" port]`, if it is not.
fn domain_error(d: &str) -> Option<&'static str> {
    let (host_ok, port) = if let Some(rest) = d.strip_prefix('[') {
        // An IPv6 literal: hex digits and colons in brackets (no zone, as distribution).
        let Some((inner, after)) = rest.split_once(']') else {
            return Some("an IPv6 address needs a closing \"]\"");
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Some("only \":port\" may follow an IPv6 address"),
            },
        };
        let ok = !inner.is_empty() && inner.bytes().all(|c| c.is_ascii_hexdigit() || c == b':');
        (ok, port)
    } else {
        let (host, port) = match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        };
        (host.split('.').all(valid_domain_component), port)
    };
    if !host_ok {
        return Some(
            "expected dot-separated components of letters, digits and inner hyphens, or [IPv6]",
        );
    }
    if let Some(p) = port {
        let digits = !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
        let in_range = digits
            && !p.starts_with('0')
            && p.len() <= 5
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n));
        if !in_range {
            return Some("the port must be a number from 1 to 65535 (no sign, no leading zero)");
        }
    }
    None
}

impl FromStr for Reference {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(ParseError::Empty(input.to_string()));
        }
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(ParseError::Identifier(input.to_string()));
        }
        // Neither name nor tag may hold an "@": the first one starts the digest.
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>()?)),
            None => (input, None),
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
            Some((first, remainder)) if is_domain(first) => (first, remainder),
            _ => (DOCKER_HUB, name),
        };
        // Only distribution's legacy domain means Docker Hub (as in containers/image):
        // `registry-1.docker.io/x` is another name, the one CRI-O stores when it pulls it.
        let domain = match domain {
            "index.docker.io" => DOCKER_HUB,
            d => d,
        };
        if let Some(reason) = domain_error(domain) {
            return Err(ParseError::BadDomain {
                input: input.to_string(),
                domain: domain.to_string(),
                reason,
            });
        }
        let path = if domain == DOCKER_HUB && !path.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{path}")
        } else {
            path.to_string()
        };
        if path.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(ParseError::Uppercase {
                input: input.to_string(),
            });
        }
        for component in path.split('/') {
            if let Some(reason) = path_component_error(component) {
                return Err(ParseError::BadComponent {
                    input: input.to_string(),
                    component: component.to_string(),
                    reason,
                });
            }
        }
        if domain.len() + 1 + path.len() > NAME_MAX {
            return Err(ParseError::TooLong {
                input: input.to_string(),
            });
        }
        Ok(Reference {
            domain: domain.to_string(),
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
        let e = "quay.io:0/a".parse::<Reference>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid image reference \"quay.io:0/a\": bad domain \"quay.io:0\": the port must be a number from 1 to 65535 (no sign, no leading zero)"
        );
        let e = "x.io/a//b".parse::<Reference>().unwrap_err();
        assert!(
            e.to_string().contains("bad path component \"\": empty"),
            "{e}"
        );
        let e = format!("a@sha512:{}", "0".repeat(128))
            .parse::<Reference>()
            .unwrap_err();
        assert!(
            matches!(e, ParseError::UnsupportedAlgorithm { ref algorithm, .. } if algorithm == "sha512")
        );
        assert!(e.to_string().contains("only sha256 is supported"), "{e}");
    }

    #[test]
    fn messages_quote_hostile_input_escaped_and_cut() {
        let e = "quay.io/a\n\x1b[2Jsigned by key X verified"
            .parse::<Reference>()
            .unwrap_err()
            .to_string();
        assert!(!e.chars().any(char::is_control), "{e:?}");
        assert!(e.contains("quay.io/a\\n\\x1b[2J"), "{e}");
        // Two quotes of at most QUOTE_MAX characters, each escaped to 8 bytes.
        let e = format!("quay.io/{}", "\u{202e}".repeat(100_000))
            .parse::<Reference>()
            .unwrap_err()
            .to_string();
        assert!(e.len() < 6000 && e.contains("more bytes"), "{}", e.len());
    }

    /// The grammar, as a table: each input either normalises to the string given or is
    /// refused with the error kind given.
    #[test]
    fn grammar_table() {
        let long_path = format!("quay.io/{}", "a".repeat(255 - 8));
        let too_long = format!("quay.io/{}", "a".repeat(255 - 7));
        let tag128 = format!("a:{}", "t".repeat(128));
        let tag128_normal = format!("docker.io/library/{tag128}");
        let tag129 = format!("a:{}", "t".repeat(129));
        let accepted: &[(&str, &str)] = &[
            ("busybox", "docker.io/library/busybox"),
            ("a/b/c/d", "docker.io/a/b/c/d"),
            ("docker.io/busybox", "docker.io/library/busybox"),
            ("registry-1.docker.io/x/y", "registry-1.docker.io/x/y"),
            (
                "registry-1.docker.io/busybox",
                "registry-1.docker.io/busybox",
            ),
            ("index.docker.io/x/y", "docker.io/x/y"),
            ("localhost:5000/a", "localhost:5000/a"),
            ("localhost/a:v1", "localhost/a:v1"),
            ("quay.io:443/a", "quay.io:443/a"),
            ("quay.io:65535/a", "quay.io:65535/a"),
            ("quay.io:1/a", "quay.io:1/a"),
            ("my-registry.example.com/a", "my-registry.example.com/a"),
            ("Quay.IO/a", "Quay.IO/a"),
            ("x/a", "docker.io/x/a"),
            ("10.0.0.1:5000/a", "10.0.0.1:5000/a"),
            ("[::1]/a", "[::1]/a"),
            ("[fe80::1:2]:5000/a/b", "[fe80::1:2]:5000/a/b"),
            ("x.io/a.b_c__d---e/f", "x.io/a.b_c__d---e/f"),
            ("x.io/a:_T.a-g", "x.io/a:_T.a-g"),
            ("x.io/a:1", "x.io/a:1"),
            ("localhost:5000", "docker.io/library/localhost:5000"),
            (&tag128, &tag128_normal),
            (&long_path, &long_path),
        ];
        for (input, want) in accepted {
            let r = input
                .parse::<Reference>()
                .unwrap_or_else(|e| panic!("{input:?} refused: {e}"));
            assert_eq!(&r.to_string(), want, "{input:?}");
            // Normalised output is a fixed point.
            assert_eq!(r.to_string().parse::<Reference>().unwrap(), r, "{input:?}");
        }

        #[derive(Debug)]
        enum Kind {
            Empty,
            Upper,
            Component,
            Tag,
            Domain,
            Long,
            Id,
            Digest,
            Algorithm,
        }
        let sha512 = format!("x.io/a@sha512:{}", "a".repeat(128));
        let upper_hex = format!("x.io/a@sha256:{}", "A".repeat(64));
        let short_hex = format!("x.io/a@sha256:{}", "a".repeat(63));
        let id = "b".repeat(64);
        let refused: &[(&str, Kind)] = &[
            ("", Kind::Empty),
            ("-x.io/a", Kind::Domain),
            ("x-.io/a", Kind::Domain),
            ("..:1/a", Kind::Domain),
            (".x.io/a", Kind::Domain),
            ("a..b/c", Kind::Domain),
            ("x_y.io/a", Kind::Domain),
            ("quay.io:99999999999999999999/a", Kind::Domain),
            ("quay.io:65536/a", Kind::Domain),
            ("quay.io:0/a", Kind::Domain),
            ("quay.io:080/a", Kind::Domain),
            ("quay.io:+80/a", Kind::Domain),
            ("quay.io:-1/a", Kind::Domain),
            ("quay.io:/a", Kind::Domain),
            ("quay.io:80:80/a", Kind::Domain),
            ("[::1/a", Kind::Domain),
            ("[]/a", Kind::Component),
            ("[]:5000/a", Kind::Domain),
            ("[::g]/a", Kind::Domain),
            ("[::1]x/a", Kind::Domain),
            ("[::1%eth0]/a", Kind::Domain),
            ("x.io/A", Kind::Upper),
            ("Foo/bar", Kind::Upper),
            ("x.io/a//b", Kind::Component),
            ("x.io/a/", Kind::Component),
            ("x.io//a", Kind::Component),
            ("x.io/-a", Kind::Component),
            ("x.io/a-", Kind::Component),
            ("x.io/a_", Kind::Component),
            ("x.io/a___b", Kind::Component),
            ("x.io/a..b", Kind::Component),
            ("x.io/a._b", Kind::Component),
            ("x.io/.a", Kind::Component),
            ("x.io/a b", Kind::Component),
            ("x.io/a\n", Kind::Component),
            (" busybox", Kind::Component),
            ("x.io/ä", Kind::Component),
            ("a:b:c", Kind::Component),
            ("x.io/a:", Kind::Tag),
            ("x.io/a:-x", Kind::Tag),
            ("x.io/a:.x", Kind::Tag),
            ("x.io/a:v 1", Kind::Tag),
            ("x.io/a:v1\x1b", Kind::Tag),
            (&tag129, Kind::Tag),
            (&too_long, Kind::Long),
            (&id, Kind::Id),
            ("x.io/a@", Kind::Digest),
            ("x.io/a@sha256:12", Kind::Digest),
            ("x.io/a@md5:12", Kind::Digest),
            (&upper_hex, Kind::Digest),
            (&short_hex, Kind::Digest),
            (&sha512, Kind::Algorithm),
        ];
        for (input, kind) in refused {
            let e = match input.parse::<Reference>() {
                Ok(r) => panic!("{input:?} accepted as {r}"),
                Err(e) => e,
            };
            let matched = matches!(
                (kind, &e),
                (Kind::Empty, ParseError::Empty(_))
                    | (Kind::Upper, ParseError::Uppercase { .. })
                    | (Kind::Component, ParseError::BadComponent { .. })
                    | (Kind::Tag, ParseError::BadTag { .. })
                    | (Kind::Domain, ParseError::BadDomain { .. })
                    | (Kind::Long, ParseError::TooLong { .. })
                    | (Kind::Id, ParseError::Identifier(_))
                    | (Kind::Digest, ParseError::BadDigest(_))
                    | (Kind::Algorithm, ParseError::UnsupportedAlgorithm { .. })
            );
            assert!(matched, "{input:?}: expected {kind:?}, got {e:?}");
        }
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
