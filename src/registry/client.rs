//! The registry client `create` uses: resolve references to manifests and fetch blobs into a
//! content-addressed cache, verifying every byte against its digest.
//!
//! Built on [`oci_client`], which handles the `/v2/` challenge, bearer-token exchange and
//! basic auth. This module adds what pinbundle needs on top: credentials from auth files
//! ([`super::auth`]), exact manifest bytes with their media type, bounded retries with
//! backoff, resumable blob downloads with `Range`, and typed errors that name the reference
//! and registry and never print credentials or signed-URL query strings.
//!
//! It does not parse manifests beyond recognising their media type, and it does not choose
//! platforms: callers walk indexes with [`RegistryClient::get_manifest_by_digest`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol,
};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use rand::Rng as _;
use sha2::Digest as _;

/// How many bytes of a blob are gathered before each write to the cache file.
const WRITE_BATCH: usize = 1 << 20;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use super::auth::{self, AuthError, AuthFile, Lookup};
use crate::reference::{DOCKER_HUB, Digest, Reference};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 (signed), accepted only to recognise and reject it.
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker schema 1 (unsigned), accepted only to recognise and reject it.
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

const ACCEPT: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
];

/// Where Docker Hub's API is served; `docker.io` itself does not answer `/v2/`.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Everything that can go wrong talking to a registry. Messages name the reference and the
/// registry; URLs are shown without credentials or query strings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{reference} not found on {registry}")]
    NotFound { registry: String, reference: String },
    #[error("{registry} answered 401 Unauthorized for {reference}: {credentials}")]
    Unauthorized {
        registry: String,
        reference: String,
        /// Which credentials were tried and from which file (never their value).
        credentials: String,
    },
    #[error("{registry} denied access to {reference} (403 Forbidden)")]
    Denied { registry: String, reference: String },
    #[error(
        "cannot connect to registry {registry} for {reference} (gave up after {attempts} attempts)"
    )]
    Unreachable {
        registry: String,
        reference: String,
        attempts: u32,
        #[source]
        source: BoxError,
    },
    #[error("transfer of {what} from {registry} failed (gave up after {attempts} attempts)")]
    Network {
        registry: String,
        what: String,
        attempts: u32,
        #[source]
        source: BoxError,
    },
    #[error("digest mismatch for {what}: expected {expected}, found {found}")]
    DigestMismatch {
        what: String,
        expected: String,
        found: String,
    },
    #[error("size mismatch for {what}: expected {expected} bytes, the registry sent {found}")]
    SizeMismatch {
        what: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "{reference}: schema 1 manifests are deprecated and not supported; re-push the image with a current client"
    )]
    SchemaOne { reference: String },
    #[error("{reference}: unsupported manifest media type \"{media_type}\"")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },
    #[error("{reference}: the registry returned a manifest that is not valid JSON")]
    InvalidManifest {
        reference: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("HTTP {status} from {url} for {reference}")]
    Http {
        status: u16,
        /// Redacted: no credentials, no query string.
        url: String,
        reference: String,
    },
    #[error("{registry} returned an error for {reference}: {detail}")]
    Registry {
        registry: String,
        reference: String,
        detail: String,
    },
    #[error("i/o error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path} contains no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot set up the HTTP client")]
    Setup {
        #[source]
        source: BoxError,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// A boxed error source (already stripped of URLs).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How [`RegistryClient`] connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `host[:port]` of registries served over plain HTTP; all others use HTTPS.
    pub insecure_registries: Vec<String>,
    /// PEM files with extra CA certificates, trusted in addition to the system roots.
    pub ca_files: Vec<PathBuf>,
    /// An auth file that must exist; `None` searches the default locations (see
    /// [`super::auth`]).
    pub authfile: Option<PathBuf>,
    /// How many times a failed request is retried (so `retries + 1` attempts).
    pub retries: u32,
    /// The first backoff delay; it doubles per retry up to `backoff_max`, plus jitter.
    pub backoff_base: Duration,
    /// The largest backoff delay.
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// The longest wait for the next bytes of a response.
    pub read_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_registries: Vec::new(),
            ca_files: Vec::new(),
            authfile: None,
            retries: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// A manifest exactly as the registry sent it.
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// The exact bytes; never re-serialised, so `digest` stays valid.
    pub bytes: bytes::Bytes,
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// One of [`OCI_MANIFEST`], [`OCI_INDEX`], [`DOCKER_MANIFEST`], [`DOCKER_MANIFEST_LIST`].
    pub media_type: String,
}

/// A registry client; cheap to clone and shareable across tasks.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("insecure_registries", &self.inner.insecure)
            .field(
                "authfile",
                &self.inner.authfile.as_ref().map(AuthFile::path),
            )
            .finish_non_exhaustive()
    }
}

struct Inner {
    insecure: Vec<String>,
    certificates: Vec<(PathBuf, Vec<u8>)>,
    authfile: Option<AuthFile>,
    retries: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// One oci-client per credential key ("" for anonymous): oci-client stores one
    /// credential per registry host, but auth files may scope credentials to namespaces.
    clients: Mutex<HashMap<String, oci_client::Client>>,
}

/// A request's target: what to show in errors and how to reach it.
struct Target {
    registry: String,
    reference: String,
    oci: oci_client::Reference,
    auth: RegistryAuth,
    auth_key: String,
    lookup: Lookup,
}

/// One failed attempt: the error to report, and whether another attempt may help.
struct Failure {
    error: Error,
    transient: bool,
}

impl RegistryClient {
    /// A client with `opts`. Reads the CA files and the auth file now, so a bad path or
    /// unparsable file fails here, naming the file.
    pub fn new(opts: ClientOptions) -> Result<Self, Error> {
        let mut certificates = Vec::new();
        for path in &opts.ca_files {
            let text = std::fs::read(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            let blocks = pem_certificates(&text);
            if blocks.is_empty() {
                return Err(Error::NoCertificate { path: path.clone() });
            }
            certificates.extend(blocks.into_iter().map(|b| (path.clone(), b)));
        }
        let authfile = auth::discover_default(opts.authfile.as_deref())?;
        let inner = Inner {
            insecure: opts.insecure_registries,
            certificates,
            authfile,
            retries: opts.retries,
            backoff_base: opts.backoff_base,
            backoff_max: opts.backoff_max,
            connect_timeout: opts.connect_timeout,
            read_timeout: opts.read_timeout,
            clients: Mutex::new(HashMap::new()),
        };
        // Build one client now so bad certificates fail at construction.
        inner.oci_client("")?;
        Ok(RegistryClient {
            inner: Arc::new(inner),
        })
    }

    /// GET the manifest for `reference`: by its digest if it has one, else by its effective
    /// tag. Verifies sha256 of the body against `Docker-Content-Digest` (when sent) and
    /// against the reference's digest (when it has one).
    ///
    /// # Errors
    /// [`Error::DigestMismatch`], [`Error::NotFound`], [`Error::SchemaOne`],
    /// [`Error::UnsupportedMediaType`], and the transport and auth errors.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<RawManifest, Error> {
        let target = self.target(reference, reference.effective_tag(), reference.digest())?;
        self.manifest(&target, reference.digest()).await
    }

    /// GET a child manifest (an index or list entry) by `digest` in `reference`'s repository.
    pub async fn get_manifest_by_digest(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<RawManifest, Error> {
        let target = self.target(reference, None, Some(digest))?;
        self.manifest(&target, Some(digest)).await
    }

    /// Stream blob `digest` (of `size` bytes) from `reference`'s repository into `dest`, a
    /// final path in a content-addressed cache.
    ///
    /// Bytes go to `<dest>.partial` (locked against concurrent fetchers), hashed while
    /// written; only when size and sha256 match is the file renamed to `dest`.
    /// Transient failures (5xx, 429, resets, timeouts) are retried with backoff, resuming
    /// with a `Range` request; a registry that ignores the range restarts from zero. A
    /// partial left by an earlier run is resumed; if the result does not verify, the blob is
    /// fetched once more from zero. If `dest` already exists (before or after waiting for the
    /// lock), only a verified rename can have put it there, so this returns at once without
    /// reading it. `progress(n)` receives byte increments; their
    /// sum never exceeds `size`.
    ///
    /// # Errors
    /// [`Error::DigestMismatch`] (the partial is deleted), [`Error::SizeMismatch`],
    /// [`Error::Io`] naming the file, and the transport and auth errors.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        dest: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), Error> {
        let target = self.target(reference, None, None)?;
        let what = format!("blob {digest} of {}", reference.name());
        let file_name = dest
            .file_name()
            .map_or_else(|| digest.hex().into(), |n| n.to_os_string());
        let mut partial_name = file_name;
        partial_name.push(".partial");
        let partial = dest.with_file_name(partial_name);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };

        if tokio::fs::try_exists(dest).await.map_err(io(dest))? {
            return Ok(());
        }
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial)
            .await
            .map_err(io(&partial))?;
        lock_exclusive(&file).await.map_err(io(&partial))?;
        if tokio::fs::try_exists(dest).await.map_err(io(dest))? {
            // Another fetcher finished while this one waited for the lock; drop the empty
            // partial this open may have created.
            if file.metadata().await.map_err(io(&partial))?.len() == 0 {
                let _ = tokio::fs::remove_file(&partial).await;
            }
            return Ok(());
        }

        // Resume what an earlier run left, unless it is already too long.
        let mut hasher = sha2::Sha256::new();
        let mut len = file.metadata().await.map_err(io(&partial))?.len();
        if len > size {
            truncate(&mut file).await.map_err(io(&partial))?;
            len = 0;
        } else if len > 0 {
            hash_file(&mut file, &mut hasher)
                .await
                .map_err(io(&partial))?;
        }
        let mut reused_partial = len > 0;
        let mut reported = 0u64;
        let mut report = |len: u64| {
            if len > reported {
                progress(len - reported);
                reported = len;
            }
        };
        report(len);

        let descriptor = OciDescriptor {
            digest: digest.to_string(),
            size: i64::try_from(size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let client = self.inner.oci_client(&target.auth_key)?;
        client
            .store_auth_if_needed(target.oci.resolve_registry(), &target.auth)
            .await;

        let mut attempt = 0u32;
        loop {
            if len < size {
                let result = self
                    .blob_attempt(
                        &client,
                        &target,
                        &descriptor,
                        &what,
                        size,
                        &mut file,
                        &partial,
                        &mut hasher,
                        &mut len,
                    )
                    .await;
                report(len);
                match result {
                    Ok(()) => {}
                    Err(Failure {
                        error: Error::Io { path, source },
                        ..
                    }) => return Err(Error::Io { path, source }),
                    Err(failure) if failure.transient && attempt < self.inner.retries => {
                        self.backoff(attempt).await;
                        attempt += 1;
                        continue;
                    }
                    Err(failure) => {
                        return Err(finish_error(failure.error, &target, attempt + 1));
                    }
                }
                if len < size {
                    // The stream ended early without an error: resume.
                    if attempt < self.inner.retries {
                        self.backoff(attempt).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(Error::SizeMismatch {
                        what,
                        expected: size,
                        found: len,
                    });
                }
            }
            let found = Digest::from_hash(std::mem::take(&mut hasher).finalize().into());
            if found != *digest {
                if reused_partial {
                    // The earlier run's bytes were bad; fetch everything once more.
                    reused_partial = false;
                    truncate(&mut file).await.map_err(io(&partial))?;
                    len = 0;
                    continue;
                }
                drop(file);
                tokio::fs::remove_file(&partial)
                    .await
                    .map_err(io(&partial))?;
                return Err(Error::DigestMismatch {
                    what,
                    expected: digest.to_string(),
                    found: found.to_string(),
                });
            }
            break;
        }
        file.flush().await.map_err(io(&partial))?;
        // No fsync: forcing every blob to disk doubled `create`'s time. A blob a crash left
        // short or zeroed behind its name is caught when the bundle writer hashes it again,
        // which also deletes it from the cache.
        tokio::fs::rename(&partial, dest).await.map_err(io(dest))?;
        Ok(())
    }

    /// One GET of the blob from offset `*len`, appending to `file`.
    #[expect(
        clippy::too_many_arguments,
        reason = "private helper of fetch_blob's loop"
    )]
    async fn blob_attempt(
        &self,
        client: &oci_client::Client,
        target: &Target,
        descriptor: &OciDescriptor,
        what: &str,
        size: u64,
        file: &mut tokio::fs::File,
        partial: &Path,
        hasher: &mut sha2::Sha256,
        len: &mut u64,
    ) -> Result<(), Failure> {
        let io = |source| Failure {
            error: Error::Io {
                path: partial.to_path_buf(),
                source,
            },
            transient: false,
        };
        let fail = |e| classify(e, target, what);
        let offset = *len;
        // A ranged GET even from 0 (`bytes=0-`): oci-client then hands the bytes over without
        // hashing them itself, and `fetch_blob` hashes them once, across resumes. An empty
        // blob has no range to ask for.
        let stream = if size == 0 {
            client
                .pull_blob_stream(&target.oci, descriptor)
                .await
                .map_err(fail)?
        } else {
            match client
                .pull_blob_stream_partial(&target.oci, descriptor, offset, None)
                .await
                .map_err(fail)?
            {
                BlobResponse::Partial(stream)
                    if stream.content_length.is_none_or(|l| l == size - offset) =>
                {
                    stream
                }
                // 200 (the range was ignored) or a 206 for some other range: start over.
                BlobResponse::Partial(stream) | BlobResponse::Full(stream) => {
                    truncate(file).await.map_err(io)?;
                    *hasher = sha2::Sha256::new();
                    *len = 0;
                    stream
                }
            }
        };
        if let Some(total) = stream.content_length
            && *len + total != size
        {
            return Err(Failure {
                error: Error::SizeMismatch {
                    what: what.to_string(),
                    expected: size,
                    found: *len + total,
                },
                transient: false,
            });
        }
        let mut stream = stream.stream;
        // Chunks arrive in a few KiB; every tokio::fs write is a trip to the blocking pool, so
        // write in MiB batches. `len` counts only bytes on disk: a resume starts there.
        let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
        let result = loop {
            let Some(chunk) = stream.next().await else {
                break Ok(());
            };
            let chunk = match chunk {
                Ok(chunk) => chunk,
                // oci-client's own end-of-stream verification (on 200 responses): this
                // module verifies the digest itself below, with the partial-file policy.
                Err(e) if e.get_ref().is_some_and(|i| i.is::<DigestError>()) => break Ok(()),
                Err(e) => break Err(fail(OciDistributionError::IoError(e))),
            };
            if *len + (buf.len() + chunk.len()) as u64 > size {
                break Err(Failure {
                    error: Error::SizeMismatch {
                        what: what.to_string(),
                        expected: size,
                        found: *len + (buf.len() + chunk.len()) as u64,
                    },
                    transient: false,
                });
            }
            hasher.update(&chunk);
            buf.extend_from_slice(&chunk);
            if buf.len() >= WRITE_BATCH {
                file.write_all(&buf).await.map_err(io)?;
                *len += buf.len() as u64;
                buf.clear();
            }
        };
        // Keep what arrived before an error too (the hasher has seen exactly `buf`), so a
        // retry resumes after it.
        file.write_all(&buf).await.map_err(io)?;
        *len += buf.len() as u64;
        result?;
        Ok(())
    }

    async fn manifest(
        &self,
        target: &Target,
        expected: Option<&Digest>,
    ) -> Result<RawManifest, Error> {
        let client = self.inner.oci_client(&target.auth_key)?;
        let what = format!("manifest of {}", target.reference);
        let mut attempt = 0u32;
        let (bytes, header_digest) = loop {
            match client
                .pull_manifest_raw(&target.oci, &target.auth, ACCEPT)
                .await
                .map_err(|e| classify(e, target, &what))
            {
                Ok(ok) => break ok,
                Err(failure) if failure.transient && attempt < self.inner.retries => {
                    self.backoff(attempt).await;
                    attempt += 1;
                }
                Err(failure) => return Err(finish_error(failure.error, target, attempt + 1)),
            }
        };
        // oci-client has checked the body against the header and the reference; check again
        // here so the guarantee does not depend on its version.
        let digest = Digest::of(&bytes);
        if header_digest.starts_with("sha256:") && header_digest != digest.to_string() {
            return Err(Error::DigestMismatch {
                what,
                expected: header_digest,
                found: digest.to_string(),
            });
        }
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(Error::DigestMismatch {
                what,
                expected: expected.to_string(),
                found: digest.to_string(),
            });
        }
        let media_type = infer_media_type(&bytes, &target.reference)?;
        Ok(RawManifest {
            bytes,
            digest,
            media_type,
        })
    }

    fn target(
        &self,
        reference: &Reference,
        tag: Option<&str>,
        digest: Option<&Digest>,
    ) -> Result<Target, Error> {
        let api_host = if reference.domain() == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            reference.domain()
        };
        let (registry, repository) = (api_host.to_string(), reference.path().to_string());
        let oci = match (tag, digest) {
            (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
                registry.clone(),
                repository,
                tag.to_string(),
                digest.to_string(),
            ),
            (_, Some(digest)) => {
                oci_client::Reference::with_digest(registry.clone(), repository, digest.to_string())
            }
            (tag, None) => oci_client::Reference::with_tag(
                registry.clone(),
                repository,
                tag.unwrap_or(crate::reference::DEFAULT_TAG).to_string(),
            ),
        };
        let shown = match (tag, digest) {
            (None, Some(digest)) => format!("{}@{digest}", reference.name()),
            _ => reference.to_string(),
        };
        let lookup = match &self.inner.authfile {
            Some(file) => file.lookup(reference.domain(), reference.path()),
            None => Lookup::Missing { file: None },
        };
        let (auth, auth_key) = match &lookup {
            Lookup::Found {
                key, credential, ..
            } => (
                RegistryAuth::Basic(credential.username.clone(), credential.password.clone()),
                key.clone(),
            ),
            _ => (RegistryAuth::Anonymous, String::new()),
        };
        Ok(Target {
            registry: reference.domain().to_string(),
            reference: shown,
            oci,
            auth,
            auth_key,
            lookup,
        })
    }

    async fn backoff(&self, attempt: u32) {
        let base = self.inner.backoff_base.as_millis() as u64;
        let max = self.inner.backoff_max.as_millis() as u64;
        let delay = base.saturating_mul(1u64 << attempt.min(20)).min(max);
        // Full jitter over the upper half keeps retries of parallel downloads apart.
        let jittered = delay / 2 + rand::rng().random_range(0..=delay / 2);
        tokio::time::sleep(Duration::from_millis(jittered)).await;
    }
}

impl Inner {
    fn oci_client(&self, key: &str) -> Result<oci_client::Client, Error> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(key) {
            return Ok(client.clone());
        }
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            extra_root_certificates: self
                .certificates
                .iter()
                .map(|(_, pem)| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            // pinbundle walks indexes itself.
            platform_resolver: None,
            connect_timeout: Some(self.connect_timeout),
            read_timeout: Some(self.read_timeout),
            user_agent: concat!("pinbundle/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        // `Client::new` falls back to a default client on a bad config; `try_from` reports.
        let client = oci_client::Client::try_from(config).map_err(|e| Error::Setup {
            source: match self.certificates.first() {
                Some((path, _)) => format!(
                    "invalid CA certificate (first file: {}): {}",
                    path.display(),
                    redact_text(&e.to_string())
                )
                .into(),
                None => redact_text(&e.to_string()).into(),
            },
        })?;
        clients.insert(key.to_string(), client.clone());
        Ok(client)
    }
}

/// Turn the last failure into the error reported after `attempts` tries.
fn finish_error(error: Error, target: &Target, attempts: u32) -> Error {
    match error {
        Error::Unreachable { source, .. } => Error::Unreachable {
            registry: target.registry.clone(),
            reference: target.reference.clone(),
            attempts,
            source,
        },
        Error::Network {
            registry,
            what,
            source,
            ..
        } => Error::Network {
            registry,
            what,
            attempts,
            source,
        },
        other => other,
    }
}

/// Map an oci-client error to ours, and say whether retrying may help.
fn classify(e: OciDistributionError, target: &Target, what: &str) -> Failure {
    let registry = target.registry.clone();
    let reference = target.reference.clone();
    let not_found = || Error::NotFound {
        registry: registry.clone(),
        reference: reference.clone(),
    };
    let unauthorized = || Error::Unauthorized {
        registry: registry.clone(),
        reference: reference.clone(),
        credentials: target.lookup.describe(),
    };
    let fatal = |error| Failure {
        error,
        transient: false,
    };
    match e {
        OciDistributionError::RequestError(e) => transport(e, target, what),
        OciDistributionError::IoError(e) => {
            let kind = e.kind();
            let source: BoxError = match e.into_inner() {
                Some(inner) => match inner.downcast::<reqwest::Error>() {
                    Ok(e) => return transport(*e, target, what),
                    Err(other) => other,
                },
                None => Box::new(std::io::Error::from(kind)),
            };
            Failure {
                error: Error::Network {
                    registry,
                    what: what.to_string(),
                    attempts: 1,
                    source,
                },
                transient: true,
            }
        }
        OciDistributionError::UnauthorizedError { .. } => fatal(unauthorized()),
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            fatal(Error::DigestMismatch {
                what: what.to_string(),
                expected,
                found: actual,
            })
        }
        OciDistributionError::ServerError { code, url, .. } => match code {
            404 => fatal(not_found()),
            401 => fatal(unauthorized()),
            403 => fatal(Error::Denied {
                registry,
                reference,
            }),
            code => Failure {
                error: Error::Http {
                    status: code,
                    url: redact_url(&url),
                    reference,
                },
                transient: code == 429 || code >= 500,
            },
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.contains(&&OciErrorCode::Toomanyrequests) {
                return Failure {
                    error: Error::Registry {
                        registry,
                        reference,
                        detail: "429 Too Many Requests".to_string(),
                    },
                    transient: true,
                };
            }
            if codes.contains(&&OciErrorCode::Unauthorized) {
                return fatal(unauthorized());
            }
            if codes.contains(&&OciErrorCode::Denied) {
                return fatal(Error::Denied {
                    registry,
                    reference,
                });
            }
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                return fatal(not_found());
            }
            let detail = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            fatal(Error::Registry {
                registry,
                reference,
                detail: redact_text(&detail),
            })
        }
        other => fatal(Error::Registry {
            registry,
            reference,
            detail: redact_text(&other.to_string()),
        }),
    }
}

/// A reqwest failure: connect errors make the registry unreachable; timeouts, resets and
/// body errors are transient network errors. The URL is stripped (it may be signed).
fn transport(e: reqwest::Error, target: &Target, what: &str) -> Failure {
    if let Some(status) = e.status() {
        return Failure {
            transient: status.as_u16() == 429 || status.is_server_error(),
            error: Error::Http {
                status: status.as_u16(),
                url: e.url().map(|u| redact_url(u.as_str())).unwrap_or_default(),
                reference: target.reference.clone(),
            },
        };
    }
    let transient =
        e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode();
    let error = if e.is_connect() {
        Error::Unreachable {
            registry: target.registry.clone(),
            reference: target.reference.clone(),
            attempts: 1,
            source: Box::new(e.without_url()),
        }
    } else {
        Error::Network {
            registry: target.registry.clone(),
            what: what.to_string(),
            attempts: 1,
            source: Box::new(e.without_url()),
        }
    };
    Failure { error, transient }
}

/// `url` without user info, query or fragment: blob GETs may be redirected to signed URLs.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let had_query = parsed.query().is_some();
            // Only fails for URLs that cannot have credentials; nothing to remove then.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            let mut shown = parsed.to_string();
            if had_query {
                shown.push_str("?<redacted>");
            }
            shown
        }
        // Not a URL: cut at the first '?' to be safe.
        Err(_) => url.split('?').next().unwrap_or_default().to_string(),
    }
}

/// Redact every URL inside free text.
fn redact_text(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            if let Some(i) = word.find("http://").or_else(|| word.find("https://")) {
                let end = word[i..]
                    .find([',', ')', '"', '\''])
                    .map_or(word.len(), |e| i + e);
                format!(
                    "{}{}{}",
                    &word[..i],
                    redact_url(&word[i..end]),
                    &word[end..]
                )
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The media type of a manifest body: its `mediaType`, or for OCI documents without one,
/// an index if it has `manifests` and a manifest if it has `config`.
pub fn infer_media_type(body: &[u8], reference: &str) -> Result<String, Error> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "schemaVersion")]
        schema_version: Option<i64>,
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
        #[serde(rename = "fsLayers")]
        fs_layers: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(body).map_err(|source| Error::InvalidManifest {
        reference: reference.to_string(),
        source,
    })?;
    let schema_one = probe.schema_version == Some(1)
        || probe.fs_layers.is_some()
        || matches!(
            probe.media_type.as_deref(),
            Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)
        );
    if schema_one {
        return Err(Error::SchemaOne {
            reference: reference.to_string(),
        });
    }
    let unsupported = |media_type: &str| Error::UnsupportedMediaType {
        reference: reference.to_string(),
        media_type: media_type.to_string(),
    };
    match probe.media_type.as_deref() {
        Some(mt @ (OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST)) => {
            Ok(mt.to_string())
        }
        Some(other) => Err(unsupported(other)),
        None => match (probe.manifests.is_some(), probe.config.is_some()) {
            (true, false) => Ok(OCI_INDEX.to_string()),
            (false, true) => Ok(OCI_MANIFEST.to_string()),
            _ => Err(unsupported(
                "(none, and neither \"manifests\" nor \"config\")",
            )),
        },
    }
}

/// Each `-----BEGIN CERTIFICATE-----` block of a PEM file, so bundles with several CAs work
/// (reqwest's `Certificate::from_pem`, which oci-client uses, reads only the first).
fn pem_certificates(text: &[u8]) -> Vec<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    let mut rest = &*text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let end = start + end + END.len();
        out.push(format!("{}\n", &rest[start..end]).into_bytes());
        rest = &rest[end..];
    }
    out
}

async fn truncate(file: &mut tokio::fs::File) -> std::io::Result<()> {
    file.set_len(0).await?;
    file.seek(std::io::SeekFrom::Start(0)).await?;
    Ok(())
}

/// Hash the whole file from the start; leaves the position at the end.
async fn hash_file(file: &mut tokio::fs::File, hasher: &mut sha2::Sha256) -> std::io::Result<()> {
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// Take an exclusive `flock` on the partial file, waiting for another fetcher to finish.
async fn lock_exclusive(file: &tokio::fs::File) -> std::io::Result<()> {
    use rustix::fs::{FlockOperation, flock};
    loop {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "quay.io/org/app:v1";

    #[test]
    fn media_type_from_field() {
        for mt in [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ] {
            let body = format!(r#"{{"schemaVersion": 2, "mediaType": "{mt}"}}"#);
            assert_eq!(infer_media_type(body.as_bytes(), R).unwrap(), mt);
        }
    }

    #[test]
    fn media_type_inferred_for_oci_without_field() {
        let index = br#"{"schemaVersion": 2, "manifests": []}"#;
        assert_eq!(infer_media_type(index, R).unwrap(), OCI_INDEX);
        let manifest = br#"{"schemaVersion": 2, "config": {}, "layers": []}"#;
        assert_eq!(infer_media_type(manifest, R).unwrap(), OCI_MANIFEST);
        let neither = br#"{"schemaVersion": 2}"#;
        assert!(matches!(
            infer_media_type(neither, R),
            Err(Error::UnsupportedMediaType { .. })
        ));
    }

    #[test]
    fn schema_one_and_unknown_types_are_rejected() {
        let v1 = br#"{"schemaVersion": 1, "name": "a", "fsLayers": [], "signatures": []}"#;
        let err = infer_media_type(v1, R).unwrap_err();
        assert!(matches!(err, Error::SchemaOne { .. }));
        assert_eq!(
            err.to_string(),
            "quay.io/org/app:v1: schema 1 manifests are deprecated and not supported; re-push the image with a current client"
        );
        let other = br#"{"schemaVersion": 2, "mediaType": "application/vnd.example+json"}"#;
        let err = infer_media_type(other, R).unwrap_err();
        assert_eq!(
            err.to_string(),
            "quay.io/org/app:v1: unsupported manifest media type \"application/vnd.example+json\""
        );
        assert!(matches!(
            infer_media_type(b"<html>", R),
            Err(Error::InvalidManifest { .. })
        ));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url(
                "https://user:pw@s3.example.com/blob/x?X-Amz-Signature=abc&X-Amz-Credential=k"
            ),
            "https://s3.example.com/blob/x?<redacted>"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:5000/v2/a/manifests/v1"),
            "http://127.0.0.1:5000/v2/a/manifests/v1"
        );
        let text = "Server error: url https://cdn.example/x?sig=secret, code: 500";
        let shown = redact_text(text);
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.contains("https://cdn.example/x?<redacted>,"),
            "{shown}"
        );
    }

    #[test]
    fn pem_bundles_are_split() {
        let one = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let text = format!("junk\n{one}comment\n{one}");
        assert_eq!(pem_certificates(text.as_bytes()).len(), 2);
        assert!(pem_certificates(b"nothing").is_empty());
    }

    #[test]
    fn client_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<RegistryClient>();
    }
}
