//! The two ways a call reaches the app: HTTP JSON (the Rails-mounted `/_anycable`) and gRPC
//! (`anycable.RPC`). Both take the same calls and give the same replies.

use std::time::Duration;

use ferrocable_node::remote::{
    CallError, CommandCall, CommandReply, ConnectCall, ConnectReply, DisconnectCall, Status,
};

use crate::{grpc, http, wire};

/// A call, as the node made it.
#[derive(Debug)]
pub(crate) enum Payload {
    Connect(ConnectCall),
    Command(CommandCall),
    Disconnect(DisconnectCall),
}

impl Payload {
    pub(crate) fn method(&self) -> &'static str {
        match self {
            Payload::Connect(_) => "connect",
            Payload::Command(_) => "command",
            Payload::Disconnect(_) => "disconnect",
        }
    }

    pub(crate) fn sid(&self) -> Option<&str> {
        match self {
            Payload::Connect(c) => c.sid.as_deref(),
            Payload::Command(c) => c.sid.as_deref(),
            Payload::Disconnect(c) => c.sid.as_deref(),
        }
    }
}

/// The app's answer.
#[derive(Debug)]
pub(crate) enum Reply {
    Connect(ConnectReply),
    Command(CommandReply),
    Disconnect(Status, String),
}

/// The transport a host selects.
#[derive(Debug)]
pub(crate) enum Transport {
    /// Boxed: the pooled client is large, and there is one per process.
    Http(Box<http::HttpTransport>),
    Grpc(grpc::GrpcTransport),
}

impl Transport {
    /// Whether the transport's failures feed the circuit breaker (HTTP, as in anycable-go).
    pub(crate) fn has_breaker(&self) -> bool {
        matches!(self, Transport::Http(_))
    }

    pub(crate) async fn send(
        &self,
        payload: &Payload,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        match self {
            Transport::Grpc(t) => t.send(payload, payload.sid(), timeout).await,
            Transport::Http(t) => {
                let body = match payload {
                    Payload::Connect(c) => encode(&wire::ConnectBody::new(c)),
                    Payload::Command(c) => encode(&wire::CommandBody::new(c)),
                    Payload::Disconnect(c) => encode(&wire::DisconnectBody::new(c)),
                };
                let reply = t
                    .post(payload.method(), body, payload.sid(), timeout)
                    .await?;
                Ok(match payload {
                    Payload::Connect(_) => {
                        Reply::Connect(decode::<wire::ConnectReplyBody>(&reply)?.into())
                    }
                    Payload::Command(_) => {
                        Reply::Command(decode::<wire::CommandReplyBody>(&reply)?.into())
                    }
                    Payload::Disconnect(_) => {
                        let r = decode::<wire::DisconnectReplyBody>(&reply)?;
                        Reply::Disconnect(r.status, r.error_msg)
                    }
                })
            }
        }
    }
}

fn encode<T: serde::Serialize>(body: &T) -> bytes::Bytes {
    // The bodies are maps of strings: they always serialize.
    bytes::Bytes::from(serde_json::to_vec(body).unwrap_or_default())
}

fn decode<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, CallError> {
    serde_json::from_slice(body).map_err(|e| CallError::BadReply(format!("not a reply: {e}")))
}
