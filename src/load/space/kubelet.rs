//! Kubelet's disk thresholds: the free space it defends on the image filesystem (CRI-O's
//! store) and the node filesystem (its root dir), read from its configuration file.
//!
//! Kubelet's rules (pkg/kubelet/eviction, cmd/kubelet/app/server.go `loadConfigFile`):
//! - `evictionHard` absent: the defaults (`imagefs.available` 15 %, `nodefs.available` 10 %).
//!   Present: the signals it does not name are 0 (off), unless `mergeDefaultEvictionSettings`
//!   (kubelet 1.33+) fills them in from the defaults.
//! - A threshold is a percentage of the filesystem's capacity or a quantity (`10Gi`); `0` or
//!   `0%` turns the signal off. Kubelet evicts pods once the available space drops below it.
//! - `imageGCHighThresholdPercent` (default 85): image GC starts once usage reaches it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where kubelet's configuration lives: kubeadm's, then OpenShift's (MCO's kubelet unit runs
/// `kubelet --config=/etc/kubernetes/kubelet.conf`).
pub const DEFAULT_PATHS: [&str; 2] = [
    "/var/lib/kubelet/config.yaml",
    "/etc/kubernetes/kubelet.conf",
];

/// Kubelet's root dir, on the node filesystem `nodefs.*` is measured on.
pub const ROOT_DIR: &str = "/var/lib/kubelet";

const DEFAULT_IMAGEFS: &str = "15%";
const DEFAULT_NODEFS: &str = "10%";
const DEFAULT_GC_HIGH: u8 = 85;
/// Larger than any file kubelet's configuration could sensibly be.
const MAX_CONFIG: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeletError {
    #[error("cannot read kubelet's configuration {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse kubelet's configuration {}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
    #[error("kubelet's configuration {}: {field} \"{value}\" is not a percentage (`15%`) or a quantity (`10Gi`)", path.display())]
    Threshold {
        path: PathBuf,
        field: String,
        value: String,
    },
}

/// A size that must stay free.
#[derive(Debug, Clone, PartialEq)]
pub enum Threshold {
    /// A percentage of the filesystem's capacity.
    Percent(f64),
    Bytes(u64),
}

impl Threshold {
    /// Parses `15%`, `7.5%`, `10Gi`, `500M`, `1048576`.
    pub fn parse(s: &str) -> Option<Threshold> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().ok()?;
            return (0.0..=100.0).contains(&p).then_some(Threshold::Percent(p));
        }
        parse_quantity(s).map(Threshold::Bytes)
    }

    /// The bytes it asks for on a filesystem of `capacity` bytes.
    pub fn bytes(&self, capacity: u64) -> u64 {
        match *self {
            // Capacity fits an f64 to well under a byte per MiB; round up, to be safe.
            Threshold::Percent(p) => (capacity as f64 * p / 100.0).ceil() as u64,
            Threshold::Bytes(n) => n,
        }
    }
}

/// A Kubernetes quantity as bytes: digits with an optional fraction and a binary (`Ki` … `Ei`)
/// or decimal (`k`, `M` … `E`) suffix.
pub fn parse_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000_u64.pow(2),
        "G" => 1000_u64.pow(3),
        "T" => 1000_u64.pow(4),
        "P" => 1000_u64.pow(5),
        "E" => 1000_u64.pow(6),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return None,
    };
    if num.is_empty() || num.matches('.').count() > 1 {
        return None;
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut n = int.checked_mul(mult)?;
    if !frac.is_empty() {
        let f: f64 = format!("0.{frac}").parse().ok()?;
        n = n.checked_add((f * mult as f64).ceil() as u64)?;
    }
    Some(n)
}

/// Where kubelet's thresholds came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// No configuration file was found (or it could not be used): kubelet's defaults.
    Default,
    File(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("kubelet's default"),
            Source::File(p) => write!(f, "from {}", p.display()),
        }
    }
}

/// One signal's threshold as written, and what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    pub written: String,
    pub threshold: Threshold,
}

/// Kubelet's disk thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Kubelet {
    /// `imagefs.available`, `None` when off.
    pub imagefs: Option<Signal>,
    /// `nodefs.available`, `None` when off.
    pub nodefs: Option<Signal>,
    /// `imageGCHighThresholdPercent`.
    pub gc_high_percent: u8,
    pub source: Source,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    eviction_hard: Option<BTreeMap<String, String>>,
    #[serde(rename = "imageGCHighThresholdPercent")]
    image_gc_high_threshold_percent: Option<u8>,
    merge_default_eviction_settings: Option<bool>,
}

fn signal(written: &str) -> Option<Signal> {
    let threshold = Threshold::parse(written)?;
    // Zero turns the signal off, as in kubelet.
    (threshold.bytes(u64::MAX) > 0).then(|| Signal {
        written: written.to_string(),
        threshold,
    })
}

impl Kubelet {
    /// Kubelet's defaults.
    pub fn defaults() -> Kubelet {
        Kubelet {
            imagefs: signal(DEFAULT_IMAGEFS),
            nodefs: signal(DEFAULT_NODEFS),
            gc_high_percent: DEFAULT_GC_HIGH,
            source: Source::Default,
        }
    }

    /// The thresholds of `explicit` (which must be readable), else of the first of
    /// [`DEFAULT_PATHS`] that exists, else the defaults. A default path that exists but cannot
    /// be used gives the defaults and a warning: kubelet itself cannot be running with it.
    pub fn read(explicit: Option<&Path>) -> Result<(Kubelet, Option<String>), KubeletError> {
        if let Some(p) = explicit {
            return Ok((Kubelet::read_file(p)?, None));
        }
        let Some(p) = DEFAULT_PATHS.iter().map(Path::new).find(|p| p.exists()) else {
            return Ok((Kubelet::defaults(), None));
        };
        match Kubelet::read_file(p) {
            Ok(k) => Ok((k, None)),
            Err(e) => Ok((
                Kubelet::defaults(),
                Some(format!(
                    "{}; kubelet's default thresholds are used instead (name the file with --kubelet-config)",
                    crate::error::error_chain(&e)
                )),
            )),
        }
    }

    /// The thresholds of one KubeletConfiguration file, YAML or JSON.
    pub fn read_file(path: &Path) -> Result<Kubelet, KubeletError> {
        let read_err = |source| KubeletError::Read {
            path: path.to_path_buf(),
            source,
        };
        let bytes = crate::input::read_regular(path, MAX_CONFIG).map_err(read_err)?;
        let text = String::from_utf8(bytes).map_err(|e| KubeletError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Kubelet::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Kubelet, KubeletError> {
        let parse_err = |detail: String| KubeletError::Parse {
            path: path.to_path_buf(),
            detail,
        };
        let raw: Raw = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| parse_err(e.to_string()))?
        } else {
            serde_saphyr::from_str(text).map_err(|e| parse_err(e.to_string()))?
        };
        let merge = raw.merge_default_eviction_settings.unwrap_or(false);
        let pick = |name: &str, default: &str| -> Result<Option<Signal>, KubeletError> {
            let written = match &raw.eviction_hard {
                None => Some(default),
                Some(m) => m.get(name).map(String::as_str).or(merge.then_some(default)),
            };
            let Some(written) = written else {
                return Ok(None);
            };
            if Threshold::parse(written).is_none() {
                return Err(KubeletError::Threshold {
                    path: path.to_path_buf(),
                    field: format!("evictionHard.{name}"),
                    value: crate::text::excerpt(written, 40),
                });
            }
            Ok(signal(written))
        };
        Ok(Kubelet {
            imagefs: pick("imagefs.available", DEFAULT_IMAGEFS)?,
            nodefs: pick("nodefs.available", DEFAULT_NODEFS)?,
            gc_high_percent: raw
                .image_gc_high_threshold_percent
                .unwrap_or(DEFAULT_GC_HIGH),
            source: Source::File(path.to_path_buf()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Kubelet {
        Kubelet::parse(Path::new("/k.yaml"), text).unwrap()
    }

    #[test]
    fn quantities_and_percentages() {
        assert_eq!(parse_quantity("10Gi"), Some(10 << 30));
        assert_eq!(parse_quantity("500M"), Some(500_000_000));
        assert_eq!(parse_quantity("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_quantity("4096"), Some(4096));
        assert_eq!(parse_quantity("16GB"), None);
        assert_eq!(parse_quantity("-1Gi"), None);
        assert_eq!(parse_quantity(""), None);
        assert_eq!(Threshold::parse("15%"), Some(Threshold::Percent(15.0)));
        assert_eq!(Threshold::parse("101%"), None);
        assert_eq!(Threshold::Percent(15.0).bytes(1000), 150);
        assert_eq!(Threshold::Percent(7.5).bytes(1001), 76);
    }

    #[test]
    fn kubelet_defaults_and_its_replace_rule() {
        // No evictionHard: the defaults.
        let k = parse("kind: KubeletConfiguration\nimageGCHighThresholdPercent: 70\n");
        assert_eq!(k.imagefs.unwrap().written, "15%");
        assert_eq!(k.nodefs.unwrap().written, "10%");
        assert_eq!(k.gc_high_percent, 70);
        // evictionHard names one signal: the others are off…
        let k = parse("evictionHard:\n  imagefs.available: 30%\n  memory.available: 100Mi\n");
        assert_eq!(k.imagefs.unwrap().threshold, Threshold::Percent(30.0));
        assert_eq!(k.nodefs, None);
        assert_eq!(k.gc_high_percent, 85);
        // …unless merged with the defaults.
        let k =
            parse("evictionHard:\n  imagefs.available: 2Gi\nmergeDefaultEvictionSettings: true\n");
        assert_eq!(k.imagefs.unwrap().threshold, Threshold::Bytes(2 << 30));
        assert_eq!(k.nodefs.unwrap().written, "10%");
        // 0% turns a signal off; JSON (as MCO renders kubelet.conf) reads the same.
        let k = parse(r#"{"evictionHard":{"imagefs.available":"0%","nodefs.available":"5Gi"}}"#);
        assert_eq!(k.imagefs, None);
        assert_eq!(k.nodefs.unwrap().threshold, Threshold::Bytes(5 << 30));
        let err = Kubelet::parse(
            Path::new("/k"),
            "evictionHard:\n  imagefs.available: lots\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/k") && err.contains("imagefs.available"),
            "{err}"
        );
        assert!(Kubelet::parse(Path::new("/k"), "evictionHard: [1\n").is_err());
    }
}
