//! `-v`/`-q`/`--log-level` and `RUST_LOG`: the library's `tracing` events on stderr.
//!
//! Quiet by default (warnings and errors only). A flag wins over `RUST_LOG`, which is read
//! only when no flag is given, so a stray environment variable cannot hide `-q`.

use clap::Args;
use tracing_subscriber::EnvFilter;

/// The global verbosity flags.
#[derive(Args, Debug, Clone, Default)]
pub struct Verbosity {
    /// Log more on stderr: -v what pinbundle does (info), -vv each request, command and
    /// retry (debug), -vvv everything (trace). Default: warnings and errors.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = "Global options", conflicts_with = "quiet")]
    verbose: u8,
    /// Print only errors and warnings: no progress, no notices, no log below warn.
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub quiet: bool,
    /// Log filter, overriding -v/-q and RUST_LOG: a level (error, warn, info, debug, trace)
    /// or tracing directives (`pinbundle=debug,hyper=info`).
    #[arg(long, value_name = "LEVEL", global = true, help_heading = "Global options", value_parser = parse_filter)]
    log_level: Option<String>,
}

fn parse_filter(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("invalid log filter {s:?}: {e}"))
}

impl Verbosity {
    /// The filter the flags and `RUST_LOG` ask for.
    fn filter(&self) -> EnvFilter {
        // Validated by clap; an EnvFilter is not Clone, so it is parsed again here.
        if let Some(f) = self
            .log_level
            .as_deref()
            .and_then(|f| EnvFilter::try_new(f).ok())
        {
            return f;
        }
        let ours = match (self.quiet, self.verbose) {
            (true, _) => Some("error"),
            (false, 0) => None,
            (false, 1) => Some("warn,pinbundle=info"),
            (false, 2) => Some("warn,pinbundle=debug"),
            (false, _) => Some("trace"),
        };
        if let Some(f) = ours {
            return EnvFilter::new(f);
        }
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"))
    }

    /// Installs the subscriber: plain lines on stderr (colour only on a terminal), so stdout
    /// stays the report and `--json`.
    pub fn init(&self) {
        use std::io::IsTerminal;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(self.filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(true)
            .try_init();
    }
}
