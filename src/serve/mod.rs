//! `pinbundle serve`: a read-only site registry straight from bundles.
//!
//! Every bundle is opened and verified (its signature first, when keys are trusted) before
//! the port is bound; each image is served under the site-mirror name of [`crate::mirror`]
//! (`quay.io/ns/repo` at `[PREFIX/]ns/repo`), so what `pinbundle manifests --mirror` writes
//! for the nodes points at exactly what is served. Routing and bodies are
//! [`crate::registry::server::BundleServer`]'s (every blob byte checked frame by frame while
//! streaming); this module adds what a long-running, shared server needs:
//! - [`tls`]: HTTPS from PEM files; [`certs`]: `serve cert-gen`.
//! - [`htpasswd`]: HTTP basic auth against bcrypt entries.
//! - [`token`]: bearer tokens issued to those users (the registry token flow).
//! - the listener: at most `max_connections` connections at once (the next waits in the
//!   kernel's backlog), a header read timeout, a write that makes no progress for
//!   `stall_timeout` ends its connection, one access-log line per request, and on
//!   SIGTERM/SIGINT a graceful stop (no new connections, in-flight responses get `grace`).

pub mod certs;
pub mod htpasswd;
pub mod tls;
pub mod token;

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::bundle::{BundleSet, SetOptions};
use crate::error::Refused;
use crate::mirror::{Mirror, mappings};
use crate::reference::Reference;
use crate::registry::server::{BodyError, BundleServer, ResponseBody};
use crate::verify::VerifyOptions;

/// The longest wait for a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the server's runtime")]
    Runtime(#[source] io::Error),
    #[error("nothing to serve: no bundle given")]
    NoBundles,
}

/// What `serve` serves and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Each entry one bundle: its file, its volumes, or a directory holding them.
    pub bundles: Vec<PathBuf>,
    /// The repository path every image is served under (may be empty).
    pub prefix: String,
    pub verify: VerifyOptions,
    pub listen: SocketAddr,
    pub max_connections: usize,
    /// A write that makes no progress for this long ends its connection.
    pub stall_timeout: Duration,
    /// How long in-flight responses may take once asked to stop.
    pub grace: Duration,
}

/// The bundles, opened and verified, and the repository each image is served under.
#[derive(Debug)]
pub struct Opened {
    pub bundles: Vec<Arc<BundleSet>>,
    /// source repository (`quay.io/ns/repo`) → served repository (`PREFIX/ns/repo`).
    pub names: HashMap<String, String>,
    pub images: usize,
}

/// Opens and verifies every bundle; refuses ([`Refused`]) a damaged or untrusted one and two
/// source repositories that would share a served repository.
pub fn open(
    opts: &ServeOptions,
    reporter: &dyn crate::progress::Reporter,
) -> anyhow::Result<Opened> {
    use anyhow::Context as _;
    if opts.bundles.is_empty() {
        return Err(Error::NoBundles.into());
    }
    let mut bundles = Vec::new();
    for path in &opts.bundles {
        let set = BundleSet::open(
            std::slice::from_ref(path),
            SetOptions {
                allow_partial: false,
                find_siblings: true,
            },
        )
        .with_context(|| format!("opening {}", path.display()))?;
        reporter.message(&format!("verifying {}", set.path().display()));
        let report = crate::verify::verify_open(&set, &opts.verify, reporter)
            .with_context(|| format!("verifying {}", path.display()))?;
        if let Some(p) = report.problems.first() {
            return Err(Refused(format!(
                "{}: refused: {}{}",
                set.path().display(),
                p.error,
                match report.problems.len() {
                    1 => String::new(),
                    n => format!(" (and {} more)", n - 1),
                }
            ))
            .into());
        }
        bundles.push(Arc::new(set));
    }
    let mirror: Mirror = if opts.prefix.is_empty() {
        "localhost".parse()
    } else {
        format!("localhost/{}", opts.prefix.trim_matches('/')).parse()
    }
    .map_err(|_| {
        Refused(format!(
            "--prefix {:?} is not a repository path",
            opts.prefix
        ))
    })?;
    let mut images: Vec<(Reference, bool)> = Vec::new();
    let mut count = 0;
    for b in &bundles {
        for i in &b.manifest().images {
            count += 1;
            if let Ok(r) = i.name.parse::<Reference>() {
                images.push((r, i.tag.is_some()));
            }
        }
    }
    let maps = mappings(&mirror, &images).map_err(|e| Refused(e.to_string()))?;
    let names = maps
        .into_iter()
        .map(|m| {
            let served = m.mirror.strip_prefix("localhost/").unwrap_or(&m.mirror);
            (m.source, served.to_string())
        })
        .collect();
    Ok(Opened {
        bundles,
        names,
        images: count,
    })
}

impl Opened {
    /// The routing half, each image under its served name.
    pub fn server(&self) -> Option<BundleServer> {
        let names = &self.names;
        BundleServer::serving(self.bundles.clone(), &|image| {
            let source = image
                .name
                .parse::<Reference>()
                .map(|r| r.name())
                .unwrap_or_else(|_| image.name.clone());
            names.get(&source).cloned().unwrap_or(source)
        })
    }
}

/// What the server did, for its last line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub requests: u64,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Responses with status 400 and up, or whose body ended with an error.
    pub errors: u64,
    pub connections: u64,
    /// What the shared frame cache did.
    pub frames: crate::bundle::frames::FrameCacheStats,
}

/// One line per request: `ADDR METHOD PATH STATUS BYTES MS`, and the totals.
pub struct AccessLog {
    out: Option<Mutex<Box<dyn Write + Send>>>,
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    connections: AtomicU64,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Writes lines to `out` (`None`: counts only).
    pub fn new(out: Option<Box<dyn Write + Send>>) -> AccessLog {
        AccessLog {
            out: out.map(Mutex::new),
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }

    fn record(&self, line: &LogStart, status: u16, bytes: u64, failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if status >= 400 || failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(out) = &self.out
            && let Ok(mut w) = out.lock()
        {
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let _ = writeln!(
                w,
                "{now} {} {} {} {status} {bytes} {}ms{}",
                line.peer,
                line.method,
                crate::text::excerpt(&line.path, 300),
                line.start.elapsed().as_millis(),
                if failed { " aborted" } else { "" }
            );
            let _ = w.flush();
        }
    }

    pub fn summary(&self) -> Summary {
        Summary {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            frames: Default::default(),
        }
    }
}

#[derive(Debug)]
struct LogStart {
    peer: SocketAddr,
    method: String,
    path: String,
    start: Instant,
}

/// A response body that counts what it sends and logs the request when it is done (or
/// dropped: a client that hung up).
struct LoggedBody {
    inner: ResponseBody,
    status: u16,
    bytes: u64,
    failed: bool,
    start: Option<LogStart>,
    log: Arc<AccessLog>,
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                self.bytes += n;
            }
            Poll::Ready(Some(Err(_))) => self.failed = true,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(start) = self.start.take() {
            let incomplete =
                !self.inner.is_end_stream() && self.inner.size_hint().exact() != Some(0);
            self.log
                .record(&start, self.status, self.bytes, self.failed || incomplete);
        }
    }
}

/// Ends a connection whose writes make no progress for a while (a client that stopped
/// reading), so it cannot hold its slot forever.
struct StallGuard<IO> {
    io: IO,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for StallGuard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> StallGuard<IO> {
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StallGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.timer = None;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => self.stalled(cx).map(|r| r.map(|_| ())),
            ready => {
                self.timer = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    // Vectored writes pass through: without them hyper copies every body byte into one
    // buffer before writing it (measured: a tenth of serve's CPU at 16 clients).
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.timer = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A bound listener, ready to serve.
pub struct Bound {
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    server: Arc<BundleServer>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    log: Arc<AccessLog>,
    opts: ServeOptions,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Binds `opts.listen` for `server`.
pub fn bind(
    server: BundleServer,
    opts: &ServeOptions,
    tls: Option<tokio_rustls::TlsAcceptor>,
    log: AccessLog,
) -> Result<Bound, Error> {
    let addr = opts.listen;
    let bind_err = |source| Error::Bind { addr, source };
    // A blob transfer holds a blocking thread while its client reads, so there must be one
    // for every connection (HTTP/1.1: one request at a time each) and some for password and
    // token checks: with fewer, clients that stop reading would hold every thread and every
    // other transfer would wait behind them (until --stall-timeout ends theirs).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(opts.max_connections.max(1) + 16)
        .thread_name("pinbundle-serve")
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    let local = std_listener.local_addr().map_err(bind_err)?;
    let listener = {
        let _guard = runtime.enter();
        tokio::net::TcpListener::from_std(std_listener).map_err(bind_err)?
    };
    Ok(Bound {
        runtime,
        listener,
        addr: local,
        server: Arc::new(server),
        tls,
        log: Arc::new(log),
        opts: opts.clone(),
    })
}

impl Bound {
    /// The address bound (the actual port for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Serves until SIGTERM or SIGINT, then stops accepting and gives in-flight responses
    /// up to the grace period.
    pub fn run_until_signal(self) -> Result<Summary, Error> {
        let Bound {
            runtime,
            listener,
            server,
            tls,
            log,
            opts,
            ..
        } = self;
        let summary = runtime.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).map_err(Error::Runtime)?;
            let mut int = signal(SignalKind::interrupt()).map_err(Error::Runtime)?;
            let stop = async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            };
            let frames = Arc::clone(&server);
            accept_loop(listener, server, tls, Arc::clone(&log), &opts, stop).await;
            Ok::<_, Error>(Summary {
                frames: frames.frame_stats(),
                ..log.summary()
            })
        })?;
        runtime.shutdown_timeout(Duration::from_secs(1));
        Ok(summary)
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    server: Arc<BundleServer>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    log: Arc<AccessLog>,
    opts: &ServeOptions,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(stop);
    loop {
        // Wait for a free slot first: beyond the limit, clients wait in the backlog.
        let permit = tokio::select! {
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut stop => break,
            a = listener.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            // Transient (EMFILE and the like): keep serving the others.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        log.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let server = Arc::clone(&server);
        let log = Arc::clone(&log);
        let tls = tls.clone();
        let stall = opts.stall_timeout;
        let stop_rx = stop_rx.clone();
        connections.spawn(async move {
            let _permit = permit;
            let stream = StallGuard {
                io: stream,
                limit: stall,
                timer: None,
            };
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    connection(server, log, peer, stream, stop_rx).await;
                }
                None => connection(server, log, peer, stream, stop_rx).await,
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = opts.grace;
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

async fn connection<IO>(
    server: Arc<BundleServer>,
    log: Arc<AccessLog>,
    peer: SocketAddr,
    io: IO,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let server = Arc::clone(&server);
        let log = Arc::clone(&log);
        async move {
            let start = LogStart {
                peer,
                method: req.method().to_string(),
                path: req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| req.uri().path().to_string(), |p| p.to_string()),
                start: Instant::now(),
            };
            let resp = server.handle(req).await;
            let status = resp.status().as_u16();
            let resp: Response<LoggedBody> = resp.map(|inner| LoggedBody {
                inner,
                status,
                bytes: 0,
                failed: false,
                start: Some(start),
                log,
            });
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
