//! `pinbundle version`: what was built, from what, when and with what (set by build.rs).

use std::io::Write;

use clap::Args;
use serde::Serialize;

/// The version of `version --json`'s document.
pub const JSON_VERSION: u32 = 1;

/// Show the version, git commit and dates of this build, its target and compiler.
#[derive(Args, Debug)]
pub struct VersionArgs {
    /// Print as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What `version` reports.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionReport {
    pub version: u32,
    pub pinbundle: &'static str,
    /// Short commit, `+dirty` when the tree had changes; `unknown` outside git.
    pub commit: &'static str,
    /// The commit's date (ISO 8601), `unknown` outside git.
    pub commit_date: &'static str,
    /// When it was built (UTC, from SOURCE_DATE_EPOCH when set).
    pub build_date: String,
    pub target: &'static str,
    pub rustc: &'static str,
}

impl VersionReport {
    pub fn get() -> VersionReport {
        VersionReport {
            version: JSON_VERSION,
            pinbundle: env!("CARGO_PKG_VERSION"),
            commit: env!("PINBUNDLE_COMMIT"),
            commit_date: env!("PINBUNDLE_COMMIT_DATE"),
            build_date: build_date(env!("PINBUNDLE_BUILD_EPOCH")),
            target: env!("PINBUNDLE_TARGET"),
            rustc: env!("PINBUNDLE_RUSTC"),
        }
    }
}

/// The build's epoch seconds as an RFC 3339 date (build.rs has no date formatter).
fn build_date(epoch: &str) -> String {
    epoch
        .parse::<i64>()
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `--version`'s line: `0.1.0 (abc1234 2026-12-01T10:00:00+00:00)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("PINBUNDLE_COMMIT"),
    " ",
    env!("PINBUNDLE_COMMIT_DATE"),
    ")"
);

pub fn print(out: &mut dyn Write, r: &VersionReport) -> std::io::Result<()> {
    writeln!(out, "pinbundle {}", r.pinbundle)?;
    writeln!(out, "commit:      {}", r.commit)?;
    writeln!(out, "commit date: {}", r.commit_date)?;
    writeln!(out, "build date:  {}", r.build_date)?;
    writeln!(out, "target:      {}", r.target)?;
    writeln!(out, "rustc:       {}", r.rustc)
}
