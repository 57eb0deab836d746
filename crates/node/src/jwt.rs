//! JWT identification, as AnyCable does it: a page gets a short-lived token from the app, the
//! client connects with it, and the server identifies the connection from the token alone
//! (no call to the app, no authenticator run).
//!
//! - The token comes from the `x-jid` header, the `anycable-token.<token>` WebSocket
//!   subprotocol (offered beside the real one), or the `jid` query parameter; the parameter
//!   name is `ANYCABLE_JWT_PARAM` (the header is `x-<param>`).
//! - HS256, HS384 and HS512 with `ANYCABLE_JWT_SECRET` (default `ANYCABLE_SECRET`); `none` and
//!   every non-HMAC algorithm are refused; `exp` is checked when present.
//! - The identifiers are the `ext` claim: a string of JSON (`{"user_id":"42"}`), as anycable-rb
//!   writes it. The claim's name is configurable (AnyCable users ask for tokens minted by
//!   other issuers), and a JSON object is accepted there too.
//!
//! HMAC only, by ring (the project's one crypto provider): a JWT crate would bring RSA and EC
//! code for algorithms this identification refuses anyway.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use ring::hmac;
use serde_json::{Map, Value};

use crate::auth::ConnectRequest;

/// Longest token accepted (bytes): identifiers are small; this bounds a hostile header.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The subprotocol prefix that carries a token (`anycable-token.<token>`).
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "anycable-token.";

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON, or over [`MAX_TOKEN_LEN`].
    #[error("not a JWT")]
    Malformed,
    /// `alg` is not HS256, HS384 or HS512 (`none`, RS256, …).
    #[error("algorithm {0:?} is not accepted (HS256, HS384, HS512 only)")]
    Algorithm(String),
    /// The signature does not match the secret.
    #[error("signature does not match")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// The identifiers claim is missing, or not a JSON object (nor a string of one).
    #[error("claim {0:?} with the identifiers is missing or not a JSON object")]
    MissingIdentifiers(String),
}

/// How tokens are found and checked (see the module docs).
#[derive(Clone)]
pub struct JwtIdentifier {
    hs256: hmac::Key,
    hs384: hmac::Key,
    hs512: hmac::Key,
    param: String,
    header: String,
    claim: String,
    enforce: bool,
}

impl std::fmt::Debug for JwtIdentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtIdentifier")
            .field("param", &self.param)
            .field("claim", &self.claim)
            .field("enforce", &self.enforce)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn b64(part: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .or_else(|_| URL_SAFE.decode(part))
        .map_err(|_| JwtError::Malformed)
}

impl JwtIdentifier {
    /// Tokens signed with `secret`, in the `jid` parameter, identifiers in `ext`, not enforced.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        let secret = secret.as_ref();
        JwtIdentifier {
            hs256: hmac::Key::new(hmac::HMAC_SHA256, secret),
            hs384: hmac::Key::new(hmac::HMAC_SHA384, secret),
            hs512: hmac::Key::new(hmac::HMAC_SHA512, secret),
            param: "jid".into(),
            header: "x-jid".into(),
            claim: "ext".into(),
            enforce: false,
        }
    }

    /// The query parameter (and `x-<param>` header) carrying the token
    /// (`ANYCABLE_JWT_PARAM`).
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = param.into();
        self.header = format!("x-{}", self.param.to_ascii_lowercase());
        self
    }

    /// The claim holding the identifiers (default `ext`).
    pub fn claim(mut self, claim: impl Into<String>) -> Self {
        self.claim = claim.into();
        self
    }

    /// Refuse connections without a token (`ANYCABLE_ENFORCE_JWT`).
    pub fn enforce(mut self, on: bool) -> Self {
        self.enforce = on;
        self
    }

    /// Whether a connection without a token is refused.
    pub fn is_enforced(&self) -> bool {
        self.enforce
    }

    /// The token a connection request carries: header, then subprotocol, then query.
    pub fn token_of<'a>(&self, request: &'a ConnectRequest) -> Option<Cow<'a, str>> {
        if let Some(v) = request
            .headers
            .get(self.header.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
        {
            return Some(Cow::Borrowed(v));
        }
        let from_subprotocol = request
            .headers
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
            .filter(|t| !t.is_empty());
        if let Some(t) = from_subprotocol {
            return Some(Cow::Borrowed(t));
        }
        request
            .query_param(&self.param)
            .filter(|t| !t.is_empty())
            .map(|t| {
                // base64url and '.' need no decoding; a client that encoded them anyway is fine.
                if t.contains('%') {
                    Cow::Owned(t.replace("%2E", ".").replace("%2e", "."))
                } else {
                    Cow::Borrowed(t)
                }
            })
    }

    /// The identifiers (a JSON object's text) of a valid token.
    pub fn verify(&self, token: &str) -> Result<String, JwtError> {
        self.verify_at(token, now_secs())
    }

    /// [`JwtIdentifier::verify`] at the given Unix time.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<String, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let head: Map<String, Value> =
            serde_json::from_slice(&b64(header)?).map_err(|_| JwtError::Malformed)?;
        let key = match head.get("alg").and_then(Value::as_str) {
            Some("HS256") => &self.hs256,
            Some("HS384") => &self.hs384,
            Some("HS512") => &self.hs512,
            Some(other) => return Err(JwtError::Algorithm(other.to_owned())),
            None => return Err(JwtError::Algorithm(String::new())),
        };
        let signed = &token[..header.len() + 1 + payload.len()];
        hmac::verify(key, signed.as_bytes(), &b64(signature)?)
            .map_err(|_| JwtError::BadSignature)?;
        let claims: Map<String, Value> =
            serde_json::from_slice(&b64(payload)?).map_err(|_| JwtError::Malformed)?;
        match claims.get("exp") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => {
                let exp = n.as_f64().ok_or(JwtError::Malformed)?;
                if exp <= now as f64 {
                    return Err(JwtError::Expired);
                }
            }
            Some(_) => return Err(JwtError::Malformed),
        }
        let missing = || JwtError::MissingIdentifiers(self.claim.clone());
        match claims.get(&self.claim) {
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(_)) => Ok(s.clone()),
                _ => Err(missing()),
            },
            Some(v @ Value::Object(_)) => Ok(v.to_string()),
            _ => Err(missing()),
        }
    }

    /// A token for `identifiers` (a JSON object), valid for `ttl`, as anycable-rb's
    /// `AnyCable::JWT.encode` writes it: HS256, `{"alg":"HS256"}`, the identifiers as a string
    /// in the claim, `exp`.
    pub fn mint(&self, identifiers: &Map<String, Value>, ttl: Duration) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        let mut claims = Map::new();
        claims.insert(
            self.claim.clone(),
            Value::String(Value::Object(identifiers.clone()).to_string()),
        );
        claims.insert("exp".into(), (now_secs() + ttl.as_secs()).into());
        let payload = URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string());
        let signed = format!("{header}.{payload}");
        let signature = hmac::sign(&self.hs256, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(alg: &str, key: hmac::Algorithm, secret: &[u8], claims: Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{h}.{p}");
        let s = hmac::sign(&hmac::Key::new(key, secret), signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(s.as_ref()))
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn known_answers() {
        // jwt.io's example token (HS256, "your-256-bit-secret"): the signature checks out, and
        // it carries no identifiers.
        let jwt_io = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(
            JwtIdentifier::new("your-256-bit-secret").verify_at(jwt_io, NOW),
            Err(JwtError::MissingIdentifiers("ext".into()))
        );
        assert_eq!(
            JwtIdentifier::new("another secret").verify_at(jwt_io, NOW),
            Err(JwtError::BadSignature)
        );
        // anycable-rb's form ({"alg":"HS256"}, ext as a string, exp), computed with Python's
        // hmac/base64 over the RFC 7519 rule.
        let rb = "eyJhbGciOiJIUzI1NiJ9.eyJleHQiOiJ7XCJ1c2VyX2lkXCI6XCI0MlwifSIsImV4cCI6MTkwMDAwMDAwMH0.XO2I715uuqPLObyP4H4nf4Nd_J72U1VVQ4E9F6-kaOs";
        let j = JwtIdentifier::new("anycable secret");
        assert_eq!(j.verify_at(rb, NOW).as_deref(), Ok(r#"{"user_id":"42"}"#));
        assert_eq!(j.verify_at(rb, 1_900_000_000), Err(JwtError::Expired));
        // What we mint has the same header and verifies.
        let minted = j.mint(
            json!({"user_id": "42"}).as_object().unwrap(),
            Duration::from_secs(60),
        );
        assert!(minted.starts_with("eyJhbGciOiJIUzI1NiJ9."), "{minted}");
        assert_eq!(j.verify(&minted).as_deref(), Ok(r#"{"user_id":"42"}"#));
    }

    #[test]
    fn every_hmac_algorithm_and_nothing_else() {
        let j = JwtIdentifier::new("s");
        let claims = json!({"ext": "{\"id\":\"1\"}", "exp": NOW + 10});
        for (alg, key) in [
            ("HS256", hmac::HMAC_SHA256),
            ("HS384", hmac::HMAC_SHA384),
            ("HS512", hmac::HMAC_SHA512),
        ] {
            let t = token(alg, key, b"s", claims.clone());
            assert_eq!(
                j.verify_at(&t, NOW).as_deref(),
                Ok(r#"{"id":"1"}"#),
                "{alg}"
            );
        }
        // alg: none with an empty signature, and RS256 (signed with the secret as HMAC, the
        // classic confusion attack) are refused before any signature check.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert_eq!(
            j.verify_at(&none, NOW),
            Err(JwtError::Algorithm("none".into()))
        );
        let rs = token("RS256", hmac::HMAC_SHA256, b"s", claims.clone());
        assert_eq!(
            j.verify_at(&rs, NOW),
            Err(JwtError::Algorithm("RS256".into()))
        );
        // HS384 header over an HS256 signature: the signature does not match.
        let mixed = token("HS384", hmac::HMAC_SHA256, b"s", claims);
        assert_eq!(j.verify_at(&mixed, NOW), Err(JwtError::BadSignature));
    }

    #[test]
    fn expired_foreign_tampered_and_malformed_tokens() {
        let j = JwtIdentifier::new("s");
        let ok = json!({"ext": "{\"id\":\"1\"}", "exp": NOW + 10});
        let t = token("HS256", hmac::HMAC_SHA256, b"s", ok.clone());
        assert_eq!(j.verify_at(&t, NOW + 10), Err(JwtError::Expired));
        let other = token("HS256", hmac::HMAC_SHA256, b"other", ok.clone());
        assert_eq!(j.verify_at(&other, NOW), Err(JwtError::BadSignature));
        // The payload swapped for another one under the same signature.
        let parts: Vec<&str> = t.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(r#"{"ext":"{\"id\":\"admin\"}"}"#);
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(j.verify_at(&forged, NOW), Err(JwtError::BadSignature));
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"a".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(j.verify_at(bad, NOW), Err(JwtError::Malformed), "{bad:?}");
        }
        for claims in [
            json!({"exp": NOW + 10}),
            json!({"ext": "not json"}),
            json!({"ext": "[1]"}),
            json!({"ext": 42}),
        ] {
            let t = token("HS256", hmac::HMAC_SHA256, b"s", claims.clone());
            assert_eq!(
                j.verify_at(&t, NOW),
                Err(JwtError::MissingIdentifiers("ext".into())),
                "{claims}"
            );
        }
        let t = token(
            "HS256",
            hmac::HMAC_SHA256,
            b"s",
            json!({"ext": "{}", "exp": "soon"}),
        );
        assert_eq!(j.verify_at(&t, NOW), Err(JwtError::Malformed));
    }

    #[test]
    fn a_configured_claim_may_hold_an_object() {
        let j = JwtIdentifier::new("s").claim("identifiers");
        let t = token(
            "HS256",
            hmac::HMAC_SHA256,
            b"s",
            json!({"identifiers": {"user_id": 7}}),
        );
        assert_eq!(j.verify_at(&t, NOW).as_deref(), Ok(r#"{"user_id":7}"#));
    }

    #[test]
    fn the_token_is_found_in_header_then_subprotocol_then_query() {
        let j = JwtIdentifier::new("s");
        let mut r = ConnectRequest {
            uri: "/cable?jid=from.query.x".parse().unwrap(),
            ..ConnectRequest::default()
        };
        assert_eq!(j.token_of(&r).as_deref(), Some("from.query.x"));
        r.headers.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            "actioncable-v1-ext-json, anycable-token.from.sub.x"
                .parse()
                .unwrap(),
        );
        assert_eq!(j.token_of(&r).as_deref(), Some("from.sub.x"));
        r.headers.insert("x-jid", "from.header.x".parse().unwrap());
        assert_eq!(j.token_of(&r).as_deref(), Some("from.header.x"));
        let custom = JwtIdentifier::new("s").param("token");
        let r = ConnectRequest {
            uri: "/cable?jid=no&token=yes".parse().unwrap(),
            ..ConnectRequest::default()
        };
        assert_eq!(custom.token_of(&r).as_deref(), Some("yes"));
        assert_eq!(
            JwtIdentifier::new("s").token_of(&ConnectRequest::default()),
            None
        );
    }
}
