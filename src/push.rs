//! `push`: disk-to-mirror. Every image of a verified bundle goes into a site registry at the
//! repository [`crate::mirror`] maps it to (`quay.io/ns/repo` → `MIRROR/PREFIX/ns/repo`), the
//! same mapping `manifests --mirror` sends the nodes to, with digests and manifest bytes
//! exactly as the bundle holds them.
//!
//! Order: the bundle is opened and verified first (with trusted keys, its signature before
//! any blob), and the mapping is checked for collisions, before any request. Then blobs
//! (configs and layers), largest first, `jobs` at a time: `HEAD` and skip when present; else,
//! when the same blob went (or already was) into another repository of this push, a
//! cross-repository mount; else `POST` + one monolithic `PUT` of the whole blob with its
//! `Content-Length`. Then manifests, each image's platform manifests before its index or list,
//! each `HEAD`ed first and `PUT` only when missing, the top one by its recorded tag (which
//! also makes it reachable by digest) or, without a tag, by digest.
//!
//! Every byte sent comes out of the bundle reader, each frame checked; a blob's last chunk is
//! sent only after its sha256 matched, so a damaged blob aborts its `PUT` and is never
//! committed (the registry checks the digest too). A push run again sends only what is
//! missing (the `HEAD`s); an upload session cut halfway is not resumed, the blob is sent again.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::Serialize;
use sha2::Digest as _;

use crate::bundle::format::{BlobEntry, BlobKind};
use crate::bundle::{self, BundleSet, SetOptions};
use crate::error::{Refused, error_chain};
use crate::mirror::{self, Mirror};
use crate::progress::Reporter;
use crate::reference::{Digest, Reference};
use crate::registry::client::{ClientOptions, Mounted, RegistryClient, UploadBody};
use crate::verify::{self, VerifyOptions};

/// The version of `push --json`'s document (docs/json.md).
pub const PUSH_JSON_VERSION: u32 = 1;

/// Bytes per chunk sent; at most [`CHUNKS_IN_FLIGHT`] wait per upload.
const CHUNK: usize = 1 << 20;
const CHUNKS_IN_FLIGHT: usize = 4;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bundle error names the file.
    #[error("cannot open the bundle")]
    Open(#[source] bundle::Error),
    #[error("{path} is not pushed")]
    Refused {
        path: PathBuf,
        #[source]
        source: Refused,
    },
    #[error("pushing to {registry}")]
    Registry {
        registry: String,
        #[source]
        source: crate::registry::Error,
    },
    /// The bundle error names the file and the blob.
    #[error("reading a blob to push it")]
    Read(#[source] bundle::Error),
    #[error("cannot set up the push")]
    Setup {
        #[source]
        source: std::io::Error,
    },
}

/// What to push where.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The bundle file, its volumes, or a directory holding them.
    pub bundle: Vec<PathBuf>,
    pub mirror: Mirror,
    pub client: ClientOptions,
    pub verify: VerifyOptions,
    /// Blobs sent at once (at least 1).
    pub jobs: usize,
}

/// What `push` did (the `--json` document).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    pub version: u32,
    pub bundle: PathBuf,
    /// `HOST[:PORT][/PREFIX]`.
    pub registry: String,
    pub images: Vec<ImagePushed>,
    pub totals: Counts,
}

impl PushReport {
    /// Whether every image is in the registry.
    pub fn ok(&self) -> bool {
        self.images.iter().all(|i| i.error.is_none())
    }
}

/// One image of the bundle and what its push did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagePushed {
    /// The reference in the bundle (`quay.io/ns/app:v1`).
    pub reference: String,
    /// Where it now is, by digest (`mirror.example/site/ns/app@sha256:…`).
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub digest: Digest,
    /// `pushed`, `alreadyPresent` when nothing was sent for it, or `failed` (see `error`).
    pub status: &'static str,
    /// Why the registry refused this image's manifests (its blobs may be there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

/// Counts of what was sent; a blob two images of one repository share counts for each.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub blobs_sent: usize,
    pub blobs_mounted: usize,
    pub blobs_skipped: usize,
    /// Blob bytes uploaded (mounted and skipped blobs send none).
    pub bytes_sent: u64,
    pub manifests_put: usize,
    pub manifests_skipped: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Sent,
    Mounted,
    Skipped,
}

/// One (repository, blob) to make present.
#[derive(Debug, Clone)]
struct Want {
    repository: Reference,
    digest: Digest,
    size: u64,
}

/// Pushes the bundle `opts.bundle` into `opts.mirror`.
///
/// # Errors
/// [`Error::Refused`] (a bundle that does not verify, is not signed by a trusted key, or
/// whose repositories collide at the mirror) before any request; [`Error::Registry`] naming
/// the registry; [`Error::Read`] when a blob's bytes fail while being sent.
pub fn push(opts: &PushOptions, reporter: &dyn Reporter) -> Result<PushReport, Error> {
    let set_opts = SetOptions {
        allow_partial: false,
        find_siblings: true,
    };
    let set = BundleSet::open(&opts.bundle, set_opts).map_err(Error::Open)?;
    let set = Arc::new(set);
    let path = set.path().to_path_buf();
    let refused = |msg: String| Error::Refused {
        path: path.clone(),
        source: Refused(msg),
    };
    // The repositories first: a collision is refused without reading a blob.
    let manifest = set.manifest();
    let mut names = Vec::new();
    for image in &manifest.images {
        let name: Reference = image
            .name
            .parse()
            .map_err(|e: crate::reference::ParseError| refused(error_chain(&e)))?;
        names.push((name, image.tag.is_some()));
    }
    let maps = mirror::mappings(&opts.mirror, &names).map_err(|e| refused(error_chain(&e)))?;
    let target_of: HashMap<&str, &str> = maps
        .iter()
        .map(|m| (m.source.as_str(), m.mirror.as_str()))
        .collect();

    reporter.message(&format!("verifying {}", path.display()));
    let verified = verify::verify_open(&set, &opts.verify, reporter).map_err(Error::Open)?;
    if !verified.problems.is_empty() {
        let shown: Vec<String> = verified
            .problems
            .iter()
            .map(|p| match &p.member {
                Some(m) => format!("{m}: {}", p.error),
                None => p.error.clone(),
            })
            .collect();
        return Err(refused(shown.join("; ")));
    }
    reporter.done(&format!(
        "verified {}",
        crate::progress::count(set.blobs().count(), "blob")
    ));

    let blobs: HashMap<&Digest, &BlobEntry> =
        manifest.blobs.iter().map(|b| (&b.digest, b)).collect();
    // Per image: its repository at the mirror and the blobs (not manifests) it needs.
    let mut plan: Vec<(Reference, Vec<&Digest>)> = Vec::new();
    for image in &manifest.images {
        let target = target_of
            .get(image.name.as_str())
            .copied()
            .unwrap_or_default();
        let repository: Reference = target
            .parse()
            .map_err(|e: crate::reference::ParseError| refused(error_chain(&e)))?;
        let needed = image
            .blobs
            .iter()
            .filter(|d| {
                blobs
                    .get(d)
                    .is_some_and(|b| matches!(b.kind, BlobKind::Config | BlobKind::Layer))
            })
            .collect();
        plan.push((repository, needed));
    }
    // Each blob's first repository uploads it; the others mount it from there.
    let mut owners: BTreeMap<&Digest, Reference> = BTreeMap::new();
    let mut firsts = Vec::new();
    let mut others = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (repository, needed) in &plan {
        for d in needed {
            if !seen.insert((repository.name(), (*d).clone())) {
                continue;
            }
            let want = Want {
                repository: repository.clone(),
                digest: (*d).clone(),
                size: blobs.get(d).map_or(0, |b| b.size),
            };
            if owners.contains_key(d) {
                others.push(want);
            } else {
                owners.insert(d, repository.clone());
                firsts.push(want);
            }
        }
    }
    firsts.sort_by(|a, b| b.size.cmp(&a.size).then(a.digest.cmp(&b.digest)));
    others.sort_by(|a, b| b.size.cmp(&a.size).then(a.digest.cmp(&b.digest)));

    let client = RegistryClient::new(opts.client.clone()).map_err(|source| Error::Registry {
        registry: opts.mirror.domain().to_string(),
        source,
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| Error::Setup { source })?;
    let jobs = opts.jobs.max(1);
    let total: u64 = firsts.iter().chain(&others).map(|w| w.size).sum();
    reporter.start("pushing blobs", total);
    let ctx = Ctx {
        client: &client,
        set: &set,
        domain: opts.mirror.domain(),
        reporter,
    };
    let outcomes: HashMap<(String, Digest), Outcome> = runtime.block_on(async {
        let mut outcomes = HashMap::new();
        let mut stream = futures_util::stream::iter(firsts.iter())
            .map(|w| ctx.make_present(w, None))
            .buffer_unordered(jobs);
        while let Some(r) = stream.next().await {
            let (key, outcome) = r?;
            outcomes.insert(key, outcome);
        }
        drop(stream);
        let mut stream = futures_util::stream::iter(others.iter())
            .map(|w| {
                let from = owners.get(&w.digest).map(|r| r.path().to_string());
                ctx.make_present(w, from)
            })
            .buffer_unordered(jobs);
        while let Some(r) = stream.next().await {
            let (key, outcome) = r?;
            outcomes.insert(key, outcome);
        }
        Ok::<_, Error>(outcomes)
    })?;
    reporter.finish();

    // Manifests: platform manifests first, then the index or list.
    let mut images = Vec::new();
    let mut totals = Counts::default();
    for (image, (repository, needed)) in manifest.images.iter().zip(&plan) {
        let mut counts = Counts::default();
        for d in needed {
            let key = (repository.name(), (*d).clone());
            let size = blobs.get(d).map_or(0, |b| b.size);
            match outcomes.get(&key) {
                Some(Outcome::Sent) => {
                    counts.blobs_sent += 1;
                    counts.bytes_sent += size;
                }
                Some(Outcome::Mounted) => counts.blobs_mounted += 1,
                Some(Outcome::Skipped) | None => counts.blobs_skipped += 1,
            }
        }
        let mut order: Vec<(&Digest, String)> = image
            .platforms
            .iter()
            .filter(|p| p.digest != image.digest)
            .map(|p| (&p.digest, p.digest.to_string()))
            .collect();
        let top = image
            .tag
            .clone()
            .unwrap_or_else(|| image.digest.to_string());
        order.push((&image.digest, top));
        reporter.step(&image.reference);
        let mut error = None;
        for (digest, reference) in order {
            let media_type = blobs
                .get(digest)
                .map_or(image.media_type.as_str(), |b| b.media_type.as_str());
            match runtime.block_on(ctx.put_manifest(repository, &reference, digest, media_type)) {
                Ok(true) => counts.manifests_put += 1,
                Ok(false) => counts.manifests_skipped += 1,
                // A registry that refuses this manifest: the other images still go.
                Err(Error::Registry { source, .. }) => {
                    let mut msg = error_chain(&source);
                    let listed = ctx.children(digest);
                    if digest == &image.digest && listed > image.platforms.len() {
                        msg.push_str(&format!(
                            " (the index lists {listed} platform manifests and the bundle carries {}: this registry accepts an index only with all of them; make the bundle with --all-platforms)",
                            image.platforms.len()
                        ));
                    }
                    error = Some(msg);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        let status = if error.is_some() {
            "failed"
        } else if counts.blobs_sent + counts.blobs_mounted + counts.manifests_put > 0 {
            "pushed"
        } else {
            "alreadyPresent"
        };
        add(&mut totals, &counts);
        images.push(ImagePushed {
            reference: image.reference.clone(),
            target: format!("{}@{}", repository.name(), image.digest),
            tag: image.tag.clone(),
            digest: image.digest.clone(),
            status,
            error,
            counts,
        });
    }
    // Totals count each (repository, blob) once.
    totals.blobs_sent = 0;
    totals.blobs_mounted = 0;
    totals.blobs_skipped = 0;
    totals.bytes_sent = 0;
    for ((_, d), outcome) in &outcomes {
        match outcome {
            Outcome::Sent => {
                totals.blobs_sent += 1;
                totals.bytes_sent += blobs.get(d).map_or(0, |b| b.size);
            }
            Outcome::Mounted => totals.blobs_mounted += 1,
            Outcome::Skipped => totals.blobs_skipped += 1,
        }
    }
    Ok(PushReport {
        version: PUSH_JSON_VERSION,
        bundle: path,
        registry: if opts.mirror.prefix().is_empty() {
            opts.mirror.domain().to_string()
        } else {
            format!("{}/{}", opts.mirror.domain(), opts.mirror.prefix())
        },
        images,
        totals,
    })
}

fn add(totals: &mut Counts, c: &Counts) {
    totals.manifests_put += c.manifests_put;
    totals.manifests_skipped += c.manifests_skipped;
}

struct Ctx<'a> {
    client: &'a RegistryClient,
    set: &'a Arc<BundleSet>,
    domain: &'a str,
    reporter: &'a dyn Reporter,
}

impl Ctx<'_> {
    /// How many manifests the index or list `digest` lists (0 for an image manifest).
    fn children(&self, digest: &Digest) -> usize {
        #[derive(serde::Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Vec<serde::de::IgnoredAny>,
        }
        self.set
            .blob(digest)
            .and_then(|l| self.set.read_blob(l).ok())
            .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
            .map_or(0, |i| i.manifests.len())
    }

    fn registry_error(&self, source: crate::registry::Error) -> Error {
        Error::Registry {
            registry: self.domain.to_string(),
            source,
        }
    }

    /// Makes blob `w` present in its repository: skipped, mounted from `from`, or sent.
    async fn make_present(
        &self,
        w: &Want,
        from: Option<String>,
    ) -> Result<((String, Digest), Outcome), Error> {
        let key = (w.repository.name(), w.digest.clone());
        let present = self
            .client
            .blob_exists(&w.repository, &w.digest)
            .await
            .map_err(|e| self.registry_error(e))?;
        if present {
            self.reporter.advance(w.size);
            return Ok((key, Outcome::Skipped));
        }
        let mut session = None;
        if let Some(from) = from {
            match self
                .client
                .mount_blob(&w.repository, &w.digest, &from)
                .await
                .map_err(|e| self.registry_error(e))?
            {
                Mounted::Yes => {
                    self.reporter.advance(w.size);
                    return Ok((key, Outcome::Mounted));
                }
                Mounted::Session(location) => session = Some(location),
            }
        }
        let Some(loc) = self.set.blob(&w.digest).cloned() else {
            return Err(Error::Refused {
                path: self.set.path().to_path_buf(),
                source: Refused(format!(
                    "blob {} is not carried by this bundle (a delta) and {} does not have it: push the base bundle first",
                    w.digest,
                    w.repository.name()
                )),
            });
        };
        // The first failure reading the bundle, kept to report instead of the aborted PUT.
        let failed: Arc<std::sync::Mutex<Option<bundle::Error>>> = Arc::default();
        let body = || {
            let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
            let set = Arc::clone(self.set);
            let loc = loc.clone();
            let len = loc.size;
            let failed = Arc::clone(&failed);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = produce(&set, &loc, &tx) {
                    let msg = e.to_string();
                    *failed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                    let _ = tx.blocking_send(Err(std::io::Error::other(msg)));
                }
            });
            UploadBody::new(rx, len)
        };
        let result = self
            .client
            .upload_blob(&w.repository, &w.digest, w.size, session, body)
            .await;
        if let Some(source) = failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            return Err(Error::Read(source));
        }
        result.map_err(|e| self.registry_error(e))?;
        self.reporter.advance(w.size);
        Ok((key, Outcome::Sent))
    }

    /// PUTs manifest `digest` as `repository:reference` unless it is there already; whether
    /// it was put.
    async fn put_manifest(
        &self,
        repository: &Reference,
        reference: &str,
        digest: &Digest,
        media_type: &str,
    ) -> Result<bool, Error> {
        if self
            .client
            .manifest_exists(repository, reference, digest, media_type)
            .await
            .map_err(|e| self.registry_error(e))?
        {
            return Ok(false);
        }
        let set = Arc::clone(self.set);
        let loc = set.blob(digest).cloned();
        let path = set.path().to_path_buf();
        let read = tokio::task::spawn_blocking(move || loc.map(|l| set.read_blob(&l)))
            .await
            .map_err(|e| Error::Setup {
                source: std::io::Error::other(e.to_string()),
            })?;
        let bytes = match read {
            Some(Ok(b)) => b,
            Some(Err(source)) => {
                return Err(Error::Read(source));
            }
            None => {
                return Err(Error::Refused {
                    path,
                    source: Refused(format!("manifest {digest} is not in the bundle")),
                });
            }
        };
        self.client
            .put_manifest(
                repository,
                reference,
                digest,
                media_type,
                Bytes::from(bytes),
            )
            .await
            .map_err(|e| self.registry_error(e))?;
        Ok(true)
    }
}

/// Reads blob `loc` and sends it in chunks; the last chunk only after the sha256 matched.
fn produce(
    set: &BundleSet,
    loc: &bundle::BlobLoc,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), bundle::Error> {
    let mut reader = set.open_blob(loc, 0);
    let mut hasher = sha2::Sha256::new();
    let mut pending: Option<Bytes> = None;
    let mut sent = 0u64;
    let gone = || bundle::Error::Io {
        path: set.path().to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload was abandoned"),
    };
    while sent < loc.size {
        let want = (loc.size - sent).min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            let n = reader
                .read(&mut buf[filled..])
                .map_err(|e| bundle::set::unwrap_io(set.path(), e))?;
            if n == 0 {
                return Err(bundle::set::unwrap_io(
                    set.path(),
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "blob ends early"),
                ));
            }
            filled += n;
        }
        sent += want as u64;
        hasher.update(&buf);
        if let Some(prev) = pending.replace(Bytes::from(buf)) {
            tx.blocking_send(Ok(prev)).map_err(|_| gone())?;
        }
    }
    let found = Digest::from_hash(hasher.finalize().into());
    if found != loc.digest {
        return Err(bundle::Error::DigestMismatch {
            path: set.path().to_path_buf(),
            member: loc.digest.layout_path(),
            expected: loc.digest.clone(),
            found,
        });
    }
    if let Some(last) = pending {
        tx.blocking_send(Ok(last)).map_err(|_| gone())?;
    }
    Ok(())
}
