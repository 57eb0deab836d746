//! Scenarios for AnyCable's real-time surface.
//!
//! `presence`: two nodes sharing a bus; a client on node A joins a public `$pubsub` stream's
//! presence, a client on node B times how long until it sees the `join` event (and the
//! `leave`); rounds in sequence, percentiles printed. The nodes need
//! `ANYCABLE_PUBLIC_STREAMS=true`.
//!
//! `sse`: N server-sent-events readers (`GET /events?stream=…`, each a TCP connection that
//! reads its head and confirmation, then holds); the server's RSS per reader. The node needs
//! `ANYCABLE_SSE=true` and public streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

use crate::stats::{percentiles, rss_kib};

const EXT: &str = "actioncable-v1-ext-json";

async fn ext_client(addr: SocketAddr) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (ws, _) = ClientBuilder::new()
        .uri(&format!("ws://{addr}/cable"))?
        .add_header("sec-websocket-protocol".parse()?, EXT.parse()?)?
        .add_header("origin".parse()?, format!("http://{addr}").parse()?)?
        .connect_on(stream)
        .await?;
    Ok(ws)
}

/// The next JSON frame that `pred` accepts, within `limit`.
async fn next_where(
    ws: &mut WebSocketStream<TcpStream>,
    limit: Duration,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    tokio::time::timeout(limit, async {
        loop {
            let m = ws.next().await.context("closed")??;
            let Some(text) = m.as_text() else { continue };
            let v: Value = serde_json::from_str(text)?;
            if pred(&v) {
                return anyhow::Ok(v);
            }
        }
    })
    .await
    .context("timed out")?
}

/// Runs the presence scenario.
pub(crate) async fn presence(
    a: SocketAddr,
    b: SocketAddr,
    rounds: usize,
    label: String,
) -> anyhow::Result<()> {
    if !a.ip().is_loopback() || !b.ip().is_loopback() {
        bail!("only loopback targets may be load-tested");
    }
    let stream = format!("bench-presence-{}", std::process::id());
    let identifier = json!({"channel": "$pubsub", "stream_name": stream}).to_string();
    let mut joiner = ext_client(a).await?;
    let mut watcher = ext_client(b).await?;
    for ws in [&mut joiner, &mut watcher] {
        next_where(ws, Duration::from_secs(5), |v| v["type"] == "welcome").await?;
        ws.send(Message::text(
            json!({"command": "subscribe", "identifier": identifier}).to_string(),
        ))
        .await?;
        next_where(ws, Duration::from_secs(5), |v| {
            v["type"] == "confirm_subscription"
        })
        .await
        .context("subscription not confirmed (ANYCABLE_PUBLIC_STREAMS=true?)")?;
    }
    let join = |id: &str| {
        json!({"command": "join", "identifier": identifier, "presence": {"id": id, "info": {"bench": true}}})
            .to_string()
    };
    let leave = json!({"command": "leave", "identifier": identifier}).to_string();
    let is = |kind: &'static str, id: String| {
        move |v: &Value| {
            v["type"] == "presence" && v["message"]["type"] == kind && v["message"]["id"] == id
        }
    };
    // Warm-up: node B hears node A's presence ops once its bus subscription is in place.
    let warm = Instant::now();
    loop {
        joiner.send(Message::text(join("warm-up"))).await?;
        if next_where(
            &mut watcher,
            Duration::from_millis(500),
            is("join", "warm-up".into()),
        )
        .await
        .is_ok()
        {
            break;
        }
        if warm.elapsed() > Duration::from_secs(15) {
            bail!("node B never saw node A's presence");
        }
    }
    joiner.send(Message::text(leave.clone())).await?;
    next_where(
        &mut watcher,
        Duration::from_secs(5),
        is("leave", "warm-up".into()),
    )
    .await?;

    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let id = format!("user-{r}");
        let t = Instant::now();
        joiner.send(Message::text(join(&id))).await?;
        next_where(&mut watcher, Duration::from_secs(5), is("join", id.clone())).await?;
        joins.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        joiner.send(Message::text(leave.clone())).await?;
        next_where(&mut watcher, Duration::from_secs(5), is("leave", id)).await?;
        leaves.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "{}",
        json!({
            "tool": "ferrocable-bench", "scenario": "presence", "label": label, "rounds": rounds,
            "nodes": [a.to_string(), b.to_string()],
            "join_seen_ms": percentiles(joins), "leave_seen_ms": percentiles(leaves),
        })
    );
    Ok(())
}

/// One SSE reader: the head, then events until `confirm_subscription`.
async fn sse_reader(addr: SocketAddr, stream: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET /events?stream={stream} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        const CONFIRMED: &[u8] = b"event: confirm_subscription";
        while !seen.windows(CONFIRMED.len()).any(|w| w == CONFIRMED) {
            let mut chunk = [0u8; 2048];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                bail!("closed: {}", String::from_utf8_lossy(&seen));
            }
            seen.extend_from_slice(&chunk[..n]);
            if seen.starts_with(b"HTTP/1.1 ") && !seen.starts_with(b"HTTP/1.1 200") {
                bail!("{}", String::from_utf8_lossy(&seen[..seen.len().min(60)]));
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("no confirmation within 60 s")??;
    Ok(s)
}

/// Runs the SSE scenario.
pub(crate) async fn sse(
    addr: SocketAddr,
    n: usize,
    server_pid: u32,
    label: String,
) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("only loopback targets may be load-tested");
    }
    let stream = format!("bench-sse-{}", std::process::id());
    let before = rss_kib(server_pid).unwrap_or(0);
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(200));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (limit, stream) = (limit.clone(), stream.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            sse_reader(addr, &stream).await
        }));
    }
    let mut readers = Vec::with_capacity(n);
    let mut failures = std::collections::BTreeMap::<String, u64>::new();
    for t in tasks {
        match t.await? {
            Ok(s) => readers.push(s),
            Err(e) => *failures.entry(e.to_string()).or_default() += 1,
        }
    }
    let connect_ms = started.elapsed().as_millis() as u64;
    // Let the server settle, then read its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = rss_kib(server_pid).unwrap_or(0);
    let ok = readers.len();
    println!(
        "{}",
        json!({
            "tool": "ferrocable-bench", "scenario": "sse", "label": label, "n": n,
            "held": ok, "failed": failures, "connect_ms": connect_ms,
            "server_rss_kib": {"before": before, "held": held},
            "rss_per_reader_kib": (ok > 0).then(|| ((held.saturating_sub(before)) as f64 / ok as f64 * 100.0).round() / 100.0),
        })
    );
    drop(readers);
    if ok < n {
        bail!("{} of {n} readers failed", n - ok);
    }
    Ok(())
}
