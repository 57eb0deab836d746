//! Scenario `fleet`: more connections than one process may hold (20,000 file descriptors
//! here), spread over several server ports (one node each, sharing broadcasts through
//! Redis/NATS), held by worker processes this binary forks (`ferrocable-bench worker`).
//!
//! Phases: **connect** (every worker opens its share at once, bounded concurrency; connect
//! rate and failures), **idle** (hold for `--hold-secs`: server RSS per connection summed
//! over `--server-pids`, pings received, drops), **broadcast** (R rounds: the coordinator
//! asks node 0 to broadcast a timestamped payload; every worker times every reception
//! against the wall clock and reports per round; last-receiver time across **all**
//! receivers, percentiles over all receptions, missing and duplicates). The idle phase and
//! every round also report the longest gap between two pings of one connection and how many
//! gaps passed @rails/actioncable's 6 s stale threshold: a heartbeat that falls behind on an
//! overloaded box makes rounds faster and real clients reconnect, and only this shows it.
//!
//! Coordinator ↔ worker protocol (one JSON object per line): workers print `ready`,
//! `progress` and `round` lines on stdout; the coordinator writes `idle`, `round <rid>` and
//! `quit` lines to their stdin.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tokio_websockets::Message;

use crate::client::BENCH;
use crate::stats::percentiles;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Options of the coordinator.
pub(crate) struct FleetOptions {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) n: usize,
    pub(crate) per_worker: usize,
    pub(crate) concurrency: usize,
    pub(crate) hold: Duration,
    pub(crate) rounds: usize,
    pub(crate) payload_size: usize,
    pub(crate) round_timeout: Duration,
    pub(crate) server_pids: Vec<u32>,
    pub(crate) source_ips: u8,
    pub(crate) label: String,
}

/// Options of one worker process.
pub(crate) struct WorkerOptions {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) n: usize,
    pub(crate) first: usize,
    pub(crate) source_ips: u8,
    pub(crate) concurrency: usize,
    pub(crate) round_timeout: Duration,
}

/// Resident and proportional set sizes (KiB) of `pid`, from `/proc`.
fn memory_kib(pid: u32) -> (u64, u64) {
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (field(&status, "VmRSS:"), field(&rollup, "Pss:"))
}

fn memory_of(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .map(|p| memory_kib(*p))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// A textual progress bar on stderr.
fn progress(what: &str, done: usize, total: usize, started: Instant) {
    let width = 40;
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    eprint!(
        "\r{what} [{}{}] {done}/{total} {:.1}s   ",
        "#".repeat(filled),
        ".".repeat(width - filled),
        started.elapsed().as_secs_f64()
    );
}

struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    async fn next(&mut self, timeout: Duration) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .context("worker silent")??
            .context("worker exited")?;
        serde_json::from_str(&line).with_context(|| format!("worker said {line:?}"))
    }

    async fn tell(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }
}

/// The coordinator.
pub(crate) async fn run(o: FleetOptions) -> anyhow::Result<()> {
    if o.addrs.is_empty() || o.addrs.iter().any(|a| !a.ip().is_loopback()) {
        bail!("give one or more loopback targets (only loopback may be load-tested)");
    }
    let exe = std::env::current_exe()?;
    let per_worker = o.per_worker.clamp(1, 19_000);
    let workers_needed = o.n.div_ceil(per_worker);
    let addrs: Vec<String> = o.addrs.iter().map(ToString::to_string).collect();
    let mem_before = memory_of(&o.server_pids);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..workers_needed {
        let first = w * per_worker;
        let n = per_worker.min(o.n - first);
        let mut child = tokio::process::Command::new(&exe)
            .args(["worker", "--addrs", &addrs.join(","), "--n", &n.to_string()])
            .args(["--first", &first.to_string()])
            .args(["--concurrency", &o.concurrency.to_string()])
            .args(["--source-ips", &o.source_ips.to_string()])
            .args([
                "--round-timeout-ms",
                &o.round_timeout.as_millis().to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a worker process")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        workers.push(Worker {
            child,
            stdin,
            lines,
        });
    }

    // Connect: every worker reports progress, then `ready`.
    let mut ready = vec![None::<Value>; workers.len()];
    let mut connected = vec![0usize; workers.len()];
    let connect_timeout = Duration::from_secs(600);
    while ready.iter().any(Option::is_none) {
        for (i, w) in workers.iter_mut().enumerate() {
            if ready[i].is_some() {
                continue;
            }
            let v = w.next(connect_timeout).await?;
            if v["ready"].is_u64() {
                connected[i] = v["ready"].as_u64().unwrap_or(0) as usize;
                ready[i] = Some(v);
            } else if let Some(n) = v["progress"].as_u64() {
                connected[i] = n as usize;
            }
            progress("connect", connected.iter().sum(), o.n, started);
        }
    }
    eprintln!();
    let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
    let ready_total: usize = connected.iter().sum();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut connect_times = Vec::with_capacity(ready_total);
    for r in ready.iter().flatten() {
        if let Some(times) = r["connect_tenth_ms"].as_array() {
            connect_times.extend(
                times
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|t| t as f64 / 10.0),
            );
        }
        if let Some(map) = r["errors"].as_object() {
            for (k, v) in map {
                *errors.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
    }

    // Idle: hold, then read memory and ask workers for pings and drops.
    let hold_started = Instant::now();
    while hold_started.elapsed() < o.hold {
        tokio::time::sleep(Duration::from_secs(1).min(o.hold)).await;
        progress(
            "idle",
            hold_started.elapsed().as_secs() as usize,
            o.hold.as_secs() as usize,
            hold_started,
        );
    }
    if !o.hold.is_zero() {
        eprintln!();
    }
    let mem_idle = memory_of(&o.server_pids);
    let mut dropped = 0u64;
    let mut idle_pings = PingStats::default();
    for w in &mut workers {
        w.tell("idle").await?;
        let v = w.next(Duration::from_secs(30)).await?;
        dropped += v["dropped"].as_u64().unwrap_or(0);
        idle_pings
            .merge(&v)
            .context("a worker's idle report: ping figures")?;
    }

    // Broadcast rounds, triggered through a connection of the coordinator's own to node 0.
    let mut all = Vec::new();
    let mut last = Vec::new();
    let mut per_round = Vec::new();
    let (mut missing_total, mut dups_total) = (0u64, 0u64);
    if o.rounds > 0 {
        let stream = tokio::net::TcpStream::connect(o.addrs[0]).await?;
        let mut trigger = crate::client::open(stream, o.addrs[0], None).await?;
        crate::client::subscribe(&mut trigger, BENCH).await?;
        let payload = "x".repeat(o.payload_size);
        for round in 0..o.rounds {
            let rid = round as u64 + 1;
            for w in &mut workers {
                w.tell(&format!("round {rid}")).await?;
            }
            let data =
                json!({"action": "broadcast", "rid": rid, "ts": now_us(), "payload": payload})
                    .to_string();
            trigger
                .send(Message::text(
                    json!({"command": "message", "identifier": BENCH, "data": data}).to_string(),
                ))
                .await?;
            let (mut received, mut round_max) = (0u64, 0f64);
            let mut pings = PingStats::default();
            for w in &mut workers {
                let v = w.next(o.round_timeout + Duration::from_secs(30)).await?;
                received += v["received"].as_u64().unwrap_or(0);
                pings
                    .merge(&v)
                    .context("a worker's round report: ping figures")?;
                missing_total += v["missing"].as_u64().unwrap_or(0);
                dups_total += v["duplicates"].as_u64().unwrap_or(0);
                round_max = round_max.max(v["max_ms"].as_f64().unwrap_or(0.0));
                if let Some(lat) = v["lat_tenth_ms"].as_array() {
                    all.extend(
                        lat.iter()
                            .filter_map(Value::as_u64)
                            .map(|t| t as f64 / 10.0),
                    );
                }
            }
            progress("broadcast", round + 1, o.rounds, started);
            last.push(round_max);
            // With the pings the clients got since the last report (the hold's end, for the
            // first round): how much of the heartbeat's work falls within the rounds.
            per_round.push(pings.added_to(
                json!({"round": round, "received": received, "expected": ready_total,
                                                 "last_ms": (round_max * 1000.0).round() / 1000.0}),
            ));
            tokio::time::sleep(Duration::from_millis(500)).await;
            // Drain anything the trigger connection got (its own copy of the broadcast).
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(1), trigger.next()).await
            {}
        }
        eprintln!();
    }
    let mem_end = memory_of(&o.server_pids);
    for w in &mut workers {
        let _ = w.tell("quit").await;
    }
    for w in &mut workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w.child.wait()).await;
    }
    let per_conn = |after: u64, before: u64| {
        (ready_total > 0).then(|| {
            ((after.saturating_sub(before)) as f64 / ready_total as f64 * 100.0).round() / 100.0
        })
    };
    let result = json!({
        "tool": "ferrocable-bench", "scenario": "fleet", "label": o.label, "n": o.n,
        "targets": addrs, "workers": workers_needed, "source_ips": o.source_ips, "rounds": o.rounds, "payload_size": o.payload_size,
        "connect": {"ready": ready_total, "failed": o.n - ready_total, "errors": errors,
                    "total_ms": connect_ms.round(), "rate_per_s": (ready_total as f64 / (connect_ms / 1000.0)).round(),
                    "concurrency_per_worker": o.concurrency, "time_ms": percentiles(connect_times)},
        "idle": idle_pings.added_to(json!({"hold_s": o.hold.as_secs(), "server_rss_kib_before": mem_before.0, "server_rss_kib": mem_idle.0,
                 "server_pss_kib": mem_idle.1, "rss_per_conn_kb": per_conn(mem_idle.0, mem_before.0),
                 "pss_per_conn_kb": per_conn(mem_idle.1, mem_before.1), "dropped": dropped})),
        "broadcast": {"latency_ms": percentiles(all), "last_receiver_ms": percentiles(last),
                      "missing_total": missing_total, "duplicates": dups_total, "per_round": per_round},
        "end": {"server_rss_kib": mem_end.0},
    });
    println!("{result}");
    if ready_total < o.n || missing_total > 0 || dups_total > 0 || dropped > 0 {
        bail!(
            "{ready_total} of {} connected, {dropped} dropped, {missing_total} missing, {dups_total} duplicates",
            o.n
        );
    }
    Ok(())
}

/// What a worker's connections report.
enum Event {
    Broadcast {
        rid: u64,
        latency_us: u64,
    },
    Duplicate,
    /// A ping, `gap_ms` after the connection's previous one (or its subscription).
    Ping {
        gap_ms: u64,
    },
    Closed,
}

/// A gap between pings longer than this makes @rails/actioncable's `ConnectionMonitor`
/// (`staleThreshold` 6 s) take the connection for stale and reconnect it.
const STALE_MS: u64 = 6_000;

/// The pings clients received since the last report: how many, the longest gap between two
/// pings of one connection, and how many gaps passed [`STALE_MS`]. Its fields are the ones
/// worker reports and the result carry, under these names.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct PingStats {
    pings: u64,
    ping_gap_max_ms: u64,
    ping_gaps_stale: u64,
}

impl PingStats {
    fn record(&mut self, gap_ms: u64) {
        self.pings += 1;
        self.ping_gap_max_ms = self.ping_gap_max_ms.max(gap_ms);
        self.ping_gaps_stale += u64::from(gap_ms > STALE_MS);
    }

    /// Adds a worker's report (a JSON object carrying these fields; missing ones count 0,
    /// one that is not a count is an error).
    fn merge(&mut self, report: &Value) -> serde_json::Result<()> {
        let other = PingStats::deserialize(report)?;
        self.pings += other.pings;
        self.ping_gap_max_ms = self.ping_gap_max_ms.max(other.ping_gap_max_ms);
        self.ping_gaps_stale += other.ping_gaps_stale;
        Ok(())
    }

    /// `report` (a JSON object) with these fields added.
    fn added_to(&self, mut report: Value) -> Value {
        if let (Some(fields), Ok(Value::Object(mine))) =
            (report.as_object_mut(), serde_json::to_value(self))
        {
            fields.extend(mine);
        }
        report
    }
}

/// What a worker's connections reported since the coordinator last asked: fed by both the
/// idle loop and a round's collection, so each event is counted the same way in either.
#[derive(Default)]
struct Tally {
    /// Latencies (µs) per round id.
    rounds: HashMap<u64, Vec<u64>>,
    duplicates: u64,
    /// Connections that ended (never reset: the live count is `ok - closed`).
    closed: u64,
    pings: PingStats,
}

impl Tally {
    fn record(&mut self, event: Event) {
        match event {
            Event::Broadcast { rid, latency_us } => {
                self.rounds.entry(rid).or_default().push(latency_us)
            }
            Event::Duplicate => self.duplicates += 1,
            Event::Ping { gap_ms } => self.pings.record(gap_ms),
            Event::Closed => self.closed += 1,
        }
    }
}

/// One worker process: holds its share, answers the coordinator on stdin/stdout.
pub(crate) async fn worker(o: WorkerOptions) -> anyhow::Result<()> {
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let limit = Arc::new(Semaphore::new(o.concurrency.max(1)));
    // Each connection reports its connect + upgrade + confirmation time (µs), or its error.
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<u64, String>>();
    for i in 0..o.n {
        let addr = o.addrs[(o.first + i) % o.addrs.len()];
        // Client sockets spread over 127.0.0.1..=127.0.0.K: each source address has its own
        // ephemeral ports.
        let source = crate::client::source_address(o.source_ips, o.first + i);
        let (events_tx, limit, ready_tx) = (events_tx.clone(), limit.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let permit = limit.acquire_owned().await;
            let began = Instant::now();
            let connected = crate::client::connect_subscribed(addr, source, BENCH).await;
            let took_us = began.elapsed().as_micros() as u64;
            drop(permit);
            let mut ws = match connected {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            crate::client::leave_no_time_wait(&ws);
            let _ = ready_tx.send(Ok(took_us));
            drop(ready_tx);
            let mut seen = HashSet::new();
            let mut last_ping = Instant::now();
            while let Some(Ok(m)) = ws.next().await {
                let Some(text) = m.as_text() else { continue };
                if text.starts_with("{\"type\":\"ping\"") {
                    let now = Instant::now();
                    let gap_ms = (now - last_ping).as_millis() as u64;
                    last_ping = now;
                    let _ = events_tx.send(Event::Ping { gap_ms });
                    continue;
                }
                if !text.contains("\"action\":\"broadcast\"") {
                    continue;
                }
                let at = now_us();
                let Ok(v) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                let (Some(rid), Some(ts)) =
                    (v["message"]["rid"].as_u64(), v["message"]["ts"].as_u64())
                else {
                    continue;
                };
                let event = if seen.insert(rid) {
                    Event::Broadcast {
                        rid,
                        latency_us: at.saturating_sub(ts),
                    }
                } else {
                    Event::Duplicate
                };
                let _ = events_tx.send(event);
            }
            let _ = events_tx.send(Event::Closed);
        });
    }
    drop(ready_tx);
    let mut out = tokio::io::stdout();
    let say = |v: Value| format!("{v}\n");
    let (mut ok, mut errors) = (0usize, BTreeMap::<String, u64>::new());
    let mut connect_tenth_ms = Vec::with_capacity(o.n);
    let mut last_report = Instant::now();
    while ok + (errors.values().sum::<u64>() as usize) < o.n {
        match ready_rx.recv().await {
            Some(Ok(us)) => {
                ok += 1;
                connect_tenth_ms.push(us / 100);
            }
            Some(Err(e)) => *errors.entry(e).or_default() += 1,
            None => break,
        }
        if last_report.elapsed() > Duration::from_millis(500) {
            out.write_all(say(json!({"progress": ok})).as_bytes())
                .await?;
            out.flush().await?;
            last_report = Instant::now();
        }
    }
    out.write_all(
        say(json!({"ready": ok, "errors": errors, "connect_tenth_ms": connect_tenth_ms}))
            .as_bytes(),
    )
    .await?;
    out.flush().await?;

    let mut tally = Tally::default();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            e = events.recv() => if let Some(e) = e { tally.record(e) },
            line = stdin.next_line() => {
                let Some(line) = line? else { return Ok(()) };
                let line = line.trim();
                if line == "quit" {
                    return Ok(());
                } else if line == "idle" {
                    let pings = std::mem::take(&mut tally.pings);
                    out.write_all(say(pings.added_to(json!({"dropped": tally.closed}))).as_bytes()).await?;
                    out.flush().await?;
                } else if let Some(rid) = line.strip_prefix("round ").and_then(|r| r.parse::<u64>().ok()) {
                    // Collect until every live connection has the round, or the timeout.
                    let deadline = tokio::time::Instant::now() + o.round_timeout;
                    let expected = ok.saturating_sub(tally.closed as usize);
                    while tally.rounds.get(&rid).map_or(0, Vec::len) < expected {
                        match tokio::time::timeout_at(deadline, events.recv()).await {
                            Ok(Some(e)) => tally.record(e),
                            _ => break,
                        }
                    }
                    let lat = tally.rounds.remove(&rid).unwrap_or_default();
                    let max_ms = lat.iter().copied().max().unwrap_or(0) as f64 / 1000.0;
                    let tenths: Vec<u64> = lat.iter().map(|us| us / 100).collect();
                    let pings = std::mem::take(&mut tally.pings);
                    out.write_all(say(pings.added_to(json!({"round": rid, "received": lat.len(), "missing": ok.saturating_sub(lat.len()),
                        "duplicates": std::mem::take(&mut tally.duplicates), "max_ms": max_ms, "lat_tenth_ms": tenths}))).as_bytes()).await?;
                    out.flush().await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_past_the_clients_stale_threshold_counts_as_stale() {
        let mut stats = PingStats::default();
        for gap_ms in [100, STALE_MS, STALE_MS + 1, 2_000] {
            stats.record(gap_ms);
        }
        assert_eq!(
            (stats.pings, stats.ping_gap_max_ms, stats.ping_gaps_stale),
            (4, STALE_MS + 1, 1)
        );
    }

    #[test]
    fn workers_reports_merge_to_the_longest_gap_and_all_stale_ones() {
        let mut stats = PingStats::default();
        for report in [
            json!({"ping_gap_max_ms": 7_000, "ping_gaps_stale": 3, "pings": 10}),
            json!({"ping_gap_max_ms": 4_000, "ping_gaps_stale": 0, "round": 1}),
            json!({"pings": 5}),
        ] {
            stats.merge(&report).expect("well-formed");
        }
        assert_eq!(
            (stats.pings, stats.ping_gap_max_ms, stats.ping_gaps_stale),
            (15, 7_000, 3)
        );
    }

    #[test]
    fn a_report_whose_ping_figure_is_not_a_count_is_an_error() {
        let mut stats = PingStats::default();
        assert!(stats.merge(&json!({"pings": "many"})).is_err());
        assert!(stats.merge(&json!({"ping_gap_max_ms": -1})).is_err());
        assert_eq!(stats, PingStats::default(), "nothing added");
    }

    #[test]
    fn a_report_carries_the_stats_beside_its_own_fields_and_reads_back_whole() {
        let stats = PingStats {
            pings: 9,
            ping_gap_max_ms: 6_500,
            ping_gaps_stale: 2,
        };
        let report = stats.added_to(json!({"round": 3}));
        assert_eq!(report["round"], 3);
        let mut back = PingStats::default();
        back.merge(&report).expect("its own fields");
        assert_eq!(back, stats);
    }

    #[test]
    fn a_tally_counts_each_event_once_and_keeps_rounds_apart() {
        let mut tally = Tally::default();
        for e in [
            Event::Broadcast {
                rid: 1,
                latency_us: 10,
            },
            Event::Broadcast {
                rid: 2,
                latency_us: 20,
            },
            Event::Broadcast {
                rid: 1,
                latency_us: 30,
            },
            Event::Duplicate,
            Event::Ping { gap_ms: 7_000 },
            Event::Closed,
        ] {
            tally.record(e);
        }
        assert_eq!(tally.rounds[&1], vec![10, 30]);
        assert_eq!(tally.rounds[&2], vec![20]);
        assert_eq!((tally.duplicates, tally.closed), (1, 1));
        assert_eq!((tally.pings.pings, tally.pings.ping_gaps_stale), (1, 1));
    }
}
