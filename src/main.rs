//! The `pinbundle` command line: argument parsing, output and exit codes only. All behaviour
//! lives in the library.
//!
//! Human output shows every string that came from a bundle, a registry, the file system or
//! a child process through [`Shown`] (errors and warnings included): such text cannot move
//! the cursor or start a line of its own, so it cannot paint a fake "verified" line.
//! `--json` keeps every value exact and writes those characters as `\uXXXX`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use pinbundle::create::{self, CreateOptions, Platform};
use pinbundle::delta;
use pinbundle::load;
use pinbundle::progress::{Reporter, count};
use pinbundle::reference::Reference;
use pinbundle::registry::client::ClientOptions;
use pinbundle::sign;
use pinbundle::text::{Shown, escape};
use pinbundle::verify;

mod cli;

/// Carry container images to air-gapped Kubernetes/OpenShift nodes in one verifiable bundle.
#[derive(Parser, Debug)]
#[command(
    name = "pinbundle",
    version = cli::version::LONG_VERSION,
    max_term_width = 100,
    after_long_help = EXIT_CODES,
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    verbosity: cli::logging::Verbosity,
    /// Never draw progress bars (they are drawn only when stderr is a terminal).
    #[arg(long, global = true, help_heading = "Global options", env = "PINBUNDLE_NO_PROGRESS", value_parser = clap::builder::BoolishValueParser::new())]
    no_progress: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    Create(Box<CreateArgs>),
    Verify(VerifyArgs),
    Inspect(InspectArgs),
    Load(Box<LoadArgs>),
    Keygen(KeygenArgs),
    IndexExport(IndexExportArgs),
    Diff(DiffArgs),
    List(cli::lifecycle::ListArgs),
    Unpin(cli::lifecycle::UnpinArgs),
    Prune(cli::lifecycle::PruneArgs),
    Manifests(Box<cli::manifests::ManifestsArgs>),
    Serve(Box<cli::serve::ServeArgs>),
    Push(Box<cli::push::PushArgs>),
    Version(cli::version::VersionArgs),
    Completions(cli::completions::CompletionsArgs),
    #[command(hide = true)]
    Man(cli::completions::ManArgs),
}

/// The exit codes, the same for every command (the top-level help and the README).
const EXIT_CODES: &str = "\
Exit codes (every command):
  0  success
  1  a check failed or the input was refused for its content: damage, a signature or
     policy refusal, a platform an image lacks, not enough space, a delta whose layers are
     nowhere, pins not confirmed
  2  usage or operational error (bad arguments, unreadable files, registry or tool
     failures)";

/// Write a bundle's index (its exact `pinbundle.json`), a small file to pass to
/// `create --base` instead of the whole bundle.
///
/// The index has the same identity (sha256) as the bundle, so a delta made from it is
/// byte-identical to one made from the bundle.
#[derive(Args, Debug)]
struct IndexExportArgs {
    /// The bundle whose index to write.
    bundle: PathBuf,
    /// The file to write.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

/// Show what changed between two bundles (or exported indexes): images added, removed and
/// changed, and the blobs and bytes only in NEW (what a delta of OLD carries), shared, and
/// only in OLD.
///
/// Images are matched by reference, then what is left by repository (`app:v1` → `app:v2` is
/// a change).
#[derive(Args, Debug)]
struct DiffArgs {
    /// The earlier bundle or exported index.
    old: PathBuf,
    /// The later bundle or exported index.
    new: PathBuf,
    /// Print as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Generate a signing key pair: NAME.key (secret, mode 0600) and NAME.pub, in minisign's
/// formats (stock `minisign -V -p NAME.pub` checks bundle signatures; keys made by
/// `minisign -G` work with pinbundle too).
///
/// The secret key is encrypted with a password (scrypt, as minisign does) taken from
/// --password-file, else $PINBUNDLE_KEY_PASSWORD, else asked on the terminal (never when stdin
/// is not a terminal). --unencrypted writes it unprotected, for automation that keeps it in a
/// secret store. Existing files are never overwritten.
#[derive(Args, Debug)]
struct KeygenArgs {
    /// The key pair's name: writes NAME.key and NAME.pub.
    #[arg(short, long, value_name = "NAME")]
    output: PathBuf,
    /// Read the password from this file (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "unencrypted")]
    password_file: Option<PathBuf>,
    /// Do not encrypt the secret key.
    #[arg(long)]
    unencrypted: bool,
    /// Print what was written as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Resolve images and write them into one bundle file (run on a connected host).
///
/// Tags are resolved to digests and recorded; digest references are checked against what the
/// registry serves. For multi-platform images the index is kept byte for byte, with the blobs
/// of the chosen platforms only. Blobs are cached (content-addressed) so an interrupted run
/// fetches only what is missing when run again. The bundle is written under a temporary name
/// and renamed into place only when complete.
#[derive(Args, Debug)]
struct CreateArgs {
    /// Image references (`quay.io/org/app:v1`, `busybox@sha256:…`).
    #[arg(value_name = "REF")]
    references: Vec<String>,
    /// Read references from a file, one per line (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    from_file: Vec<PathBuf>,
    /// Read references from an OpenShift PinnedImageSet YAML (`spec.pinnedImages[].name`).
    #[arg(long, value_name = "FILE")]
    pinned_image_set: Vec<PathBuf>,
    /// An OpenShift release image (`quay.io/openshift-release-dev/ocp-release:4.16.1-x86_64`,
    /// or by digest); repeatable. Carries the release image (named `repo@sha256:…`, what
    /// `oc adm upgrade --to-image` takes) and every component its
    /// `release-manifests/image-references` names, under those exact names; blobs shared by
    /// several releases are carried once. `--platform` picks the architecture of a
    /// multi-architecture release.
    #[arg(long = "release", value_name = "REF")]
    releases: Vec<String>,
    /// Where release signatures are fetched from: `URL/sha256=<hex>/signature-<n>`.
    #[arg(
        long,
        value_name = "URL",
        default_value = pinbundle::release::DEFAULT_SIGNATURE_STORE
    )]
    release_signature_store: String,
    /// Carry no release signatures (the store is not reachable, or the cluster does not
    /// verify): `oc adm upgrade` then needs --force on a disconnected cluster. Overrides
    /// --release-signature-store.
    #[arg(long)]
    no_release_signatures: bool,
    /// With --release: also write the cluster manifests (signature ConfigMaps and
    /// PinnedImageSets) into DIR, as `pinbundle manifests` does.
    #[arg(long, value_name = "DIR", requires = "releases")]
    manifests_out: Option<PathBuf>,
    #[command(flatten)]
    manifest_sets: cli::manifests::SetArgs,
    /// The bundle file to write (with --volume-size: FILE.001, FILE.002, …).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Write volumes of at most SIZE bytes instead of one file. Each volume is a complete
    /// bundle file, verifiable alone; a blob larger than the room left is cut between volumes
    /// and joined again on read.
    ///
    /// SIZE is a number with an optional unit: K, M, G, T (or KB, MB, GB, TB) are powers of
    /// 1000, so `4.7G` is 4,700,000,000 bytes; KiB, MiB, GiB, TiB are powers of 1024, so
    /// `4GiB` is 4,294,967,296; no unit (or B) is bytes. Or a medium: `fat32` (4 GiB − 1, the
    /// largest file FAT32 holds), `dvd` (4,700,000,000), `dvd-dl` (8,500,000,000), `bd25`
    /// (25,025,314,816).
    #[arg(long, value_name = "SIZE", value_parser = parse_volume_size)]
    volume_size: Option<u64>,
    /// Platform to keep from multi-platform images, OS/ARCH[/VARIANT]; repeatable.
    /// [default: linux/amd64]
    #[arg(long, value_name = "PLATFORM")]
    platform: Vec<Platform>,
    /// Keep every platform of multi-platform images.
    #[arg(long, conflicts_with = "platform")]
    all_platforms: bool,
    /// Carry an image that lacks some of the platforms asked for (it must still have one).
    /// Without, `create` fails naming the image and the platforms it has, whether it is an
    /// index or a single-platform image (whose config says its platform).
    #[arg(long, conflicts_with = "all_platforms")]
    allow_missing_platforms: bool,
    /// Registry credentials file (containers auth.json or Docker config.json format; an
    /// OpenShift pull secret works). Default: $REGISTRY_AUTH_FILE,
    /// $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json.
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// Use plain HTTP for this registry (HOST[:PORT]); repeatable.
    #[arg(long, value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
    /// Also trust the CA certificates in this PEM file; repeatable.
    #[arg(long, value_name = "FILE")]
    ca_file: Vec<PathBuf>,
    /// Blob cache directory. [default: $XDG_CACHE_HOME/pinbundle or ~/.cache/pinbundle]
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    jobs: Jobs,
    /// zstd level for what is compressed (JSON, uncompressed layers); gzip and zstd layers
    /// are stored as they are.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    level: i32,
    /// Sign the bundle with this minisign secret key (see `pinbundle keygen`); the signature
    /// covers pinbundle.json and through its digests every blob.
    #[arg(long, value_name = "KEY")]
    sign_key: Option<PathBuf>,
    /// The signing key's password, from this file (its first line). Default:
    /// $PINBUNDLE_KEY_PASSWORD, else asked on the terminal.
    #[arg(long, value_name = "FILE", requires = "sign_key")]
    password_file: Option<PathBuf>,
    /// Write a delta: leave out the layers this earlier bundle (or its index from
    /// `pinbundle index-export`) lists; they are not fetched either. `load` then takes them
    /// from the node's store or from the base bundle.
    #[arg(long, value_name = "BUNDLE|INDEX")]
    base: Option<PathBuf>,
    /// The longest one registry request may take to answer with its headers; also the longest
    /// a manifest, token or error body may take to arrive whole and the longest a blob body
    /// may pause (`30`, `30s`, `2m`).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// The slowest a blob may arrive, in bytes per second (`1KiB`, `64K`; units as for
    /// --volume-size), measured over each --timeout: a registry that trickles is abandoned
    /// (and retried).
    #[arg(long, value_name = "RATE", default_value = "1KiB", value_parser = parse_rate)]
    min_rate: u64,
    /// The most one image may take: resolving it (every manifest, token, retry and backoff),
    /// and each blob's download with its retries.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    image_timeout: std::time::Duration,
    /// How many times a registry request that may succeed later (a connection failure,
    /// timeout, cut or slow body, 408, 429, 5xx) is retried.
    #[arg(long, value_name = "N", default_value_t = 5)]
    retries: u32,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Check every frame, blob digest and manifest reference of a bundle, and its signature.
///
/// Exit 0 only if everything is intact; otherwise every damaged blob is named with the images
/// it breaks, and the exit code is 1. With --trust-key, the bundle must also be signed by one
/// of the keys given (checked first: an unsigned or untrusted bundle is refused, exit 1);
/// without, a signature present is checked to be well-formed and its key id shown.
#[derive(Args, Debug)]
struct VerifyArgs {
    /// The bundle file; or its volumes, in any order (one volume brings its siblings
    /// NAME.NNN from its directory); or a directory holding them.
    #[arg(required = true, value_name = "BUNDLE")]
    bundle: Vec<PathBuf>,
    /// Check only the volumes given, without requiring the rest of the set (a blob cut
    /// between volumes is then checked against its frame checksums, not its digest).
    #[arg(long)]
    partial: bool,
    /// A minisign public key (.pub) trusted to sign bundles; repeatable.
    #[arg(long, value_name = "PUB")]
    trust_key: Vec<PathBuf>,
    #[command(flatten)]
    jobs: Jobs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Show what a bundle holds (reads only its index and manifest: fast on any size).
#[derive(Args, Debug)]
struct InspectArgs {
    /// The bundle file, its volumes, or a directory holding them.
    #[arg(required = true, value_name = "BUNDLE")]
    bundle: Vec<PathBuf>,
    /// Print as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Load a bundle into containers-storage on this node, pin it in CRI-O, reload, confirm.
///
/// In order: verify the whole bundle (nothing is touched if anything is damaged); check free
/// space; import every image not yet present with `skopeo copy` from a read-only registry
/// that serves the bundle on 127.0.0.1 (every digest kept exactly), named `repo@sha256:…`
/// (and `repo:tag` when requested by tag); add the pins to the CRI-O drop-in (atomically, only
/// when they change, carrying what an earlier CRI-O configuration file pins); reload CRI-O (or
/// restart it, on releases whose reload mishandles pins); ask CRI-O over the CRI until every
/// entry of its pinned_images is confirmed. Exit 0 when confirmed (or with --no-confirm); 1
/// when the bundle is damaged, the signature policy refuses an image (see
/// --signature-policy), CRI-O's configuration or store is refused, or the pins are not
/// confirmed (no CRI socket, no answer, not pinned); 2 on other errors.
///
/// Signatures: when any trusted key is configured (--trust-key, or a `*.pub` file in
/// --trusted-dir), the bundle must be signed by one of them; an unsigned bundle or one signed
/// by another key is refused before anything is touched (exit 1).
#[derive(Args, Debug)]
struct LoadArgs {
    /// The bundle file; or its volumes, in any order (one volume brings its siblings
    /// NAME.NNN from its directory); or a directory holding them. Every volume must be there.
    #[arg(required = true, value_name = "BUNDLE")]
    bundle: Vec<PathBuf>,
    /// A minisign public key (.pub) trusted to sign bundles; repeatable.
    #[arg(long, value_name = "PUB")]
    trust_key: Vec<PathBuf>,
    /// Every `*.pub` file in this directory is a trusted key (a missing directory has none).
    #[arg(long, value_name = "DIR", default_value = sign::DEFAULT_TRUSTED_DIR)]
    trusted_dir: PathBuf,
    #[command(flatten)]
    store: cli::node::StoreArgs,
    #[command(flatten)]
    crio: cli::node::CrioArgs,
    #[command(flatten)]
    reload: cli::node::ReloadArgs,
    #[command(flatten)]
    cri: cli::node::CriArgs,
    /// Do not ask CRI-O whether the pins took effect (no CRI socket here): exit 0 with the
    /// pins written but unconfirmed. Without it, unconfirmed pins exit 1.
    #[arg(long)]
    no_confirm: bool,
    /// Also write PinnedImageSet manifests for these images (for MCO-managed nodes): one YAML
    /// file, a `---`-separated set per pool (several, numbered, beyond 500 images), for
    /// `oc apply -f FILE`.
    #[arg(long, value_name = "FILE")]
    pinned_image_set_out: Option<PathBuf>,
    /// The PinnedImageSet API the cluster serves: `v1` on OpenShift 4.19 and later (4.19.0
    /// only with the PinnedImages feature gate, on by default from a 4.19 z-stream and in 4.20);
    /// `v1alpha1` on 4.16–4.18 (TechPreviewNoUpgrade only).
    #[arg(long, value_name = "API", default_value = "v1", value_parser = ["v1", "v1alpha1"], requires = "pinned_image_set_out")]
    pinned_image_set_api: String,
    /// The machine config pool a PinnedImageSet is for (its
    /// `machineconfiguration.openshift.io/role` label); repeatable, one set per pool. Use
    /// `master` on single-node and compact clusters. [default: worker]
    #[arg(long, value_name = "NAME", requires = "pinned_image_set_out")]
    pool: Vec<String>,
    /// Verify and plan only: change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Import only; leave the drop-in and CRI-O alone.
    #[arg(long)]
    no_pin: bool,
    /// The platform to take from multi-platform images. [default: this machine's]
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<Platform>,
    /// The lock file that serialises loads.
    #[arg(long, value_name = "FILE", default_value = load::DEFAULT_LOCK)]
    lock_file: PathBuf,
    /// Kubelet's configuration (KubeletConfiguration, YAML or JSON), for the free space it
    /// keeps (`evictionHard` `imagefs.available`, `nodefs.available`;
    /// `imageGCHighThresholdPercent`). [default: /var/lib/kubelet/config.yaml, else
    /// /etc/kubernetes/kubelet.conf, else kubelet's defaults: 15 %, 10 %, 85 %]
    #[arg(long, value_name = "FILE", overrides_with = "kubelet_config")]
    kubelet_config: Option<PathBuf>,
    /// Keep at least this much free on the store's filesystem (bytes, or 16Gi, 500M…), when
    /// more than kubelet keeps. MCO keeps 16Gi free when it pulls a PinnedImageSet.
    #[arg(long, value_name = "SIZE")]
    min_free: Option<load::space::MinFree>,
    #[command(flatten)]
    jobs: Jobs,
    /// A bundle that carries layers this delta bundle leaves out (the layers it omits must be
    /// in containers-storage already, or in one of these); repeatable.
    #[arg(long, value_name = "BUNDLE")]
    base: Vec<PathBuf>,
    /// Admit images by this containers-policy.json(5) instead of the one CRI-O pulls under
    /// (its `signature_policy`, else /etc/containers/policy.json). Each image's original name
    /// is judged: one its rule rejects, or whose rule requires signatures (bundles carry none),
    /// is refused before anything is touched (exit 1).
    #[arg(long, value_name = "FILE")]
    signature_policy: Option<PathBuf>,
    #[command(flatten)]
    state: cli::node::StateArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// `--jobs`, the same flag and default for every command that takes it.
#[derive(Args, Debug, Clone, Copy)]
struct Jobs {
    /// Threads to work with: parallel downloads and compression (`create`), verification
    /// (`verify`, `load`), skopeo copies at once (`load`). [default: number of cores; for
    /// `create` at least 4]
    #[arg(long = "jobs", short = 'j', value_name = "N")]
    n: Option<usize>,
}

impl Jobs {
    fn get(self) -> usize {
        self.at_least(1)
    }

    /// `--jobs`, or the number of cores but no fewer than `floor`: create's downloads wait on
    /// the network more than on a core.
    fn at_least(self, floor: usize) -> usize {
        self.n.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .max(floor)
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.verbosity.init();
    match run(cli) {
        Ok(code) => code,
        // `pinbundle inspect … | head -1`: the reader has what it wanted (ripgrep does the same).
        Err(e)
            if e.downcast_ref::<Render>()
                .is_some_and(|r| r.0.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_error(&e);
            match pinbundle::error::classify(e.chain()) {
                pinbundle::error::Failure::Refused => ExitCode::from(1),
                pinbundle::error::Failure::Operational => ExitCode::from(2),
            }
        }
    }
}

/// `error: …` and its causes on stderr.
fn print_error(e: &anyhow::Error) {
    let mut err = std::io::stderr().lock();
    // Messages quote references, paths and child stderr: one line each, escaped.
    let _ = writeln!(err, "error: {}", escape(&e.to_string()));
    for cause in e.chain().skip(1) {
        let _ = writeln!(err, "  caused by: {}", escape(&cause.to_string()));
    }
}

/// A failure to write the command's own output, kept apart from the library's I/O errors so
/// that only a closed pipe of ours exits quietly. Shown as the I/O error it wraps.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Render(std::io::Error);

/// Runs a renderer on stdout and stderr, then flushes. The locks are taken only here, after
/// the library's work: progress bars write to stderr meanwhile, from other threads.
fn render(f: impl FnOnce(&mut dyn Write, &mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    f(&mut out, &mut err)
        .and_then(|()| out.flush())
        .and_then(|()| err.flush())
        .map_err(|e| Render(e).into())
}

/// `report` as JSON on stdout with `--json`, else as `human` renders it.
fn show<T: serde::Serialize>(
    json: bool,
    report: &T,
    human: impl FnOnce(&mut dyn Write, &mut dyn Write, &T) -> std::io::Result<()>,
) -> Result<()> {
    render(|out, err| {
        if json {
            print_json(out, report)
        } else {
            human(out, err, report)
        }
    })
}

/// `30`, `30s`, `500ms`, `2m`, `1h`.
fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let bad = || format!("invalid duration \"{s}\": expected e.g. 30s, 500ms, 2m or 1h");
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !(secs > 0.0 && secs < 1e7) {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Bytes per second: `1024`, `1K`, `2M` (binary multiples).
fn parse_rate(s: &str) -> std::result::Result<u64, String> {
    pinbundle::size::parse_bytes(s).map_err(|e| format!("{e} (bytes per second)"))
}

fn parse_volume_size(s: &str) -> std::result::Result<u64, String> {
    pinbundle::bundle::volumes::parse_volume_size(s)
}

fn reporter(no_progress: bool, quiet: bool) -> Box<dyn Reporter> {
    if quiet {
        // `-q`: errors and warnings only, and those come with the report or the error.
        Box::new(pinbundle::progress::Silent)
    } else if no_progress || !std::io::stderr().is_terminal() {
        Box::new(Quiet)
    } else {
        Box::new(Bars::default())
    }
}

/// No progress: only the notices a person must see (e.g. that `load` waits for another).
struct Quiet;

impl Reporter for Quiet {
    fn notice(&self, msg: &str) {
        eprintln!("{}", escape(msg));
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let reporter = reporter(cli.no_progress, cli.verbosity.quiet);
    match cli.command {
        Command::Create(a) => cmd_create(*a, &*reporter),
        Command::Verify(a) => {
            let opts = verify::VerifyOptions::read(a.jobs.get(), &a.trust_key, None)?;
            let set_opts = pinbundle::bundle::SetOptions {
                allow_partial: a.partial,
                find_siblings: !a.partial,
            };
            let report = verify::verify_paths(&a.bundle, set_opts, &opts, &*reporter)?;
            show(a.json, &report, |out, _, r| print_verify(out, r))?;
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Load(a) => cmd_load(*a, &*reporter),
        Command::Keygen(a) => cmd_keygen(a),
        Command::IndexExport(a) => {
            let identity = delta::export_index(&a.bundle, &a.output)?;
            render(|_, err| {
                writeln!(
                    err,
                    "wrote {}: the index of {} ({identity})",
                    shown_path(&a.output),
                    shown_path(&a.bundle)
                )
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff(a) => {
            let open =
                |p: &Path| delta::Base::open(p).with_context(|| format!("reading {}", p.display()));
            let report = delta::diff(&open(&a.old)?, &open(&a.new)?);
            show(a.json, &report, |out, _, r| print_diff(out, r))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manifests(a) => cli::manifests::run(*a, false),
        Command::Serve(a) => cli::serve::run(*a, cli.verbosity.quiet, &*reporter),
        Command::Push(a) => cli::push::run(*a, &*reporter),
        Command::List(a) => cli::lifecycle::run_list(a),
        Command::Unpin(a) => cli::lifecycle::run_unpin(a, &*reporter),
        Command::Prune(a) => cli::lifecycle::run_prune(a, &*reporter),
        Command::Inspect(a) => {
            let report = verify::inspect_paths(&a.bundle)?;
            show(a.json, &report, |out, _, r| print_inspect(out, r))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Version(a) => {
            let report = cli::version::VersionReport::get();
            show(a.json, &report, |out, _, r| cli::version::print(out, r))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions(a) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let script = cli::completions::completions(&mut cmd, &a);
            render(|out, _| out.write_all(&script))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man(a) => {
            let written =
                cli::completions::man(<Cli as clap::CommandFactory>::command(), &a.out_dir)?;
            if !cli.verbosity.quiet {
                render(|_, err| {
                    writeln!(
                        err,
                        "wrote {} man pages in {}",
                        written.len(),
                        shown_path(&a.out_dir)
                    )
                })?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A secret key's password: from `file`, else `$PINBUNDLE_KEY_PASSWORD`, else asked on the
/// terminal (twice when `confirm`); `None` when there is no source (stdin not a terminal).
fn key_password(file: Option<&Path>, prompt: &str, confirm: bool) -> Result<Option<String>> {
    if let Some(f) = file {
        let (line, shared) = sign::read_password_file(f)?;
        if let Some(mode) = shared {
            eprintln!(
                "warning: the password file {} can be read by group or others (mode {mode:04o}); chmod 600 it",
                f.display()
            );
        }
        if line.is_empty() {
            anyhow::bail!("the password file {} is empty", f.display());
        }
        return Ok(Some(line));
    }
    if let Some(p) = std::env::var_os(sign::PASSWORD_ENV).filter(|p| !p.is_empty()) {
        return Ok(Some(p.into_string().map_err(|_| {
            anyhow::anyhow!("{} is not valid UTF-8", sign::PASSWORD_ENV)
        })?));
    }
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let pw = rpassword::prompt_password(prompt).context("reading the password")?;
    if confirm {
        let again =
            rpassword::prompt_password("Password (again): ").context("reading the password")?;
        if pw != again {
            anyhow::bail!("the passwords do not match");
        }
    }
    if pw.is_empty() {
        anyhow::bail!("an empty password protects nothing; use --unencrypted to mean that");
    }
    Ok(Some(pw))
}

fn cmd_keygen(a: KeygenArgs) -> Result<ExitCode> {
    let password = if a.unencrypted {
        None
    } else {
        let prompt = format!("Password for {}.key: ", a.output.display());
        Some(
            key_password(a.password_file.as_deref(), &prompt, true)?.with_context(|| {
                format!(
                    "a password is needed to encrypt {}.key: give --password-file, set {}, run on a terminal, or pass --unencrypted",
                    a.output.display(),
                    sign::PASSWORD_ENV
                )
            })?,
        )
    };
    let report = Versioned {
        version: KEYGEN_JSON_VERSION,
        report: sign::keygen(&a.output, password.as_deref())?,
    };
    show(a.json, &report, |_, err, r| print_keygen(err, &r.report))?;
    Ok(ExitCode::SUCCESS)
}

/// The version of `keygen --json`'s document.
const KEYGEN_JSON_VERSION: u32 = 1;

/// A library report with the `version` every `--json` document starts with.
#[derive(serde::Serialize)]
struct Versioned<T> {
    version: u32,
    #[serde(flatten)]
    report: T,
}

fn print_keygen(err: &mut dyn Write, r: &sign::KeygenReport) -> std::io::Result<()> {
    writeln!(
        err,
        "key {}: secret key {} ({}), public key {}\ncopy {} to the nodes' {}/ (or pass it with --trust-key)",
        r.key_id,
        shown_path(&r.secret_key),
        if r.encrypted {
            "password-protected"
        } else {
            "NOT encrypted"
        },
        shown_path(&r.public_key),
        shown_path(&r.public_key),
        sign::DEFAULT_TRUSTED_DIR
    )
}

/// Reads and decrypts the signing key (before any network work, so a wrong password fails
/// fast).
fn signing_key(path: &Path, password_file: Option<&Path>) -> Result<sign::SigningKey> {
    let file = sign::SecretKeyFile::read(path)?;
    if let Some(mode) = file.shared_mode() {
        eprintln!(
            "warning: the secret key {} can be read by group or others (mode {mode:04o}); chmod 600 it",
            path.display()
        );
    }
    let password = if file.is_encrypted() {
        key_password(
            password_file,
            &format!("Password for {}: ", path.display()),
            false,
        )?
    } else {
        None
    };
    Ok(file.unlock(password.as_deref())?)
}

fn cmd_create(a: CreateArgs, reporter: &dyn Reporter) -> Result<ExitCode> {
    let sign_key = match &a.sign_key {
        Some(k) => Some(signing_key(k, a.password_file.as_deref())?),
        None => None,
    };
    let mut references = Vec::new();
    for r in &a.references {
        references.push(r.parse::<Reference>()?);
    }
    for f in &a.from_file {
        references.extend(create::read_reference_file(f)?);
    }
    for f in &a.pinned_image_set {
        let listed = create::read_pinned_image_set(f)?;
        // MCO pulls a PinnedImageSet's entries by digest only; one by tag is carried (and
        // pinned by digest), but the set itself would be refused by the cluster.
        for r in listed.iter().filter(|r| r.digest().is_none()) {
            eprintln!(
                "warning: {}: {} is a tag, not a digest; carried pinned by the digest it resolves to, but MCO refuses a PinnedImageSet entry by tag: list it as name@sha256:…",
                shown_path(f),
                Shown(&r.to_string())
            );
        }
        references.extend(listed);
    }
    let mut releases = Vec::new();
    for r in &a.releases {
        releases.push(r.parse::<Reference>()?);
    }
    let manifest_opts = a.manifest_sets.options()?;
    let cache_dir = match a.cache_dir {
        Some(d) => d,
        None => default_cache_dir()?,
    };
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => Some(
            s.trim()
                .parse::<u64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"))?,
        ),
        Err(_) => None,
    };
    let opts = CreateOptions {
        references,
        output: a.output,
        platforms: a.platform,
        all_platforms: a.all_platforms,
        allow_missing_platforms: a.allow_missing_platforms,
        client: ClientOptions {
            insecure_registries: a.insecure_registry,
            ca_files: a.ca_file,
            authfile: a.authfile,
            retries: a.retries,
            request_timeout: a.timeout,
            min_rate: a.min_rate,
            ..ClientOptions::default()
        },
        image_timeout: a.image_timeout,
        cache_dir,
        jobs: a.jobs.at_least(4),
        level: a.level,
        frame_size: pinbundle::bundle::format::DEFAULT_FRAME_SIZE,
        volume_size: a.volume_size,
        source_date_epoch,
        sign_key,
        base: a.base,
        release: create::ReleaseOptions {
            references: releases,
            signature_store: (!a.no_release_signatures).then_some(a.release_signature_store),
        },
    };
    let report = create::create(&opts, reporter)?;
    show(a.json, &report, |_, err, r| print_create(err, r))?;
    if let Some(dir) = &a.manifests_out {
        let set = pinbundle::bundle::BundleSet::open(
            &[report
                .volumes
                .first()
                .map_or(report.output.clone(), |v| v.path.clone())],
            pinbundle::bundle::SetOptions {
                allow_partial: false,
                find_siblings: true,
            },
        )?;
        let written = cli::manifests::write(&set, dir, &manifest_opts, None)?;
        // stdout holds create's --json document: the list goes to stderr.
        cli::manifests::print(false, &written)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What `create` wrote, on stderr (stdout is for `--json`).
fn print_create(err: &mut dyn Write, r: &create::CreateReport) -> std::io::Result<()> {
    for i in &r.images {
        writeln!(
            err,
            "{}\n    pin {}  [{}]  {}",
            Shown(&i.reference),
            Shown(&i.pin),
            Shown(&i.platforms.join(", ")),
            human(i.size)
        )?;
    }
    writeln!(
        err,
        "wrote {}: {}, {} ({}), file {}; fetched {} ({}), {} from cache, in {:.1}s",
        shown_path(&r.output),
        count(r.images.len(), "image"),
        count(r.blobs, "blob"),
        human(r.size),
        human(r.bundle_size),
        count(r.blobs_fetched, "blob"),
        human(r.bytes_fetched),
        r.blobs_cached,
        r.seconds
    )?;
    for v in &r.volumes {
        writeln!(err, "  volume {} ({})", shown_path(&v.path), human(v.size))?;
    }
    if let Some(base) = &r.base {
        writeln!(
            err,
            "delta of {} (created {}): {} carried, {} ({}) left to the base",
            base.manifest,
            Shown(&base.created),
            count(r.blobs_carried(), "blob"),
            count(r.blobs_omitted, "layer"),
            human(r.bytes_omitted)
        )?;
    }
    if let Some(sig) = &r.signature {
        writeln!(err, "signed by key {}", sig.key_id)?;
    }
    for w in &r.warnings {
        writeln!(err, "warning: {}", Shown(&w.to_string()))?;
    }
    Ok(())
}

fn cmd_load(a: LoadArgs, reporter: &dyn Reporter) -> Result<ExitCode> {
    let opts = load::LoadOptions {
        bundle: a.bundle,
        store: a.store.flags(),
        crio_config: a.crio.crio_config.clone(),
        drop_in: a.crio.drop_in(),
        crio_config_dir: a.crio.crio_config_dir,
        reload: a.reload.mode(),
        reload_env: a.reload.env(),
        cri_socket: a.cri.cri_socket,
        confirm_timeout: std::time::Duration::from_secs(a.cri.confirm_timeout),
        state_dir: a.state.state_dir,
        no_confirm: a.no_confirm,
        pinned_image_set_out: a.pinned_image_set_out,
        pinned_image_set_api: a
            .pinned_image_set_api
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?,
        pools: a.pool,
        kubelet_config: a.kubelet_config,
        min_free: a.min_free,
        dry_run: a.dry_run,
        no_pin: a.no_pin,
        jobs: a.jobs.get(),
        platform: a.platform,
        skopeo: load::storage::Skopeo::new(),
        lock: a.lock_file,
        root: PathBuf::from("/"),
        tmpdir: None,
        trusted_keys: a.trust_key,
        trusted_dir: a.trusted_dir,
        bases: a.base,
        signature_policy: a.signature_policy,
        default_policy: PathBuf::from(load::policy::DEFAULT_POLICY),
        default_policy_dir: PathBuf::from(load::policy::DEFAULT_POLICY_DIR),
        import_timeout: load::storage::CopyTimeout::default(),
    };
    let report = match load::load(&opts, reporter) {
        // The store is not the one CRI-O serves: refused, nothing touched.
        Err(e)
            if e.downcast_ref::<load::store_config::StoreRefused>()
                .is_some() =>
        {
            print_error(&e);
            return Ok(ExitCode::from(1));
        }
        r => r?,
    };
    show(a.json, &report, print_load)?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else if report.error.is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    })
}

/// The report on `out`; warnings, the error and what was rolled back on `err`.
fn print_load(
    out: &mut dyn Write,
    err: &mut dyn Write,
    r: &load::LoadReport,
) -> std::io::Result<()> {
    if !r.problems.is_empty() {
        writeln!(
            out,
            "{}: refused, nothing was changed; {}:",
            shown_path(&r.bundle),
            count(r.problems.len(), "problem")
        )?;
        print_problems(out, &r.problems)?;
        return Ok(());
    }
    if !r.refused.is_empty() {
        writeln!(
            out,
            "{}: refused by the signature policy, nothing was changed:",
            shown_path(&r.bundle)
        )?;
        for reason in &r.refused {
            writeln!(out, "  {}", Shown(reason))?;
        }
        return Ok(());
    }
    for i in &r.images {
        let pinned = match i.pinned {
            Some(true) => "pinned",
            Some(false) => "NOT pinned",
            None if r.dry_run || r.error.is_some() => "",
            None => "pin not confirmed",
        };
        let platform = i
            .platform
            .as_ref()
            .map_or(String::new(), |p| format!("  {}", Shown(p)));
        writeln!(
            out,
            "{:<11} {:<18} {:>10}  {}{platform}",
            i.status,
            pinned,
            human(i.size),
            Shown(&i.pin)
        )?;
        if let Some(e) = &i.error {
            writeln!(out, "            {}", Shown(e))?;
        }
    }
    print_load_node(out, r)?;
    if let Some(d) = &r.delta {
        let sum =
            |v: &[delta::OmittedSource]| v.iter().map(|s| s.size).fold(0, u64::saturating_add);
        writeln!(
            out,
            "delta: {} ({}) reused from the store, {} ({}) from base bundles",
            count(d.from_storage.len(), "layer"),
            human(sum(&d.from_storage)),
            d.from_bases.len(),
            human(sum(&d.from_bases))
        )?;
    }
    if let Some(rl) = &r.reload {
        let would = if r.dry_run { "would be " } else { "" };
        let why = r
            .reload_reason
            .as_ref()
            .map_or(String::new(), |w| format!(" ({})", Shown(w)));
        writeln!(out, "reload: {would}{}{why}", Shown(rl))?;
    }
    print_load_space_and_cri(out, r)?;
    if r.dry_run {
        let count = |s: load::ImageStatus| r.images.iter().filter(|i| i.status == s).count();
        writeln!(
            out,
            "dry run: nothing was changed; {} to import, {} already present (skipped)",
            pinbundle::progress::count(count(load::ImageStatus::WouldLoad), "image"),
            count(load::ImageStatus::Present)
        )?;
    }
    for w in &r.warnings {
        writeln!(err, "warning: {}", Shown(w))?;
    }
    if let Some(e) = &r.error {
        writeln!(err, "error: {}", Shown(e))?;
        if let Some(rb) = &r.rolled_back {
            writeln!(err, "rolled back: {}", Shown(&rb.summary()))?;
        }
    }
    Ok(())
}

/// The lines of what `load` checked and read from the node: signature, store, policy, pins.
fn print_load_node(out: &mut dyn Write, r: &load::LoadReport) -> std::io::Result<()> {
    print_load_signature(out, r.signature.as_ref())?;
    if let Some(s) = &r.store {
        writeln!(out, "store: {}", Shown(&s.summary()))?;
    }
    if let Some(file) = r
        .images
        .iter()
        .find_map(|i| i.policy.as_ref())
        .map(|d| &d.file)
    {
        let mut scopes: Vec<&str> = r
            .images
            .iter()
            .filter_map(|i| i.policy.as_ref().map(|d| d.scope.as_str()))
            .collect();
        scopes.sort_unstable();
        scopes.dedup();
        writeln!(
            out,
            "policy: {} admits every image ({})",
            shown_path(file),
            Shown(&scopes.join(", "))
        )?;
    }
    if let Some(p) = &r.pins {
        let what = match (r.dry_run, p.changed) {
            (false, true) => "updated",
            (false, false) => "unchanged",
            (true, true) => "would be updated",
            (true, false) => "would stay unchanged",
        };
        let added = if r.dry_run { "to add" } else { "added" };
        writeln!(
            out,
            "pins: {} {what} ({}: {} {added}, {} already there)",
            shown_path(&p.drop_in),
            count(p.entries, "entry"),
            p.added.len(),
            p.already_there.len()
        )?;
        if let Some(c) = &p.carried {
            let carried = if r.dry_run { "would carry" } else { "carried" };
            writeln!(
                out,
                "pins: {carried} {} from {}, whose list ours replaces",
                count(c.entries, "entry"),
                shown_path(&c.from)
            )?;
        }
    }
    Ok(())
}

/// The signature line of a load that verified: who signed, and whether a trusted key checked it.
fn print_load_signature(
    out: &mut dyn Write,
    sig: Option<&pinbundle::sign::SignatureInfo>,
) -> std::io::Result<()> {
    let Some(sig) = sig else {
        // A load with trusted keys refuses an unsigned bundle, so none is configured here.
        return writeln!(
            out,
            "signature: none (the bundle is unsigned and no trusted key is configured)"
        );
    };
    let comment = Shown(&sig.trusted_comment);
    match &sig.verified_by {
        Some(by) => writeln!(
            out,
            "signature: good, key {}, trusted comment \"{comment}\" (trusted key {})",
            sig.key_id,
            shown_path(by)
        ),
        None => writeln!(
            out,
            "signature: well-formed, key {}, trusted comment \"{comment}\" (not checked: no trusted key is configured)",
            sig.key_id
        ),
    }
}

/// The space and CRI lines of a load report.
fn print_load_space_and_cri(out: &mut dyn Write, r: &load::LoadReport) -> std::io::Result<()> {
    if let Some(s) = &r.space {
        let from = match s.sizes {
            load::space::Sizes::Declared => "sizes signed by a trusted key",
            load::space::Sizes::Measured => {
                "sizes measured (the bundle is not signed by a trusted key)"
            }
        };
        for f in &s.filesystems {
            let kept = f.reserve.as_ref().map_or(String::new(), |r| {
                format!(
                    ", {} of it kept free: {} {}, {}",
                    human(r.bytes),
                    r.rule,
                    r.threshold,
                    Shown(&r.from)
                )
            });
            writeln!(
                out,
                "space: {} needed on {}{kept} ({} free; {from})",
                human(f.needed),
                shown_path(&f.path),
                human(f.free)
            )?;
        }
    }
    if let Some(c) = &r.cri {
        let state = if c.confirmed {
            "confirmed present and pinned"
        } else if c.timed_out {
            "NOT confirmed (timed out)"
        } else {
            "NOT confirmed"
        };
        writeln!(
            out,
            "cri: {} {}: {state}",
            Shown(&c.runtime),
            Shown(&c.version)
        )?;
        for o in &c.others {
            writeln!(
                out,
                "cri: also pinned_images: {} {}",
                o.status,
                Shown(&o.entry)
            )?;
        }
    }
    Ok(())
}

fn default_cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("pinbundle"));
    }
    let home = std::env::var_os("HOME")
        .context("neither XDG_CACHE_HOME nor HOME is set; pass --cache-dir")?;
    Ok(PathBuf::from(home).join(".cache").join("pinbundle"))
}

fn print_json<T: serde::Serialize>(out: &mut dyn Write, v: &T) -> std::io::Result<()> {
    write_json(&mut *out, v)?;
    writeln!(out)
}

/// `v` as pretty JSON, with the characters [`pinbundle::text::needs_escape`] names written
/// as `\uXXXX` escapes (serde_json escapes only C0 controls): the value a script parses is
/// exact, and a terminal shown the document is not driven by it.
fn write_json<T: serde::Serialize>(out: &mut dyn Write, v: &T) -> std::io::Result<()> {
    let mut ser = serde_json::Serializer::with_formatter(
        out,
        SafeJson(serde_json::ser::PrettyFormatter::new()),
    );
    // An I/O error keeps its kind (a closed pipe stays one, see `main`).
    v.serialize(&mut ser).map_err(std::io::Error::from)
}

/// serde_json's [`PrettyFormatter`](serde_json::ser::PrettyFormatter) plus the escapes of
/// [`write_json`].
struct SafeJson<'a>(serde_json::ser::PrettyFormatter<'a>);

impl serde_json::ser::Formatter for SafeJson<'_> {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if pinbundle::text::needs_escape(c) {
                w.write_all(&fragment.as_bytes()[start..i])?;
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
                start = i + c.len_utf8();
            }
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_array(w)
    }
    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array(w)
    }
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_array_value(w, first)
    }
    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_array_value(w)
    }
    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object(w)
    }
    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object(w)
    }
    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.0.begin_object_key(w, first)
    }
    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.begin_object_value(w)
    }
    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.0.end_object_value(w)
    }
}

/// A path as shown to a person: volume and sibling names come from the stick.
fn shown_path(p: &Path) -> String {
    escape(&p.display().to_string()).into_owned()
}

fn print_verify(out: &mut dyn Write, r: &verify::VerifyReport) -> std::io::Result<()> {
    match &r.signature {
        Some(s) => {
            let trust = match &s.verified_by {
                Some(p) => format!("verified with trusted key {}", shown_path(p)),
                None => "not checked against a trusted key (give --trust-key)".into(),
            };
            writeln!(
                out,
                "signature: key {}, {trust}\n  trusted comment: {}",
                s.key_id,
                Shown(&s.trusted_comment)
            )?;
        }
        None if !r.opened => writeln!(
            out,
            "signature: not read (the files could not be opened as a bundle)"
        )?,
        None => writeln!(out, "signature: none")?,
    }
    if let Some(v) = &r.volumes {
        print_volumes(out, v)?;
    }
    if let Some(b) = &r.base {
        writeln!(
            out,
            "delta of {} (created {}): layers it does not carry must be on the node or in that bundle",
            b.manifest,
            Shown(&b.created)
        )?;
    }
    if r.ok() {
        writeln!(
            out,
            "{}: OK ({}, {}, {} checked)",
            shown_path(&r.bundle),
            count(r.images, "image"),
            count(r.members_checked, "member"),
            human(r.bytes_checked)
        )?;
    } else {
        writeln!(
            out,
            "{}: FAILED, {}",
            shown_path(&r.bundle),
            count(r.problems.len(), "problem")
        )?;
        print_problems(out, &r.problems)?;
    }
    Ok(())
}

/// Which volumes were read and which were not.
fn print_volumes(out: &mut dyn Write, v: &verify::VolumesReport) -> std::io::Result<()> {
    writeln!(
        out,
        "volumes: {} of {} present (set {})",
        v.present.len(),
        v.count,
        v.set
    )?;
    for f in &v.present {
        writeln!(out, "  {:>3}  {}", f.index, shown_path(&f.path))?;
    }
    for f in &v.missing {
        writeln!(
            out,
            "  {:>3}  missing (expected {})",
            f.index,
            shown_path(&f.path)
        )?;
    }
    if !v.incomplete_blobs.is_empty() {
        writeln!(
            out,
            "  {} blob(s) continue in missing volumes: their parts here were checked by frame checksums only",
            v.incomplete_blobs.len()
        )?;
    }
    Ok(())
}

/// One line per problem, naming the member and the images it breaks.
fn print_problems(out: &mut dyn Write, problems: &[verify::Problem]) -> std::io::Result<()> {
    for p in problems {
        write!(
            out,
            "  {}: {}",
            Shown(p.member.as_deref().unwrap_or("file")),
            Shown(&p.error)
        )?;
        if !p.images.is_empty() {
            write!(out, " (breaks {})", Shown(&p.images.join(", ")))?;
        }
        writeln!(out)?;
    }
    Ok(())
}

fn print_inspect(out: &mut dyn Write, r: &verify::InspectReport) -> std::io::Result<()> {
    let m = &r.manifest;
    writeln!(
        out,
        "bundle:  {} ({})",
        shown_path(&r.bundle),
        human(r.file_size)
    )?;
    writeln!(
        out,
        "format:  {} v{}, by {}, created {}",
        Shown(&m.format),
        m.format_version,
        Shown(&m.creator),
        Shown(&m.created)
    )?;
    match &r.signature {
        Some(s) => writeln!(
            out,
            "signed:  by key {} (not checked: use `verify --trust-key`)\n         trusted comment: {}",
            s.key_id,
            Shown(&s.trusted_comment)
        )?,
        None => writeln!(out, "signed:  no")?,
    }
    if let Some(v) = &r.volumes {
        print_volumes(out, v)?;
    }
    writeln!(
        out,
        "content: {}, {}, {} ({} uncompressed)",
        count(m.totals.images, "image"),
        count(m.totals.blobs, "blob"),
        human(m.totals.size),
        human(m.totals.uncompressed_size)
    )?;
    cli::manifests::print_releases(out, &r.release_summary, "earlier releases")?;
    if let Some(b) = &m.base {
        let (carried, omitted): (Vec<_>, Vec<_>) = m.blobs.iter().partition(|b| b.carried);
        let size = |v: &[&pinbundle::bundle::format::BlobEntry]| {
            v.iter().map(|b| b.size).fold(0, u64::saturating_add)
        };
        writeln!(
            out,
            "delta:   of {} (created {})\n         carries {} ({}), omits {} ({}): `load` needs them in the store or `--base`",
            b.manifest,
            Shown(&b.created),
            count(carried.len(), "blob"),
            human(size(&carried)),
            count(omitted.len(), "layer"),
            human(size(&omitted))
        )?;
    }
    for i in &m.images {
        writeln!(
            out,
            "\n{}\n  pin:    {}@{}\n  type:   {}",
            Shown(&i.reference),
            Shown(&i.name),
            i.digest,
            Shown(&i.media_type)
        )?;
        for p in &i.platforms {
            let plat = pinbundle::platform::Platform::from(p).to_string();
            writeln!(
                out,
                "  {:<16} {} ({})",
                escape(&plat),
                p.digest,
                count(p.layers.len(), "layer")
            )?;
        }
        writeln!(
            out,
            "  size:   {} ({} uncompressed)",
            human(i.size),
            human(i.uncompressed_size)
        )?;
    }
    Ok(())
}

fn print_diff(out: &mut dyn Write, r: &delta::DiffReport) -> std::io::Result<()> {
    for (what, side) in [("old", &r.old), ("new", &r.new)] {
        let of = side
            .base
            .as_ref()
            .map(|b| format!(", delta of {}", b.manifest))
            .unwrap_or_default();
        writeln!(
            out,
            "{what}: {} ({}, created {}{of})",
            shown_path(&side.path),
            side.identity,
            Shown(&side.created)
        )?;
    }
    for i in &r.images {
        let digest = |d: &Option<pinbundle::reference::Digest>| {
            d.as_ref().map_or("-".to_string(), |d| d.to_string())
        };
        match i.status {
            delta::ChangeStatus::Changed => writeln!(
                out,
                "  changed   {} → {}\n            {} → {}",
                Shown(i.old_reference.as_deref().unwrap_or("-")),
                Shown(i.new_reference.as_deref().unwrap_or("-")),
                digest(&i.old_digest),
                digest(&i.new_digest)
            )?,
            status => writeln!(
                out,
                "  {status:<9} {} {}",
                Shown(
                    i.new_reference
                        .as_deref()
                        .or(i.old_reference.as_deref())
                        .unwrap_or("-")
                ),
                digest(&i.new_digest.clone().or(i.old_digest.clone()))
            )?,
        }
    }
    cli::manifests::print_releases(out, &r.releases, "old")?;
    writeln!(out, "blobs:")?;
    for (what, c) in [
        ("only in new", r.blobs.only_new),
        ("shared", r.blobs.shared),
        ("only in old", r.blobs.only_old),
    ] {
        writeln!(
            out,
            "  {what:<12} {:>6} blobs  {:>10}",
            c.blobs,
            human(c.size)
        )?;
    }
    Ok(())
}

fn human(n: u64) -> String {
    pinbundle::size::human(n)
}

/// Progress bars on a terminal; each phase leaves one line saying what it did.
#[derive(Default)]
struct Bars {
    bar: std::sync::Mutex<Option<Phase>>,
}

/// The phase a [`Bars`] draws.
struct Phase {
    pb: indicatif::ProgressBar,
    name: String,
    started: std::time::Instant,
}

impl Bars {
    /// Clears the bar and leaves `line(phase)` and the phase's duration in its place.
    fn end(&self, line: impl FnOnce(&Phase) -> String) {
        if let Ok(mut b) = self.bar.lock()
            && let Some(p) = b.take()
        {
            p.pb.finish_and_clear();
            eprintln!(
                "{} in {:.1} s",
                escape(&line(&p)),
                p.started.elapsed().as_secs_f64()
            );
        }
    }
}

impl Reporter for Bars {
    fn start(&self, phase: &str, total: u64) {
        let pb = indicatif::ProgressBar::new(total);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                // The item in flight first: on a narrow terminal the tail is cut, not the name.
                "{prefix} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_prefix(escape(phase).into_owned());
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(Phase {
                pb,
                name: phase.to_string(),
                started: std::time::Instant::now(),
            });
        }
    }
    fn advance(&self, n: u64) {
        if let Ok(b) = self.bar.lock()
            && let Some(p) = b.as_ref()
        {
            p.pb.inc(n);
        }
    }
    fn step(&self, what: &str) {
        if let Ok(b) = self.bar.lock()
            && let Some(p) = b.as_ref()
        {
            p.pb.set_message(escape(what).into_owned());
        }
    }
    fn finish(&self) {
        self.end(|p| {
            format!(
                "{}: {} of {}",
                p.name,
                human(p.pb.position()),
                human(p.pb.length().unwrap_or(0))
            )
        });
    }
    fn done(&self, result: &str) {
        self.end(|_| result.to_string());
    }
    fn message(&self, msg: &str) {
        if let Ok(b) = self.bar.lock() {
            let msg = escape(msg);
            match b.as_ref() {
                Some(p) => p.pb.println(msg),
                None => eprintln!("{msg}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn json_is_exact_and_terminal_safe() {
        let v = serde_json::json!({"a": ["x\x1b[2J\u{202e}\u{9b}\r\n\u{7f}y", 1], "b": {"c": "plain ü"}});
        let mut out = Vec::new();
        write_json(&mut out, &v).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text
                .chars()
                .any(|c| c != '\n' && pinbundle::text::needs_escape(c)),
            "{text}"
        );
        assert!(
            text.contains(r"x\u001b[2J\u202e\u009b\r\n\u007fy"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), v);
        // Layout as serde_json's pretty printer, for values with nothing to escape.
        let plain = serde_json::json!({"a": [1, {"b": []}], "c": {}});
        let mut out = Vec::new();
        write_json(&mut out, &plain).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string_pretty(&plain).unwrap()
        );
    }

    fn text(f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn problem(member: Option<&str>, images: &[&str], error: &str) -> verify::Problem {
        verify::Problem {
            member: member.map(Into::into),
            digest: None,
            images: images.iter().map(|i| i.to_string()).collect(),
            error: error.into(),
        }
    }

    fn verify_report() -> verify::VerifyReport {
        verify::VerifyReport {
            version: 1,
            bundle: PathBuf::from("/m/b.pinbundle"),
            images: 2,
            members_checked: 9,
            bytes_checked: 3 << 20,
            signature: None,
            volumes: None,
            base: None,
            problems: Vec::new(),
            opened: true,
        }
    }

    #[test]
    fn renders_verify() {
        let mut r = verify_report();
        r.signature = Some(pinbundle::sign::SignatureInfo {
            key_id: sign::KeyId([0xab; 8]),
            trusted_comment: "made\x1b[2J today".into(),
            verified_by: Some(PathBuf::from("/k/site.pub")),
        });
        r.volumes = Some(verify::VolumesReport {
            set: pinbundle::reference::Digest::of(b"set"),
            count: 2,
            present: vec![verify::VolumeFile {
                index: 1,
                path: PathBuf::from("/m/b.001"),
            }],
            missing: vec![verify::VolumeFile {
                index: 2,
                path: PathBuf::from("/m/b.002"),
            }],
            incomplete_blobs: vec![pinbundle::reference::Digest::of(b"blob")],
        });
        let set = pinbundle::reference::Digest::of(b"set");
        assert_eq!(
            text(|o| print_verify(o, &r)),
            format!(
                "signature: key ABABABABABABABAB, verified with trusted key /k/site.pub\n  \
                 trusted comment: made\\x1b[2J today\n\
                 volumes: 1 of 2 present (set {set})\n    \
                 1  /m/b.001\n    \
                 2  missing (expected /m/b.002)\n  \
                 1 blob(s) continue in missing volumes: their parts here were checked by frame checksums only\n\
                 /m/b.pinbundle: OK (2 images, 9 members, 3.0 MiB checked)\n"
            )
        );

        let mut r = verify_report();
        r.opened = false;
        r.problems = vec![
            problem(None, &[], "not a bundle"),
            problem(Some("blobs/sha256/ab"), &["a:1", "b:2"], "digest\nmismatch"),
        ];
        assert_eq!(
            text(|o| print_verify(o, &r)),
            "signature: not read (the files could not be opened as a bundle)\n\
             /m/b.pinbundle: FAILED, 2 problems\n  \
             file: not a bundle\n  \
             blobs/sha256/ab: digest\\nmismatch (breaks a:1, b:2)\n"
        );
    }

    #[test]
    fn renders_diff() {
        use pinbundle::reference::Digest;
        let (d1, d2) = (Digest::of(b"1"), Digest::of(b"2"));
        let side = |p: &str, base: Option<BaseRef>| delta::DiffSide {
            path: PathBuf::from(p),
            identity: d1.clone(),
            created: "2024-01-01T00:00:00Z".into(),
            base,
            images: 1,
            blobs: 3,
            size: 10,
        };
        use pinbundle::bundle::format::BaseRef;
        use pinbundle::delta::ChangeStatus;
        let change = |status, old: Option<&str>, new: Option<&str>| delta::ImageChange {
            status,
            name: "r/app".into(),
            old_reference: old.map(Into::into),
            new_reference: new.map(Into::into),
            old_digest: old.map(|_| d1.clone()),
            new_digest: new.map(|_| d2.clone()),
        };
        let r = delta::DiffReport {
            version: 1,
            old: side("/o.pb", None),
            new: side(
                "/n.pb",
                Some(BaseRef {
                    manifest: d2.clone(),
                    created: "x".into(),
                }),
            ),
            images: vec![
                change(ChangeStatus::Changed, Some("r/app:v1"), Some("r/app:v2")),
                change(ChangeStatus::Added, None, Some("r/new:v1")),
            ],
            blobs: delta::BlobDiff {
                only_new: delta::Count {
                    blobs: 2,
                    size: 2048,
                },
                shared: delta::Count::default(),
                only_old: delta::Count { blobs: 1, size: 5 },
            },
            releases: Vec::new(),
        };
        assert_eq!(
            text(|o| print_diff(o, &r)),
            format!(
                "old: /o.pb ({d1}, created 2024-01-01T00:00:00Z)\n\
                 new: /n.pb ({d1}, created 2024-01-01T00:00:00Z, delta of {d2})\n  \
                 changed   r/app:v1 → r/app:v2\n            {d1} → {d2}\n  \
                 added     r/new:v1 {d2}\n\
                 blobs:\n  \
                 only in new       2 blobs     2.0 KiB\n  \
                 shared            0 blobs         0 B\n  \
                 only in old       1 blobs         5 B\n"
            )
        );
    }

    #[test]
    fn renders_inspect() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        // The manifest as a bundle holds it: a delta carrying one blob and omitting one layer.
        let manifest = serde_json::json!({
            "format": "pinbundle", "formatVersion": 1, "creator": "t", "created": "2024-01-01T00:00:00Z",
            "base": {"manifest": d('b'), "created": "2023-12-01T00:00:00Z"},
            "layout": {"ociLayout": d('1'), "indexJson": d('2')},
            "images": [{
                "reference": "r/app:v1", "name": "r/app", "tag": "v1", "digest": d('a'),
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "platforms": [{
                    "os": "linux", "architecture": "arm64", "variant": "v8", "digest": d('c'),
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": d('e'), "layers": [d('f')],
                }],
                "blobs": [d('a'), d('c'), d('e'), d('f')], "size": 4096, "uncompressedSize": 8192,
            }],
            "blobs": [
                {"digest": d('e'), "size": 100, "mediaType": "application/json", "kind": "config"},
                {"digest": d('f'), "size": 2048, "mediaType": "application/octet-stream", "kind": "layer", "carried": false},
            ],
            "totals": {"images": 1, "blobs": 2, "size": 2148, "uncompressedSize": 4096},
        });
        let r = verify::InspectReport {
            version: 1,
            bundle: PathBuf::from("/m/b.pinbundle"),
            file_size: 5000,
            frames: 3,
            members: 4,
            signature: None,
            volumes: None,
            release_summary: Vec::new(),
            manifest: serde_json::from_value(manifest).unwrap(),
        };
        assert_eq!(
            text(|o| print_inspect(o, &r)),
            format!(
                "bundle:  /m/b.pinbundle (4.9 KiB)\n\
                 format:  pinbundle v1, by t, created 2024-01-01T00:00:00Z\n\
                 signed:  no\n\
                 content: 1 image, 2 blobs, 2.1 KiB (4.0 KiB uncompressed)\n\
                 delta:   of {} (created 2023-12-01T00:00:00Z)\n         \
                 carries 1 blob (100 B), omits 1 layer (2.0 KiB): `load` needs them in the store or `--base`\n\
                 \n\
                 r/app:v1\n  \
                 pin:    r/app@{}\n  \
                 type:   application/vnd.oci.image.index.v1+json\n  \
                 linux/arm64/v8   {} (1 layer)\n  \
                 size:   4.0 KiB (8.0 KiB uncompressed)\n",
                d('b'),
                d('a'),
                d('c')
            )
        );
    }

    fn load_report() -> load::LoadReport {
        let mut r = load::LoadReport::default();
        r.version = 1;
        r.bundle = PathBuf::from("/m/b.pinbundle");
        r.seconds = 1.0;
        r
    }

    #[test]
    fn renders_load() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut r = load_report();
        r.problems = vec![problem(Some("pinbundle.json"), &[], "frame 0: bad")];
        print_load(&mut out, &mut err, &r).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "/m/b.pinbundle: refused, nothing was \
             changed; 1 problem:\n  pinbundle.json: frame 0: bad\n"
        );
        assert!(err.is_empty());

        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut r = load_report();
        r.images = vec![load::ImageResult {
            reference: "r/app:v1".into(),
            pin: "r/app@sha256:ab".into(),
            status: load::ImageStatus::Failed,
            pinned: None,
            size: 1 << 20,
            uncompressed_size: 3 << 20,
            platform: None,
            error: Some("skopeo\rsaid no".into()),
            policy: None,
        }];
        r.warnings = vec!["odd\x07".into()];
        r.error = Some("importing r/app:v1 failed".into());
        r.cri = Some(load::CriResult {
            runtime: "cri-o".into(),
            version: "1.31".into(),
            confirmed: false,
            timed_out: true,
            others: Vec::new(),
        });
        print_load(&mut out, &mut err, &r).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "failed                            1.0 MiB  r/app@sha256:ab\n            \
             skopeo\\rsaid no\n\
             signature: none (the bundle is unsigned and no trusted key is configured)\n\
             cri: cri-o 1.31: NOT confirmed (timed out)\n"
        );
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "warning: odd\\x07\nerror: importing r/app:v1 failed\n"
        );
    }

    /// A reader that went away: every write fails as a closed pipe does.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_stays_a_closed_pipe() {
        // `main` exits quietly on exactly this kind, for JSON and human output alike.
        let e = print_json(&mut ClosedPipe, &serde_json::json!({"a": 1})).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
        let e = print_verify(&mut ClosedPipe, &verify_report()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
        let e: anyhow::Error = Render(e).into();
        assert!(e.downcast_ref::<Render>().is_some());
        let shown: anyhow::Error = Render(std::io::Error::other("disk full")).into();
        assert_eq!(
            shown.to_string(),
            "disk full",
            "shown as the I/O error itself"
        );
    }

    #[test]
    fn jobs_default_once() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (cmd, extra) in [
            ("verify", &[][..]),
            ("load", &[][..]),
            ("create", &["-o", "x"][..]),
        ] {
            let parse = |more: &[&str]| {
                let mut args = vec!["pinbundle", cmd, "b"];
                args.extend(extra);
                args.extend(more);
                match Cli::try_parse_from(args).unwrap().command {
                    Command::Create(a) => a.jobs.at_least(4),
                    Command::Verify(a) => a.jobs.get(),
                    Command::Load(a) => a.jobs.get(),
                    _ => unreachable!(),
                }
            };
            let floor = if cmd == "create" { 4 } else { 1 };
            assert_eq!(parse(&[]), cores.max(floor), "{cmd}");
            assert_eq!(parse(&["-j", "3"]), 3, "{cmd}");
            assert_eq!(parse(&["--jobs", "5"]), 5, "{cmd}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_delta_flags() {
        let cli = Cli::try_parse_from([
            "pinbundle",
            "load",
            "d.pb",
            "--base",
            "a.pb",
            "--base",
            "b.pb",
        ])
        .unwrap();
        let Command::Load(l) = cli.command else {
            panic!("not load")
        };
        assert_eq!(l.base, [PathBuf::from("a.pb"), PathBuf::from("b.pb")]);
        let cli =
            Cli::try_parse_from(["pinbundle", "create", "a:1", "-o", "x", "--base", "i.json"])
                .unwrap();
        let Command::Create(c) = cli.command else {
            panic!("not create")
        };
        assert_eq!(c.base, Some(PathBuf::from("i.json")));
        assert!(Cli::try_parse_from(["pinbundle", "diff", "old"]).is_err());
        assert!(Cli::try_parse_from(["pinbundle", "index-export", "b.pb"]).is_err());
    }

    #[test]
    fn parses_deadline_flags() {
        use std::time::Duration;
        let cli = Cli::try_parse_from([
            "pinbundle",
            "create",
            "a:1",
            "-o",
            "x",
            "--timeout",
            "500ms",
            "--min-rate",
            "64K",
            "--image-timeout",
            "2m",
            "--retries",
            "0",
        ])
        .unwrap();
        let Command::Create(c) = cli.command else {
            panic!("not create")
        };
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.min_rate, 64_000);
        assert_eq!(c.image_timeout, Duration::from_secs(120));
        assert_eq!(c.retries, 0);
        let cli = Cli::try_parse_from(["pinbundle", "create", "a:1", "-o", "x"]).unwrap();
        let Command::Create(c) = cli.command else {
            panic!("not create")
        };
        assert_eq!(c.timeout, Duration::from_secs(60));
        assert_eq!(c.min_rate, 1024);
        assert_eq!(c.image_timeout, Duration::from_secs(3600));
        for bad in ["0", "-1s", "1d", "x", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_rate("1X").is_err());
        assert_eq!(parse_rate("64K"), Ok(64_000));
        assert_eq!(parse_rate("64KiB"), Ok(64 << 10));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
    }

    #[test]
    fn parses_create() {
        let cli = Cli::try_parse_from([
            "pinbundle",
            "create",
            "a:1",
            "-o",
            "x.pinbundle",
            "--platform",
            "linux/arm64/v8",
            "--insecure-registry",
            "127.0.0.1:5000",
        ])
        .unwrap();
        let Command::Create(c) = cli.command else {
            panic!("not create")
        };
        assert_eq!(c.platform[0].variant.as_deref(), Some("v8"));
        assert!(
            Cli::try_parse_from(["pinbundle", "create", "a", "-o", "x", "--platform", "linux"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "pinbundle",
                "create",
                "a",
                "-o",
                "x",
                "--all-platforms",
                "--platform",
                "linux/amd64"
            ])
            .is_err()
        );
    }
}
