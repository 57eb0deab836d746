//! The fake app's gRPC side: the `anycable.RPC` service (tonic, no codegen: the messages of
//! `ferrocable_rpc::proto`), answering exactly as its HTTP side does. Each request is turned
//! into HTTP RPC's JSON body, answered by the same code, and the JSON reply turned back into
//! the proto message, so both transports run one behaviour.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ferrocable_rpc::proto;
use serde_json::{Value, json};

use super::{FakeRails, Mode};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The service, for tonic's router.
#[derive(Clone)]
pub struct RpcService {
    app: Arc<FakeRails>,
}

impl tonic::server::NamedService for RpcService {
    const NAME: &'static str = "anycable.RPC";
}

fn map(m: &BTreeMap<String, String>) -> Value {
    Value::Object(m.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

fn env_json(env: &Option<proto::Env>) -> Value {
    let env = env.clone().unwrap_or_default();
    let mut out = json!({"url": env.url, "headers": map(&env.headers)});
    if !env.cstate.is_empty() {
        out["cstate"] = map(&env.cstate);
    }
    if !env.istate.is_empty() {
        out["istate"] = map(&env.istate);
    }
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn state(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn status(v: &Value) -> i32 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0) as i32,
        Value::String(s) if s == "SUCCESS" => proto::status::SUCCESS,
        Value::String(s) if s == "FAILURE" => proto::status::FAILURE,
        _ => proto::status::ERROR,
    }
}

fn env_reply(v: &Value) -> Option<proto::EnvResponse> {
    Some(proto::EnvResponse {
        cstate: state(&v["env"]["cstate"]),
        istate: state(&v["env"]["istate"]),
    })
}

async fn handle(
    app: Arc<FakeRails>,
    method: &str,
    meta: &tonic::metadata::MetadataMap,
    body: Value,
) -> Result<Value, tonic::Status> {
    match super::mode(&app) {
        Mode::Down => return Err(tonic::Status::unavailable("down")),
        Mode::Slow => tokio::time::sleep(Duration::from_secs(5)).await,
        Mode::Up => {}
    }
    let get = |k: &str| meta.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    super::answer(&app, method, get("sid"), get("protov"), &body)
        .await
        .ok_or_else(|| tonic::Status::unimplemented(method.to_owned()))
}

macro_rules! unary {
    ($name:ident, $req:ty, $res:ty, |$app:ident, $r:ident, $meta:ident| $body:expr) => {
        struct $name(Arc<FakeRails>);
        impl tonic::server::UnaryService<$req> for $name {
            type Response = $res;
            type Future = BoxFuture<Result<tonic::Response<$res>, tonic::Status>>;
            fn call(&mut self, request: tonic::Request<$req>) -> Self::Future {
                let $app = self.0.clone();
                Box::pin(async move {
                    let $meta = request.metadata().clone();
                    let $r = request.into_inner();
                    let out: Result<$res, tonic::Status> = $body;
                    out.map(tonic::Response::new)
                })
            }
        }
    };
}

unary!(
    Connect,
    proto::ConnectionRequest,
    proto::ConnectionResponse,
    |app, r, meta| {
        let v = handle(app, "connect", &meta, json!({"env": env_json(&r.env)})).await?;
        Ok(proto::ConnectionResponse {
            status: status(&v["status"]),
            identifiers: v["identifiers"].as_str().unwrap_or_default().to_owned(),
            transmissions: strings(&v["transmissions"]),
            error_msg: v["error_msg"].as_str().unwrap_or_default().to_owned(),
            env: env_reply(&v),
        })
    }
);

unary!(
    Command,
    proto::CommandMessage,
    proto::CommandResponse,
    |app, r, meta| {
        let mut body = json!({
            "command": r.command,
            "identifier": r.identifier,
            "connection_identifiers": r.connection_identifiers,
            "env": env_json(&r.env),
        });
        if !r.data.is_empty() {
            body["data"] = json!(r.data);
        }
        let v = handle(app, "command", &meta, body).await?;
        Ok(proto::CommandResponse {
            status: status(&v["status"]),
            disconnect: v["disconnect"].as_bool().unwrap_or(false),
            stop_streams: v["stop_streams"].as_bool().unwrap_or(false),
            streams: strings(&v["streams"]),
            transmissions: strings(&v["transmissions"]),
            error_msg: v["error_msg"].as_str().unwrap_or_default().to_owned(),
            env: env_reply(&v),
            stopped_streams: strings(&v["stopped_streams"]),
            presence: v["presence"].as_object().map(|p| proto::PresenceResponse {
                r#type: p["type"].as_str().unwrap_or_default().to_owned(),
                id: p["id"].as_str().unwrap_or_default().to_owned(),
                info: p
                    .get("info")
                    .and_then(|i| i.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                ttl: 0,
            }),
        })
    }
);

unary!(
    Disconnect,
    proto::DisconnectRequest,
    proto::DisconnectResponse,
    |app, r, meta| {
        let body = json!({
            "identifiers": r.identifiers,
            "subscriptions": r.subscriptions,
            "env": env_json(&r.env),
        });
        let v = handle(app, "disconnect", &meta, body).await?;
        Ok(proto::DisconnectResponse {
            status: status(&v["status"]),
            error_msg: v["error_msg"].as_str().unwrap_or_default().to_owned(),
        })
    }
);

impl tower::Service<http::Request<tonic::body::Body>> for RpcService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let app = self.app.clone();
        match request.uri().path() {
            proto::path::CONNECT => Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<
                    proto::ConnectionResponse,
                    proto::ConnectionRequest,
                >::default();
                Ok(tonic::server::Grpc::new(codec)
                    .unary(Connect(app), request)
                    .await)
            }),
            proto::path::COMMAND => Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<proto::CommandResponse, proto::CommandMessage>::default();
                Ok(tonic::server::Grpc::new(codec)
                    .unary(Command(app), request)
                    .await)
            }),
            proto::path::DISCONNECT => Box::pin(async move {
                let codec = tonic_prost::ProstCodec::<
                    proto::DisconnectResponse,
                    proto::DisconnectRequest,
                >::default();
                Ok(tonic::server::Grpc::new(codec)
                    .unary(Disconnect(app), request)
                    .await)
            }),
            _ => Box::pin(
                async move { Ok(tonic::Status::unimplemented("no such method").into_http()) },
            ),
        }
    }
}

/// Serves the gRPC side on `listener`.
pub async fn serve(app: Arc<FakeRails>, listener: tokio::net::TcpListener) {
    tonic::transport::Server::builder()
        .add_service(RpcService { app })
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .expect("fake gRPC app serves");
}

/// Starts the gRPC side on a free port.
pub async fn start(app: Arc<FakeRails>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, tokio::spawn(serve(app, listener)))
}

/// Restarts the gRPC side on the address it had.
pub async fn restart(app: Arc<FakeRails>, addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(serve(app, listener))
}
