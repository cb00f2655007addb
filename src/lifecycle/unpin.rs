//! `pinbundle unpin BUNDLE|REF…`: removes pins from pinbundle's drop-in (never another file's),
//! atomically, reloads CRI-O as `load` does, and confirms CRI-O no longer pins them.
//!
//! Refused, with nothing changed: a REF that is not `name@sha256:…`, one pinned only by
//! another file (named), and one that another file also pins and whose list pinbundle's
//! drop-in replaces (removing it from ours would unpin it against that file).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{CriPinned, NodeOptions};
use crate::bundle::{BundleSet, SetOptions};
use crate::error::error_chain;
use crate::load::{confirm, pins, reload};
use crate::reference::Reference;

#[derive(Debug, Clone)]
pub struct UnpinOptions {
    pub node: NodeOptions,
    /// Bundle files (their images' pins) or `name@sha256:…` references.
    pub targets: Vec<String>,
    pub dry_run: bool,
    pub no_confirm: bool,
    pub reload: reload::ReloadMode,
    pub reload_env: reload::ReloadEnv,
    /// The load lock: unpin waits for a running load.
    pub lock: PathBuf,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnpinReport {
    pub version: u32,
    pub dry_run: bool,
    pub drop_in: PathBuf,
    /// The pins removed from the drop-in (or that would be, with `--dry-run`).
    pub removed: Vec<String>,
    /// A bundle's images that no file pins: nothing to do.
    pub not_pinned: Vec<String>,
    /// Why nothing was changed; empty when the input was accepted.
    pub refused: Vec<String>,
    /// The drop-in's entries afterwards.
    pub remaining: Vec<String>,
    pub reload: Option<String>,
    /// CRI-O reports none of `removed` pinned; `None` when it was not asked.
    pub confirmed: Option<bool>,
    /// Removed pins CRI-O still reports pinned at the deadline.
    pub still_pinned: Vec<String>,
    /// Removed pins that a pattern left in the list still pins (not waited for).
    pub still_matched: Vec<String>,
    pub warnings: Vec<String>,
}

impl UnpinReport {
    pub fn ok(&self) -> bool {
        self.refused.is_empty() && self.confirmed != Some(false)
    }
}

/// Runs `unpin`.
///
/// # Errors
/// Operational failures: CRI-O's configuration, a bundle or the drop-in cannot be read or
/// written. A refused REF is a report with `refused` set.
pub fn unpin(opts: &UnpinOptions, reporter: &dyn crate::progress::Reporter) -> Result<UnpinReport> {
    let node = &opts.node;
    let mut report = UnpinReport {
        version: 1,
        dry_run: opts.dry_run,
        drop_in: node.drop_in.clone(),
        ..UnpinReport::default()
    };
    let wanted = targets(&opts.targets, &mut report.refused)?;
    let _lock = if opts.dry_run {
        None
    } else {
        Some(crate::load::run::lock(&opts.lock, reporter)?)
    };
    let crio = node.crio()?;
    // The same checks as load: every file parses, no later file replaces our list.
    pins::plan(&crio, &node.crio_config_dir, &node.drop_in, &[])?;
    let ours = node.drop_in_entries(&crio);
    let others: Vec<(PathBuf, Vec<String>)> = super::pin_files(&crio)
        .into_iter()
        .filter(|(f, _)| *f != node.drop_in)
        .collect();
    for (pin, explicit) in wanted {
        let elsewhere: Vec<String> = others
            .iter()
            .filter(|(_, l)| l.contains(&pin))
            .map(|(f, _)| format!("`{}`", f.display()))
            .collect();
        match (ours.contains(&pin), elsewhere.is_empty()) {
            (true, true) => {
                if !report.removed.contains(&pin) {
                    report.removed.push(pin);
                }
            }
            (true, false) => report.refused.push(format!(
                "{pin} is also pinned by {}, whose list `{}` replaces: removing it there first keeps that file's intent",
                elsewhere.join(", "),
                node.drop_in.display()
            )),
            (false, false) => report.refused.push(format!(
                "{pin} is pinned by {}, not by pinbundle's `{}`; pinbundle does not edit other files",
                elsewhere.join(", "),
                node.drop_in.display()
            )),
            (false, true) if explicit => report.refused.push(format!(
                "{pin} is not pinned by `{}`",
                node.drop_in.display()
            )),
            (false, true) => report.not_pinned.push(pin),
        }
    }
    report.remaining = ours
        .iter()
        .filter(|e| !report.removed.contains(e))
        .cloned()
        .collect();
    if !report.refused.is_empty() {
        report.removed.clear();
        report.remaining = ours;
        return Ok(report);
    }
    // A pattern left in the list keeps pinning what it matches: said, and not waited for.
    let patterns: Vec<&String> = report
        .remaining
        .iter()
        .chain(others.iter().flat_map(|(_, l)| l))
        .filter(|e| e.contains('*'))
        .collect();
    for pin in &report.removed {
        if let Some(p) = patterns.iter().find(|p| super::pattern_pins(p, pin)) {
            report.still_matched.push(pin.clone());
            report.warnings.push(format!(
                "{pin} stays pinned by the pattern \"{p}\" until that entry goes"
            ));
        }
    }
    if opts.dry_run || report.removed.is_empty() {
        return Ok(report);
    }
    write(&node.drop_in, &report.remaining)?;
    settle(opts, &mut report)?;
    Ok(report)
}

/// The pins the arguments name, each with whether it was named explicitly (a REF) rather
/// than through a bundle. A malformed REF is refused.
fn targets(args: &[String], refused: &mut Vec<String>) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    for arg in args {
        let path = Path::new(arg);
        if path.is_file() || path.is_dir() {
            let set = BundleSet::open(
                &[path.to_path_buf()],
                SetOptions {
                    allow_partial: false,
                    find_siblings: true,
                },
            )
            .with_context(|| format!("reading the bundle {}", path.display()))?;
            out.extend(
                set.manifest()
                    .images
                    .iter()
                    .map(|i| (format!("{}@{}", i.name, i.digest), false)),
            );
            continue;
        }
        match arg.parse::<Reference>() {
            Ok(r) if r.tag().is_none() && r.digest().is_some() => {
                out.push((r.to_string(), true));
            }
            _ => refused.push(format!(
                "`{arg}` is neither a bundle file nor an exact `name@sha256:…` reference"
            )),
        }
    }
    Ok(out)
}

/// The drop-in with `entries`, atomically; no file at all when none are left (as MCO does).
fn write(drop_in: &Path, entries: &[String]) -> Result<()> {
    if entries.is_empty() {
        fs_err::remove_file(drop_in)?;
        crate::atomic::sync_dir(&crate::atomic::parent_dir(drop_in))?;
        return Ok(());
    }
    pins::write_atomic(drop_in, &pins::render(entries))?;
    Ok(())
}

/// Reloads CRI-O (a restart on releases whose reload ignores pin changes) and waits until it
/// no longer reports the removed pins pinned.
fn settle(opts: &UnpinOptions, report: &mut UnpinReport) -> Result<()> {
    let node = &opts.node;
    let socket = node.cri_socket.exists() && !opts.no_confirm;
    let rt = super::runtime()?;
    let version = if socket {
        rt.block_on(confirm::runtime_version(&node.cri_socket, node.timeout))
            .ok()
    } else {
        None
    };
    let restart = version
        .as_ref()
        .and_then(|v| confirm::version_issue(&v.runtime_name, &v.runtime_version))
        .is_some_and(confirm::VersionIssue::needs_restart);
    match reload::reload_or_restart(opts.reload, &opts.reload_env, restart) {
        Ok(reload::ReloadOutcome::Systemd) => report.reload = Some("systemctl reload crio".into()),
        Ok(reload::ReloadOutcome::Signalled { pid }) => {
            report.reload = Some(format!("SIGHUP to crio (pid {pid})"));
        }
        Ok(reload::ReloadOutcome::Restarted) => {
            report.reload = Some("systemctl restart crio".into());
        }
        Ok(reload::ReloadOutcome::Skipped { command }) => {
            report.warnings.push(format!(
                "CRI-O was not reloaded; run `{command}` to drop the pins"
            ));
            report.reload = Some(format!("skipped: run `{command}`"));
        }
        Err(e) => report.warnings.push(format!(
            "the pins were removed from `{}` but CRI-O could not be reloaded: {}",
            node.drop_in.display(),
            error_chain(&e)
        )),
    }
    if opts.no_confirm {
        report
            .warnings
            .push("--no-confirm: CRI-O was not asked whether the pins are gone".to_string());
        return Ok(());
    }
    if !socket {
        report.confirmed = Some(false);
        report.warnings.push(format!(
            "no CRI socket at `{}`: not confirmed that CRI-O dropped the pins (pass --no-confirm not to ask)",
            node.cri_socket.display()
        ));
        return Ok(());
    }
    let start = Instant::now();
    loop {
        let asked = rt.block_on(super::cri_pinned(
            &node.cri_socket,
            node.timeout,
            &report.removed,
        ));
        let still: Vec<String> = match &asked {
            Ok((_, states)) => report
                .removed
                .iter()
                .zip(states)
                .filter(|(p, s)| **s == CriPinned::Pinned && !report.still_matched.contains(p))
                .map(|(p, _)| p.clone())
                .collect(),
            Err(_) => report.removed.clone(),
        };
        if asked.is_ok() && still.is_empty() {
            report.confirmed = Some(true);
            return Ok(());
        }
        if start.elapsed() >= node.timeout {
            if let Err(e) = asked {
                report.warnings.push(format!(
                    "could not ask CRI-O at `{}`: {}",
                    node.cri_socket.display(),
                    error_chain(&e)
                ));
            }
            report.confirmed = Some(false);
            report.still_pinned = still;
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
