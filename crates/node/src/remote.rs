//! An app on the far side of a call (AnyCable RPC): the node holds the sockets, the app
//! decides who connects and runs the channels the node has no Rust code for.
//!
//! The node speaks to it in these semantic types; a transport (HTTP JSON or gRPC, in the
//! `ferrocable-rpc` crate) carries them. What the node does with each reply follows
//! anycable-go (`node/node.go`, `handleCommandReply`): stop streams, add streams, merge the
//! channel state, merge the connection state, send the transmissions as they came, then
//! close if the app asked.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use crate::BoxFuture;
use crate::auth::ConnectRequest;

/// A state map kept for the app between calls: the connection's (`cstate`) or one
/// channel's (`istate`). Replies carry changed keys only; an empty value deletes a key.
pub type State = BTreeMap<String, String>;

/// Applies a reply's delta to `state`: each key set, a key with an empty value removed.
pub fn merge_state(state: &mut State, delta: State) {
    for (key, value) in delta {
        if value.is_empty() {
            state.remove(&key);
        } else {
            state.insert(key, value);
        }
    }
}

/// The request a connection was opened with, as the app sees it on every call: the
/// absolute URL and the forwarded headers (`cookie` and `REMOTE_ADDR` by default), so the
/// app can rebuild its request and session for a reflex as for the connect.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Env {
    /// `http(s)://host/path?query` of the upgrade request.
    pub url: String,
    /// Forwarded header name → value.
    pub headers: BTreeMap<String, String>,
}

/// How the app answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done: the connection is identified, the subscription confirmed, the action run.
    Success,
    /// Refused: the connection is rejected, the subscription rejected (its transmissions say so).
    Failure,
    /// The app failed (an exception): the connection closes with 1011, a command gets an error.
    Error,
}

/// The app is asked who a new connection is.
#[derive(Debug, Clone)]
pub struct ConnectCall {
    /// The upgrade request.
    pub env: Arc<Env>,
    /// The session id the node gave the connection (sent as `x-anycable-meta-sid`).
    pub sid: Option<String>,
}

/// What the app said of a new connection.
#[derive(Debug, Clone)]
pub struct ConnectReply {
    /// Accepted, rejected or failed.
    pub status: Status,
    /// The connection's identifiers, as the app encodes them (a JSON object), sent back on
    /// every later call.
    pub identifiers: String,
    /// Frames for the client (the welcome, or the disconnect of a rejection), verbatim.
    pub transmissions: Vec<String>,
    /// Changes to the connection state.
    pub cstate: State,
    /// The app's error message, for the log.
    pub error: Option<String>,
}

/// Which channel callback a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// `subscribed`.
    Subscribe,
    /// `unsubscribed`.
    Unsubscribe,
    /// An action (`perform`).
    Message,
}

impl CommandKind {
    /// The command's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Subscribe => "subscribe",
            CommandKind::Unsubscribe => "unsubscribe",
            CommandKind::Message => "message",
        }
    }
}

/// A channel command for the app.
#[derive(Debug, Clone)]
pub struct CommandCall {
    /// Which callback.
    pub kind: CommandKind,
    /// The subscription's identifier, as the client sent it.
    pub identifier: String,
    /// The connection's identifiers, as the app returned them at connect.
    pub identifiers: Arc<str>,
    /// The message's `data` (messages only), as the client sent it.
    pub data: Option<String>,
    /// The upgrade request.
    pub env: Arc<Env>,
    /// The whole connection state.
    pub cstate: State,
    /// This channel's state.
    pub istate: State,
    /// The connection's session id.
    pub sid: Option<String>,
}

/// What the app did with a command.
#[derive(Debug, Clone)]
pub struct CommandReply {
    /// Done, refused or failed.
    pub status: Status,
    /// Close the connection once the reply is applied.
    pub disconnect: bool,
    /// Detach every stream of the subscription (before `streams` are added).
    pub stop_streams: bool,
    /// Streams to attach.
    pub streams: Vec<String>,
    /// Streams to detach (when `stop_streams` is not set).
    pub stopped_streams: Vec<String>,
    /// Frames for the client, verbatim (`confirm_subscription`, an action's `transmit`).
    pub transmissions: Vec<String>,
    /// Changes to the connection state.
    pub cstate: State,
    /// Changes to this channel's state.
    pub istate: State,
    /// The app's error message, for the log and the client's `error` frame.
    pub error: Option<String>,
    /// The app joined or left the client on the channel's presence stream (istate `$p`).
    pub presence: Option<PresenceChange>,
}

/// A presence change the app asks for in a command reply (anycable-rails' `join_presence`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// `true`: join; `false`: leave.
    pub join: bool,
    /// The presence id.
    pub id: String,
    /// The info, as JSON text.
    pub info: String,
}

impl PresenceChange {
    /// From the wire's `type`, `id` and `info` (a JSON string; anything else becomes one).
    pub fn from_wire(kind: &str, id: String, info: String) -> Option<Self> {
        let join = match kind {
            "join" => true,
            "leave" => false,
            _ => return None,
        };
        let info = if info.is_empty() {
            "null".to_owned()
        } else if serde_json::from_str::<&serde_json::value::RawValue>(&info).is_ok() {
            info
        } else {
            serde_json::Value::String(info).to_string()
        };
        Some(PresenceChange { join, id, info })
    }
}

impl CommandReply {
    /// A reply that changes nothing, with `status`.
    pub fn new(status: Status) -> Self {
        CommandReply {
            status,
            disconnect: false,
            stop_streams: false,
            streams: Vec::new(),
            stopped_streams: Vec::new(),
            transmissions: Vec::new(),
            cstate: State::new(),
            istate: State::new(),
            error: None,
            presence: None,
        }
    }
}

/// A connection of the app's ended: it runs `unsubscribed` for each subscription and
/// `disconnect` for the connection.
#[derive(Debug, Clone)]
pub struct DisconnectCall {
    /// The connection's identifiers.
    pub identifiers: Arc<str>,
    /// The identifiers of the subscriptions the app served.
    pub subscriptions: Vec<String>,
    /// The upgrade request.
    pub env: Arc<Env>,
    /// The whole connection state.
    pub cstate: State,
    /// Each subscription's state, JSON-encoded, by identifier.
    pub istate: State,
    /// The connection's session id.
    pub sid: Option<String>,
}

/// Why a call to the app did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The app could not be reached (refused, reset, circuit open); retried within the budget.
    #[error("the app is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No answer within the call's deadline.
    #[error("the app did not answer in time")]
    Timeout,
    /// The app refused the node's credentials (a wrong RPC secret).
    #[error("the app refused the RPC secret")]
    Unauthenticated,
    /// The app answered something that is not a reply (a 4xx/5xx, a body that does not decode).
    #[error("the app's answer is not a reply: {0}")]
    BadReply(String),
    /// Too many calls wait already (the queue's bound).
    #[error("too many calls to the app are waiting")]
    Overloaded,
}

/// The app behind the node. A transport implements it; the node calls it for connections
/// (when it is set, every connection is identified by the app) and for every channel that
/// has no Rust channel registered under its name.
pub trait RemoteApp: Send + Sync + 'static {
    /// What of the upgrade request travels with every call (URL, forwarded headers).
    fn env(&self, request: &ConnectRequest) -> Env;

    /// Who is this connection?
    fn connect(
        &self,
        call: ConnectCall,
    ) -> impl Future<Output = Result<ConnectReply, CallError>> + Send;

    /// Runs a channel command.
    fn command(
        &self,
        call: CommandCall,
    ) -> impl Future<Output = Result<CommandReply, CallError>> + Send;

    /// The connection ended. Not awaited by the connection: the transport queues it (bounded,
    /// rate-limited) and drains the queue at shutdown.
    fn disconnect(&self, call: DisconnectCall);
}

/// Object-safe form of [`RemoteApp`].
pub(crate) trait DynRemoteApp: Send + Sync {
    fn env(&self, request: &ConnectRequest) -> Env;
    fn connect(&self, call: ConnectCall) -> BoxFuture<'_, Result<ConnectReply, CallError>>;
    fn command(&self, call: CommandCall) -> BoxFuture<'_, Result<CommandReply, CallError>>;
    fn disconnect(&self, call: DisconnectCall);
}

impl<R: RemoteApp> DynRemoteApp for R {
    fn env(&self, request: &ConnectRequest) -> Env {
        RemoteApp::env(self, request)
    }
    fn connect(&self, call: ConnectCall) -> BoxFuture<'_, Result<ConnectReply, CallError>> {
        Box::pin(RemoteApp::connect(self, call))
    }
    fn command(&self, call: CommandCall) -> BoxFuture<'_, Result<CommandReply, CallError>> {
        Box::pin(RemoteApp::command(self, call))
    }
    fn disconnect(&self, call: DisconnectCall) {
        RemoteApp::disconnect(self, call)
    }
}

/// The identity attributes of an app's identifiers JSON (`{"user":"gid://app/User/1"}`):
/// string values as they are, others as their JSON text. Not an object: none.
pub(crate) fn identifiers_of(identifiers: &str) -> BTreeMap<String, String> {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(identifiers) {
        Ok(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_value_deletes_a_key() {
        let mut state = State::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
        merge_state(
            &mut state,
            State::from([("a".into(), String::new()), ("c".into(), "3".into())]),
        );
        assert_eq!(
            state,
            State::from([("b".into(), "2".into()), ("c".into(), "3".into())])
        );
    }

    #[test]
    fn identifiers_become_attributes() {
        let attrs = identifiers_of(r#"{"user":"gid://app/User/1","n":7}"#);
        assert_eq!(attrs["user"], "gid://app/User/1");
        assert_eq!(attrs["n"], "7");
        assert!(identifiers_of("not json").is_empty());
    }
}
