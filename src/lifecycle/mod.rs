//! What happens after `load`: [`list`] what pinbundle pinned and loaded, [`unpin`] it, and
//! [`prune`] the images it loaded that nothing pins any more. [`record`] is the small file
//! `load` keeps of what it put into which store; it is what lets `prune` tell pinbundle's
//! images from everyone else's.
//!
//! The node is found exactly as `load` finds it: CRI-O's configuration
//! ([`crate::load::crio_config`]), the store it serves ([`crate::load::store_config`]) and its
//! CRI socket ([`crate::load::cri`]).

pub mod list;
pub mod prune;
pub mod record;
pub mod unpin;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::load::cri::CriClient;
use crate::load::crio_config::CrioConfig;
use crate::load::store_config::{self, PreparedStore, StoreFlags};

/// Where the node's pieces are, as `load` takes them.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub store: StoreFlags,
    /// CRI-O's main configuration file (`crio --config`).
    pub crio_config: PathBuf,
    /// CRI-O's drop-in directory (`crio --config-dir`).
    pub crio_config_dir: PathBuf,
    /// pinbundle's drop-in, the file `load` writes pins to.
    pub drop_in: PathBuf,
    pub cri_socket: PathBuf,
    /// How long to wait for CRI-O (each call, and a confirmation in all).
    pub timeout: Duration,
    /// Where the record of loaded images is kept.
    pub state_dir: PathBuf,
}

impl NodeOptions {
    pub fn record_path(&self) -> PathBuf {
        self.state_dir.join(record::RECORD_NAME)
    }

    fn crio(&self) -> Result<CrioConfig> {
        CrioConfig::read(&self.crio_config, &self.crio_config_dir)
            .context("reading CRI-O's configuration")
    }

    /// The store CRI-O serves, resolved as `load` resolves it.
    fn store(&self, crio: &CrioConfig) -> Result<PreparedStore> {
        store_config::resolve(&self.store, crio, &store_config::StorageEnv::from_process())
            .context("finding the containers-storage CRI-O serves")?
            .prepare()
            .context("describing the store")
    }

    /// The entries of pinbundle's drop-in (empty when it does not exist).
    fn drop_in_entries(&self, crio: &CrioConfig) -> Vec<String> {
        crio.pinned_images()
            .find(|s| s.from == self.drop_in)
            .map(|s| s.value.iter().map(|e| (*e).to_string()).collect())
            .unwrap_or_default()
    }
}

/// Every file of CRI-O's configuration that sets `pinned_images`, with its entries.
fn pin_files(crio: &CrioConfig) -> Vec<(PathBuf, Vec<String>)> {
    crio.pinned_images()
        .map(|s| (s.from, s.value.iter().map(|e| (*e).to_string()).collect()))
        .collect()
}

/// Whether CRI-O's pattern `pattern` pins an image named `name`, leaning towards yes: exact
/// entries match case-insensitively, `prefix*` anywhere in the name (CRI-O's glob is not
/// anchored at the start), `*keyword*` as a substring, `""` nothing.
pub fn pattern_pins(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    if pattern.is_empty() {
        return false;
    }
    match pattern.strip_suffix('*') {
        Some(stem) => name.contains(stem.strip_prefix('*').unwrap_or(stem)),
        None => pattern == name,
    }
}

/// What CRI-O says about one pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CriPinned {
    Pinned,
    NotPinned,
    /// CRI-O does not see the image.
    Absent,
    /// CRI-O could not be asked (no socket, no answer).
    Unknown,
}

impl CriPinned {
    pub fn as_str(self) -> &'static str {
        match self {
            CriPinned::Pinned => "pinned",
            CriPinned::NotPinned => "not-pinned",
            CriPinned::Absent => "absent",
            CriPinned::Unknown => "unknown",
        }
    }
}

/// Asks CRI-O about every pin: `ImageStatus` finds the image, `ListImages` says whether it is
/// pinned (it has reported `pinned` since 1.28; `ImageStatus` only from 1.29.7/1.30.6).
/// Returns the runtime's `name version` too.
async fn cri_pinned(
    socket: &Path,
    timeout: Duration,
    pins: &[String],
) -> Result<(String, Vec<CriPinned>), crate::load::cri::CriError> {
    let mut client = CriClient::connect(socket, timeout).await?;
    let version = client.version().await?;
    let listed = client.list_images().await?;
    let mut out = Vec::with_capacity(pins.len());
    for pin in pins {
        let status = match client.image_status(pin).await? {
            None => CriPinned::Absent,
            Some(img) => {
                let pinned = img.pinned || listed.iter().any(|l| l.id == img.id && l.pinned);
                if pinned {
                    CriPinned::Pinned
                } else {
                    CriPinned::NotPinned
                }
            }
        };
        out.push(status);
    }
    Ok((
        format!("{} {}", version.runtime_name, version.runtime_version),
        out,
    ))
}

/// A runtime for the CRI calls.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[cfg(test)]
mod tests {
    use super::pattern_pins;

    #[test]
    fn patterns_follow_crio_leaning_to_pinned() {
        assert!(pattern_pins("quay.io/a@sha256:1", "QUAY.io/a@sha256:1"));
        assert!(!pattern_pins("quay.io/a", "quay.io/a:1"));
        assert!(pattern_pins("io/a*", "quay.io/a:1"));
        assert!(pattern_pins("*fedora*", "quay.io/crio/Fedora34:latest"));
        assert!(pattern_pins("**", "anything"));
        assert!(!pattern_pins("", "anything"));
    }
}
