//! pinbundle's integration tests: one binary, modules per command.

mod bundle;
mod create;
mod hostile;
mod load;
mod util;
