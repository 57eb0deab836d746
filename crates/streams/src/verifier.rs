//! Rails' `ActiveSupport::MessageVerifier` with `digest: "SHA256", serializer: JSON`, for
//! string values: `base64(JSON(value)) + "--" + hex(HMAC-SHA256(secret, base64 text))`.
//!
//! The HMAC covers the base64 *text* as sent, so the check never depends on decoding. Both
//! base64 alphabets are accepted: Rails writes the standard one (`strict_encode64`), and
//! AnyCable's Ruby helper (`AnyCable::Streams.signed`) the URL-safe one. The digest is
//! compared in constant time (ring's `hmac::verify`).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use ring::hmac;

/// Longest signed name accepted (bytes). Stream names are short; this only bounds the work a
/// hostile subscribe can cause.
pub const MAX_SIGNED_LEN: usize = 8 * 1024;

/// Why a signed name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not `data--digest`, a digest that is not 64 hex digits, or over [`MAX_SIGNED_LEN`].
    #[error("not a signed name (expected base64--hex digest)")]
    Malformed,
    /// The digest does not match: tampered, or signed with another secret.
    #[error("signature does not match")]
    BadSignature,
    /// Signed by us, but the payload is not base64 of a JSON string.
    #[error("signed payload is not a JSON string")]
    NotAString,
}

/// Signs and verifies names in the `MessageVerifier` format with one secret.
#[derive(Clone)]
pub struct MessageVerifier {
    key: hmac::Key,
}

impl std::fmt::Debug for MessageVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageVerifier(..)")
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl MessageVerifier {
    /// A verifier keyed with `secret` as Rails uses it: the secret's bytes are the HMAC key
    /// (`MessageVerifier.new(secret, …)`, `ANYCABLE_STREAMS_SECRET`,
    /// `config.turbo.signed_stream_verifier_key`).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        MessageVerifier {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_ref()),
        }
    }

    /// The signed form of `value`, as Rails' `generate(value)` writes it (standard base64).
    pub fn generate(&self, value: &str) -> String {
        // Serializing a &str cannot fail.
        let json = serde_json::to_string(value).unwrap_or_default();
        let encoded = STANDARD.encode(json);
        let digest = hmac::sign(&self.key, encoded.as_bytes());
        let mut out = String::with_capacity(encoded.len() + 2 + 64);
        out.push_str(&encoded);
        out.push_str("--");
        for b in digest.as_ref() {
            out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        out
    }

    /// The value `signed` carries, if its digest is ours and it holds a JSON string.
    pub fn verify(&self, signed: &str) -> Result<String, VerifyError> {
        if signed.len() > MAX_SIGNED_LEN {
            return Err(VerifyError::Malformed);
        }
        // The digest is hex (no '-'); URL-safe base64 may itself contain "--".
        let (data, digest) = signed.rsplit_once("--").ok_or(VerifyError::Malformed)?;
        if data.is_empty() {
            return Err(VerifyError::Malformed);
        }
        let digest = unhex(digest).ok_or(VerifyError::Malformed)?;
        hmac::verify(&self.key, data.as_bytes(), &digest).map_err(|_| VerifyError::BadSignature)?;
        let json = STANDARD
            .decode(data)
            .or_else(|_| URL_SAFE.decode(data))
            .or_else(|_| URL_SAFE_NO_PAD.decode(data))
            .map_err(|_| VerifyError::NotAString)?;
        serde_json::from_slice::<String>(&json).map_err(|_| VerifyError::NotAString)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers computed with the MessageVerifier rule (Python's hmac/hashlib/base64 over
    // JSON text); the first is the one the wire doc checked against ActiveSupport 6.1.
    const CHAT: &str =
        "ImNoYXQ6MSI=--6bcc461dd50e77f855d1a756deff8c79c6b6a0624ce848e3fda47bd3d1eacf1d";
    const GID: &str = "ImdpZDovL2FwcC9NZXNzYWdlLzE6Y29tbWVudHMi--141adf45120d5e16173fb058b65cc3d33712e2cb21d546d7ea8d1527a8b261fd";
    const URL_SAFE_SIGNED: &str =
        "In5-fj4-Pj8_Ig==--70bdfabe2d238f495aa26b807cd224314a4eda872f29a11ea50884ce0e6cd96e";
    const STANDARD_SIGNED: &str =
        "In5+fj4+Pj8/Ig==--55428c8a5d3dc1a3a952c4ceb9ad6ff81f72ec2d9f3ed6fee7c1017ff1bc7dd2";

    #[test]
    fn generates_what_rails_generates() {
        let v = MessageVerifier::new("secret");
        assert_eq!(v.generate("chat:1"), CHAT);
        assert_eq!(v.generate("gid://app/Message/1:comments"), GID);
        assert_eq!(v.generate("~~~>>>??"), STANDARD_SIGNED);
        assert_eq!(
            MessageVerifier::new("s3cr3t").generate("room/42"),
            "InJvb20vNDIi--e128135279a2e9c4669b95a77537127d1e77c9bc21d5c95da80e2fcc9e9e67a1"
        );
    }

    #[test]
    fn verifies_both_alphabets() {
        let v = MessageVerifier::new("secret");
        assert_eq!(v.verify(CHAT).as_deref(), Ok("chat:1"));
        assert_eq!(v.verify(GID).as_deref(), Ok("gid://app/Message/1:comments"));
        assert_eq!(v.verify(STANDARD_SIGNED).as_deref(), Ok("~~~>>>??"));
        assert_eq!(v.verify(URL_SAFE_SIGNED).as_deref(), Ok("~~~>>>??"));
    }

    #[test]
    fn refuses_tampered_foreign_and_malformed_names() {
        let v = MessageVerifier::new("secret");
        let (data, digest) = CHAT.split_once("--").unwrap();
        // Another payload under the same digest.
        let other = STANDARD.encode("\"admin\"");
        assert_eq!(
            v.verify(&format!("{other}--{digest}")),
            Err(VerifyError::BadSignature)
        );
        // A digest flipped in its last digit.
        let mut flipped = CHAT.to_owned();
        flipped.pop();
        flipped.push('e');
        assert_eq!(v.verify(&flipped), Err(VerifyError::BadSignature));
        // Signed with another secret.
        assert_eq!(
            MessageVerifier::new("other").verify(CHAT),
            Err(VerifyError::BadSignature)
        );
        // Shapes that are not signed names.
        for bad in [
            data,
            "--",
            "",
            &format!("{data}--{}", &digest[..10]),
            &format!("{data}--{}x", &digest[1..]),
            &format!("--{digest}"),
        ] {
            assert_eq!(v.verify(bad), Err(VerifyError::Malformed), "{bad:?}");
        }
        assert_eq!(
            v.verify(&"a".repeat(MAX_SIGNED_LEN + 1)),
            Err(VerifyError::Malformed)
        );
        // Our own signature over something that is not a JSON string.
        let encoded = STANDARD.encode("42");
        let signed = format!(
            "{encoded}--{}",
            v.generate("x").rsplit_once("--").unwrap().1
        );
        assert_eq!(v.verify(&signed), Err(VerifyError::BadSignature));
        let digest = hmac::sign(&v.key, encoded.as_bytes());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            v.verify(&format!("{encoded}--{hex}")),
            Err(VerifyError::NotAString)
        );
    }
}
