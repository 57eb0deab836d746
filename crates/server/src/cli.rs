//! The command line every ferrocable server shares: the flags of `ferrocable serve` (each one
//! overrides the config file and the `FERROCABLE_*` environment), logging and the signals that
//! start a graceful shutdown. The binary and apps built on the `ferrocable` crate use the
//! same ones, so a deployment configures both alike.

use std::path::PathBuf;

use serde::Serialize;

use crate::ServeConfig;

/// Flags of `serve`. Each one overrides the config file and the `FERROCABLE_*` environment.
#[derive(clap::Args, Serialize, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "FERROCABLE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [env: FERROCABLE_BIND] [default: 127.0.0.1:3000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// Path of the cable endpoint [default: /cable].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
    /// An allowed Origin besides the same origin (repeatable): exact, `*` wildcard or `/regex/`.
    #[arg(long = "allowed-origin")]
    #[serde(rename = "allowed_origins", skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    /// Accept any Origin: turns CSRF protection for the cable off.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disable_forgery_protection: bool,
    /// PEM certificate chain: serve TLS (wss://) on the same listener.
    #[arg(long, requires = "tls_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Public cable URL that pages put in <meta name="action-cable-url">.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cable_url: Option<String>,
    /// Register BenchmarkChannel (for the load tools).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub bench_channel: bool,
    /// Largest inbound command in bytes [default: 65536].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_command_bytes: Option<usize>,
    /// Longest graceful shutdown in milliseconds [default: 10000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Session store: memory, sqlite, sqlite:PATH, postgres://…, redis://…, memcached://… [env: SESSION_STORE_URL] [default: sqlite].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_store: Option<String>,
    /// Directory for embedded state (SQLite sessions, generated secret) [default: data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Node-to-node bus: memory (single node) or redis://… [env: FERROCABLE_PUBSUB] [default: memory].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubsub: Option<String>,
    /// Stream history and session cache: memory (single node), redis://… (Redis Streams) or nats://… (JetStream), shared [env: FERROCABLE_BROKER] [default: memory].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// Refuse to start when a deployment check finds something (otherwise they are warnings).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Log format: text or json [default: text].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

/// Logs to stderr: `RUST_LOG` filters (default `info`), `json` gives structured lines. A
/// second call (an app that set up its own subscriber) changes nothing.
pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Waits for SIGTERM or SIGINT and names it.
pub async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

impl ServeArgs {
    /// The configuration these flags select: defaults, then the config file (`--config` or
    /// `FERROCABLE_CONFIG`), the environment, then the flags.
    pub fn load(&self) -> Result<ServeConfig, Box<figment::Error>> {
        ServeConfig::load(self.config.as_deref(), self)
    }
}
