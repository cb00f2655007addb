//! `serve cert-gen`: a private CA and a server certificate signed by it, for a site registry
//! that nodes reach by the names and addresses given (`--advertise`).
//!
//! The CA is valid for ten years, the server certificate for 825 days (the longest that
//! Apple's and browsers' rules accept, and what many site registries use). Keys are ECDSA
//! P-256, written mode 0600; nothing is overwritten unless asked.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Days the server certificate is valid.
pub const SERVER_DAYS: i64 = 825;
/// Days the CA is valid.
pub const CA_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path} exists (give --force to replace it)")]
    Exists { path: PathBuf },
    #[error("no --advertise name or address")]
    NoNames,
    #[error("cannot make the certificates")]
    Generate(#[source] rcgen::Error),
    #[error(transparent)]
    Atomic(#[from] crate::atomic::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The files written.
#[derive(Debug, Clone)]
pub struct Generated {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// The subject alternative names, as given.
    pub names: Vec<String>,
}

/// Writes `ca.crt`, `ca.key`, `server.crt` and `server.key` into `dir` (created if missing).
pub fn generate(dir: &Path, advertise: &[String], force: bool) -> Result<Generated, Error> {
    if advertise.is_empty() {
        return Err(Error::NoNames);
    }
    let out = Generated {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        names: advertise.to_vec(),
    };
    let all = [&out.ca_cert, &out.ca_key, &out.server_cert, &out.server_key];
    if !force && let Some(p) = all.iter().find(|p| p.exists()) {
        return Err(Error::Exists {
            path: p.to_path_buf(),
        });
    }
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().map_err(Error::Generate)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(Error::Generate)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "pinbundle serve CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(CA_DAYS);
    let ca_cert = ca.self_signed(&ca_key).map_err(Error::Generate)?;
    let issuer = Issuer::new(ca, &ca_key);

    let key = KeyPair::generate().map_err(Error::Generate)?;
    // rcgen makes an IP address SAN of what parses as one, a DNS name otherwise.
    let mut server = CertificateParams::new(advertise.to_vec()).map_err(Error::Generate)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, advertise[0].as_str());
    server.distinguished_name = dn;
    server.is_ca = IsCa::ExplicitNoCa;
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.not_before = now - time::Duration::hours(1);
    server.not_after = now + time::Duration::days(SERVER_DAYS);
    let server_cert = server.signed_by(&key, &issuer).map_err(Error::Generate)?;

    fs_err::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write(&out.ca_key, ca_key.serialize_pem().as_bytes(), 0o600)?;
    write(&out.server_key, key.serialize_pem().as_bytes(), 0o600)?;
    write(&out.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write(&out.server_cert, server_cert.pem().as_bytes(), 0o644)?;
    Ok(out)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let (staged, mut file) = crate::atomic::Stage::new(path).mode(mode).create()?;
    file.write_all(bytes).map_err(|e| staged.write_error(e))?;
    staged.commit(file)?;
    Ok(())
}
