//! `pinbundle verify` and `inspect`.
//!
//! `verify` reads every frame of the file (in parallel), checks every member's tar header,
//! padding and sha256, that `pinbundle.json` lists exactly the blobs present, and that every
//! image's manifests reference blobs that are present with the sizes they declare. Findings are
//! data ([`VerifyReport`]); `Err` means only that the file could not be read at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::bundle::format::{
    BaseRef, BlobKind, BundleManifest, ImageEntry, OCI_INDEX_PATH, OCI_LAYOUT_PATH, SIGNATURE_PATH,
};
use crate::bundle::{self, BlobLoc, Bundle, BundleSet, SetOptions};
use crate::error::error_chain;
use crate::manifest::{self, Parsed};
use crate::progress::Reporter;
use crate::reference::{Digest, Reference};
use crate::sign::{self, SignatureInfo, TrustedKey};
use crate::text::Shown;

/// The version of `inspect --json`'s document.
pub const JSON_VERSION: u32 = 1;

/// The version of `verify --json`'s document: 2 since its fields are camelCase like every
/// other command's (`membersChecked`, `bytesChecked`).
pub const VERIFY_JSON_VERSION: u32 = 2;

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// The member (`blobs/sha256/…`, `index.json`, …) or `null` for the file as a whole.
    pub member: Option<String>,
    /// The blob's digest, when the problem concerns a blob.
    pub digest: Option<Digest>,
    /// The requested references this problem breaks.
    pub images: Vec<String>,
    pub error: String,
}

/// What `verify` found; [`VerifyReport::ok`] when `problems` is empty.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub version: u32,
    pub bundle: PathBuf,
    pub images: usize,
    pub members_checked: usize,
    pub bytes_checked: u64,
    /// The bundle's signature, `null` when it is unsigned (or could not be read).
    pub signature: Option<SignatureInfo>,
    /// The volume set, `null` for a whole bundle.
    pub volumes: Option<VolumesReport>,
    /// For a delta bundle: its base (the layers it does not carry are the base's).
    pub base: Option<BaseRef>,
    pub problems: Vec<Problem>,
    /// False when the files could not even be opened as a bundle (footer, seek index,
    /// `pinbundle.json`): then nothing, the signature included, was read.
    pub opened: bool,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// By hand, for the derived `ok`; the fields in the order `verify --json` has always had
/// (camelCase since version 2).
impl Serialize for VerifyReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("VerifyReport", 11)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("bundle", &self.bundle)?;
        st.serialize_field("ok", &self.ok())?;
        st.serialize_field("images", &self.images)?;
        st.serialize_field("membersChecked", &self.members_checked)?;
        st.serialize_field("bytesChecked", &self.bytes_checked)?;
        st.serialize_field("signature", &self.signature)?;
        st.serialize_field("volumes", &self.volumes)?;
        match &self.base {
            Some(b) => st.serialize_field("base", b)?,
            None => st.skip_field("base")?,
        }
        st.serialize_field("problems", &self.problems)?;
        st.serialize_field("opened", &self.opened)?;
        st.end()
    }
}

/// Which volumes of a set were read and which were not.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumesReport {
    /// The set's identity (sha256 of `pinbundle.json`).
    pub set: Digest,
    pub count: u32,
    /// The volumes read: number and file.
    pub present: Vec<VolumeFile>,
    /// The volumes not found: number and the file expected.
    pub missing: Vec<VolumeFile>,
    /// Blobs with a part in a missing volume: their present parts were checked only
    /// against their frame checksums.
    pub incomplete_blobs: Vec<Digest>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeFile {
    pub index: u32,
    pub path: PathBuf,
}

impl VolumesReport {
    pub fn of(set: &BundleSet) -> Option<VolumesReport> {
        let info = set.volume_info()?;
        Some(VolumesReport {
            set: info.set.clone(),
            count: info.count,
            present: set
                .volumes()
                .iter()
                .map(|v| VolumeFile {
                    index: v.index().volume.as_ref().map_or(0, |v| v.index),
                    path: v.path().to_path_buf(),
                })
                .collect(),
            missing: set
                .missing()
                .iter()
                .map(|(index, path)| VolumeFile {
                    index: *index,
                    path: path.clone(),
                })
                .collect(),
            incomplete_blobs: set.incomplete().to_vec(),
        })
    }
}

/// How to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Threads (0: one per core).
    pub jobs: usize,
    /// When not empty, the bundle must be signed by one of these keys; otherwise it is refused
    /// before any blob is read.
    pub trusted_keys: Vec<TrustedKey>,
}

impl VerifyOptions {
    /// Options with the trusted keys read from `files` and the `*.pub` files of `dir` (when
    /// given): how both `verify` and `load` read their signature policy.
    pub fn read(jobs: usize, files: &[PathBuf], dir: Option<&Path>) -> Result<Self, sign::Error> {
        Ok(VerifyOptions {
            jobs,
            trusted_keys: sign::read_trusted(files, dir)?,
        })
    }
}

/// Verifies the bundle or volumes that `inputs` name (see [`BundleSet::open`]), and its
/// signature against `opts.trusted_keys`. One of the two entry points, with [`verify_open`].
pub fn verify_paths(
    inputs: &[PathBuf],
    set_opts: SetOptions,
    opts: &VerifyOptions,
    reporter: &dyn Reporter,
) -> Result<VerifyReport, bundle::Error> {
    let set = match BundleSet::open(inputs, set_opts) {
        Ok(b) => b,
        Err(e @ bundle::Error::Io { .. }) => return Err(e),
        Err(e) => {
            return Ok(VerifyReport {
                version: VERIFY_JSON_VERSION,
                bundle: inputs.first().cloned().unwrap_or_default(),
                images: 0,
                members_checked: 0,
                bytes_checked: 0,
                signature: None,
                volumes: None,
                base: None,
                problems: vec![Problem {
                    member: None,
                    digest: None,
                    images: Vec::new(),
                    error: error_chain(&e),
                }],
                opened: false,
            });
        }
    };
    verify_open(&set, opts, reporter)
}

/// Verifies an already opened bundle: first its signature (with trusted keys, a bundle that
/// is unsigned or not signed by one of them is refused before any blob is read), then every
/// member.
pub fn verify_open(
    bundle: &BundleSet,
    opts: &VerifyOptions,
    reporter: &dyn Reporter,
) -> Result<VerifyReport, bundle::Error> {
    let jobs = opts.jobs;
    let manifest = bundle.manifest();
    let (signature, refusal) = check_signature(bundle, &opts.trusted_keys);
    if let Some(p) = refusal {
        if !opts.trusted_keys.is_empty() {
            return Ok(VerifyReport {
                version: VERIFY_JSON_VERSION,
                bundle: bundle.path().to_path_buf(),
                images: manifest.images.len(),
                members_checked: 0,
                bytes_checked: 0,
                signature,
                volumes: VolumesReport::of(bundle),
                base: manifest.base.clone(),
                problems: vec![p],
                opened: true,
            });
        }
        // Without a policy a malformed signature is damage like any other; go on.
        return verify_members(bundle, jobs, signature, vec![p], reporter);
    }
    verify_members(bundle, jobs, signature, Vec::new(), reporter)
}

/// Reads and checks the signature: what it says, and the problem that refuses the bundle (or,
/// without trusted keys, that makes it damaged).
pub fn check_signature(
    bundle: &BundleSet,
    trusted: &[TrustedKey],
) -> (Option<SignatureInfo>, Option<Problem>) {
    let problem = |member: Option<&str>, error: String| Problem {
        member: member.map(str::to_string),
        digest: None,
        images: Vec::new(),
        error,
    };
    let bytes = match bundle.signature_bytes() {
        Ok(Some(b)) => b,
        Ok(None) if trusted.is_empty() => return (None, None),
        Ok(None) => {
            let e = sign::Error::Unsigned {
                trusted: trusted.iter().map(|k| k.id).collect(),
            };
            return (None, Some(problem(None, error_chain(&e))));
        }
        Err(e) => return (None, Some(problem(Some(SIGNATURE_PATH), error_chain(&e)))),
    };
    let sig = match sign::Signature::parse(&bytes) {
        Ok(s) => s,
        Err(e) => return (None, Some(problem(Some(SIGNATURE_PATH), error_chain(&e)))),
    };
    let mut info = SignatureInfo {
        key_id: sig.key_id,
        trusted_comment: sig.trusted_comment.clone(),
        verified_by: None,
    };
    if trusted.is_empty() {
        return (Some(info), None);
    }
    match sig.check(bundle.manifest_bytes(), trusted) {
        Ok(k) => {
            info.verified_by = Some(k.path.clone());
            (Some(info), None)
        }
        Err(e) => (
            Some(info),
            Some(problem(Some(SIGNATURE_PATH), error_chain(&e))),
        ),
    }
}

/// One unit of verification work.
enum Work<'a> {
    /// A member that is not a blob (`pinbundle.json`, `index.json`, …) of one volume.
    Member(&'a Bundle, usize),
    /// A blob, whole or joined from its parts.
    Blob(&'a BlobLoc),
    /// A part whose blob has other parts in missing volumes: frames only.
    Part(&'a Bundle, usize),
}

fn verify_members(
    bundle: &BundleSet,
    jobs: usize,
    signature: Option<SignatureInfo>,
    initial: Vec<Problem>,
    reporter: &dyn Reporter,
) -> Result<VerifyReport, bundle::Error> {
    let manifest = bundle.manifest();
    let users = blob_users(manifest);
    let problems = Mutex::new(initial);
    let add = |p: Problem| problems.lock().unwrap_or_else(|e| e.into_inner()).push(p);

    let mut work: Vec<(u64, Work)> = Vec::new();
    for v in bundle.volumes() {
        for (i, m) in v.index().members.iter().enumerate() {
            if !m.path.starts_with("blobs/") {
                work.push((m.size, Work::Member(v, i)));
            } else if bundle.incomplete().binary_search(&m.digest).is_ok() {
                work.push((m.size, Work::Part(v, i)));
            }
        }
    }
    work.extend(bundle.blobs().map(|b| (b.size, Work::Blob(b))));
    // Largest first, so one big layer does not finish last on a single core.
    work.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
    reporter.start("verifying", bundle.file_len());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(bundle::Error::ThreadPool)?;
    // Each of the `jobs` workers takes the next largest item when it is free (greedy, largest
    // first). `par_iter` did not: it splits the sorted list into contiguous runs, each run on one
    // thread, so the large blobs at its head ran one after another (on a realistic set one
    // thread read 498 of 570 MB with --jobs 2; now 303, the largest blob being 283).
    let next = AtomicUsize::new(0);
    pool.broadcast(|_| {
        while let Some((_, w)) = work.get(next.fetch_add(1, Ordering::Relaxed)) {
            let progress = |n| reporter.advance(n);
            let (result, member, digest) = match w {
                Work::Member(v, i) | Work::Part(v, i) => {
                    let m = &v.index().members[*i];
                    let digest = m.path.starts_with("blobs/").then(|| m.digest.clone());
                    (v.verify_member(m, progress), m.path.clone(), digest)
                }
                Work::Blob(loc) => (
                    bundle.verify_blob(loc, progress),
                    loc.digest.layout_path(),
                    Some(loc.digest.clone()),
                ),
            };
            if let Err(e) = result {
                let images = digest
                    .as_ref()
                    .and_then(|d| users.get(d))
                    .cloned()
                    .unwrap_or_default();
                add(Problem {
                    member: Some(member),
                    digest,
                    images,
                    error: error_chain(&e),
                });
            }
        }
    });
    for v in bundle.volumes() {
        if let Err(e) = v.verify_end() {
            add(Problem {
                member: None,
                digest: None,
                images: Vec::new(),
                error: error_chain(&e),
            });
        }
    }
    reporter.finish();
    let mut problems = problems.into_inner().unwrap_or_else(|e| e.into_inner());
    let broken: BTreeSet<String> = problems.iter().filter_map(|p| p.member.clone()).collect();
    problems.extend(check_structure(bundle, &users, &broken));
    problems.extend(check_totals(manifest));
    problems.sort_by(|a, b| (&a.member, &a.error).cmp(&(&b.member, &b.error)));
    Ok(VerifyReport {
        version: VERIFY_JSON_VERSION,
        bundle: bundle.path().to_path_buf(),
        images: manifest.images.len(),
        members_checked: bundle
            .volumes()
            .iter()
            .map(|v| v.index().members.len())
            .sum(),
        bytes_checked: bundle.file_len(),
        signature,
        volumes: VolumesReport::of(bundle),
        base: manifest.base.clone(),
        problems,
        opened: true,
    })
}

/// Which requested references use each blob.
fn blob_users(manifest: &BundleManifest) -> BTreeMap<Digest, Vec<String>> {
    let mut users: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for img in &manifest.images {
        for d in &img.blobs {
            users
                .entry(d.clone())
                .or_default()
                .push(img.reference.clone());
        }
    }
    users
}

/// What is wrong with an image's names, one message each. `load` names the image
/// `name@digest` (and `name:tag`) and pins that, and shows `reference`: each must be an
/// exact, normalised reference in the one grammar ([`Reference`]), and `reference` must
/// agree with `name`, `tag` and `digest`, not be something a crafted manifest slipped in.
/// The messages quote the names escaped: they are unsigned text until the signature says
/// otherwise.
fn image_name_problems(img: &ImageEntry) -> Vec<String> {
    let mut out = Vec::new();
    let shown = Shown(&img.reference);
    let mut names = vec![format!("{}@{}", img.name, img.digest)];
    names.extend(img.tag.as_ref().map(|t| format!("{}:{t}", img.name)));
    for n in names {
        match n.parse::<Reference>() {
            Ok(r) if r.to_string() == n => {}
            Ok(_) => out.push(format!(
                "{shown}: \"{}\" is not a normalised image reference",
                Shown(&n)
            )),
            Err(e) => out.push(format!(
                "{shown}: \"{}\" is not a normalised image reference ({e})",
                Shown(&n)
            )),
        }
    }
    let r = match img.reference.parse::<Reference>() {
        Ok(r) => r,
        Err(e) => {
            out.push(format!("image reference: {e}"));
            return out;
        }
    };
    if r.to_string() != img.reference {
        out.push(format!(
            "image reference \"{shown}\" is not a normalised image reference (normalised: \"{r}\")"
        ));
    }
    if r.name() != img.name {
        out.push(format!(
            "image reference \"{shown}\" names repository \"{}\", but the image's name is \"{}\"",
            r.name(),
            Shown(&img.name)
        ));
    }
    if r.effective_tag() != img.tag.as_deref() {
        out.push(format!(
            "image reference \"{shown}\" has tag {}, but the image's tag is {}",
            r.effective_tag()
                .map_or("(none)".into(), |t| format!("\"{t}\"")),
            img.tag
                .as_deref()
                .map_or("(none)".into(), |t| format!("\"{}\"", Shown(t)))
        ));
    }
    if let Some(d) = r.digest()
        && *d != img.digest
    {
        out.push(format!(
            "image reference \"{shown}\" names digest {d}, but the image's digest is {}",
            img.digest
        ));
    }
    out
}

/// Problems one check found. Each names the requested references its blob breaks.
struct Found<'a> {
    users: &'a BTreeMap<Digest, Vec<String>>,
    problems: Vec<Problem>,
}

impl<'a> Found<'a> {
    fn new(users: &'a BTreeMap<Digest, Vec<String>>) -> Self {
        Found {
            users,
            problems: Vec::new(),
        }
    }

    fn add(&mut self, member: Option<String>, digest: Option<Digest>, error: String) {
        let images = digest
            .as_ref()
            .and_then(|d| self.users.get(d))
            .cloned()
            .unwrap_or_default();
        self.problems.push(Problem {
            member,
            digest,
            images,
            error,
        });
    }
}

/// With volumes missing (a partial check), absent blobs are expected: whether `d` is one.
fn in_missing_volume(bundle: &BundleSet, d: &Digest) -> bool {
    !bundle.missing().is_empty() && bundle.blob(d).is_none()
}

/// Cross-checks `pinbundle.json`, the members and the image manifests, one check at a time.
/// Members already found broken are not parsed again.
fn check_structure(
    bundle: &BundleSet,
    users: &BTreeMap<Digest, Vec<String>>,
    broken: &BTreeSet<String>,
) -> Vec<Problem> {
    let mut problems = check_layout(bundle, users);
    problems.extend(check_listed(bundle, users));
    problems.extend(check_unlisted(bundle, users));
    for img in &bundle.manifest().images {
        problems.extend(check_image(bundle, users, broken, img));
    }
    problems
}

/// Every volume's `oci-layout` and `index.json` are the ones `pinbundle.json` names.
fn check_layout(bundle: &BundleSet, users: &BTreeMap<Digest, Vec<String>>) -> Vec<Problem> {
    let manifest = bundle.manifest();
    let mut found = Found::new(users);
    let mut problem = |m, d, e| found.add(m, d, e);
    let many = bundle.volumes().len() > 1;
    for v in bundle.volumes() {
        for (path, expected) in [
            (OCI_LAYOUT_PATH, &manifest.layout.oci_layout),
            (OCI_INDEX_PATH, &manifest.layout.index_json),
        ] {
            let shown = if many {
                format!("{path} in {}", v.path().display())
            } else {
                path.to_string()
            };
            match v.member(path) {
                Some(m) if &m.digest == expected => {}
                Some(m) => problem(
                    Some(shown),
                    None,
                    format!(
                        "digest {} differs from pinbundle.json's {expected}",
                        m.digest
                    ),
                ),
                None => problem(Some(shown), None, "missing".into()),
            }
        }
    }
    found.problems
}

/// Every blob `pinbundle.json` lists is present with its size, or rightly left to a base.
fn check_listed(bundle: &BundleSet, users: &BTreeMap<Digest, Vec<String>>) -> Vec<Problem> {
    let manifest = bundle.manifest();
    let mut found = Found::new(users);
    let mut problem = |m, d, e| found.add(m, d, e);
    let in_missing_volume = |d: &Digest| in_missing_volume(bundle, d);
    for b in manifest.blobs.iter().filter(|b| !b.carried) {
        let error = if manifest.base.is_none() {
            "marked \"carried\": false, but the bundle is not a delta (no base)"
        } else if b.kind != BlobKind::Layer {
            "marked \"carried\": false, but only layers may be left to the base"
        } else if bundle.blob(&b.digest).is_some() {
            "marked \"carried\": false, but present in the bundle"
        } else {
            continue;
        };
        problem(
            Some(b.digest.layout_path()),
            Some(b.digest.clone()),
            error.into(),
        );
    }
    for b in manifest.blobs.iter().filter(|b| b.carried) {
        match bundle.blob(&b.digest) {
            None if in_missing_volume(&b.digest) => {}
            None => problem(
                Some(b.digest.layout_path()),
                Some(b.digest.clone()),
                "listed in pinbundle.json but missing from the bundle".into(),
            ),
            Some(m) if m.size != b.size => problem(
                Some(b.digest.layout_path()),
                Some(b.digest.clone()),
                format!("is {} bytes, pinbundle.json says {}", m.size, b.size),
            ),
            Some(_) => {}
        }
    }
    found.problems
}

/// Every blob present is listed.
fn check_unlisted(bundle: &BundleSet, users: &BTreeMap<Digest, Vec<String>>) -> Vec<Problem> {
    let listed: BTreeSet<&Digest> = bundle.manifest().blobs.iter().map(|b| &b.digest).collect();
    let mut found = Found::new(users);
    for m in bundle.volumes().iter().flat_map(|v| &v.index().members) {
        if m.path.starts_with("blobs/") && !listed.contains(&m.digest) {
            found.add(
                Some(m.path.clone()),
                Some(m.digest.clone()),
                "present but not listed in pinbundle.json".into(),
            );
        }
    }
    found.problems
}

/// A blob read whole to be parsed (a manifest, never more than the format's limit for
/// them), or why it cannot be.
fn readable(bundle: &BundleSet, broken: &BTreeSet<String>, d: &Digest) -> Result<Vec<u8>, String> {
    let loc = bundle.blob(d).ok_or("is missing")?;
    if broken.contains(&d.layout_path()) {
        return Err("is damaged".into());
    }
    bundle.read_blob(loc).map_err(|e| match e {
        e @ bundle::Error::TooLarge { .. } => e.to_string(),
        _ => "is damaged".into(),
    })
}

/// One image: its names, and that its manifests reference only present blobs of the declared
/// sizes.
fn check_image(
    bundle: &BundleSet,
    users: &BTreeMap<Digest, Vec<String>>,
    broken: &BTreeSet<String>,
    img: &ImageEntry,
) -> Vec<Problem> {
    let mut found = Found::new(users);
    for error in image_name_problems(img) {
        found.add(None, Some(img.digest.clone()), error);
    }
    let root_what = format!("{} (manifest {})", img.reference, img.digest);
    let root = match readable(bundle, broken, &img.digest) {
        Ok(root) => root,
        Err(_) if in_missing_volume(bundle, &img.digest) => return found.problems,
        Err(why) => {
            found.add(
                Some(img.digest.layout_path()),
                Some(img.digest.clone()),
                format!("top-level manifest of {} {why}", img.reference),
            );
            return found.problems;
        }
    };
    let instances: Vec<(Digest, Vec<u8>, String)> =
        match manifest::parse(&root, &img.media_type, &root_what) {
            Ok(Parsed::Image(_)) => vec![(img.digest.clone(), root, img.media_type.clone())],
            Ok(Parsed::Index(index)) => platform_manifests(bundle, broken, img, &index, &mut found),
            Err(e) => {
                found.add(
                    Some(img.digest.layout_path()),
                    Some(img.digest.clone()),
                    e.to_string(),
                );
                Vec::new()
            }
        };
    let mut needed: Vec<(Digest, Option<u64>, String)> = Vec::new();
    for (digest, bytes, media_type) in instances {
        let what = format!("{} (manifest {digest})", img.reference);
        match manifest::parse(&bytes, &media_type, &what) {
            Ok(Parsed::Image(m)) => {
                if let Err(e) = manifest::check_image_media_types(&m, &what) {
                    found.add(
                        Some(digest.layout_path()),
                        Some(digest.clone()),
                        e.to_string(),
                    );
                }
                for d in std::iter::once(m.config()).chain(m.layers().iter()) {
                    match manifest::digest_of(d, &what) {
                        Ok(dg) => needed.push((dg, Some(d.size()), what.clone())),
                        Err(e) => found.add(None, None, e.to_string()),
                    }
                }
            }
            Ok(Parsed::Index(_)) => found.add(
                Some(digest.layout_path()),
                Some(digest.clone()),
                format!("{what}: nested index where an image manifest was expected"),
            ),
            Err(e) => found.add(
                Some(digest.layout_path()),
                Some(digest.clone()),
                e.to_string(),
            ),
        }
    }
    check_needed(bundle, needed, &mut found);
    found.problems
}

/// The platform manifests of an image whose top-level manifest is `index`: each must be in
/// it and readable.
fn platform_manifests(
    bundle: &BundleSet,
    broken: &BTreeSet<String>,
    img: &ImageEntry,
    index: &oci_spec::image::ImageIndex,
    found: &mut Found,
) -> Vec<(Digest, Vec<u8>, String)> {
    let listed: BTreeSet<String> = index
        .manifests()
        .iter()
        .map(|d| d.digest().to_string())
        .collect();
    let mut out = Vec::new();
    for p in &img.platforms {
        if !listed.contains(&p.digest.to_string()) {
            found.add(
                None,
                Some(p.digest.clone()),
                format!(
                    "{}: platform manifest {} is not in its index",
                    img.reference, p.digest
                ),
            );
            continue;
        }
        match readable(bundle, broken, &p.digest) {
            Ok(b) => out.push((p.digest.clone(), b, p.media_type.clone())),
            Err(_) if in_missing_volume(bundle, &p.digest) => {}
            Err(why) => found.add(
                Some(p.digest.layout_path()),
                Some(p.digest.clone()),
                format!("platform manifest of {} {why}", img.reference),
            ),
        }
    }
    out
}

/// Every blob an image manifest references (`needed`: digest, declared size, which manifest)
/// is present with that size, or is a delta's omitted layer of that size.
fn check_needed(bundle: &BundleSet, needed: Vec<(Digest, Option<u64>, String)>, found: &mut Found) {
    // A delta's omitted layers (section 8.2): listed, never members, and only in a delta.
    let omitted: BTreeMap<&Digest, u64> = bundle
        .manifest()
        .blobs
        .iter()
        .filter(|b| !b.carried)
        .map(|b| (&b.digest, b.size))
        .collect();
    for (d, size, what) in needed {
        match bundle.blob(&d) {
            None if in_missing_volume(bundle, &d) => {}
            // Checked when loading: on the node or in a base bundle.
            None if size.is_some() && omitted.get(&d) == size.as_ref() => {}
            None if omitted.contains_key(&d) => found.add(
                None,
                Some(d.clone()),
                format!(
                    "{what} declares {} bytes for {d}, pinbundle.json says {}",
                    size.unwrap_or(0),
                    omitted.get(&d).copied().unwrap_or(0)
                ),
            ),
            None => found.add(
                Some(d.layout_path()),
                Some(d.clone()),
                format!("{what} references a blob missing from the bundle"),
            ),
            Some(m) if Some(m.size) != size => found.add(
                Some(d.layout_path()),
                Some(d.clone()),
                format!(
                    "{what} declares {} bytes, the bundle has {}",
                    size.unwrap_or(0),
                    m.size
                ),
            ),
            Some(_) => {}
        }
    }
}

/// Checks that every size `pinbundle.json` sums up (each image's, the totals) is the sum it
/// claims, with checked arithmetic: whoever adds these numbers later (the space check,
/// `inspect`, `diff`) can trust they neither lie nor wrap around.
fn check_totals(manifest: &BundleManifest) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |digest: Option<Digest>, images: Vec<String>, error: String| {
        problems.push(Problem {
            member: None,
            digest,
            images,
            error,
        })
    };
    let blobs: BTreeMap<&Digest, &crate::bundle::format::BlobEntry> =
        manifest.blobs.iter().map(|b| (&b.digest, b)).collect();
    let shown = |n: Option<u64>| n.map_or("more than 2^64".to_string(), |n| n.to_string());
    for img in &manifest.images {
        let mut listed = Vec::new();
        for d in &img.blobs {
            match blobs.get(d) {
                Some(b) => listed.push(*b),
                None => problem(
                    Some(d.clone()),
                    vec![img.reference.clone()],
                    format!(
                        "{}: needs blob {d}, which pinbundle.json's blobs do not list",
                        img.reference
                    ),
                ),
            }
        }
        let size = checked_sum(listed.iter().map(|b| b.size));
        let unpacked = checked_sum(listed.iter().filter_map(|b| b.uncompressed_size));
        if size != Some(img.size) || unpacked != Some(img.uncompressed_size) {
            problem(
                Some(img.digest.clone()),
                vec![img.reference.clone()],
                format!(
                    "{}: pinbundle.json says {} bytes ({} unpacked), its blobs add up to {} ({})",
                    img.reference,
                    img.size,
                    img.uncompressed_size,
                    shown(size),
                    shown(unpacked)
                ),
            );
        }
    }
    let t = &manifest.totals;
    let size = checked_sum(manifest.blobs.iter().map(|b| b.size));
    let unpacked = checked_sum(manifest.blobs.iter().filter_map(|b| b.uncompressed_size));
    if t.images != manifest.images.len()
        || t.blobs != manifest.blobs.len()
        || size != Some(t.size)
        || unpacked != Some(t.uncompressed_size)
    {
        problem(
            None,
            Vec::new(),
            format!(
                "pinbundle.json's totals ({} images, {} blobs, {} bytes, {} unpacked) are not what it lists ({} images, {} blobs, {} bytes, {} unpacked)",
                t.images,
                t.blobs,
                t.size,
                t.uncompressed_size,
                manifest.images.len(),
                manifest.blobs.len(),
                shown(size),
                shown(unpacked)
            ),
        );
    }
    let omitted: Vec<u64> = manifest
        .blobs
        .iter()
        .filter(|b| !b.carried)
        .map(|b| b.size)
        .collect();
    if manifest.base.is_some()
        && (t.omitted_blobs != Some(omitted.len())
            || t.omitted_size != checked_sum(omitted.iter().copied()))
    {
        problem(
            None,
            Vec::new(),
            "pinbundle.json's omitted totals are not what its blobs marked \"carried\": false add up to".into(),
        );
    }
    problems
}

/// The sum of `it`, or `None` when it would wrap around.
fn checked_sum(mut it: impl Iterator<Item = u64>) -> Option<u64> {
    it.try_fold(0u64, u64::checked_add)
}

/// What `inspect` shows: read from the footer, seek index and `pinbundle.json` only.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InspectReport {
    pub version: u32,
    pub bundle: PathBuf,
    pub file_size: u64,
    pub frames: usize,
    pub members: usize,
    /// Who signed the bundle (not checked against any key: use `verify --trust-key`); `null`
    /// when it is unsigned.
    pub signature: Option<SignatureInfo>,
    /// The volume set, `null` for a whole bundle.
    pub volumes: Option<VolumesReport>,
    /// The OpenShift releases, grouped: bytes new and shared with the releases before each
    /// (absent when there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub release_summary: Vec<crate::release::ReleaseSummary>,
    #[serde(flatten)]
    pub manifest: BundleManifest,
}

/// Why `inspect` could not report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    #[error(transparent)]
    Bundle(#[from] bundle::Error),
    #[error("{}: {SIGNATURE_PATH}", path.display())]
    Signature {
        path: PathBuf,
        #[source]
        source: sign::Error,
    },
}

/// Reads what the bundle says it holds, without reading the blobs.
pub fn inspect(path: &Path) -> Result<InspectReport, InspectError> {
    inspect_paths(&[path.to_path_buf()])
}

/// [`inspect`] of a bundle or of volumes (any that are present: missing ones are listed).
pub fn inspect_paths(inputs: &[PathBuf]) -> Result<InspectReport, InspectError> {
    let set_opts = SetOptions {
        allow_partial: true,
        find_siblings: true,
    };
    let b = BundleSet::open(inputs, set_opts)?;
    let path = b.path().to_path_buf();
    let signature = match b.signature_bytes()? {
        None => None,
        Some(bytes) => {
            let sig = sign::Signature::parse(&bytes).map_err(|source| InspectError::Signature {
                path: path.clone(),
                source,
            })?;
            Some(SignatureInfo {
                key_id: sig.key_id,
                trusted_comment: sig.trusted_comment,
                verified_by: None,
            })
        }
    };
    Ok(InspectReport {
        version: JSON_VERSION,
        bundle: path.clone(),
        file_size: b.file_len(),
        frames: b.volumes().iter().map(|v| v.index().frames.len()).sum(),
        members: b.volumes().iter().map(|v| v.index().members.len()).sum(),
        signature,
        volumes: VolumesReport::of(&b),
        release_summary: crate::release::summaries(b.manifest(), None),
        manifest: b.manifest().clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_document_is_unchanged() {
        let d = Digest::of(b"x");
        let r = VerifyReport {
            version: VERIFY_JSON_VERSION,
            bundle: "b".into(),
            images: 1,
            members_checked: 2,
            bytes_checked: 3,
            signature: None,
            volumes: None,
            base: Some(BaseRef {
                manifest: d.clone(),
                created: "t".into(),
            }),
            problems: vec![Problem {
                member: None,
                digest: Some(d),
                images: Vec::new(),
                error: "e".into(),
            }],
            opened: true,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"version":2,"bundle":"b","ok":false,"images":1,"membersChecked":2,"bytesChecked":3,"signature":null,"volumes":null,"base":{"manifest":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","created":"t"},"problems":[{"member":null,"digest":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","images":[],"error":"e"}],"opened":true}"#
        );
        let mut r = r;
        r.base = None;
        r.problems.clear();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"version":2,"bundle":"b","ok":true,"images":1,"membersChecked":2,"bytesChecked":3,"signature":null,"volumes":null,"problems":[],"opened":true}"#
        );
    }
}
