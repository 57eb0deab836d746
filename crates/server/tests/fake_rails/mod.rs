//! A fake Rails app behind AnyCable RPC, for tests: no Rails app can run here, so this one is
//! written from the wire document (`anycable-wire.md` §1 and §6), answering as anycable-rails
//! 1.6 does. It mounts HTTP RPC at `/_anycable` and records every call it gets.
//!
//! - connect: the cookie `user=NAME` (or a `user` query parameter) identifies (`{"user":NAME}`, cstate `count=0`); no cookie
//!   is a FAILURE with Rails' `unauthorized` disconnect; `user=crash` raises (ERROR, status
//!   absent); `user=int` answers with integer statuses.
//! - `ChatChannel` (`room` param): streams `chat_<room>`, istate `room`; room `secret` is
//!   rejected; any other channel is "Channel not found" (ERROR).
//! - actions: `speak` (transmits text, user, room and the connection's count, then counts up),
//!   `broadcast` (POSTs to ferrocable's `/_broadcast`, as anycable-rails' HTTP adapter does),
//!   `publish_redis` (PUBLISH on `__anycable__`, the Redis adapter), `stop` (stop_streams),
//!   `forget` (deletes istate `room`), `boom` (an exception), `kick` (disconnect), `slow`.
//! - `POST /_control` with `up`, `down` (503s), `slow` (answers after 5 s) switches behaviour.

#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod grpc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The RPC secret the fake app expects (Bearer).
pub const SECRET: &str = "fake-rails-rpc-secret";

/// How the fake app behaves right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    Down,
    Slow,
}

pub struct FakeRails {
    calls: Mutex<Vec<Value>>,
    changed: tokio::sync::watch::Sender<usize>,
    mode: Mutex<Mode>,
    /// Where ferrocable takes broadcasts (`http://host:port/_broadcast`) and its key.
    broadcast: Mutex<Option<(String, String)>>,
    /// Redis for the `redis` broadcast adapter (`host:port`).
    redis: Mutex<Option<String>>,
    /// The browser packages for the StimulusReflex page at `/`.
    assets: Mutex<Option<ferrocable_server::Assets>>,
}

impl FakeRails {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeRails {
            calls: Mutex::new(Vec::new()),
            changed: tokio::sync::watch::channel(0).0,
            mode: Mutex::new(Mode::Up),
            broadcast: Mutex::new(None),
            redis: Mutex::new(None),
            assets: Mutex::new(None),
        })
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }

    pub fn broadcast_to(&self, url: String, key: String) {
        *self.broadcast.lock() = Some((url, key));
    }

    /// Serves a StimulusReflex counter page at `/` with the npm packages in `node_modules`.
    pub fn serve_page(&self, node_modules: &std::path::Path) {
        *self.assets.lock() = Some(ferrocable_server::Assets::new().browser_packages(node_modules));
    }

    pub fn redis_at(&self, addr: String) {
        *self.redis.lock() = Some(addr);
    }

    /// Every call so far: `{"path","body","sid","protov"}`.
    pub fn calls(&self) -> Vec<Value> {
        self.calls.lock().clone()
    }

    /// Waits (up to 10 s) until a recorded call satisfies `pred`, and returns it.
    pub async fn wait_for(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let mut rx = self.changed.subscribe();
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(c) = self.calls.lock().iter().find(|c| pred(c)).cloned() {
                    return c;
                }
                rx.changed().await.expect("fake app alive");
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no such call; calls: {:#?}", self.calls()))
    }
}

/// Serves the fake app on `listener` until the task is dropped.
pub async fn serve(app: Arc<FakeRails>, listener: tokio::net::TcpListener) {
    let assets = app.assets.lock().clone();
    let mut router = Router::new()
        .route("/_anycable/{method}", post(rpc))
        .route("/_control", post(control))
        .route("/_calls", get(calls))
        .route("/", get(page))
        .with_state(app);
    if let Some(assets) = assets {
        router = router.merge(assets.routes());
    }
    axum::serve(listener, router)
        .await
        .expect("fake app serves");
}

/// Serves the fake app over TLS (a Rails app behind `https://`), HTTP/1.1, until dropped.
#[cfg(feature = "tls")]
pub async fn serve_tls(
    app: Arc<FakeRails>,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let router = Router::new()
        .route("/_anycable/{method}", post(rpc))
        .with_state(app);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Starts the fake app on a free port; returns its address and the task (abort it to take
/// the app down with its port closed).
pub async fn start(app: Arc<FakeRails>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, tokio::spawn(serve(app, listener)))
}

/// Restarts the fake app on the address it had.
pub async fn restart(app: Arc<FakeRails>, addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(serve(app, listener))
}

/// The counter page: a `user` cookie (set on the first visit), the cable on ferrocable's
/// origin, the packages through the import map, a `data-reflex` button. The count is the
/// connection state's `sr_count`, so it starts at 0 on each connection.
async fn page(State(app): State<Arc<FakeRails>>, headers: HeaderMap) -> Response {
    let Some(import_map) = app.assets.lock().as_ref().map(|a| a.import_map()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let cable = app
        .broadcast
        .lock()
        .as_ref()
        .map(|(url, _)| {
            url.replace("http://", "ws://")
                .replace("/_broadcast", "/cable")
        })
        .unwrap_or_default();
    let has_user = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.split(';').any(|p| p.trim().starts_with("user=")));
    let html = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>fake Rails</title>
<meta name="action-cable-url" content="{cable}">
<script type="importmap">{import_map}</script>
<script type="module">import "ferrocable"</script>
</head><body>
<div id="counter"><span id="count">0</span></div>
<button id="increment" data-reflex="click->Counter#increment">+1</button>
</body></html>"#
    );
    let mut response = axum::response::Html(html).into_response();
    if !has_user {
        let user = format!("sr{}", std::process::id() ^ rand_u32());
        response.headers_mut().insert(
            "set-cookie",
            format!("user={user}; Path=/").parse().unwrap(),
        );
    }
    response
}

fn rand_u32() -> u32 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

async fn control(State(app): State<Arc<FakeRails>>, body: String) -> StatusCode {
    let mode = match body.trim() {
        "up" => Mode::Up,
        "down" => Mode::Down,
        "slow" => Mode::Slow,
        _ => return StatusCode::BAD_REQUEST,
    };
    app.set_mode(mode);
    StatusCode::NO_CONTENT
}

async fn calls(State(app): State<Arc<FakeRails>>) -> axum::Json<Vec<Value>> {
    axum::Json(app.calls())
}

async fn rpc(
    State(app): State<Arc<FakeRails>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mode = *app.mode.lock();
    match mode {
        Mode::Down => return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
        Mode::Slow => tokio::time::sleep(Duration::from_secs(5)).await,
        Mode::Up => {}
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {SECRET}"))
    {
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return (StatusCode::UNPROCESSABLE_ENTITY, "bad body").into_response();
    };
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    match answer(
        &app,
        &method,
        h("x-anycable-meta-sid"),
        h("x-anycable-meta-protov"),
        &body,
    )
    .await
    {
        Some(reply) => axum::Json(reply).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Records a call and answers it (the same for HTTP and gRPC): the reply as HTTP RPC's JSON.
pub async fn answer(
    app: &FakeRails,
    method: &str,
    sid: Option<String>,
    protov: Option<String>,
    body: &Value,
) -> Option<Value> {
    app.calls.lock().push(json!({
        "path": method,
        "body": body,
        "sid": sid,
        "protov": protov,
    }));
    app.changed.send_modify(|n| *n += 1);
    Some(match method {
        "connect" => connect(body),
        "command" => command(app, body).await,
        "disconnect" => json!({"status": "SUCCESS"}),
        _ => return None,
    })
}

/// The current mode (the gRPC side honours it too).
pub fn mode(app: &FakeRails) -> Mode {
    *app.mode.lock()
}

fn cookie<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body["env"]["headers"]["cookie"]
        .as_str()?
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `status` as the app build would send it: integers for `user=int`, names otherwise.
fn status(name: &str, ints: bool) -> Value {
    if !ints {
        return json!(name);
    }
    json!(match name {
        "SUCCESS" => 1,
        "FAILURE" => 2,
        _ => 0,
    })
}

/// The `user` query parameter of the connection URL (clients without cookies, as in Node).
fn query_user(body: &Value) -> Option<&str> {
    let url = body["env"]["url"].as_str()?;
    url.split_once('?')?
        .1
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "user")
        .map(|(_, v)| v)
}

fn connect(body: &Value) -> Value {
    match cookie(body, "user").or_else(|| query_user(body)) {
        None => json!({
            "status": "FAILURE",
            "transmissions": [r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#],
        }),
        Some("crash") => json!({"error_msg": "undefined method `id' for nil:NilClass"}),
        Some(user) => json!({
            "status": status("SUCCESS", user == "int"),
            "identifiers": json!({"user": user}).to_string(),
            "transmissions": [r#"{"type":"welcome"}"#],
            "env": {"cstate": {"count": "0"}},
        }),
    }
}

async fn command(app: &FakeRails, body: &Value) -> Value {
    let identifier = body["identifier"].as_str().unwrap_or_default();
    let params: Value = serde_json::from_str(identifier).unwrap_or(Value::Null);
    let ints =
        serde_json::from_str::<Value>(body["connection_identifiers"].as_str().unwrap_or("{}"))
            .map(|v| v["user"] == "int")
            .unwrap_or(false);
    if params["channel"] == "StimulusReflex::Channel" {
        return reflex(app, body, identifier).await;
    }
    if params["channel"] == "PresenceChannel" {
        // anycable-rails' `join_presence` in `subscribed`: istate `$p` and a presence join;
        // `stream_from …, whisper: true`: istate `$w`.
        let user =
            serde_json::from_str::<Value>(body["connection_identifiers"].as_str().unwrap_or("{}"))
                .map(|v| v["user"].as_str().unwrap_or_default().to_owned())
                .unwrap_or_default();
        return match body["command"].as_str() {
            Some("subscribe") => json!({
                "status": "SUCCESS",
                "streams": ["presence_room"],
                "transmissions": [json!({"identifier": identifier, "type": "confirm_subscription"}).to_string()],
                "env": {"istate": {"$p": "presence_room", "$w": "presence_room"}},
                "presence": {"type": "join", "id": user, "info": json!({"name": user}).to_string()},
            }),
            Some("message") => json!({
                "status": "SUCCESS",
                "presence": {"type": "leave", "id": user},
            }),
            _ => json!({"status": "SUCCESS"}),
        };
    }
    if params["channel"] != "ChatChannel" {
        return json!({"error_msg": format!("Channel not found: {}", params["channel"])});
    }
    let room = params["room"].as_str().unwrap_or("lobby").to_owned();
    match body["command"].as_str() {
        Some("subscribe") if room == "secret" => json!({
            "status": status("FAILURE", ints),
            "transmissions": [json!({"identifier": identifier, "type": "reject_subscription"}).to_string()],
        }),
        Some("subscribe") => json!({
            "status": status("SUCCESS", ints),
            "streams": [format!("chat_{room}")],
            "transmissions": [json!({"identifier": identifier, "type": "confirm_subscription"}).to_string()],
            "env": {"istate": {"room": room}},
        }),
        Some("unsubscribe") => json!({"status": status("SUCCESS", ints)}),
        Some("message") => perform(app, body, identifier, ints).await,
        other => json!({"error_msg": format!("unknown command {other:?}")}),
    }
}

/// StimulusReflex 3.5.5's channel as a Rails app runs it (wire doc §4 and §6): the stream is
/// `StimulusReflex::Channel:<session>`; a reflex answers with no transmissions and broadcasts
/// its CableReady envelope through ferrocable's `/_broadcast`.
async fn reflex(app: &FakeRails, body: &Value, identifier: &str) -> Value {
    let user =
        serde_json::from_str::<Value>(body["connection_identifiers"].as_str().unwrap_or("{}"))
            .map(|v| v["user"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
    let stream = format!("StimulusReflex::Channel:{user}");
    match body["command"].as_str() {
        Some("subscribe") => json!({
            "status": "SUCCESS",
            "streams": [stream],
            "transmissions": [json!({"identifier": identifier, "type": "confirm_subscription"}).to_string()],
        }),
        Some("message") => {
            let data: Value =
                serde_json::from_str(body["data"].as_str().unwrap_or("{}")).unwrap_or_default();
            if data["target"] != "Counter#increment" {
                return json!({"error_msg": format!("no reflex {}", data["target"])});
            }
            let count: u64 = body["env"]["cstate"]["sr_count"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0)
                + 1;
            let mut stimulus_reflex = data.clone();
            stimulus_reflex["morph"] = json!("selector");
            let envelope = json!({
                "cableReady": true,
                "operations": [{
                    "operation": "morph",
                    "selector": "#counter",
                    "html": format!(r#"<span id="count">{count}</span>"#),
                    "childrenOnly": true,
                    "permanentAttributeName": data["permanentAttributeName"],
                    "stimulusReflex": stimulus_reflex,
                    "reflexId": data["id"],
                    "payload": {},
                }],
                "version": "5.0.6",
            });
            let target = app.broadcast.lock().clone();
            if let Some((url, key)) = target {
                post_broadcast(
                    &url,
                    &key,
                    &json!({"stream": stream, "data": envelope.to_string()}),
                )
                .await;
            }
            json!({"status": "SUCCESS", "env": {"cstate": {"sr_count": count.to_string()}}})
        }
        _ => json!({"status": "SUCCESS"}),
    }
}

async fn perform(app: &FakeRails, body: &Value, identifier: &str, ints: bool) -> Value {
    let data: Value =
        serde_json::from_str(body["data"].as_str().unwrap_or("{}")).unwrap_or_default();
    let user =
        serde_json::from_str::<Value>(body["connection_identifiers"].as_str().unwrap_or("{}"))
            .map(|v| v["user"].clone())
            .unwrap_or_default();
    let room = body["env"]["istate"]["room"].clone();
    let count: u64 = body["env"]["cstate"]["count"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let ok = status("SUCCESS", ints);
    match data["action"].as_str() {
        Some("speak") => json!({
            "status": ok,
            "transmissions": [json!({"identifier": identifier, "message": {
                "text": data["text"], "user": user, "room": room, "count": count,
            }}).to_string()],
            "env": {"cstate": {"count": (count + 1).to_string()}},
        }),
        Some("broadcast") => {
            let stream = format!("chat_{}", room.as_str().unwrap_or_default());
            let message = json!({"text": data["text"], "from": user}).to_string();
            let target = app.broadcast.lock().clone();
            if let Some((url, key)) = target {
                post_broadcast(&url, &key, &json!({"stream": stream, "data": message})).await;
            }
            json!({"status": ok})
        }
        Some("publish_redis") => {
            let stream = format!("chat_{}", room.as_str().unwrap_or_default());
            let message = json!({"text": data["text"], "via": "redis"}).to_string();
            let redis = app.redis.lock().clone();
            if let Some(addr) = redis {
                redis_publish(
                    &addr,
                    "__anycable__",
                    &json!({"stream": stream, "data": message}).to_string(),
                )
                .await;
            }
            json!({"status": ok})
        }
        Some("publish_nats") => {
            let stream = format!("chat_{}", room.as_str().unwrap_or_default());
            let message = json!({"text": data["text"], "via": "nats"}).to_string();
            nats_publish(
                "127.0.0.1:4222",
                "__anycable__",
                &json!({"stream": stream, "data": message}).to_string(),
            )
            .await;
            json!({"status": ok})
        }
        Some("publish_redisx") => {
            let stream = format!("chat_{}", room.as_str().unwrap_or_default());
            let message = json!({"text": data["text"], "via": "redisx"}).to_string();
            let payload = json!({"stream": stream, "data": message}).to_string();
            let addr = app.redis.lock().clone();
            if let Some(addr) = addr {
                let key = data["key"].as_str().unwrap_or("__anycable__");
                redis_command(&addr, &["XADD", key, "*", "payload", &payload]).await;
            }
            json!({"status": ok})
        }
        Some("stop") => json!({"status": ok, "stop_streams": true}),
        Some("forget") => json!({"status": ok, "env": {"istate": {"room": ""}}}),
        Some("boom") => json!({"error_msg": "undefined method `boom' for ChatChannel"}),
        Some("kick") => json!({"status": ok, "disconnect": true}),
        Some("slow") => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            json!({"status": ok})
        }
        _ => json!({"error_msg": "no such action"}),
    }
}

/// anycable-rails' HTTP broadcast adapter: one POST with the Bearer key.
pub async fn post_broadcast(url: &str, key: &str, body: &Value) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = rest.split_once('/').map_or((rest, "/"), |(a, p)| (a, p));
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .expect("ferrocable up");
    let body = body.to_string();
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 201"),
        "broadcast refused: {response}"
    );
}

/// `PUBLISH channel message` in RESP (anycable-rails' Redis adapter).
pub async fn redis_publish(addr: &str, channel: &str, message: &str) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("redis up");
    let command = format!(
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${}\r\n{message}\r\n",
        channel.len(),
        message.len()
    );
    stream.write_all(command.as_bytes()).await.unwrap();
    let mut reply = [0u8; 64];
    let n = stream.read(&mut reply).await.unwrap();
    assert!(
        reply[..n].starts_with(b":"),
        "PUBLISH failed: {:?}",
        &reply[..n]
    );
}

/// `PUB subject` in the NATS text protocol (anycable-rails' NATS adapter), confirmed by a
/// `PING`/`PONG` round trip.
pub async fn nats_publish(addr: &str, subject: &str, message: &str) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("nats up");
    let command = format!(
        "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n{message}\r\nPING\r\n",
        message.len()
    );
    stream.write_all(command.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("PONG") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "nats closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        !String::from_utf8_lossy(&seen).contains("-ERR"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
}

/// One Redis command in RESP (anycable-rails' `redisx` adapter's `XADD`); the reply is not an
/// error.
pub async fn redis_command(addr: &str, args: &[&str]) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("redis up");
    let mut command = format!("*{}\r\n", args.len());
    for a in args {
        command.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(command.as_bytes()).await.unwrap();
    let mut reply = [0u8; 256];
    let n = stream.read(&mut reply).await.unwrap();
    assert!(
        n > 0 && reply[0] != b'-',
        "redis: {}",
        String::from_utf8_lossy(&reply[..n])
    );
}
