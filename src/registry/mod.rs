//! The OCI distribution API: [`client`] pulls for `create` (with credentials from [`auth`]);
//! the read-only server for `load` comes with it.

pub mod auth;
pub mod client;

pub use client::{ClientOptions, Error, RawManifest, RegistryClient};
