//! The gRPC transport: the `anycable.RPC` service over HTTP/2 (tonic), with the `protov: v1`
//! metadata the Ruby server's CheckVersion middleware requires and the session id as `sid`.

use std::time::Duration;

use ferrocable_node::remote::{
    CallError, CommandCall, CommandReply, ConnectCall, ConnectReply, DisconnectCall, State,
};
use http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use crate::call::{Payload, Reply};
use crate::proto;

/// A lazily connected gRPC channel to the app.
#[derive(Debug, Clone)]
pub(crate) struct GrpcTransport {
    channel: Channel,
}

impl GrpcTransport {
    /// `host:port`, `grpc://host:port` or `dns:///host:port`.
    pub(crate) fn new(host: &str) -> Result<Self, crate::RpcError> {
        let authority = host
            .strip_prefix("grpc://")
            .or_else(|| host.strip_prefix("dns:///"))
            .unwrap_or(host);
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|_| crate::RpcError::BadHost(host.to_owned()))?
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        Ok(GrpcTransport {
            channel: endpoint.connect_lazy(),
        })
    }

    pub(crate) async fn send(
        &self,
        payload: &Payload,
        sid: Option<&str>,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let exchange = async {
            match payload {
                Payload::Connect(call) => {
                    let r: proto::ConnectionResponse =
                        self.unary(proto::path::CONNECT, connect(call), sid).await?;
                    Ok(Reply::Connect(connect_reply(r)?))
                }
                Payload::Command(call) => {
                    let r: proto::CommandResponse =
                        self.unary(proto::path::COMMAND, command(call), sid).await?;
                    Ok(Reply::Command(command_reply(r)?))
                }
                Payload::Disconnect(call) => {
                    let r: proto::DisconnectResponse = self
                        .unary(proto::path::DISCONNECT, disconnect(call), sid)
                        .await?;
                    Ok(Reply::Disconnect(status(r.status)?, r.error_msg))
                }
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout),
        }
    }

    async fn unary<Req, Res>(
        &self,
        path: &'static str,
        message: Req,
        sid: Option<&str>,
    ) -> Result<Res, CallError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Res: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| CallError::Unavailable(Box::new(e)))?;
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("protov", tonic::metadata::MetadataValue::from_static("v1"));
        if let Some(sid) = sid.and_then(|s| s.parse().ok()) {
            request.metadata_mut().insert("sid", sid);
        }
        let codec = tonic_prost::ProstCodec::<Req, Res>::default();
        match grpc
            .unary(request, PathAndQuery::from_static(path), codec)
            .await
        {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(match status.code() {
                tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
                    CallError::Unavailable(Box::new(status))
                }
                tonic::Code::DeadlineExceeded => CallError::Timeout,
                tonic::Code::Unauthenticated => CallError::Unauthenticated,
                _ => CallError::BadReply(format!("gRPC {}: {}", status.code(), status.message())),
            }),
        }
    }
}

fn env(e: &ferrocable_node::remote::Env, cstate: &State, istate: &State) -> proto::Env {
    proto::Env {
        url: e.url.clone(),
        headers: e.headers.clone(),
        cstate: cstate.clone(),
        istate: istate.clone(),
    }
}

fn connect(call: &ConnectCall) -> proto::ConnectionRequest {
    proto::ConnectionRequest {
        env: Some(env(&call.env, &State::new(), &State::new())),
    }
}

fn command(call: &CommandCall) -> proto::CommandMessage {
    proto::CommandMessage {
        command: call.kind.as_str().to_owned(),
        identifier: call.identifier.clone(),
        connection_identifiers: call.identifiers.to_string(),
        data: call.data.clone().unwrap_or_default(),
        env: Some(env(&call.env, &call.cstate, &call.istate)),
    }
}

fn disconnect(call: &DisconnectCall) -> proto::DisconnectRequest {
    proto::DisconnectRequest {
        identifiers: call.identifiers.to_string(),
        subscriptions: call.subscriptions.clone(),
        env: Some(env(&call.env, &call.cstate, &call.istate)),
    }
}

fn status(n: i32) -> Result<ferrocable_node::remote::Status, CallError> {
    use ferrocable_node::remote::Status;
    match n {
        proto::status::ERROR => Ok(Status::Error),
        proto::status::SUCCESS => Ok(Status::Success),
        proto::status::FAILURE => Ok(Status::Failure),
        other => Err(CallError::BadReply(format!("unknown status {other}"))),
    }
}

/// A reply with a status outside the enum is refused (`BadReply`), as the HTTP transport
/// refuses one, never read as some other status.
fn connect_reply(r: proto::ConnectionResponse) -> Result<ConnectReply, CallError> {
    let env = r.env.unwrap_or_default();
    Ok(ConnectReply {
        status: status(r.status)?,
        identifiers: r.identifiers,
        transmissions: r.transmissions,
        cstate: env.cstate,
        error: (!r.error_msg.is_empty()).then_some(r.error_msg),
    })
}

fn command_reply(r: proto::CommandResponse) -> Result<CommandReply, CallError> {
    let env = r.env.unwrap_or_default();
    Ok(CommandReply {
        status: status(r.status)?,
        disconnect: r.disconnect,
        stop_streams: r.stop_streams,
        streams: r.streams,
        stopped_streams: r.stopped_streams,
        transmissions: r.transmissions,
        cstate: env.cstate,
        istate: env.istate,
        error: (!r.error_msg.is_empty()).then_some(r.error_msg),
        presence: r.presence.and_then(|p| {
            ferrocable_node::remote::PresenceChange::from_wire(&p.r#type, p.id, p.info)
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn field_numbers_are_the_protos() {
        // env is field 3 of ConnectionRequest: tag (3 << 3) | 2 = 0x1a.
        let bytes = proto::ConnectionRequest {
            env: Some(proto::Env {
                url: "u".into(),
                ..Default::default()
            }),
        }
        .encode_to_vec();
        assert_eq!(bytes[0], 0x1a);
        // env is field 5 of CommandMessage: 0x2a.
        let bytes = proto::CommandMessage {
            env: Some(proto::Env::default()),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(bytes[0], 0x2a);
        // stopped_streams is field 8 of CommandResponse: 0x42.
        let bytes = proto::CommandResponse {
            stopped_streams: vec!["s".into()],
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(bytes[0], 0x42);
        let r = command_reply(proto::CommandResponse::decode(&bytes[..]).unwrap()).unwrap();
        assert_eq!(r.stopped_streams, ["s"]);
        assert_eq!(
            r.status,
            ferrocable_node::remote::Status::Error,
            "0 = ERROR"
        );
        let odd = proto::CommandResponse {
            status: 7,
            ..Default::default()
        };
        assert!(
            matches!(command_reply(odd), Err(CallError::BadReply(_))),
            "an unknown status is refused, not read as ERROR"
        );
    }
}
