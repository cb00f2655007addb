//! The binary's own modules (declared by `src/main.rs`, not part of the library): one file
//! per subcommand or concern, each with its clap arguments, the call into the library and the
//! rendering of its report. `main.rs` keeps the top-level parser and the exit codes.

pub mod completions;
pub mod lifecycle;
pub mod logging;
pub mod manifests;
pub mod node;
pub mod push;
pub mod serve;
pub mod version;
