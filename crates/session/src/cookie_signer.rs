//! Signing the session cookie. The cookie carries only the session id; the signature stops a
//! client from choosing or guessing someone else's id.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

/// Signs and verifies cookie values: `<session id>.<base64url HMAC-SHA256>`. The separator
/// is outside the base64url alphabet, so neither part can contain it.
#[derive(Clone)]
pub struct CookieSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSigner(..)")
    }
}

impl CookieSigner {
    /// Derives the signing key from the app's secret key base (like Rails' key generator:
    /// one secret, a purpose-specific key per use).
    pub fn new(secret_key_base: &[u8]) -> Self {
        let master = hmac::Key::new(hmac::HMAC_SHA256, secret_key_base);
        let derived = hmac::sign(&master, b"ferrocable signed session cookie");
        CookieSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// The cookie value for a session id.
    pub fn sign(&self, id: &str) -> String {
        let tag = hmac::sign(&self.key, id.as_bytes());
        format!("{id}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The session id in a cookie value, if the signature is valid (constant-time check).
    pub fn verify<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (id, tag) = value.rsplit_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.key, id.as_bytes(), &tag).ok()?;
        (!id.is_empty()).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_values_verify_and_tampered_ones_do_not() {
        let s = CookieSigner::new(b"a secret key base of reasonable length");
        let v = s.sign("abc123");
        assert_eq!(s.verify(&v), Some("abc123"));
        assert_eq!(s.verify(&v.replace("abc123", "abc124")), None);
        assert_eq!(s.verify("abc123"), None);
        assert_eq!(s.verify("abc123."), None);
        assert_eq!(s.verify(".AAAA"), None);
        // Ids and tags use '-' and '_' (base64url): every one must round-trip.
        for _ in 0..2000 {
            let id = crate::new_session_id();
            assert_eq!(s.verify(&s.sign(&id)), Some(id.as_str()));
        }
        assert_eq!(s.verify(&s.sign("a--b-")), Some("a--b-"));
        let other = CookieSigner::new(b"another secret");
        assert_eq!(other.verify(&v), None);
    }
}
