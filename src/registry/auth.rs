//! Registry credentials from a containers-auth.json / Docker `config.json` file.
//!
//! Owns finding the auth file and looking up the credential for a repository. It does no
//! network I/O and never prints a password or token: [`Credential`]'s `Debug` is redacted.
//!
//! Search order (the first file named wins; see containers-auth.json(5)):
//! 1. the `--authfile` given by the caller (must exist and parse),
//! 2. `$REGISTRY_AUTH_FILE` (must exist and parse: the user named it),
//! 3. `$XDG_RUNTIME_DIR/containers/auth.json` (optional),
//! 4. `~/.docker/config.json` (optional; an OpenShift pull secret has this format).
//!
//! Keys are `host[:port]`, optionally followed by a namespace (`quay.io/org`,
//! `quay.io/org/repo`); the most specific key wins. Docker Hub keys
//! (`https://index.docker.io/v1/`, `index.docker.io`, `registry-1.docker.io`) all mean
//! `docker.io`. `credHelpers`/`credsStore` and `identitytoken` are not supported; they are
//! recorded so that a later 401 can say why no credential was used.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// The largest auth file read (an OpenShift pull secret is a few KiB).
const MAX_AUTH_FILE: u64 = 4 << 20;

/// Why an auth file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("cannot read auth file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Only the place: serde's own message quotes the offending value, which may be a
    /// base64 `user:password` of any entry.
    #[error("cannot parse auth file {path}: {kind} at line {line}, column {column}")]
    Parse {
        path: PathBuf,
        /// "invalid JSON", "unexpected value", "unexpected end of file".
        kind: &'static str,
        line: usize,
        column: usize,
    },
    #[error(
        "auth file {path}: entry \"{}\" has an \"auth\" field that is not base64 of \"user:password\"",
        crate::text::excerpt(key, 100)
    )]
    BadAuthField { path: PathBuf, key: String },
}

/// A username and password for HTTP basic auth (or a registry's token exchange).
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A usable or unusable entry found for a repository.
#[derive(Clone, PartialEq, Eq)]
enum Entry {
    Basic(Credential),
    /// Only an `identitytoken` (an OAuth2 refresh token), which oci-client cannot exchange.
    IdentityTokenOnly,
}

/// The result of looking up a repository's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lookup {
    /// A credential from `file` under `key`.
    Found {
        key: String,
        file: PathBuf,
        credential: Credential,
    },
    /// An entry exists but pinbundle cannot use it (`identitytoken`, `credHelpers`,
    /// `credsStore`).
    Unsupported {
        key: String,
        file: PathBuf,
        kind: &'static str,
    },
    /// No entry for the repository in `file` (`None`: no auth file was found at all).
    Missing { file: Option<PathBuf> },
}

impl Lookup {
    /// A sentence for error messages: which credentials were (not) found, never their value.
    pub fn describe(&self) -> String {
        match self {
            Lookup::Found { key, file, .. } => format!(
                "credentials for \"{key}\" from {} were sent and rejected",
                file.display()
            ),
            Lookup::Unsupported { key, file, kind } => format!(
                "{} configures \"{key}\" only through {kind}, which pinbundle does not support; \
                 add an \"auths\" entry with \"auth\" (base64 of user:password)",
                file.display()
            ),
            Lookup::Missing { file: Some(file) } => {
                format!("no credentials for it in {}", file.display())
            }
            Lookup::Missing { file: None } => "no auth file was found (looked for --authfile, \
                 $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json, ~/.docker/config.json)"
                .to_string(),
        }
    }
}

/// A parsed auth file.
#[derive(Clone)]
pub struct AuthFile {
    path: PathBuf,
    /// Normalised key → entry.
    auths: BTreeMap<String, Entry>,
    /// Normalised keys configured through `credHelpers`.
    helpers: Vec<String>,
    /// A global `credsStore` is configured.
    creds_store: bool,
}

impl fmt::Debug for AuthFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthFile")
            .field("path", &self.path)
            .field("keys", &self.auths.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    auths: BTreeMap<String, RawEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, serde_json::Value>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct RawEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Normalise an auth-file key: drop a scheme and a trailing `/v1/`-style suffix, map Docker
/// Hub's aliases to `docker.io`.
fn normalise_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let key = key.trim_end_matches('/');
    let key = key
        .strip_suffix("/v1")
        .or_else(|| key.strip_suffix("/v2"))
        .unwrap_or(key);
    let (host, rest) = match key.split_once('/') {
        Some((h, r)) => (h, Some(r)),
        None => (key, None),
    };
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => crate::reference::DOCKER_HUB,
        h => h,
    };
    match rest {
        Some(r) => format!("{host}/{r}"),
        None => host.to_string(),
    }
}

impl AuthFile {
    /// Parse the auth file at `path`.
    pub fn load(path: &Path) -> Result<AuthFile, AuthError> {
        let text =
            crate::input::read_regular(path, MAX_AUTH_FILE).map_err(|source| AuthError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &[u8]) -> Result<AuthFile, AuthError> {
        let raw: RawFile = serde_json::from_slice(text).map_err(|e| AuthError::Parse {
            path: path.to_path_buf(),
            kind: match e.classify() {
                serde_json::error::Category::Syntax => "invalid JSON",
                serde_json::error::Category::Eof => "unexpected end of file",
                serde_json::error::Category::Data | serde_json::error::Category::Io => {
                    "unexpected value"
                }
            },
            line: e.line(),
            column: e.column(),
        })?;
        let mut auths = BTreeMap::new();
        for (key, entry) in raw.auths {
            let normalised = normalise_key(&key);
            let parsed = match (&entry.auth, &entry.username, &entry.password) {
                (Some(auth), _, _) if !auth.is_empty() => {
                    let bad = || AuthError::BadAuthField {
                        path: path.to_path_buf(),
                        key: key.clone(),
                    };
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .map_err(|_| bad())?;
                    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
                    let (user, pass) = decoded.split_once(':').ok_or_else(bad)?;
                    Some(Entry::Basic(Credential {
                        username: user.to_string(),
                        password: pass.to_string(),
                    }))
                }
                (_, Some(user), Some(pass)) if !user.is_empty() => Some(Entry::Basic(Credential {
                    username: user.clone(),
                    password: pass.clone(),
                })),
                _ if entry
                    .identitytoken
                    .as_deref()
                    .is_some_and(|t| !t.is_empty()) =>
                {
                    Some(Entry::IdentityTokenOnly)
                }
                _ => None,
            };
            if let Some(parsed) = parsed {
                auths.insert(normalised, parsed);
            }
        }
        Ok(AuthFile {
            path: path.to_path_buf(),
            auths,
            helpers: raw.cred_helpers.keys().map(|k| normalise_key(k)).collect(),
            creds_store: raw.creds_store.is_some_and(|s| !s.is_empty()),
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Look up the credential for repository `path` on registry `domain` (as in
    /// [`crate::reference::Reference`]): `domain/path`, then each shorter namespace, then
    /// `domain`.
    pub fn lookup(&self, domain: &str, path: &str) -> Lookup {
        let mut candidate = format!("{domain}/{path}");
        loop {
            if let Some(entry) = self.auths.get(&candidate) {
                return match entry {
                    Entry::Basic(credential) => Lookup::Found {
                        key: candidate,
                        file: self.path.clone(),
                        credential: credential.clone(),
                    },
                    Entry::IdentityTokenOnly => Lookup::Unsupported {
                        key: candidate,
                        file: self.path.clone(),
                        kind: "an \"identitytoken\"",
                    },
                };
            }
            if self.helpers.contains(&candidate) {
                return Lookup::Unsupported {
                    key: candidate,
                    file: self.path.clone(),
                    kind: "\"credHelpers\"",
                };
            }
            match candidate.rfind('/') {
                Some(i) => candidate.truncate(i),
                None => break,
            }
        }
        if self.creds_store {
            return Lookup::Unsupported {
                key: domain.to_string(),
                file: self.path.clone(),
                kind: "\"credsStore\"",
            };
        }
        Lookup::Missing {
            file: Some(self.path.clone()),
        }
    }
}

/// Where to look for the auth file: `(path, required)`. `env` reads an environment variable
/// and `home` is the user's home directory (parameters so tests need not touch the process
/// environment).
pub fn candidates(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
    home: Option<PathBuf>,
) -> Vec<(PathBuf, bool)> {
    if let Some(path) = explicit {
        return vec![(path.to_path_buf(), true)];
    }
    if let Some(path) = env("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return vec![(PathBuf::from(path), true)];
    }
    let mut out = Vec::new();
    if let Some(runtime) = env("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        out.push((
            PathBuf::from(runtime).join("containers").join("auth.json"),
            false,
        ));
    }
    if let Some(home) = home {
        out.push((home.join(".docker").join("config.json"), false));
    }
    out
}

/// Find and parse the auth file: the first candidate that exists. A required candidate that
/// is missing or unparsable is an error; an optional one that is missing is skipped (one
/// that exists but does not parse is still an error, rather than silently pulling
/// anonymously).
pub fn discover(candidates: &[(PathBuf, bool)]) -> Result<Option<AuthFile>, AuthError> {
    for (path, required) in candidates {
        match crate::input::read_regular(path, MAX_AUTH_FILE) {
            Ok(text) => return AuthFile::parse(path, &text).map(Some),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(AuthError::Read {
                    path: path.clone(),
                    source,
                });
            }
        }
    }
    Ok(None)
}

/// The default search: `explicit`, then the process environment and `$HOME`.
pub fn discover_default(explicit: Option<&Path>) -> Result<Option<AuthFile>, AuthError> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    discover(&candidates(explicit, |name| std::env::var_os(name), home))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs_err::write(&path, text).unwrap();
        path
    }

    fn found(lookup: Lookup) -> (String, String, String) {
        match lookup {
            Lookup::Found {
                key, credential, ..
            } => (key, credential.username, credential.password),
            other => panic!("expected a credential, got {other:?}"),
        }
    }

    #[test]
    fn most_specific_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"{{"auths": {{
                "quay.io": {{"auth": "{}"}},
                "quay.io/org": {{"auth": "{}"}},
                "quay.io/org/special": {{"username": "u3", "password": "p3"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "http://127.0.0.1:5000": {{"auth": "{}"}}
            }}}}"#,
            b64("u1:p1"),
            b64("u2:p:with:colons"),
            b64("hub:hubpass"),
            b64("local:lp"),
        );
        let path = write(dir.path(), "auth.json", &text);
        let file = AuthFile::load(&path).unwrap();
        assert_eq!(
            found(file.lookup("quay.io", "other/app")),
            ("quay.io".into(), "u1".into(), "p1".into())
        );
        assert_eq!(
            found(file.lookup("quay.io", "org/app")),
            ("quay.io/org".into(), "u2".into(), "p:with:colons".into())
        );
        assert_eq!(
            found(file.lookup("quay.io", "org/special")),
            ("quay.io/org/special".into(), "u3".into(), "p3".into())
        );
        assert_eq!(
            found(file.lookup("docker.io", "library/busybox")),
            ("docker.io".into(), "hub".into(), "hubpass".into())
        );
        assert_eq!(found(file.lookup("127.0.0.1:5000", "a/b")).1, "local");
        // A key is a path prefix by component, not by string.
        assert_eq!(found(file.lookup("quay.io", "organisation/x")).0, "quay.io");
        assert_eq!(
            file.lookup("ghcr.io", "x/y"),
            Lookup::Missing {
                file: Some(path.clone())
            }
        );
    }

    #[test]
    fn unsupported_sources_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "config.json",
            r#"{"auths": {"ghcr.io": {"identitytoken": "secret-token"}},
                "credHelpers": {"gcr.io": "gcloud"}}"#,
        );
        let file = AuthFile::load(&path).unwrap();
        let lookup = file.lookup("ghcr.io", "a/b");
        assert!(
            matches!(&lookup, Lookup::Unsupported { kind, .. } if kind.contains("identitytoken"))
        );
        assert!(!lookup.describe().contains("secret-token"));
        assert!(matches!(
            file.lookup("gcr.io", "p/i"),
            Lookup::Unsupported {
                kind: "\"credHelpers\"",
                ..
            }
        ));

        let path = write(dir.path(), "store.json", r#"{"credsStore": "desktop"}"#);
        let file = AuthFile::load(&path).unwrap();
        assert!(matches!(
            file.lookup("quay.io", "a/b"),
            Lookup::Unsupported {
                kind: "\"credsStore\"",
                ..
            }
        ));
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "auth.json",
            &format!(
                r#"{{"auths": {{"quay.io": {{"auth": "{}"}}}}}}"#,
                b64("me:hunter2")
            ),
        );
        let file = AuthFile::load(&path).unwrap();
        let lookup = file.lookup("quay.io", "a");
        let shown = format!("{file:?} {lookup:?} {}", lookup.describe());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(&b64("me:hunter2")), "{shown}");
    }

    #[test]
    fn search_order_and_required_files() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("run");
        fs_err::create_dir_all(runtime.join("containers")).unwrap();
        let home = dir.path().join("home");
        fs_err::create_dir_all(home.join(".docker")).unwrap();
        write(
            &home.join(".docker"),
            "config.json",
            r#"{"auths": {"home.example": {"username": "h", "password": "p"}}}"#,
        );
        let env_file = write(dir.path(), "env.json", r#"{"auths": {}}"#);
        let runtime_s = runtime.clone().into_os_string();
        let env_s = env_file.clone().into_os_string();

        // Only $HOME: the docker config is used.
        let found = discover(&candidates(None, |_| None, Some(home.clone())))
            .unwrap()
            .unwrap();
        assert_eq!(found.path(), home.join(".docker/config.json"));

        // XDG_RUNTIME_DIR without auth.json falls through to $HOME.
        let env = |n: &str| (n == "XDG_RUNTIME_DIR").then(|| runtime_s.clone());
        let found = discover(&candidates(None, env, Some(home.clone())))
            .unwrap()
            .unwrap();
        assert_eq!(found.path(), home.join(".docker/config.json"));

        // With auth.json there, it wins.
        let xdg = write(&runtime.join("containers"), "auth.json", r#"{"auths": {}}"#);
        let found = discover(&candidates(None, env, Some(home.clone())))
            .unwrap()
            .unwrap();
        assert_eq!(found.path(), xdg);

        // REGISTRY_AUTH_FILE beats both.
        let env2 = |n: &str| match n {
            "REGISTRY_AUTH_FILE" => Some(env_s.clone()),
            "XDG_RUNTIME_DIR" => Some(runtime_s.clone()),
            _ => None,
        };
        let found = discover(&candidates(None, env2, Some(home.clone())))
            .unwrap()
            .unwrap();
        assert_eq!(found.path(), env_file);

        // An explicit file beats everything and must exist.
        let missing = dir.path().join("nope.json");
        let err = discover(&candidates(Some(&missing), env2, Some(home.clone()))).unwrap_err();
        assert!(matches!(&err, AuthError::Read { path, .. } if *path == missing));
        assert!(err.to_string().contains("nope.json"), "{err}");

        // An explicit file that does not parse is an error naming it.
        let bad = write(dir.path(), "bad.json", "{not json");
        let err = discover(&candidates(Some(&bad), |_| None, None)).unwrap_err();
        assert!(matches!(&err, AuthError::Parse { path, .. } if *path == bad));
        assert!(err.to_string().contains("bad.json"), "{err}");

        // Nothing anywhere: no auth file.
        assert!(
            discover(&candidates(None, |_| None, Some(dir.path().join("x"))))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn parse_errors_never_quote_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = b64("alice:s3cret-pass");
        for text in [
            format!(
                r#"{{"auths": {{"a.io": {{"auth": "{secret}"}}, "b.io": {{"auth": ["{secret}"]}}}}}}"#
            ),
            format!(r#"{{"auths": {{"a.io": "{secret}"}}}}"#),
            format!(r#"{{"auths": {{"a.io": {{"auth": "{secret}""#),
            format!(r#"{{"auths": {{"a.io": {{"auth": {secret}}}}}}}"#),
        ] {
            let path = write(dir.path(), "auth.json", &text);
            let err = AuthFile::load(&path).unwrap_err();
            let mut shown = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                shown.push_str(&s.to_string());
                source = s.source();
            }
            assert!(
                shown.contains("auth.json") && shown.contains("line 1"),
                "{shown}"
            );
            assert!(
                !shown.contains(&secret) && !shown.contains("s3cret"),
                "{shown}"
            );
        }
    }

    #[test]
    fn bad_auth_field_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "auth.json",
            &format!(
                r#"{{"auths": {{"quay.io": {{"auth": "{}"}}}}}}"#,
                b64("nocolon")
            ),
        );
        let err = AuthFile::load(&path).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("auth.json") && text.contains("quay.io"),
            "{text}"
        );
    }
}
