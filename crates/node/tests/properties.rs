//! Properties of the node's decoders over generated input: bus envelopes and AnyCable
//! broadcast bodies give a typed answer for any text, and what the node encodes decodes back.
#![allow(missing_docs)]

use ferrocable_node::broker::StreamPosition;
use ferrocable_node::ingress::decode_publications;
use ferrocable_node::pubsub::{decode_envelope, encode_envelope};
use proptest::prelude::*;

proptest! {
    #[test]
    fn any_text_is_an_envelope_or_none(text in ".{0,200}") {
        let _ = decode_envelope(&text);
    }

    #[test]
    fn envelopes_round_trip(
        origin in any::<u64>(),
        stream in ".{0,40}",
        n in any::<i64>(),
        text in ".{0,40}",
        position in proptest::option::of(("[a-f0-9]{1,16}", any::<u64>())),
    ) {
        let message = serde_json::json!({"n": n, "text": text}).to_string();
        let at = position.map(|(epoch, offset)| StreamPosition { epoch, offset });
        let wire = encode_envelope(origin, &stream, &message, at.as_ref());
        let got = decode_envelope(&wire).expect("our own envelope decodes");
        prop_assert_eq!(got.origin, origin);
        prop_assert_eq!(&got.stream, &stream);
        prop_assert_eq!(got.message.get(), message.as_str());
        prop_assert_eq!(got.position(), at);
    }

    #[test]
    fn any_bytes_are_publications_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_publications(&bytes);
    }

    #[test]
    fn publications_keep_stream_and_data(items in proptest::collection::vec(("[a-z:_]{1,20}", any::<i32>()), 1..5)) {
        let body: Vec<serde_json::Value> = items
            .iter()
            .map(|(stream, n)| serde_json::json!({"stream": stream, "data": serde_json::json!({"n": n}).to_string()}))
            .collect();
        let body = serde_json::Value::Array(body).to_string();
        let got = decode_publications(body.as_bytes()).expect("well-formed publications decode");
        prop_assert_eq!(got.len(), items.len());
        for (p, (stream, n)) in got.iter().zip(&items) {
            prop_assert_eq!(&p.stream, stream);
            let message: serde_json::Value = serde_json::from_str(&p.message).unwrap();
            prop_assert_eq!(message["n"].as_i64(), Some(i64::from(*n)));
        }
    }
}

proptest! {
    #[test]
    fn any_text_is_a_token_or_a_typed_refusal(text in ".{0,300}") {
        let _ = ferrocable_node::JwtIdentifier::new("secret").verify(&text);
    }

    #[test]
    fn base64url_shaped_tokens_with_a_foreign_signature_are_refused(
        a in "[A-Za-z0-9_-]{0,60}", b in "[A-Za-z0-9_-]{0,120}", c in "[A-Za-z0-9_-]{0,90}",
    ) {
        let token = format!("{a}.{b}.{c}");
        prop_assert!(ferrocable_node::JwtIdentifier::new("secret").verify(&token).is_err());
    }

    #[test]
    fn minted_tokens_verify_with_their_identifiers(user in ".{0,40}", n in any::<i64>()) {
        let j = ferrocable_node::JwtIdentifier::new("secret");
        let ids = serde_json::json!({"user": user, "n": n});
        let token = j.mint(ids.as_object().unwrap(), std::time::Duration::from_secs(60));
        let got: serde_json::Value = serde_json::from_str(&j.verify(&token).unwrap()).unwrap();
        prop_assert_eq!(got, ids);
        prop_assert!(ferrocable_node::JwtIdentifier::new("other").verify(&token).is_err());
    }
}
