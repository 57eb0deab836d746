//! Properties of the command decoder over generated input: any bytes give a typed answer
//! (never a panic), frames past the limit are refused, and every well-formed command decodes
//! to what it says. `PROPTEST_CASES` sets the number of cases (`scripts/properties.sh` runs
//! the long version).
#![allow(missing_docs)]

use ferrocable_protocol::{ClientCommand, DecodeError, decode_command};
use proptest::prelude::*;

/// JSON text of an identifier object with a channel and a few params.
fn identifier() -> impl Strategy<Value = String> {
    (
        "[A-Za-z:]{1,30}",
        proptest::collection::btree_map("[a-z_]{1,8}", any::<i32>(), 0..4),
    )
        .prop_map(|(channel, params)| {
            let mut map = serde_json::Map::new();
            map.insert("channel".into(), channel.into());
            for (k, v) in params {
                map.insert(k, v.into());
            }
            serde_json::Value::Object(map).to_string()
        })
}

proptest! {
    #[test]
    fn any_bytes_get_an_answer_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_command(&bytes, 256);
    }

    #[test]
    fn any_json_shaped_text_gets_an_answer(text in r#"\{("[a-z]{0,10}":("[^"\\]{0,20}"|[0-9]{1,5}|null|\{\}|\[\]),?){0,5}\}"#) {
        let _ = decode_command(text.as_bytes(), 65_536);
    }

    #[test]
    fn frames_over_the_limit_are_refused_whatever_they_hold(extra in 1usize..64, fill in any::<u8>()) {
        let bytes = vec![fill; 128 + extra];
        let refused = matches!(decode_command(&bytes, 128), Err(DecodeError::TooLarge { .. }));
        prop_assert!(refused);
    }

    #[test]
    fn subscribe_and_message_round_trip(id in identifier(), action in "[a-z_]{1,12}", n in any::<i64>()) {
        let frame = serde_json::json!({"command": "subscribe", "identifier": id}).to_string();
        match decode_command(frame.as_bytes(), 65_536) {
            Ok(ClientCommand::Subscribe { identifier, history: None, .. }) => prop_assert_eq!(identifier.as_str(), id.as_str()),
            other => prop_assert!(false, "{frame} -> {other:?}"),
        }
        let data = serde_json::json!({"action": action, "n": n}).to_string();
        let frame = serde_json::json!({"command": "message", "identifier": id, "data": data}).to_string();
        match decode_command(frame.as_bytes(), 65_536) {
            Ok(ClientCommand::Message { identifier, data: got }) => {
                prop_assert_eq!(identifier.as_str(), id.as_str());
                prop_assert_eq!(got, data);
            }
            other => prop_assert!(false, "{frame} -> {other:?}"),
        }
    }

    #[test]
    fn history_requests_keep_every_position(
        id in identifier(),
        since in proptest::option::of(1u64..4_000_000_000),
        streams in proptest::collection::btree_map("[a-z:]{1,16}", ("[a-f0-9]{1,12}", 1u64..u64::MAX / 2), 0..5),
    ) {
        // A request for nothing (no `since`, no streams; `since: 0` is none) is malformed by
        // design: ask for everything since 1 then.
        let since = if since.is_none() && streams.is_empty() { Some(1) } else { since };
        let positions: serde_json::Map<String, serde_json::Value> = streams
            .iter()
            .map(|(s, (epoch, offset))| (s.clone(), serde_json::json!({"epoch": epoch, "offset": offset})))
            .collect();
        let mut history = serde_json::json!({"streams": positions});
        if let Some(since) = since {
            history["since"] = since.into();
        }
        let frame = serde_json::json!({"command": "history", "identifier": id, "history": history}).to_string();
        match decode_command(frame.as_bytes(), 65_536) {
            Ok(ClientCommand::History { history, .. }) => {
                prop_assert_eq!(history.since, since);
                prop_assert_eq!(history.streams.len(), streams.len());
                for (s, (epoch, offset)) in &streams {
                    let p = &history.streams[s];
                    prop_assert_eq!(&p.epoch, epoch);
                    prop_assert_eq!(p.offset, *offset);
                }
            }
            other => prop_assert!(false, "{frame} -> {other:?}"),
        }
    }

    #[test]
    fn identifier_params_of_any_text_are_an_answer(text in ".{0,64}") {
        let _ = ferrocable_protocol::Identifier::new(text).params();
    }
}
