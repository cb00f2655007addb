//! The registry client `create` uses: resolve references to manifests and fetch blobs into a
//! content-addressed cache, verifying every byte against its digest.
//!
//! Speaks the distribution API with [`reqwest`] directly: the `/v2/` bearer-token exchange
//! and basic auth, exact manifest bytes with their media type, bounded retries with backoff,
//! resumable blob downloads with `Range`, and typed errors that name the reference and
//! registry and never print credentials, tokens or signed-URL query strings.
//!
//! A registry, its token server and whatever they redirect to are peers, not trusted: every
//! body a peer sizes is read with a cap ([`MAX_MANIFEST`], [`MAX_TOKEN_RESPONSE`],
//! [`MAX_ERROR_BODY`]; a `Content-Length` above it is refused before reading), every request
//! has a deadline and every blob body a minimum rate ([`ClientOptions`]), a token or header a
//! peer sent is checked before it becomes a header value (never a panic), and text a peer
//! wrote reaches an error message only escaped and cut short ([`crate::text::excerpt`]).
//! (oci-client, used before, read all of these whole and unwrapped tokens into headers.)
//!
//! It does not parse manifests beyond recognising their media type, and it does not choose
//! platforms: callers walk indexes with [`RegistryClient::get_manifest_by_digest`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::Rng as _;
use reqwest::header::{self, HeaderMap, HeaderValue};

use super::auth::{self, AuthError, AuthFile, Credential, Lookup};
use crate::cache::{IoError, Mismatch, Staged, Verified};
use crate::reference::{DOCKER_HUB, Digest, Reference};
use crate::text::excerpt;

/// How many bytes of a blob are gathered before each write to the cache file.
const WRITE_BATCH: usize = 1 << 20;

/// The largest manifest or index accepted (containers/image's limit).
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The largest token-server response accepted.
pub const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
/// The most of an error body read (for its message); a longer one is not read at all.
pub const MAX_ERROR_BODY: u64 = 1 << 20;
/// The longest bearer token sent back (real ones are a few KiB).
const MAX_TOKEN_LEN: usize = 64 << 10;
/// How much of a peer's text an error message quotes.
const SHOWN: usize = 200;
/// How many redirects a request follows.
const MAX_REDIRECTS: usize = 5;
/// The longest the plain-HTTP probe after a failed TLS handshake waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

// The media types are those of the one table, [`media`]; these names are kept for callers.
pub use crate::bundle::format::media::{
    DOCKER_LIST as DOCKER_MANIFEST_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
/// Docker schema 1 (signed and unsigned), accepted only to recognise and reject it.
use crate::bundle::format::media::{DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED};

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
/// registry; URLs are shown without credentials or query strings, and text the registry
/// wrote is escaped and cut short.
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
    #[error("cannot connect to registry {registry} for {reference}{}", gave_up(*attempts))]
    Unreachable {
        registry: String,
        reference: String,
        attempts: u32,
        #[source]
        source: BoxError,
    },
    #[error(
        "{registry} answers plain HTTP, not HTTPS, for {reference}: if it is meant to be reached without TLS, pass --insecure-registry {registry}"
    )]
    PlainHttp { registry: String, reference: String },
    #[error("transfer of {what} from {registry} failed{}", gave_up(*attempts))]
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
    #[error("{what} from {registry} is larger than the {limit} bytes accepted{}",
        found.map(|n| format!(" (Content-Length {n})")).unwrap_or_default())]
    TooLarge {
        registry: String,
        what: String,
        limit: u64,
        /// The declared length, when the peer declared one.
        found: Option<u64>,
    },
    #[error("{registry} sent an unusable {what} for {reference}: {reason}")]
    BadPeerData {
        registry: String,
        reference: String,
        /// What it was: "bearer token", "WWW-Authenticate challenge", "token realm", …
        what: &'static str,
        /// Why it was refused (never the value of a token).
        reason: String,
    },
    #[error(
        "{registry} (HTTPS) names the plain-HTTP token server {realm} for {reference}; credentials are not sent there unless {registry} is given with --insecure-registry"
    )]
    InsecureRealm {
        registry: String,
        reference: String,
        realm: String,
    },
    #[error(
        "{reference}: schema 1 manifests are deprecated and not supported; re-push the image with a current client"
    )]
    SchemaOne { reference: String },
    #[error("{reference}: unsupported manifest media type \"{media_type}\"")]
    UnsupportedMediaType {
        reference: String,
        /// Escaped and cut short.
        media_type: String,
    },
    #[error("{reference}: the registry returned a manifest that is not valid JSON ({detail})")]
    InvalidManifest {
        reference: String,
        /// Where the JSON broke (line, column, kind), never the registry's text.
        detail: String,
    },
    #[error("HTTP {status} from {url} for {reference}{}", detail_suffix(detail))]
    Http {
        status: u16,
        /// Redacted: no credentials, no query string.
        url: String,
        reference: String,
        /// The registry's error message, escaped and cut short ("" when none).
        detail: String,
    },
    #[error("{registry} returned an error for {reference}: {detail}")]
    Registry {
        registry: String,
        reference: String,
        /// Escaped and cut short.
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

/// " (gave up after N attempts)", or nothing when there was one attempt (not retried).
fn gave_up(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (gave up after {attempts} attempts)")
    } else {
        String::new()
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// A boxed error source (already stripped of URLs).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A deadline or rate a peer did not keep (the source of a [`Error::Network`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Stalled(String);

/// How [`RegistryClient`] connects, and how long it waits.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `host[:port]` of registries served over plain HTTP; all others use HTTPS.
    pub insecure_registries: Vec<String>,
    /// PEM files with extra CA certificates, trusted in addition to the system roots.
    pub ca_files: Vec<PathBuf>,
    /// An auth file that must exist; `None` searches the default locations (see
    /// [`super::auth`]).
    pub authfile: Option<PathBuf>,
    /// How many times a failed request is retried (so `retries + 1` attempts). Only what can
    /// succeed later is retried: connection failures, timeouts, cut or slow bodies, 408,
    /// 429 and 5xx.
    pub retries: u32,
    /// The first backoff delay; it doubles per retry up to `backoff_max`, plus jitter.
    pub backoff_base: Duration,
    /// The largest backoff delay.
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// The longest one request may take to answer with its headers; also the longest a
    /// manifest, token or error body may take to arrive whole, and the longest a blob body
    /// may go without a byte.
    pub request_timeout: Duration,
    /// The slowest a blob body may arrive, in bytes per second, measured over each
    /// `request_timeout`: a peer that trickles is abandoned (and retried).
    pub min_rate: u64,
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
            request_timeout: Duration::from_secs(60),
            min_rate: 1024,
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
    http: reqwest::Client,
    insecure: Vec<String>,
    authfile: Option<AuthFile>,
    retries: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    request_timeout: Duration,
    min_rate: u64,
    /// What to send as `Authorization` per (credential key, API host, repository): tokens are
    /// scoped to a repository, and auth files may scope credentials to namespaces.
    authorizations: Mutex<HashMap<(String, String, String), Authorization>>,
}

/// What a request carries as `Authorization`.
#[derive(Clone)]
enum Authorization {
    Anonymous,
    /// `Basic …` or `Bearer …`, marked sensitive (never logged by the HTTP stack).
    Header(HeaderValue),
}

/// A request's target: what to show in errors and how to reach it.
struct Target {
    /// The registry as the reference names it (`docker.io`), for messages.
    registry: String,
    /// Where its API is (`registry-1.docker.io`).
    api_host: String,
    repository: String,
    /// `http` for insecure registries, else `https`.
    scheme: &'static str,
    reference: String,
    credential: Option<Credential>,
    auth_key: String,
    lookup: Lookup,
    /// Whether the requests push (the token's scope is then `pull,push`).
    push: bool,
    /// A repository a mount reads from: the token must also grant `pull` there.
    mount_from: Option<String>,
}

impl Target {
    fn auth_slot(&self) -> (String, String, String) {
        let mut repository = if self.push {
            format!("{}:push", self.repository)
        } else {
            self.repository.clone()
        };
        if let Some(from) = &self.mount_from {
            repository.push_str(&format!(":from:{from}"));
        }
        (self.auth_key.clone(), self.api_host.clone(), repository)
    }

    fn bad(&self, what: &'static str, reason: impl Into<String>) -> Failure {
        Failure::fatal(Error::BadPeerData {
            registry: self.registry.clone(),
            reference: self.reference.clone(),
            what,
            reason: reason.into(),
        })
    }

    fn network(&self, what: &str, source: BoxError) -> Failure {
        Failure {
            error: Error::Network {
                registry: self.registry.clone(),
                what: what.to_string(),
                attempts: 1,
                source,
            },
            transient: true,
        }
    }

    fn stalled(&self, what: &str, why: String) -> Failure {
        self.network(what, Box::new(Stalled(why)))
    }

    fn too_large(&self, what: &str, limit: u64, found: Option<u64>) -> Failure {
        Failure::fatal(Error::TooLarge {
            registry: self.registry.clone(),
            what: what.to_string(),
            limit,
            found,
        })
    }
}

/// One failed attempt: the error to report, and whether another attempt may help.
struct Failure {
    error: Error,
    transient: bool,
}

impl Failure {
    fn fatal(error: Error) -> Failure {
        Failure {
            error,
            transient: false,
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure::fatal(error)
    }
}

impl From<IoError> for Error {
    fn from(e: IoError) -> Error {
        Error::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl From<IoError> for Failure {
    fn from(e: IoError) -> Failure {
        Failure::fatal(e.into())
    }
}

/// The blob a download is for.
struct Blob<'a> {
    digest: &'a Digest,
    size: u64,
    /// `blob sha256:… of quay.io/a/b`, for messages.
    what: &'a str,
}

/// Reports the staged length as increments, so their sum never exceeds the blob's size.
struct Progress<'a> {
    sink: &'a (dyn Fn(u64) + Send + Sync),
    reported: u64,
}

impl Progress<'_> {
    fn to(&mut self, len: u64) {
        if len > self.reported {
            (self.sink)(len - self.reported);
            self.reported = len;
        }
    }
}

/// What follows one attempt of a download.
enum Step {
    /// Every byte is staged: verify.
    Complete,
    /// Try again (the backoff is done).
    Retry,
    /// Give up, keeping the partial for a later run to resume.
    Keep(Error),
    /// Give up and delete the partial: retrying cannot cure this.
    Discard(Error),
}

/// The basic-auth header for `c`. The value is base64, so it is always a valid header.
fn basic_header(c: &Credential) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// The `Bearer` header for a token a peer sent: visible ASCII only (RFC 6750's b64token is
/// narrower still), and not absurdly long. The token itself never appears in the reason.
fn bearer_header(token: &str) -> Result<HeaderValue, String> {
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "the token is {} bytes, more than the {MAX_TOKEN_LEN} accepted",
            token.len()
        ));
    }
    if let Some(i) = token.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(format!(
            "the token has a character that cannot be sent in a header (byte {i} is 0x{:02x})",
            token.as_bytes()[i]
        ));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the token cannot be sent in a header".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

/// Read `response`'s body, at most `limit` bytes: a `Content-Length` above it is refused
/// before reading, and so is a body that grows past it. Callers put a deadline around this.
async fn read_capped(
    mut response: reqwest::Response,
    limit: u64,
    target: &Target,
    what: &str,
) -> Result<bytes::Bytes, Failure> {
    if let Some(n) = response.content_length()
        && n > limit
    {
        return Err(target.too_large(what, limit, Some(n)));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport(e, target, what))?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(target.too_large(what, limit, None));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

impl RegistryClient {
    /// A client with `opts`. Reads the CA files and the auth file now, so a bad path or
    /// unparsable file fails here, naming the file.
    pub fn new(opts: ClientOptions) -> Result<Self, Error> {
        let mut certificates = Vec::new();
        for path in &opts.ca_files {
            let text = crate::input::read_regular(path, 16 << 20).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            let blocks = pem_certificates(&text);
            if blocks.is_empty() {
                return Err(Error::NoCertificate { path: path.clone() });
            }
            for block in blocks {
                let cert = reqwest::Certificate::from_pem(&block).map_err(|e| Error::Setup {
                    source: format!("invalid CA certificate in {}: {}", path.display(), e).into(),
                })?;
                certificates.push(cert);
            }
        }
        let authfile = auth::discover_default(opts.authfile.as_deref())?;
        let insecure = opts.insecure_registries.clone();
        let redirects = {
            let insecure = insecure.clone();
            reqwest::redirect::Policy::custom(move |attempt| {
                let from_https = attempt
                    .previous()
                    .last()
                    .is_some_and(|u| u.scheme() == "https");
                let to_host = attempt.url().host_str().unwrap_or("").to_string();
                let to_insecure = insecure
                    .iter()
                    .any(|h| h.split(':').next() == Some(to_host.as_str()) || *h == to_host);
                if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error(Stalled(format!("more than {MAX_REDIRECTS} redirects")))
                } else if !matches!(attempt.url().scheme(), "http" | "https") {
                    attempt.error(Stalled("a redirect to a URL that is not HTTP(S)".into()))
                } else if from_https && attempt.url().scheme() == "http" && !to_insecure {
                    attempt.error(Stalled("a redirect from HTTPS to plain HTTP".into()))
                } else {
                    // reqwest drops Authorization when the host, port or scheme changes.
                    attempt.follow()
                }
            })
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("pinbundle/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(opts.connect_timeout.min(opts.request_timeout))
            // A backstop only: this module's own deadlines (the same length) come first and
            // say which one passed.
            .read_timeout(opts.request_timeout.saturating_mul(2))
            .redirect(redirects)
            .tls_certs_merge(certificates)
            .build()
            .map_err(|e| Error::Setup {
                source: redact_text(&e.to_string()).into(),
            })?;
        let inner = Inner {
            http,
            insecure,
            authfile,
            retries: opts.retries,
            backoff_base: opts.backoff_base,
            backoff_max: opts.backoff_max,
            request_timeout: opts.request_timeout.max(Duration::from_millis(1)),
            min_rate: opts.min_rate,
            authorizations: Mutex::new(HashMap::new()),
        };
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
    /// [`Error::UnsupportedMediaType`], [`Error::TooLarge`], and the transport and auth
    /// errors.
    pub async fn get_manifest(&self, reference: &Reference) -> Result<RawManifest, Error> {
        let target = self.target(reference, reference.digest());
        let tag_or_digest = match reference.digest() {
            Some(d) => d.to_string(),
            None => reference
                .effective_tag()
                .unwrap_or(crate::reference::DEFAULT_TAG)
                .to_string(),
        };
        self.manifest(&target, &tag_or_digest, reference.digest())
            .await
    }

    /// GET a child manifest (an index or list entry) by `digest` in `reference`'s repository.
    pub async fn get_manifest_by_digest(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<RawManifest, Error> {
        let target = self.target(reference, Some(digest));
        self.manifest(&target, &digest.to_string(), Some(digest))
            .await
    }

    /// Stream blob `digest` (of `size` bytes) from `reference`'s repository into `dest`, a
    /// final path in a content-addressed cache.
    ///
    /// Bytes go to `<dest>.partial` (locked against concurrent fetchers), hashed while
    /// written; only when size and sha256 match is the file renamed to `dest`
    /// ([`crate::cache::Staged`]).
    /// Transient failures (5xx, 429, resets, timeouts, a body slower than the minimum rate)
    /// are retried with backoff, resuming with a `Range` request; a registry that ignores
    /// the range restarts from zero. A partial left by an earlier run is resumed; if the
    /// result does not verify, the blob is fetched once more from zero. On a failure that
    /// retrying cannot cure, the partial is deleted. If `dest` already exists (before or
    /// after waiting for the lock), only a verified rename can have put it there, so this
    /// returns at once without reading it. `progress(n)` receives byte increments; their
    /// sum never exceeds `size`.
    ///
    /// # Errors
    /// [`Error::DigestMismatch`], [`Error::SizeMismatch`], [`Error::Io`] naming the file,
    /// and the transport and auth errors.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        digest: &Digest,
        size: u64,
        dest: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), Error> {
        let target = self.target(reference, None);
        let what = format!("blob {digest} of {}", reference.name());
        let Some(staged) = Staged::open(dest, digest, size).await? else {
            return Ok(());
        };
        let blob = Blob {
            digest,
            size,
            what: &what,
        };
        let mut progress = Progress {
            sink: progress,
            reported: 0,
        };
        let verified = self.download(&target, &blob, staged, &mut progress).await?;
        verified.commit().await?;
        Ok(())
    }

    /// Fills `staged` until it holds the blob's bytes and they verify, attempt after attempt.
    async fn download(
        &self,
        target: &Target,
        blob: &Blob<'_>,
        mut staged: Staged,
        progress: &mut Progress<'_>,
    ) -> Result<Verified, Error> {
        let mut reused_partial = !staged.is_empty();
        progress.to(staged.len());
        let mut attempt = 0u32;
        loop {
            if staged.len() < blob.size {
                let result = self.blob_attempt(target, blob, &mut staged).await;
                progress.to(staged.len());
                let step = self
                    .after_attempt(result, staged.len(), &mut attempt, target, blob)
                    .await;
                match step {
                    Step::Complete => {}
                    Step::Retry => continue,
                    // Keep what arrived: a later run resumes it.
                    Step::Keep(error) => return Err(error),
                    // A hostile registry must not leave a partial behind per blob.
                    Step::Discard(error) => {
                        staged.discard().await;
                        return Err(error);
                    }
                }
            }
            match staged.verify(blob.digest) {
                Ok(verified) => return Ok(verified),
                Err(Mismatch {
                    staged: mut again, ..
                }) if reused_partial => {
                    // The earlier run's bytes were bad; fetch everything once more.
                    reused_partial = false;
                    again.restart().await?;
                    staged = *again;
                }
                Err(Mismatch { staged, found }) => {
                    staged.discard().await;
                    return Err(Error::DigestMismatch {
                        what: blob.what.to_string(),
                        expected: blob.digest.to_string(),
                        found: found.to_string(),
                    });
                }
            }
        }
    }

    /// What follows an attempt that left `len` bytes staged: go on to verify, retry after a
    /// backoff, or give up.
    async fn after_attempt(
        &self,
        result: Result<(), Failure>,
        len: u64,
        attempt: &mut u32,
        target: &Target,
        blob: &Blob<'_>,
    ) -> Step {
        let retry = *attempt < self.inner.retries;
        match result {
            Ok(()) if len == blob.size => return Step::Complete,
            // The stream ended early without an error: resume.
            Ok(()) if !retry => {
                return Step::Keep(Error::SizeMismatch {
                    what: blob.what.to_string(),
                    expected: blob.size,
                    found: len,
                });
            }
            Ok(()) => {}
            Err(Failure {
                error: Error::Io { path, source },
                ..
            }) => return Step::Keep(Error::Io { path, source }),
            // The bytes that did arrive are still good: a later run, reaching it, resumes.
            Err(Failure {
                error: error @ (Error::Unreachable { .. } | Error::PlainHttp { .. }),
                transient: false,
            }) => {
                return Step::Keep(finish_error(error, target, *attempt + 1));
            }
            Err(failure) if failure.transient && retry => {}
            Err(failure) if failure.transient => {
                return Step::Keep(finish_error(failure.error, target, *attempt + 1));
            }
            Err(failure) => {
                return Step::Discard(finish_error(failure.error, target, *attempt + 1));
            }
        }
        self.backoff(*attempt).await;
        *attempt += 1;
        Step::Retry
    }

    /// One GET of the blob from the staged length on, appending to `staged`.
    async fn blob_attempt(
        &self,
        target: &Target,
        blob: &Blob<'_>,
        staged: &mut Staged,
    ) -> Result<(), Failure> {
        let (size, what) = (blob.size, blob.what);
        let offset = staged.len();
        let url = format!(
            "{}://{}/v2/{}/blobs/{}",
            target.scheme, target.api_host, target.repository, blob.digest
        );
        let mut headers = HeaderMap::new();
        // An empty blob has no range to ask for.
        if size > 0 {
            let range = HeaderValue::from_str(&format!("bytes={offset}-"))
                .map_err(|_| target.bad("range", "cannot build a Range header"))?;
            headers.insert(header::RANGE, range);
        }
        let response = self.send(target, &url, headers, what).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.error_from(response, target, what).await);
        }
        let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT
            && content_range_start(response.headers()).is_none_or(|s| s == offset)
            && response.content_length().is_none_or(|l| l == size - offset);
        if !resumed {
            // 200 (the range was ignored) or a 206 for some other range: start over.
            staged.restart().await?;
        }
        if let Some(total) = response.content_length()
            && staged.len() + total != size
        {
            return Err(Failure::fatal(Error::SizeMismatch {
                what: what.to_string(),
                expected: size,
                found: staged.len() + total,
            }));
        }
        self.stream_body(response, target, blob, staged).await
    }

    /// Appends `response`'s body to `staged`, refusing bytes past the blob's size and a body
    /// slower than the minimum rate.
    async fn stream_body(
        &self,
        mut response: reqwest::Response,
        target: &Target,
        blob: &Blob<'_>,
        staged: &mut Staged,
    ) -> Result<(), Failure> {
        let (size, what) = (blob.size, blob.what);
        // Chunks arrive in a few KiB; every tokio::fs write is a trip to the blocking pool, so
        // write in MiB batches. The staged length counts only bytes on disk: a resume starts
        // there.
        let timeout = self.inner.request_timeout;
        let window_need = (self.inner.min_rate as f64 * timeout.as_secs_f64()) as u64;
        let mut window = (Instant::now(), 0u64);
        let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BATCH);
        let result = loop {
            let chunk = match tokio::time::timeout(timeout, response.chunk()).await {
                Err(_) => {
                    break Err(
                        target.stalled(what, format!("no data for {} s", timeout.as_secs_f64()))
                    );
                }
                Ok(Err(e)) => break Err(transport(e, target, what)),
                Ok(Ok(None)) => break Ok(()),
                Ok(Ok(Some(chunk))) => chunk,
            };
            let found = staged.len() + (buf.len() + chunk.len()) as u64;
            if found > size {
                break Err(Failure::fatal(Error::SizeMismatch {
                    what: what.to_string(),
                    expected: size,
                    found,
                }));
            }
            buf.extend_from_slice(&chunk);
            window.1 += chunk.len() as u64;
            if window.0.elapsed() >= timeout {
                if window.1 < window_need {
                    break Err(target.stalled(
                        what,
                        format!(
                            "{} bytes in {:.1} s, slower than the minimum {} bytes/s",
                            window.1,
                            window.0.elapsed().as_secs_f64(),
                            self.inner.min_rate
                        ),
                    ));
                }
                window = (Instant::now(), 0);
            }
            if buf.len() >= WRITE_BATCH {
                staged.append(&buf).await?;
                buf.clear();
            }
        };
        // Keep what arrived before an error too, so a retry resumes after it.
        staged.append(&buf).await?;
        result
    }

    async fn manifest(
        &self,
        target: &Target,
        tag_or_digest: &str,
        expected: Option<&Digest>,
    ) -> Result<RawManifest, Error> {
        let what = format!("manifest of {}", target.reference);
        let url = format!(
            "{}://{}/v2/{}/manifests/{tag_or_digest}",
            target.scheme, target.api_host, target.repository
        );
        let mut attempt = 0u32;
        let (bytes, header_digest) = loop {
            match self.manifest_attempt(target, &url, &what).await {
                Ok(ok) => break ok,
                Err(failure) if failure.transient && attempt < self.inner.retries => {
                    self.backoff(attempt).await;
                    attempt += 1;
                }
                Err(failure) => return Err(finish_error(failure.error, target, attempt + 1)),
            }
        };
        let digest = Digest::of(&bytes);
        if let Some(header_digest) = header_digest
            && header_digest.starts_with("sha256:")
            && header_digest != digest.to_string()
        {
            return Err(Error::DigestMismatch {
                what,
                expected: excerpt(&header_digest, 80),
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

    async fn manifest_attempt(
        &self,
        target: &Target,
        url: &str,
        what: &str,
    ) -> Result<(bytes::Bytes, Option<String>), Failure> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_str(&ACCEPT.join(", "))
                .map_err(|_| target.bad("accept", "cannot build an Accept header"))?,
        );
        let response = self.send(target, url, headers, what).await?;
        if !response.status().is_success() {
            return Err(self.error_from(response, target, what).await);
        }
        let header_digest = response
            .headers()
            .get("docker-content-digest")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let timeout = self.inner.request_timeout;
        let bytes =
            tokio::time::timeout(timeout, read_capped(response, MAX_MANIFEST, target, what))
                .await
                .map_err(|_| {
                    target.stalled(
                        what,
                        format!("the body did not arrive within {} s", timeout.as_secs_f64()),
                    )
                })??;
        Ok((bytes, header_digest))
    }

    /// Send a GET with the authorization known for `target`; on a 401, answer its challenge
    /// (fetch a token, or use basic auth) once and send again. The response headers must
    /// arrive within the request timeout; the body is the caller's.
    async fn send(
        &self,
        target: &Target,
        url: &str,
        headers: HeaderMap,
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        self.send_with(target, reqwest::Method::GET, url, headers, None, what)
            .await
    }

    /// [`Self::send`] with any method and a small body held in memory (sent again after a
    /// challenge).
    async fn send_with(
        &self,
        target: &Target,
        method: reqwest::Method,
        url: &str,
        headers: HeaderMap,
        body: Option<bytes::Bytes>,
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        let slot = target.auth_slot();
        let known = self
            .inner
            .authorizations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&slot)
            .cloned();
        let mut authorization = match known {
            Some(a) => a,
            // With credentials, ask `/v2/` for its challenge first (as docker and
            // containers/image do): some registries answer an anonymous request for a
            // private repository with 404, not 401.
            None if target.credential.is_some() => {
                let ping = format!("{}://{}/v2/", target.scheme, target.api_host);
                let response = self
                    .within_timeout(self.inner.http.get(&ping).send(), target, what)
                    .await?;
                let authorization = if response.status() == reqwest::StatusCode::UNAUTHORIZED {
                    let challenge = response.headers().get(header::WWW_AUTHENTICATE).cloned();
                    drop(response);
                    self.answer(target, challenge).await?
                } else {
                    Authorization::Anonymous
                };
                self.inner
                    .authorizations
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(slot.clone(), authorization.clone());
                authorization
            }
            None => Authorization::Anonymous,
        };
        let mut challenged = false;
        loop {
            let mut request = self
                .inner
                .http
                .request(method.clone(), url)
                .headers(headers.clone());
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            if let Authorization::Header(value) = &authorization {
                request = request.header(header::AUTHORIZATION, value.clone());
            }
            tracing::debug!(url, what, %method, "registry request");
            let response = self.within_timeout(request.send(), target, what).await?;
            tracing::debug!(
                url,
                status = response.status().as_u16(),
                "registry answered"
            );
            if response.status() != reqwest::StatusCode::UNAUTHORIZED || challenged {
                if response.status() == reqwest::StatusCode::UNAUTHORIZED {
                    return Err(Failure::fatal(unauthorized(target)));
                }
                return Ok(response);
            }
            challenged = true;
            let challenge = response.headers().get(header::WWW_AUTHENTICATE).cloned();
            drop(response);
            authorization = self.answer(target, challenge).await?;
            self.inner
                .authorizations
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(slot.clone(), authorization.clone());
        }
    }

    /// `future` (a request's send), bounded by the request timeout.
    async fn within_timeout(
        &self,
        future: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
        target: &Target,
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        let timeout = self.inner.request_timeout;
        match tokio::time::timeout(timeout, future).await {
            Err(_) => Err(target.stalled(
                what,
                format!("no response within {} s", timeout.as_secs_f64()),
            )),
            Ok(Err(e)) => {
                let failure = transport(e, target, what);
                // A TLS failure may be a plain-HTTP registry on the port: say so, with the flag.
                if target.scheme == "https"
                    && matches!(failure.error, Error::Unreachable { .. })
                    && self.answers_plain_http(target).await
                {
                    return Err(Failure::fatal(Error::PlainHttp {
                        registry: target.registry.clone(),
                        reference: target.reference.clone(),
                    }));
                }
                Err(failure)
            }
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Whether `target`'s API host answers a plain-HTTP request on its HTTPS port. Sends
    /// nothing but `GET /v2/` with a Host header (no credentials), and waits briefly.
    async fn answers_plain_http(&self, target: &Target) -> bool {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let Ok(url) = reqwest::Url::parse(&format!("https://{}/", target.api_host)) else {
            return false;
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let wait = self.inner.request_timeout.min(PROBE_TIMEOUT);
        let probe = async {
            let mut stream = tokio::net::TcpStream::connect(format!("{host}:{port}")).await?;
            let request = format!(
                "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                target.api_host
            );
            stream.write_all(request.as_bytes()).await?;
            let mut head = [0u8; 5];
            stream.read_exact(&mut head).await?;
            Ok::<_, std::io::Error>(&head == b"HTTP/")
        };
        matches!(tokio::time::timeout(wait, probe).await, Ok(Ok(true)))
    }

    /// The authorization that answers a 401's `WWW-Authenticate` challenge.
    async fn answer(
        &self,
        target: &Target,
        challenge: Option<HeaderValue>,
    ) -> Result<Authorization, Failure> {
        let Some(challenge) = challenge else {
            return Err(Failure::fatal(unauthorized(target)));
        };
        let text = challenge.to_str().map_err(|_| {
            target.bad("WWW-Authenticate challenge", "it is not visible ASCII text")
        })?;
        let mut bearer = None;
        let mut basic = false;
        for c in http_auth::ChallengeParser::new(text).flatten() {
            if c.scheme.eq_ignore_ascii_case("bearer") && bearer.is_none() {
                let param = |name: &str| {
                    c.params
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.to_unescaped())
                };
                if let Some(realm) = param("realm") {
                    bearer = Some((realm, param("service")));
                }
            } else if c.scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            }
        }
        match (bearer, &target.credential) {
            (Some((realm, service)), _) => self.token(target, &realm, service.as_deref()).await,
            (None, Some(credential)) if basic => {
                Ok(Authorization::Header(basic_header(credential)))
            }
            (None, _) if basic => Err(Failure::fatal(unauthorized(target))),
            (None, _) => Err(target.bad(
                "WWW-Authenticate challenge",
                format!(
                    "neither Bearer with a realm nor Basic: \"{}\"",
                    excerpt(text, SHOWN)
                ),
            )),
        }
    }

    /// Fetch a pull token for `target`'s repository from `realm`, sending the credential (if
    /// any) as basic auth.
    async fn token(
        &self,
        target: &Target,
        realm: &str,
        service: Option<&str>,
    ) -> Result<Authorization, Failure> {
        let what = "token response";
        let mut url = check_realm(realm, target)?;
        {
            let mut query = url.query_pairs_mut();
            let actions = if target.push { "pull,push" } else { "pull" };
            let scope = format!("repository:{}:{actions}", target.repository);
            query.append_pair("scope", &scope);
            if let Some(from) = &target.mount_from {
                query.append_pair("scope", &format!("repository:{from}:pull"));
            }
            if let Some(service) = service {
                query.append_pair("service", service);
            }
        }
        let mut request = self.inner.http.get(url);
        if let Some(credential) = &target.credential {
            request = request.header(header::AUTHORIZATION, basic_header(credential));
        }
        let response = self.within_timeout(request.send(), target, what).await?;
        let status = response.status();
        if !status.is_success() {
            if matches!(status.as_u16(), 401 | 403) {
                return Err(Failure::fatal(unauthorized(target)));
            }
            return Err(self.error_from(response, target, what).await);
        }
        let timeout = self.inner.request_timeout;
        let body = tokio::time::timeout(
            timeout,
            read_capped(response, MAX_TOKEN_RESPONSE, target, what),
        )
        .await
        .map_err(|_| {
            target.stalled(
                what,
                format!(
                    "the token did not arrive within {} s",
                    timeout.as_secs_f64()
                ),
            )
        })??;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        // serde's message would quote the body; say only where it broke.
        let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            target.bad(
                "token response",
                format!(
                    "not JSON with a \"token\" (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let token = parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token)
            .unwrap_or_default();
        let value = bearer_header(&token).map_err(|reason| target.bad("bearer token", reason))?;
        Ok(Authorization::Header(value))
    }

    /// The error for a response that is not a success: its status, and the registry's own
    /// message from a body of at most [`MAX_ERROR_BODY`] (a longer one is not read).
    async fn error_from(
        &self,
        response: reqwest::Response,
        target: &Target,
        what: &str,
    ) -> Failure {
        let status = response.status().as_u16();
        let url = redact_url(response.url().as_str());
        let body = if response
            .content_length()
            .is_some_and(|n| n > MAX_ERROR_BODY)
        {
            None
        } else {
            tokio::time::timeout(
                self.inner.request_timeout,
                read_capped(response, MAX_ERROR_BODY, target, what),
            )
            .await
            .ok()
            .and_then(Result::ok)
        };
        #[derive(serde::Deserialize)]
        struct Envelope {
            errors: Vec<Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            code: Option<String>,
            message: Option<String>,
        }
        let envelope = body
            .as_deref()
            .and_then(|b| serde_json::from_slice::<Envelope>(b).ok());
        let codes: Vec<String> = envelope
            .iter()
            .flat_map(|e| &e.errors)
            .filter_map(|e| e.code.as_deref())
            .map(str::to_ascii_uppercase)
            .collect();
        let detail = match &envelope {
            Some(e) => e
                .errors
                .iter()
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.code.as_deref().unwrap_or("?"),
                        e.message.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            None => body
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default(),
        };
        let detail = excerpt(&self.scrub(&redact_text(&detail), target), SHOWN);
        let has = |c: &str| codes.iter().any(|x| x == c);
        let error = |e| Failure::fatal(e);
        let (registry, reference) = (target.registry.clone(), target.reference.clone());
        match status {
            404 => error(Error::NotFound {
                registry,
                reference,
            }),
            401 => error(unauthorized(target)),
            403 => error(Error::Denied {
                registry,
                reference,
            }),
            _ if has("TOOMANYREQUESTS") => Failure {
                error: Error::Http {
                    status,
                    url,
                    reference,
                    detail,
                },
                transient: true,
            },
            _ if has("UNAUTHORIZED") => error(unauthorized(target)),
            _ if has("DENIED") => error(Error::Denied {
                registry,
                reference,
            }),
            _ if has("MANIFEST_UNKNOWN")
                || has("BLOB_UNKNOWN")
                || has("NAME_UNKNOWN")
                || has("NOT_FOUND") =>
            {
                error(Error::NotFound {
                    registry,
                    reference,
                })
            }
            _ => Failure {
                transient: matches!(status, 408 | 429) || status >= 500,
                error: Error::Http {
                    status,
                    url,
                    reference,
                    detail,
                },
            },
        }
    }

    /// `text` (a peer's message) without the secrets this client sent it: a registry that
    /// echoes them back must not put them in the output.
    fn scrub(&self, text: &str, target: &Target) -> String {
        let mut secrets: Vec<String> = Vec::new();
        if let Some(c) = &target.credential {
            secrets.push(c.password.clone());
            secrets.push(
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", c.username, c.password)),
            );
        }
        let known = self
            .inner
            .authorizations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&target.auth_slot())
            .cloned();
        if let Some(Authorization::Header(value)) = known
            && let Ok(value) = value.to_str()
            && let Some((_, token)) = value.split_once(' ')
        {
            secrets.push(token.to_string());
        }
        let mut out = text.to_string();
        for secret in secrets.iter().filter(|s| s.len() >= 4) {
            out = out.replace(secret.as_str(), "<redacted>");
        }
        out
    }

    fn target(&self, reference: &Reference, digest: Option<&Digest>) -> Target {
        let api_host = if reference.domain() == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            reference.domain()
        };
        let insecure = self
            .inner
            .insecure
            .iter()
            .any(|h| h == api_host || h == reference.domain());
        let shown = match (reference.tag(), digest) {
            (None, Some(digest)) => format!("{}@{digest}", reference.name()),
            _ => reference.to_string(),
        };
        let lookup = match &self.inner.authfile {
            Some(file) => file.lookup(reference.domain(), reference.path()),
            None => Lookup::Missing { file: None },
        };
        let (credential, auth_key) = match &lookup {
            Lookup::Found {
                key, credential, ..
            } => (Some(credential.clone()), key.clone()),
            _ => (None, String::new()),
        };
        Target {
            registry: reference.domain().to_string(),
            api_host: api_host.to_string(),
            repository: reference.path().to_string(),
            scheme: if insecure { "http" } else { "https" },
            reference: shown,
            credential,
            auth_key,
            lookup,
            push: false,
            mount_from: None,
        }
    }

    async fn backoff(&self, attempt: u32) {
        let base = self.inner.backoff_base.as_millis() as u64;
        let max = self.inner.backoff_max.as_millis() as u64;
        let delay = base.saturating_mul(1u64 << attempt.min(20)).min(max);
        // Full jitter over the upper half keeps retries of parallel downloads apart.
        let jittered = delay / 2 + rand::rng().random_range(0..=delay / 2);
        tracing::info!(
            attempt = attempt + 1,
            delay_ms = jittered,
            "registry request failed; retrying"
        );
        tokio::time::sleep(Duration::from_millis(jittered)).await;
    }
}

/// What a cross-repository mount did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mounted {
    /// The blob is now in the repository (201).
    Yes,
    /// The registry could not mount it and opened an upload session instead (202): its
    /// `Location`, for [`RegistryClient::upload_blob`].
    Session(String),
}

/// A blob body for [`RegistryClient::upload_blob`]: `len` bytes, each chunk from `rx`; an
/// `Err` aborts the request, so the registry never commits the blob.
pub struct UploadBody {
    rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
    remaining: u64,
}

impl UploadBody {
    pub fn new(
        rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
        len: u64,
    ) -> UploadBody {
        UploadBody { rx, remaining: len }
    }
}

impl hyper::body::Body for UploadBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>> {
        use std::task::Poll;
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) if self.remaining > 0 => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "blob stream ended early",
            )))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// Pushing: the calls `push` makes, each with the client's deadlines and retries, tokens
/// scoped `repository:NAME:pull,push`. `repository` is a name without tag or digest
/// (`mirror.example:5000/site/ns/app`).
impl RegistryClient {
    fn push_target(&self, repository: &Reference, what: String) -> Target {
        let mut target = self.target(repository, None);
        target.push = true;
        target.reference = what;
        target
    }

    fn api_url(target: &Target, rest: &str) -> String {
        format!(
            "{}://{}/v2/{}/{rest}",
            target.scheme, target.api_host, target.repository
        )
    }

    /// [`Self::send_with`], retried while the failure is transient.
    async fn send_retried(
        &self,
        target: &Target,
        method: reqwest::Method,
        url: &str,
        headers: HeaderMap,
        body: Option<bytes::Bytes>,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        let mut attempt = 0u32;
        loop {
            let result = self
                .send_with(
                    target,
                    method.clone(),
                    url,
                    headers.clone(),
                    body.clone(),
                    what,
                )
                .await;
            let failure = match result {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) => self.error_from(r, target, what).await,
                Err(f) => f,
            };
            if failure.transient && attempt < self.inner.retries {
                self.backoff(attempt).await;
                attempt += 1;
            } else {
                return Err(finish_error(failure.error, target, attempt + 1));
            }
        }
    }

    /// Whether blob `digest` is in `repository` (HEAD: 200 yes, 404 no).
    pub async fn blob_exists(
        &self,
        repository: &Reference,
        digest: &Digest,
    ) -> Result<bool, Error> {
        let target = self.push_target(repository, format!("{}@{digest}", repository.name()));
        let url = Self::api_url(&target, &format!("blobs/{digest}"));
        self.exists(&target, &url, HeaderMap::new()).await
    }

    /// Whether manifest `reference` (a tag or digest) is in `repository` and is `digest`.
    pub async fn manifest_exists(
        &self,
        repository: &Reference,
        reference: &str,
        digest: &Digest,
        media_type: &str,
    ) -> Result<bool, Error> {
        let target = self.push_target(repository, format!("{}:{reference}", repository.name()));
        let url = Self::api_url(&target, &format!("manifests/{reference}"));
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(media_type) {
            headers.insert(header::ACCEPT, v);
        }
        let what = format!("manifest {reference} of {}", repository.name());
        let response = self
            .send_retried_head(&target, &url, headers, &what)
            .await?;
        Ok(response.is_some_and(|h| {
            h.get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == digest.to_string())
        }))
    }

    async fn exists(&self, target: &Target, url: &str, headers: HeaderMap) -> Result<bool, Error> {
        let what = format!("{} (HEAD)", target.reference);
        Ok(self
            .send_retried_head(target, url, headers, &what)
            .await?
            .is_some())
    }

    /// HEAD `url`: the headers on 200, `None` on 404.
    async fn send_retried_head(
        &self,
        target: &Target,
        url: &str,
        headers: HeaderMap,
        what: &str,
    ) -> Result<Option<HeaderMap>, Error> {
        match self
            .send_retried(target, reqwest::Method::HEAD, url, headers, None, what)
            .await
        {
            Ok(r) => Ok(Some(r.headers().clone())),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Mount blob `digest` into `repository` from `from` (a repository path on the same
    /// registry, e.g. `site/ns/other`).
    pub async fn mount_blob(
        &self,
        repository: &Reference,
        digest: &Digest,
        from: &str,
    ) -> Result<Mounted, Error> {
        let mut target = self.push_target(repository, format!("{}@{digest}", repository.name()));
        target.mount_from = Some(from.to_string());
        let mut url =
            reqwest::Url::parse(&Self::api_url(&target, "blobs/uploads/")).map_err(|e| {
                Error::Setup {
                    source: e.to_string().into(),
                }
            })?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let what = format!("mount of {digest} into {}", repository.name());
        let response = self
            .send_retried(
                &target,
                reqwest::Method::POST,
                url.as_str(),
                HeaderMap::new(),
                Some(bytes::Bytes::new()),
                &what,
            )
            .await?;
        if response.status() == reqwest::StatusCode::CREATED {
            return Ok(Mounted::Yes);
        }
        Ok(Mounted::Session(self.location(&target, &response)?))
    }

    /// The upload URL a `POST …/blobs/uploads/` answered with, absolute.
    fn location(&self, target: &Target, response: &reqwest::Response) -> Result<String, Error> {
        let bad = |reason: &str| Error::BadPeerData {
            registry: target.registry.clone(),
            reference: target.reference.clone(),
            what: "upload Location",
            reason: reason.to_string(),
        };
        let value = response
            .headers()
            .get(header::LOCATION)
            .ok_or_else(|| bad("the answer has no Location header"))?
            .to_str()
            .map_err(|_| bad("it is not visible ASCII text"))?;
        let url = response
            .url()
            .join(value)
            .map_err(|_| bad("it is not a URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("it is not HTTP(S)"));
        }
        Ok(url.to_string())
    }

    /// Upload blob `digest` of `size` bytes into `repository`: `POST …/blobs/uploads/` (unless
    /// `session` is already open), then one `PUT ?digest=` of the whole body with its
    /// `Content-Length` (monolithic). `body()` makes the body afresh for each attempt; the
    /// registry checks the digest before it commits. The PUT's deadline is the request
    /// timeout plus the time the minimum rate allows for `size` bytes.
    pub async fn upload_blob(
        &self,
        repository: &Reference,
        digest: &Digest,
        size: u64,
        mut session: Option<String>,
        body: impl Fn() -> UploadBody,
    ) -> Result<(), Error> {
        let target = self.push_target(repository, format!("{}@{digest}", repository.name()));
        let what = format!("upload of {digest} into {}", repository.name());
        let mut attempt = 0u32;
        loop {
            let location = match session.take() {
                Some(l) => l,
                None => {
                    let url = Self::api_url(&target, "blobs/uploads/");
                    let response = self
                        .send_retried(
                            &target,
                            reqwest::Method::POST,
                            &url,
                            HeaderMap::new(),
                            Some(bytes::Bytes::new()),
                            &what,
                        )
                        .await?;
                    self.location(&target, &response)?
                }
            };
            let failure = match self
                .put_blob(&target, &location, digest, size, body(), &what)
                .await
            {
                Ok(()) => return Ok(()),
                Err(f) => f,
            };
            if failure.transient && attempt < self.inner.retries {
                self.backoff(attempt).await;
                attempt += 1;
            } else {
                return Err(finish_error(failure.error, &target, attempt + 1));
            }
        }
    }

    async fn put_blob(
        &self,
        target: &Target,
        location: &str,
        digest: &Digest,
        size: u64,
        body: UploadBody,
        what: &str,
    ) -> Result<(), Failure> {
        let mut url = reqwest::Url::parse(location)
            .map_err(|_| target.bad("upload Location", "not a URL"))?;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut request = self
            .inner
            .http
            .put(url.clone())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap(body));
        // Credentials go only to the registry itself, not to another host a Location names.
        let same_origin = url.host_str()
            == reqwest::Url::parse(&format!("{}://{}/", target.scheme, target.api_host))
                .ok()
                .as_ref()
                .and_then(|u| u.host_str())
            && url.port_or_known_default()
                == reqwest::Url::parse(&format!("{}://{}/", target.scheme, target.api_host))
                    .ok()
                    .and_then(|u| u.port_or_known_default());
        let known = self
            .inner
            .authorizations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&target.auth_slot())
            .cloned();
        if same_origin && let Some(Authorization::Header(value)) = known {
            request = request.header(header::AUTHORIZATION, value);
        }
        let rate = self.inner.min_rate.max(1);
        let deadline = self.inner.request_timeout + Duration::from_secs(size / rate);
        tracing::debug!(what, size, "registry PUT blob");
        let response = match tokio::time::timeout(deadline, request.send()).await {
            Err(_) => {
                return Err(target.stalled(
                    what,
                    format!(
                        "the upload did not finish within {} s",
                        deadline.as_secs_f64()
                    ),
                ));
            }
            Ok(Err(e)) => return Err(transport(e, target, what)),
            Ok(Ok(r)) => r,
        };
        if response.status() != reqwest::StatusCode::CREATED && !response.status().is_success() {
            return Err(self.error_from(response, target, what).await);
        }
        Ok(())
    }

    /// PUT manifest `bytes` (exactly these) with `media_type` as `repository:reference`
    /// (a tag or its digest). The registry's `Docker-Content-Digest`, when sent, must be
    /// `digest`.
    pub async fn put_manifest(
        &self,
        repository: &Reference,
        reference: &str,
        digest: &Digest,
        media_type: &str,
        bytes: bytes::Bytes,
    ) -> Result<(), Error> {
        let target = self.push_target(repository, format!("{}:{reference}", repository.name()));
        let url = Self::api_url(&target, &format!("manifests/{reference}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|_| Error::UnsupportedMediaType {
                reference: target.reference.clone(),
                media_type: excerpt(media_type, 80),
            })?,
        );
        let what = format!("manifest {reference} of {}", repository.name());
        let response = self
            .send_retried(
                &target,
                reqwest::Method::PUT,
                &url,
                headers,
                Some(bytes),
                &what,
            )
            .await?;
        if let Some(found) = response
            .headers()
            .get("docker-content-digest")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            && found != digest.to_string()
        {
            return Err(Error::DigestMismatch {
                what,
                expected: digest.to_string(),
                found: excerpt(&found, 80),
            });
        }
        Ok(())
    }
}

/// The token server a challenge names, if credentials may go there: HTTPS, or plain HTTP
/// only when the registry itself is plain HTTP (`--insecure-registry`).
fn check_realm(realm: &str, target: &Target) -> Result<reqwest::Url, Failure> {
    let url = reqwest::Url::parse(realm).map_err(|_| {
        target.bad(
            "token realm",
            format!("not a URL: \"{}\"", excerpt(realm, SHOWN)),
        )
    })?;
    match url.scheme() {
        "https" => {}
        "http" if target.scheme == "http" => {}
        "http" => {
            return Err(Failure::fatal(Error::InsecureRealm {
                registry: target.registry.clone(),
                reference: target.reference.clone(),
                realm: excerpt(&redact_url(realm), SHOWN),
            }));
        }
        other => {
            return Err(target.bad(
                "token realm",
                format!("scheme \"{}\" is not HTTP(S)", excerpt(other, 20)),
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(target.bad("token realm", "it carries credentials of its own"));
    }
    Ok(url)
}

fn unauthorized(target: &Target) -> Error {
    Error::Unauthorized {
        registry: target.registry.clone(),
        reference: target.reference.clone(),
        credentials: target.lookup.describe(),
    }
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
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
                detail: String::new(),
            },
        };
    }
    // A refused redirect is the peer's doing and will not change on a retry.
    if e.is_redirect() {
        return Failure::fatal(Error::Network {
            registry: target.registry.clone(),
            what: what.to_string(),
            attempts: 1,
            source: Box::new(e.without_url()),
        });
    }
    // A refused connection or a failed TLS handshake (a certificate not trusted, a peer that
    // does not speak TLS) will fail the same way a moment later: give up at once.
    let permanent = e.is_connect()
        && !e.is_timeout()
        && matches!(
            io_kind(&e),
            Some(std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::InvalidData)
        );
    let transient = !permanent
        && (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode());
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

/// The kind of the first I/O error under `e`: hyper keeps the socket's and the TLS
/// handshake's error as a source.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = err.source();
    }
    None
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
    // serde's message would quote the registry's text; say only where the JSON broke.
    let probe: Probe = serde_json::from_slice(body).map_err(|e| Error::InvalidManifest {
        reference: reference.to_string(),
        detail: format!("line {}, column {}", e.line(), e.column()),
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
        media_type: excerpt(media_type, SHOWN),
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

    fn target_for(insecure: bool) -> Target {
        Target {
            registry: "quay.io".into(),
            api_host: "quay.io".into(),
            repository: "org/app".into(),
            scheme: if insecure { "http" } else { "https" },
            reference: R.into(),
            credential: None,
            auth_key: String::new(),
            lookup: Lookup::Missing { file: None },
            push: false,
            mount_from: None,
        }
    }

    #[test]
    fn http_realms_only_for_insecure_registries() {
        let secure = target_for(false);
        assert!(check_realm("https://auth.example/token", &secure).is_ok());
        let err = check_realm("http://auth.example/token?x=secret", &secure)
            .err()
            .unwrap()
            .error;
        assert!(matches!(err, Error::InsecureRealm { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(
            shown.contains("--insecure-registry") && !shown.contains("secret"),
            "{shown}"
        );
        assert!(check_realm("http://auth.example/token", &target_for(true)).is_ok());
        for bad in [
            "file:///etc/passwd",
            "not a url\x1b[2J",
            "https://u:p@auth.example/",
        ] {
            let err = check_realm(bad, &secure).err().unwrap().error.to_string();
            assert!(!err.contains('\x1b'), "{err}");
        }
    }

    #[test]
    fn tokens_are_checked_before_they_become_headers() {
        assert!(bearer_header("eyJhbGciOi.J9-_~+/=").is_ok());
        for (token, why) in [
            ("a\nb", "0x0a"),
            ("a\x7fb", "0x7f"),
            ("a\rb", "0x0d"),
            ("a b", "0x20"),
            ("a\u{e9}b", "0xc3"),
            ("", "empty"),
        ] {
            let err = bearer_header(token).unwrap_err();
            assert!(err.contains(why), "{token:?}: {err}");
        }
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(bearer_header(&long).unwrap_err().contains("more than"));
        // The header is marked sensitive, so the HTTP stack never logs it.
        assert!(bearer_header("abc").unwrap().is_sensitive());
    }

    #[test]
    fn content_range_start_is_parsed() {
        let mut h = HeaderMap::new();
        assert_eq!(content_range_start(&h), None);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_static("bytes 100-199/200"),
        );
        assert_eq!(content_range_start(&h), Some(100));
    }

    #[test]
    fn client_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<RegistryClient>();
    }
}
