//! `pinbundle push`: the images of a bundle into a site registry (disk-to-mirror).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use pinbundle::mirror::Mirror;
use pinbundle::progress::Reporter;
use pinbundle::push::{PushOptions, PushReport, push};
use pinbundle::registry::client::ClientOptions;
use pinbundle::text::escape;
use pinbundle::verify::VerifyOptions;

/// Push a bundle's images into a site registry, digests and manifest bytes unchanged.
///
/// `quay.io/ns/repo` goes to `REGISTRY/PREFIX/ns/repo`, the mapping `manifests --mirror`
/// sends the nodes to, so they then pull by the original names; a bundle whose repositories
/// would collide there is refused before any request. The bundle is verified first (with
/// --trust-key, it must be signed by one of the keys). Blobs already present are skipped
/// (a push run again sends only what is missing), blobs already sent to another repository
/// are mounted, the rest uploaded, largest first; then each image's platform manifests, its
/// index or list, and its tag. Exit 0 when every image is there; 1 when the bundle is
/// refused (damage, signature, collision); 2 on registry, network, auth and other errors.
#[derive(Args, Debug)]
pub struct PushArgs {
    /// The bundle file, its volumes, or a directory holding them.
    #[arg(required = true, value_name = "BUNDLE")]
    pub bundle: Vec<PathBuf>,
    /// The registry to push into, with an optional repository prefix.
    #[arg(long, required = true, value_name = "REGISTRY[/PREFIX]")]
    pub to: String,
    /// Require a signature by this public key (minisign format); repeatable.
    #[arg(long, value_name = "FILE")]
    pub trust_key: Vec<PathBuf>,
    /// Registry credentials file (containers auth.json or Docker config.json format).
    /// Default: $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
    /// ~/.docker/config.json.
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Use plain HTTP for this registry (HOST[:PORT]); repeatable.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Also trust the CA certificates in this PEM file; repeatable.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Vec<PathBuf>,
    /// Blobs uploaded at once.
    #[arg(long = "jobs", short = 'j', value_name = "N", default_value_t = 4)]
    pub jobs: usize,
    /// The longest one registry request may take to answer with its headers (`30`, `30s`,
    /// `2m`); a blob upload may take this plus its size at --min-rate.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::parse_duration)]
    pub timeout: std::time::Duration,
    /// The slowest rate a blob upload is given time for, in bytes per second.
    #[arg(long, value_name = "RATE", default_value = "64KiB", value_parser = crate::parse_rate)]
    pub min_rate: u64,
    /// How many times a registry request that may succeed later is retried.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub retries: u32,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PushArgs, reporter: &dyn Reporter) -> Result<ExitCode> {
    let mirror: Mirror = a.to.parse().context("--to")?;
    let verify = VerifyOptions::read(0, &a.trust_key, None)?;
    let opts = PushOptions {
        bundle: a.bundle.clone(),
        mirror,
        client: ClientOptions {
            insecure_registries: a.insecure_registry,
            ca_files: a.ca_file,
            authfile: a.authfile,
            retries: a.retries,
            request_timeout: a.timeout,
            min_rate: a.min_rate,
            ..ClientOptions::default()
        },
        verify,
        jobs: a.jobs.max(1),
    };
    let report = push(&opts, reporter)?;
    crate::show(a.json, &report, print_push)?;
    // A registry that refused an image's manifests: operational, like any registry failure.
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn print_push(out: &mut dyn Write, err: &mut dyn Write, r: &PushReport) -> std::io::Result<()> {
    for i in &r.images {
        if let Some(e) = &i.error {
            writeln!(
                err,
                "error: {} -> {}: {}",
                escape(&i.reference),
                escape(&i.target),
                escape(e)
            )?;
            continue;
        }
        let what = if i.status == "pushed" {
            "pushed"
        } else {
            "already present"
        };
        writeln!(
            out,
            "{what}: {} -> {} ({} sent, {} mounted, {} skipped, {})",
            escape(&i.reference),
            escape(&i.target),
            i.counts.blobs_sent,
            i.counts.blobs_mounted,
            i.counts.blobs_skipped,
            pinbundle::size::human(i.counts.bytes_sent)
        )?;
    }
    let t = &r.totals;
    writeln!(
        out,
        "{} into {}: {} sent ({}), {} mounted, {} already present; {} put",
        pinbundle::progress::count(r.images.len(), "image"),
        escape(&r.registry),
        pinbundle::progress::count(t.blobs_sent, "blob"),
        pinbundle::size::human(t.bytes_sent),
        t.blobs_mounted,
        t.blobs_skipped,
        pinbundle::progress::count(t.manifests_put, "manifest")
    )
}
