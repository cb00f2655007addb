//! The OCI distribution API: [`client`] pulls for `create`; the read-only server for `load`
//! comes with it.
