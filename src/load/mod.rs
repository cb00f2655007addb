//! `pinbundle load`: verify, import into containers-storage, pin, reload CRI-O, confirm.
//!
//! [`run`] is the sequence, in phases (verify → plan → apply); [`plan`] holds the plan's pure
//! decisions and [`report`] what a load says. [`storage`] is deliberately the one place that
//! drives skopeo against containers-storage; [`pins`] owns the CRI-O drop-in; [`space`] decides
//! whether the images fit; [`reload`] signals CRI-O; [`cri`] and [`confirm`] ask it what it
//! sees.

pub mod confirm;
pub mod cri;
pub mod crio_config;
pub mod pins;
pub mod plan;
pub mod policy;
pub mod reload;
pub mod report;
pub mod run;
pub mod space;
pub mod storage;
pub mod store_config;

pub use report::{CriResult, ImageResult, ImageStatus, LoadReport, PinsResult};
pub use run::{DEFAULT_CRI_SOCKET, DEFAULT_DROP_IN, DEFAULT_LOCK, LoadOptions, load};
