//! An image platform, `os/architecture[/variant]`: parsed once from `--platform` or from what a
//! registry declared, matched and shown in one way everywhere (`create` picks index entries
//! with it, `load` picks the carried instance for this node).

use serde::Serialize;

use crate::bundle::format::PlatformEntry;
use crate::text::excerpt;

/// The longest OS, architecture or variant accepted (real ones are under 10).
const MAX_PLATFORM_COMPONENT: usize = 32;

/// An `os/architecture[/variant]` platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl std::str::FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| component_ok(p);
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(format!(
                "invalid platform \"{}\": expected OS/ARCH[/VARIANT], e.g. linux/arm64/v8",
                excerpt(s, 100)
            )),
        }
    }
}

/// The grammar of one `--platform` component, which platforms from registries are held to
/// as well before they enter `pinbundle.json`: 1 to 32 of `[A-Za-z0-9_]`.
fn component_ok(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= MAX_PLATFORM_COMPONENT
        && p.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `os/architecture[/variant]` of borrowed parts: the one way a platform is written, for
/// [`Platform`] and for parts not (yet) held to its grammar.
pub fn shown<'a>(
    os: &'a str,
    architecture: &'a str,
    variant: Option<&'a str>,
) -> impl std::fmt::Display + 'a {
    struct Shown<'a>(&'a str, &'a str, Option<&'a str>);
    impl std::fmt::Display for Shown<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}/{}", self.0, self.1)?;
            if let Some(v) = self.2 {
                write!(f, "/{v}")?;
            }
            Ok(())
        }
    }
    Shown(os, architecture, variant)
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        shown(&self.os, &self.architecture, self.variant.as_deref()).fmt(f)
    }
}

impl From<&PlatformEntry> for Platform {
    fn from(p: &PlatformEntry) -> Platform {
        Platform {
            os: p.os.clone(),
            architecture: p.architecture.clone(),
            variant: p.variant.clone(),
        }
    }
}

impl Platform {
    /// A platform a registry declared (in an index or a config), held to the `--platform`
    /// grammar; the error quotes it escaped and cut short.
    pub fn from_peer(
        os: &str,
        architecture: &str,
        variant: Option<&str>,
    ) -> Result<Platform, String> {
        let bad = |field: &str, value: &str| {
            Err(format!(
                "platform {field} \"{}\" is not 1 to {MAX_PLATFORM_COMPONENT} of [A-Za-z0-9_]",
                excerpt(value, 40)
            ))
        };
        if !component_ok(os) {
            return bad("os", os);
        }
        if !component_ok(architecture) {
            return bad("architecture", architecture);
        }
        if let Some(v) = variant
            && !component_ok(v)
        {
            return bad("variant", v);
        }
        Ok(Platform {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
        })
    }

    /// The default when none is asked for.
    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    /// Whether a platform a manifest declares is this (wanted) one. A wanted platform
    /// without a variant accepts any variant (`linux/arm64` takes `linux/arm64/v8`).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && (self.variant.is_none() || self.variant.as_deref() == variant)
    }

    /// [`Platform::matches`] for a carried platform instance.
    pub fn matches_entry(&self, p: &PlatformEntry) -> bool {
        self.matches(&p.os, &p.architecture, p.variant.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_displays_and_matches() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert_eq!(
            "linux/amd64".parse::<Platform>().unwrap(),
            Platform::linux_amd64()
        );
        let err = "linux".parse::<Platform>().unwrap_err();
        assert_eq!(
            err,
            "invalid platform \"linux\": expected OS/ARCH[/VARIANT], e.g. linux/arm64/v8"
        );
        assert!("linux/arm-64".parse::<Platform>().is_err());
        let any_variant: Platform = "linux/arm64".parse().unwrap();
        assert!(any_variant.matches("linux", "arm64", Some("v8")));
        assert!(any_variant.matches("linux", "arm64", None));
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(!p.matches("linux", "arm64", None));
        assert!(!p.matches("linux", "amd64", Some("v8")));
        assert_eq!(shown("a", "b", None).to_string(), "a/b");
    }

    #[test]
    fn peer_platforms_are_held_to_the_grammar() {
        assert!(Platform::from_peer("linux", "amd64", Some("v2")).is_ok());
        let err = Platform::from_peer("linux", "amd 64", None).unwrap_err();
        assert_eq!(
            err,
            "platform architecture \"amd 64\" is not 1 to 32 of [A-Za-z0-9_]"
        );
        assert!(Platform::from_peer("", "amd64", None).is_err());
        assert!(Platform::from_peer("linux", "amd64", Some(&"v".repeat(33))).is_err());
    }
}
