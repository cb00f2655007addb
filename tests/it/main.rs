//! pinbundle's integration tests: one binary, modules per command.

// Test code: a failing std::fs call panics with the path in the test's own message.
#![allow(clippy::disallowed_methods)]

mod bundle;
mod cli;
mod client;
mod conventions;
mod crash;
mod create;
mod delta;
mod hostile;
mod hostile_registry;
mod lifecycle;
mod load;
mod load_order;
mod load_pins;
mod load_policy;
mod load_space;
mod load_store;
mod mirror;
mod ops;
mod oracle;
mod plan;
mod push;
mod rehashed;
mod release;
mod reserialise;
mod rollback;
mod serve;
mod serve_hostile;
mod server;
mod sign;
mod snapshot;
mod stick;
mod text;
mod util;
mod volumes;
