//! The `load` sequence: verify → drop-in check → plan → delta check → space check → import →
//! pins → reload → confirm.
//!
//! Nothing on the node changes before the whole bundle is verified, every image's platform is
//! known to be carried, every layer a delta omits is known to be in the store or in a `--base`
//! bundle, and the space check passed. The drop-in is written last, atomically,
//! and only for images that are now in the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::space::{SpaceCheck, SpaceReport};
use super::storage::{self, ImportOptions, ImportOutcome, Skopeo, Store};
use super::{confirm, pins, reload};
use crate::bundle::format::{ImageEntry, media};
use crate::bundle::{BundleSet, SetOptions};
use crate::create::Platform;
use crate::delta;
use crate::error::error_chain;
use crate::progress::Reporter;
use crate::reference::PinnedRef;
use crate::sign;
use crate::verify::{self, Problem, SignatureInfo, VerifyOptions};

/// CRI-O's default drop-in for pins, the file MCO also writes.
pub const DEFAULT_DROP_IN: &str = "/etc/crio/crio.conf.d/50-pinned-images";
/// CRI-O's default CRI socket.
pub const DEFAULT_CRI_SOCKET: &str = "/var/run/crio/crio.sock";
/// Where the load lock lives when the store is the system's.
pub const DEFAULT_LOCK: &str = "/run/pinbundle/load.lock";

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The bundle file, its volumes in any order (one brings its siblings), or a directory.
    pub bundle: Vec<PathBuf>,
    pub store: Store,
    pub drop_in: PathBuf,
    pub reload: reload::ReloadMode,
    pub reload_env: reload::ReloadEnv,
    pub cri_socket: PathBuf,
    pub confirm_timeout: Duration,
    pub pinned_image_set_out: Option<PathBuf>,
    /// Check and plan only; change nothing.
    pub dry_run: bool,
    /// Import only; leave the drop-in and CRI-O alone.
    pub no_pin: bool,
    pub jobs: usize,
    /// The platform to take from indexes; the host's when `None`.
    pub platform: Option<Platform>,
    pub skopeo: Skopeo,
    /// The lock file that serialises loads.
    pub lock: PathBuf,
    /// The filesystem root for MCO detection (`/`).
    pub root: PathBuf,
    /// Where skopeo stages blobs (`--tmpdir`); its default (`/var/tmp`) when `None`.
    pub tmpdir: Option<PathBuf>,
    /// Public keys (minisign `.pub` files) trusted to sign bundles, besides those of
    /// `trusted_dir`. When any key is configured, only a bundle signed by one of them loads.
    pub trusted_keys: Vec<PathBuf>,
    /// A directory whose `*.pub` files are trusted keys ([`sign::DEFAULT_TRUSTED_DIR`]); a
    /// missing directory holds none.
    pub trusted_dir: PathBuf,
    /// Bundles that carry layers a delta bundle omits. They need no signature: what is taken
    /// from them is checked against the digests of the (verified, maybe signed) delta.
    pub bases: Vec<PathBuf>,
}

/// The `--json` document of `load`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    pub version: u32,
    pub bundle: PathBuf,
    pub dry_run: bool,
    /// True when every image is in the store, pinned (unless `--no-pin`) and, where the CRI
    /// was asked, confirmed present and pinned.
    pub ok: bool,
    /// What verification found; empty when the bundle is intact (and, with trusted keys,
    /// signed by one of them).
    pub problems: Vec<Problem>,
    /// The bundle's signature, `null` when unsigned.
    pub signature: Option<SignatureInfo>,
    pub images: Vec<ImageResult>,
    pub pins: Option<PinsResult>,
    pub reload: Option<String>,
    pub cri: Option<CriResult>,
    /// For a delta bundle: where the layers it omits come from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<delta::LoadPlan>,
    /// The volumes read, when the bundle is a volume set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<verify::VolumesReport>,
    /// What the space check decided from (`null` when nothing was missing to check).
    pub space: Option<SpaceReport>,
    /// Why the load failed after it began to import (`ok` is then false and the exit code
    /// that of an operational error); `null` otherwise.
    pub error: Option<String>,
    /// After such a failure: the images this run added and removed again, and anything that
    /// could not be undone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<storage::RolledBack>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageResult {
    pub reference: String,
    /// `name@digest`: the storage name given and the pin written.
    pub pin: String,
    /// `loaded`, `present` (already there), `would-load` (dry run), `failed`, `not-loaded`,
    /// `rolled-back` (loaded, then removed again when a later import failed).
    pub status: &'static str,
    /// Whether CRI-O reported it pinned (`null` when it was not asked).
    pub pinned: Option<bool>,
    pub size: u64,
    pub uncompressed_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PinsResult {
    pub drop_in: PathBuf,
    pub changed: bool,
    pub entries: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CriResult {
    pub runtime: String,
    pub version: String,
    pub confirmed: bool,
    pub timed_out: bool,
}

/// Runs `load`. `Err` is an operational failure before anything changed; a failure after
/// the first import is a report with `error` set, after the images this run added were
/// removed again (`rolled_back`); a damaged bundle or an unconfirmed pin is a report with
/// `ok: false`.
pub fn load(opts: &LoadOptions, reporter: &dyn Reporter) -> Result<LoadReport> {
    let started = Instant::now();
    // A trust configuration that cannot be read stops everything: loading without the policy
    // an administrator set up would be worse than not loading.
    let trusted_keys = sign::read_trusted(&opts.trusted_keys, Some(&opts.trusted_dir))
        .context("reading the trusted signing keys")?;
    let mut report = LoadReport {
        version: 1,
        bundle: opts.bundle.first().cloned().unwrap_or_default(),
        dry_run: opts.dry_run,
        ok: false,
        problems: Vec::new(),
        signature: None,
        images: Vec::new(),
        pins: None,
        reload: None,
        cri: None,
        delta: None,
        volumes: None,
        space: None,
        error: None,
        rolled_back: None,
        warnings: Vec::new(),
        seconds: 0.0,
    };
    let set_opts = SetOptions {
        allow_partial: false,
        find_siblings: true,
    };
    let bundle = match BundleSet::open(&opts.bundle, set_opts) {
        Ok(b) => Arc::new(b),
        Err(e @ crate::bundle::Error::Io { .. }) => return Err(e.into()),
        Err(e) => {
            // Damage found while opening: a finding like any other.
            report.problems.push(Problem {
                member: None,
                digest: None,
                images: Vec::new(),
                error: error_chain(&e),
            });
            return Ok(report);
        }
    };
    let manifest = bundle.manifest().clone();
    report.volumes = verify::VolumesReport::of(&bundle);
    report.images = manifest.images.iter().map(image_result).collect();

    // 1. Verify everything (with trusted keys, the signature first) before touching anything.
    reporter.message(&format!("verifying {}", bundle.path().display()));
    let verified = verify::verify_open_with(
        &bundle,
        &VerifyOptions {
            jobs: opts.jobs,
            trusted_keys,
        },
        reporter,
    )?;
    report.signature = verified.signature.clone();
    if !verified.ok {
        report.problems = verified.problems;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    // The inputs are open and verified: only now wait for another load, whose changes the
    // checks below must see.
    let _lock = if opts.dry_run {
        None
    } else {
        Some(lock(&opts.lock)?)
    };

    // 2. The drop-in dir must be one CRI-O can reload and our file one we can merge into:
    //    refuse now, before anything is looked up or imported, rather than after.
    let refs: Vec<PinnedRef> = manifest.images.iter().map(pin_of).collect();
    if !opts.no_pin {
        pins::scan_dir(&opts.drop_in)?.check()?;
        pins::check_update(&opts.drop_in, &refs)?;
    }

    // 3. Plan: tools, platforms, what is already present.
    opts.skopeo
        .version()
        .context("`load` imports with skopeo (Debian/RHEL package `skopeo`)")?;
    let platform = opts.platform.clone().unwrap_or_else(storage::host_platform);
    for img in &manifest.images {
        if media::is_index(&img.media_type)
            && !img.platforms.iter().any(|p| {
                p.os == platform.os
                    && p.architecture == platform.architecture
                    && (platform.variant.is_none() || platform.variant == p.variant)
            })
        {
            let carried: Vec<String> = img
                .platforms
                .iter()
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            bail!(
                "{} carries no {platform} image (it has {}); re-create the bundle with `--platform {platform}` or pass `--platform`",
                img.reference,
                carried.join(", ")
            );
        }
    }
    let mut missing: Vec<usize> = Vec::new();
    for (i, img) in manifest.images.iter().enumerate() {
        let pin = pin_of(img);
        let present = opts
            .store
            .record_named(&pin)
            .with_context(|| format!("reading the store for {pin}"))?
            .is_some_and(|r| {
                img.tag.is_none()
                    || r.names
                        .iter()
                        .any(|n| *n == format!("{}:{}", img.name, img.tag.as_deref().unwrap_or("")))
            });
        if present {
            report.images[i].status = "present";
        } else {
            report.images[i].status = if opts.dry_run {
                "would-load"
            } else {
                "not-loaded"
            };
            missing.push(i);
        }
    }

    // 4. A delta: every layer it omits must already be in the store or in a `--base` bundle.
    let bases = plan_delta(opts, &manifest, &missing, &mut report)?;
    let reused = report
        .delta
        .as_ref()
        .map(delta::LoadPlan::reused)
        .unwrap_or_default();

    // 5. Space, from the signed sizes or, for a bundle no trusted key signed, measured ones.
    let mut sources: Vec<&BundleSet> = vec![&bundle];
    sources.extend(bases.iter().map(|b| &**b));
    let space = SpaceCheck {
        store: &opts.store,
        tmpdir: opts.tmpdir.as_deref(),
        sources,
        trusted: verified
            .signature
            .as_ref()
            .is_some_and(|s| s.verified_by.is_some()),
        jobs: opts.jobs,
    }
    .run(&manifest, &missing, &reused, reporter)?;
    report.space = Some(space);
    if opts.dry_run {
        report.ok = true;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    // 6. Import through a registry on loopback serving the bundle as it is (and a delta's
    //    omitted layers from its bases); 7. pins, for images now present. From the first
    //    import until the drop-in is written, a failure removes again what this run added.
    let before = if missing.is_empty() {
        Vec::new()
    } else {
        opts.store
            .images()
            .context("reading the store's image list before importing")?
    };
    let changed = match import_and_pin(
        opts,
        &bundle,
        bases,
        &manifest,
        &missing,
        &refs,
        &mut report,
        reporter,
    ) {
        Ok(changed) => changed,
        Err(e) if missing.is_empty() => return Err(e),
        Err(e) => {
            // The report says what failed and what was undone; the caller exits as for an
            // operational error.
            reporter.message("the load failed: removing the images it added");
            let undone = storage::roll_back(&opts.store, &opts.skopeo, &before);
            for img in report.images.iter_mut().filter(|i| i.status == "loaded") {
                if undone.removed.iter().any(|r| r.names.contains(&img.pin)) {
                    img.status = "rolled-back";
                }
            }
            report.rolled_back = Some(undone);
            report.error = Some(error_chain(e.as_ref()));
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
    };
    if opts.no_pin {
        report.ok = true;
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    // 8. Reload, only when the pins changed.
    if changed {
        match reload::reload(opts.reload, &opts.reload_env) {
            Ok(reload::ReloadOutcome::Systemd) => {
                report.reload = Some("systemctl reload crio".into())
            }
            Ok(reload::ReloadOutcome::Signalled { pid }) => {
                report.reload = Some(format!("SIGHUP to crio (pid {pid})"))
            }
            Ok(reload::ReloadOutcome::Skipped { command }) => {
                report.warnings.push(format!(
                    "CRI-O was not reloaded; run `{command}` to apply the pins"
                ));
                report.reload = Some(format!("skipped: run `{command}`"));
            }
            Err(e) => report.warnings.push(format!(
                "pins written to `{}` but CRI-O could not be reloaded: {}",
                opts.drop_in.display(),
                error_chain(&e)
            )),
        }
    }

    // 9. Confirm over the CRI.
    let mut confirmed = true;
    if opts.cri_socket.exists() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let result = runtime.block_on(confirm::confirm(
            &opts.cri_socket,
            &refs,
            opts.confirm_timeout,
            Duration::from_millis(250),
        ));
        match result {
            Ok(c) => {
                if let Some(advice) = c.version_advice() {
                    report.warnings.push(advice);
                }
                for (i, f) in c.images.iter().enumerate() {
                    report.images[i].pinned = Some(f.pinned);
                    if !f.present {
                        report.images[i].error = Some("CRI-O does not see this image".into());
                    }
                }
                confirmed = c.is_ok();
                report.cri = Some(CriResult {
                    runtime: c.runtime_name.clone(),
                    version: c.runtime_version.clone(),
                    confirmed,
                    timed_out: c.timed_out,
                });
            }
            Err(e) => {
                confirmed = false;
                report.warnings.push(format!(
                    "could not ask CRI-O at `{}` to confirm: {}",
                    opts.cri_socket.display(),
                    error_chain(&e)
                ));
            }
        }
    } else {
        report.warnings.push(format!(
            "no CRI socket at `{}`: pins written but not confirmed",
            opts.cri_socket.display()
        ));
    }
    report.ok = confirmed;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Steps 6 and 7 of [`load`]: imports the images `missing` and writes the pins (unless
/// `--no-pin`). Returns whether the drop-in changed.
#[allow(clippy::too_many_arguments)]
fn import_and_pin(
    opts: &LoadOptions,
    bundle: &Arc<BundleSet>,
    bases: Vec<Arc<BundleSet>>,
    manifest: &crate::bundle::format::BundleManifest,
    missing: &[usize],
    refs: &[PinnedRef],
    report: &mut LoadReport,
    reporter: &dyn Reporter,
) -> Result<bool> {
    if !missing.is_empty() {
        use crate::registry::server::{BundleServer, serve_server_in_thread};
        let server = serve_server_in_thread(
            BundleServer::new(bundle.clone()).with_bases(bases),
            BundleServer::LOOPBACK_EPHEMERAL,
        )
        .context("starting the loopback registry that serves the bundle")?;
        let import_opts = ImportOptions {
            skopeo: opts.skopeo.clone(),
            platform: opts.platform.clone(),
            policy: None,
            tmpdir: opts.tmpdir.clone(),
        };
        let total = missing
            .iter()
            .map(|&i| manifest.images[i].size)
            .fold(0u64, u64::saturating_add);
        reporter.start(&format!("importing {} images", missing.len()), total);
        for &i in missing {
            let img = &manifest.images[i];
            match storage::import(server.addr(), img, &opts.store, &import_opts) {
                Ok(ImportOutcome::AlreadyPresent) => report.images[i].status = "present",
                Ok(ImportOutcome::Imported { .. }) => report.images[i].status = "loaded",
                Err(e) => {
                    report.images[i].status = "failed";
                    report.images[i].error = Some(error_chain(&e));
                    reporter.finish();
                    return Err(anyhow::Error::new(e).context(format!(
                        "importing {} into containers-storage failed; the drop-in was not changed",
                        img.reference
                    )));
                }
            }
            reporter.advance(img.size);
        }
        reporter.finish();
    }
    if let Some(out) = &opts.pinned_image_set_out {
        let name = pinned_image_set_name(bundle);
        let yaml = pins::pinned_image_set_manifest(&name, "worker", refs)?;
        fs_err::write(out, yaml)?;
    }
    if opts.no_pin {
        return Ok(false);
    }
    let mco = pins::detect_mco(&opts.root);
    if !mco.is_empty() {
        report.warnings.push(pins::mco_warning(&opts.drop_in, &mco));
    }
    // Checked again: the files may have changed meanwhile.
    let scan = pins::scan_dir(&opts.drop_in)?;
    scan.check()?;
    for f in &scan.overriding {
        report.warnings.push(format!(
            "`{}` is read after `{}` and also sets pinned_images: CRI-O uses its list, not ours",
            f.display(),
            opts.drop_in.display()
        ));
    }
    let merged = pins::update(&opts.drop_in, refs)?;
    report
        .warnings
        .extend(merged.warnings.iter().map(|w| w.to_string()));
    let changed = merged.content.is_some();
    report.pins = Some(PinsResult {
        drop_in: opts.drop_in.clone(),
        changed,
        entries: merged.entries.len(),
    });
    Ok(changed)
}

/// Opens the `--base` bundles and, for a delta, finds where each layer it omits comes from
/// for the images to import (`report.delta`); refuses when some are nowhere. Returns the
/// bases for the server.
fn plan_delta(
    opts: &LoadOptions,
    manifest: &crate::bundle::format::BundleManifest,
    missing: &[usize],
    report: &mut LoadReport,
) -> Result<Vec<Arc<BundleSet>>> {
    let mut bases = Vec::new();
    for p in &opts.bases {
        let base =
            delta::Base::open(p).with_context(|| format!("opening the base {}", p.display()))?;
        bases.push(base.require_bundle()?);
    }
    if manifest.base.is_none() {
        if !bases.is_empty() {
            report
                .warnings
                .push("the bundle is not a delta: `--base` was not needed".into());
        }
        return Ok(Vec::new());
    }
    let in_store = opts
        .store
        .layer_digests()
        .context("reading the store's layers")?;
    report.delta = Some(delta::plan_load(manifest, missing, &bases, &in_store)?);
    Ok(bases)
}

fn pin_of(img: &ImageEntry) -> PinnedRef {
    PinnedRef {
        name: img.name.clone(),
        digest: img.digest.clone(),
    }
}

fn image_result(img: &ImageEntry) -> ImageResult {
    ImageResult {
        reference: img.reference.clone(),
        pin: pin_of(img).to_string(),
        status: "not-loaded",
        pinned: None,
        size: img.size,
        uncompressed_size: img.uncompressed_size,
        error: None,
    }
}

/// A Kubernetes name for the PinnedImageSet: `pinbundle-` and the first 12 hex digits of the
/// bundle manifest's digest, so the same bundle always gives the same name.
fn pinned_image_set_name(bundle: &BundleSet) -> String {
    let d = crate::reference::Digest::of(bundle.manifest_bytes());
    format!("pinbundle-{}", &d.hex()[..12])
}

/// Takes the load lock, waiting (and saying so) while another load holds it.
fn lock(path: &Path) -> Result<std::fs::File> {
    use rustix::fs::{FlockOperation, flock};
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the load lock {}", path.display()))?;
    if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        eprintln!(
            "pinbundle: another load holds {}; waiting for it",
            path.display()
        );
        flock(&f, FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Digest;

    /// Every field set, so the `--json` document's bytes (names, order, skipped fields) are
    /// pinned.
    pub(crate) fn full_report() -> LoadReport {
        let d = Digest::of(b"x");
        LoadReport {
            version: 1,
            bundle: "b.pinbundle".into(),
            dry_run: false,
            ok: false,
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
                status: "rolled-back",
                pinned: Some(true),
                size: 1,
                uncompressed_size: 2,
                error: Some("x".into()),
            }],
            pins: Some(PinsResult {
                drop_in: "p".into(),
                changed: true,
                entries: 3,
            }),
            reload: Some("r".into()),
            cri: Some(CriResult {
                runtime: "cri-o".into(),
                version: "1".into(),
                confirmed: false,
                timed_out: true,
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
            }),
            error: Some("err".into()),
            rolled_back: Some(storage::RolledBack::default()),
            warnings: vec!["w".into()],
            seconds: 1.5,
        }
    }

    #[test]
    fn json_document_is_unchanged() {
        let json = serde_json::to_string(&full_report()).unwrap();
        assert_eq!(
            json,
            r#"{"version":1,"bundle":"b.pinbundle","dryRun":false,"ok":false,"problems":[{"member":"m","digest":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","images":["r"],"error":"e"}],"signature":{"keyId":"0101010101010101","trustedComment":"c","verifiedBy":"k.pub"},"images":[{"reference":"r:1","pin":"r@sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","status":"rolled-back","pinned":true,"size":1,"uncompressedSize":2,"error":"x"}],"pins":{"dropIn":"p","changed":true,"entries":3},"reload":"r","cri":{"runtime":"cri-o","version":"1","confirmed":false,"timedOut":true},"delta":{"base":null,"fromBases":[],"fromStorage":[]},"volumes":{"set":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","count":2,"present":[],"missing":[],"incompleteBlobs":[]},"space":{"sizes":"declared","unpacked":4,"staged":5,"filesystems":[]},"error":"err","rolledBack":{"removed":[],"left":[]},"warnings":["w"],"seconds":1.5}"#
        );
        let mut r = full_report();
        r.problems.clear();
        r.error = None;
        r.ok = true;
        r.delta = None;
        r.volumes = None;
        r.rolled_back = None;
        r.images[0].error = None;
        r.images[0].status = "loaded";
        r.cri = Some(CriResult {
            runtime: "cri-o".into(),
            version: "1".into(),
            confirmed: true,
            timed_out: false,
        });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"version":1,"bundle":"b.pinbundle","dryRun":false,"ok":true,"problems":[],"signature":{"keyId":"0101010101010101","trustedComment":"c","verifiedBy":"k.pub"},"images":[{"reference":"r:1","pin":"r@sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","status":"loaded","pinned":true,"size":1,"uncompressedSize":2}],"pins":{"dropIn":"p","changed":true,"entries":3},"reload":"r","cri":{"runtime":"cri-o","version":"1","confirmed":true,"timedOut":false},"space":{"sizes":"declared","unpacked":4,"staged":5,"filesystems":[]},"error":null,"warnings":["w"],"seconds":1.5}"#
        );
    }
}
