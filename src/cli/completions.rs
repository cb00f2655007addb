//! `pinbundle completions SHELL` and `pinbundle man --out-dir DIR`, both generated from the
//! same clap command as the parser, so they never drift from it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

/// Print a shell completion script on stdout (`pinbundle completions bash >
/// /etc/bash_completion.d/pinbundle`).
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Write the man pages: pinbundle.1 and pinbundle-SUBCOMMAND.1 for each subcommand.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// The directory to write them in (created when missing).
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
}

/// The script, in memory: clap_complete panics on a write error, and `| head` is not one.
pub fn completions(cmd: &mut clap::Command, a: &CompletionsArgs) -> Vec<u8> {
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(a.shell, cmd, name, &mut script);
    script
}

/// Writes every page, returning the files written.
pub fn man(cmd: clap::Command, out_dir: &Path) -> Result<Vec<PathBuf>> {
    fs_err::create_dir_all(out_dir)?;
    let mut cmd = cmd;
    cmd.build();
    let mut written = vec![page(&cmd, out_dir, "pinbundle")?];
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("pinbundle-{}", sub.get_name());
        // The page's title and synopsis say `pinbundle-create`, as git's and podman's do.
        // clap names are `&'static str` here; a one-shot command can leak a few.
        let sub = sub
            .clone()
            .name(&*name.clone().leak())
            .bin_name(&*format!("pinbundle {}", sub.get_name()).leak());
        written.push(page(&sub, out_dir, &name)?);
    }
    Ok(written)
}

fn page(cmd: &clap::Command, dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.1"));
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut buf)
        .with_context(|| format!("rendering {}", path.display()))?;
    fs_err::write(&path, buf)?;
    Ok(path)
}
