//! `ferrocable-bench`: load for ActionCable-protocol servers, measured from the client side.
//!
//! Scenario `reflex`: C clients, each with its own session (a cookie from `GET /session`), each
//! subscribed to `StimulusReflex::Channel`, send reflexes in a closed loop (one in flight per
//! client) and time each one until its reply envelope (matched by reflex id) arrives. Prints one
//! JSON line: reflexes per second and latency percentiles. Loopback targets only; every loop
//! is bounded by `--duration`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod broadcast;
mod churn;
mod client;
mod fleet;
mod realtime;
mod rpc;
mod soak;
mod stats;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_websockets::Message;

#[derive(Parser)]
#[command(
    name = "ferrocable-bench",
    about = "Load generator for ActionCable-protocol servers"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// A reconnect storm: N connect and subscribe, all drop at once, all reconnect at once.
    Churn {
        /// Server address (loopback only).
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: SocketAddr,
        /// Connections per wave.
        #[arg(long, default_value_t = 1000)]
        n: usize,
        /// Connections being set up at once.
        #[arg(long, default_value_t = 500)]
        concurrency: usize,
        /// Label copied into the result.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Broadcast fan-out to N subscribers of `BenchmarkChannel` (`--bench-channel`).
    Broadcast {
        /// Server address (loopback only).
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: SocketAddr,
        /// Connections, each subscribed once.
        #[arg(long, default_value_t = 1000)]
        n: usize,
        /// Broadcast rounds.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Bytes of payload per broadcast.
        #[arg(long, default_value_t = 64)]
        payload_size: usize,
        /// Connections being set up at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Spread client sockets over 127.0.0.1..=127.0.0.K (0: the default source).
        #[arg(long, default_value_t = 0)]
        source_ips: u8,
        /// Longest wait for one round, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        round_timeout_ms: u64,
        /// Pause between rounds, in milliseconds.
        #[arg(long, default_value_t = 500)]
        round_interval_ms: u64,
        /// Server process to read RSS from.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Label copied into the result.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Many processes, many nodes: connect, hold (idle) and broadcast rounds across every
    /// target, with worker processes holding the connections (past the per-process fd cap).
    Fleet {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Broadcast rounds after the idle phase.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds to hold the connections idle before the rounds.
        #[arg(long, default_value_t = 5)]
        hold_secs: u64,
    },
    /// Connect and subscribe N connections (across targets and worker processes): rate and
    /// failures.
    Connect {
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// AnyCable's avalanche: N clients connect and subscribe all at once (no concurrency
    /// bound) against the targets; all must connect; connect-time percentiles.
    Avalanche {
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Hold N subscribed connections for T seconds: server RSS/PSS per connection, pings
    /// received, drops.
    Idle {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Seconds to hold.
        #[arg(long, default_value_t = 30)]
        hold_secs: u64,
    },
    /// (Internal) one worker process of `fleet`, `connect` and `idle`.
    #[command(hide = true)]
    Worker {
        #[arg(long, value_delimiter = ',', required = true)]
        addrs: Vec<SocketAddr>,
        #[arg(long)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        first: usize,
        #[arg(long, default_value_t = 500)]
        concurrency: usize,
        #[arg(long, default_value_t = 30_000)]
        round_timeout_ms: u64,
        #[arg(long, default_value_t = 0)]
        source_ips: u8,
    },
    /// Connect + subscribe rate and command round trips with the channel behind AnyCable RPC
    /// (`ferrocable serve` with `ANYCABLE_RPC_HOST` pointing at the fake app).
    Rpc {
        /// Server address (loopback only).
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: SocketAddr,
        /// Connections, each subscribed once.
        #[arg(long, default_value_t = 1000)]
        n: usize,
        /// Connections being set up at once.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Measured seconds of commands (every client in a closed loop).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Server process to read CPU time from.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Label copied into the result.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Fresh visitors (new session, reflexes, leave) in a loop beside held idle connections,
    /// for minutes: does the server's RSS stay flat?
    Soak {
        /// Server address (loopback only).
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: SocketAddr,
        /// Seconds of visitors.
        #[arg(long, default_value_t = 600)]
        duration: u64,
        /// Subscribed connections held idle meanwhile.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Visitors at once (each a loop of fresh sessions).
        #[arg(long, default_value_t = 20)]
        visitors: usize,
        /// Reflexes per visit.
        #[arg(long, default_value_t = 10)]
        reflexes: usize,
        /// Pause after each reflex reply, in milliseconds.
        #[arg(long, default_value_t = 20)]
        think_ms: u64,
        /// Reflex target.
        #[arg(long, default_value = "Counter#increment")]
        target: String,
        /// Seconds between RSS samples.
        #[arg(long, default_value_t = 5)]
        sample_secs: u64,
        /// The sample the end is compared with, in seconds from the start of the visitors.
        #[arg(long, default_value_t = 60)]
        baseline_secs: u64,
        /// Largest accepted end RSS / baseline RSS.
        #[arg(long, default_value_t = 1.1)]
        max_growth: f64,
        /// Server process whose RSS is sampled.
        #[arg(long)]
        server_pid: u32,
        /// Shell command run half-way through (e.g. restarting the session Redis).
        #[arg(long)]
        midway: Option<String>,
        /// Label copied into the result.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Presence across two nodes: a join on node A, timed until node B's client sees it.
    Presence {
        /// Node A (where the client joins), loopback only.
        #[arg(long)]
        a: SocketAddr,
        /// Node B (where the watcher is), loopback only.
        #[arg(long)]
        b: SocketAddr,
        /// Join + leave rounds.
        #[arg(long, default_value_t = 200)]
        rounds: usize,
        /// Label copied into the result.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// N server-sent-events readers held on one node: server RSS per reader.
    Sse {
        /// Server address (loopback only).
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: SocketAddr,
        /// Readers.
        #[arg(long, default_value_t = 1000)]
        n: usize,
        /// Server process to read RSS from.
        #[arg(long)]
        server_pid: u32,
        /// Label copied into the result.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Reflex round trips against the demo app.
    Reflex {
        /// Server address (loopback only).
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: SocketAddr,
        /// Concurrent clients (one reflex in flight each).
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Measured seconds (after warm-up).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Reflex target.
        #[arg(long, default_value = "Counter#reset")]
        target: String,
        /// Selectors sent with the reflex (page morphs cut these out of the re-render).
        #[arg(long, default_value = "#counter")]
        selector: String,
        /// Pause after each reply, per client (0 = closed loop: a client sends as soon as its
        /// last reflex is answered).
        #[arg(long, default_value_t = 0)]
        think_ms: u64,
        /// Label copied into the result.
        #[arg(long, default_value = "")]
        label: String,
    },
}

/// Options shared by the multi-process scenarios.
#[derive(clap::Args)]
struct FleetArgs {
    /// Server addresses, comma-separated (loopback only); connections go round-robin.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:3000")]
    addrs: Vec<std::net::SocketAddr>,
    /// Connections in all.
    #[arg(long, default_value_t = 10_000)]
    n: usize,
    /// Connections per worker process (each under the 20,000 fd cap).
    #[arg(long, default_value_t = 18_000)]
    per_worker: usize,
    /// Connections being set up at once, per worker.
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
    /// Bytes of payload per broadcast.
    #[arg(long, default_value_t = 64)]
    payload_size: usize,
    /// Longest wait for one round, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    round_timeout_ms: u64,
    /// Server processes whose RSS/PSS is summed (comma-separated pids).
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Spread client sockets over 127.0.0.1..=127.0.0.K (0: the kernel picks the source).
    #[arg(long, default_value_t = 0)]
    source_ips: u8,
    /// Label copied into the result.
    #[arg(long, default_value = "")]
    label: String,
}

impl FleetArgs {
    fn options(self, rounds: usize, hold_secs: u64) -> fleet::FleetOptions {
        fleet::FleetOptions {
            addrs: self.addrs,
            n: self.n,
            per_worker: self.per_worker,
            concurrency: self.concurrency,
            hold: Duration::from_secs(hold_secs),
            rounds,
            payload_size: self.payload_size,
            round_timeout: Duration::from_millis(self.round_timeout_ms),
            server_pids: self.server_pids,
            source_ips: self.source_ips,
            label: self.label,
        }
    }
}

const SR: &str = r#"{"channel":"StimulusReflex::Channel"}"#;

async fn session_cookie(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET /session HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    out.lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .context("no session cookie")
}

/// The `message` command StimulusReflex 3.5.5 sends for a click on `target`, with reflex id
/// `id` from tab `tab`.
fn reflex_frame(addr: SocketAddr, target: &str, selector: &str, id: &str, tab: usize) -> String {
    let data = json!({"id": id, "target": target, "args": [], "url": format!("http://{addr}/"), "selectors": [selector],
        "formData": "", "version": "3.5.5", "attrs": {"id": "reset", "tag_name": "BUTTON"},
        "dataset": {"dataset": {}, "datasetAll": {}}, "reflexController": "stimulus-reflex",
        "permanentAttributeName": "data-reflex-permanent", "tabId": format!("tab-{tab}")});
    json!({"command": "message", "identifier": SR, "data": data.to_string()}).to_string()
}

struct Outcome {
    latencies: Vec<Duration>,
    errors: u64,
}

#[allow(clippy::too_many_arguments)]
async fn client(
    addr: SocketAddr,
    target: String,
    selector: String,
    start: Instant,
    warmup: Duration,
    end: Instant,
    n: usize,
    think: Duration,
) -> anyhow::Result<Outcome> {
    let cookie = session_cookie(addr).await?;
    let mut ws = client::open(TcpStream::connect(addr).await?, addr, Some(&cookie)).await?;
    client::subscribe(&mut ws, SR).await?;
    let mut out = Outcome {
        latencies: Vec::new(),
        errors: 0,
    };
    let mut seq = 0u64;
    while Instant::now() < end {
        seq += 1;
        let id = format!("bench-{n}-{seq}");
        let frame = reflex_frame(addr, &target, &selector, &id, n);
        let sent = Instant::now();
        ws.send(Message::text(frame)).await?;
        let deadline = tokio::time::Instant::from_std(sent) + Duration::from_secs(10);
        let reply =
            client::next_text(&mut ws, deadline, "the reflex's reply", |t| t.contains(&id)).await?;
        if reply.as_text().is_some_and(|t| t.contains("morph-error")) {
            out.errors += 1;
        } else if sent.duration_since(start) >= warmup {
            out.latencies.push(sent.elapsed());
        }
        if !think.is_zero() {
            tokio::time::sleep(think).await;
        }
    }
    let _ = ws.close().await;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn reflex(
    addr: SocketAddr,
    clients: usize,
    duration: u64,
    target: String,
    selector: String,
    think_ms: u64,
    label: String,
) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("only loopback targets may be load-tested");
    }
    let warmup = Duration::from_secs(2);
    let start = Instant::now() + Duration::from_millis(200 + clients as u64 * 2);
    let end = start + warmup + Duration::from_secs(duration);
    let mut tasks = Vec::with_capacity(clients);
    for n in 0..clients {
        let (t, s) = (target.clone(), selector.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            client(
                addr,
                t,
                s,
                start,
                warmup,
                end,
                n,
                Duration::from_millis(think_ms),
            )
            .await
        }));
    }
    let mut all = Vec::new();
    let (mut errors, mut failed_clients) = (0u64, 0u64);
    let mut first_failure = None;
    for t in tasks {
        match t.await? {
            Ok(o) => {
                all.extend(o.latencies);
                errors += o.errors;
            }
            Err(e) => {
                failed_clients += 1;
                first_failure.get_or_insert_with(|| e.to_string());
            }
        }
    }
    all.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .map(ms)
    };
    let result = json!({
        "tool": "ferrocable-bench", "scenario": "reflex", "label": label, "target": target, "clients": clients, "think_ms": think_ms,
        "measured_s": duration, "reflexes": all.len(), "per_s": (all.len() as f64 / duration as f64).round(),
        "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": all.last().copied().map(ms)},
        "morph_errors": errors, "failed_clients": failed_clients, "first_failure": first_failure,
    });
    println!("{result}");
    if failed_clients > 0 || errors > 0 {
        bail!("{failed_clients} clients failed, {errors} morph errors");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.scenario {
        Scenario::Churn {
            addr,
            n,
            concurrency,
            label,
        } => rt.block_on(churn::run(addr, n, concurrency, label)),
        Scenario::Broadcast {
            addr,
            n,
            rounds,
            payload_size,
            concurrency,
            source_ips,
            round_timeout_ms,
            round_interval_ms,
            server_pid,
            label,
        } => rt.block_on(broadcast::run(broadcast::Options {
            addr,
            n,
            rounds,
            payload_size,
            concurrency,
            source_ips,
            round_timeout: Duration::from_millis(round_timeout_ms),
            round_interval: Duration::from_millis(round_interval_ms),
            server_pid,
            label,
        })),
        Scenario::Fleet {
            fleet,
            rounds,
            hold_secs,
        } => rt.block_on(fleet::run(fleet.options(rounds, hold_secs))),
        Scenario::Connect { fleet } => rt.block_on(fleet::run(fleet.options(0, 0))),
        Scenario::Avalanche { mut fleet } => {
            fleet.concurrency = fleet.per_worker.max(1);
            rt.block_on(fleet::run(fleet.options(0, 0)))
        }
        Scenario::Idle { fleet, hold_secs } => rt.block_on(fleet::run(fleet.options(0, hold_secs))),
        Scenario::Worker {
            addrs,
            n,
            first,
            concurrency,
            round_timeout_ms,
            source_ips,
        } => rt.block_on(fleet::worker(fleet::WorkerOptions {
            addrs,
            n,
            first,
            source_ips,
            concurrency,
            round_timeout: Duration::from_millis(round_timeout_ms),
        })),
        Scenario::Rpc {
            addr,
            n,
            concurrency,
            duration,
            server_pid,
            label,
        } => rt.block_on(rpc::run(rpc::Options {
            addr,
            n,
            concurrency,
            duration: Duration::from_secs(duration),
            server_pid,
            label,
        })),
        Scenario::Presence {
            a,
            b,
            rounds,
            label,
        } => rt.block_on(realtime::presence(a, b, rounds, label)),
        Scenario::Sse {
            addr,
            n,
            server_pid,
            label,
        } => rt.block_on(realtime::sse(addr, n, server_pid, label)),
        Scenario::Soak {
            addr,
            duration,
            idle,
            visitors,
            reflexes,
            think_ms,
            target,
            sample_secs,
            baseline_secs,
            max_growth,
            server_pid,
            midway,
            label,
        } => rt.block_on(soak::run(soak::Options {
            addr,
            duration: Duration::from_secs(duration),
            idle,
            visitors,
            reflexes,
            think: Duration::from_millis(think_ms),
            sample: Duration::from_secs(sample_secs.max(1)),
            baseline: Duration::from_secs(baseline_secs),
            max_growth,
            target,
            server_pid,
            midway,
            label,
        })),
        Scenario::Reflex {
            addr,
            clients,
            duration,
            target,
            selector,
            think_ms,
            label,
        } => rt.block_on(reflex(
            addr, clients, duration, target, selector, think_ms, label,
        )),
    }
}
