//! Properties of the signed-name verifier over generated input: any text is a name or a typed
//! refusal, every name we sign verifies back (both base64 alphabets), and no other key's does.
#![allow(missing_docs)]

use base64::Engine;
use ferrocable_streams::MessageVerifier;
use proptest::prelude::*;

proptest! {
    #[test]
    fn any_text_is_a_name_or_a_refusal(text in ".{0,300}") {
        let _ = MessageVerifier::new("secret").verify(&text);
    }

    #[test]
    fn signed_names_round_trip_and_other_keys_refuse_them(name in ".{0,80}", key in ".{1,40}") {
        let v = MessageVerifier::new(&key);
        let signed = v.generate(&name);
        prop_assert_eq!(v.verify(&signed), Ok(name.clone()));
        let other = MessageVerifier::new(key.clone() + "x");
        prop_assert!(other.verify(&signed).is_err());
    }

    #[test]
    fn tampering_with_the_digest_is_refused(name in "[a-z:/0-9]{1,40}", at in any::<prop::sample::Index>()) {
        let v = MessageVerifier::new("secret");
        let signed = v.generate(&name);
        let (data, digest) = signed.rsplit_once("--").unwrap();
        let i = at.index(digest.len());
        let mut bytes = digest.as_bytes().to_vec();
        bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
        let tampered = format!("{data}--{}", String::from_utf8(bytes).unwrap());
        prop_assert!(v.verify(&tampered).is_err());
    }

    #[test]
    fn url_safe_names_signed_elsewhere_verify(name in ".{0,60}") {
        // AnyCable's Ruby helper signs over URL-safe base64; the HMAC covers that text.
        let data = base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_string(&name).unwrap());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let digest: String = ring::hmac::sign(&key, data.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let signed = format!("{data}--{digest}");
        prop_assert_eq!(MessageVerifier::new("secret").verify(&signed), Ok(name));
    }
}
