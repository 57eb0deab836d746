//! Scenario `broadcast`: N connections subscribed to `BenchmarkChannel`; R rounds in which one
//! client asks the server to broadcast a timestamped payload; every client records when it
//! arrives. Reports connect rate, per-round last-receiver time, latency percentiles over all
//! receptions, missing and duplicate deliveries — the same names as `cable-bench.js` where
//! they overlap.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_websockets::Message;

use crate::client::BENCH;
use crate::stats::{percentiles, rss_kib};

/// Options of the broadcast scenario.
pub(crate) struct Options {
    pub(crate) addr: SocketAddr,
    pub(crate) n: usize,
    pub(crate) rounds: usize,
    pub(crate) payload_size: usize,
    pub(crate) concurrency: usize,
    pub(crate) source_ips: u8,
    pub(crate) round_timeout: Duration,
    pub(crate) round_interval: Duration,
    pub(crate) server_pid: Option<u32>,
    pub(crate) label: String,
}

struct Reception {
    round: u64,
    micros: u64,
}

pub(crate) async fn run(o: Options) -> anyhow::Result<()> {
    if !o.addr.ip().is_loopback() {
        bail!("only loopback targets may be load-tested");
    }
    let epoch = Instant::now();
    let rss_before = o.server_pid.and_then(rss_kib);
    let (tx, mut rx) = mpsc::unbounded_channel::<Reception>();
    let dups = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let limit = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let (ready_tx, mut ready_rx) =
        mpsc::unbounded_channel::<Result<mpsc::UnboundedSender<String>, String>>();
    let connect_start = Instant::now();
    for i in 0..o.n {
        let (tx, dups, closed, limit, ready_tx) = (
            tx.clone(),
            dups.clone(),
            closed.clone(),
            limit.clone(),
            ready_tx.clone(),
        );
        let addr = o.addr;
        let source = crate::client::source_address(o.source_ips, i);
        tokio::spawn(async move {
            let permit = limit.acquire_owned().await;
            let connected = crate::client::connect_subscribed(addr, source, BENCH).await;
            drop(permit);
            let mut ws = match connected {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            crate::client::leave_no_time_wait(&ws);
            let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
            let _ = ready_tx.send(Ok(out_tx));
            let mut seen = HashSet::new();
            loop {
                tokio::select! {
                    out = out_rx.recv() => match out {
                        Some(text) => { if ws.send(Message::text(text)).await.is_err() { break; } }
                        None => break,
                    },
                    m = ws.next() => {
                        let Some(Ok(m)) = m else { break };
                        let Some(text) = m.as_text() else { continue };
                        if !text.contains("\"action\":\"broadcast\"") {
                            continue;
                        }
                        let now = epoch.elapsed().as_micros() as u64;
                        let Ok(v) = serde_json::from_str::<Value>(text) else { continue };
                        let (Some(rid), Some(ts)) = (v["message"]["rid"].as_u64(), v["message"]["ts"].as_u64()) else { continue };
                        if !seen.insert(rid) {
                            dups.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let _ = tx.send(Reception { round: rid, micros: now.saturating_sub(ts) });
                    }
                }
            }
            closed.fetch_add(1, Ordering::Relaxed);
        });
    }
    drop(ready_tx);
    let mut senders = Vec::with_capacity(o.n);
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(s) => senders.push(s),
            Err(e) => *errors.entry(e).or_default() += 1,
        }
        if senders.len() + errors.values().sum::<u64>() as usize == o.n {
            break;
        }
    }
    let connect_ms = connect_start.elapsed().as_secs_f64() * 1000.0;
    let ready = senders.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = o.server_pid.and_then(rss_kib);

    let payload = "x".repeat(o.payload_size);
    let mut all = Vec::new();
    let mut last = Vec::new();
    let mut missing_total = 0usize;
    let mut per_round = Vec::new();
    for round in 0..o.rounds {
        if ready == 0 {
            break;
        }
        let rid = round as u64 + 1;
        let ts = epoch.elapsed().as_micros() as u64;
        let data =
            json!({"action": "broadcast", "rid": rid, "ts": ts, "payload": payload}).to_string();
        let _ = senders[round % ready]
            .send(json!({"command": "message", "identifier": BENCH, "data": data}).to_string());
        let deadline = tokio::time::Instant::now() + o.round_timeout;
        let mut received = 0usize;
        let mut round_max = 0f64;
        while received < ready {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) if r.round == rid => {
                    received += 1;
                    let ms = r.micros as f64 / 1000.0;
                    round_max = round_max.max(ms);
                    all.push(ms);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        let missing = ready - received;
        missing_total += missing;
        last.push(round_max);
        per_round.push(json!({"round": round, "received": received, "expected": ready, "missing": missing, "last_ms": (round_max * 1000.0).round() / 1000.0}));
        tokio::time::sleep(o.round_interval).await;
    }
    let rss_end = o.server_pid.and_then(rss_kib);
    let result = json!({
        "tool": "ferrocable-bench", "scenario": "broadcast", "label": o.label, "n": o.n, "rounds": o.rounds,
        "payload_size": o.payload_size, "source_ips": o.source_ips,
        "connect": {"ready": ready, "failed": o.n - ready, "errors": errors, "total_ms": connect_ms.round(),
                    "rate_per_s": (ready as f64 / (connect_ms / 1000.0)).round()},
        "idle": {"server_rss_kib_before": rss_before, "server_rss_kib": rss_idle,
                 "rss_per_conn_kb": match (rss_before, rss_idle) { (Some(a), Some(b)) if ready > 0 => Some(((b.saturating_sub(a)) as f64 / ready as f64 * 100.0).round() / 100.0), _ => None }},
        "broadcast": {"latency_ms": percentiles(all), "last_receiver_ms": percentiles(last), "missing_total": missing_total,
                      "duplicates": dups.load(Ordering::Relaxed), "per_round": per_round},
        "end": {"closed_after_ready": closed.load(Ordering::Relaxed), "server_rss_kib": rss_end},
    });
    println!("{result}");
    if ready < o.n || missing_total > 0 || dups.load(Ordering::Relaxed) > 0 {
        bail!(
            "{} of {} connected, {missing_total} missing, {} duplicates",
            ready,
            o.n,
            dups.load(Ordering::Relaxed)
        );
    }
    Ok(())
}
