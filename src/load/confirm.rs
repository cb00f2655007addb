//! Confirm over the CRI that every loaded image is present and pinned.
//!
//! Owns the polling loop and the CRI-O version advice. A reload request returns before CRI-O
//! has re-read its configuration, so the only proof is CRI-O's own answer: `ImageStatus`
//! for each `name@sha256:…` with `pinned: true` (CRI-O computes `pinned` at query time from
//! the image's storage names). Findings are data ([`ConfirmReport`]); `Err` only means the
//! CRI could not be asked at all.

use std::path::Path;
use std::time::{Duration, Instant};

use super::cri::{CriClient, CriError};
use crate::error::error_chain;
use crate::reference::PinnedRef;

/// What CRI-O said about one of our images, at the last poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFinding {
    pub reference: PinnedRef,
    /// `ImageStatus` returned an image.
    pub present: bool,
    /// That image reported `pinned: true`.
    pub pinned: bool,
    /// The image ID CRI-O reported, when present.
    pub id: Option<String>,
    /// The last `ImageStatus` error for this image, if the last poll failed.
    pub error: Option<String>,
}

impl ImageFinding {
    pub fn is_ok(&self) -> bool {
        self.present && self.pinned
    }
}

/// A CRI-O release whose reload mishandles `pinned_images`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionIssue {
    /// CRI-O before 1.28 has no `pinned_images`.
    Unsupported,
    /// 1.28.0–1.29.3: a reload never applies new pins.
    ReloadIgnoresPins,
    /// 1.29.4–1.29.6, 1.30.0–1.30.2: a reload unpins unchanged entries (cri-o #8202).
    ReloadUnpinsUnchanged,
    /// The runtime is not CRI-O or its version could not be parsed.
    Unknown,
}

impl VersionIssue {
    /// Advice for the user.
    pub fn advice(self, name: &str, version: &str) -> String {
        match self {
            VersionIssue::Unsupported => format!(
                "{name} {version} predates `pinned_images` (CRI-O 1.28): images cannot be pinned; upgrade CRI-O"
            ),
            VersionIssue::ReloadIgnoresPins => format!(
                "{name} {version} does not apply new `pinned_images` on reload: restart CRI-O (`systemctl restart crio`) to pin; fixed in 1.29.7/1.30.3/1.31"
            ),
            VersionIssue::ReloadUnpinsUnchanged => format!(
                "{name} {version} unpins unchanged `pinned_images` entries on reload (cri-o/cri-o#8202): restart CRI-O (`systemctl restart crio`); fixed in 1.29.7/1.30.3/1.31"
            ),
            VersionIssue::Unknown => format!(
                "cannot tell whether {name} {version} handles `pinned_images` reloads correctly (expected CRI-O with a semver version)"
            ),
        }
    }
}

/// `major.minor.patch` from the start of a version string (`1.29.5`, `v1.30.1`,
/// `1.29.6-3.rhaos4.16.git1234.el9`).
fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.trim().trim_start_matches('v');
    let core = v.split(['-', '+', ' ']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    let major = it.next()??;
    let minor = it.next()??;
    let patch = it.next().unwrap_or(Some(0))?;
    Some((major, minor, patch))
}

/// The known `pinned_images` reload problem of this runtime version, if any.
pub fn version_issue(runtime_name: &str, runtime_version: &str) -> Option<VersionIssue> {
    if !runtime_name.eq_ignore_ascii_case("cri-o") {
        return Some(VersionIssue::Unknown);
    }
    let Some(v) = parse_version(runtime_version) else {
        return Some(VersionIssue::Unknown);
    };
    match v {
        (1, minor, _) if minor < 28 => Some(VersionIssue::Unsupported),
        (0, _, _) => Some(VersionIssue::Unsupported),
        (1, 28, _) => Some(VersionIssue::ReloadIgnoresPins),
        (1, 29, p) if p <= 3 => Some(VersionIssue::ReloadIgnoresPins),
        (1, 29, p) if p <= 6 => Some(VersionIssue::ReloadUnpinsUnchanged),
        (1, 30, p) if p <= 2 => Some(VersionIssue::ReloadUnpinsUnchanged),
        _ => None,
    }
}

/// The outcome of [`confirm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmReport {
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
    /// A known problem of this runtime version, with [`VersionIssue::advice`] to print.
    pub version_issue: Option<VersionIssue>,
    /// One entry per requested reference, in request order.
    pub images: Vec<ImageFinding>,
    /// The deadline passed before every image was present and pinned.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl ConfirmReport {
    /// Every image is present and pinned.
    pub fn is_ok(&self) -> bool {
        self.images.iter().all(ImageFinding::is_ok)
    }

    /// The version advice, if any.
    pub fn version_advice(&self) -> Option<String> {
        self.version_issue
            .map(|i| i.advice(&self.runtime_name, &self.runtime_version))
    }
}

/// Poll `ImageStatus` for each of `refs` (as `name@sha256:…`) every `interval` until all are
/// present and pinned, or `timeout` has passed; report the runtime's name and version.
///
/// # Errors
/// Only when the CRI cannot be reached or `Version` fails; per-image call failures are
/// recorded in the findings and retried.
pub async fn confirm(
    socket: &Path,
    refs: &[PinnedRef],
    timeout: Duration,
    interval: Duration,
) -> Result<ConfirmReport, CriError> {
    let start = Instant::now();
    let call_timeout = timeout.clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut client = CriClient::connect(socket, call_timeout).await?;
    let version = client.version().await?;
    let mut images: Vec<ImageFinding> = refs
        .iter()
        .map(|r| ImageFinding {
            reference: r.clone(),
            present: false,
            pinned: false,
            id: None,
            error: None,
        })
        .collect();
    let timed_out = loop {
        for finding in images.iter_mut().filter(|f| !f.is_ok()) {
            match client.image_status(&finding.reference.to_string()).await {
                Ok(Some(img)) => {
                    finding.present = true;
                    finding.pinned = img.pinned;
                    finding.id = Some(img.id);
                    finding.error = None;
                }
                Ok(None) => {
                    finding.present = false;
                    finding.pinned = false;
                    finding.id = None;
                    finding.error = None;
                }
                Err(e) => finding.error = Some(error_chain(&e)),
            }
        }
        if images.iter().all(ImageFinding::is_ok) {
            break false;
        }
        if start.elapsed() + interval > timeout {
            break true;
        }
        tokio::time::sleep(interval).await;
    };
    Ok(ConfirmReport {
        version_issue: version_issue(&version.runtime_name, &version.runtime_version),
        runtime_name: version.runtime_name,
        runtime_version: version.runtime_version,
        runtime_api_version: version.runtime_api_version,
        images,
        timed_out,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ranges() {
        let i = |v| version_issue("cri-o", v);
        assert_eq!(i("1.27.9"), Some(VersionIssue::Unsupported));
        assert_eq!(i("1.28.0"), Some(VersionIssue::ReloadIgnoresPins));
        assert_eq!(i("1.29.3"), Some(VersionIssue::ReloadIgnoresPins));
        assert_eq!(i("1.29.4"), Some(VersionIssue::ReloadUnpinsUnchanged));
        assert_eq!(
            i("1.29.6-3.rhaos4.16.git1a2b.el9"),
            Some(VersionIssue::ReloadUnpinsUnchanged)
        );
        assert_eq!(i("1.29.7"), None);
        assert_eq!(i("1.30.0"), Some(VersionIssue::ReloadUnpinsUnchanged));
        assert_eq!(i("v1.30.2"), Some(VersionIssue::ReloadUnpinsUnchanged));
        assert_eq!(i("1.30.3"), None);
        assert_eq!(i("1.31.0"), None);
        assert_eq!(i("2.0.0"), None);
        assert_eq!(i("garbage"), Some(VersionIssue::Unknown));
        assert_eq!(
            version_issue("containerd", "1.7.0"),
            Some(VersionIssue::Unknown)
        );
        assert!(
            VersionIssue::ReloadUnpinsUnchanged
                .advice("cri-o", "1.30.1")
                .contains("restart CRI-O")
        );
    }
}
