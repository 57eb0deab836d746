//! `ferrocable`: the command-line entry point.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrocable_node::Node;
use ferrocable_server::ServeConfig;
use serde::Serialize;
use tracing::info;

// The allocator decides how much of each connection's buffers stays resident: measured, not
// assumed (docs/benchmarks.md). jemalloc wins the per-connection figure; see Cargo.toml.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "ferrocable",
    version,
    about = "An ActionCable-protocol server for reactive apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Apply the session store's migrations (SQL stores) and exit; `serve` also applies them.
    Migrate(ServeArgs),
}

/// Flags of `serve`. Each one overrides the config file and the `FERROCABLE_*` environment.
#[derive(clap::Args, Serialize)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "FERROCABLE_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on [env: FERROCABLE_BIND] [default: 127.0.0.1:3000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    bind: Option<String>,
    /// Path of the cable endpoint [default: /cable].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    mount_path: Option<String>,
    /// An allowed Origin besides the same origin (repeatable): exact, `*` wildcard or `/regex/`.
    #[arg(long = "allowed-origin")]
    #[serde(rename = "allowed_origins", skip_serializing_if = "Vec::is_empty")]
    allowed_origins: Vec<String>,
    /// Accept any Origin: turns CSRF protection for the cable off.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_forgery_protection: bool,
    /// PEM certificate chain: serve TLS (wss://) on the same listener.
    #[arg(long, requires = "tls_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// Public cable URL that pages put in <meta name="action-cable-url">.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cable_url: Option<String>,
    /// Register BenchmarkChannel (for the load tools).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    bench_channel: bool,
    /// Largest inbound command in bytes [default: 65536].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_command_bytes: Option<usize>,
    /// Longest graceful shutdown in milliseconds [default: 10000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_timeout_ms: Option<u64>,
    /// Session store: memory, sqlite[:PATH], postgres://…, redis://…, memcached://… [env: SESSION_STORE_URL] [default: sqlite].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    session_store: Option<String>,
    /// Directory for embedded state (SQLite sessions, generated secret) [default: data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Node-to-node bus: memory (single node) or redis://… [env: FERROCABLE_PUBSUB] [default: memory].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pubsub: Option<String>,
    /// Stream history and session cache: memory (single node), redis://… (Redis Streams) or nats://… (JetStream), shared [env: FERROCABLE_BROKER] [default: memory].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    broker: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config =
        ServeConfig::load(args.config.as_deref(), &args).context("invalid configuration")?;
    init_logging(&config.log_format);
    let server = ferrocable_server::start(&config, Node::builder()).await?;
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    info!(addr = %server.local_addr(), "ferrocable listening on {scheme}://{}{}", server.local_addr(), config.mount_path);
    let signal = shutdown_signal().await;
    info!(
        signal,
        "shutting down: disconnecting clients with server_restart"
    );
    let report = server.shutdown().await;
    info!(remaining = report.remaining, "shutdown complete");
    Ok(())
}

async fn migrate(args: ServeArgs) -> anyhow::Result<()> {
    let config =
        ServeConfig::load(args.config.as_deref(), &args).context("invalid configuration")?;
    init_logging(&config.log_format);
    let sessions = ferrocable_server::open_sessions(&config).await?;
    info!(store = sessions.store_kind(), "session store ready");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Migrate(args) => runtime.block_on(migrate(args)),
    }
}
