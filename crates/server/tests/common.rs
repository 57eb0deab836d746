//! Test kit: a server on port 0 and a frame-level WebSocket client (tokio-websockets, an
//! implementation independent of the browser clients).

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use ferrocable_node::{Channel, ChannelContext, NodeBuilder, PerformError};
use ferrocable_server::{RunningServer, ServeConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

pub const BENCH: &str = r#"{"channel":"BenchmarkChannel"}"#;
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub fn config() -> ServeConfig {
    ServeConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        bench_channel: true,
        disable_forgery_protection: true,
        session_store: "memory".into(),
        secret_key_base: Some("test secret key base".into()),
        data_dir: std::env::temp_dir().join("ferrocable-test-data"),
        ..ServeConfig::default()
    }
}

pub async fn start(config: ServeConfig) -> RunningServer {
    start_with(config, NodeBuilder::default()).await
}

pub async fn start_with(
    config: ServeConfig,
    app: impl Into<ferrocable_server::Composition>,
) -> RunningServer {
    ferrocable_server::start(&config, app)
        .await
        .expect("server starts")
}

pub struct Client<S> {
    pub ws: WebSocketStream<S>,
    pub protocol: Option<String>,
}

pub async fn connect(addr: SocketAddr) -> Client<TcpStream> {
    connect_with(
        addr,
        &[(
            "sec-websocket-protocol",
            "actioncable-v1-json, actioncable-unsupported",
        )],
    )
    .await
}

pub async fn connect_with(addr: SocketAddr, headers: &[(&str, &str)]) -> Client<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    connect_on(stream, &format!("ws://{addr}/cable"), headers).await
}

pub async fn connect_on<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    uri: &str,
    headers: &[(&str, &str)],
) -> Client<S> {
    let mut b = ClientBuilder::new().uri(uri).unwrap();
    for (k, v) in headers {
        b = b
            .add_header(k.parse().unwrap(), v.parse().unwrap())
            .unwrap();
    }
    let (ws, resp) = b.connect_on(stream).await.expect("upgrade succeeds");
    let protocol = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Client { ws, protocol }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// Next text frame as JSON, skipping pings. Panics after the timeout, which pings do not
    /// restart (the server pings every 3 s, more often than the timeout).
    pub async fn frame(&mut self) -> Value {
        tokio::time::timeout(TIMEOUT, self.next_not_ping())
            .await
            .expect("a frame other than a ping within the timeout")
    }

    /// Next text frame as JSON that is not a ping, however long that takes (each frame still
    /// within the timeout); the caller bounds the whole wait.
    async fn next_not_ping(&mut self) -> Value {
        loop {
            let v = self.any_frame().await;
            if v["type"] != "ping" {
                return v;
            }
        }
    }

    /// Next text frame as JSON, pings included.
    pub async fn any_frame(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("frame within timeout")
                .expect("socket open")
                .expect("valid frame");
            if let Some(text) = msg.as_text() {
                return serde_json::from_str(text).expect("server frames are JSON");
            }
            assert!(!msg.is_close(), "unexpected close: {:?}", msg.as_close());
        }
    }

    /// Waits for the socket to close; returns the close code (if any) and the text frames before it.
    pub async fn closed(&mut self) -> (Option<u16>, Vec<Value>) {
        let mut frames = Vec::new();
        // One deadline for the whole wait: frames (pings every 3 s) do not restart it.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("close within timeout")
            {
                None => return (None, frames),
                Some(Err(_)) => return (None, frames),
                Some(Ok(msg)) => {
                    if let Some((code, _)) = msg.as_close() {
                        return (Some(u16::from(code)), frames);
                    }
                    if let Some(text) = msg.as_text() {
                        frames.push(serde_json::from_str(text).unwrap());
                    }
                }
            }
        }
    }

    /// Connects past `welcome` and subscribes to `identifier`, asserting the confirmation.
    pub async fn subscribe(&mut self, identifier: &str) {
        self.send(&subscribe(identifier)).await;
        let f = self.frame().await;
        assert_eq!(f["type"], "confirm_subscription", "{f}");
        assert_eq!(f["identifier"], identifier);
    }

    /// Subscribes to a channel that transmits a greeting before confirming.
    pub async fn subscribe_with_greeting(&mut self, identifier: &str) {
        self.send(&subscribe(identifier)).await;
        loop {
            let f = self.frame().await;
            assert_ne!(f["type"], "reject_subscription", "{f}");
            if f["type"] == "confirm_subscription" {
                return;
            }
        }
    }

    /// The next data frame whose `message.n` is `n` (other frames skipped), or `None` when
    /// none arrives within `limit`.
    pub async fn message_n(&mut self, n: u64, limit: Duration) -> Option<Value> {
        tokio::time::timeout(limit, async {
            loop {
                let f = self.next_not_ping().await;
                if f["message"]["n"] == n {
                    return f;
                }
            }
        })
        .await
        .ok()
    }

    pub async fn welcomed(&mut self) {
        let f = self.frame().await;
        assert_eq!(f, serde_json::json!({"type": "welcome"}));
    }
}

pub const EXT: &str = "actioncable-v1-ext-json";

/// Connects with AnyCable's extended protocol, restoring session `sid` if given.
pub async fn connect_ext(addr: SocketAddr, sid: Option<&str>) -> Client<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let uri = match sid {
        Some(sid) => format!("ws://{addr}/cable?sid={sid}"),
        None => format!("ws://{addr}/cable"),
    };
    let c = connect_on(stream, &uri, &[("sec-websocket-protocol", EXT)]).await;
    assert_eq!(c.protocol.as_deref(), Some(EXT));
    c
}

pub fn history(identifier: &str, history: Value) -> String {
    serde_json::json!({"command": "history", "identifier": identifier, "history": history})
        .to_string()
}

/// Reads frames until `confirm_history`/`reject_history`, returning the data frames before it
/// and the closing frame.
pub async fn until_history_end<S>(c: &mut Client<S>) -> (Vec<Value>, Value)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut data = Vec::new();
    loop {
        let f = c.frame().await;
        match f["type"].as_str() {
            Some("confirm_history") | Some("reject_history") => return (data, f),
            _ => data.push(f),
        }
    }
}

pub fn subscribe(identifier: &str) -> String {
    serde_json::json!({"command": "subscribe", "identifier": identifier}).to_string()
}

pub fn unsubscribe(identifier: &str) -> String {
    serde_json::json!({"command": "unsubscribe", "identifier": identifier}).to_string()
}

pub fn message(identifier: &str, data: Value) -> String {
    serde_json::json!({"command": "message", "identifier": identifier, "data": data.to_string()})
        .to_string()
}

pub async fn metrics(addr: SocketAddr) -> String {
    http_get(addr, "/metrics").await.1
}

/// Minimal HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    raw_http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// The `name=value` of the session cookie that a GET of `path` sets.
pub async fn session_cookie(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

pub async fn raw_http(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Value of a metric line `name value` (exact name incl. labels).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A channel that exercises every effect: streams from `room_<room>`, rejects `room: 0`,
/// and has actions to transmit, broadcast, stop streaming, fail and report identity.
pub struct RoomChannel;

impl Channel for RoomChannel {
    async fn subscribed(&self, ctx: &mut ChannelContext) {
        let room = ctx
            .params()
            .get("room")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if room == 0 {
            ctx.transmit(&serde_json::json!({"why": "no room"}))
                .unwrap();
            ctx.reject();
            return;
        }
        ctx.stream_from(format!("room_{room}"));
        ctx.transmit(&serde_json::json!({"hello": room})).unwrap();
    }

    async fn perform(
        &self,
        ctx: &mut ChannelContext,
        action: &str,
        data: Value,
    ) -> Result<(), PerformError> {
        match action {
            "receive" => ctx
                .transmit(&serde_json::json!({"received": data}))
                .map_err(|e| PerformError::Failed(e.to_string())),
            "speak" => {
                let stream = ctx.streams()[0].clone();
                ctx.broadcast(stream, &data["text"])
                    .map_err(|e| PerformError::Failed(e.to_string()))
            }
            "leave" => {
                ctx.stop_all_streams();
                Ok(())
            }
            "whoami" => ctx
                .transmit(&serde_json::json!({"user": ctx.identity().get("user")}))
                .map_err(|e| PerformError::Failed(e.to_string())),
            "explode" => Err(PerformError::Failed("boom".into())),
            other => Err(PerformError::UnknownAction(other.into())),
        }
    }
}

/// A real service process of the test's own on a spare port (Redis, NATS), so a test can stop
/// and restart it; killed and reaped on drop.
pub struct OwnService {
    child: Option<std::process::Child>,
}

impl OwnService {
    /// Starts `program args…` and waits until it listens on `port` itself.
    pub fn start(program: &str, args: &[&str], port: u16) -> Self {
        Self::try_start(program, args, port).unwrap_or_else(|| {
            panic!("{program} did not start on {port} (exited: is the port taken?)")
        })
    }

    /// Like [`OwnService::start`], `None` if the program exited or never listened (a spare
    /// port another process took meanwhile makes it exit, while the other process answers).
    fn try_start(program: &str, args: &[&str], port: u16) -> Option<Self> {
        let child = std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} is installed (scripts/test.sh installs it): {e}")
            });
        let pid = child.id();
        let mut service = OwnService { child: Some(child) };
        for _ in 0..100 {
            let exited = service
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if exited {
                break;
            }
            if listens_on(pid, port) {
                return Some(service);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        service.stop();
        None
    }

    /// Starts `program` with `args(port)` on a spare port, again on another one if the port
    /// was taken before the program could bind it.
    pub fn start_on_spare_port(program: &str, args: impl Fn(&str) -> Vec<String>) -> (Self, u16) {
        for _ in 0..5 {
            let port = spare_port();
            let args = args(&port.to_string());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Some(service) = Self::try_start(program, &args, port) {
                return (service, port);
            }
        }
        panic!("{program} did not start on any of five spare ports");
    }

    /// A Redis that keeps nothing on disk.
    pub fn redis(port: u16) -> Self {
        Self::redis_with(port, &[])
    }

    /// A Redis that keeps nothing on disk, with `extra` settings (`--maxmemory-policy …`).
    pub fn redis_with(port: u16, extra: &[&str]) -> Self {
        let args = redis_args(&port.to_string(), extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start("redis-server", &args, port)
    }

    /// Like [`OwnService::redis_with`] on a spare port (another one if it was taken).
    pub fn redis_on_spare_port(extra: &[&str]) -> (Self, u16) {
        Self::start_on_spare_port("redis-server", |port| redis_args(port, extra))
    }

    /// A core NATS server.
    pub fn nats(port: u16) -> Self {
        let bin = if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        Self::start(bin, &["-a", "127.0.0.1", "-p", &port.to_string()], port)
    }

    /// A NATS server with JetStream storing in `dir` (kept across restarts).
    pub fn nats_jetstream(port: u16, dir: &std::path::Path) -> Self {
        let bin = if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let dir = dir.to_string_lossy().into_owned();
        Self::start(
            bin,
            &[
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-js",
                "-sd",
                &dir,
            ],
            port,
        )
    }

    /// Kills the process (the test's outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis server's arguments: `port`, loopback, nothing on disk, then `extra`.
fn redis_args(port: &str, extra: &[&str]) -> Vec<String> {
    [
        "--port",
        port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .chain(extra)
    .map(|a| a.to_string())
    .collect()
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (its inode in
/// /proc/net/tcp is one of the process's descriptors), so a test never mistakes another
/// process's server for its own.
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.iter().any(|i| target.to_str() == Some(i)))
}

pub fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
