//! Server-sent events at `/events` over a real TCP connection: the events of a subscription,
//! history by `Last-Event-ID`, the refusals (401, 400), CORS, and a reader that never reads
//! cut as a slow WebSocket client is.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use ferrocable_server::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn sse_config(edit: impl FnOnce(&mut ServeConfig)) -> ServeConfig {
    let mut c = ServeConfig {
        sse: true,
        public_streams: true,
        ..config()
    };
    edit(&mut c);
    c
}

/// An open SSE response: the head, and the body read so far.
struct Stream {
    socket: TcpStream,
    head: String,
    body: String,
}

/// A GET with `extra` header lines; an `extra` that holds a blank line is a POST whose body
/// follows it.
fn request(addr: std::net::SocketAddr, target: &str, extra: &str) -> String {
    match extra.split_once("\r\n\r\n") {
        Some((headers, body)) => {
            format!("POST {target} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n\r\n{body}")
        }
        None => format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n"),
    }
}

async fn open(addr: std::net::SocketAddr, target: &str, extra: &str) -> Stream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(request(addr, target, extra).as_bytes())
        .await
        .unwrap();
    let mut s = Stream {
        socket,
        head: String::new(),
        body: String::new(),
    };
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(TIMEOUT, s.socket.read(&mut chunk))
            .await
            .expect("a response head")
            .unwrap();
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    s.head = head.to_owned();
    s.body = body.to_owned();
    s
}

impl Stream {
    fn status(&self) -> u16 {
        self.head.split(' ').nth(1).unwrap().parse().unwrap()
    }

    /// Reads until the body holds `needle` (chunked framing included), within the timeout.
    async fn until(&mut self, needle: &str) -> String {
        tokio::time::timeout(TIMEOUT, async {
            while !self.body.contains(needle) {
                let mut chunk = [0u8; 4096];
                let n = self.socket.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed; body so far: {}", self.body);
                self.body.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} in: {}", self.body));
        self.body.clone()
    }
}

#[tokio::test]
async fn a_subscription_as_events_with_ids_and_history_by_last_event_id() {
    let server = start(sse_config(|_| {})).await;
    let addr = server.local_addr();
    let mut s = open(
        addr,
        "/events?stream=lobby",
        "Origin: http://app.example\r\n",
    )
    .await;
    assert_eq!(s.status(), 200, "{}", s.head);
    let head = s.head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: text/event-stream; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-origin: http://app.example"),
        "{head}"
    );
    s.until("event: confirm_subscription").await;
    assert!(s.body.contains("event: welcome"));
    server.node().broadcast("lobby", r#""<p>one</p>""#).unwrap();
    server.node().broadcast("lobby", r#"{"n":2}"#).unwrap();
    let body = s.until("data: {\"n\":2}").await;
    assert!(body.contains("data: <p>one</p>\n"), "{body}");
    // `id: offset/epoch/stream` on stored messages.
    let first_id = body
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id line")
        .to_owned();
    assert!(first_id.ends_with("/lobby"), "{first_id}");

    // A reconnect with that id gets what came after it, and raw mode sends data only.
    server.node().broadcast("lobby", r#"{"n":3}"#).unwrap();
    let mut again = open(
        addr,
        "/events?stream=lobby&raw=1",
        &format!("Last-Event-ID: {first_id}\r\n"),
    )
    .await;
    assert_eq!(again.status(), 200);
    let body = again.until("data: {\"n\":3}").await;
    assert!(body.contains("data: {\"n\":2}"), "replayed: {body}");
    assert!(!body.contains("<p>one</p>"), "not before the id: {body}");
    assert!(!body.contains("event:"), "raw: {body}");
    assert_eq!(
        metric(&metrics(addr).await, "ferrocable_sse_clients"),
        Some(2.0)
    );
}

#[tokio::test]
async fn refusals_come_before_any_event() {
    let server = start(sse_config(|c| {
        c.jwt_secret = Some("jwt".into());
        c.enforce_jwt = true;
    }))
    .await;
    let addr = server.local_addr();
    let token = ferrocable_node::JwtIdentifier::new("jwt").mint(
        serde_json::json!({"user": "ada"}).as_object().unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(open(addr, "/events?stream=lobby", "").await.status(), 401);
    assert_eq!(
        open(addr, &format!("/events?jid={token}"), "")
            .await
            .status(),
        400,
        "no subscription named"
    );
    let forged = ferrocable_streams::MessageVerifier::new("guess").generate("room");
    assert_eq!(
        open(
            addr,
            &format!("/events?jid={token}&signed_stream={forged}"),
            ""
        )
        .await
        .status(),
        400
    );
    let mut ok = open(addr, &format!("/events?jid={token}&stream=lobby"), "").await;
    assert_eq!(ok.status(), 200);
    ok.until("event: confirm_subscription").await;
    // An origin that is not allowed is refused when CSRF protection is on.
    let strict = start(ServeConfig {
        disable_forgery_protection: false,
        ..sse_config(|_| {})
    })
    .await;
    assert_eq!(
        open(
            strict.local_addr(),
            "/events?stream=lobby",
            "Origin: http://evil.example\r\n"
        )
        .await
        .status(),
        403
    );
}

#[tokio::test]
async fn a_reader_that_never_reads_is_cut_as_too_slow() {
    let server = start(sse_config(|c| {
        c.outbox_max_bytes = 256 * 1024;
        c.write_timeout_ms = 300;
    }))
    .await;
    let addr = server.local_addr();
    let mut stalled = open(addr, "/events?stream=flood", "").await;
    stalled.until("event: confirm_subscription").await;
    let payload = format!(r#""{}""#, "x".repeat(16 * 1024));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for _ in 0..64 {
            server.node().broadcast("flood", &payload).unwrap();
        }
        let m = metrics(addr).await;
        if metric(&m, "ferrocable_disconnects_total{reason=\"too_slow\"}") == Some(1.0)
            && metric(&m, "ferrocable_sse_clients") == Some(0.0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled reader was never cut: {m}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_post_subscribes_every_command_and_frames_name_their_subscription() {
    let server = start(sse_config(|_| {})).await;
    let addr = server.local_addr();
    let body = concat!(
        r#"{"command":"subscribe","identifier":"{\"channel\":\"$pubsub\",\"stream_name\":\"a\"}"}"#,
        "\n",
        r#"{"command":"subscribe","identifier":"{\"channel\":\"$pubsub\",\"stream_name\":\"b\"}"}"#,
        "\n"
    );
    let mut s = open_post(addr, body).await;
    assert_eq!(s.status(), 200, "{}", s.head);
    server.node().broadcast("a", r#"{"from":"a"}"#).unwrap();
    server.node().broadcast("b", r#"{"from":"b"}"#).unwrap();
    let body = s.until(r#""message":{"from":"b"}"#).await;
    assert!(
        body.contains(r#"data: {"identifier":"{\"channel\":\"$pubsub\",\"stream_name\":\"a\"}","message":{"from":"a"}"#),
        "{body}"
    );
    assert_eq!(body.matches("event: confirm_subscription").count(), 2);
    // Anything but subscribe commands, or nothing, is a 400.
    let bad = open_post(
        addr,
        r#"{"command":"message","identifier":"x","data":"{}"}"#,
    )
    .await;
    assert_eq!(bad.status(), 400);
    assert_eq!(open_post(addr, "").await.status(), 400);
}

async fn open_post(addr: std::net::SocketAddr, body: &str) -> Stream {
    open(
        addr,
        "/events",
        &format!(
            "Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}
