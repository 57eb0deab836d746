//! `rpc`: ferrocable in front of an app over AnyCable RPC (the test suite's fake Rails app,
//! `cargo build --release -p ferrocable-server --example fake_rails`). N clients connect and
//! subscribe to `ChatChannel` (two calls each: connect, subscribe), then each performs `speak`
//! in a closed loop (one command call each, its transmission awaited) for the duration.
//! Reports the connect + subscribe rate, the command round trip, and the server's CPU per
//! call read from `/proc/<pid>/stat`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

/// What the scenario is told.
pub(crate) struct Options {
    pub(crate) addr: SocketAddr,
    pub(crate) n: usize,
    pub(crate) concurrency: usize,
    pub(crate) duration: Duration,
    pub(crate) server_pid: Option<u32>,
    pub(crate) label: String,
}

const IDENTIFIER: &str = r#"{"channel":"ChatChannel","room":"bench"}"#;

/// Server CPU time (user + system) of `pid` so far.
fn cpu(pid: Option<u32>) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid?)).ok()?;
    // Fields after the parenthesised name: utime is the 14th field, stime the 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

async fn connect(addr: SocketAddr, k: usize) -> anyhow::Result<WebSocketStream<TcpStream>> {
    tokio::time::timeout(Duration::from_secs(60), async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut ws, _) = ClientBuilder::new()
            .uri(&format!("ws://{addr}/cable?user=b{k}"))?
            .add_header(
                "sec-websocket-protocol".parse()?,
                "actioncable-v1-json".parse()?,
            )?
            .add_header("origin".parse()?, format!("http://{addr}").parse()?)?
            .connect_on(stream)
            .await?;
        ws.send(Message::text(
            json!({"command": "subscribe", "identifier": IDENTIFIER}).to_string(),
        ))
        .await?;
        loop {
            let m = ws.next().await.context("closed before confirmation")??;
            match m.as_text() {
                Some(t) if t.contains("confirm_subscription") => return anyhow::Ok(ws),
                Some(t) if t.contains("reject_subscription") || t.contains("disconnect") => {
                    bail!("refused: {t}")
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| bail!("connect and subscribe took over 60 s"))
}

/// One client's closed loop of `speak` commands until `stop`; the round trips.
async fn speak_loop(
    mut ws: WebSocketStream<TcpStream>,
    k: usize,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let text = format!("c{k}-{seq}");
        let data = json!({"action": "speak", "text": text}).to_string();
        let sent = Instant::now();
        ws.send(Message::text(
            json!({"command": "message", "identifier": IDENTIFIER, "data": data}).to_string(),
        ))
        .await?;
        let deadline = tokio::time::Instant::from_std(sent) + Duration::from_secs(10);
        crate::client::next_text(&mut ws, deadline, "the reply", |t| t.contains(&text)).await?;
        latencies.push(sent.elapsed());
    }
    Ok(latencies)
}

pub(crate) async fn run(o: Options) -> anyhow::Result<()> {
    if !o.addr.ip().is_loopback() {
        bail!("only loopback addresses may be load-tested");
    }
    let cpu0 = cpu(o.server_pid);
    let started = Instant::now();
    let mut clients = Vec::with_capacity(o.n);
    let mut failures = 0usize;
    let mut first_failure = None;
    let mut pending = futures_util::stream::iter((0..o.n).map(|k| connect(o.addr, k)))
        .buffer_unordered(o.concurrency.max(1));
    while let Some(r) = pending.next().await {
        match r {
            Ok(ws) => clients.push(ws),
            Err(e) => {
                failures += 1;
                first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
    drop(pending);
    let connect_secs = started.elapsed().as_secs_f64();
    let cpu1 = cpu(o.server_pid);

    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, ws)| tokio::spawn(speak_loop(ws, k, stop.clone())))
        .collect();
    let measure = Instant::now();
    tokio::time::sleep(o.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut command_failures = 0usize;
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => all.extend(l),
            Ok(Err(e)) => {
                command_failures += 1;
                first_failure.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                command_failures += 1;
                first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let measured = measure.elapsed().as_secs_f64();
    let cpu2 = cpu(o.server_pid);
    all.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .map(ms)
    };
    let connected = o.n - failures;
    let per_call_us = |a: Option<Duration>, b: Option<Duration>, calls: usize| match (a, b) {
        (Some(a), Some(b)) if calls > 0 => Some((b - a).as_secs_f64() * 1e6 / calls as f64),
        _ => None,
    };
    println!(
        "{}",
        json!({
            "tool": "ferrocable-bench",
            "scenario": "rpc",
            "label": o.label,
            "n": o.n,
            "connected": connected,
            "connect_failures": failures,
            "connect_subscribe_per_s": connected as f64 / connect_secs,
            "connect_cpu_us_per_call": per_call_us(cpu0, cpu1, connected * 2),
            "commands": all.len(),
            "commands_per_s": all.len() as f64 / measured,
            "command_failures": command_failures,
            "round_trip_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": all.last().copied().map(ms)},
            "command_cpu_us_per_call": per_call_us(cpu1, cpu2, all.len()),
            "first_failure": first_failure,
        })
    );
    Ok(())
}
