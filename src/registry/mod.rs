//! The OCI distribution API: [`client`] pulls for `create` (with credentials from [`auth`]);
//! [`server`] serves a bundle read-only for `load` (and `serve`).

pub mod auth;
pub mod client;
pub mod server;

pub use client::{ClientOptions, Error, RawManifest, RegistryClient};
