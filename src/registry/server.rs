//! A read-only OCI distribution API over open [`BundleSet`]s, for `pinbundle load` (one
//! bundle, a loopback port, a per-run credential) and `pinbundle serve` ([`crate::serve`]:
//! several bundles under site-mirror names, its own listener with TLS, htpasswd auth and an
//! access log, built with [`BundleServer::serving`] and [`BundleServer::with_authorizer`]).
//!
//! `load` does not unpack the bundle: it serves the bundle's raw manifest bytes and streams its
//! blobs (decompressing and checking frames as they go) to `skopeo copy docker://…`, which is
//! containers-storage's canonical writer and keeps every digest exact (see the field notes on
//! `oci:` layouts and Docker v2s2 manifests).
//!
//! This module owns routing and response bodies ([`BundleServer::handle`]), which do not depend
//! on the listener, and a plain-HTTP loopback listener on a thread of its own
//! ([`serve_in_thread`]). It does not run `skopeo` (that is `load::storage`) and logs nothing.
//!
//! # What is served
//!
//! With [`BundleServer::new`] (`load`), every image of `pinbundle.json` is served under the
//! repository [`served_name`]`(image.name)`,
//! its full normalised name (`quay.io/org/app`, `docker.io/library/busybox`), so `load` copies
//! from `docker://127.0.0.1:PORT/quay.io/org/app@sha256:…`. Under that repository:
//! - `manifests/<digest>`: the image's top-level manifest or index and its carried platform
//!   manifests, byte for byte, with `Content-Type` = the media type recorded in the bundle.
//!   Other instances of an index (platforms not carried) get `404 MANIFEST_UNKNOWN`.
//! - `manifests/<tag>`: the tag as recorded in `pinbundle.json` (the first image wins when two
//!   entries of one repository claim the same tag).
//! - `blobs/<digest>`: every blob the image lists (manifests, configs, layers), with `Range`
//!   support. A blob of image A is not served under image B's repository unless B lists it too:
//!   containers/image asks for blobs under the repository it copies from, and scoping keeps the
//!   server from answering for content an image does not reference.
//! - `tags/list`: the recorded tags; and `/v2/_catalog`, the repositories; both sorted, with
//!   distribution's `n`/`last` pagination and a `Link` header to the next page.
//!   (`_catalog` only from [`BundleServer::serving`]: `load` answers it 404.)
//!
//! A delta bundle lists blobs it does not carry (bundle-format.md, section 8.2): those are
//! served from the base bundles given with [`BundleServer::with_bases`], when one carries them,
//! and are `404 BLOB_UNKNOWN` otherwise (skopeo then must find the layer in the store).
//!
//! Everything else is `404`; every method but `GET` and `HEAD` is `405`.
//!
//! # Access
//!
//! Any local process (a host-network pod too) can reach a loopback port. `load` therefore
//! starts its server [`BundleServer::with_credential`]: a random per-run user and password
//! that every request must carry as HTTP basic auth (`401` with a `Basic` challenge
//! otherwise); skopeo gets them in a private auth file, never on a command line.
//!
//! # Integrity while streaming
//!
//! Blob bodies are produced on a blocking thread from [`BundleSet::open_blob`], which checks every
//! frame (XXH3, zstd checksum, size). A full-blob `GET` is also hashed as it goes and its last
//! chunk is held back until the sha256 matches. When a frame or the digest fails, the body ends
//! with an error: hyper then drops the connection short of `Content-Length`, so the client sees
//! a broken transfer, never silently corrupt bytes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::Digest as _;
use tokio::sync::{mpsc, watch};

use crate::bundle::chain::ChainHasher;
use crate::bundle::format::ImageEntry;
use crate::bundle::frames::{self, FrameCache, FrameCacheStats};
use crate::bundle::{BlobLoc, BundleSet};
use crate::reference::Digest;

/// The API version header every response carries.
pub const API_VERSION_HEADER: &str = "Docker-Distribution-API-Version";
/// `Docker-Content-Digest`.
pub const CONTENT_DIGEST_HEADER: &str = "Docker-Content-Digest";
/// Bytes per body chunk sent from the reading thread.
const CHUNK: usize = 256 << 10;
/// Chunks queued between the reading thread and the connection: slices of cached frames, so
/// they cost no memory of their own; a frame of Raw blocks gives chunks of at most 128 KiB.
const CHUNKS_IN_FLIGHT: usize = 8;
/// The longest wait for a request's headers.
/// The frame budget of `load`'s server: skopeo reads each blob once, so caching buys nothing
/// beyond the frames its parallel layer downloads are reading (4 × 16 MiB).
const LOAD_FRAME_BUDGET: u64 = 64 << 20;

/// The default frame budget of `serve`: 16 full frames; clients of the same images share them.
pub const SERVE_FRAME_BUDGET: u64 = 256 << 20;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A repository name longer than this cannot be parsed by containers/image.
const MAX_NAME_LEN: usize = 255;

/// Errors starting the server. Requests never fail the server: they get error responses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the registry server's runtime")]
    Runtime(#[source] io::Error),
}

/// The error a response body ends with when the bundle's bytes fail a check mid-stream.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The repository under which an image named `name` (normalised, `quay.io/org/app`) is served.
///
/// The name is kept as is when it is a valid distribution repository path, so the served
/// reference reads like the original. A registry port is not (`host:5000` has a `:`), so it
/// becomes `host__5000`: `__` is a path separator the grammar allows and DNS names cannot
/// contain, so no other host maps to the same string. Names that still do not fit (uppercase
/// hosts, IPv6 literals, too long with the `127.0.0.1:PORT/` prefix) are served as
/// `pinbundle/<first 32 hex of sha256(name)>`.
pub fn served_name(name: &str) -> String {
    let mapped = match name.split_once('/') {
        Some((domain, rest)) => format!("{}/{rest}", domain.replacen(':', "__", 1)),
        None => name.to_string(),
    };
    // "127.0.0.1:65535/" is 16 bytes.
    if mapped.len() + 16 <= MAX_NAME_LEN && mapped.split('/').all(valid_component) {
        mapped
    } else {
        format!("pinbundle/{}", &Digest::of(name.as_bytes()).hex()[..32])
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |ch: u8| ch.is_ascii_lowercase() || ch.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|ch| ch == b'-')) {
            return false;
        }
    }
    true
}

/// What one repository serves.
#[derive(Debug, Default)]
struct Repository {
    /// tag → top-level digest.
    tags: HashMap<String, Digest>,
    /// Manifests and indexes (top-level and carried platform manifests) → media type.
    manifests: HashMap<Digest, String>,
    /// Every blob an image of this repository lists (manifests included).
    blobs: HashSet<Digest>,
    /// (subject digest, descriptor) of every manifest here with a `subject` (the referrers
    /// API); filled by [`BundleServer::serving`] only.
    referrers: Vec<(Digest, serde_json::Value)>,
    /// Blob body bytes handed to connections for this repository: how far a client that
    /// copies one image at a time has got with it.
    served: AtomicU64,
}

/// Request counters, for tests and diagnostics.
#[derive(Debug, Default)]
struct Counters {
    version_checks: AtomicU64,
    manifests: AtomicU64,
    blobs: AtomicU64,
    range_requests: AtomicU64,
    tag_lists: AtomicU64,
    not_found: AtomicU64,
    method_not_allowed: AtomicU64,
    range_not_satisfiable: AtomicU64,
    aborted: AtomicU64,
    blob_bytes: AtomicU64,
    blob_bytes_hashed: AtomicU64,
}

/// A copy of the request counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `GET /v2/`.
    pub version_checks: u64,
    /// Manifest requests answered with 200 (GET or HEAD).
    pub manifests: u64,
    /// Blob requests answered with 200 or 206 (GET or HEAD).
    pub blobs: u64,
    /// Blob requests answered with 206.
    pub range_requests: u64,
    /// `tags/list` requests answered.
    pub tag_lists: u64,
    /// 404 answers.
    pub not_found: u64,
    /// 405 answers.
    pub method_not_allowed: u64,
    /// 416 answers.
    pub range_not_satisfiable: u64,
    /// Responses whose body was ended with an error (a damaged frame or digest, or a failed
    /// read), plus manifests that could not be read (500).
    pub aborted: u64,
    /// Blob body bytes handed to connections.
    pub blob_bytes: u64,
    /// Blob bytes hashed to prove what is sent: each frame once per decode against the chain
    /// of its verified blob, or a whole blob a server was not given verified.
    pub blob_bytes_hashed: u64,
}

/// A cached frame as a [`Bytes`] owner: chunks sliced from it keep it alive, and with it its
/// place in the frame budget, until the connection has written them.
struct FrameBytes(Arc<frames::Frame>);

impl AsRef<[u8]> for FrameBytes {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

/// The routing and responses of the read-only registry, independent of any listener.
#[derive(Debug)]
pub struct BundleServer {
    bundle: Arc<BundleSet>,
    /// Bundles that may carry the blobs a delta `bundle` omits; searched after `bundle`.
    bases: Vec<Arc<BundleSet>>,
    repositories: HashMap<String, Repository>,
    counters: Counters,
    /// When set, who may read.
    authorization: Option<Arc<dyn Authorize>>,
    /// Whether `/v2/_catalog` lists the repositories (`serve`; `load`'s server answers 404).
    catalog: bool,
    /// The decompressed frames blob bodies are cut from, shared by every transfer.
    frames: FrameCache,
}

/// Decides whether a request's `Authorization` header lets it read.
pub trait Authorize: Send + Sync + std::fmt::Debug {
    /// Whether the header (absent: `None`) is accepted.
    fn check(&self, authorization: Option<&HeaderValue>) -> bool;
    /// Whether [`Authorize::check`] may take long (a password hash to verify): the server then
    /// runs it on a blocking thread, so that a flood of wrong passwords cannot stall the
    /// connections of everyone else.
    fn is_slow(&self, _authorization: Option<&HeaderValue>) -> bool {
        false
    }
    /// The `WWW-Authenticate` value of a 401 to a request for `host` (its `Host` header).
    fn challenge(&self, host: Option<&str>) -> HeaderValue;
    /// Whether [`TOKEN_PATH`] issues tokens ([`Authorize::issue`]).
    fn issues_tokens(&self) -> bool {
        false
    }
    /// A token for the credentials of a request to [`TOKEN_PATH`], or `None` (401). May be
    /// slow: it runs on a blocking thread.
    fn issue(&self, _authorization: Option<&HeaderValue>) -> Option<Issued> {
        None
    }
}

/// Where an [`Authorize`] that issues tokens issues them.
pub const TOKEN_PATH: &str = "/token";

/// A bearer token and how long it is good for, in seconds.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_in: u64,
}

/// Accepts one `Authorization` value, known by its SHA-256. Compares digests of the header,
/// so neither the length nor a common prefix of a guess shows in the time taken.
#[derive(Debug)]
struct ExactHeader([u8; 32]);

impl Authorize for ExactHeader {
    fn check(&self, given: Option<&HeaderValue>) -> bool {
        let Some(given) = given else {
            return false;
        };
        let given: [u8; 32] = sha2::Sha256::digest(given.as_bytes()).into();
        constant_time_eq(&given, &self.0)
    }

    fn challenge(&self, _host: Option<&str>) -> HeaderValue {
        HeaderValue::from_static("Basic realm=\"pinbundle load\"")
    }
}

/// Whether `a == b`, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A user and password for HTTP basic auth, random per run ([`Credential::random`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    /// Never the password: a debug print must not leak it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// A fresh user name and a 256-bit password from the OS-seeded generator.
    pub fn random() -> Credential {
        use rand::Rng as _;
        let mut rng = rand::rng();
        Credential {
            username: format!("pinbundle-{}", hex::encode(rng.random::<[u8; 4]>())),
            password: hex::encode(rng.random::<[u8; 32]>()),
        }
    }

    /// `base64(user:password)`, as in an `Authorization: Basic` header and an auth file.
    pub fn basic(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password))
    }
}

/// A response body: empty, a complete buffer, or a stream from a reading thread.
#[derive(Debug)]
pub struct ResponseBody {
    inner: BodyInner,
}

#[derive(Debug)]
enum BodyInner {
    Full(Option<Bytes>),
    Stream {
        rx: mpsc::Receiver<Result<Bytes, io::Error>>,
        remaining: u64,
    },
}

impl ResponseBody {
    fn empty() -> ResponseBody {
        ResponseBody {
            inner: BodyInner::Full(None),
        }
    }

    fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody {
            inner: BodyInner::Full(Some(bytes.into())),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.inner {
            BodyInner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyInner::Stream { rx, remaining } => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    *remaining = remaining.saturating_sub(chunk.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(chunk))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) if *remaining > 0 => Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob stream ended early",
                )
                .into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyInner::Full(bytes) => bytes.is_none(),
            BodyInner::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            BodyInner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            BodyInner::Stream { remaining, .. } => SizeHint::with_exact(*remaining),
        }
    }
}

/// The parsed `Range` header of a blob request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeRequest {
    /// No usable range: send everything.
    Whole,
    /// Bytes `start..=end` (already clamped to the blob).
    Part { start: u64, end: u64 },
    /// Cannot be satisfied: 416.
    Unsatisfiable,
}

/// Parses `bytes=N-`, `bytes=N-M` and `bytes=-S` against a blob of `size` bytes. Multiple
/// ranges and malformed headers are ignored (the whole blob is sent), as RFC 9110 allows.
fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), num(first), num(last)) {
        // bytes=-S: the last S bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 || size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    start: size.saturating_sub(suffix),
                    end: size - 1,
                }
            }
        }
        (false, Some(start), None) if last.trim().is_empty() => {
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    start,
                    end: size - 1,
                }
            }
        }
        (false, Some(start), Some(end)) if start <= end => {
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Part {
                    start,
                    end: end.min(size - 1),
                }
            }
        }
        _ => RangeRequest::Whole,
    }
}

/// A parsed request path.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Base,
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    TagList { name: &'a str },
    Referrers { name: &'a str, digest: &'a str },
    Catalog,
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    let Some(rest) = path.strip_prefix("/v2") else {
        return Route::Unknown;
    };
    if rest.is_empty() || rest == "/" {
        return Route::Base;
    }
    if rest == "/_catalog" {
        return Route::Catalog;
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Route::Unknown;
    };
    // <name>/manifests/<reference>, <name>/blobs/<digest>, <name>/tags/list; the name may
    // contain slashes, the last two segments never do.
    let Some((head, last)) = rest.rsplit_once('/') else {
        return Route::Unknown;
    };
    let Some((name, kind)) = head.rsplit_once('/') else {
        return Route::Unknown;
    };
    if name.is_empty() || last.is_empty() {
        return Route::Unknown;
    }
    match (kind, last) {
        ("manifests", reference) => Route::Manifest { name, reference },
        ("blobs", digest) => Route::Blob { name, digest },
        ("tags", "list") => Route::TagList { name },
        ("referrers", digest) => Route::Referrers { name, digest },
        _ => Route::Unknown,
    }
}

fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    detail: &str,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "errors": [{"code": code, "message": message, "detail": detail}]
    });
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(ResponseBody::full(bytes.clone()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    resp
}

/// The `n` and `last` parameters of a list request (distribution's pagination): at most `n`
/// entries after `last`, in order; and whether more follow. `None` when `n` is not a
/// non-negative integer (distribution answers `PAGINATION_NUMBER_INVALID`).
fn paginate<'a>(
    sorted: impl Iterator<Item = &'a str>,
    query: Option<&str>,
) -> Option<(Vec<&'a str>, bool)> {
    let (n, last) = page_params(query)?;
    let mut after = sorted.filter(|s| last.as_deref().is_none_or(|l| *s > l));
    let page: Vec<&str> = after.by_ref().take(n.unwrap_or(usize::MAX)).collect();
    let more = n.is_some() && after.next().is_some();
    Some((page, more))
}

type PageParams = (Option<usize>, Option<String>);

fn page_params(query: Option<&str>) -> Option<PageParams> {
    let mut n = None;
    let mut last = None;
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("n", v)) => n = Some(v.parse::<usize>().ok()?),
            Some(("last", v)) => last = Some(percent_decode(v)),
            _ => {}
        }
    }
    Some((n, last))
}

fn pagination_invalid(query: Option<&str>) -> Response<ResponseBody> {
    error_response(
        StatusCode::BAD_REQUEST,
        "PAGINATION_NUMBER_INVALID",
        "invalid number of results requested",
        query.unwrap_or_default(),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON list response; with a `Link` header to the next page when `next` is set.
fn json_page(
    body: serde_json::Value,
    next: Option<&str>,
    last: Option<&str>,
    query: Option<&str>,
) -> Response<ResponseBody> {
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let len = bytes.len();
    let mut resp = Response::new(ResponseBody::full(bytes));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let (Some(next), Some(last)) = (next, last) {
        let n = page_params(query).and_then(|p| p.0).unwrap_or_default();
        let link = format!("<{next}?n={n}&last={}>; rel=\"next\"", percent_encode(last));
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.insert(header::LINK, v);
        }
    }
    resp
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn header_value(s: &str) -> HeaderValue {
    // Digests and recorded media types are ASCII; anything else is dropped rather than
    // failing the response.
    HeaderValue::from_str(s)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl BundleServer {
    /// The default listening address: an ephemeral port on loopback.
    pub const LOOPBACK_EPHEMERAL: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

    /// Builds the repository table from the bundle's `pinbundle.json` (each image under
    /// [`served_name`], as `load` copies it).
    pub fn new(bundle: Arc<BundleSet>) -> BundleServer {
        let mut server = BundleServer {
            bundle,
            bases: Vec::new(),
            repositories: HashMap::new(),
            counters: Counters::default(),
            authorization: None,
            catalog: false,
            frames: FrameCache::new(LOAD_FRAME_BUDGET),
        };
        let bundle = Arc::clone(&server.bundle);
        server.add_images(&bundle, &|image| served_name(&image.name));
        server
    }

    /// Serves the images of every bundle of `bundles` (which must not be empty), each under
    /// the repository `name` gives it; a blob is looked for in each bundle in turn, so a
    /// delta's omitted blobs come from the others. Two images of one repository and tag: the
    /// first wins. Returns `None` when `bundles` is empty.
    pub fn serving(
        bundles: Vec<Arc<BundleSet>>,
        name: &dyn Fn(&ImageEntry) -> String,
    ) -> Option<BundleServer> {
        let mut it = bundles.into_iter();
        let bundle = it.next()?;
        let mut server = BundleServer {
            bundle,
            bases: it.collect(),
            repositories: HashMap::new(),
            counters: Counters::default(),
            authorization: None,
            catalog: false,
            frames: FrameCache::new(SERVE_FRAME_BUDGET),
        };
        let all: Vec<Arc<BundleSet>> = std::iter::once(&server.bundle)
            .chain(&server.bases)
            .cloned()
            .collect();
        for b in &all {
            server.add_images(b, name);
        }
        server.index_referrers();
        server.catalog = true;
        Some(server)
    }

    fn add_images(&mut self, bundle: &BundleSet, name: &dyn Fn(&ImageEntry) -> String) {
        let manifest = bundle.manifest();
        let media: HashMap<&Digest, &str> = manifest
            .blobs
            .iter()
            .map(|b| (&b.digest, b.media_type.as_str()))
            .collect();
        for image in &manifest.images {
            let repo = self.repositories.entry(name(image)).or_default();
            if let Some(tag) = &image.tag {
                repo.tags
                    .entry(tag.clone())
                    .or_insert_with(|| image.digest.clone());
            }
            let top_type = media
                .get(&image.digest)
                .copied()
                .unwrap_or(image.media_type.as_str());
            repo.manifests
                .insert(image.digest.clone(), top_type.to_string());
            for p in &image.platforms {
                let t = media
                    .get(&p.digest)
                    .copied()
                    .unwrap_or(p.media_type.as_str());
                repo.manifests.insert(p.digest.clone(), t.to_string());
            }
            repo.blobs.extend(image.blobs.iter().cloned());
            repo.blobs.insert(image.digest.clone());
        }
    }

    /// Reads every manifest served (each checked against its digest, held to the format's
    /// manifest limit) for its `subject`, for the referrers API. A manifest that cannot be read
    /// is left out here; requests for it get the error.
    fn index_referrers(&mut self) {
        let mut found: Vec<(String, Digest, serde_json::Value)> = Vec::new();
        for (name, repo) in &self.repositories {
            for (digest, media_type) in &repo.manifests {
                let Some((bundle, member)) = self.find_blob(digest) else {
                    continue;
                };
                let Ok(bytes) = bundle.read_blob(&member) else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                    continue;
                };
                let Some(subject) = v["subject"]["digest"]
                    .as_str()
                    .and_then(|d| d.parse::<Digest>().ok())
                else {
                    continue;
                };
                let artifact_type = v["artifactType"]
                    .as_str()
                    .or_else(|| v["config"]["mediaType"].as_str());
                let mut d = serde_json::json!({
                    "mediaType": media_type,
                    "digest": digest.to_string(),
                    "size": bytes.len(),
                });
                if let Some(t) = artifact_type {
                    d["artifactType"] = serde_json::Value::from(t);
                }
                if v["annotations"].is_object() {
                    d["annotations"] = v["annotations"].clone();
                }
                found.push((name.clone(), subject, d));
            }
        }
        for (name, subject, d) in found {
            if let Some(repo) = self.repositories.get_mut(&name) {
                repo.referrers.push((subject, d));
            }
        }
        for repo in self.repositories.values_mut() {
            repo.referrers
                .sort_by(|a, b| a.1["digest"].as_str().cmp(&b.1["digest"].as_str()));
        }
    }

    fn referrers(&self, name: &str, digest: &str, query: Option<&str>) -> Response<ResponseBody> {
        let Some(repo) = self.repositories.get(name) else {
            return self.name_unknown(name);
        };
        let Ok(subject) = digest.parse::<Digest>() else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "invalid digest",
                digest,
            );
        };
        let filter = query
            .unwrap_or_default()
            .split('&')
            .find_map(|p| p.strip_prefix("artifactType=").map(percent_decode));
        let manifests: Vec<&serde_json::Value> = repo
            .referrers
            .iter()
            .filter(|(s, _)| *s == subject)
            .map(|(_, d)| d)
            .filter(|d| {
                filter
                    .as_deref()
                    .is_none_or(|f| d["artifactType"].as_str() == Some(f))
            })
            .collect();
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let len = bytes.len();
        let mut resp = Response::new(ResponseBody::full(bytes));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if filter.is_some() {
            h.insert(
                "OCI-Filters-Applied",
                HeaderValue::from_static("artifactType"),
            );
        }
        resp
    }

    /// The repositories served, sorted.
    pub fn repositories(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.repositories.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Answers only requests `authorizer` accepts (401 with its challenge otherwise).
    /// Bounds the bytes of decompressed frames held at once (see [`FrameCache`]).
    pub fn with_frame_budget(mut self, bytes: u64) -> BundleServer {
        self.frames = FrameCache::new(bytes);
        self
    }

    /// What the frame cache did so far.
    pub fn frame_stats(&self) -> FrameCacheStats {
        self.frames.stats()
    }

    pub fn with_authorizer(mut self, authorizer: Arc<dyn Authorize>) -> BundleServer {
        self.authorization = Some(authorizer);
        self
    }

    /// Answers only requests that carry `credential` as HTTP basic auth.
    pub fn with_credential(self, credential: &Credential) -> BundleServer {
        let expected = format!("Basic {}", credential.basic());
        self.with_authorizer(Arc::new(ExactHeader(
            sha2::Sha256::digest(expected.as_bytes()).into(),
        )))
    }

    /// Whether `req` may be answered: `None` when it may, else the challenge of the 401.
    async fn authorized<B>(&self, req: &Request<B>) -> Option<HeaderValue> {
        let auth = self.authorization.as_ref()?;
        let given = req.headers().get(header::AUTHORIZATION);
        let ok = if auth.is_slow(given) {
            let (auth, given) = (Arc::clone(auth), given.cloned());
            tokio::task::spawn_blocking(move || auth.check(given.as_ref()))
                .await
                .unwrap_or(false)
        } else {
            auth.check(given)
        };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        (!ok).then(|| auth.challenge(host))
    }

    /// `GET /token`: a bearer token for valid basic credentials, as distribution's token
    /// servers answer it; 401 otherwise.
    async fn token<B>(
        &self,
        auth: &Arc<dyn Authorize>,
        req: &Request<B>,
    ) -> Response<ResponseBody> {
        if req.method() != Method::GET {
            // containerd tries the OAuth2 POST first and falls back to GET on 405.
            return self.method_not_allowed(
                req.method(),
                "tokens are issued to GET with basic credentials",
                "GET",
            );
        }
        let (auth, given) = (
            Arc::clone(auth),
            req.headers().get(header::AUTHORIZATION).cloned(),
        );
        let issued = tokio::task::spawn_blocking(move || auth.issue(given.as_ref()))
            .await
            .ok()
            .flatten();
        let Some(issued) = issued else {
            let mut resp = error_response(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "a token needs the credentials of a user",
                "",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pinbundle\""),
            );
            return resp;
        };
        let body = serde_json::json!({
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
        });
        let mut resp = json_page(body, None, None, None);
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    /// Also serves, from `bases`, the blobs `bundle` lists but does not carry (a delta's).
    pub fn with_bases(mut self, bases: Vec<Arc<BundleSet>>) -> BundleServer {
        self.bases = bases;
        self
    }

    /// The bundle that carries blob `digest` (the served bundle first, then the bases), and
    /// its member.
    fn find_blob(&self, digest: &Digest) -> Option<(Arc<BundleSet>, BlobLoc)> {
        std::iter::once(&self.bundle)
            .chain(&self.bases)
            .find_map(|b| b.blob(digest).map(|m| (Arc::clone(b), m.clone())))
    }

    /// The bundle being served.
    pub fn bundle(&self) -> &Arc<BundleSet> {
        &self.bundle
    }

    /// The repository `image` is served under (see [`served_name`]).
    pub fn repository_of(image: &ImageEntry) -> String {
        served_name(&image.name)
    }

    /// Blob body bytes served so far under `repository` (see [`BundleServer::repository_of`]);
    /// 0 for a repository it does not serve.
    pub fn served_bytes(&self, repository: &str) -> u64 {
        self.repositories
            .get(repository)
            .map_or(0, |r| r.served.load(Ordering::Relaxed))
    }

    /// A snapshot of the request counters.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            version_checks: get(&c.version_checks),
            manifests: get(&c.manifests),
            blobs: get(&c.blobs),
            range_requests: get(&c.range_requests),
            tag_lists: get(&c.tag_lists),
            not_found: get(&c.not_found),
            method_not_allowed: get(&c.method_not_allowed),
            range_not_satisfiable: get(&c.range_not_satisfiable),
            aborted: get(&c.aborted),
            blob_bytes: get(&c.blob_bytes),
            blob_bytes_hashed: get(&c.blob_bytes_hashed),
        }
    }

    /// Answers one request. Never fails: problems become distribution-style error responses,
    /// and a blob whose bytes fail a check mid-stream ends its body with an error.
    pub async fn handle<B>(self: &Arc<Self>, req: Request<B>) -> Response<ResponseBody> {
        let mut resp = self.respond(&req).await;
        resp.headers_mut()
            .insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
        if req.method() == Method::HEAD {
            // Keep the headers (Content-Length included), drop the body.
            *resp.body_mut() = ResponseBody::empty();
        }
        resp
    }

    async fn respond<B>(self: &Arc<Self>, req: &Request<B>) -> Response<ResponseBody> {
        if req.uri().path() == TOKEN_PATH
            && let Some(auth) = self.authorization.as_ref().filter(|a| a.issues_tokens())
        {
            return self.token(auth, req).await;
        }
        if let Some(challenge) = self.authorized(req).await {
            let mut resp = error_response(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required",
                "",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
            return resp;
        }
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                return self.method_not_allowed(
                    req.method(),
                    "this registry is read-only",
                    "GET, HEAD",
                );
            }
        };
        match route(req.uri().path()) {
            Route::Base => {
                bump(&self.counters.version_checks);
                let mut resp = Response::new(ResponseBody::full(&b"{}"[..]));
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(2));
                resp
            }
            Route::Manifest { name, reference } => self.manifest(name, reference).await,
            Route::Blob { name, digest } => {
                let range = req
                    .headers()
                    .get(header::RANGE)
                    .and_then(|v| v.to_str().ok());
                self.blob(name, digest, range, head)
            }
            Route::TagList { name } => self.tag_list(name, req.uri().query()),
            Route::Catalog if self.catalog => self.catalog(req.uri().query()),
            Route::Referrers { name, digest } => self.referrers(name, digest, req.uri().query()),
            Route::Catalog | Route::Unknown => {
                bump(&self.counters.not_found);
                error_response(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    "no such endpoint",
                    req.uri().path(),
                )
            }
        }
    }

    /// 405, with the methods `allow`ed.
    fn method_not_allowed(
        &self,
        method: &Method,
        message: &str,
        allow: &'static str,
    ) -> Response<ResponseBody> {
        bump(&self.counters.method_not_allowed);
        let mut resp = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            message,
            method.as_str(),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        resp
    }

    fn name_unknown(&self, name: &str) -> Response<ResponseBody> {
        bump(&self.counters.not_found);
        error_response(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry",
            name,
        )
    }

    async fn manifest(self: &Arc<Self>, name: &str, reference: &str) -> Response<ResponseBody> {
        let Some(repo) = self.repositories.get(name) else {
            return self.name_unknown(name);
        };
        let digest = if reference.contains(':') {
            reference.parse::<Digest>().ok()
        } else {
            repo.tags.get(reference).cloned()
        };
        let found = digest.and_then(|d| {
            let media_type = repo.manifests.get(&d)?.clone();
            let (bundle, member) = self.find_blob(&d)?;
            Some((d, media_type, bundle, member))
        });
        let Some((digest, media_type, bundle, member)) = found else {
            bump(&self.counters.not_found);
            return error_response(
                StatusCode::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                "manifest unknown",
                &format!("{name}:{reference}"),
            );
        };
        let read = tokio::task::spawn_blocking(move || bundle.read_blob(&member)).await;
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            // read_blob holds manifests to the format's limit.
            Ok(Err(e @ crate::bundle::Error::TooLarge { .. })) => {
                bump(&self.counters.aborted);
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "manifest too large",
                    &e.to_string(),
                );
            }
            Ok(Err(e)) => {
                bump(&self.counters.aborted);
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "the bundle's copy of this manifest is damaged",
                    &e.to_string(),
                );
            }
            Err(_) => {
                bump(&self.counters.aborted);
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "reading the manifest failed",
                    &digest.to_string(),
                );
            }
        };
        bump(&self.counters.manifests);
        let len = bytes.len();
        let mut resp = Response::new(ResponseBody::full(bytes));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, header_value(&media_type));
        h.insert(CONTENT_DIGEST_HEADER, header_value(&digest.to_string()));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
        resp
    }

    fn tag_list(&self, name: &str, query: Option<&str>) -> Response<ResponseBody> {
        let Some(repo) = self.repositories.get(name) else {
            return self.name_unknown(name);
        };
        bump(&self.counters.tag_lists);
        let tags: BTreeSet<&str> = repo.tags.keys().map(String::as_str).collect();
        let Some((page, more)) = paginate(tags.into_iter(), query) else {
            return pagination_invalid(query);
        };
        let next = more.then(|| format!("/v2/{name}/tags/list"));
        json_page(
            serde_json::json!({"name": name, "tags": page}),
            next.as_deref(),
            page.last().copied(),
            query,
        )
    }

    fn catalog(&self, query: Option<&str>) -> Response<ResponseBody> {
        bump(&self.counters.tag_lists);
        let Some((page, more)) = paginate(self.repositories().into_iter(), query) else {
            return pagination_invalid(query);
        };
        let next = more.then_some("/v2/_catalog");
        json_page(
            serde_json::json!({"repositories": page}),
            next,
            page.last().copied(),
            query,
        )
    }

    fn blob(
        self: &Arc<Self>,
        name: &str,
        digest: &str,
        range: Option<&str>,
        head: bool,
    ) -> Response<ResponseBody> {
        let Some(repo) = self.repositories.get(name) else {
            return self.name_unknown(name);
        };
        let found = digest
            .parse::<Digest>()
            .ok()
            .filter(|d| repo.blobs.contains(d))
            .and_then(|d| self.find_blob(&d).map(|(b, m)| (d, b, m)));
        let Some((digest, source, member)) = found else {
            bump(&self.counters.not_found);
            return error_response(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "blob unknown to registry",
                digest,
            );
        };
        let size = member.size;
        let (status, start, len) = match range.map_or(RangeRequest::Whole, |r| parse_range(r, size))
        {
            RangeRequest::Whole => (StatusCode::OK, 0, size),
            RangeRequest::Part { start, end } => {
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            RangeRequest::Unsatisfiable => {
                bump(&self.counters.range_not_satisfiable);
                let mut resp = error_response(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "RANGE_INVALID",
                    "requested range not satisfiable",
                    range.unwrap_or_default(),
                );
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes */{size}")),
                );
                return resp;
            }
        };
        bump(&self.counters.blobs);
        if status == StatusCode::PARTIAL_CONTENT {
            bump(&self.counters.range_requests);
        }
        let body = if head || len == 0 {
            ResponseBody::empty()
        } else {
            self.stream_blob(name, source, member, digest.clone(), start, len)
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(CONTENT_DIGEST_HEADER, header_value(&digest.to_string()));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
        if status == StatusCode::PARTIAL_CONTENT {
            h.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{}/{size}", start + len - 1)),
            );
        }
        resp
    }

    /// Streams `len` bytes of `source`'s `member` from `start`, produced on a blocking thread.
    fn stream_blob(
        self: &Arc<Self>,
        name: &str,
        source: Arc<BundleSet>,
        member: BlobLoc,
        digest: Digest,
        start: u64,
        len: u64,
    ) -> ResponseBody {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let server = Arc::clone(self);
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            let whole = start == 0 && len == member.size;
            let send = |chunk| server.send(&tx, &name, chunk);
            let result = server.produce(&source, &member, &digest, start, len, whole, &send);
            if let Err(e) = result {
                // The receiver may be gone (client hung up): nothing more to do then.
                bump(&server.counters.aborted);
                let _ = tx.blocking_send(Err(e));
            }
        });
        ResponseBody {
            inner: BodyInner::Stream { rx, remaining: len },
        }
    }

    /// Sends `len` bytes of `member` from `start`, in chunks cut from the shared frame cache
    /// (no copy). Each frame is proved against what verifying the blob proved ([`Chain`])
    /// before any of it is sent. A blob not verified yet is hashed whole as it goes, its last
    /// chunk sent only once the digest matched (so a client never receives a complete but
    /// wrong body), and then counts as verified.
    ///
    /// [`Chain`]: crate::bundle::chain::Chain
    #[expect(clippy::too_many_arguments, reason = "one private call site")]
    fn produce(
        &self,
        bundle: &BundleSet,
        member: &BlobLoc,
        digest: &Digest,
        start: u64,
        len: u64,
        whole: bool,
        send: &dyn Fn(Bytes) -> io::Result<()>,
    ) -> Result<(), io::Error> {
        let end = start + len;
        let chain = bundle.chain(digest);
        let mut hasher = (whole && chain.is_none()).then(ChainHasher::default);
        let mut pending: Option<Bytes> = None;
        let mut sent = 0u64;
        // `at`: the blob offset of the current frame's first content byte; `n`: the position
        // of the part's first frame in the blob's chain.
        let mut at = 0u64;
        let mut n = 0usize;
        'parts: for p in 0..member.parts.len() {
            let (b, m) = bundle.part(member, p);
            let part_end = at + m.size;
            if part_end <= start {
                at = part_end;
                n += m.frames;
                continue;
            }
            for (k, f) in b.index().frames_of(m).iter().enumerate() {
                if at >= end.min(part_end) {
                    break;
                }
                // The content in this frame: after the tar header in the first, before the
                // padding (and the next member) in the last.
                let lead = if k == 0 { m.data_offset } else { 0 };
                let here = f.size.saturating_sub(lead).min(part_end - at);
                if here > 0 && at + here > start {
                    // A frame proved by SHA-256 needs no XXH3 (a weaker check of the same bytes).
                    let frame = self
                        .frames
                        .get(b, m.frame + k, chain.is_none())
                        .map_err(io::Error::other)?;
                    let content = lead as usize..(lead + here) as usize;
                    if let Some(chain) = &chain {
                        let proved = frame.proved(|fr| {
                            self.counters
                                .blob_bytes_hashed
                                .fetch_add(here, Ordering::Relaxed);
                            chain.proves_pieces(n + k, |add| {
                                fr.pieces(content.start, content.end, add)
                            })
                        });
                        if !proved {
                            return Err(io::Error::other(crate::bundle::Error::FrameChanged {
                                path: b.path().to_path_buf(),
                                member: m.path.clone(),
                                frame: m.frame + k,
                            }));
                        }
                    }
                    if let Some(h) = hasher.as_mut() {
                        h.start_frame(n + k);
                        frame.pieces(content.start, content.end, |p| h.update(p));
                        h.end_frame();
                    }
                    let from = content.start + start.saturating_sub(at) as usize;
                    let to = content.start + (end.min(at + here) - at) as usize;
                    // Where those bytes lie in the frame's buffer: one range, or one per Raw
                    // block (sent as they are in the file, not copied out of it).
                    let mut ranges = Vec::new();
                    frame.ranges(from, to, |r| ranges.push(r));
                    let frame = Bytes::from_owner(FrameBytes(frame));
                    for r in ranges {
                        let mut c = r.start;
                        while c < r.end {
                            let len = (r.end - c).min(CHUNK);
                            let chunk = frame.slice(c..c + len);
                            if hasher.is_none() {
                                send(chunk)?;
                            } else if let Some(prev) = pending.replace(chunk) {
                                send(prev)?;
                            }
                            sent += len as u64;
                            c += len;
                        }
                    }
                    // The chunk held back must not hold this frame while the next one waits
                    // for room in the budget: transfers waiting so would wait for each other.
                    if let Some(p) = pending.take() {
                        pending = Some(Bytes::copy_from_slice(&p));
                    }
                }
                at += here;
                if at >= end {
                    break 'parts;
                }
            }
            n += m.frames;
            if at < part_end {
                break;
            }
        }
        if sent < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: blob {} ends early",
                    bundle.path().display(),
                    member.digest
                ),
            ));
        }
        if let Some(h) = hasher {
            self.counters
                .blob_bytes_hashed
                .fetch_add(h.hashed(), Ordering::Relaxed);
            match h.finish(bundle.frames_of(member), digest) {
                Ok(chain) => bundle.keep_chain(digest, chain),
                Err(found) => {
                    return Err(io::Error::other(crate::bundle::Error::DigestMismatch {
                        path: bundle.path().to_path_buf(),
                        member: member.digest.layout_path(),
                        expected: digest.clone(),
                        found,
                    }));
                }
            }
        }
        if let Some(last) = pending {
            send(last)?;
        }
        Ok(())
    }

    fn send(
        &self,
        tx: &mpsc::Sender<Result<Bytes, io::Error>>,
        repository: &str,
        chunk: Bytes,
    ) -> io::Result<()> {
        let n = chunk.len() as u64;
        tx.blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))?;
        self.counters.blob_bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(r) = self.repositories.get(repository) {
            r.served.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Serves HTTP/1.1 on one accepted connection until it closes.
    pub async fn serve_connection<IO>(self: Arc<Self>, io: IO) -> Result<(), hyper::Error>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| {
            let server = Arc::clone(&self);
            async move { Ok::<_, Infallible>(server.handle(req).await) }
        });
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(io), service)
            .await
    }
}

/// A server accepting connections on a thread of its own; stops when dropped.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    server: Arc<BundleServer>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// The address the server listens on (the actual port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The routing half (for its [`BundleServer::stats`]).
    pub fn server(&self) -> &Arc<BundleServer> {
        &self.server
    }
}

impl Drop for RunningServer {
    /// Stops accepting, closes open connections and joins the server's thread.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    server: Arc<BundleServer>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                // Accept errors (e.g. EMFILE) are transient: keep serving the others.
                if let Ok((stream, _peer)) = accepted {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(Arc::clone(&server).serve_connection(stream));
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    connections.shutdown().await;
}

/// Serves `server` on `addr` (use [`BundleServer::LOOPBACK_EPHEMERAL`] for `load`) from a
/// thread of its own with its own runtime, so synchronous callers (`load` runs `skopeo` as
/// child processes) need none. Plain HTTP: bind it to loopback only. Dropping the result
/// stops and joins the thread.
pub fn serve_in_thread(
    server: BundleServer,
    addr: SocketAddr,
) -> Result<RunningServer, ServerError> {
    let bind_err = |source| ServerError::Bind { addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    let local = std_listener.local_addr().map_err(bind_err)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(16)
        .build()
        .map_err(ServerError::Runtime)?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?
    };
    let server = Arc::new(server);
    let (stop, stop_rx) = watch::channel(false);
    let thread_server = Arc::clone(&server);
    let thread = std::thread::Builder::new()
        .name("pinbundle-registry".into())
        .spawn(move || {
            runtime.block_on(accept_loop(listener, thread_server, stop_rx));
            // Blocking readers notice their closed channels and return; don't wait long.
            runtime.shutdown_timeout(Duration::from_secs(5));
        })
        .map_err(ServerError::Runtime)?;
    Ok(RunningServer {
        addr: local,
        server,
        stop,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/v2/"), Route::Base);
        assert_eq!(route("/v2"), Route::Base);
        assert_eq!(
            route("/v2/quay.io/org/app/manifests/sha256:ab"),
            Route::Manifest {
                name: "quay.io/org/app",
                reference: "sha256:ab"
            }
        );
        assert_eq!(
            route("/v2/a/blobs/sha256:ab"),
            Route::Blob {
                name: "a",
                digest: "sha256:ab"
            }
        );
        assert_eq!(route("/v2/a/b/tags/list"), Route::TagList { name: "a/b" });
        assert_eq!(route("/v2/a/blobs/uploads/"), Route::Unknown);
        assert_eq!(route("/v2/_catalog"), Route::Catalog);
        assert_eq!(
            route("/v2/a/b/referrers/sha256:ab"),
            Route::Referrers {
                name: "a/b",
                digest: "sha256:ab"
            }
        );
        assert_eq!(route("/v2/manifests/x"), Route::Unknown);
        assert_eq!(route("/v3/a/manifests/x"), Route::Unknown);
        assert_eq!(route("/v2x/a/manifests/x"), Route::Unknown);
    }

    #[test]
    fn pages() {
        let all = ["a", "b", "c"];
        assert_eq!(
            paginate(all.into_iter(), None),
            Some((vec!["a", "b", "c"], false))
        );
        assert_eq!(
            paginate(all.into_iter(), Some("n=2")),
            Some((vec!["a", "b"], true))
        );
        assert_eq!(
            paginate(all.into_iter(), Some("n=2&last=b")),
            Some((vec!["c"], false))
        );
        assert_eq!(
            paginate(all.into_iter(), Some("last=a%2Fz")),
            Some((vec!["b", "c"], false))
        );
        assert_eq!(paginate(all.into_iter(), Some("n=-1")), None);
        assert_eq!(
            paginate(all.into_iter(), Some("n=99999999999999999999999")),
            None
        );
        assert_eq!(percent_decode("a%2fb%zz%"), "a/b%zz%");
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-", 10), Part { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=3-", 10), Part { start: 3, end: 9 });
        assert_eq!(parse_range("bytes=3-5", 10), Part { start: 3, end: 5 });
        assert_eq!(parse_range("bytes=3-50", 10), Part { start: 3, end: 9 });
        assert_eq!(parse_range("bytes=-4", 10), Part { start: 6, end: 9 });
        assert_eq!(parse_range("bytes=-40", 10), Part { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-3", 10), Whole);
        assert_eq!(parse_range("bytes=0-1,4-5", 10), Whole);
        assert_eq!(parse_range("items=0-1", 10), Whole);
        assert_eq!(parse_range("bytes=x-", 10), Whole);
    }

    #[test]
    fn served_names() {
        assert_eq!(served_name("quay.io/org/app"), "quay.io/org/app");
        assert_eq!(
            served_name("docker.io/library/busybox"),
            "docker.io/library/busybox"
        );
        assert_eq!(served_name("127.0.0.1:5000/t/one"), "127.0.0.1__5000/t/one");
        assert_eq!(served_name("localhost:5000/t"), "localhost__5000/t");
        let odd = served_name("Registry.Example.com/a");
        assert!(
            odd.starts_with("pinbundle/") && odd.len() == 10 + 32,
            "{odd}"
        );
        let long = format!("quay.io/{}", "a".repeat(240));
        assert!(served_name(&long).starts_with("pinbundle/"));
        assert!(valid_component("a__b") && valid_component("a--b") && !valid_component("a___b"));
    }
}
