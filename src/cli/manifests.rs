//! `pinbundle manifests`: the cluster side of a release bundle. Reads a bundle made with
//! `create --release` and writes, for `oc apply -f DIR`, each release's signature ConfigMap
//! and its PinnedImageSets. `create --release … --manifests-out DIR` calls the same code on
//! the bundle it has just written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use pinbundle::bundle::{BundleSet, SetOptions};
use pinbundle::mirror::{Mirror, Transport};
use pinbundle::pinned_image_set::{self, Api};
use pinbundle::reference::PinnedRef;
use pinbundle::release::{ManifestError, ManifestFile, ManifestOptions, cluster_manifests};

/// Write a bundle's cluster manifests: PinnedImageSets, a release's signature ConfigMap,
/// and with --mirror what sends nodes to a site mirror.
///
/// For each release of a bundle made with `create --release`: the ConfigMap of its signatures
/// (namespace `openshift-config-managed`, what `oc adm upgrade` verifies an offline release
/// against) and its PinnedImageSets (the release image and every component, at most 500 per
/// set, labelled with the release's name and version). For any other bundle: PinnedImageSets
/// of every image it carries. One file each, in DIR, for `oc apply -f DIR`; the node files of
/// --mirror go under DIR/nodes/.
///
/// Only `pinbundle.json` and the signature blobs are read, each checked against its digest.
/// With --trust-key the bundle must be signed by one of the keys (exit 1 otherwise). Exit 0
/// when written; 1 when the bundle is refused; 2 on other errors.
#[derive(Args, Debug)]
pub struct ManifestsArgs {
    /// The bundle file, its volumes, or a directory holding them.
    #[arg(required = true, value_name = "BUNDLE")]
    pub bundle: Vec<PathBuf>,
    /// The directory to write into (created if missing; files of the same name are replaced).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    #[command(flatten)]
    pub sets: SetArgs,
    /// Require a signature by this public key (minisign format); repeatable.
    #[arg(long, value_name = "FILE")]
    pub trust_key: Vec<PathBuf>,
    #[command(flatten)]
    pub mirror: MirrorArgs,
    /// Print what was written as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Where a site mirror serves the bundle's images (any bundle, not only releases).
#[derive(Args, Debug, Clone)]
pub struct MirrorArgs {
    /// Also write what sends nodes to this mirror when they pull by the original names
    /// (`quay.io/ns/repo` is kept at `HOST/PREFIX/ns/repo`): an ImageDigestMirrorSet and an
    /// ImageTagMirrorSet for OpenShift, and under DIR/nodes/ a `registries.conf.d` drop-in
    /// (CRI-O, podman) and containerd `certs.d/<registry>/hosts.toml` files.
    #[arg(long, value_name = "HOST[:PORT][/PREFIX]")]
    pub mirror: Option<String>,
    /// How nodes reach the mirror: `https` (a certificate they trust), `skip-verify` (HTTPS,
    /// certificate not checked) or `plain-http`.
    #[arg(long, value_name = "HOW", default_value = "https", value_parser = ["https", "skip-verify", "plain-http"], requires = "mirror")]
    pub mirror_transport: String,
    /// The mirror's CA certificate as a path on the nodes, for containerd's `hosts.toml`
    /// (CRI-O and podman read `/etc/containers/certs.d/HOST/ca.crt`).
    #[arg(long, value_name = "PATH", requires = "mirror")]
    pub mirror_ca: Option<String>,
}

impl MirrorArgs {
    fn parse(&self) -> Result<Option<(Mirror, Transport)>> {
        let Some(m) = &self.mirror else {
            return Ok(None);
        };
        let transport = match (self.mirror_transport.as_str(), &self.mirror_ca) {
            ("https", Some(ca)) => Transport::HttpsCa(ca.clone()),
            ("https", None) => Transport::Https,
            (_, Some(_)) => bail!("--mirror-ca needs --mirror-transport https"),
            ("skip-verify", None) => Transport::SkipVerify,
            _ => Transport::PlainHttp,
        };
        Ok(Some((m.parse::<Mirror>()?, transport)))
    }
}

/// How the PinnedImageSets are written (shared with `create --manifests-out`).
#[derive(Args, Debug, Clone)]
pub struct SetArgs {
    /// The machine config pool a PinnedImageSet is for (its
    /// `machineconfiguration.openshift.io/role` label); repeatable, one set per pool. Use
    /// `master` on single-node and compact clusters. [default: worker]
    #[arg(long = "pool", value_name = "NAME")]
    pub pools: Vec<String>,
    /// The PinnedImageSet API the cluster serves: `v1` on OpenShift 4.19 and later, `v1alpha1`
    /// on 4.16–4.18 (TechPreviewNoUpgrade only).
    #[arg(long = "pinned-image-set-api", value_name = "API", default_value = "v1", value_parser = ["v1", "v1alpha1"])]
    pub api: String,
}

impl SetArgs {
    pub fn options(&self) -> Result<ManifestOptions> {
        Ok(ManifestOptions {
            pools: self.pools.clone(),
            api: self
                .api
                .parse::<Api>()
                .map_err(|e: String| anyhow::anyhow!(e))?,
        })
    }
}

/// What was written (the `--json` document).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestsReport {
    pub version: u32,
    pub directory: PathBuf,
    pub files: Vec<WrittenFile>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WrittenFile {
    pub path: PathBuf,
    pub kind: &'static str,
    /// The release's version; `None` for a file that belongs to no release.
    pub release: Option<String>,
    pub objects: usize,
}

pub fn run(a: ManifestsArgs, json: bool) -> Result<ExitCode> {
    let set = BundleSet::open(
        &a.bundle,
        SetOptions {
            allow_partial: true,
            find_siblings: true,
        },
    )
    .with_context(|| format!("reading {}", a.bundle[0].display()))?;
    if !a.trust_key.is_empty() {
        let keys = pinbundle::sign::read_trusted(&a.trust_key, None)?;
        if let (_, Some(p)) = pinbundle::verify::check_signature(&set, &keys) {
            // Bundle text: shown escaped, as every error is.
            eprintln!(
                "error: {}: {}",
                pinbundle::text::escape(&set.path().display().to_string()),
                pinbundle::text::escape(&p.error)
            );
            return Ok(ExitCode::from(1));
        }
    }
    let mirror = a.mirror.parse()?;
    let report = match write(&set, &a.output, &a.sets.options()?, mirror.as_ref()) {
        Ok(r) => r,
        // Damage (a signature whose bytes do not match its digest, or missing) is a refusal.
        Err(e)
            if matches!(
                e.downcast_ref::<ManifestError>(),
                Some(
                    ManifestError::SignatureMismatch { .. }
                        | ManifestError::SignatureMissing { .. }
                )
            ) =>
        {
            eprintln!("error: {}", pinbundle::text::escape(&format!("{e:#}")));
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e),
    };
    print(json || a.json, &report)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the manifests of `set`'s releases into `dir`, and with `mirror` the files that send
/// nodes to it, each file atomically.
pub fn write(
    set: &BundleSet,
    dir: &Path,
    opts: &ManifestOptions,
    mirror: Option<&(Mirror, Transport)>,
) -> Result<ManifestsReport> {
    let read = |d: &pinbundle::reference::Digest| {
        set.blob(d).map(|loc| {
            set.read_blob(loc)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
    };
    // Named after the bundle's identity, as `load --pinned-image-set-out` names its sets.
    let identity = pinbundle::reference::Digest::of(set.manifest_bytes());
    let name = format!("pinbundle-{}", &identity.hex()[..12]);
    let mut files: Vec<ManifestFile> = Vec::new();
    if set.manifest().releases.is_empty() {
        // Any bundle: PinnedImageSets for every image it carries.
        let pins: Vec<PinnedRef> = set
            .manifest()
            .images
            .iter()
            .map(|i| PinnedRef {
                name: i.name.clone(),
                digest: i.digest.clone(),
            })
            .collect();
        let sets = pinned_image_set::sets(&name, &opts.pools, &pins)?;
        files.push(ManifestFile {
            name: format!("{name}-pinned-image-sets.yaml"),
            kind: "PinnedImageSet",
            version: String::new(),
            objects: sets.len(),
            contents: pinned_image_set::render(opts.api, &sets),
        });
    } else {
        files = cluster_manifests(set.manifest(), &read, opts)
            .with_context(|| format!("{}", set.path().display()))?;
    }
    if let Some((m, transport)) = mirror {
        for f in pinbundle::mirror::files(set.manifest(), &name, m, transport)? {
            files.push(ManifestFile {
                name: f.name,
                kind: f.kind,
                version: String::new(),
                objects: f.objects,
                contents: f.contents,
            });
        }
    }
    fs_err::create_dir_all(dir)?;
    let mut written = Vec::new();
    for f in files {
        let path = dir.join(&f.name);
        if path.is_dir() {
            bail!("{} is a directory", path.display());
        }
        if let Some(parent) = path.parent() {
            fs_err::create_dir_all(parent)?;
        }
        let (staged, mut file) = pinbundle::atomic::Stage::new(&path).create()?;
        file.write_all(f.contents.as_bytes())
            .map_err(|e| staged.write_error(e))?;
        staged.commit(file)?;
        written.push(WrittenFile {
            path,
            kind: f.kind,
            release: Some(f.version).filter(|v| !v.is_empty()),
            objects: f.objects,
        });
    }
    Ok(ManifestsReport {
        version: 1,
        directory: dir.to_path_buf(),
        files: written,
    })
}

/// The report: JSON on stdout, or one line per file on stderr.
pub fn print(json: bool, r: &ManifestsReport) -> std::io::Result<()> {
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, r)?;
        return writeln!(out);
    }
    let mut err = std::io::stderr().lock();
    for f in &r.files {
        // The release's version comes from the bundle: shown escaped.
        let release = match &f.release {
            None => String::new(),
            Some(v) => format!(", release {}", pinbundle::text::Shown(v)),
        };
        writeln!(
            err,
            "wrote {} ({} {}{release})",
            pinbundle::text::Shown(&f.path.display().to_string()),
            f.objects,
            f.kind,
        )?;
    }
    writeln!(
        err,
        "apply with `oc apply -f {}` (the ConfigMaps first if applying file by file)",
        r.directory.display()
    )
}

/// The releases of `inspect` and `diff`, one line each, bytes new and shared with `against`.
pub fn print_releases(
    out: &mut dyn Write,
    releases: &[pinbundle::release::ReleaseSummary],
    against: &str,
) -> std::io::Result<()> {
    for r in releases {
        writeln!(
            out,
            "release: {} {} {}: {} images, {} blobs, {} bytes ({} new, {} shared with {against}), {} signatures",
            pinbundle::text::Shown(&r.version),
            pinbundle::text::Shown(&r.architecture),
            r.digest,
            r.images,
            r.blobs,
            r.bytes,
            r.bytes_new,
            r.bytes_shared,
            r.signatures
        )?;
    }
    Ok(())
}
