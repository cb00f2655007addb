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

use super::crio_config::{CrioConfig, Key};
use super::policy::{self, Admission};
use super::report::{
    CarriedResult, CriResult, ImageResult, ImageStatus, LoadReport, OtherPinResult, PinsResult,
};
use super::space::{MinFree, SpaceCheck, SpaceReport};
use super::storage::{self, ImportOptions, ImportOutcome, Skopeo, Store};
use super::store_config::{self, CrossCheck, PreparedStore, StoreFlags, StoreReport};
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
/// Its name inside the drop-in directory.
pub const DROP_IN_NAME: &str = "50-pinned-images";
/// CRI-O's default CRI socket.
pub const DEFAULT_CRI_SOCKET: &str = "/var/run/crio/crio.sock";
/// Where the load lock lives when the store is the system's.
pub const DEFAULT_LOCK: &str = "/run/pinbundle/load.lock";

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The bundle file, its volumes in any order (one brings its siblings), or a directory.
    pub bundle: Vec<PathBuf>,
    /// What the command line says about the store; the rest is CRI-O's configuration, then
    /// containers-storage's ([`store_config`]).
    pub store: StoreFlags,
    /// CRI-O's main configuration file (`crio --config`).
    pub crio_config: PathBuf,
    /// CRI-O's drop-in directory (`crio --config-dir`).
    pub crio_config_dir: PathBuf,
    pub drop_in: PathBuf,
    pub reload: reload::ReloadMode,
    pub reload_env: reload::ReloadEnv,
    pub cri_socket: PathBuf,
    pub confirm_timeout: Duration,
    /// Do not ask CRI-O over the CRI whether the pins took effect (`--no-confirm`).
    pub no_confirm: bool,
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
    /// `--signature-policy`: the policy to admit images by instead of CRI-O's.
    pub signature_policy: Option<PathBuf>,
    /// The policy when neither `--signature-policy` nor CRI-O names one
    /// ([`policy::DEFAULT_POLICY`]).
    pub default_policy: PathBuf,
    /// CRI-O's per-namespace policies when its configuration names no
    /// `signature_policy_dir` ([`policy::DEFAULT_POLICY_DIR`]).
    pub default_policy_dir: PathBuf,
    /// The deadline of each skopeo copy.
    pub import_timeout: storage::CopyTimeout,
    /// Kubelet's configuration, for its disk thresholds; its usual places when `None`.
    pub kubelet_config: Option<PathBuf>,
    /// Free space to keep on the store's filesystem (`--min-free`), when more than kubelet's.
    pub min_free: Option<MinFree>,
    /// Where the record of loaded images is kept ([`crate::lifecycle::record`]).
    pub state_dir: PathBuf,
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
    let plan = match make_plan(opts, &bundle, &checked, reporter) {
        Ok(p) => p,
        // Refused for its content, before anything was touched: a report, not an error.
        Err(e) => {
            return e
                .downcast::<policy::Refused>()
                .map(|r| refused(opts, checked, r));
        }
    };
    if opts.dry_run {
        let would = plan.pins.as_ref().is_some_and(|p| p.changed);
        let mut r = report(opts, checked, Some(plan), None);
        (r.reload, r.reload_reason) = planned_reload(opts, would);
        return Ok(r);
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
    // The bar's last line is the result, which is known only once verify returns.
    let verified = verify::verify_open(&bundle, verify_opts, &Unfinished(reporter))?;
    let checked = format!(
        "verified {}, {}",
        crate::progress::count(bundle.blobs().count(), "blob"),
        crate::size::human(bundle.file_len())
    );
    reporter.done(&match verified.problems.len() {
        0 => checked,
        n => format!("{checked}: {}", crate::progress::count(n, "problem")),
    });
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
    /// Each image's platform taken for this node.
    platforms: Vec<Option<String>>,
    /// The bytes skopeo reads for each of `missing`, in its order.
    import_bytes: Vec<u64>,
    /// The order of the imports: waves of positions in `missing` ([`plan::import_waves`]).
    waves: Vec<Vec<usize>>,
    /// The drop-in as it would be written (`None` with `--no-pin`).
    pins: Option<PinsResult>,
    /// The `--base` bundles that serve a delta's omitted layers.
    bases: Vec<Arc<BundleSet>>,
    delta: Option<delta::LoadPlan>,
    space: SpaceReport,
    /// The PinnedImageSets for `--pinned-image-set-out`, rendered (so a bad pool name is
    /// refused before anything changes).
    pinned_image_sets: Option<String>,
    warnings: Vec<String>,
    /// CRI-O's configuration, read once: the store, the policy and the pins come from it.
    #[allow(dead_code)] // until the pins phase reads it
    crio: CrioConfig,
    /// The store CRI-O serves, resolved from `crio` and containers-storage's configuration.
    store: PreparedStore,
    /// The report's view of it.
    store_report: StoreReport,
    /// What the signature policy decided for each image, and what skopeo is given.
    admission: Admission,
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
    let (admission, mut warnings) = admit(opts, manifest, &crio)?;
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
    let planned_pins = if opts.no_pin {
        None
    } else {
        let planned = pins::plan(&crio, &opts.crio_config_dir, &opts.drop_in, &refs)?;
        Some(pins_result(&opts.drop_in, &crio, planned, &refs))
    };
    opts.skopeo
        .version()
        .context("`load` imports with skopeo (Debian/RHEL package `skopeo`)")?;
    let (store, store_report) = resolve_store(opts, &crio, &mut warnings)?;
    let platform = opts.platform.clone().unwrap_or_else(storage::host_platform);
    plan::check_platforms(manifest, &platform)?;
    let records = refs
        .iter()
        .map(|pin| {
            store
                .store
                .record_named(pin)
                .with_context(|| format!("reading the store for {pin}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let (statuses, missing) = plan::missing(manifest, &records, opts.dry_run);
    let platforms = manifest
        .images
        .iter()
        .map(|img| plan::chosen_platform(img, &platform).map(|p| p.to_string()))
        .collect();
    // What skopeo fetches for each: of an index, only this platform's instance.
    let imports: Vec<_> = missing
        .iter()
        .map(|&i| (i, plan::import_blobs(&manifest.images[i], &platform)))
        .collect();

    // A delta: every layer it omits must already be in the store or in a `--base` bundle.
    let (bases, delta) = plan_delta(opts, &store.store, manifest, &imports, &mut warnings)?;
    let reused = delta
        .as_ref()
        .map(delta::LoadPlan::reused)
        .unwrap_or_default();
    let import_bytes = plan::import_bytes(manifest, &imports, &reused);
    let waves = plan::import_waves(&imports);

    // Space, from the signed sizes or, for a bundle no trusted key signed, measured ones.
    let mut sources: Vec<&BundleSet> = vec![bundle];
    sources.extend(bases.iter().map(|b| &**b));
    let space = SpaceCheck {
        store: &store.store,
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
        platforms,
        import_bytes,
        waves,
        pins: planned_pins,
        bases,
        delta,
        space,
        pinned_image_sets,
        warnings,
        crio,
        store,
        store_report,
        admission,
    })
}

/// Resolves the store as CRI-O does, refuses one this skopeo cannot write, and when CRI-O
/// answers, checks that it serves that very store (nothing is touched on a mismatch).
fn resolve_store(
    opts: &LoadOptions,
    crio: &CrioConfig,
    warnings: &mut Vec<String>,
) -> Result<(PreparedStore, StoreReport)> {
    let resolved =
        store_config::resolve(&opts.store, crio, &store_config::StorageEnv::from_process())
            .context("finding the containers-storage CRI-O serves")?;
    store_config::check_imagestore(&resolved, &opts.skopeo)?;
    let prepared = resolved
        .prepare()
        .context("describing the store to skopeo")?;
    let mut report = prepared.resolved.report(&prepared.store);
    match store_config::cross_check(
        &prepared.store,
        &prepared.resolved,
        &opts.cri_socket,
        opts.confirm_timeout.min(Duration::from_secs(5)),
    )? {
        CrossCheck::Matched(served) => report.cross_checked = Some(served),
        CrossCheck::Unchecked(why) => warnings.push(why),
    }
    Ok((prepared, report))
}

/// Evaluates the policy CRI-O pulls under (`--signature-policy` instead, when given) for
/// every image's original names; [`policy::Refused`] when it does not admit them all.
/// Returns warnings about CRI-O's per-namespace policies.
fn admit(
    opts: &LoadOptions,
    manifest: &BundleManifest,
    crio: &CrioConfig,
) -> Result<(Admission, Vec<String>)> {
    let configured = crio
        .get(Key::SignaturePolicy)
        .filter(|s| !s.value.is_empty());
    let (path, source) = match (&opts.signature_policy, configured) {
        (Some(p), _) => (p.clone(), policy::Source::Flag),
        (None, Some(s)) => (PathBuf::from(s.value), policy::Source::Crio),
        (None, None) => (opts.default_policy.clone(), policy::Source::Default),
    };
    let admission = policy::admit(&policy::Policy::read(&path)?, source, &manifest.images)?;
    let dir = crio
        .get(Key::SignaturePolicyDir)
        .filter(|s| !s.value.is_empty())
        .map_or_else(|| opts.default_policy_dir.clone(), |s| s.value.into());
    Ok((
        admission,
        policy::namespaced_warnings(&dir, &manifest.images),
    ))
}

/// Opens the `--base` bundles and, for a delta, finds where each layer it omits comes from
/// for the images to import; refuses when some are nowhere. Returns the bases for the server
/// (none when the bundle is not a delta) and the plan.
fn plan_delta(
    opts: &LoadOptions,
    store: &Store,
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
    let in_store = store
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
    /// The list CRI-O uses once it has read our drop-in.
    effective: Vec<String>,
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
        plan.store
            .store
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
            let undone = storage::roll_back(&plan.store.store, &opts.skopeo, &before);
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
    note_loaded(opts, bundle, plan, &before, &mut applied);
    if opts.no_pin {
        return Ok(applied);
    }
    settle_pins(opts, &plan.refs, changed, &mut applied)?;
    Ok(applied)
}

/// Records what this load put into the store, for `list` and `prune`; a failure is a
/// warning (the images are loaded and pinned all the same).
fn note_loaded(
    opts: &LoadOptions,
    bundle: &BundleSet,
    plan: &Plan,
    before: &[storage::ImageRecord],
    applied: &mut Applied,
) {
    let imported = (!plan.missing.is_empty()).then_some(before);
    let noted = crate::lifecycle::record::note_load(
        &opts.state_dir,
        &plan.store.store,
        bundle,
        &plan.refs,
        imported,
    );
    if let Err(e) = noted {
        applied.warnings.push(format!(
            "the images are loaded, but the record `prune` relies on was not updated: {}",
            error_chain(&e)
        ));
    }
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
    let crio = CrioConfig::read(&opts.crio_config, &opts.crio_config_dir)?;
    let planned = pins::plan(&crio, &opts.crio_config_dir, &opts.drop_in, &plan.refs)?;
    if let Some(content) = &planned.merged.content {
        pins::write_atomic(&opts.drop_in, content)?;
    }
    applied
        .warnings
        .extend(planned.merged.warnings.iter().map(|w| w.to_string()));
    applied.effective = planned.merged.entries.clone();
    let result = pins_result(&opts.drop_in, &crio, planned, &plan.refs);
    let changed = result.changed;
    applied.pins = Some(result);
    Ok(changed)
}

/// Imports the images `plan.missing` through a loopback registry serving the bundle (and its
/// bases), in `plan.waves`: the images of a wave share no blob, so up to `--jobs` of them are
/// copied at once (one skopeo's untar, single-threaded, overlaps another's download and
/// decompression). At the first failure no further copy starts; those running finish and
/// keep their status, for the roll-back to see.
fn import(
    opts: &LoadOptions,
    bundle: &Arc<BundleSet>,
    plan: &Plan,
    applied: &mut Applied,
    reporter: &dyn Reporter,
) -> Result<()> {
    use crate::registry::server::{BundleServer, Credential, serve_in_thread};
    let manifest = bundle.manifest();
    // Only skopeo, through a private auth file, can read the bundle from loopback.
    let credential = Credential::random();
    let server = serve_in_thread(
        BundleServer::new(bundle.clone())
            .with_bases(plan.bases.clone())
            .with_credential(&credential),
        BundleServer::LOOPBACK_EPHEMERAL,
    )
    .context("starting the loopback registry that serves the bundle")?;
    let private = storage::PrivateDir::new()?;
    let import_opts = ImportOptions {
        skopeo: opts.skopeo.clone(),
        platform: opts.platform.clone(),
        policy: Some(private.write("policy.json", &plan.admission.skopeo_policy(server.addr()))?),
        tmpdir: opts.tmpdir.clone(),
        auth_file: Some(private.write_auth_file(server.addr(), &credential)?),
        timeout: opts.import_timeout,
    };
    let total = plan
        .import_bytes
        .iter()
        .fold(0u64, |a, &n| a.saturating_add(n));
    let images = crate::progress::count(plan.missing.len(), "image");
    reporter.start(&format!("importing {images}"), total);
    let copy = |pos: usize| {
        let img = &manifest.images[plan.missing[pos]];
        reporter.step(&img.reference);
        let progress = ServedProgress {
            server: server.server(),
            repository: BundleServer::repository_of(img),
            bytes: plan.import_bytes[pos],
            reporter,
        };
        progress.follow(|| storage::import(server.addr(), img, &plan.store.store, &import_opts))
    };
    for wave in &plan.waves {
        let outcomes = run_at_once(wave, opts.jobs, copy);
        let mut first_error = None;
        for (&pos, outcome) in wave.iter().zip(outcomes) {
            let i = plan.missing[pos];
            let result = &mut applied.images[i];
            match outcome {
                None => {}
                Some(Ok(ImportOutcome::AlreadyPresent)) => result.status = ImageStatus::Present,
                Some(Ok(ImportOutcome::Imported { .. })) => result.status = ImageStatus::Loaded,
                Some(Err(e)) => {
                    result.status = ImageStatus::Failed;
                    result.error = Some(error_chain(&e));
                    first_error.get_or_insert((i, e));
                }
            }
        }
        if let Some((i, e)) = first_error {
            reporter.finish();
            return Err(anyhow::Error::new(e).context(format!(
                "importing {} into containers-storage failed; the drop-in was not changed",
                manifest.images[i].reference
            )));
        }
    }
    reporter.done(&format!("imported {images}, {}", crate::size::human(total)));
    Ok(())
}

/// Runs `work` on every item of `items`, up to `jobs` at a time, in their order; once one
/// returns `Err` no further item starts. Returns each item's result, `None` for those not
/// started.
fn run_at_once<T: Send, E: Send>(
    items: &[usize],
    jobs: usize,
    work: impl Fn(usize) -> std::result::Result<T, E> + Sync,
) -> Vec<Option<std::result::Result<T, E>>> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Mutex<Option<std::result::Result<T, E>>>> =
        items.iter().map(|_| Mutex::new(None)).collect();
    let worker = || {
        while !failed.load(Ordering::SeqCst) {
            let k = next.fetch_add(1, Ordering::SeqCst);
            let Some(&item) = items.get(k) else { break };
            let out = work(item);
            failed.fetch_or(out.is_err(), Ordering::SeqCst);
            *results[k].lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(worker);
        }
        worker();
    });
    results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

/// Advances the import's progress by the bytes skopeo reads of one image from the loopback
/// registry while it copies, up to the `bytes` planned for it (a retried read does not
/// count twice), and by the rest when the copy ends (blobs skopeo found in the store).
struct ServedProgress<'a> {
    server: &'a crate::registry::server::BundleServer,
    repository: String,
    bytes: u64,
    reporter: &'a dyn Reporter,
}

impl ServedProgress<'_> {
    const POLL: Duration = Duration::from_millis(100);

    fn follow<T>(&self, copy: impl FnOnce() -> T) -> T {
        let start = self.server.served_bytes(&self.repository);
        let served = || {
            self.server
                .served_bytes(&self.repository)
                .saturating_sub(start)
                .min(self.bytes)
        };
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (out, shown) = std::thread::scope(|scope| {
            let poller = scope.spawn(move || {
                let mut shown = 0;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Self::POLL)
                {
                    let now = served();
                    self.reporter.advance(now - shown);
                    shown = now;
                }
                shown
            });
            let out = copy();
            drop(stop);
            (out, poller.join().unwrap_or(self.bytes))
        });
        self.reporter.advance(self.bytes - shown);
        out
    }
}

/// Passes everything on except the end of the phase, which its caller reports with the result.
struct Unfinished<'a>(&'a dyn Reporter);

impl Reporter for Unfinished<'_> {
    fn start(&self, phase: &str, total: u64) {
        self.0.start(phase, total)
    }
    fn advance(&self, n: u64) {
        self.0.advance(n)
    }
    fn step(&self, what: &str) {
        self.0.step(what)
    }
    fn message(&self, msg: &str) {
        self.0.message(msg)
    }
    fn notice(&self, msg: &str) {
        self.0.notice(msg)
    }
}

/// The drop-in's part of the report from its plan: `held` is what our file holds now.
fn pins_result(
    drop_in: &Path,
    crio: &CrioConfig,
    planned: pins::PinsPlan,
    refs: &[PinnedRef],
) -> PinsResult {
    let held: Vec<String> = crio
        .pinned_images()
        .filter(|s| s.from == drop_in)
        .flat_map(|s| s.value.into_iter().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let (already_there, added): (Vec<String>, Vec<String>) = refs
        .iter()
        .map(PinnedRef::to_string)
        .partition(|r| held.contains(r));
    PinsResult {
        drop_in: drop_in.to_path_buf(),
        changed: planned.merged.content.is_some(),
        entries: planned.merged.entries.len(),
        added,
        already_there,
        carried: planned.carried.map(|c| CarriedResult {
            from: c.from,
            entries: c.entries,
        }),
    }
}

/// How a load would make CRI-O read the pins, and why, without doing it: the choice
/// [`reload_crio`] makes from the same facts (CRI-O's version is asked only where a load
/// would ask it).
fn planned_reload(opts: &LoadOptions, would_change: bool) -> (Option<String>, Option<String>) {
    if opts.no_pin {
        return (None, None);
    }
    if !would_change {
        return (
            Some("none: the drop-in already holds these pins".into()),
            Some("CRI-O is reloaded only if its running pins differ from the drop-in".into()),
        );
    }
    let version = if opts.no_confirm {
        Err("CRI-O is not asked its version with --no-confirm".to_string())
    } else if !opts.cri_socket.exists() {
        Err(format!("no CRI socket at `{}`", opts.cri_socket.display()))
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                rt.block_on(confirm::runtime_version(
                    &opts.cri_socket,
                    opts.confirm_timeout.min(Duration::from_secs(5)),
                ))
                .map_err(|e| error_chain(&e))
            })
    };
    let (restart, reason) = match version {
        Ok(v) => {
            let issue = confirm::version_issue(&v.runtime_name, &v.runtime_version);
            match issue.filter(|i| i.needs_restart()) {
                Some(i) => (true, i.restart_reason(&v.runtime_name, &v.runtime_version)),
                None => (
                    false,
                    Some(format!(
                        "{} {} applies new pins on reload",
                        v.runtime_name, v.runtime_version
                    )),
                ),
            }
        }
        Err(why) => (
            false,
            Some(format!(
                "{why}: its release is unknown, a reload is assumed to apply the pins"
            )),
        ),
    };
    (Some(reload_method(opts, restart)), reason)
}

/// What [`reload::reload_or_restart`] would do with `opts`' mode and environment.
fn reload_method(opts: &LoadOptions, restart: bool) -> String {
    use reload::ReloadMode;
    let env = &opts.reload_env;
    let systemd = || env.systemd_marker.exists() && reload::systemd_active(env);
    match opts.reload {
        ReloadMode::None if restart => "none: you would run `systemctl restart crio`".into(),
        ReloadMode::None => "none: you would run `systemctl reload crio`".into(),
        ReloadMode::Systemd => "systemctl reload crio".into(),
        ReloadMode::Restart => "systemctl restart crio".into(),
        ReloadMode::Signal => signal_target(env),
        ReloadMode::Auto if restart && systemd() => "systemctl restart crio".into(),
        ReloadMode::Auto if restart => {
            "none possible: CRI-O needs a restart and systemd does not run it".into()
        }
        ReloadMode::Auto if systemd() => "systemctl reload crio".into(),
        ReloadMode::Auto => signal_target(env),
    }
}

/// The `crio` process a SIGHUP would go to.
fn signal_target(env: &reload::ReloadEnv) -> String {
    let pids = match env.pid {
        Some(pid) => Ok(vec![pid]),
        None => reload::find_crio(&env.proc_root),
    };
    match pids.as_deref() {
        Ok([pid]) => format!("SIGHUP to crio (pid {pid})"),
        Ok([]) => format!(
            "SIGHUP to crio, but none runs (no crio in `{}`)",
            env.proc_root.display()
        ),
        Ok(many) => format!("SIGHUP to crio, but several run (pids {many:?})"),
        Err(e) => format!("SIGHUP to crio: {}", error_chain(e)),
    }
}

/// After the drop-in is written (or found unchanged): reloads CRI-O when the pins changed
/// or the running CRI-O's differ from the file (restarting it on releases whose reload
/// mishandles pins), then confirms every entry of the effective list. Anything that leaves
/// the pins unconfirmed makes the load not ok, unless `--no-confirm`.
fn settle_pins(
    opts: &LoadOptions,
    refs: &[PinnedRef],
    changed: bool,
    applied: &mut Applied,
) -> Result<()> {
    let ours: Vec<String> = refs.iter().map(PinnedRef::to_string).collect();
    let others: Vec<String> = applied
        .effective
        .iter()
        .filter(|e| !ours.contains(e))
        .cloned()
        .collect();
    if opts.no_confirm {
        if changed {
            reload_crio(opts, None, applied);
        }
        applied.warnings.push(format!(
            "--no-confirm: CRI-O was not asked whether the pins in `{}` took effect",
            opts.drop_in.display()
        ));
        return Ok(());
    }
    if !opts.cri_socket.exists() {
        if changed {
            reload_crio(opts, None, applied);
        }
        applied.cri_unreachable = true;
        applied.warnings.push(format!(
            "no CRI socket at `{}`: the pins in `{}` are not confirmed (pass --no-confirm to load without asking CRI-O)",
            opts.cri_socket.display(),
            opts.drop_in.display()
        ));
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let interval = Duration::from_millis(250);
    let confirm_now = |timeout| {
        runtime.block_on(confirm::confirm_all(
            &opts.cri_socket,
            refs,
            &others,
            timeout,
            interval,
        ))
    };
    // The version decides how to reload, so ask before reloading.
    let version = match runtime.block_on(confirm::runtime_version(
        &opts.cri_socket,
        opts.confirm_timeout,
    )) {
        Ok(v) => v,
        Err(e) => {
            if changed {
                reload_crio(opts, None, applied);
            }
            not_confirmed(opts, &e, applied);
            return Ok(());
        }
    };
    let mut early = None;
    if !changed {
        // The file is as wanted; a failed earlier reload may have left CRI-O's pins behind it.
        let now = confirm_now(Duration::ZERO);
        match now {
            Ok(c) if c.is_ok() => early = Some(c),
            Ok(_) => applied.warnings.push(format!(
                "`{}` is unchanged but the running CRI-O's pins differ from it: reloading again",
                opts.drop_in.display()
            )),
            Err(e) => {
                not_confirmed(opts, &e, applied);
                return Ok(());
            }
        }
    }
    let result = match early {
        Some(c) => Ok(c),
        None => {
            match reload_crio(opts, Some(&version), applied) {
                Reloaded::Requested => {}
                Reloaded::Restarted => {
                    // A restarted CRI-O answers only once it has read its configuration.
                    if let Err(e) = runtime.block_on(confirm::wait_answering(
                        &opts.cri_socket,
                        opts.confirm_timeout,
                        interval,
                    )) {
                        not_confirmed(opts, &e, applied);
                        return Ok(());
                    }
                }
                Reloaded::Impossible => {
                    applied.cri_unreachable = true;
                    return Ok(());
                }
            }
            confirm_now(opts.confirm_timeout)
        }
    };
    match result {
        Ok(c) => record_confirmation(&c, applied),
        Err(e) => not_confirmed(opts, &e, applied),
    }
    Ok(())
}

/// What [`reload_crio`] achieved.
enum Reloaded {
    /// A reload (or nothing, with `--reload none`) was requested; confirm.
    Requested,
    /// CRI-O was restarted; wait for it to answer, then confirm.
    Restarted,
    /// CRI-O needs a restart that cannot be made here: nothing to confirm.
    Impossible,
}

/// Makes CRI-O read the new pins: a reload, or a restart where the running release's reload
/// mishandles pins (`version`, when known). A failure is a warning: the pins are written.
fn reload_crio(
    opts: &LoadOptions,
    version: Option<&super::cri::proto::VersionResponse>,
    applied: &mut Applied,
) -> Reloaded {
    let issue = version
        .and_then(|v| confirm::version_issue(&v.runtime_name, &v.runtime_version))
        .filter(|i| i.needs_restart());
    let why = issue
        .zip(version)
        .and_then(|(i, v)| i.restart_reason(&v.runtime_name, &v.runtime_version));
    let outcome = reload::reload_or_restart(opts.reload, &opts.reload_env, issue.is_some());
    if let (Some(why), Ok(o)) = (&why, &outcome)
        && !matches!(o, reload::ReloadOutcome::Restarted)
    {
        applied.warnings.push(format!(
            "{why}: the pins need a restart of CRI-O (`--reload auto` or `--reload restart`)"
        ));
    }
    match outcome {
        Ok(reload::ReloadOutcome::Systemd) => applied.reload = Some("systemctl reload crio".into()),
        Ok(reload::ReloadOutcome::Signalled { pid }) => {
            applied.reload = Some(format!("SIGHUP to crio (pid {pid})"))
        }
        Ok(reload::ReloadOutcome::Restarted) => {
            applied.reload = Some(match &why {
                Some(why) => format!("systemctl restart crio ({why})"),
                None => "systemctl restart crio".into(),
            });
            return Reloaded::Restarted;
        }
        Ok(reload::ReloadOutcome::Skipped { command }) => {
            applied.warnings.push(format!(
                "CRI-O was not reloaded; run `{command}` to apply the pins"
            ));
            // The command is in the warning; said once.
            applied.reload = Some("skipped (--reload none)".into());
        }
        Err(e @ reload::ReloadError::CannotRestart { .. }) => {
            applied.warnings.push(format!(
                "{}: the pins in `{}` are written but not applied: {e}",
                why.as_deref().unwrap_or("CRI-O must be restarted"),
                opts.drop_in.display()
            ));
            return Reloaded::Impossible;
        }
        Err(e) => applied.warnings.push(format!(
            "pins written to `{}` but CRI-O could not be reloaded: {}",
            opts.drop_in.display(),
            error_chain(&e)
        )),
    }
    Reloaded::Requested
}

/// The confirmation's findings into the report.
fn record_confirmation(c: &confirm::ConfirmReport, applied: &mut Applied) {
    // The restart-worthy issues were handled (or reported) by the reload.
    if let Some(advice) = c
        .version_issue
        .filter(|i| !i.needs_restart())
        .map(|i| i.advice(&c.runtime_name, &c.runtime_version))
    {
        applied.warnings.push(advice);
    }
    for (img, f) in applied.images.iter_mut().zip(&c.images) {
        img.pinned = Some(f.pinned);
        if !f.present {
            img.error = Some("CRI-O does not see this image".into());
        }
    }
    for o in c
        .others
        .iter()
        .filter(|o| o.status == confirm::OtherStatus::NotPinned)
    {
        applied.warnings.push(format!(
            "`{}` is in CRI-O's pinned_images and its image is present, but CRI-O does not report it pinned",
            o.entry
        ));
    }
    applied.cri = Some(CriResult {
        runtime: c.runtime_name.clone(),
        version: c.runtime_version.clone(),
        confirmed: c.is_ok(),
        timed_out: c.timed_out,
        others: c
            .others
            .iter()
            .map(|o| OtherPinResult {
                entry: o.entry.clone(),
                status: o.status.as_str(),
            })
            .collect(),
    });
}

/// CRI-O could not be asked: the pins are not confirmed.
fn not_confirmed(opts: &LoadOptions, e: &confirm::ConfirmError, applied: &mut Applied) {
    applied.cri_unreachable = true;
    applied.warnings.push(match e {
        confirm::ConfirmError::NoAnswer { .. } => format!(
            "{e}: the pins in `{}` are not confirmed",
            opts.drop_in.display()
        ),
        _ => format!(
            "could not ask CRI-O at `{}` to confirm: {}",
            opts.cri_socket.display(),
            error_chain(e)
        ),
    });
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
    let (mut delta, mut space, mut store, mut decisions) = (None, None, None, Vec::new());
    let mut dry_pins = None;
    if let Some(p) = plan {
        store = Some(p.store_report);
        for ((img, status), platform) in images.iter_mut().zip(&p.statuses).zip(p.platforms) {
            img.status = *status;
            img.platform = platform;
        }
        if opts.dry_run {
            dry_pins = p.pins;
        }
        warnings.extend(p.warnings);
        delta = p.delta;
        space = Some(p.space);
        decisions = p.admission.decisions;
    }
    let mut a = applied.unwrap_or_default();
    if !a.images.is_empty() {
        for (new, old) in a.images.iter_mut().zip(&mut images) {
            new.platform = old.platform.take();
        }
        images = std::mem::take(&mut a.images);
    }
    for (img, d) in images.iter_mut().zip(decisions) {
        img.policy = Some(d);
    }
    warnings.append(&mut a.warnings);
    LoadReport {
        version: 1,
        bundle: opts.bundle.first().cloned().unwrap_or_default(),
        dry_run: opts.dry_run,
        problems: checked.problems,
        signature: checked.signature,
        images,
        pins: a.pins.or(dry_pins),
        reload: a.reload,
        reload_reason: None,
        cri: a.cri,
        delta,
        volumes: checked.volumes,
        space,
        store,
        error: a.error,
        rolled_back: a.rolled_back,
        warnings,
        seconds: 0.0,
        cri_unreachable: a.cri_unreachable,
        refused: Vec::new(),
    }
}

/// The report of a load the signature policy refused: nothing was touched.
fn refused(opts: &LoadOptions, checked: Checked, r: policy::Refused) -> LoadReport {
    let mut report = report(opts, checked, None, None);
    for (img, d) in report.images.iter_mut().zip(r.decisions) {
        img.policy = Some(d);
    }
    report.refused = r.reasons;
    report
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
        platform: None,
        error: None,
        policy: None,
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
pub fn lock(path: &Path, reporter: &dyn Reporter) -> Result<std::fs::File> {
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
