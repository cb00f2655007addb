//! `pinbundle serve`: a read-only site registry straight from bundles, and `serve cert-gen`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use pinbundle::progress::Reporter;
use pinbundle::serve::{self, AccessLog, ServeOptions};
use pinbundle::verify::VerifyOptions;

/// Serve bundles as a read-only registry (OCI distribution API), for a site's nodes or
/// mirror.
///
/// Every bundle is opened and verified first (with --trust-key its signature is required);
/// a damaged or untrusted bundle, or two source repositories that would be served under one
/// name, refuse the start (exit 1). An image `quay.io/ns/repo` is served at
/// `[PREFIX/]ns/repo`, as `pinbundle manifests --mirror HOST:PORT[/PREFIX]` sends nodes
/// there; a delta's omitted blobs come from the other bundles given.
///
/// When ready, prints one line on stdout: the base URL (`http://127.0.0.1:5000`). Everything
/// else goes to stderr: what is served, one access-log line per request (ADDR METHOD PATH
/// STATUS BYTES TIME; --access-log FILE to write it elsewhere, -q for none), and on SIGTERM or
/// SIGINT, after in-flight responses finish (up to --grace), a summary; then exit 0.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ServeArgs {
    #[command(subcommand)]
    pub command: Option<ServeCommand>,
    /// A bundle file, its volumes' directory, or a bundle's volume; one bundle each.
    #[arg(required = true, value_name = "BUNDLE|DIR")]
    pub bundle: Vec<PathBuf>,
    /// The address to listen on. The default is loopback only: any other address (e.g.
    /// 0.0.0.0:5000) must be given. Port 0 picks a free port (read it from stdout).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,
    /// Serve every repository under this path (`PREFIX/ns/repo`).
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub prefix: String,
    /// Require a signature by this public key (minisign format); repeatable.
    #[arg(long, value_name = "FILE")]
    pub trust_key: Vec<PathBuf>,
    /// HTTPS with this certificate (PEM; the chain, server first). Needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Require HTTP basic auth by a user of this htpasswd file (bcrypt entries only:
    /// `htpasswd -B`). Use it with HTTPS: basic auth sends the password in every request.
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// With --htpasswd: answer with a Bearer challenge and issue tokens (10 minutes) at
    /// /token to its users, the registry token flow podman, skopeo, CRI-O and containerd
    /// follow; the password is then sent once per token, not with every request.
    #[arg(long, requires = "htpasswd")]
    pub token_auth: bool,
    /// Write the access log to FILE (appended) instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub access_log: Option<PathBuf>,
    /// At most N connections at once; more wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a response may make no progress (the client reads nothing) before its
    /// connection is closed.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub stall_timeout: u64,
    /// Bytes of decompressed frames held at once, shared by every client (clients of the same
    /// images share one copy); beyond it a transfer waits for room, at most 5 s.
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_cache_size)]
    pub cache_size: u64,
    /// Seconds in-flight responses get to finish after SIGTERM/SIGINT.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub grace: u64,
    /// Threads verifying the bundles at start (0: one per core).
    #[arg(short, long, value_name = "N", default_value_t = 0)]
    pub jobs: usize,
}

#[derive(Subcommand, Debug)]
pub enum ServeCommand {
    CertGen(CertGenArgs),
}

/// Write a private CA and a server certificate for `serve --cert/--key`.
///
/// Writes ca.crt, ca.key, server.crt and server.key (keys mode 0600) into DIR; the server
/// certificate (825 days) names every --advertise host name or IP address. Nodes need only
/// ca.crt. Refuses to replace existing files without --force.
#[derive(Args, Debug)]
pub struct CertGenArgs {
    /// A host name or IP address nodes use to reach the server; repeatable.
    #[arg(long, value_name = "HOST|IP", required = true)]
    pub advertise: Vec<String>,
    /// The directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

fn parse_cache_size(s: &str) -> std::result::Result<u64, String> {
    pinbundle::size::parse_bytes(s).map_err(|e| e.to_string())
}

pub fn run(a: ServeArgs, quiet: bool, reporter: &dyn Reporter) -> Result<ExitCode> {
    if let Some(ServeCommand::CertGen(c)) = a.command {
        return cert_gen(c, quiet);
    }
    let opts = ServeOptions {
        bundles: a.bundle.clone(),
        prefix: a.prefix.clone(),
        verify: VerifyOptions::read(a.jobs, &a.trust_key, None)?,
        listen: a.listen,
        max_connections: a.max_connections,
        stall_timeout: Duration::from_secs(a.stall_timeout.max(1)),
        grace: Duration::from_secs(a.grace),
    };
    let tls = match (&a.cert, &a.key) {
        (Some(c), Some(k)) => Some(serve::tls::acceptor(c, k)?),
        _ => None,
    };
    let auth = a
        .htpasswd
        .as_deref()
        .map(|p| serve::htpasswd::Htpasswd::read(p, "pinbundle"))
        .transpose()
        .map_err(|e| pinbundle::error::Refused(pinbundle::error::error_chain(&e)))?;
    let opened = serve::open(&opts, reporter)?;
    let mut server = opened
        .server()
        .context("nothing to serve: no bundle given")?
        .with_frame_budget(a.cache_size);
    let users = auth.as_ref().map(|h| h.len());
    if let Some(h) = auth {
        server = if a.token_auth {
            let tokens = serve::token::TokenAuth::new(h, a.cert.is_some(), a.listen);
            server.with_authorizer(Arc::new(tokens))
        } else {
            server.with_authorizer(Arc::new(h))
        };
    }
    let repositories = server.repositories().len();
    let log_out: Option<Box<dyn Write + Send>> = match (&a.access_log, quiet) {
        (Some(p), _) => Some(Box::new(
            fs_err::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        )),
        (None, true) => None,
        (None, false) => Some(Box::new(std::io::stderr())),
    };
    let bound = serve::bind(server, &opts, tls, AccessLog::new(log_out))?;
    let url = bound.url();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{url}")?;
        out.flush()?;
    }
    if !quiet {
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "serving {} in {} from {} at {url}{}{}",
            pinbundle::progress::count(opened.images, "image"),
            pinbundle::progress::count(repositories, "repository"),
            pinbundle::progress::count(opened.bundles.len(), "bundle"),
            if a.cert.is_some() { " (TLS)" } else { "" },
            match users {
                Some(n) => format!(
                    ", {} ({})",
                    if a.token_auth {
                        "bearer tokens"
                    } else {
                        "basic auth"
                    },
                    pinbundle::progress::count(n, "user")
                ),
                None => String::new(),
            }
        )?;
    }
    let s = bound.run_until_signal()?;
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "stopped: {} on {}, {} sent, {}; frames: {} decoded, {} shared, {} beyond --cache-size",
        pinbundle::progress::count(s.requests as usize, "request"),
        pinbundle::progress::count(s.connections as usize, "connection"),
        pinbundle::size::human(s.bytes),
        pinbundle::progress::count(s.errors as usize, "error"),
        s.frames.decoded,
        s.frames.hits,
        s.frames.over_budget,
    )?;
    Ok(ExitCode::SUCCESS)
}

fn cert_gen(a: CertGenArgs, quiet: bool) -> Result<ExitCode> {
    let g = serve::certs::generate(&a.out_dir, &a.advertise, a.force)?;
    if !quiet {
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "wrote {}, {}, {} and {} (server certificate for {}, valid {} days)",
            g.ca_cert.display(),
            g.ca_key.display(),
            g.server_cert.display(),
            g.server_key.display(),
            g.names.join(", "),
            serve::certs::SERVER_DAYS
        )?;
        writeln!(
            err,
            "serve with: pinbundle serve --cert {} --key {} --listen ADDR BUNDLE…",
            g.server_cert.display(),
            g.server_key.display()
        )?;
        writeln!(
            err,
            "nodes need ca.crt (keep ca.key offline):\n  CRI-O, podman, skopeo: /etc/containers/certs.d/HOST:PORT/ca.crt\n  the host's trust (RHEL, RHCOS): /etc/pki/ca-trust/source/anchors/, then update-ca-trust\n  containerd: ca = \"…/ca.crt\" in certs.d/HOST/hosts.toml (pinbundle manifests --mirror-ca)"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
