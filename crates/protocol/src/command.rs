//! Client commands: decoding inbound frames.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::DecodeError;
use crate::identifier::Identifier;

/// A command sent by the client, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand {
    /// `{"command":"subscribe","identifier":…}`: attach a channel.
    Subscribe {
        /// The subscription key.
        identifier: Identifier,
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
}

impl ClientCommand {
    /// The identifier every command carries.
    pub fn identifier(&self) -> &Identifier {
        match self {
            ClientCommand::Subscribe { identifier }
            | ClientCommand::Unsubscribe { identifier }
            | ClientCommand::Message { identifier, .. } => identifier,
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
        _ => return Err(DecodeError::UnknownCommand),
    };
    let identifier = Identifier::new(string_field(
        raw.identifier,
        DecodeError::MissingIdentifier,
    )?);
    Ok(match kind {
        0 => ClientCommand::Subscribe { identifier },
        1 => ClientCommand::Unsubscribe { identifier },
        _ => ClientCommand::Message {
            identifier,
            data: string_field(raw.data, DecodeError::MissingData)?,
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
                identifier: Identifier::new(r#"{"channel":"ChatChannel","room":42}"#)
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
        assert_eq!(cmd.identifier().as_str(), "{ \"channel\" : \"Ché\" }");
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
