//! pinbundle's integration tests: one binary, modules per command.

mod bundle;
mod create;
mod load;
mod sign;
mod util;
