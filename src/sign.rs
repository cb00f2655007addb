//! Bundle signatures: minisign keys and signatures over `pinbundle.json`.
//!
//! Keys and signature files are minisign's formats, so stock `minisign -V` checks what pinbundle
//! signs and pinbundle uses keys made by `minisign -G`. The `minisign` crate reads and writes the
//! key files (including password-encrypted secret keys) and verifies signatures. Signing is
//! done here with RFC 8032 Ed25519 (`ring`), which is deterministic: the crate's signer adds
//! random noise to every signature, and a bundle must be byte-identical for equal inputs.
//!
//! A signature file is four lines (minisign's "prehashed" algorithm `ED`):
//! `untrusted comment: …`, base64(`ED` ‖ key id ‖ Ed25519(BLAKE2b-512(data))),
//! `trusted comment: …`, base64(Ed25519(signature ‖ trusted comment)).

use std::fmt;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use blake2::Digest as _;

/// The default directory of trusted public keys on a node (`*.pub`, minisign format).
pub const DEFAULT_TRUSTED_DIR: &str = "/etc/pinbundle/trusted.d";
/// The environment variable that may hold a secret key's password.
pub const PASSWORD_ENV: &str = "PINBUNDLE_KEY_PASSWORD";

pub use crate::bundle::format::MAX_SIGNATURE_LEN;
/// The largest key file accepted.
const MAX_KEY_FILE_LEN: u64 = 4096;

const SECRET_KEY_COMMENT: &str = "minisign encrypted secret key";
const UNENCRYPTED_SECRET_KEY_COMMENT: &str = "minisign secret key (unencrypted)";
/// Offsets in minisign's secret key bytes: sig alg, kdf alg, chk alg, salt (32), opslimit (8),
/// memlimit (8), key id (8), Ed25519 secret key (seed ‖ public key, 64), checksum (32).
const SK_KDF_ALG: std::ops::Range<usize> = 2..4;
const SK_KEY_ID: std::ops::Range<usize> = 54..62;
const SK_SEED: std::ops::Range<usize> = 62..94;
const SK_PUBLIC: std::ops::Range<usize> = 94..126;
const SK_LEN: usize = 158;

/// What can go wrong with keys and signatures. Each variant names the file or key ids involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already exists; remove it or choose another name", path.display())]
    Exists { path: PathBuf },
    #[error("{} is not a minisign public key: {detail}", path.display())]
    BadPublicKey { path: PathBuf, detail: String },
    #[error("{} is not a minisign secret key: {detail}", path.display())]
    BadSecretKey { path: PathBuf, detail: String },
    #[error("{} is password-protected; give --password-file or set {PASSWORD_ENV}", path.display())]
    PasswordNeeded { path: PathBuf },
    #[error("cannot decrypt {}: wrong password, or the key file is damaged", path.display())]
    WrongPassword { path: PathBuf },
    #[error("generating a key pair failed: {detail}")]
    Generate { detail: String },
    #[error("the bundle signature is malformed: {detail}")]
    BadSignatureFile { detail: String },
    #[error(
        "the bundle is signed by key {found}, which is not trusted (trusted: {})",
        list(trusted)
    )]
    Untrusted { found: KeyId, trusted: Vec<KeyId> },
    #[error(
        "the bundle's signature by key {key} does not match its pinbundle.json (altered, or the signature of another bundle)"
    )]
    BadSignature { key: KeyId },
    #[error(
        "the bundle is not signed, and a signature is required (trusted keys: {})",
        list(trusted)
    )]
    Unsigned { trusted: Vec<KeyId> },
}

fn list(ids: &[KeyId]) -> String {
    if ids.is_empty() {
        return "none".into();
    }
    ids.iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A minisign key id: 8 bytes, shown as minisign shows it (16 uppercase hex digits of the
/// little-endian number), e.g. `3C1F4E0A9B2D7781`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Who signed a bundle.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignatureInfo {
    /// The signer's key id, as minisign shows it.
    pub key_id: KeyId,
    /// The signed comment (creation time, image count, manifest digest).
    pub trusted_comment: String,
    /// The trusted public key file that verified the signature; `null` when no trusted key
    /// was given (the signature was then only checked to be well-formed) or it failed.
    pub verified_by: Option<PathBuf>,
}

fn key_id(bytes: &[u8]) -> KeyId {
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[..8]);
    KeyId(id)
}

/// A public key trusted to sign bundles, and the file it came from.
#[derive(Clone, Debug)]
pub struct TrustedKey {
    pub id: KeyId,
    pub path: PathBuf,
    key: minisign::PublicKey,
}

impl TrustedKey {
    /// Reads a minisign public key file (`untrusted comment: …` and a base64 line).
    pub fn read(path: &Path) -> Result<TrustedKey, Error> {
        let text = read_small(path)?;
        let bad = |detail: String| Error::BadPublicKey {
            path: path.to_path_buf(),
            detail,
        };
        let key = minisign::PublicKey::from_box(text.into()).map_err(|e| bad(e.to_string()))?;
        let bytes = key.to_bytes();
        if bytes.len() != 42 || &bytes[..2] != b"Ed" {
            return Err(bad("not an Ed25519 key".into()));
        }
        Ok(TrustedKey {
            id: key_id(key.keynum()),
            path: path.to_path_buf(),
            key,
        })
    }
}

/// Reads every `*.pub` file of `dir`, in name order. A missing directory holds no keys.
pub fn read_trusted_dir(dir: &Path) -> Result<Vec<TrustedKey>, Error> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    // std::fs deliberately: the typed error names the path; fs-err would repeat it.
    #[allow(clippy::disallowed_methods)]
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut paths = Vec::new();
    for e in entries {
        let p = e.map_err(io)?.path();
        if p.extension().is_some_and(|x| x == "pub") && p.is_file() {
            paths.push(p);
        }
    }
    paths.sort();
    paths.iter().map(|p| TrustedKey::read(p)).collect()
}

/// Reads the trust keys named explicitly and those of `dir` (when given).
pub fn read_trusted(files: &[PathBuf], dir: Option<&Path>) -> Result<Vec<TrustedKey>, Error> {
    let mut keys: Vec<TrustedKey> = files
        .iter()
        .map(|p| TrustedKey::read(p))
        .collect::<Result<_, _>>()?;
    if let Some(dir) = dir {
        keys.extend(read_trusted_dir(dir)?);
    }
    Ok(keys)
}

fn read_small(path: &Path) -> Result<String, Error> {
    read_small_with(path).map(|(text, _)| text)
}

/// A key or password file: a regular file (a FIFO or device is refused, never waited on or
/// read forever) of at most [`MAX_KEY_FILE_LEN`] bytes, with its metadata.
fn read_small_with(path: &Path) -> Result<(String, std::fs::Metadata), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let (bytes, meta) = crate::input::read_regular_with(path, MAX_KEY_FILE_LEN).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8 text",
        ))
    })?;
    Ok((text, meta))
}

/// The first line of a password file (read as `read_small_with` reads key files), and its
/// mode when group or others may read it.
pub fn read_password_file(path: &Path) -> Result<(String, Option<u32>), Error> {
    let (text, meta) = read_small_with(path)?;
    let line = text.lines().next().unwrap_or("").to_string();
    Ok((line, crate::input::shared_read_bits(&meta)))
}

/// A secret key file as read, before any password is applied.
#[derive(Clone)]
pub struct SecretKeyFile {
    path: PathBuf,
    text: String,
    /// The decoded key line (secret material only when not encrypted).
    raw: Vec<u8>,
    encrypted: bool,
    /// The file's mode, when group or others may read it.
    shared_mode: Option<u32>,
}

impl fmt::Debug for SecretKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKeyFile")
            .field("path", &self.path)
            .field("encrypted", &self.encrypted)
            .finish_non_exhaustive()
    }
}

impl SecretKeyFile {
    /// Reads a minisign secret key file (made by `pinbundle keygen` or `minisign -G`).
    pub fn read(path: &Path) -> Result<SecretKeyFile, Error> {
        let (text, meta) = read_small_with(path)?;
        let bad = |detail: &str| Error::BadSecretKey {
            path: path.to_path_buf(),
            detail: detail.into(),
        };
        let line = text
            .lines()
            .nth(1)
            .ok_or_else(|| bad("expected an untrusted comment line and a base64 line"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(line.trim())
            .map_err(|_| bad("the key line is not base64"))?;
        if bytes.len() != SK_LEN || &bytes[..2] != b"Ed" {
            return Err(bad("not an Ed25519 secret key"));
        }
        let encrypted = match &bytes[SK_KDF_ALG] {
            [0, 0] => false,
            b"Sc" => true,
            _ => return Err(bad("unknown key encryption (expected scrypt or none)")),
        };
        Ok(SecretKeyFile {
            path: path.to_path_buf(),
            text,
            raw: bytes,
            encrypted,
            shared_mode: crate::input::shared_read_bits(&meta),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's mode when group or others may read it (the caller warns: a secret key
    /// should be 0600).
    pub fn shared_mode(&self) -> Option<u32> {
        self.shared_mode
    }

    /// Whether the key needs a password.
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// Decrypts the key (`password` is required exactly when [`Self::is_encrypted`]).
    pub fn unlock(&self, password: Option<&str>) -> Result<SigningKey, Error> {
        let bad = |detail: String| Error::BadSecretKey {
            path: self.path.clone(),
            detail,
        };
        if !self.encrypted {
            // Read directly: stock minisign 0.11 (`-G -W`) leaves the checksum of unencrypted
            // keys zero, which the crate refuses; `from_raw` checks instead that the secret and
            // public halves match.
            return SigningKey::from_raw(&self.raw).map_err(bad);
        }
        let password = password.ok_or_else(|| Error::PasswordNeeded {
            path: self.path.clone(),
        })?;
        let sk_box =
            minisign::SecretKeyBox::from_string(&self.text).map_err(|e| bad(e.to_string()))?;
        // `Some` never prompts.
        let sk =
            minisign::SecretKey::from_box(sk_box, Some(password.to_string())).map_err(|_| {
                Error::WrongPassword {
                    path: self.path.clone(),
                }
            })?;
        SigningKey::from_raw(&sk.to_bytes()).map_err(bad)
    }
}

/// A decrypted secret key, ready to sign. Its `Debug` shows only the key id.
#[derive(Clone)]
pub struct SigningKey {
    id: KeyId,
    seed: [u8; 32],
    public: [u8; 32],
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.id)
    }
}

impl SigningKey {
    /// From minisign's decrypted secret key bytes.
    fn from_raw(bytes: &[u8]) -> Result<SigningKey, String> {
        if bytes.len() != SK_LEN {
            return Err("unexpected secret key length".into());
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[SK_SEED]);
        let mut public = [0u8; 32];
        public.copy_from_slice(&bytes[SK_PUBLIC]);
        let key = SigningKey {
            id: key_id(&bytes[SK_KEY_ID]),
            seed,
            public,
        };
        key.keypair()?;
        Ok(key)
    }

    fn keypair(&self) -> Result<ring::signature::Ed25519KeyPair, String> {
        ring::signature::Ed25519KeyPair::from_seed_and_public_key(&self.seed, &self.public)
            .map_err(|e| format!("the secret and public halves do not match ({e})"))
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The matching public key, as minisign's `.pub` file text.
    pub fn public_key_file(&self) -> String {
        let mut raw = Vec::with_capacity(42);
        raw.extend_from_slice(b"Ed");
        raw.extend_from_slice(&self.id.0);
        raw.extend_from_slice(&self.public);
        format!(
            "untrusted comment: minisign public key: {}\n{}\n",
            self.id,
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    /// Signs `data`: the bytes of a minisign signature file (deterministic for equal inputs).
    /// `trusted_comment` must be one line.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> Result<Vec<u8>, Error> {
        if trusted_comment.contains(['\n', '\r']) {
            return Err(Error::BadSignatureFile {
                detail: "a trusted comment must be one line".into(),
            });
        }
        let keypair = self
            .keypair()
            .map_err(|detail| Error::BadSignatureFile { detail })?;
        let prehash = blake2::Blake2b512::digest(data);
        let sig = keypair.sign(&prehash);
        let mut line2 = Vec::with_capacity(74);
        line2.extend_from_slice(b"ED");
        line2.extend_from_slice(&self.id.0);
        line2.extend_from_slice(sig.as_ref());
        let mut global = sig.as_ref().to_vec();
        global.extend_from_slice(trusted_comment.as_bytes());
        let global_sig = keypair.sign(&global);
        let b64 = base64::engine::general_purpose::STANDARD;
        let text = format!(
            "{}\n{}\ntrusted comment: {trusted_comment}\n{}\n",
            untrusted_comment(self.id),
            b64.encode(line2),
            b64.encode(global_sig.as_ref())
        );
        Ok(text.into_bytes())
    }
}

/// The first line of a signature pinbundle writes (minisign's untrusted comment).
fn untrusted_comment(id: KeyId) -> String {
    format!("untrusted comment: signature from pinbundle secret key {id}")
}

/// A parsed signature file: who signed, and the trusted comment. Parsing does not check the
/// signature; see [`Signature::check`].
#[derive(Clone)]
pub struct Signature {
    pub key_id: KeyId,
    pub trusted_comment: String,
    sig_box: minisign::SignatureBox,
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signature")
            .field("key_id", &self.key_id)
            .field("trusted_comment", &self.trusted_comment)
            .finish_non_exhaustive()
    }
}

impl Signature {
    /// Parses minisign's signature file format. Only prehashed (`ED`) signatures with a
    /// trusted comment are accepted, as stock minisign makes them.
    pub fn parse(bytes: &[u8]) -> Result<Signature, Error> {
        let bad = |detail: String| Error::BadSignatureFile { detail };
        if bytes.len() as u64 > MAX_SIGNATURE_LEN {
            return Err(bad(format!("{} bytes is too large", bytes.len())));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        if text.lines().count() != 4 || !text.ends_with('\n') {
            return Err(bad("expected exactly four lines".into()));
        }
        let sig_box = minisign::SignatureBox::from_string(text).map_err(|e| bad(e.to_string()))?;
        if !sig_box.is_prehashed() {
            return Err(bad(
                "legacy (not prehashed) minisign signatures are not accepted".into(),
            ));
        }
        let trusted_comment = sig_box.trusted_comment().map_err(|e| bad(e.to_string()))?;
        let id = key_id(sig_box.keynum());
        // The untrusted comment is the one line no signature covers. Held to the text the
        // signer writes, every byte of the file that stock `tar -x` extracts is fixed by
        // the signed data and the key.
        let expected = untrusted_comment(id);
        if text.lines().next() != Some(expected.as_str()) {
            return Err(bad(format!(
                "the first line is not \"{expected}\" (the untrusted comment is not covered by the signature, so it must be exactly what pinbundle writes)"
            )));
        }
        Ok(Signature {
            key_id: id,
            trusted_comment,
            sig_box,
        })
    }

    /// Checks the signature over `data` against `trusted`: `Ok` names the key that verified
    /// it. A signature by a key not in `trusted` is [`Error::Untrusted`], one that does not
    /// verify is [`Error::BadSignature`].
    pub fn check<'k>(
        &self,
        data: &[u8],
        trusted: &'k [TrustedKey],
    ) -> Result<&'k TrustedKey, Error> {
        let mut candidates = trusted.iter().filter(|k| k.id == self.key_id).peekable();
        if candidates.peek().is_none() {
            return Err(Error::Untrusted {
                found: self.key_id,
                trusted: trusted.iter().map(|k| k.id).collect(),
            });
        }
        for k in candidates {
            if minisign::verify(&k.key, &self.sig_box, Cursor::new(data), true, false, false)
                .is_ok()
            {
                return Ok(k);
            }
        }
        Err(Error::BadSignature { key: self.key_id })
    }
}

/// What `keygen` wrote.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeygenReport {
    pub key_id: KeyId,
    pub secret_key: PathBuf,
    pub public_key: PathBuf,
    pub encrypted: bool,
}

/// Generates a key pair and writes `NAME.key` (mode 0600, password-encrypted unless
/// `password` is `None`) and `NAME.pub`, in minisign's formats. Refuses to overwrite either.
pub fn keygen(name: &Path, password: Option<&str>) -> Result<KeygenReport, Error> {
    let with_ext = |ext: &str| {
        let mut s = name.as_os_str().to_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    let (sk_path, pk_path) = (with_ext(".key"), with_ext(".pub"));
    for p in [&sk_path, &pk_path] {
        if p.exists() {
            return Err(Error::Exists { path: p.clone() });
        }
    }
    let generate = |e: minisign::PError| Error::Generate {
        detail: e.to_string(),
    };
    let (sk_text, pk_text, id) = match password {
        Some(pw) => {
            let kp = minisign::KeyPair::generate_encrypted_keypair(Some(pw.to_string()))
                .map_err(generate)?;
            let sk = kp.sk.to_box(Some(SECRET_KEY_COMMENT)).map_err(generate)?;
            let pk = kp.pk.to_box().map_err(generate)?;
            (sk.into_string(), pk.into_string(), key_id(kp.pk.keynum()))
        }
        None => {
            let kp = minisign::KeyPair::generate_unencrypted_keypair().map_err(generate)?;
            let sk = kp
                .sk
                .to_box(Some(UNENCRYPTED_SECRET_KEY_COMMENT))
                .map_err(generate)?;
            let pk = kp.pk.to_box().map_err(generate)?;
            (sk.into_string(), pk.into_string(), key_id(kp.pk.keynum()))
        }
    };
    write_new(&sk_path, sk_text.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&pk_path, pk_text.as_bytes(), 0o644) {
        let _ = fs_err::remove_file(&sk_path);
        return Err(e);
    }
    Ok(KeygenReport {
        key_id: id,
        secret_key: sk_path,
        public_key: pk_path,
        encrypted: password.is_some(),
    })
}

/// Creates `path` (never replacing a file) with `mode` from the start, and syncs it.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    // std::fs deliberately: the typed error names the path; fs-err would repeat it.
    #[allow(clippy::disallowed_methods)]
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                err(e)
            }
        })?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str, password: Option<&str>) -> (SigningKey, TrustedKey) {
        let r = keygen(&dir.join(name), password).unwrap();
        let sk = SecretKeyFile::read(&r.secret_key).unwrap();
        assert_eq!(sk.is_encrypted(), password.is_some());
        (
            sk.unlock(password).unwrap(),
            TrustedKey::read(&r.public_key).unwrap(),
        )
    }

    #[test]
    fn sign_is_deterministic_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk) = pair(dir.path(), "k", None);
        assert_eq!(sk.id(), pk.id);
        let a = sk.sign(b"hello", "c1").unwrap();
        assert_eq!(a, sk.sign(b"hello", "c1").unwrap());
        let sig = Signature::parse(&a).unwrap();
        assert_eq!(sig.trusted_comment, "c1");
        assert_eq!(sig.key_id, sk.id());
        assert_eq!(
            sig.check(b"hello", std::slice::from_ref(&pk)).unwrap().id,
            pk.id
        );
        assert!(matches!(
            sig.check(b"hellO", std::slice::from_ref(&pk)),
            Err(Error::BadSignature { .. })
        ));
        assert!(matches!(
            sig.check(b"hello", &[]),
            Err(Error::Untrusted { .. })
        ));
        // The one line no signature covers must be exactly what we write.
        let text = String::from_utf8(a.clone()).unwrap();
        let (first, rest) = text.split_once('\n').unwrap();
        for other in ["untrusted comment: hello", &format!("{first} ")] {
            let edited = format!("{other}\n{rest}");
            assert!(
                matches!(
                    Signature::parse(edited.as_bytes()),
                    Err(Error::BadSignatureFile { .. })
                ),
                "{other}"
            );
        }
        // The public key text we derive equals the written one, bar the comment.
        let written = fs_err::read_to_string(dir.path().join("k.pub")).unwrap();
        assert_eq!(written.lines().nth(1), sk.public_key_file().lines().nth(1));
    }

    #[test]
    fn trusted_comment_is_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk) = pair(dir.path(), "k", None);
        let text = String::from_utf8(sk.sign(b"data", "original").unwrap()).unwrap();
        let forged = text.replace("trusted comment: original", "trusted comment: forged!");
        let sig = Signature::parse(forged.as_bytes()).unwrap();
        assert!(matches!(
            sig.check(b"data", std::slice::from_ref(&pk)),
            Err(Error::BadSignature { .. })
        ));
    }

    #[test]
    fn encrypted_keys_need_the_right_password() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk) = pair(dir.path(), "enc", Some("correct horse"));
        let file = SecretKeyFile::read(&dir.path().join("enc.key")).unwrap();
        assert!(matches!(
            file.unlock(None),
            Err(Error::PasswordNeeded { .. })
        ));
        assert!(matches!(
            file.unlock(Some("wrong")),
            Err(Error::WrongPassword { .. })
        ));
        let sig = Signature::parse(&sk.sign(b"x", "c").unwrap()).unwrap();
        sig.check(b"x", &[pk]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs_err::metadata(dir.path().join("enc.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            keygen(&dir.path().join("enc"), None),
            Err(Error::Exists { .. })
        ));
    }

    #[test]
    fn malformed_signatures_are_refused() {
        for bad in [&b""[..], b"x\ny\nz\nw\n", &[0xff; 10]] {
            assert!(Signature::parse(bad).is_err());
        }
    }

    #[test]
    fn key_id_is_shown_like_minisign() {
        assert_eq!(
            KeyId([1, 0, 0, 0, 0, 0, 0, 0xAB]).to_string(),
            "AB00000000000001"
        );
    }
}
