//! `pinbundle load`: verify, import into containers-storage, pin, reload CRI-O, confirm.
