//! AnyCable RPC's JSON bodies (the HTTP transport): the proto messages as Go's
//! `encoding/json` writes them, snake_case keys, empty fields left out.
//!
//! Replies are read leniently where real apps differ: `status` as an integer (what the
//! protocol says), as an enum name (what Debian's ruby-google-protobuf 3.21 sends) or absent
//! (= ERROR, what an app exception gives); a missing list or map is empty.

use std::collections::BTreeMap;

use ferrocable_node::remote::{
    CommandCall, CommandReply, ConnectCall, ConnectReply, DisconnectCall, Env, State, Status,
};
use serde::{Deserialize, Deserializer, Serialize};

/// `Env` of a request.
#[derive(Debug, Serialize)]
pub(crate) struct EnvBody<'a> {
    pub(crate) url: &'a str,
    pub(crate) headers: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) cstate: &'a State,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) istate: &'a State,
}

impl<'a> EnvBody<'a> {
    fn new(env: &'a Env, cstate: &'a State, istate: &'a State) -> Self {
        EnvBody {
            url: &env.url,
            headers: &env.headers,
            cstate,
            istate,
        }
    }
}

static EMPTY: State = State::new();

/// `ConnectionRequest`.
#[derive(Debug, Serialize)]
pub(crate) struct ConnectBody<'a> {
    pub(crate) env: EnvBody<'a>,
}

impl<'a> ConnectBody<'a> {
    pub(crate) fn new(call: &'a ConnectCall) -> Self {
        ConnectBody {
            env: EnvBody::new(&call.env, &EMPTY, &EMPTY),
        }
    }
}

/// `CommandMessage`.
#[derive(Debug, Serialize)]
pub(crate) struct CommandBody<'a> {
    pub(crate) command: &'static str,
    pub(crate) identifier: &'a str,
    pub(crate) connection_identifiers: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<&'a str>,
    pub(crate) env: EnvBody<'a>,
}

impl<'a> CommandBody<'a> {
    pub(crate) fn new(call: &'a CommandCall) -> Self {
        CommandBody {
            command: call.kind.as_str(),
            identifier: &call.identifier,
            connection_identifiers: &call.identifiers,
            data: call.data.as_deref(),
            env: EnvBody::new(&call.env, &call.cstate, &call.istate),
        }
    }
}

/// `DisconnectRequest`.
#[derive(Debug, Serialize)]
pub(crate) struct DisconnectBody<'a> {
    pub(crate) identifiers: &'a str,
    pub(crate) subscriptions: &'a [String],
    pub(crate) env: EnvBody<'a>,
}

impl<'a> DisconnectBody<'a> {
    pub(crate) fn new(call: &'a DisconnectCall) -> Self {
        DisconnectBody {
            identifiers: &call.identifiers,
            subscriptions: &call.subscriptions,
            env: EnvBody::new(&call.env, &call.cstate, &call.istate),
        }
    }
}

/// Reads `status` as 0/1/2, `"ERROR"`/`"SUCCESS"`/`"FAILURE"` (any case) or null.
fn status<'de, D: Deserializer<'de>>(d: D) -> Result<Status, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i64),
        Name(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None | Some(Raw::Number(0)) => Ok(Status::Error),
        Some(Raw::Number(1)) => Ok(Status::Success),
        Some(Raw::Number(2)) => Ok(Status::Failure),
        Some(Raw::Number(n)) => Err(serde::de::Error::custom(format!(
            "unknown status {n} (0, 1 or 2)"
        ))),
        Some(Raw::Name(name)) => match name.to_ascii_uppercase().as_str() {
            "ERROR" => Ok(Status::Error),
            "SUCCESS" => Ok(Status::Success),
            "FAILURE" => Ok(Status::Failure),
            _ => Err(serde::de::Error::custom(format!(
                "unknown status {name:?} (ERROR, SUCCESS or FAILURE)"
            ))),
        },
    }
}

fn default_status() -> Status {
    Status::Error
}

/// A list or a map that may be `null`.
fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `EnvResponse`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EnvReply {
    #[serde(default, deserialize_with = "or_default")]
    cstate: State,
    #[serde(default, deserialize_with = "or_default")]
    istate: State,
}

/// `ConnectionResponse`.
#[derive(Debug, Deserialize)]
pub(crate) struct ConnectReplyBody {
    #[serde(default = "default_status", deserialize_with = "status")]
    status: Status,
    #[serde(default, deserialize_with = "or_default")]
    identifiers: String,
    #[serde(default, deserialize_with = "or_default")]
    transmissions: Vec<String>,
    #[serde(default, deserialize_with = "or_default")]
    error_msg: String,
    #[serde(default, deserialize_with = "or_default")]
    env: EnvReply,
}

impl From<ConnectReplyBody> for ConnectReply {
    fn from(b: ConnectReplyBody) -> Self {
        ConnectReply {
            status: b.status,
            identifiers: b.identifiers,
            transmissions: b.transmissions,
            cstate: b.env.cstate,
            error: (!b.error_msg.is_empty()).then_some(b.error_msg),
        }
    }
}

/// `CommandResponse` (presence is read by the presence work; unknown keys are ignored).
#[derive(Debug, Deserialize)]
pub(crate) struct CommandReplyBody {
    #[serde(default = "default_status", deserialize_with = "status")]
    status: Status,
    #[serde(default, deserialize_with = "or_default")]
    disconnect: bool,
    #[serde(default, deserialize_with = "or_default")]
    stop_streams: bool,
    #[serde(default, deserialize_with = "or_default")]
    streams: Vec<String>,
    #[serde(default, deserialize_with = "or_default")]
    transmissions: Vec<String>,
    #[serde(default, deserialize_with = "or_default")]
    error_msg: String,
    #[serde(default, deserialize_with = "or_default")]
    env: EnvReply,
    #[serde(default, deserialize_with = "or_default")]
    stopped_streams: Vec<String>,
    #[serde(default, deserialize_with = "or_default")]
    presence: Option<PresenceBody>,
}

/// `PresenceResponse`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PresenceBody {
    #[serde(default, rename = "type", deserialize_with = "or_default")]
    kind: String,
    #[serde(default, deserialize_with = "or_default")]
    id: String,
    #[serde(default, deserialize_with = "or_default")]
    info: String,
}

impl From<CommandReplyBody> for CommandReply {
    fn from(b: CommandReplyBody) -> Self {
        CommandReply {
            status: b.status,
            disconnect: b.disconnect,
            stop_streams: b.stop_streams,
            streams: b.streams,
            stopped_streams: b.stopped_streams,
            transmissions: b.transmissions,
            cstate: b.env.cstate,
            istate: b.env.istate,
            error: (!b.error_msg.is_empty()).then_some(b.error_msg),
            presence: b.presence.and_then(|p| {
                ferrocable_node::remote::PresenceChange::from_wire(&p.kind, p.id, p.info)
            }),
        }
    }
}

/// `DisconnectResponse`.
#[derive(Debug, Deserialize)]
pub(crate) struct DisconnectReplyBody {
    #[serde(default = "default_status", deserialize_with = "status")]
    pub(crate) status: Status,
    #[serde(default, deserialize_with = "or_default")]
    pub(crate) error_msg: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(json: &str) -> CommandReply {
        serde_json::from_str::<CommandReplyBody>(json)
            .unwrap()
            .into()
    }

    #[test]
    fn status_is_an_integer_a_name_or_absent() {
        assert_eq!(command(r#"{"status":1}"#).status, Status::Success);
        assert_eq!(command(r#"{"status":"FAILURE"}"#).status, Status::Failure);
        assert_eq!(command(r#"{"status":"success"}"#).status, Status::Success);
        assert_eq!(command(r#"{"status":0}"#).status, Status::Error);
        assert_eq!(command(r#"{"status":null}"#).status, Status::Error);
        let failed = command(r#"{"error_msg":"undefined method"}"#);
        assert_eq!(failed.status, Status::Error);
        assert_eq!(failed.error.as_deref(), Some("undefined method"));
        assert!(serde_json::from_str::<CommandReplyBody>(r#"{"status":7}"#).is_err());
        assert!(serde_json::from_str::<CommandReplyBody>(r#"{"status":"MAYBE"}"#).is_err());
    }

    #[test]
    fn a_real_subscribe_reply_decodes() {
        let r = command(
            r#"{"status":"SUCCESS","streams":["chat_1"],"transmissions":["{\"identifier\":\"x\",\"type\":\"confirm_subscription\"}"],"env":{"istate":{"$p":"room"}},"presence":{"type":"join","id":"alice","info":"{}"}}"#,
        );
        assert_eq!(r.status, Status::Success);
        assert_eq!(r.streams, ["chat_1"]);
        assert_eq!(r.istate["$p"], "room");
        assert_eq!(r.transmissions.len(), 1);
        assert_eq!(
            r.presence,
            Some(ferrocable_node::remote::PresenceChange {
                join: true,
                id: "alice".into(),
                info: "{}".into()
            })
        );
        // A leave without info, an unknown type, and info that is not JSON.
        let leave = command(r#"{"status":"SUCCESS","presence":{"type":"leave","id":"a"}}"#);
        assert_eq!(
            leave.presence.map(|p| (p.join, p.info)),
            Some((false, "null".into()))
        );
        assert!(
            command(r#"{"presence":{"type":"wave","id":"a"}}"#)
                .presence
                .is_none()
        );
        let odd = command(r#"{"presence":{"type":"join","id":"a","info":"plain text"}}"#);
        assert_eq!(odd.presence.unwrap().info, r#""plain text""#);
        let c: ConnectReply = serde_json::from_str::<ConnectReplyBody>(
            r#"{"status":"SUCCESS","identifiers":"{\"user\":\"alice\"}","transmissions":["{\"type\":\"welcome\"}"],"env":{}}"#,
        )
        .unwrap()
        .into();
        assert_eq!(c.identifiers, r#"{"user":"alice"}"#);
        assert!(c.error.is_none());
    }

    #[test]
    fn requests_are_snake_case_with_empty_state_left_out() {
        let env = Env {
            url: "http://localhost/cable".into(),
            headers: BTreeMap::from([("cookie".into(), "a=1".into())]),
        };
        let call = CommandCall {
            kind: ferrocable_node::remote::CommandKind::Message,
            identifier: r#"{"channel":"Chat"}"#.into(),
            identifiers: r#"{"user":"u"}"#.into(),
            data: Some(r#"{"action":"speak"}"#.into()),
            env: env.into(),
            cstate: State::from([("k".into(), "v".into())]),
            istate: State::new(),
            sid: None,
        };
        let json = serde_json::to_value(CommandBody::new(&call)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "command": "message",
                "identifier": "{\"channel\":\"Chat\"}",
                "connection_identifiers": "{\"user\":\"u\"}",
                "data": "{\"action\":\"speak\"}",
                "env": {"url": "http://localhost/cable", "headers": {"cookie": "a=1"}, "cstate": {"k": "v"}}
            })
        );
    }
}
