//! The two ways a call reaches the app: HTTP JSON (the Rails-mounted `/_anycable`) and gRPC
//! (`anycable.RPC`). Both take the same calls and give the same replies.

use std::time::Duration;

use ferrocable_node::remote::CallError;

pub(crate) use crate::call::{Payload, Reply};
use crate::{grpc, http, wire};

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
