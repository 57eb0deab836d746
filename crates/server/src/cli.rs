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
    /// An allowed Origin besides the same origin (repeatable, or comma-separated as
    /// anycable-go's `--allowed_origins`): exact, `*` wildcard or `/regex/`.
    #[arg(
        long = "allowed-origin",
        alias = "allowed_origins",
        value_delimiter = ','
    )]
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
    /// The Rails app's RPC endpoint, e.g. http://localhost:3000/_anycable [env: ANYCABLE_RPC_HOST].
    #[arg(long = "rpc_host", alias = "rpc-host")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_host: Option<String>,
    /// AnyCable's application secret: derives the RPC secret and the broadcast key [env: ANYCABLE_SECRET].
    #[arg(long = "secret")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The HTTP RPC Bearer secret [env: ANYCABLE_HTTP_RPC_SECRET].
    #[arg(long = "http_rpc_secret", alias = "http-rpc-secret")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_rpc_secret: Option<String>,
    /// Headers forwarded to the app, comma-separated [env: ANYCABLE_HEADERS] [default: cookie].
    #[arg(long = "headers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<String>,
    /// Only these cookies are forwarded, comma-separated [env: ANYCABLE_PROXY_COOKIES].
    #[arg(long = "proxy_cookies", alias = "proxy-cookies")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_cookies: Option<String>,
    /// RPC calls at once [env: ANYCABLE_RPC_CONCURRENCY] [default: 28].
    #[arg(long = "rpc_concurrency", alias = "rpc-concurrency")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_concurrency: Option<usize>,
    /// Deadline of one RPC attempt in ms [env: ANYCABLE_RPC_REQUEST_TIMEOUT] [default: 3000].
    #[arg(long = "rpc_request_timeout", alias = "rpc-request-timeout")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_request_timeout: Option<u64>,
    /// Broadcast adapters besides HTTP: http, redis [env: ANYCABLE_BROADCAST_ADAPTER].
    #[arg(long = "broadcast_adapter", alias = "broadcast-adapter")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast_adapter: Option<String>,
    /// Redis of the redis broadcast adapter [env: ANYCABLE_REDIS_URL].
    #[arg(long = "redis_url", alias = "redis-url")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// NATS of the nats broadcast adapter [env: ANYCABLE_NATS_SERVERS].
    #[arg(long = "nats_servers", alias = "nats-servers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_servers: Option<String>,
    /// PEM root certificates for an https:// RPC host [env: ANYCABLE_RPC_TLS_ROOT_CA].
    #[arg(long = "rpc_tls_root_ca", alias = "rpc-tls-root-ca")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_tls_root_ca: Option<PathBuf>,
    /// Bearer key of POST /_broadcast [env: ANYCABLE_BROADCAST_KEY].
    #[arg(long = "broadcast_key", alias = "broadcast-key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broadcast_key: Option<String>,
    /// Host to listen on, with --port (anycable-go's pair; --bind says both) [env: ANYCABLE_HOST].
    #[arg(long = "host")]
    #[serde(skip)]
    pub host: Option<String>,
    /// Port to listen on [env: ANYCABLE_PORT].
    #[arg(long = "port")]
    #[serde(skip)]
    pub port: Option<u16>,
    /// Path of the cable endpoint (anycable-go's name for --mount-path) [env: ANYCABLE_PATH].
    #[arg(long = "path")]
    #[serde(skip)]
    pub path: Option<String>,
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
        let mut config = ServeConfig::load(self.config.as_deref(), self)?;
        if self.host.is_some() || self.port.is_some() {
            let host = self
                .host
                .clone()
                .unwrap_or_else(|| config.bind.ip().to_string());
            let host = if host == "localhost" {
                "127.0.0.1".into()
            } else {
                host
            };
            let port = self.port.unwrap_or(config.bind.port());
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            config.bind = addr.parse().map_err(|e| {
                Box::new(figment::Error::from(format!("--host/--port {addr}: {e}")))
            })?;
        }
        if let Some(path) = &self.path {
            config.mount_path = path.clone();
        }
        Ok(config)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn anycable_go_flags_parse_as_anycable_go_spells_them() {
        use clap::Parser;
        figment::Jail::expect_with(|_| {
            let cli = Cli::try_parse_from([
                "ferrocable",
                "--rpc_host",
                "http://app:3000/_anycable",
                "--allowed_origins",
                "https://a.example,https://b.example",
                "--host",
                "0.0.0.0",
                "--port",
                "8080",
                "--path",
                "/ws",
                "--headers",
                "cookie,x-api-token",
                "--broadcast_adapter",
                "http,nats",
                "--nats_servers",
                "nats://bus:4222",
            ])
            .expect("anycable-go's flags parse");
            let config = cli.serve.load().expect("they make a configuration");
            assert_eq!(config.bind.to_string(), "0.0.0.0:8080");
            assert_eq!(config.mount_path, "/ws");
            assert_eq!(
                config.allowed_origins,
                ["https://a.example", "https://b.example"]
            );
            assert_eq!(config.headers, ["cookie", "x-api-token"]);
            assert_eq!(config.broadcast_adapter, ["http", "nats"]);
            assert_eq!(config.nats_servers.as_deref(), Some("nats://bus:4222"));
            assert_eq!(
                config.rpc_host.as_deref(),
                Some("http://app:3000/_anycable")
            );
            Ok(())
        });
    }
}
