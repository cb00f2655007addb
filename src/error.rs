//! Error helpers shared by the reports, and the classification behind the exit codes.

use crate::bundle;
use crate::delta;
use crate::load::{pins::PinsError, policy, space::SpaceError, store_config::StoreRefused};
use crate::sign;

/// `error: caused by: …` flattened to one line, for reports (`--json` fields and the lines
/// that quote a failure).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// What a failure means to whoever runs the command: the CLI's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The input was refused for its content: damage, a signature, a policy, a platform
    /// the image lacks, not enough space, a delta whose layers are nowhere (exit 1).
    Refused,
    /// Anything else: a file that cannot be read, a registry that does not answer, a tool
    /// that fails (exit 2).
    Operational,
}

/// A refusal of the input for its content where no typed error of its own says so (the
/// message names the image and what to do).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The failure an error chain stands for: [`Failure::Refused`] when any error in it refuses
/// the input for its content (a context added on top changes nothing).
pub fn classify<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> Failure {
    if chain.into_iter().any(refuses) {
        Failure::Refused
    } else {
        Failure::Operational
    }
}

/// Whether `e` itself (not its sources) refuses the input for its content.
fn refuses(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<Refused>() || e.is::<StoreRefused>() || e.is::<policy::Refused>() {
        return true;
    }
    if let Some(e) = e.downcast_ref::<PinsError>() {
        return e.is_refusal();
    }
    if let Some(e) = e.downcast_ref::<SpaceError>() {
        return matches!(e, SpaceError::NotEnough(_) | SpaceError::Understated { .. });
    }
    // Transparent wrappers hide the wrapped error from the source chain: look inside.
    if let Some(crate::verify::InspectError::Bundle(b)) = e.downcast_ref() {
        return refuses(b);
    }
    if let Some(delta::Error::Bundle(b)) = e.downcast_ref() {
        return refuses(b);
    }
    if let Some(e) = e.downcast_ref::<delta::Error>() {
        return matches!(
            e,
            delta::Error::Unavailable { .. }
                | delta::Error::SizeConflict { .. }
                | delta::Error::BaseDamaged { .. }
        );
    }
    if let Some(e) = e.downcast_ref::<sign::Error>() {
        return matches!(
            e,
            sign::Error::Untrusted { .. }
                | sign::Error::BadSignature { .. }
                | sign::Error::Unsigned { .. }
                | sign::Error::BadSignatureFile { .. }
        );
    }
    if let Some(e) = e.downcast_ref::<bundle::Error>() {
        use bundle::Error as B;
        return matches!(
            e,
            B::NotABundle { .. }
                | B::UnsupportedVersion { .. }
                | B::BadFooter { .. }
                | B::IndexDigest { .. }
                | B::BadIndex { .. }
                | B::BadManifest { .. }
                | B::BadFrame { .. }
                | B::BadMember { .. }
                | B::DigestMismatch { .. }
                | B::BadParts { .. }
                | B::InputSize { .. }
                | B::InputDigest { .. }
        );
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn chain_joins_every_source() {
        let inner = std::io::Error::other("disk on fire");
        let outer = std::io::Error::other(Wrapped(inner));
        assert_eq!(super::error_chain(&outer), "wrapped: disk on fire");
    }

    #[test]
    fn a_refusal_anywhere_in_the_chain_is_a_refusal() {
        use super::{Failure, Refused, classify};
        let refused =
            anyhow::Error::new(Refused("no linux/arm64 image".into())).context("resolving app");
        assert_eq!(classify(refused.chain()), Failure::Refused);
        let io = anyhow::Error::new(std::io::Error::other("disk on fire")).context("writing");
        assert_eq!(classify(io.chain()), Failure::Operational);
        let damaged = anyhow::Error::new(crate::bundle::Error::NotABundle { path: "x".into() });
        assert_eq!(classify(damaged.chain()), Failure::Refused);
        let unreadable = anyhow::Error::new(crate::bundle::Error::Io {
            path: "x".into(),
            source: std::io::Error::other("EIO"),
        });
        assert_eq!(classify(unreadable.chain()), Failure::Operational);
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
