//! Properties of the reflex decoders over generated input: any payload is a reflex or a typed
//! refusal, any query string parses, and signed stream names verify only as signed.
#![allow(missing_docs)]

use ferrocable_reflex::{ReflexData, StreamSigner, parse_nested_query};
use proptest::prelude::*;

/// A JSON value of bounded depth.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,16}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("target".to_owned()),
                    Just("args".to_owned()),
                    Just("url".to_owned()),
                    Just("formData".to_owned()),
                    Just("version".to_owned()),
                    Just("attrs".to_owned()),
                    Just("dataset".to_owned()),
                    Just("selectors".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..8
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_payload_is_a_reflex_or_a_refusal(payload in json()) {
        let _ = ReflexData::parse(payload);
    }

    #[test]
    fn any_query_string_parses(query in "[a-z\\[\\]=&%0-9+.]{0,80}") {
        let _ = parse_nested_query(&query);
    }

    #[test]
    fn signed_names_verify_and_nothing_else_does(stream in ".{0,40}", other in ".{0,60}") {
        let signer = StreamSigner::new(b"a secret key base for the property tests");
        let signed = signer.sign(&stream);
        prop_assert_eq!(signer.verify(&signed), Some(stream.clone()));
        prop_assert_eq!(StreamSigner::new(b"another secret").verify(&signed), None);
        if other != signed {
            prop_assert_eq!(signer.verify(&other), None);
        }
    }
}
