//! `pinbundle load`: verify, import into containers-storage, pin, reload CRI-O, confirm.

pub mod confirm;
pub mod cri;
pub mod pins;
pub mod reload;
