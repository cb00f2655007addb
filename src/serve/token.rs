//! Bearer tokens (`serve --htpasswd FILE --token-auth`): the registry token flow of
//! distribution's token specification, with `serve` as its own token server.
//!
//! A request without a valid token is answered 401 with `Bearer realm="SCHEME://HOST/token",
//! service="pinbundle"`. The client asks the realm with its basic credentials, which are checked
//! against the htpasswd file (bcrypt), and gets a token good for [`TTL`]; it then sends the
//! token instead of its password, which crosses the network once per token, not with every
//! request. podman, skopeo, CRI-O and containerd all follow this flow.
//!
//! A token is its expiry and user, with an HMAC-SHA256 over both keyed by 32 random bytes drawn
//! at start: nothing is stored, and a restart revokes every token (clients ask again on the next
//! 401). Every authenticated user may pull every repository: the server is read-only and its
//! users are the site's nodes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac as _};
use http::HeaderValue;

use super::htpasswd::Htpasswd;
use crate::registry::server::{Authorize, Issued};

/// How long a token is good for.
pub const TTL: Duration = Duration::from_secs(600);

/// The service name in the challenge and the token request.
pub const SERVICE: &str = "pinbundle";

type HmacSha256 = Hmac<sha2::Sha256>;

/// The users of an htpasswd file, who get tokens.
pub struct TokenAuth {
    users: Htpasswd,
    key: [u8; 32],
    scheme: &'static str,
    /// The realm's host when a request names none (`Host` is required in HTTP/1.1).
    fallback_host: String,
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuth")
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

impl TokenAuth {
    /// Tokens for `users`; `https`: the realm's scheme; `listen`: the realm's host for a
    /// request without `Host`.
    pub fn new(users: Htpasswd, https: bool, listen: std::net::SocketAddr) -> TokenAuth {
        use rand::Rng as _;
        TokenAuth {
            users,
            key: rand::rng().random(),
            scheme: if https { "https" } else { "http" },
            fallback_host: listen.to_string(),
        }
    }

    fn mac(&self, claims: &str) -> Vec<u8> {
        // Any key length is valid for HMAC.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(claims.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// `EXPIRY.USER-HEX.MAC-HEX`, good until `now + TTL`.
    fn mint(&self, user: &str, now: u64) -> String {
        let claims = format!("{}.{}", now + TTL.as_secs(), hex::encode(user));
        let mac = hex::encode(self.mac(&claims));
        format!("{claims}.{mac}")
    }

    /// Whether `token` is one of ours and not expired at `now`.
    fn valid(&self, token: &str, now: u64) -> bool {
        let Some((claims, mac)) = token.rsplit_once('.') else {
            return false;
        };
        let Some(expiry) = claims
            .split_once('.')
            .and_then(|(e, _)| e.parse::<u64>().ok())
        else {
            return false;
        };
        let Ok(mac) = hex::decode(mac) else {
            return false;
        };
        // The MAC first, in constant time: whether the expiry parsed says nothing of the key.
        crate::registry::server::constant_time_eq(&mac, &self.mac(claims)) && now < expiry
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token of a `Bearer` header value.
fn bearer(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Whether `host` may go into the realm as it is: a host name or address and a port, nothing
/// that would end the quoted parameter or change the URL.
fn plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

impl Authorize for TokenAuth {
    fn check(&self, authorization: Option<&HeaderValue>) -> bool {
        authorization
            .and_then(bearer)
            .is_some_and(|t| self.valid(t, now()))
    }

    fn challenge(&self, host: Option<&str>) -> HeaderValue {
        let host = host
            .filter(|h| plain_host(h))
            .unwrap_or(&self.fallback_host);
        HeaderValue::from_str(&format!(
            "Bearer realm=\"{}://{host}{}\",service=\"{SERVICE}\"",
            self.scheme,
            crate::registry::server::TOKEN_PATH
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer service=\"pinbundle\""))
    }

    fn issues_tokens(&self) -> bool {
        true
    }

    fn issue(&self, authorization: Option<&HeaderValue>) -> Option<Issued> {
        let (user, password) = Htpasswd::basic_credentials(authorization?)?;
        self.users.verify(&user, &password).then(|| Issued {
            token: self.mint(&user, now()),
            expires_in: TTL.as_secs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> TokenAuth {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = Htpasswd::parse(
            std::path::Path::new("users"),
            &format!("site:{hash}\n"),
            "pinbundle",
        )
        .unwrap();
        TokenAuth::new(users, true, "127.0.0.1:5000".parse().unwrap())
    }

    fn basic(user: &str, password: &str) -> HeaderValue {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {b}")).unwrap()
    }

    #[test]
    fn a_token_is_issued_for_a_user_and_good_until_it_expires() {
        let a = auth();
        assert!(a.issue(Some(&basic("site", "wrong"))).is_none());
        assert!(a.issue(Some(&basic("other", "s3cret"))).is_none());
        assert!(a.issue(None).is_none());
        let t = a.issue(Some(&basic("site", "s3cret"))).unwrap();
        assert_eq!(t.expires_in, 600);
        let header = HeaderValue::from_str(&format!("Bearer {}", t.token)).unwrap();
        assert!(a.check(Some(&header)));
        assert!(!a.check(Some(&basic("site", "s3cret"))), "basic on /v2/");
        assert!(!a.check(None));
        let now = now();
        assert!(a.valid(&t.token, now + 599));
        assert!(!a.valid(&t.token, now + 601));
        // Another expiry or user under the same MAC, or another server's key: refused.
        let (claims, mac) = t.token.rsplit_once('.').unwrap();
        let (expiry, user) = claims.split_once('.').unwrap();
        let later = format!("{}.{user}.{mac}", expiry.parse::<u64>().unwrap() + 3600);
        assert!(!a.valid(&later, now));
        let admin = format!("{expiry}.{}.{mac}", hex::encode("admin"));
        assert!(!a.valid(&admin, now));
        assert!(!auth().valid(&t.token, now));
        for junk in ["", ".", "..", "x.y.z", "1.2", &format!("{claims}.zz")] {
            assert!(!a.valid(junk, now), "{junk:?}");
        }
    }

    #[test]
    fn the_challenge_names_the_realm_on_the_host_asked() {
        let a = auth();
        let c = |h| a.challenge(h).to_str().unwrap().to_string();
        assert_eq!(
            c(Some("mirror.example:5000")),
            "Bearer realm=\"https://mirror.example:5000/token\",service=\"pinbundle\""
        );
        assert_eq!(
            c(Some("[::1]:5000")),
            "Bearer realm=\"https://[::1]:5000/token\",service=\"pinbundle\""
        );
        for bad in ["evil\",x=\"y", "a/b", "", "a b"] {
            assert!(
                c(Some(bad)).contains("https://127.0.0.1:5000/token"),
                "{bad}"
            );
        }
        assert!(c(None).contains("https://127.0.0.1:5000/token"));
    }
}
