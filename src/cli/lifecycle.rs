//! `list`, `unpin` and `prune`: what pinbundle pinned and loaded on this node, taking pins
//! away, and removing the images nothing pins any more.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use pinbundle::lifecycle::{list, prune, unpin};
use pinbundle::progress::Reporter;
use pinbundle::text::Shown;

use super::node::{NodeArgs, ReloadArgs};

/// Show the pins of pinbundle's drop-in and the images pinbundle loaded: for each, whether
/// the store has it, whether a load of pinbundle put it there, and whether CRI-O reports it
/// pinned (`unknown` when its CRI socket is not there).
#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Print as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Remove pins from pinbundle's drop-in, reload CRI-O and confirm it no longer pins them.
///
/// Only pinbundle's drop-in is edited, atomically; a REF that another file pins is refused
/// (exit 1), naming the file, and nothing changes. The images stay in the store: `prune`
/// removes those pinbundle loaded. Exit codes: 0 unpinned and confirmed; 1 refused or not
/// confirmed; 2 operational error.
#[derive(Args, Debug)]
pub struct UnpinArgs {
    /// A bundle file (all its images' pins) or an exact `name@sha256:…` reference.
    #[arg(required = true, value_name = "BUNDLE|REF")]
    targets: Vec<String>,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    reload: ReloadArgs,
    /// Do not ask CRI-O whether the pins are gone.
    #[arg(long)]
    no_confirm: bool,
    /// Say what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The lock file that serialises loads.
    #[arg(long, value_name = "FILE", default_value = pinbundle::load::DEFAULT_LOCK)]
    lock_file: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Remove from the store the images pinbundle loaded that nothing pins any more.
///
/// An image is removed only when the record of loads says pinbundle added it, no file of
/// CRI-O's configuration pins any of its names, it has no name pinbundle did not give it, and
/// no container in the store uses it. Images that were there before a load are never
/// removed. Exit codes: 0 done; 2 an image could not be removed or an operational error.
#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Say what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The lock file that serialises loads.
    #[arg(long, value_name = "FILE", default_value = pinbundle::load::DEFAULT_LOCK)]
    lock_file: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run_list(a: ListArgs) -> Result<ExitCode> {
    let report = list::list(&a.node.options())?;
    crate::show(a.json, &report, print_list)?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_unpin(a: UnpinArgs, reporter: &dyn Reporter) -> Result<ExitCode> {
    let opts = unpin::UnpinOptions {
        node: a.node.options(),
        targets: a.targets,
        dry_run: a.dry_run,
        no_confirm: a.no_confirm,
        reload: a.reload.mode(),
        reload_env: a.reload.env(),
        lock: a.lock_file,
    };
    let report = unpin::unpin(&opts, reporter)?;
    crate::show(a.json, &report, print_unpin)?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn run_prune(a: PruneArgs, reporter: &dyn Reporter) -> Result<ExitCode> {
    let opts = prune::PruneOptions {
        node: a.node.options(),
        dry_run: a.dry_run,
        skopeo: pinbundle::load::storage::Skopeo::new(),
        lock: a.lock_file,
    };
    let report = prune::prune(&opts, reporter)?;
    crate::show(a.json, &report, print_prune)?;
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn print_list(
    out: &mut dyn Write,
    err: &mut dyn Write,
    r: &list::ListReport,
) -> std::io::Result<()> {
    writeln!(
        out,
        "drop-in {}; store {} ({})",
        crate::shown_path(&r.drop_in),
        crate::shown_path(&r.store.root),
        Shown(&r.store.driver)
    )?;
    if r.entries.is_empty() {
        writeln!(out, "nothing pinned or loaded by pinbundle")?;
    } else {
        writeln!(
            out,
            "{:<10} {:<8} {:<7} {:<10} PIN",
            "DROP-IN", "PRESENT", "LOADED", "CRI-O"
        )?;
    }
    for e in &r.entries {
        writeln!(
            out,
            "{:<10} {:<8} {:<7} {:<10} {}",
            if e.in_drop_in { "pinned" } else { "-" },
            yes_no(e.present),
            yes_no(e.loaded_by_pinbundle),
            e.crio.as_str(),
            Shown(&e.pin)
        )?;
    }
    for w in &r.warnings {
        writeln!(err, "warning: {}", Shown(w))?;
    }
    Ok(())
}

fn print_unpin(
    out: &mut dyn Write,
    err: &mut dyn Write,
    r: &unpin::UnpinReport,
) -> std::io::Result<()> {
    if !r.refused.is_empty() {
        writeln!(err, "refused, nothing was changed:")?;
        for why in &r.refused {
            writeln!(err, "  {}", Shown(why))?;
        }
        return Ok(());
    }
    let verb = if r.dry_run { "would-unpin" } else { "unpinned" };
    for p in &r.removed {
        writeln!(out, "{verb} {}", Shown(p))?;
    }
    for p in &r.not_pinned {
        writeln!(out, "not-pinned {}", Shown(p))?;
    }
    if r.removed.is_empty() {
        writeln!(out, "nothing to unpin")?;
    } else {
        writeln!(
            out,
            "{}: {} pin(s) left",
            crate::shown_path(&r.drop_in),
            r.remaining.len()
        )?;
    }
    if let Some(reload) = &r.reload {
        writeln!(out, "reload: {}", Shown(reload))?;
    }
    match r.confirmed {
        Some(true) => writeln!(out, "CRI-O no longer pins them")?,
        Some(false) => {
            writeln!(err, "not confirmed that CRI-O dropped the pins")?;
            for p in &r.still_pinned {
                writeln!(err, "  still pinned: {}", Shown(p))?;
            }
        }
        None => {}
    }
    for w in &r.warnings {
        writeln!(err, "warning: {}", Shown(w))?;
    }
    Ok(())
}

fn print_prune(
    out: &mut dyn Write,
    err: &mut dyn Write,
    r: &prune::PruneReport,
) -> std::io::Result<()> {
    let verb = if r.dry_run { "would-remove" } else { "removed" };
    for i in &r.removed {
        writeln!(
            out,
            "{verb} {} (image {})",
            Shown(&i.names.join(", ")),
            short(&i.image_id)
        )?;
    }
    for k in &r.kept {
        writeln!(
            out,
            "kept {} (image {}): {}",
            Shown(&k.pins.join(", ")),
            short(&k.image_id),
            Shown(&k.reason)
        )?;
    }
    for f in &r.forgotten {
        writeln!(out, "forgotten {} (no longer in the store)", Shown(f))?;
    }
    if r.removed.is_empty() && r.kept.is_empty() && r.forgotten.is_empty() {
        writeln!(out, "nothing pinbundle loaded is in this store")?;
    }
    for e in &r.errors {
        writeln!(err, "error: {}", Shown(e))?;
    }
    Ok(())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
