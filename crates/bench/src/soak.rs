//! Scenario `soak`: does a node hold a flat line over a day's kind of traffic? For
//! `--duration` seconds, `--visitors` clients in a loop each play a fresh visitor (a new
//! session cookie from `GET /session`, a cable connection with it, `--reflexes` reflexes,
//! then leave), while `--idle` subscribed connections are held untouched. The server's RSS is
//! sampled every `--sample-secs`; the verdict compares RSS at the end with RSS after
//! `--baseline-secs` (the first minute): within `--max-growth` (1.1x) or the run fails.
//!
//! `--midway CMD` runs a shell command half-way through (the soak script restarts the
//! session Redis with it); visitors whose visit fails meanwhile count the error by kind, back
//! off 100 ms and carry on, so an outage shows up in the figures instead of ending the run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_websockets::Message;

/// What the `soak` scenario is asked to do.
pub(crate) struct Options {
    pub(crate) addr: SocketAddr,
    pub(crate) duration: Duration,
    pub(crate) idle: usize,
    pub(crate) visitors: usize,
    pub(crate) reflexes: usize,
    pub(crate) think: Duration,
    pub(crate) sample: Duration,
    pub(crate) baseline: Duration,
    pub(crate) max_growth: f64,
    pub(crate) target: String,
    pub(crate) server_pid: u32,
    pub(crate) midway: Option<String>,
    pub(crate) label: String,
}

/// Counters the visitors and idle connections share with the sampler.
#[derive(Default)]
struct Counters {
    visits: AtomicU64,
    reflexes: AtomicU64,
    morph_errors: AtomicU64,
    idle_closed: AtomicU64,
    /// Failed visits by the error's text (a few kinds: bounded in practice, capped at 32).
    failures: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn failed(&self, e: &anyhow::Error) {
        let mut kinds = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let key = e.to_string().chars().take(120).collect::<String>();
        let key = if kinds.len() >= 32 && !kinds.contains_key(&key) {
            "other".to_owned()
        } else {
            key
        };
        *kinds.entry(key).or_default() += 1;
    }
}

/// One visitor: fresh session, connect, `reflexes` reflexes, leave.
async fn visit(o: &Options, visitor: usize, seq: u64, c: &Counters) -> anyhow::Result<()> {
    let cookie = crate::session_cookie(o.addr).await?;
    let stream = TcpStream::connect(o.addr).await?;
    let mut ws = crate::client::open(stream, o.addr, Some(&cookie)).await?;
    crate::client::subscribe(&mut ws, crate::SR).await?;
    for i in 0..o.reflexes {
        let id = format!("soak-{visitor}-{seq}-{i}");
        ws.send(Message::text(crate::reflex_frame(
            o.addr, &o.target, "#counter", &id, visitor,
        )))
        .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let reply =
            crate::client::next_text(&mut ws, deadline, "the reflex's reply", |t| t.contains(&id))
                .await?;
        if reply.as_text().is_some_and(|t| t.contains("morph-error")) {
            c.morph_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            c.reflexes.fetch_add(1, Ordering::Relaxed);
        }
        if !o.think.is_zero() {
            tokio::time::sleep(o.think).await;
        }
    }
    let _ = ws.close().await;
    c.visits.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Runs the soak and prints one JSON line with the RSS series and the verdict.
pub(crate) async fn run(o: Options) -> anyhow::Result<()> {
    if !o.addr.ip().is_loopback() {
        bail!("only loopback targets may be load-tested");
    }
    let o = Arc::new(o);
    let c = Arc::new(Counters::default());
    let started = Instant::now();

    // The idle connections: held open, never written to, counted if the server drops them.
    let limit = Arc::new(Semaphore::new(500));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(1024);
    for _ in 0..o.idle {
        let (o, c, limit, ready_tx) = (o.clone(), c.clone(), limit.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let permit = limit.acquire_owned().await;
            let ws = crate::client::connect_subscribed(o.addr, None, crate::client::BENCH).await;
            drop(permit);
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = ready_tx.send(Err(e)).await;
                    return;
                }
            };
            let _ = ready_tx.send(Ok(())).await;
            drop(ready_tx);
            while let Some(Ok(_)) = ws.next().await {}
            c.idle_closed.fetch_add(1, Ordering::Relaxed);
        });
    }
    drop(ready_tx);
    let mut idle_ready = 0usize;
    let mut idle_failed = BTreeMap::<String, u64>::new();
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => idle_ready += 1,
            Err(e) => *idle_failed.entry(e.to_string()).or_default() += 1,
        }
    }
    let idle_connect_ms = started.elapsed().as_millis() as u64;
    eprintln!("soak: {idle_ready} idle connections held after {idle_connect_ms} ms");

    // The visitors, until the end.
    let t0 = Instant::now();
    let end = t0 + o.duration;
    let mut visitors = Vec::with_capacity(o.visitors);
    for v in 0..o.visitors {
        let (o, c) = (o.clone(), c.clone());
        visitors.push(tokio::spawn(async move {
            let mut seq = 0u64;
            while Instant::now() < end {
                seq += 1;
                if let Err(e) = visit(&o, v, seq, &c).await {
                    c.failed(&e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }

    // The sampler, and the midway command.
    let mut samples = Vec::new();
    let mut baseline = None::<u64>;
    let mut midway = None;
    let mut ticker = tokio::time::interval(o.sample);
    loop {
        ticker.tick().await;
        let t = t0.elapsed();
        let rss = crate::stats::rss_kib(o.server_pid)
            .with_context(|| format!("server process {} is gone", o.server_pid))?;
        samples.push(json!([
            (t.as_secs_f64() * 10.0).round() / 10.0,
            rss,
            c.visits.load(Ordering::Relaxed),
            c.reflexes.load(Ordering::Relaxed),
        ]));
        if baseline.is_none() && t >= o.baseline {
            baseline = Some(rss);
        }
        if let (Some(cmd), None) = (&o.midway, &midway)
            && t >= o.duration / 2
        {
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .status()
                .await?;
            eprintln!("soak: midway command at {:.0} s: {status}", t.as_secs_f64());
            midway = Some(json!({"at_s": t.as_secs(), "command": cmd, "ok": status.success()}));
        }
        if t >= o.duration {
            break;
        }
        eprint!(
            "\rsoak {:>4.0}s rss {} KiB visits {} reflexes {}   ",
            t.as_secs_f64(),
            rss,
            c.visits.load(Ordering::Relaxed),
            c.reflexes.load(Ordering::Relaxed)
        );
    }
    eprintln!();
    for v in visitors {
        v.await?;
    }
    let end_rss = crate::stats::rss_kib(o.server_pid)
        .with_context(|| format!("server process {} is gone", o.server_pid))?;
    let baseline = baseline.context("the run ended before the baseline sample")?;
    let growth = end_rss as f64 / baseline as f64;
    let failures = c.failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let result = json!({
        "tool": "ferrocable-bench", "scenario": "soak", "label": o.label,
        "duration_s": o.duration.as_secs(), "visitors": o.visitors, "reflexes_per_visit": o.reflexes,
        "idle": {"asked": o.idle, "held": idle_ready, "failed": idle_failed, "connect_ms": idle_connect_ms,
                 "dropped_by_server": c.idle_closed.load(Ordering::Relaxed)},
        "visits": c.visits.load(Ordering::Relaxed), "reflexes": c.reflexes.load(Ordering::Relaxed),
        "morph_errors": c.morph_errors.load(Ordering::Relaxed), "failed_visits": failures,
        "midway": midway,
        "rss_kib": {"baseline_at_s": o.baseline.as_secs(), "baseline": baseline, "end": end_rss,
                    "growth": (growth * 1000.0).round() / 1000.0, "max_growth": o.max_growth},
        "flat": growth <= o.max_growth,
        "samples": {"columns": ["t_s", "rss_kib", "visits", "reflexes"], "rows": samples},
    });
    println!("{result}");
    if growth > o.max_growth {
        bail!(
            "RSS grew {growth:.3}x from {baseline} KiB after {} s to {end_rss} KiB at the end",
            o.baseline.as_secs()
        );
    }
    if c.visits.load(Ordering::Relaxed) == 0 {
        bail!("no visit completed");
    }
    Ok(())
}
