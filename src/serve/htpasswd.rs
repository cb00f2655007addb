//! HTTP basic auth against an htpasswd file, as distribution's `htpasswd` auth reads it: one
//! `user:hash` a line, bcrypt hashes only (`$2y$`, `$2b$`, `$2a$`); any other hash type is
//! refused when the file is read, naming the line.
//!
//! bcrypt is slow by design (tens of milliseconds a check), and a client sends its
//! credentials with every request; verified headers are therefore remembered by their
//! SHA-256 (never the password itself), in a bounded cache, so throughput does not depend on
//! the hash's cost. A wrong guess is never cached.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use http::HeaderValue;
use sha2::Digest as _;

use crate::registry::server::{Authorize, constant_time_eq};

/// The largest htpasswd file read.
const MAX_FILE: u64 = 1 << 20;
/// Verified `Authorization` headers remembered (then the cache starts over).
const MAX_CACHED: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path} has no users")]
    Empty { path: PathBuf },
}

/// The users of an htpasswd file and the cache of verified headers.
pub struct Htpasswd {
    users: HashMap<String, String>,
    verified: Mutex<HashSet<[u8; 32]>>,
    realm: String,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Htpasswd {
    /// Reads `path`; refuses a line that is not `user:bcrypt-hash`.
    pub fn read(path: &Path, realm: &str) -> Result<Htpasswd, Error> {
        let bytes = crate::input::read_regular(path, MAX_FILE).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Htpasswd::parse(path, &String::from_utf8_lossy(&bytes), realm)
    }

    pub(super) fn parse(path: &Path, text: &str, realm: &str) -> Result<Htpasswd, Error> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| Error::BadLine {
                path: path.to_path_buf(),
                line: i + 1,
                reason: reason.to_string(),
            };
            let Some((user, hash)) = line.split_once(':') else {
                return Err(bad("expected user:hash"));
            };
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            let bcrypt = ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p));
            if !bcrypt || hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(bad(&format!(
                    "user {user}: only bcrypt hashes ($2y$, $2b$) are accepted (htpasswd -B)"
                )));
            }
            users.insert(user.to_string(), hash.to_string());
        }
        if users.is_empty() {
            return Err(Error::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Htpasswd {
            users,
            verified: Mutex::new(HashSet::new()),
            realm: realm.to_string(),
        })
    }

    /// How many users the file lists.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether it lists none (never, once read).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` and `password` match an entry (bcrypt; slow).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                // Spend about as long as a real check, so unknown users do not show.
                let _ = bcrypt::verify(password, DUMMY_HASH);
                false
            }
        }
    }

    /// The user and password of a `Basic` header value, when it is one.
    pub fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
        use base64::Engine as _;
        let v = value.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (u, p) = text.split_once(':')?;
        Some((u.to_string(), p.to_string()))
    }
}

/// bcrypt of an unguessable password at cost 10, for unknown users.
const DUMMY_HASH: &str = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

impl Htpasswd {
    /// Whether this `Authorization` value was verified before (by the SHA-256 of the value,
    /// compared in constant time, so the comparison leaks nothing of the password).
    fn cached(&self, key: &[u8; 32]) -> bool {
        self.verified
            .lock()
            .is_ok_and(|cache| cache.iter().any(|k| constant_time_eq(k, key)))
    }
}

impl Authorize for Htpasswd {
    fn is_slow(&self, authorization: Option<&HeaderValue>) -> bool {
        authorization.is_some_and(|v| !self.cached(&sha2::Sha256::digest(v.as_bytes()).into()))
    }

    fn check(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let key: [u8; 32] = sha2::Sha256::digest(value.as_bytes()).into();
        if self.cached(&key) {
            return true;
        }
        let Some((user, password)) = Htpasswd::basic_credentials(value) else {
            return false;
        };
        let ok = self.verify(&user, &password);
        if ok && let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }

    fn challenge(&self, _host: Option<&str>) -> HeaderValue {
        HeaderValue::from_str(&format!("Basic realm=\"{}\"", self.realm))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"pinbundle\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bcrypt_lines() {
        let p = Path::new("users");
        let hash = bcrypt::hash("secret", 4).unwrap();
        let ok = Htpasswd::parse(p, &format!("# c\nalice:{hash}\n"), "r").unwrap();
        assert!(ok.verify("alice", "secret"));
        assert!(!ok.verify("alice", "wrong"));
        assert!(!ok.verify("bob", "secret"));
        let e = Htpasswd::parse(p, &format!("alice:{hash}\nbob:$apr1$xyz$abc\n"), "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("bob"), "{e}");
        assert!(Htpasswd::parse(p, "carol:{SHA}abc\n", "r").is_err());
        assert!(Htpasswd::parse(p, "\n", "r").is_err());
    }
}
