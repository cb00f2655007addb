//! What `load` reports (`load --json`), built once from what its phases returned.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use serde::ser::{SerializeStruct, Serializer};

use super::policy;
use super::space::SpaceReport;
use super::storage;
use super::store_config::StoreReport;
use crate::delta;
use crate::sign::SignatureInfo;
use crate::verify::{self, Problem};

/// The `--json` document of `load`.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub version: u32,
    pub bundle: PathBuf,
    pub dry_run: bool,
    /// What verification found; empty when the bundle is intact (and, with trusted keys,
    /// signed by one of them).
    pub problems: Vec<Problem>,
    /// The bundle's signature, `null` when unsigned.
    pub signature: Option<SignatureInfo>,
    pub images: Vec<ImageResult>,
    pub pins: Option<PinsResult>,
    /// How CRI-O was (in a dry run: would be) made to read the pins.
    pub reload: Option<String>,
    /// Why that way: the running release's row of the version table, or why it is unknown
    /// (`null` when CRI-O was not reloaded or the choice needs no reason).
    pub reload_reason: Option<String>,
    pub cri: Option<CriResult>,
    /// For a delta bundle: where the layers it omits come from.
    pub delta: Option<delta::LoadPlan>,
    /// The volumes read, when the bundle is a volume set.
    pub volumes: Option<verify::VolumesReport>,
    /// What the space check decided from (`null` when nothing was missing to check).
    pub space: Option<SpaceReport>,
    /// The store written: where it is and where each of its settings came from (`null`
    /// when the load stopped before the plan).
    pub store: Option<StoreReport>,
    /// Why the load failed after it began to import ([`LoadReport::ok`] is then false and the
    /// exit code that of an operational error); `null` otherwise.
    pub error: Option<String>,
    /// After such a failure: the images this run added and removed again, and anything that
    /// could not be undone.
    pub rolled_back: Option<storage::RolledBack>,
    pub warnings: Vec<String>,
    pub seconds: f64,
    /// Why the signature policy refused the bundle, one sentence per image; nothing was
    /// touched, and the exit code is 1. Shown only when not empty.
    pub refused: Vec<String>,
    /// Whether the pins were written but CRI-O could not confirm them at all (no socket, no
    /// answer, a restart that could not be made; then `cri` is `null`): not shown itself,
    /// but it makes the load not ok.
    pub(super) cri_unreachable: bool,
}

impl LoadReport {
    /// True when every image is in the store, pinned (unless `--no-pin`) and, where the CRI
    /// was asked, confirmed present and pinned.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
            && self.refused.is_empty()
            && self.error.is_none()
            && !self.cri_unreachable
            && self.cri.as_ref().is_none_or(|c| c.confirmed)
    }
}

/// By hand, for the derived `ok`; the fields in the order `load --json` has always had.
impl Serialize for LoadReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("LoadReport", 19)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("bundle", &self.bundle)?;
        st.serialize_field("dryRun", &self.dry_run)?;
        st.serialize_field("ok", &self.ok())?;
        st.serialize_field("problems", &self.problems)?;
        if self.refused.is_empty() {
            st.skip_field("refused")?;
        } else {
            st.serialize_field("refused", &self.refused)?;
        }
        st.serialize_field("signature", &self.signature)?;
        st.serialize_field("images", &self.images)?;
        st.serialize_field("pins", &self.pins)?;
        st.serialize_field("reload", &self.reload)?;
        match &self.reload_reason {
            Some(r) => st.serialize_field("reloadReason", r)?,
            None => st.skip_field("reloadReason")?,
        }
        st.serialize_field("cri", &self.cri)?;
        match &self.delta {
            Some(d) => st.serialize_field("delta", d)?,
            None => st.skip_field("delta")?,
        }
        match &self.volumes {
            Some(v) => st.serialize_field("volumes", v)?,
            None => st.skip_field("volumes")?,
        }
        st.serialize_field("space", &self.space)?;
        match &self.store {
            Some(v) => st.serialize_field("store", v)?,
            None => st.skip_field("store")?,
        }
        st.serialize_field("error", &self.error)?;
        match &self.rolled_back {
            Some(r) => st.serialize_field("rolledBack", r)?,
            None => st.skip_field("rolledBack")?,
        }
        st.serialize_field("warnings", &self.warnings)?;
        st.serialize_field("seconds", &self.seconds)?;
        st.end()
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageResult {
    pub reference: String,
    /// `name@digest`: the storage name given and the pin written.
    pub pin: String,
    pub status: ImageStatus,
    /// Whether CRI-O reported it pinned (`null` when it was not asked).
    pub pinned: Option<bool>,
    pub size: u64,
    pub uncompressed_size: u64,
    /// The platform taken from the bundle for this node (`os/arch[/variant]`), absent when
    /// the load stopped before the plan or the bundle does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the signature policy decided for the image's original names (absent when the
    /// load stopped before the policy was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<policy::Decision>,
}

/// What `load` did with one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageStatus {
    /// Imported by this run.
    Loaded,
    /// Already in the store.
    Present,
    /// A dry run would import it.
    WouldLoad,
    /// Its import failed.
    Failed,
    /// Not imported (the load stopped before it).
    NotLoaded,
    /// Loaded, then removed again when a later import failed.
    RolledBack,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Loaded => "loaded",
            ImageStatus::Present => "present",
            ImageStatus::WouldLoad => "would-load",
            ImageStatus::Failed => "failed",
            ImageStatus::NotLoaded => "not-loaded",
            ImageStatus::RolledBack => "rolled-back",
        }
    }
}

impl fmt::Display for ImageStatus {
    /// Pads like a string, so renderers can align columns.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PinsResult {
    pub drop_in: PathBuf,
    /// Whether the drop-in changed (in a dry run: would change).
    pub changed: bool,
    /// How many entries the drop-in holds: the list CRI-O uses.
    pub entries: usize,
    /// This bundle's pins the drop-in did not hold yet: added (in a dry run: to add).
    pub added: Vec<String>,
    /// This bundle's pins the drop-in already held.
    pub already_there: Vec<String>,
    /// Entries of an earlier file (whose list ours replaces) carried into ours.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carried: Option<CarriedResult>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CarriedResult {
    /// The file whose list ours replaces.
    pub from: PathBuf,
    /// How many of its entries were added to ours by this run.
    pub entries: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CriResult {
    pub runtime: String,
    pub version: String,
    pub confirmed: bool,
    pub timed_out: bool,
    /// The effective list's entries other than this bundle's, as CRI-O reported them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub others: Vec<OtherPinResult>,
}

/// An entry of CRI-O's `pinned_images` that is not one of this bundle's images.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OtherPinResult {
    pub entry: String,
    /// `pinned`, `not-pinned` (its image is present: the load is not ok), `absent` or
    /// `pattern` (not checked).
    pub status: &'static str,
}

#[cfg(test)]
mod tests {
    use super::super::store_config::Origin;
    use super::*;
    use crate::reference::Digest;
    use crate::sign;

    /// Every field set, so the `--json` document's bytes (names, order, skipped fields) are
    /// pinned.
    fn full_report() -> LoadReport {
        let d = Digest::of(b"x");
        LoadReport {
            version: 1,
            bundle: "b.pinbundle".into(),
            dry_run: false,
            problems: vec![Problem {
                member: Some("m".into()),
                digest: Some(d.clone()),
                images: vec!["r".into()],
                error: "e".into(),
            }],
            signature: Some(SignatureInfo {
                key_id: sign::KeyId([1; 8]),
                trusted_comment: "c".into(),
                verified_by: Some("k.pub".into()),
            }),
            images: vec![ImageResult {
                reference: "r:1".into(),
                pin: format!("r@{d}"),
                status: ImageStatus::RolledBack,
                pinned: Some(true),
                size: 1,
                uncompressed_size: 2,
                platform: Some("linux/amd64".into()),
                error: Some("x".into()),
                policy: None,
            }],
            pins: Some(PinsResult {
                drop_in: "p".into(),
                changed: true,
                entries: 3,
                added: vec!["a@sha256:1".into()],
                already_there: Vec::new(),
                carried: None,
            }),
            reload: Some("r".into()),
            reload_reason: Some("why".into()),
            cri: Some(CriResult {
                runtime: "cri-o".into(),
                version: "1".into(),
                confirmed: false,
                timed_out: true,
                others: Vec::new(),
            }),
            delta: Some(delta::LoadPlan {
                base: None,
                from_bases: Vec::new(),
                from_storage: Vec::new(),
            }),
            volumes: Some(verify::VolumesReport {
                set: d.clone(),
                count: 2,
                present: Vec::new(),
                missing: Vec::new(),
                incomplete_blobs: Vec::new(),
            }),
            space: Some(SpaceReport {
                sizes: super::super::space::Sizes::Declared,
                unpacked: 4,
                staged: 5,
                filesystems: Vec::new(),
                warnings: Vec::new(),
            }),
            store: Some(StoreReport {
                root: "/r".into(),
                runroot: "/rr".into(),
                driver: "vfs".into(),
                imagestore: Some("/i".into()),
                options: vec!["vfs.ignore_chown_errors=true".into()],
                storage_conf: None,
                from: super::super::store_config::StoreFrom {
                    root: Origin::File("/etc/crio/crio.conf".into()),
                    runroot: Origin::Default,
                    driver: Origin::Flag("--storage-driver"),
                    imagestore: Some(Origin::Env("STORAGE_OPTS")),
                },
                cross_checked: Some("/i/vfs-images".into()),
            }),
            error: Some("err".into()),
            rolled_back: Some(storage::RolledBack::default()),
            warnings: vec!["w".into()],
            seconds: 1.5,
            cri_unreachable: false,
            refused: Vec::new(),
        }
    }

    #[test]
    fn policy_fields() {
        let mut r = full_report();
        r.problems.clear();
        r.error = None;
        r.cri = None;
        assert!(r.ok());
        r.images[0].policy = Some(policy::Decision {
            file: "/p.json".into(),
            scope: "default".into(),
            requirement: "reject".into(),
            admitted: false,
        });
        r.refused = vec!["r:1 is refused".into()];
        assert!(!r.ok());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["refused"][0], "r:1 is refused");
        assert_eq!(
            v["images"][0]["policy"],
            serde_json::json!({"file":"/p.json","scope":"default","requirement":"reject","admitted":false})
        );
    }

    #[test]
    fn json_document_is_unchanged() {
        let r = full_report();
        assert!(!r.ok());
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"bundle":"b.pinbundle","dryRun":false,"ok":false,"problems":[{"member":"m","digest":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","images":["r"],"error":"e"}],"signature":{"keyId":"0101010101010101","trustedComment":"c","verifiedBy":"k.pub"},"images":[{"reference":"r:1","pin":"r@sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","status":"rolled-back","pinned":true,"size":1,"uncompressedSize":2,"platform":"linux/amd64","error":"x"}],"pins":{"dropIn":"p","changed":true,"entries":3,"added":["a@sha256:1"],"alreadyThere":[]},"reload":"r","reloadReason":"why","cri":{"runtime":"cri-o","version":"1","confirmed":false,"timedOut":true},"delta":{"base":null,"fromBases":[],"fromStorage":[]},"volumes":{"set":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","count":2,"present":[],"missing":[],"incompleteBlobs":[]},"space":{"sizes":"declared","unpacked":4,"staged":5,"filesystems":[]},"store":{"root":"/r","runroot":"/rr","driver":"vfs","imagestore":"/i","options":["vfs.ignore_chown_errors=true"],"storageConf":null,"from":{"root":"/etc/crio/crio.conf","runroot":"default","driver":"--storage-driver","imagestore":"$STORAGE_OPTS"},"crossChecked":"/i/vfs-images"},"error":"err","rolledBack":{"removed":[],"left":[]},"warnings":["w"],"seconds":1.5}"#
        );
        let mut r = full_report();
        r.problems.clear();
        r.error = None;
        r.delta = None;
        r.volumes = None;
        r.rolled_back = None;
        r.store = None;
        r.images[0].error = None;
        r.images[0].platform = None;
        r.reload_reason = None;
        r.images[0].status = ImageStatus::Loaded;
        r.cri = Some(CriResult {
            runtime: "cri-o".into(),
            version: "1".into(),
            confirmed: true,
            timed_out: false,
            others: Vec::new(),
        });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"version":1,"bundle":"b.pinbundle","dryRun":false,"ok":true,"problems":[],"signature":{"keyId":"0101010101010101","trustedComment":"c","verifiedBy":"k.pub"},"images":[{"reference":"r:1","pin":"r@sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","status":"loaded","pinned":true,"size":1,"uncompressedSize":2}],"pins":{"dropIn":"p","changed":true,"entries":3,"added":["a@sha256:1"],"alreadyThere":[]},"reload":"r","cri":{"runtime":"cri-o","version":"1","confirmed":true,"timedOut":false},"space":{"sizes":"declared","unpacked":4,"staged":5,"filesystems":[]},"error":null,"warnings":["w"],"seconds":1.5}"#
        );
    }

    #[test]
    fn ok_is_derived_from_what_happened() {
        let mut r = full_report();
        r.problems.clear();
        r.error = None;
        // CRI-O answered: its answer decides.
        assert!(!r.ok());
        r.cri.as_mut().unwrap().confirmed = true;
        assert!(r.ok());
        // CRI-O could not be asked at all.
        r.cri = None;
        r.cri_unreachable = true;
        assert!(!r.ok());
        // --no-confirm, --no-pin or a dry run: nothing to confirm.
        r.cri_unreachable = false;
        assert!(r.ok());
        r.error = Some("import failed".into());
        assert!(!r.ok());
    }

    #[test]
    fn statuses_read_as_before() {
        for (s, text) in [
            (ImageStatus::Loaded, "loaded"),
            (ImageStatus::Present, "present"),
            (ImageStatus::WouldLoad, "would-load"),
            (ImageStatus::Failed, "failed"),
            (ImageStatus::NotLoaded, "not-loaded"),
            (ImageStatus::RolledBack, "rolled-back"),
        ] {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{text}\""));
            assert_eq!(format!("{s:<12}|"), format!("{text:<12}|"));
        }
    }
}
