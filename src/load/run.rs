//! The `load` sequence in three phases, each returning a value: **verify** (`Checked`) →
//! **plan** (`Plan`: drop-in check, tools, platforms, what is present, delta sources, space)
//! → **apply** (`Applied`: import, pins, reload, confirm). The report is built once from
//! what they returned.
//!
//! Nothing on the node changes before the whole bundle is verified, every image's platform is
//! known to be carried, every layer a delta omits is known to be in the store or in a `--base`
//! bundle, and the space check passed. The drop-in is written last, atomically,
//! and only for images that are now in the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::crio_config::CrioConfig;
use super::report::{CriResult, ImageResult, ImageStatus, LoadReport, PinsResult};
use super::space::{MinFree, SpaceCheck, SpaceReport};
use super::storage::{self, ImportOptions, ImportOutcome, Skopeo, Store};
use super::{confirm, pins, plan, reload};
use crate::bundle::format::{BundleManifest, ImageEntry};
use crate::bundle::{BundleSet, SetOptions};
use crate::delta;
use crate::error::error_chain;
use crate::pinned_image_set;
use crate::platform::Platform;
use crate::progress::Reporter;
use crate::reference::PinnedRef;
use crate::sign::SignatureInfo;
use crate::verify::{self, Problem, VerifyOptions};

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
    /// CRI-O's main configuration file (`crio --config`).
    pub crio_config: PathBuf,
    /// CRI-O's drop-in directory (`crio --config-dir`).
    pub crio_config_dir: PathBuf,
    pub drop_in: PathBuf,
    pub reload: reload::ReloadMode,
    pub reload_env: reload::ReloadEnv,
    pub cri_socket: PathBuf,
    pub confirm_timeout: Duration,
    pub pinned_image_set_out: Option<PathBuf>,
    /// The API version of the PinnedImageSets written (OpenShift 4.16–4.18: `v1alpha1`).
    pub pinned_image_set_api: crate::pinned_image_set::Api,
    /// The pools (`machineconfiguration.openshift.io/role`) a set is written for; `worker`
    /// when empty.
    pub pools: Vec<String>,
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
    /// A directory whose `*.pub` files are trusted keys ([`crate::sign::DEFAULT_TRUSTED_DIR`]); a
    /// missing directory holds none.
    pub trusted_dir: PathBuf,
    /// Bundles that carry layers a delta bundle omits. They need no signature: what is taken
    /// from them is checked against the digests of the (verified, maybe signed) delta.
    pub bases: Vec<PathBuf>,
    /// Kubelet's configuration, for its disk thresholds; its usual places when `None`.
    pub kubelet_config: Option<PathBuf>,
    /// Free space to keep on the store's filesystem (`--min-free`), when more than kubelet's.
    pub min_free: Option<MinFree>,
}

/// Runs `load`. `Err` is an operational failure before anything changed; a failure after
/// the first import is a report with `error` set, after the images this run added were
/// removed again (`rolled_back`); a damaged bundle or an unconfirmed pin is a report that is
/// not [`LoadReport::ok`].
pub fn load(opts: &LoadOptions, reporter: &dyn Reporter) -> Result<LoadReport> {
    let started = Instant::now();
    let mut report = run(opts, reporter)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn run(opts: &LoadOptions, reporter: &dyn Reporter) -> Result<LoadReport> {
    // A trust configuration that cannot be read stops everything: loading without the policy
    // an administrator set up would be worse than not loading.
    let verify_opts = VerifyOptions::read(opts.jobs, &opts.trusted_keys, Some(&opts.trusted_dir))
        .context("reading the trusted signing keys")?;
    let checked = check(opts, &verify_opts, reporter)?;
    let Some(bundle) = checked
        .bundle
        .clone()
        .filter(|_| checked.problems.is_empty())
    else {
        return Ok(report(opts, checked, None, None));
    };
    // The inputs are open and verified: only now wait for another load, whose changes the
    // checks below must see.
    let _lock = if opts.dry_run {
        None
    } else {
        Some(lock(&opts.lock, reporter)?)
    };
    let plan = make_plan(opts, &bundle, &checked, reporter)?;
    if opts.dry_run {
        return Ok(report(opts, checked, Some(plan), None));
    }
    let applied = apply(opts, &bundle, &plan, reporter)?;
    Ok(report(opts, checked, Some(plan), Some(applied)))
}

/// What the verify phase found. `problems` empty means the bundle is intact (and, with trusted
/// keys, signed by one of them); `bundle` is `None` when it could not even be opened.
struct Checked {
    bundle: Option<Arc<BundleSet>>,
    problems: Vec<Problem>,
    signature: Option<SignatureInfo>,
    volumes: Option<verify::VolumesReport>,
    images: Vec<ImageResult>,
}

/// Phase 1: opens and verifies everything (with trusted keys, the signature first) before
/// anything is touched.
fn check(
    opts: &LoadOptions,
    verify_opts: &VerifyOptions,
    reporter: &dyn Reporter,
) -> Result<Checked> {
    let set_opts = SetOptions {
        allow_partial: false,
        find_siblings: true,
    };
    let bundle = match BundleSet::open(&opts.bundle, set_opts) {
        Ok(b) => Arc::new(b),
        Err(e @ crate::bundle::Error::Io { .. }) => return Err(e.into()),
        // Damage found while opening: a finding like any other.
        Err(e) => {
            return Ok(Checked {
                bundle: None,
                problems: vec![Problem {
                    member: None,
                    digest: None,
                    images: Vec::new(),
                    error: error_chain(&e),
                }],
                signature: None,
                volumes: None,
                images: Vec::new(),
            });
        }
    };
    let volumes = verify::VolumesReport::of(&bundle);
    let images = bundle.manifest().images.iter().map(image_result).collect();
    reporter.message(&format!("verifying {}", bundle.path().display()));
    let verified = verify::verify_open(&bundle, verify_opts, reporter)?;
    Ok(Checked {
        bundle: Some(bundle),
        problems: verified.problems,
        signature: verified.signature,
        volumes,
        images,
    })
}

/// What the plan phase decided; nothing on the node has changed yet.
struct Plan {
    /// The pins, one per image, in the manifest's order.
    refs: Vec<PinnedRef>,
    /// Indexes (into the manifest's images) of the images to import.
    missing: Vec<usize>,
    /// Each image's status before importing.
    statuses: Vec<ImageStatus>,
    /// The `--base` bundles that serve a delta's omitted layers.
    bases: Vec<Arc<BundleSet>>,
    delta: Option<delta::LoadPlan>,
    space: SpaceReport,
    /// The PinnedImageSets for `--pinned-image-set-out`, rendered (so a bad pool name is
    /// refused before anything changes).
    pinned_image_sets: Option<String>,
    warnings: Vec<String>,
    /// CRI-O's configuration, read once: the store, the policy and the pins come from it.
    #[allow(dead_code)] // until the store, policy and pins phases read it
    crio: CrioConfig,
}

/// Phase 2: checks the drop-in, the tools and platforms, finds what is present, where a
/// delta's omitted layers come from, and whether the rest fits.
fn make_plan(
    opts: &LoadOptions,
    bundle: &Arc<BundleSet>,
    checked: &Checked,
    reporter: &dyn Reporter,
) -> Result<Plan> {
    let manifest = bundle.manifest();
    let crio = CrioConfig::read(&opts.crio_config, &opts.crio_config_dir)?;
    // The drop-in dir must be one CRI-O can reload and our file one we can merge into:
    // refuse now, before anything is looked up or imported, rather than after.
    let refs: Vec<PinnedRef> = manifest.images.iter().map(pin_of).collect();
    let pinned_image_sets = match &opts.pinned_image_set_out {
        Some(_) => Some(pinned_image_set::render(
            opts.pinned_image_set_api,
            &pinned_image_set::sets(&pinned_image_set_name(bundle), &opts.pools, &refs)?,
        )),
        None => None,
    };
    if !opts.no_pin {
        pins::scan_dir(&opts.drop_in)?.check()?;
        pins::check_update(&opts.drop_in, &refs)?;
    }
    opts.skopeo
        .version()
        .context("`load` imports with skopeo (Debian/RHEL package `skopeo`)")?;
    let platform = opts.platform.clone().unwrap_or_else(storage::host_platform);
    plan::check_platforms(manifest, &platform)?;
    let records = refs
        .iter()
        .map(|pin| {
            opts.store
                .record_named(pin)
                .with_context(|| format!("reading the store for {pin}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let (statuses, missing) = plan::missing(manifest, &records, opts.dry_run);
    // What skopeo fetches for each: of an index, only this platform's instance.
    let imports: Vec<_> = missing
        .iter()
        .map(|&i| (i, plan::import_blobs(&manifest.images[i], &platform)))
        .collect();

    // A delta: every layer it omits must already be in the store or in a `--base` bundle.
    let mut warnings = Vec::new();
    let (bases, delta) = plan_delta(opts, manifest, &imports, &mut warnings)?;
    let reused = delta
        .as_ref()
        .map(delta::LoadPlan::reused)
        .unwrap_or_default();

    // Space, from the signed sizes or, for a bundle no trusted key signed, measured ones.
    let mut sources: Vec<&BundleSet> = vec![bundle];
    sources.extend(bases.iter().map(|b| &**b));
    let space = SpaceCheck {
        store: &opts.store,
        tmpdir: opts.tmpdir.as_deref(),
        sources,
        trusted: checked
            .signature
            .as_ref()
            .is_some_and(|s| s.verified_by.is_some()),
        jobs: opts.jobs,
        kubelet_config: opts.kubelet_config.as_deref(),
        min_free: opts.min_free.as_ref(),
    }
    .run(
        manifest,
        &imports
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .collect(),
        &reused,
        reporter,
    )?;
    warnings.extend(space.warnings.iter().cloned());
    Ok(Plan {
        refs,
        missing,
        statuses,
        bases,
        delta,
        space,
        pinned_image_sets,
        warnings,
        crio,
    })
}

/// Opens the `--base` bundles and, for a delta, finds where each layer it omits comes from
/// for the images to import; refuses when some are nowhere. Returns the bases for the server
/// (none when the bundle is not a delta) and the plan.
fn plan_delta(
    opts: &LoadOptions,
    manifest: &BundleManifest,
    imports: &[(usize, std::collections::BTreeSet<&crate::reference::Digest>)],
    warnings: &mut Vec<String>,
) -> Result<(Vec<Arc<BundleSet>>, Option<delta::LoadPlan>)> {
    let mut bases = Vec::new();
    for p in &opts.bases {
        let base =
            delta::Base::open(p).with_context(|| format!("opening the base {}", p.display()))?;
        bases.push(base.require_bundle()?);
    }
    if manifest.base.is_none() {
        if !bases.is_empty() {
            warnings.push("the bundle is not a delta: `--base` was not needed".into());
        }
        return Ok((Vec::new(), None));
    }
    let in_store = opts
        .store
        .layer_digests()
        .context("reading the store's layers")?;
    let plan = delta::plan_load(manifest, imports, &bases, &in_store)?;
    Ok((bases, Some(plan)))
}

/// What the apply phase did.
#[derive(Default)]
struct Applied {
    images: Vec<ImageResult>,
    pins: Option<PinsResult>,
    reload: Option<String>,
    cri: Option<CriResult>,
    cri_unreachable: bool,
    error: Option<String>,
    rolled_back: Option<storage::RolledBack>,
    warnings: Vec<String>,
}

/// Phase 3: imports through a registry on loopback serving the bundle as it is (and a delta's
/// omitted layers from its bases), writes the pins for images now present, reloads CRI-O
/// and asks it to confirm. From the first import until the drop-in is written, a failure
/// removes again what this run added.
fn apply(
    opts: &LoadOptions,
    bundle: &Arc<BundleSet>,
    plan: &Plan,
    reporter: &dyn Reporter,
) -> Result<Applied> {
    let mut applied = Applied {
        images: with_statuses(&bundle.manifest().images, &plan.statuses),
        ..Applied::default()
    };
    let before = if plan.missing.is_empty() {
        Vec::new()
    } else {
        opts.store
            .images()
            .context("reading the store's image list before importing")?
    };
    let changed = match import_and_pin(opts, bundle, plan, &mut applied, reporter) {
        Ok(changed) => changed,
        Err(e) if plan.missing.is_empty() => return Err(e),
        Err(e) => {
            // The report says what failed and what was undone; the caller exits as for an
            // operational error.
            reporter.message("the load failed: removing the images it added");
            let undone = storage::roll_back(&opts.store, &opts.skopeo, &before);
            for img in applied
                .images
                .iter_mut()
                .filter(|i| i.status == ImageStatus::Loaded)
            {
                if undone.removed.iter().any(|r| r.names.contains(&img.pin)) {
                    img.status = ImageStatus::RolledBack;
                }
            }
            applied.rolled_back = Some(undone);
            applied.error = Some(error_chain(e.as_ref()));
            return Ok(applied);
        }
    };
    if opts.no_pin {
        return Ok(applied);
    }
    // Reload only when the pins changed.
    if changed {
        reload_crio(opts, &mut applied);
    }
    confirm_pins(opts, &plan.refs, &mut applied)?;
    Ok(applied)
}

/// Imports the images `plan.missing` and writes the pins (unless `--no-pin`). Returns whether
/// the drop-in changed.
fn import_and_pin(
    opts: &LoadOptions,
    bundle: &Arc<BundleSet>,
    plan: &Plan,
    applied: &mut Applied,
    reporter: &dyn Reporter,
) -> Result<bool> {
    if !plan.missing.is_empty() {
        import(opts, bundle, plan, applied, reporter)?;
    }
    if let (Some(out), Some(yaml)) = (&opts.pinned_image_set_out, &plan.pinned_image_sets) {
        let (staged, mut file) = crate::atomic::Stage::new(out).create()?;
        std::io::Write::write_all(&mut file, yaml.as_bytes()).map_err(|e| staged.write_error(e))?;
        staged.commit(file)?;
    }
    if opts.no_pin {
        return Ok(false);
    }
    let mco = pins::detect_mco(&opts.root);
    if !mco.is_empty() {
        applied
            .warnings
            .push(pins::mco_warning(&opts.drop_in, &mco));
    }
    // Checked again: the files may have changed meanwhile.
    let scan = pins::scan_dir(&opts.drop_in)?;
    scan.check()?;
    for f in &scan.overriding {
        applied.warnings.push(format!(
            "`{}` is read after `{}` and also sets pinned_images: CRI-O uses its list, not ours",
            f.display(),
            opts.drop_in.display()
        ));
    }
    let merged = pins::update(&opts.drop_in, &plan.refs)?;
    applied
        .warnings
        .extend(merged.warnings.iter().map(|w| w.to_string()));
    let changed = merged.content.is_some();
    applied.pins = Some(PinsResult {
        drop_in: opts.drop_in.clone(),
        changed,
        entries: merged.entries.len(),
    });
    Ok(changed)
}

/// Imports the images `plan.missing`, one at a time, through a loopback registry serving
/// the bundle (and its bases); stops at the first failure.
fn import(
    opts: &LoadOptions,
    bundle: &Arc<BundleSet>,
    plan: &Plan,
    applied: &mut Applied,
    reporter: &dyn Reporter,
) -> Result<()> {
    use crate::registry::server::{BundleServer, serve_in_thread};
    let manifest = bundle.manifest();
    let server = serve_in_thread(
        BundleServer::new(bundle.clone()).with_bases(plan.bases.clone()),
        BundleServer::LOOPBACK_EPHEMERAL,
    )
    .context("starting the loopback registry that serves the bundle")?;
    let import_opts = ImportOptions {
        skopeo: opts.skopeo.clone(),
        platform: opts.platform.clone(),
        policy: None,
        tmpdir: opts.tmpdir.clone(),
    };
    let total = plan
        .missing
        .iter()
        .map(|&i| manifest.images[i].size)
        .fold(0u64, u64::saturating_add);
    reporter.start(&format!("importing {} images", plan.missing.len()), total);
    for &i in &plan.missing {
        let img = &manifest.images[i];
        let result = &mut applied.images[i];
        match storage::import(server.addr(), img, &opts.store, &import_opts) {
            Ok(ImportOutcome::AlreadyPresent) => result.status = ImageStatus::Present,
            Ok(ImportOutcome::Imported { .. }) => result.status = ImageStatus::Loaded,
            Err(e) => {
                result.status = ImageStatus::Failed;
                result.error = Some(error_chain(&e));
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
    Ok(())
}

/// Signals CRI-O to read the new pins; a failure is a warning (the pins are written).
fn reload_crio(opts: &LoadOptions, applied: &mut Applied) {
    match reload::reload(opts.reload, &opts.reload_env) {
        Ok(reload::ReloadOutcome::Systemd) => applied.reload = Some("systemctl reload crio".into()),
        Ok(reload::ReloadOutcome::Signalled { pid }) => {
            applied.reload = Some(format!("SIGHUP to crio (pid {pid})"))
        }
        Ok(reload::ReloadOutcome::Skipped { command }) => {
            applied.warnings.push(format!(
                "CRI-O was not reloaded; run `{command}` to apply the pins"
            ));
            applied.reload = Some(format!("skipped: run `{command}`"));
        }
        Err(e) => applied.warnings.push(format!(
            "pins written to `{}` but CRI-O could not be reloaded: {}",
            opts.drop_in.display(),
            error_chain(&e)
        )),
    }
}

/// Asks CRI-O over the CRI whether every image is present and pinned.
fn confirm_pins(opts: &LoadOptions, refs: &[PinnedRef], applied: &mut Applied) -> Result<()> {
    if !opts.cri_socket.exists() {
        applied.warnings.push(format!(
            "no CRI socket at `{}`: pins written but not confirmed",
            opts.cri_socket.display()
        ));
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(confirm::confirm(
        &opts.cri_socket,
        refs,
        opts.confirm_timeout,
        Duration::from_millis(250),
    ));
    match result {
        Ok(c) => {
            if let Some(advice) = c.version_advice() {
                applied.warnings.push(advice);
            }
            for (img, f) in applied.images.iter_mut().zip(&c.images) {
                img.pinned = Some(f.pinned);
                if !f.present {
                    img.error = Some("CRI-O does not see this image".into());
                }
            }
            applied.cri = Some(CriResult {
                runtime: c.runtime_name.clone(),
                version: c.runtime_version.clone(),
                confirmed: c.is_ok(),
                timed_out: c.timed_out,
            });
        }
        Err(e @ confirm::ConfirmError::NoAnswer { .. }) => {
            applied.cri_unreachable = true;
            applied.warnings.push(format!(
                "{e}: the pins in `{}` are not confirmed",
                opts.drop_in.display()
            ));
        }
        Err(e) => {
            applied.cri_unreachable = true;
            applied.warnings.push(format!(
                "could not ask CRI-O at `{}` to confirm: {}",
                opts.cri_socket.display(),
                error_chain(&e)
            ));
        }
    }
    Ok(())
}

/// The report, built once from what the phases returned (`plan` and `applied` are `None`
/// when the load stopped before them). `seconds` is set by [`load`].
fn report(
    opts: &LoadOptions,
    checked: Checked,
    plan: Option<Plan>,
    applied: Option<Applied>,
) -> LoadReport {
    let mut images = checked.images;
    let mut warnings = Vec::new();
    let (mut delta, mut space) = (None, None);
    if let Some(p) = plan {
        for (img, status) in images.iter_mut().zip(&p.statuses) {
            img.status = *status;
        }
        warnings.extend(p.warnings);
        delta = p.delta;
        space = Some(p.space);
    }
    let mut a = applied.unwrap_or_default();
    if !a.images.is_empty() {
        images = std::mem::take(&mut a.images);
    }
    warnings.append(&mut a.warnings);
    LoadReport {
        version: 1,
        bundle: opts.bundle.first().cloned().unwrap_or_default(),
        dry_run: opts.dry_run,
        problems: checked.problems,
        signature: checked.signature,
        images,
        pins: a.pins,
        reload: a.reload,
        cri: a.cri,
        delta,
        volumes: checked.volumes,
        space,
        error: a.error,
        rolled_back: a.rolled_back,
        warnings,
        seconds: 0.0,
        cri_unreachable: a.cri_unreachable,
    }
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
        status: ImageStatus::NotLoaded,
        pinned: None,
        size: img.size,
        uncompressed_size: img.uncompressed_size,
        error: None,
    }
}

/// The images' results with the plan's statuses.
fn with_statuses(images: &[ImageEntry], statuses: &[ImageStatus]) -> Vec<ImageResult> {
    images
        .iter()
        .zip(statuses)
        .map(|(img, &status)| ImageResult {
            status,
            ..image_result(img)
        })
        .collect()
}

/// The start of the PinnedImageSets' names: `pinbundle-` and the first 12 hex digits of the
/// bundle manifest's digest, so the same bundle always gives the same names.
fn pinned_image_set_name(bundle: &BundleSet) -> String {
    let d = crate::reference::Digest::of(bundle.manifest_bytes());
    format!("pinbundle-{}", &d.hex()[..12])
}

/// Takes the load lock, waiting (and saying so) while another load holds it.
fn lock(path: &Path, reporter: &dyn Reporter) -> Result<std::fs::File> {
    use rustix::fs::{FlockOperation, flock};
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir)?;
    }
    // std::fs deliberately: the context names the path; fs-err would repeat it.
    #[allow(clippy::disallowed_methods)]
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the load lock {}", path.display()))?;
    if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        reporter.notice(&format!(
            "pinbundle: another load holds {}; waiting for it",
            path.display()
        ));
        flock(&f, FlockOperation::LockExclusive)
            .with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(f)
}
