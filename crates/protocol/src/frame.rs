//! Server frames: encoding outbound frames.

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::disconnect::DisconnectReason;
use crate::identifier::Identifier;

/// A frame the server sends.
#[derive(Debug, Clone, Copy)]
pub enum ServerFrame<'a> {
    /// `{"type":"welcome"}`: the connection is accepted.
    Welcome,
    /// The extended protocol's welcome: `{"type":"welcome","sid":…}`, and after a session
    /// restore `"restored":true` with the identifiers whose subscriptions came back.
    WelcomeSession {
        /// The connection's session id (new on every connection, restored or not).
        sid: &'a str,
        /// `Some` when the session was restored: the restored subscriptions.
        restored_ids: Option<&'a [Identifier]>,
    },
    /// `{"type":"pong"}`: the answer to a client's `ping` command.
    Pong,
    /// `history` was served in full: every missed message was sent before this frame.
    ConfirmHistory {
        /// The subscription, echoed verbatim.
        identifier: &'a Identifier,
    },
    /// `history` cannot be served (epoch changed, messages evicted): nothing was sent and the
    /// app must resynchronise by other means.
    RejectHistory {
        /// The subscription, echoed verbatim.
        identifier: &'a Identifier,
    },
    /// `{"type":"ping","message":<unix seconds>}`: heartbeat.
    Ping {
        /// Unix time in seconds.
        at: u64,
    },
    /// The subscription is live: its streams are attached.
    ConfirmSubscription {
        /// The subscription, echoed verbatim.
        identifier: &'a Identifier,
    },
    /// The subscription was refused; the client forgets it.
    RejectSubscription {
        /// The subscription, echoed verbatim.
        identifier: &'a Identifier,
    },
    /// The server is closing the connection.
    Disconnect {
        /// Why.
        reason: DisconnectReason,
        /// Whether the client should reconnect; always sent explicitly.
        reconnect: bool,
    },
    /// Data for a subscription (a broadcast or a `transmit`).
    Message {
        /// The subscription, echoed verbatim.
        identifier: &'a Identifier,
        /// The message, as JSON text.
        message: &'a RawValue,
    },
    /// A ferrocable extension: the client's last command was refused, and why. Clients that
    /// do not know the type ignore it (`@rails/actioncable` routes it to no subscription,
    /// `@anycable/web` logs it).
    Error {
        /// A stable code such as `malformed_json` or `unknown_subscription`.
        code: &'static str,
        /// A human-readable explanation.
        message: &'a str,
    },
}

/// Encodes `s` as a JSON string literal, quotes included.
pub fn encode_json_string(s: &str) -> String {
    // Serializing a str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// Encodes a data frame from an identifier already encoded as a JSON string literal and a
/// message already encoded as JSON. This is the fan-out hot path: a hub calls it once per
/// (stream, identifier) and shares the bytes with every subscriber.
pub fn encode_data_frame(identifier_literal: &str, message_json: &str) -> Bytes {
    let mut out = String::with_capacity(identifier_literal.len() + message_json.len() + 27);
    out.push_str("{\"identifier\":");
    out.push_str(identifier_literal);
    out.push_str(",\"message\":");
    out.push_str(message_json);
    out.push('}');
    Bytes::from(out)
}

/// Encodes a data frame of a stored message: like [`encode_data_frame`], plus the extended
/// protocol's `stream_id`, `epoch` and `offset`. `stream_literal` and `epoch_literal` are
/// JSON string literals, encoded once per broadcast.
pub fn encode_data_frame_at(
    identifier_literal: &str,
    message_json: &str,
    stream_literal: &str,
    epoch_literal: &str,
    offset: u64,
) -> Bytes {
    let mut out = String::with_capacity(
        identifier_literal.len() + message_json.len() + stream_literal.len() + 72,
    );
    out.push_str("{\"identifier\":");
    out.push_str(identifier_literal);
    out.push_str(",\"message\":");
    out.push_str(message_json);
    out.push_str(",\"stream_id\":");
    out.push_str(stream_literal);
    out.push_str(",\"epoch\":");
    out.push_str(epoch_literal);
    out.push_str(",\"offset\":");
    out.push_str(itoa::Buffer::new().format(offset));
    out.push('}');
    Bytes::from(out)
}

impl ServerFrame<'_> {
    /// Encodes the frame as the text of one WebSocket message.
    pub fn encode(&self) -> Bytes {
        match self {
            ServerFrame::Welcome => Bytes::from_static(b"{\"type\":\"welcome\"}"),
            ServerFrame::WelcomeSession { sid, restored_ids } => {
                let mut out = format!("{{\"type\":\"welcome\",\"sid\":{}", encode_json_string(sid));
                if let Some(ids) = restored_ids {
                    out.push_str(",\"restored\":true,\"restored_ids\":[");
                    for (i, id) in ids.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(&encode_json_string(id.as_str()));
                    }
                    out.push(']');
                }
                out.push('}');
                Bytes::from(out)
            }
            ServerFrame::Pong => Bytes::from_static(b"{\"type\":\"pong\"}"),
            ServerFrame::ConfirmHistory { identifier } => Bytes::from(format!(
                "{{\"identifier\":{},\"type\":\"confirm_history\"}}",
                encode_json_string(identifier.as_str())
            )),
            ServerFrame::RejectHistory { identifier } => Bytes::from(format!(
                "{{\"identifier\":{},\"type\":\"reject_history\"}}",
                encode_json_string(identifier.as_str())
            )),
            ServerFrame::Ping { at } => {
                Bytes::from(format!("{{\"type\":\"ping\",\"message\":{at}}}"))
            }
            ServerFrame::ConfirmSubscription { identifier } => Bytes::from(format!(
                "{{\"identifier\":{},\"type\":\"confirm_subscription\"}}",
                encode_json_string(identifier.as_str())
            )),
            ServerFrame::RejectSubscription { identifier } => Bytes::from(format!(
                "{{\"identifier\":{},\"type\":\"reject_subscription\"}}",
                encode_json_string(identifier.as_str())
            )),
            ServerFrame::Disconnect { reason, reconnect } => Bytes::from(format!(
                "{{\"type\":\"disconnect\",\"reason\":\"{}\",\"reconnect\":{reconnect}}}",
                reason.as_str()
            )),
            ServerFrame::Message {
                identifier,
                message,
            } => encode_data_frame(&encode_json_string(identifier.as_str()), message.get()),
            ServerFrame::Error { code, message } => Bytes::from(format!(
                "{{\"type\":\"error\",\"reason\":\"{code}\",\"message\":{}}}",
                encode_json_string(message)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn golden_frames() {
        let id = Identifier::new(r#"{"channel":"ChatChannel","room":42}"#);
        assert_eq!(text(ServerFrame::Welcome.encode()), r#"{"type":"welcome"}"#);
        assert_eq!(
            text(ServerFrame::Ping { at: 1767225600 }.encode()),
            r#"{"type":"ping","message":1767225600}"#
        );
        assert_eq!(
            text(ServerFrame::ConfirmSubscription { identifier: &id }.encode()),
            r#"{"identifier":"{\"channel\":\"ChatChannel\",\"room\":42}","type":"confirm_subscription"}"#
        );
        assert_eq!(
            text(ServerFrame::RejectSubscription { identifier: &id }.encode()),
            r#"{"identifier":"{\"channel\":\"ChatChannel\",\"room\":42}","type":"reject_subscription"}"#
        );
        assert_eq!(
            text(
                ServerFrame::Disconnect {
                    reason: DisconnectReason::ServerRestart,
                    reconnect: true
                }
                .encode()
            ),
            r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
        );
        assert_eq!(
            text(
                ServerFrame::Disconnect {
                    reason: DisconnectReason::Unauthorized,
                    reconnect: false
                }
                .encode()
            ),
            r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#
        );
        let msg = RawValue::from_string(r#"{"text":"hi","user":7}"#.into()).unwrap();
        assert_eq!(
            text(
                ServerFrame::Message {
                    identifier: &id,
                    message: &msg
                }
                .encode()
            ),
            r#"{"identifier":"{\"channel\":\"ChatChannel\",\"room\":42}","message":{"text":"hi","user":7}}"#
        );
        assert_eq!(
            text(
                ServerFrame::Error {
                    code: "malformed_json",
                    message: "bad \"x\""
                }
                .encode()
            ),
            r#"{"type":"error","reason":"malformed_json","message":"bad \"x\""}"#
        );
    }

    #[test]
    fn golden_extended_frames() {
        let id = Identifier::new(r#"{"channel":"ChatChannel","id":42}"#);
        assert_eq!(
            text(
                ServerFrame::WelcomeSession {
                    sid: "rcl245",
                    restored_ids: None
                }
                .encode()
            ),
            r#"{"type":"welcome","sid":"rcl245"}"#
        );
        assert_eq!(
            text(
                ServerFrame::WelcomeSession {
                    sid: "yi421",
                    restored_ids: Some(std::slice::from_ref(&id))
                }
                .encode()
            ),
            r#"{"type":"welcome","sid":"yi421","restored":true,"restored_ids":["{\"channel\":\"ChatChannel\",\"id\":42}"]}"#
        );
        assert_eq!(text(ServerFrame::Pong.encode()), r#"{"type":"pong"}"#);
        assert_eq!(
            text(ServerFrame::ConfirmHistory { identifier: &id }.encode()),
            r#"{"identifier":"{\"channel\":\"ChatChannel\",\"id\":42}","type":"confirm_history"}"#
        );
        assert_eq!(
            text(ServerFrame::RejectHistory { identifier: &id }.encode()),
            r#"{"identifier":"{\"channel\":\"ChatChannel\",\"id\":42}","type":"reject_history"}"#
        );
        assert_eq!(
            text(encode_data_frame_at(
                &encode_json_string(id.as_str()),
                r#"{"text":"hello"}"#,
                &encode_json_string("chat_42"),
                &encode_json_string("vRXl"),
                32
            )),
            r#"{"identifier":"{\"channel\":\"ChatChannel\",\"id\":42}","message":{"text":"hello"},"stream_id":"chat_42","epoch":"vRXl","offset":32}"#
        );
    }

    #[test]
    fn every_frame_is_valid_json_and_echoes_the_identifier() {
        let tricky = Identifier::new("{\"channel\":\"A\",\"q\":\"\\u2028 \\\" </script>\"}");
        let msg = RawValue::from_string("[1,2]".into()).unwrap();
        for frame in [
            ServerFrame::ConfirmSubscription {
                identifier: &tricky,
            },
            ServerFrame::RejectSubscription {
                identifier: &tricky,
            },
            ServerFrame::Message {
                identifier: &tricky,
                message: &msg,
            },
        ] {
            let v: serde_json::Value = serde_json::from_slice(&frame.encode()).unwrap();
            assert_eq!(v["identifier"].as_str(), Some(tricky.as_str()));
        }
    }
}
