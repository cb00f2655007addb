//! Confirm over the CRI that every loaded image is present and pinned.
//!
//! Owns the polling loop and the CRI-O version advice. A reload request returns before CRI-O
//! has re-read its configuration, so the only proof is CRI-O's own answer (CRI-O computes
//! `pinned` at query time from the image's storage names). Findings are data
//! ([`ConfirmReport`]); `Err` only means the CRI could not be asked at all.
//!
//! # Decisions
//! - `ImageStatus` for each `name@sha256:…` decides whether the image is *present* (it is the
//!   lookup kubelet makes) and gives its ID.
//! - *Pinned* is `ImageStatus.pinned`, or else the `pinned` of the `ListImages` entry with that
//!   ID (or, failing an ID, that lists the reference among its repo digests or tags). CRI-O
//!   fills `ImageStatus.pinned` only from 1.29.7 / 1.30.6 / 1.31.0 (cri-o #8362, backports
//!   #8325, #8556), always `false` before, while `ListImages` has reported it since 1.28.
//!   Where both report it they are computed from the same storage names at the same moment,
//!   so taking either `true` never contradicts CRI-O; and it does not hang on the version
//!   string, which vendor builds (`1.29.6-3.rhaos4.16…`) may carry with or without the
//!   backport. `ListImages` is asked only while some present image still reads unpinned, so
//!   on fixed releases it costs nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cri::{CriClient, CriError, proto};
use crate::error::error_chain;
use crate::reference::PinnedRef;

/// What CRI-O said about one of our images, at the last poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFinding {
    pub reference: PinnedRef,
    /// `ImageStatus` returned an image.
    pub present: bool,
    /// CRI-O reported the image `pinned: true` ([`ImageFinding::pinned_by`] says where).
    pub pinned: bool,
    /// Which call reported `pinned: true`; `None` while not pinned.
    pub pinned_by: Option<PinnedBy>,
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

/// The CRI call that reported an image pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinnedBy {
    ImageStatus,
    /// `ListImages`, for releases whose `ImageStatus` lacks `pinned`.
    ListImages,
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
    /// A reload cannot be trusted to leave the pins right: CRI-O must be restarted.
    pub fn needs_restart(self) -> bool {
        matches!(
            self,
            VersionIssue::ReloadIgnoresPins | VersionIssue::ReloadUnpinsUnchanged
        )
    }

    /// Why a restart replaces the reload, for the report.
    pub fn restart_reason(self, name: &str, version: &str) -> Option<String> {
        match self {
            VersionIssue::ReloadIgnoresPins => Some(format!(
                "{name} {version} does not apply new `pinned_images` on reload (fixed in 1.29.4)"
            )),
            VersionIssue::ReloadUnpinsUnchanged => Some(format!(
                "{name} {version} unpins unchanged `pinned_images` entries on reload (cri-o/cri-o#8202, fixed in 1.29.7/1.30.3)"
            )),
            _ => None,
        }
    }

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
///
/// | CRI-O | reload of `pinned_images` | `ImageStatus.pinned` |
/// |---|---|---|
/// | < 1.28 | no `pinned_images` at all | — |
/// | 1.28.0 – 1.29.3 | never applies new pins (restart needed) | always false |
/// | 1.29.4 – 1.29.6 | unpins unchanged entries (cri-o #8202) | always false |
/// | 1.29.7 + | correct | reported |
/// | 1.30.0 – 1.30.2 | unpins unchanged entries (cri-o #8202) | always false |
/// | 1.30.3 – 1.30.5 | correct | always false |
/// | 1.30.6 + , 1.31.0 + | correct | reported |
///
/// `ListImages` reports `pinned` from 1.28 on, so confirmation works on every release that
/// has pins (see the module's Decisions); [`image_status_reports_pinned`] has the last column.
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

/// Whether `ImageStatus` of this runtime version fills `pinned` (the last column of
/// [`version_issue`]'s table); `None` when the runtime is not CRI-O or the version unparsable.
pub fn image_status_reports_pinned(runtime_name: &str, runtime_version: &str) -> Option<bool> {
    if !runtime_name.eq_ignore_ascii_case("cri-o") {
        return None;
    }
    Some(match parse_version(runtime_version)? {
        (0, _, _) => false,
        (1, minor, _) if minor < 29 => false,
        (1, 29, p) => p >= 7,
        (1, 30, p) => p >= 6,
        _ => true,
    })
}

/// The outcome of [`confirm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmReport {
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
    /// Whether this version's `ImageStatus` fills `pinned` ([`image_status_reports_pinned`]);
    /// informational: confirmation asks `ListImages` whenever `ImageStatus` says unpinned.
    pub image_status_pinned: Option<bool>,
    /// A known problem of this runtime version, with [`VersionIssue::advice`] to print.
    pub version_issue: Option<VersionIssue>,
    /// One entry per requested reference, in request order.
    pub images: Vec<ImageFinding>,
    /// The other entries of the effective list, in their order.
    pub others: Vec<OtherEntry>,
    /// The deadline passed before every image was present and pinned.
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl ConfirmReport {
    /// Every image is present and pinned, and no other entry names a present image that
    /// is not pinned.
    pub fn is_ok(&self) -> bool {
        self.images.iter().all(ImageFinding::is_ok)
            && self
                .others
                .iter()
                .all(|o| o.status != OtherStatus::NotPinned)
    }

    /// The version advice, if any.
    pub fn version_advice(&self) -> Option<String> {
        self.version_issue
            .map(|i| i.advice(&self.runtime_name, &self.runtime_version))
    }
}

/// Another entry of the effective list (not one of this bundle's images).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherEntry {
    pub entry: String,
    pub status: OtherStatus,
}

/// What CRI-O said about another entry of the effective list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherStatus {
    /// An exact `name@sha256:…` whose image is present and pinned.
    Pinned,
    /// An exact entry whose image is present but NOT pinned: a failure.
    NotPinned,
    /// An exact entry whose image is not in the store (nothing to pin yet).
    Absent,
    /// A pattern or a name without a digest: not checked.
    Pattern,
}

impl OtherStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OtherStatus::Pinned => "pinned",
            OtherStatus::NotPinned => "not-pinned",
            OtherStatus::Absent => "absent",
            OtherStatus::Pattern => "pattern",
        }
    }
}

/// Why [`confirm`] could not ask CRI-O at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfirmError {
    /// The socket exists but nothing answered `Version` in time (a hung or starting daemon,
    /// or a stale socket file someone else holds open).
    #[error("CRI-O at `{}` did not answer within {} s", socket.display(), waited.as_secs())]
    NoAnswer { socket: PathBuf, waited: Duration },
    #[error(transparent)]
    Cri(#[from] CriError),
}

/// Connects and asks `Version`, within one deadline of `call_timeout`.
async fn answering(
    socket: &Path,
    call_timeout: Duration,
) -> Result<(CriClient, proto::VersionResponse), ConfirmError> {
    let first = async {
        let mut client = CriClient::connect(socket, call_timeout).await?;
        let version = client.version().await?;
        Ok::<_, CriError>((client, version))
    };
    let no_answer = || ConfirmError::NoAnswer {
        socket: socket.to_path_buf(),
        waited: call_timeout,
    };
    match tokio::time::timeout(call_timeout, first).await {
        Err(_) => Err(no_answer()),
        Ok(Err(e)) if e.is_timeout() => Err(no_answer()),
        Ok(r) => Ok(r?),
    }
}

/// The per-call timeout for a confirmation of `timeout`.
fn call_timeout(timeout: Duration) -> Duration {
    timeout.clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// CRI-O's `Version`, asked once (before deciding how to reload).
///
/// # Errors
/// As [`confirm`]: unreachable, no answer within the call timeout of `timeout`.
pub async fn runtime_version(
    socket: &Path,
    timeout: Duration,
) -> Result<proto::VersionResponse, ConfirmError> {
    Ok(answering(socket, call_timeout(timeout)).await?.1)
}

/// Waits until CRI-O answers `Version` again (after a restart), retrying every `interval`
/// until `timeout` has passed.
///
/// # Errors
/// [`ConfirmError::NoAnswer`] naming the whole wait, or the last error.
pub async fn wait_answering(
    socket: &Path,
    timeout: Duration,
    interval: Duration,
) -> Result<proto::VersionResponse, ConfirmError> {
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        match answering(socket, call_timeout(left)).await {
            Ok((_, v)) => return Ok(v),
            Err(_) if start.elapsed() + interval < timeout => tokio::time::sleep(interval).await,
            Err(_) => {
                return Err(ConfirmError::NoAnswer {
                    socket: socket.to_path_buf(),
                    waited: timeout,
                });
            }
        }
    }
}

/// Poll CRI-O every `interval` until each of `refs` (as `name@sha256:…`) is present and
/// pinned, or `timeout` has passed; report the runtime's name and version. Presence comes
/// from `ImageStatus`, pinning from `ImageStatus` or `ListImages` (module Decisions).
///
/// # Errors
/// Only when the CRI cannot be reached, does not answer `Version` within one call timeout
/// ([`ConfirmError::NoAnswer`]) or `Version` fails; per-image call failures are recorded in
/// the findings and retried.
pub async fn confirm(
    socket: &Path,
    refs: &[PinnedRef],
    timeout: Duration,
    interval: Duration,
) -> Result<ConfirmReport, ConfirmError> {
    confirm_all(socket, refs, &[], timeout, interval).await
}

/// [`confirm`], also checking `others`, the rest of the effective list: an exact
/// `name@sha256:…` whose image is present must be pinned; one whose image is absent and a
/// pattern are reported, not waited for.
///
/// # Errors
/// As [`confirm`].
pub async fn confirm_all(
    socket: &Path,
    refs: &[PinnedRef],
    others: &[String],
    timeout: Duration,
    interval: Duration,
) -> Result<ConfirmReport, ConfirmError> {
    let start = Instant::now();
    let (mut client, version) = answering(socket, call_timeout(timeout)).await?;
    let finding = |r: &PinnedRef| ImageFinding {
        reference: r.clone(),
        present: false,
        pinned: false,
        pinned_by: None,
        id: None,
        error: None,
    };
    let mut images: Vec<ImageFinding> = refs.iter().map(finding).collect();
    // Others: exact entries become findings; the rest are patterns.
    let exact: Vec<Option<PinnedRef>> = others.iter().map(|e| exact_entry(e)).collect();
    let mut other_findings: Vec<ImageFinding> = exact.iter().flatten().map(finding).collect();
    let timed_out = loop {
        poll_once(&mut client, &mut images).await;
        poll_once(&mut client, &mut other_findings).await;
        let others_ok = other_findings.iter().all(|f| !f.present || f.pinned);
        if images.iter().all(ImageFinding::is_ok) && others_ok {
            break false;
        }
        if start.elapsed() + interval > timeout {
            break true;
        }
        tokio::time::sleep(interval).await;
    };
    let mut found = other_findings.into_iter();
    let others = others
        .iter()
        .zip(&exact)
        .map(|(entry, exact)| OtherEntry {
            entry: entry.clone(),
            status: match exact.as_ref().and_then(|_| found.next()) {
                None => OtherStatus::Pattern,
                Some(f) if f.pinned => OtherStatus::Pinned,
                Some(f) if f.present => OtherStatus::NotPinned,
                Some(_) => OtherStatus::Absent,
            },
        })
        .collect();
    Ok(ConfirmReport {
        version_issue: version_issue(&version.runtime_name, &version.runtime_version),
        image_status_pinned: image_status_reports_pinned(
            &version.runtime_name,
            &version.runtime_version,
        ),
        runtime_name: version.runtime_name,
        runtime_version: version.runtime_version,
        runtime_api_version: version.runtime_api_version,
        images,
        others,
        timed_out,
        elapsed: start.elapsed(),
    })
}

/// An entry that names one image exactly (`name@sha256:…`, normalised as CRI-O stores it);
/// `None` for patterns and anything else.
fn exact_entry(entry: &str) -> Option<PinnedRef> {
    if entry.contains('*') {
        return None;
    }
    let r: crate::reference::Reference = entry.parse().ok()?;
    if r.tag().is_some() || r.to_string() != entry {
        return None;
    }
    Some(PinnedRef {
        digest: r.digest()?.clone(),
        name: r.name(),
    })
}

/// One round: `ImageStatus` for every image not yet confirmed, then one `ListImages` for
/// those present but not reported pinned.
async fn poll_once(client: &mut CriClient, images: &mut [ImageFinding]) {
    for finding in images.iter_mut().filter(|f| !f.is_ok()) {
        match client.image_status(&finding.reference.to_string()).await {
            Ok(Some(img)) => {
                finding.present = true;
                finding.pinned = img.pinned;
                finding.pinned_by = img.pinned.then_some(PinnedBy::ImageStatus);
                finding.id = Some(img.id);
                finding.error = None;
            }
            Ok(None) => {
                finding.present = false;
                finding.pinned = false;
                finding.pinned_by = None;
                finding.id = None;
                finding.error = None;
            }
            Err(e) => finding.error = Some(error_chain(&e)),
        }
    }
    if !images.iter().any(|f| f.present && !f.pinned) {
        return;
    }
    let listed = match client.list_images().await {
        Ok(l) => l,
        Err(e) => {
            let e = error_chain(&e);
            for f in images.iter_mut().filter(|f| f.present && !f.pinned) {
                f.error = Some(e.clone());
            }
            return;
        }
    };
    for f in images.iter_mut().filter(|f| f.present && !f.pinned) {
        if listed_entry(&listed, f).is_some_and(|i| i.pinned) {
            f.pinned = true;
            f.pinned_by = Some(PinnedBy::ListImages);
        }
    }
}

/// The `ListImages` entry for a finding: the one with the ID `ImageStatus` gave, else one
/// listing the reference among its repo digests or tags (a storage name belongs to one image
/// only, so either finds the same image).
fn listed_entry<'a>(listed: &'a [proto::Image], f: &ImageFinding) -> Option<&'a proto::Image> {
    let bare = |s: &str| s.strip_prefix("sha256:").unwrap_or(s).to_ascii_lowercase();
    let by_id =
        f.id.as_deref()
            .and_then(|id| listed.iter().find(|i| bare(&i.id) == bare(id)));
    let wanted = f.reference.to_string();
    by_id.or_else(|| {
        listed.iter().find(|i| {
            i.repo_digests
                .iter()
                .chain(&i.repo_tags)
                .any(|n| n.eq_ignore_ascii_case(&wanted))
        })
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

    #[test]
    fn image_status_pinned_from_1_29_7_1_30_6_1_31_0() {
        let f = |v| image_status_reports_pinned("cri-o", v);
        for v in [
            "1.28.4",
            "1.29.0",
            "1.29.6",
            "1.30.0",
            "1.30.5",
            "v1.30.5-1.el9",
        ] {
            assert_eq!(f(v), Some(false), "{v}");
        }
        for v in ["1.29.7", "1.30.6", "1.31.0", "1.36.3", "2.0.0"] {
            assert_eq!(f(v), Some(true), "{v}");
        }
        // Reload-correct but still without the field: the gap the old table missed.
        assert_eq!(version_issue("cri-o", "1.30.5"), None);
        assert_eq!(f("garbage"), None);
        assert_eq!(image_status_reports_pinned("containerd", "1.7.0"), None);
    }

    #[test]
    fn listed_entry_by_id_then_by_name() {
        let digest = format!("sha256:{}", "d".repeat(64));
        let reference: PinnedRef = PinnedRef {
            name: "quay.io/a/b".into(),
            digest: digest.parse().unwrap(),
        };
        let image = |id: &str, names: &[&str], pinned| proto::Image {
            id: id.into(),
            repo_tags: vec![],
            repo_digests: names.iter().map(|n| n.to_string()).collect(),
            size: 1,
            pinned,
        };
        let listed = [
            image("1111", &["quay.io/x/y@sha256:00"], false),
            image("2222", &[&format!("quay.io/a/b@{digest}")], true),
        ];
        let mut f = ImageFinding {
            reference,
            present: true,
            pinned: false,
            pinned_by: None,
            id: Some("sha256:1111".into()),
            error: None,
        };
        assert_eq!(listed_entry(&listed, &f).unwrap().id, "1111");
        f.id = Some("3333".into());
        assert_eq!(listed_entry(&listed, &f).unwrap().id, "2222");
        f.id = None;
        assert_eq!(listed_entry(&listed, &f).unwrap().id, "2222");
        assert!(listed_entry(&listed[..1], &f).is_none());
    }
}
