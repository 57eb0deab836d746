//! The `anycable.RPC` messages (anycable-rb `protos/rpc.proto`), written from the field list
//! with prost's derive: no `protoc` at build time, and the field numbers are in plain sight.
//! Public so that a test app can speak the same service.

use std::collections::BTreeMap;

/// `anycable.Status`: ERROR = 0, SUCCESS = 1, FAILURE = 2.
pub mod status {
    /// The app failed.
    pub const ERROR: i32 = 0;
    /// Done.
    pub const SUCCESS: i32 = 1;
    /// Refused.
    pub const FAILURE: i32 = 2;
}

/// `Env`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Env {
    /// The request URL.
    #[prost(string, tag = "1")]
    pub url: String,
    /// Forwarded headers.
    #[prost(btree_map = "string, string", tag = "2")]
    pub headers: BTreeMap<String, String>,
    /// Connection state.
    #[prost(btree_map = "string, string", tag = "3")]
    pub cstate: BTreeMap<String, String>,
    /// Channel state.
    #[prost(btree_map = "string, string", tag = "4")]
    pub istate: BTreeMap<String, String>,
}

/// `EnvResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EnvResponse {
    /// Connection state changes.
    #[prost(btree_map = "string, string", tag = "1")]
    pub cstate: BTreeMap<String, String>,
    /// Channel state changes.
    #[prost(btree_map = "string, string", tag = "2")]
    pub istate: BTreeMap<String, String>,
}

/// `PresenceResponse` (read by the presence work).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PresenceResponse {
    /// `join` or `leave`.
    #[prost(string, tag = "1")]
    pub r#type: String,
    /// The presence id.
    #[prost(string, tag = "2")]
    pub id: String,
    /// Info as JSON.
    #[prost(string, tag = "3")]
    pub info: String,
    /// Seconds before a leave counts.
    #[prost(uint32, tag = "4")]
    pub ttl: u32,
}

/// `ConnectionRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectionRequest {
    /// The request.
    #[prost(message, optional, tag = "3")]
    pub env: Option<Env>,
}

/// `ConnectionResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectionResponse {
    /// See [`status`].
    #[prost(int32, tag = "1")]
    pub status: i32,
    /// The connection's identifiers (JSON).
    #[prost(string, tag = "2")]
    pub identifiers: String,
    /// Frames for the client.
    #[prost(string, repeated, tag = "3")]
    pub transmissions: Vec<String>,
    /// The app's error.
    #[prost(string, tag = "4")]
    pub error_msg: String,
    /// State changes.
    #[prost(message, optional, tag = "5")]
    pub env: Option<EnvResponse>,
}

/// `CommandMessage`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommandMessage {
    /// `subscribe`, `unsubscribe` or `message`.
    #[prost(string, tag = "1")]
    pub command: String,
    /// The channel identifier.
    #[prost(string, tag = "2")]
    pub identifier: String,
    /// The connection's identifiers.
    #[prost(string, tag = "3")]
    pub connection_identifiers: String,
    /// A message's data.
    #[prost(string, tag = "4")]
    pub data: String,
    /// The request and state.
    #[prost(message, optional, tag = "5")]
    pub env: Option<Env>,
}

/// `CommandResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommandResponse {
    /// See [`status`].
    #[prost(int32, tag = "1")]
    pub status: i32,
    /// Close the connection.
    #[prost(bool, tag = "2")]
    pub disconnect: bool,
    /// Detach every stream.
    #[prost(bool, tag = "3")]
    pub stop_streams: bool,
    /// Streams to attach.
    #[prost(string, repeated, tag = "4")]
    pub streams: Vec<String>,
    /// Frames for the client.
    #[prost(string, repeated, tag = "5")]
    pub transmissions: Vec<String>,
    /// The app's error.
    #[prost(string, tag = "6")]
    pub error_msg: String,
    /// State changes.
    #[prost(message, optional, tag = "7")]
    pub env: Option<EnvResponse>,
    /// Streams to detach.
    #[prost(string, repeated, tag = "8")]
    pub stopped_streams: Vec<String>,
    /// Presence change.
    #[prost(message, optional, tag = "9")]
    pub presence: Option<PresenceResponse>,
}

/// `DisconnectRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DisconnectRequest {
    /// The connection's identifiers.
    #[prost(string, tag = "1")]
    pub identifiers: String,
    /// The subscriptions' identifiers.
    #[prost(string, repeated, tag = "2")]
    pub subscriptions: Vec<String>,
    /// The request and state.
    #[prost(message, optional, tag = "5")]
    pub env: Option<Env>,
}

/// `DisconnectResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DisconnectResponse {
    /// See [`status`].
    #[prost(int32, tag = "1")]
    pub status: i32,
    /// The app's error.
    #[prost(string, tag = "2")]
    pub error_msg: String,
}

/// The method paths of the service.
pub mod path {
    /// `Connect`.
    pub const CONNECT: &str = "/anycable.RPC/Connect";
    /// `Command`.
    pub const COMMAND: &str = "/anycable.RPC/Command";
    /// `Disconnect`.
    pub const DISCONNECT: &str = "/anycable.RPC/Disconnect";
}
