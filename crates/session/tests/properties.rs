//! Properties of the session decoders over generated input: any stored bytes are a session or
//! `Corrupt` (never a panic, never a large allocation), every session round-trips through the
//! codec, and cookies verify only as signed.
#![allow(missing_docs)]

use ferrocable_session::{Codec, CookieSigner, SessionData, StoreError};
use proptest::prelude::*;

fn codec() -> Codec {
    Codec {
        max_bytes: 64 * 1024,
        compress_above: Some(256),
    }
}

proptest! {
    #[test]
    fn any_stored_bytes_are_a_session_or_corrupt(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        match codec().decode(&bytes) {
            Ok(_) | Err(StoreError::Corrupt(_)) => {}
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    #[test]
    fn compressed_records_claiming_huge_sizes_are_corrupt(claim in (64u32 * 64 * 1024 + 1)..u32::MAX, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        // Tag `z` is the compressed form: a 4-byte size, then the lz4 block.
        let mut bytes = vec![b'z'];
        bytes.extend_from_slice(&claim.to_le_bytes());
        bytes.extend_from_slice(&tail);
        let corrupt = matches!(codec().decode(&bytes), Err(StoreError::Corrupt(_)));
        prop_assert!(corrupt);
    }

    #[test]
    fn sessions_round_trip(entries in proptest::collection::btree_map("[a-z_]{1,10}", ".{0,200}", 0..12)) {
        let data: SessionData = entries
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::from(v)))
            .collect();
        let encoded = codec().encode(&data).expect("under the size cap");
        prop_assert_eq!(codec().decode(&encoded).expect("decodes"), data);
    }

    #[test]
    fn cookies_verify_only_as_signed(id in "[A-Za-z0-9_-]{1,40}", other in ".{0,80}") {
        let signer = CookieSigner::new(b"a secret key base for the property tests");
        let cookie = signer.sign(&id);
        prop_assert_eq!(signer.verify(&cookie), Some(id.as_str()));
        prop_assert_eq!(CookieSigner::new(b"another secret").verify(&cookie), None);
        if other != cookie {
            prop_assert_eq!(signer.verify(&other), None);
        }
    }
}
