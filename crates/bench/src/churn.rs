//! Scenario `churn`: a deploy-like storm. N clients connect and subscribe, all drop at once,
//! then all reconnect and resubscribe at once. Reports how long each wave took and every
//! error, so a server's accept path under a reconnect storm is measured, not assumed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_websockets::WebSocketStream;

async fn connect(addr: SocketAddr) -> anyhow::Result<WebSocketStream<TcpStream>> {
    crate::client::connect_subscribed(addr, None, crate::client::BENCH).await
}

async fn wave(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
) -> (Vec<WebSocketStream<TcpStream>>, usize, Duration) {
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            connect(addr).await
        }));
    }
    let mut ok = Vec::with_capacity(n);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(ws)) => ok.push(ws),
            _ => errors += 1,
        }
    }
    (ok, errors, started.elapsed())
}

/// Runs the storm: connect N, drop all, reconnect N.
pub(crate) async fn run(
    addr: SocketAddr,
    n: usize,
    concurrency: usize,
    label: String,
) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("only loopback targets may be load-tested");
    }
    let (first, first_errors, first_time) = wave(addr, n, concurrency).await;
    let dropped = Instant::now();
    drop(first);
    let drop_time = dropped.elapsed();
    let (second, second_errors, second_time) = wave(addr, n, concurrency).await;
    let rate = |ok: usize, d: Duration| (ok as f64 / d.as_secs_f64()).round();
    let result = json!({
        "tool": "ferrocable-bench", "scenario": "churn", "label": label, "n": n, "concurrency": concurrency,
        "connect": {"ready": n - first_errors, "failed": first_errors, "total_ms": first_time.as_millis() as u64, "rate_per_s": rate(n - first_errors, first_time)},
        "drop_ms": drop_time.as_millis() as u64,
        "reconnect": {"ready": second.len(), "failed": second_errors, "total_ms": second_time.as_millis() as u64, "rate_per_s": rate(second.len(), second_time)},
    });
    println!("{result}");
    if first_errors + second_errors > 0 {
        bail!("{first_errors} failed in the first wave, {second_errors} in the reconnect wave");
    }
    Ok(())
}
