//! Signed stream names, in the format of Rails' `MessageVerifier` (SHA256, JSON):
//! `base64(JSON(name)) + "--" + hex(HMAC-SHA256(key, base64 part))`. Pages put them in
//! `<cable-ready-stream-from identifier="…">`; the server verifies them on subscribe, so a
//! browser can only listen to streams a page was rendered with.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;

/// Signs and verifies stream names with a key derived from the app's secret.
#[derive(Clone)]
pub struct StreamSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for StreamSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamSigner(..)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl StreamSigner {
    /// A signer whose key is derived from `secret_key_base` for this one purpose.
    pub fn new(secret_key_base: &[u8]) -> Self {
        let master = hmac::Key::new(hmac::HMAC_SHA256, secret_key_base);
        let derived = hmac::sign(&master, b"ferrocable signed stream name");
        StreamSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// The signed form of `stream`.
    pub fn sign(&self, stream: &str) -> String {
        let json = serde_json::to_string(stream).unwrap_or_default();
        let encoded = STANDARD.encode(json);
        let digest = hmac::sign(&self.key, encoded.as_bytes());
        format!("{encoded}--{}", hex(digest.as_ref()))
    }

    /// The stream name, if `signed` verifies (constant-time) and holds a JSON string.
    pub fn verify(&self, signed: &str) -> Option<String> {
        let mut parts = signed.split("--");
        let (encoded, digest) = (parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        hmac::verify(&self.key, encoded.as_bytes(), &unhex(digest)?).ok()?;
        let json = STANDARD.decode(encoded).ok()?;
        serde_json::from_slice::<String>(&json).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tampering() {
        let s = StreamSigner::new(b"secret");
        let signed = s.sign("chat/2024");
        assert_eq!(s.verify(&signed).as_deref(), Some("chat/2024"));
        let (enc, dig) = signed.split_once("--").unwrap();
        let other = STANDARD.encode("\"admin\"");
        assert_eq!(s.verify(&format!("{other}--{dig}")), None);
        assert_eq!(s.verify(&format!("{enc}--{}", "0".repeat(64))), None);
        assert_eq!(s.verify(enc), None);
        assert_eq!(s.verify(&format!("{signed}--x")), None);
        assert_eq!(s.verify("--"), None);
        assert_eq!(StreamSigner::new(b"other").verify(&signed), None);
    }
}
