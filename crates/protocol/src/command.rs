//! Client commands: decoding inbound frames.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::DecodeError;
use crate::identifier::Identifier;

/// Where a message sits in its stream's history: the storage epoch and the per-stream
/// offset (the extended protocol's `epoch` / `offset`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
pub struct StreamPosition {
    /// The history's storage generation.
    pub epoch: String,
    /// The message's offset (the first message of an epoch has offset 1).
    pub offset: u64,
}

/// A `history` request (alone or riding on `subscribe`): everything after the given
/// positions, and for streams without one everything since `since`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Unix time in seconds; used for streams absent from `streams`.
    pub since: Option<u64>,
    /// Last position seen per stream.
    pub streams: BTreeMap<String, StreamPosition>,
}

/// A command sent by the client, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    /// `{"command":"subscribe","identifier":…}`: attach a channel.
    Subscribe {
        /// The subscription key.
        identifier: Identifier,
        /// History to replay once the subscription is confirmed (extended protocol).
        history: Option<HistoryRequest>,
        /// A presence (id, info JSON) to join once confirmed (a client resubscribing after a
        /// reconnect sends the one it had joined).
        presence: Option<(String, String)>,
    },
    /// `{"command":"unsubscribe","identifier":…}`: detach a channel.
    Unsubscribe {
        /// The subscription key.
        identifier: Identifier,
    },
    /// `{"command":"message","identifier":…,"data":"<json>"}`: perform an action.
    Message {
        /// The subscription key.
        identifier: Identifier,
        /// The `data` string: JSON text whose `action` names the channel action.
        data: String,
    },
    /// `{"command":"history","identifier":…,"history":{…}}`: replay missed messages
    /// (extended protocol).
    History {
        /// The subscription key.
        identifier: Identifier,
        /// What to replay.
        history: HistoryRequest,
    },
    /// `{"command":"whisper","identifier":…,"data":{…}}`: a transient message to the other
    /// clients of the subscription's whisper stream (extended protocol; typing indicators).
    Whisper {
        /// The subscription key.
        identifier: Identifier,
        /// The `data` object, as its JSON text (unlike `message`, not a string).
        data: String,
    },
    /// `{"command":"join","identifier":…,"presence":{"id":…,"info":…}}`: this client is
    /// present on the subscription's presence stream (extended protocol).
    Join {
        /// The subscription key.
        identifier: Identifier,
        /// The presence id (one record per id, whatever the number of tabs).
        id: String,
        /// What others see of it, as JSON text (`null` when absent).
        info: String,
    },
    /// `{"command":"leave","identifier":…}`: this client is no longer present.
    Leave {
        /// The subscription key.
        identifier: Identifier,
    },
    /// `{"command":"presence","identifier":…}`: who is present now.
    Presence {
        /// The subscription key.
        identifier: Identifier,
    },
    /// `{"command":"pong"}`: the client answers a `ping` (extended protocol).
    Pong,
    /// `{"command":"ping"}`: the client checks the server is alive; answered with `pong`.
    Ping,
}

impl ClientCommand {
    /// The identifier, for the commands that carry one.
    pub fn identifier(&self) -> Option<&Identifier> {
        match self {
            ClientCommand::Subscribe { identifier, .. }
            | ClientCommand::Unsubscribe { identifier }
            | ClientCommand::Message { identifier, .. }
            | ClientCommand::Whisper { identifier, .. }
            | ClientCommand::Join { identifier, .. }
            | ClientCommand::Leave { identifier }
            | ClientCommand::Presence { identifier }
            | ClientCommand::History { identifier, .. } => Some(identifier),
            ClientCommand::Pong | ClientCommand::Ping => None,
        }
    }
}

#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(borrow, default)]
    command: Option<&'a RawValue>,
    #[serde(borrow, default)]
    identifier: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    history: Option<&'a RawValue>,
    #[serde(borrow, default)]
    presence: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawPresence<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
}

/// Longest presence id accepted (bytes).
pub(crate) const MAX_PRESENCE_ID: usize = 256;

/// Reads a `join`'s `presence` object: an `id` (a string, or a number taken as its text) and
/// any `info`.
fn presence_field(raw: Option<&RawValue>) -> Result<(String, String), DecodeError> {
    let raw = raw.ok_or(DecodeError::MalformedPresence)?;
    if !raw.get().starts_with('{') {
        return Err(DecodeError::MalformedPresence);
    }
    let p: RawPresence<'_> =
        serde_json::from_str(raw.get()).map_err(|_| DecodeError::MalformedPresence)?;
    let id = match p
        .id
        .map(|v| serde_json::from_str::<serde_json::Value>(v.get()))
    {
        Some(Ok(serde_json::Value::String(s))) => s,
        Some(Ok(serde_json::Value::Number(n))) => n.to_string(),
        _ => return Err(DecodeError::MalformedPresence),
    };
    if id.is_empty() || id.len() > MAX_PRESENCE_ID {
        return Err(DecodeError::MalformedPresence);
    }
    let info = p
        .info
        .map_or_else(|| "null".to_owned(), |i| i.get().to_owned());
    Ok((id, info))
}

#[derive(Deserialize)]
struct RawHistory {
    #[serde(default)]
    since: Option<serde_json::Value>,
    #[serde(default)]
    streams: Option<BTreeMap<String, StreamPosition>>,
}

/// Whether a `history` object is well formed but asks for nothing.
fn raw_history_is_empty(raw: Option<&RawValue>) -> bool {
    raw.is_some_and(|raw| {
        raw.get().starts_with('{')
            && serde_json::from_str::<RawHistory>(raw.get()).is_ok_and(|h| {
                matches!(
                    h.since,
                    None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false))
                ) && h.streams.is_none_or(|s| s.is_empty())
            })
    })
}

/// Reads a `history` object; a request with neither `since` nor `streams` asks for nothing
/// and is refused, as AnyCable does.
fn history_field(raw: Option<&RawValue>) -> Result<HistoryRequest, DecodeError> {
    let raw = raw.ok_or(DecodeError::MissingHistory)?;
    // serde would read an array as a struct: only an object is a history request.
    if !raw.get().starts_with('{') {
        return Err(DecodeError::MalformedHistory);
    }
    let h: RawHistory =
        serde_json::from_str(raw.get()).map_err(|_| DecodeError::MalformedHistory)?;
    let since = match h.since {
        // `@anycable/core` sends `false` when it has no timestamp.
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => None,
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(s) => Some(s),
            // Whole seconds are expected; a fraction is floored, a negative or absurd value refused.
            None => match n.as_f64() {
                Some(f) if (0.0..1e12).contains(&f) => Some(f as u64),
                _ => return Err(DecodeError::MalformedHistory),
            },
        },
        Some(_) => return Err(DecodeError::MalformedHistory),
    }
    .filter(|s| *s > 0);
    let streams = h.streams.unwrap_or_default();
    if since.is_none() && streams.is_empty() {
        return Err(DecodeError::MalformedHistory);
    }
    Ok(HistoryRequest { since, streams })
}

fn string_field(raw: Option<&RawValue>, missing: DecodeError) -> Result<String, DecodeError> {
    let raw = raw.ok_or(missing)?;
    serde_json::from_str::<String>(raw.get()).map_err(|_| missing)
}

/// Decodes one text frame of the `actioncable-v1-json` protocol.
///
/// Frames over `max_len` bytes are refused before parsing. Unknown fields are ignored,
/// as Rails does.
pub fn decode_command(frame: &[u8], max_len: usize) -> Result<ClientCommand, DecodeError> {
    if frame.len() > max_len {
        return Err(DecodeError::TooLarge {
            len: frame.len(),
            max: max_len,
        });
    }
    // serde accepts a JSON array for a struct, so check the shape first.
    match frame.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        _ => {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(frame) {
                    Ok(_) => DecodeError::NotAnObject,
                    Err(_) => DecodeError::MalformedJson,
                },
            );
        }
    }
    let raw: RawCommand<'_> =
        serde_json::from_slice(frame).map_err(|_| DecodeError::MalformedJson)?;
    let command = string_field(raw.command, DecodeError::MissingCommand)?;
    let kind = match command.as_str() {
        "subscribe" => 0,
        "unsubscribe" => 1,
        "message" => 2,
        "history" => 3,
        "whisper" => 4,
        "join" => 5,
        "leave" => 6,
        "presence" => 7,
        "pong" => return Ok(ClientCommand::Pong),
        "ping" => return Ok(ClientCommand::Ping),
        _ => return Err(DecodeError::UnknownCommand),
    };
    let identifier = Identifier::new(string_field(
        raw.identifier,
        DecodeError::MissingIdentifier,
    )?);
    Ok(match kind {
        0 => ClientCommand::Subscribe {
            identifier,
            presence: match raw.presence {
                None => None,
                Some(p) if p.get() == "null" => None,
                Some(p) => Some(presence_field(Some(p))?),
            },
            // A subscribe's history that asks for nothing (no time, no positions) is no
            // history request, not an error: the subscription itself is valid.
            history: if raw_history_is_empty(raw.history) {
                None
            } else {
                raw.history.map(|h| history_field(Some(h))).transpose()?
            },
        },
        1 => ClientCommand::Unsubscribe { identifier },
        2 => ClientCommand::Message {
            identifier,
            data: string_field(raw.data, DecodeError::MissingData)?,
        },
        3 => ClientCommand::History {
            identifier,
            history: history_field(raw.history)?,
        },
        5 => {
            let (id, info) = presence_field(raw.presence)?;
            ClientCommand::Join {
                identifier,
                id,
                info,
            }
        }
        6 => ClientCommand::Leave { identifier },
        7 => ClientCommand::Presence { identifier },
        _ => ClientCommand::Whisper {
            identifier,
            data: match raw.data {
                Some(d) if d.get().starts_with('{') => d.get().to_owned(),
                _ => return Err(DecodeError::MalformedWhisper),
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = crate::DEFAULT_MAX_COMMAND_BYTES;

    fn decode(s: &str) -> Result<ClientCommand, DecodeError> {
        decode_command(s.as_bytes(), MAX)
    }

    #[test]
    fn golden_subscribe() {
        let f =
            r#"{"command":"subscribe","identifier":"{\"channel\":\"ChatChannel\",\"room\":42}"}"#;
        assert_eq!(
            decode(f),
            Ok(ClientCommand::Subscribe {
                identifier: Identifier::new(r#"{"channel":"ChatChannel","room":42}"#),
                history: None,
                presence: None,
            })
        );
    }

    #[test]
    fn golden_unsubscribe() {
        let f =
            r#"{"command":"unsubscribe","identifier":"{\"channel\":\"ChatChannel\",\"room\":42}"}"#;
        assert_eq!(
            decode(f),
            Ok(ClientCommand::Unsubscribe {
                identifier: Identifier::new(r#"{"channel":"ChatChannel","room":42}"#)
            })
        );
    }

    #[test]
    fn golden_whisper_and_malformed_ones() {
        let f = r#"{"command":"whisper","identifier":"{\"channel\":\"$pubsub\",\"stream_name\":\"x\"}","data":{"typing":true}}"#;
        match decode(f) {
            Ok(ClientCommand::Whisper { identifier, data }) => {
                assert_eq!(
                    identifier.as_str(),
                    r#"{"channel":"$pubsub","stream_name":"x"}"#
                );
                assert_eq!(data, r#"{"typing":true}"#);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            r#"{"command":"whisper","identifier":"x","data":"{\"typing\":true}"}"#,
            r#"{"command":"whisper","identifier":"x","data":[1]}"#,
            r#"{"command":"whisper","identifier":"x"}"#,
        ] {
            assert_eq!(decode(bad), Err(DecodeError::MalformedWhisper), "{bad}");
        }
        assert_eq!(
            decode(r#"{"command":"whisper","data":{}}"#),
            Err(DecodeError::MissingIdentifier)
        );
    }

    #[test]
    fn golden_presence_commands_and_malformed_joins() {
        let id = r#""{\"channel\":\"$pubsub\",\"stream_name\":\"x\"}""#;
        let f = format!(
            r#"{{"command":"join","identifier":{id},"presence":{{"id":"42","info":{{"name":"Ada"}}}}}}"#
        );
        assert_eq!(
            decode(&f),
            Ok(ClientCommand::Join {
                identifier: Identifier::new(r#"{"channel":"$pubsub","stream_name":"x"}"#),
                id: "42".into(),
                info: r#"{"name":"Ada"}"#.into(),
            })
        );
        let f = format!(r#"{{"command":"join","identifier":{id},"presence":{{"id":7}}}}"#);
        assert!(
            matches!(decode(&f), Ok(ClientCommand::Join { id, info, .. }) if id == "7" && info == "null")
        );
        let f = format!(r#"{{"command":"leave","identifier":{id}}}"#);
        assert!(matches!(decode(&f), Ok(ClientCommand::Leave { .. })));
        let f = format!(r#"{{"command":"presence","identifier":{id},"data":{{}}}}"#);
        assert!(matches!(decode(&f), Ok(ClientCommand::Presence { .. })));
        let long = "x".repeat(MAX_PRESENCE_ID + 1);
        for presence in [
            "".to_owned(),
            r#","presence":null"#.to_owned(),
            r#","presence":[1]"#.to_owned(),
            r#","presence":{"info":{}}"#.to_owned(),
            r#","presence":{"id":""}"#.to_owned(),
            r#","presence":{"id":{"a":1}}"#.to_owned(),
            format!(r#","presence":{{"id":"{long}"}}"#),
        ] {
            let f = format!(r#"{{"command":"join","identifier":{id}{presence}}}"#);
            assert_eq!(decode(&f), Err(DecodeError::MalformedPresence), "{f}");
        }
    }

    #[test]
    fn golden_message() {
        let f = r#"{"command":"message","identifier":"{\"channel\":\"ChatChannel\",\"room\":42}","data":"{\"text\":\"hi\",\"action\":\"speak\"}"}"#;
        assert_eq!(
            decode(f),
            Ok(ClientCommand::Message {
                identifier: Identifier::new(r#"{"channel":"ChatChannel","room":42}"#),
                data: r#"{"text":"hi","action":"speak"}"#.into(),
            })
        );
    }

    #[test]
    fn identifier_text_survives_unusual_spacing_and_unicode() {
        let f =
            r#"{"identifier":"{ \"channel\" : \"Ch\u00e9\" }","command":"subscribe","extra":[1]}"#;
        let cmd = decode(f).unwrap();
        assert_eq!(
            cmd.identifier().unwrap().as_str(),
            "{ \"channel\" : \"Ché\" }"
        );
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(decode("{"), Err(DecodeError::MalformedJson));
        assert_eq!(decode(""), Err(DecodeError::MalformedJson));
        assert_eq!(decode("not json"), Err(DecodeError::MalformedJson));
        assert_eq!(
            decode("[\"subscribe\",\"x\"]"),
            Err(DecodeError::NotAnObject)
        );
        assert_eq!(decode("42"), Err(DecodeError::NotAnObject));
        assert_eq!(decode("{}"), Err(DecodeError::MissingCommand));
        assert_eq!(decode(r#"{"command":5}"#), Err(DecodeError::MissingCommand));
        assert_eq!(
            decode(r#"{"command":"dance","identifier":"{}"}"#),
            Err(DecodeError::UnknownCommand)
        );
        assert_eq!(
            decode(r#"{"command":"subscribe"}"#),
            Err(DecodeError::MissingIdentifier)
        );
        assert_eq!(
            decode(r#"{"command":"subscribe","identifier":{"channel":"A"}}"#),
            Err(DecodeError::MissingIdentifier)
        );
        assert_eq!(
            decode(r#"{"command":"message","identifier":"{}"}"#),
            Err(DecodeError::MissingData)
        );
        assert_eq!(
            decode(r#"{"command":"message","identifier":"{}","data":{"action":"x"}}"#),
            Err(DecodeError::MissingData)
        );
        assert_eq!(
            decode(r#"{"command":"subscribe","command":"subscribe","identifier":"{}"}"#),
            Err(DecodeError::MalformedJson)
        );
    }

    #[test]
    fn golden_extended_commands() {
        let id = Identifier::new(r#"{"channel":"ChatChannel","id":42}"#);
        let f = r#"{"command":"history","identifier":"{\"channel\":\"ChatChannel\",\"id\":42}","history":{"since":1681828329,"streams":{"chat_42":{"epoch":"vRXl","offset":32}}}}"#;
        let mut streams = BTreeMap::new();
        streams.insert(
            "chat_42".to_string(),
            StreamPosition {
                epoch: "vRXl".into(),
                offset: 32,
            },
        );
        assert_eq!(
            decode(f),
            Ok(ClientCommand::History {
                identifier: id.clone(),
                history: HistoryRequest {
                    since: Some(1681828329),
                    streams,
                },
            })
        );
        let f = r#"{"command":"subscribe","identifier":"{\"channel\":\"ChatChannel\",\"id\":42}","history":{"since":1681828329.7}}"#;
        assert_eq!(
            decode(f),
            Ok(ClientCommand::Subscribe {
                identifier: id,
                history: Some(HistoryRequest {
                    since: Some(1681828329),
                    streams: BTreeMap::new(),
                }),
                presence: None,
            })
        );
        // `@anycable/core` attaches an empty request to a first subscribe.
        let f =
            r#"{"command":"subscribe","identifier":"{}","history":{"since":false,"streams":{}}}"#;
        assert_eq!(
            decode(f),
            Ok(ClientCommand::Subscribe {
                identifier: Identifier::new("{}"),
                history: None,
                presence: None,
            })
        );
        assert_eq!(decode(r#"{"command":"pong"}"#), Ok(ClientCommand::Pong));
        assert_eq!(decode(r#"{"command":"ping"}"#), Ok(ClientCommand::Ping));
    }

    #[test]
    fn bad_history_is_a_typed_error() {
        for f in [
            r#"{"command":"history","identifier":"{}"}"#,
            r#"{"command":"history","identifier":"{}","history":{}}"#,
            r#"{"command":"history","identifier":"{}","history":{"since":-5}}"#,
            r#"{"command":"history","identifier":"{}","history":{"since":"yesterday"}}"#,
            r#"{"command":"history","identifier":"{}","history":{"streams":{"a":{"epoch":1,"offset":2}}}}"#,
            r#"{"command":"history","identifier":"{}","history":{"streams":{"a":{"epoch":"e","offset":-2}}}}"#,
            r#"{"command":"subscribe","identifier":"{}","history":[1]}"#,
        ] {
            assert!(
                matches!(
                    decode(f),
                    Err(DecodeError::MissingHistory | DecodeError::MalformedHistory)
                ),
                "{f}"
            );
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_parsing() {
        let big = format!(
            r#"{{"command":"message","identifier":"{{}}","data":"{}"}}"#,
            "x".repeat(100)
        );
        assert_eq!(
            decode_command(big.as_bytes(), 50),
            Err(DecodeError::TooLarge {
                len: big.len(),
                max: 50
            })
        );
        assert!(decode_command(big.as_bytes(), big.len()).is_ok());
    }
}
