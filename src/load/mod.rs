//! `pinbundle load`: verify, import into containers-storage, pin, reload CRI-O, confirm.
//!
//! [`storage`] holds every `skopeo` invocation (containers-storage is written only through
//! skopeo, the canonical writer).

pub mod storage;
