//! Signed stream names, in the format of Rails' `MessageVerifier` (SHA256, JSON):
//! `base64(JSON(name)) + "--" + hex(HMAC-SHA256(key, base64 part))`. Pages put them in
//! `<cable-ready-stream-from identifier="…">`; the server verifies them on subscribe, so a
//! browser can only listen to streams a page was rendered with.

use ring::hmac;

/// Signs and verifies stream names with a key derived from the app's secret.
#[derive(Clone, Debug)]
pub struct StreamSigner {
    verifier: ferrocable_streams::MessageVerifier,
}

impl StreamSigner {
    /// A signer whose key is derived from `secret_key_base` for this one purpose.
    pub fn new(secret_key_base: &[u8]) -> Self {
        let master = hmac::Key::new(hmac::HMAC_SHA256, secret_key_base);
        let derived = hmac::sign(&master, b"ferrocable signed stream name");
        StreamSigner {
            verifier: ferrocable_streams::MessageVerifier::new(derived.as_ref()),
        }
    }

    /// The signed form of `stream`.
    pub fn sign(&self, stream: &str) -> String {
        self.verifier.generate(stream)
    }

    /// The stream name, if `signed` verifies (constant-time) and holds a JSON string.
    pub fn verify(&self, signed: &str) -> Option<String> {
        self.verifier.verify(signed).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

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
