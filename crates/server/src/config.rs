//! Server configuration: defaults, then a TOML file, then `FERROCABLE_*` environment
//! variables, then command-line flags (each layer overrides the one before).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrocable_node::broker::HistoryLimits;
use ferrocable_node::{NodeConfig, OutboxLimits};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything `ferrocable serve` can be told. Field names are the TOML keys and, upper-cased
/// behind `FERROCABLE_`, the environment variables (`FERROCABLE_BIND`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Path of the cable endpoint.
    pub mount_path: String,
    /// Origins allowed besides the same origin: exact, `*` wildcard, or `/regex/` (a list,
    /// or one comma-separated string as `ANYCABLE_ALLOWED_ORIGINS` gives it).
    #[serde(deserialize_with = "list")]
    pub allowed_origins: Vec<String>,
    /// Accept an Origin equal to the request's own scheme and Host (Rails' default).
    pub allow_same_origin: bool,
    /// Accept any Origin (and none). Off by default: it disables CSRF protection.
    pub disable_forgery_protection: bool,
    /// PEM certificate chain; with `tls_key`, the listener speaks TLS (`wss://`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Public URL of the cable that pages put in `<meta name="action-cable-url">`, for a
    /// cable on another host; default: the mount path on the page's own host.
    pub cable_url: Option<String>,
    /// Register `BenchmarkChannel` (for the load tools).
    pub bench_channel: bool,
    /// Largest inbound command in bytes.
    pub max_command_bytes: usize,
    /// Heartbeat period in milliseconds.
    pub ping_interval_ms: u64,
    /// Longest write to one client, in milliseconds, before it counts as too slow.
    pub write_timeout_ms: u64,
    /// Most bytes waiting for one client before it is disconnected as too slow.
    pub outbox_max_bytes: usize,
    /// Most frames waiting for one client before it is disconnected as too slow.
    pub outbox_max_frames: usize,
    /// Longest a graceful shutdown waits for connections, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Commands one connection may send per second on average (0: unlimited); over it a
    /// command gets a `rate_limited` error, and a client a whole burst over is disconnected.
    pub max_commands_per_sec: u32,
    /// Commands one connection may send at once (0: as many as `max_commands_per_sec`).
    pub command_burst: u32,
    /// Log format: `text` or `json`.
    pub log_format: String,
    /// Scheme of absolute URLs rendered outside a request (broadcasts), like Rails'
    /// `default_url_options`.
    pub default_url_scheme: String,
    /// Host of absolute URLs rendered outside a request.
    pub default_url_host: String,
    /// Port of absolute URLs rendered outside a request (default: the bind port).
    pub default_url_port: Option<u16>,
    /// Bearer key for `POST /_broadcast` (default: derived from the secret key base as AnyCable
    /// does: hex HMAC-SHA256 of "broadcast-cable").
    pub broadcast_key: Option<String>,
    /// Redis URL whose `__anycable__` channel carries publications to deliver (off when unset).
    pub broadcast_redis_url: Option<String>,
    /// The Redis ingress channel.
    pub broadcast_redis_channel: String,
    /// Node ↔ node bus: `memory` (this process only: a single node), `redis://…` or `nats://…`.
    pub pubsub: String,
    /// Channel prefix on the bus.
    pub pubsub_prefix: String,
    /// Stream history and session cache (extended protocol): `memory` (this process only),
    /// `redis://…` (Redis Streams) or `nats://…` (JetStream), shared by every node using it.
    pub broker: String,
    /// Key prefix of the broker's data.
    pub broker_prefix: String,
    /// Messages kept per stream for replay.
    pub history_limit: usize,
    /// Seconds a message stays replayable.
    pub history_ttl_secs: u64,
    /// Seconds a dropped extended-protocol session can be restored.
    pub sessions_ttl_secs: u64,
    /// Disconnect extended-protocol clients silent (no frame, not even `pong`) for this many
    /// seconds with `no_pong` (0: off, the default).
    pub pong_timeout_secs: u64,
    /// Where the browser packages are (`node_modules` of the app's `package.json`); default:
    /// the app's own choice, else `node_modules` in the working directory.
    pub node_modules_dir: Option<PathBuf>,
    /// The app's own settings: the `[app]` table of the config file and `FERROCABLE_APP_*`
    /// variables (`FERROCABLE_APP_GREETING` is `app.greeting`); read them with
    /// [`ServeConfig::app_settings`].
    pub app: serde_json::Map<String, serde_json::Value>,
    /// Where embedded state lives (the SQLite session file, a generated secret).
    pub data_dir: PathBuf,
    /// Session store: `memory`, `sqlite[:PATH]`, `postgres://…`, `redis://…`, `memcached://…`
    /// (bare `redis`, `postgres` and `memcached` take `REDIS_URL`, `DATABASE_URL` and
    /// `MEMCACHED_URL`). Env: `SESSION_STORE_URL` or `FERROCABLE_SESSION_STORE`.
    pub session_store: String,
    /// Key prefix in Redis and Memcached.
    pub session_key_prefix: String,
    /// Session cookie name.
    pub session_cookie_name: String,
    /// Sliding session lifetime in seconds.
    pub session_expire_after_secs: u64,
    /// `Secure` flag on the session cookie.
    pub session_secure: bool,
    /// `HttpOnly` flag on the session cookie (on: page scripts cannot read the id).
    pub session_http_only: bool,
    /// `SameSite` attribute of the session cookie.
    pub session_same_site: String,
    /// Largest encoded session in bytes.
    pub session_max_bytes: usize,
    /// Sessions larger than this many bytes of JSON are compressed.
    pub session_compress_above: usize,
    /// Refuse to start when a deployment check finds something (they are warnings otherwise).
    pub strict: bool,
    /// The Rails app's RPC endpoint (`ANYCABLE_RPC_HOST`): `http://app:3000/_anycable` for
    /// HTTP RPC. With it, the app identifies every connection and serves every channel that
    /// has no Rust channel, and `ferrocable serve` serves no demo pages.
    pub rpc_host: Option<String>,
    /// AnyCable's application secret (`ANYCABLE_SECRET`): the RPC secret and the broadcast
    /// key derive from it as anycable-go derives them, unless set on their own.
    pub secret: Option<String>,
    /// The Bearer secret of HTTP RPC (`ANYCABLE_HTTP_RPC_SECRET`; default: derived from
    /// `secret` with "rpc-cable"; neither: no header).
    pub http_rpc_secret: Option<String>,
    /// Request headers forwarded to the app with every call (`ANYCABLE_HEADERS`).
    #[serde(deserialize_with = "list")]
    pub headers: Vec<String>,
    /// Only these cookies are forwarded (`ANYCABLE_PROXY_COOKIES`; empty: all).
    #[serde(deserialize_with = "list")]
    pub proxy_cookies: Vec<String>,
    /// Calls to the app at once, shared by every kind (`ANYCABLE_RPC_CONCURRENCY`).
    pub rpc_concurrency: usize,
    /// PEM root certificates for an `https://` RPC host (`ANYCABLE_RPC_TLS_ROOT_CA`; default:
    /// the webpki roots).
    pub rpc_tls_root_ca: Option<PathBuf>,
    /// Deadline of one RPC attempt in milliseconds (`ANYCABLE_RPC_REQUEST_TIMEOUT`).
    pub rpc_request_timeout: u64,
    /// Deadline of a whole RPC call (slot, attempts, back-off) in milliseconds.
    pub rpc_call_timeout: u64,
    /// Where Rails broadcasts arrive besides `POST /_broadcast` (`ANYCABLE_BROADCAST_ADAPTER`,
    /// comma-separated): `http` (always on), `redis` (the `__anycable__` channel at
    /// `redis_url`), `redisx` (the `__anycable__` Redis Stream, consumer group `redis_group`)
    /// and `nats` (the `__anycable__` subject at `nats_servers`).
    #[serde(deserialize_with = "list")]
    pub broadcast_adapter: Vec<String>,
    /// Redis of the `redis` broadcast adapter (`ANYCABLE_REDIS_URL`).
    pub redis_url: Option<String>,
    /// The consumer group of the `redisx` broadcast adapter (`ANYCABLE_REDIS_GROUP`).
    pub redis_group: String,
    /// NATS of the `nats` broadcast adapter (`ANYCABLE_NATS_SERVERS`; default
    /// `nats://127.0.0.1:4222`).
    pub nats_servers: Option<String>,
    /// The subject of the `nats` broadcast adapter (`ANYCABLE_NATS_CHANNEL`).
    pub nats_channel: String,
    /// Secret used to sign session cookies (env `SECRET_KEY_BASE`). When absent, one is
    /// generated once and kept in `data_dir`.
    pub secret_key_base: Option<String>,
    /// The key of `$pubsub` signed stream names (`ANYCABLE_STREAMS_SECRET`; default:
    /// `secret`, else one derived from the secret key base).
    pub streams_secret: Option<String>,
    /// Accept `$pubsub` subscriptions by unsigned `stream_name` (`ANYCABLE_PUBLIC_STREAMS`).
    pub public_streams: bool,
    /// Let `$pubsub` signed-stream subscribers whisper (`ANYCABLE_STREAMS_WHISPER`; public
    /// streams always may).
    pub streams_whisper: bool,
    /// Serve `Turbo::StreamsChannel` here, not through the app behind RPC
    /// (`ANYCABLE_TURBO_STREAMS`). Without an app behind it is always served.
    pub turbo_streams: bool,
    /// The key of Turbo signed stream names, the Rails app's
    /// `config.turbo.signed_stream_verifier_key` (`ANYCABLE_TURBO_STREAMS_SECRET`; default:
    /// the streams key).
    pub turbo_streams_secret: Option<String>,
    /// The key of JWT identification (`ANYCABLE_JWT_SECRET`; default: `secret`). With
    /// neither, tokens are not looked at.
    pub jwt_secret: Option<String>,
    /// The query parameter (and `x-<param>` header) carrying the token
    /// (`ANYCABLE_JWT_PARAM`).
    pub jwt_param: String,
    /// The claim holding the identifiers (anycable-rb writes `ext`).
    pub jwt_claim: String,
    /// Refuse connections without a token (`ANYCABLE_ENFORCE_JWT`).
    pub enforce_jwt: bool,
    /// `$pubsub` signed streams have presence (`ANYCABLE_STREAMS_PRESENCE`; public streams
    /// always do).
    pub streams_presence: bool,
    /// Seconds a dropped connection's presence outlives it (`ANYCABLE_PRESENCE_TTL`).
    pub presence_ttl: u64,
    /// Most presence records one stream holds.
    pub max_presence_per_stream: usize,
    /// Serve subscriptions as server-sent events (`ANYCABLE_SSE`).
    pub sse: bool,
    /// Where (`ANYCABLE_SSE_PATH`).
    pub sse_path: String,
}

impl Default for ServeConfig {
    fn default() -> Self {
        let node = NodeConfig::default();
        ServeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 3000)),
            mount_path: "/cable".into(),
            allowed_origins: Vec::new(),
            allow_same_origin: true,
            disable_forgery_protection: false,
            tls_cert: None,
            tls_key: None,
            cable_url: None,
            bench_channel: false,
            max_command_bytes: node.max_command_bytes,
            ping_interval_ms: node.ping_interval.as_millis() as u64,
            write_timeout_ms: node.write_timeout.as_millis() as u64,
            outbox_max_bytes: node.outbox.max_bytes,
            outbox_max_frames: node.outbox.max_frames,
            shutdown_timeout_ms: node.shutdown_timeout.as_millis() as u64,
            max_subscriptions_per_connection: node.max_subscriptions,
            max_commands_per_sec: node.command_rate.map_or(0, |r| r.per_sec as u32),
            command_burst: node.command_rate.map_or(0, |r| r.burst as u32),
            log_format: "text".into(),
            data_dir: PathBuf::from("data"),
            node_modules_dir: None,
            app: serde_json::Map::new(),
            default_url_scheme: "http".into(),
            broadcast_key: None,
            broadcast_redis_url: None,
            broadcast_redis_channel: "__anycable__".into(),
            pubsub: "memory".into(),
            pubsub_prefix: "ferrocable:stream:".into(),
            broker: "memory".into(),
            broker_prefix: "ferrocable:broker:".into(),
            history_limit: 100,
            history_ttl_secs: 300,
            sessions_ttl_secs: 300,
            pong_timeout_secs: 0,
            default_url_host: "localhost".into(),
            default_url_port: None,
            session_store: "sqlite".into(),
            session_key_prefix: "ferrocable:session:".into(),
            session_cookie_name: "_session".into(),
            session_expire_after_secs: 365 * 24 * 3600,
            session_secure: false,
            session_http_only: true,
            session_same_site: "Lax".into(),
            session_max_bytes: 64 * 1024,
            session_compress_above: 1024,
            secret_key_base: None,
            strict: false,
            rpc_host: None,
            secret: None,
            http_rpc_secret: None,
            headers: vec!["cookie".into()],
            proxy_cookies: Vec::new(),
            rpc_concurrency: 28,
            rpc_tls_root_ca: None,
            rpc_request_timeout: 3000,
            rpc_call_timeout: 3000,
            broadcast_adapter: vec!["http".into()],
            redis_url: None,
            nats_servers: None,
            nats_channel: "__anycable__".into(),
            redis_group: "bx".into(),
            streams_secret: None,
            public_streams: false,
            streams_whisper: false,
            turbo_streams: false,
            turbo_streams_secret: None,
            jwt_secret: None,
            jwt_param: "jid".into(),
            jwt_claim: "ext".into(),
            enforce_jwt: false,
            streams_presence: true,
            presence_ttl: 15,
            max_presence_per_stream: 10_000,
            sse: false,
            sse_path: "/events".into(),
        }
    }
}

/// Keys read from the environment (so unrelated `FERROCABLE_*` variables are not errors).
const ENV_KEYS: &[&str] = &[
    "bind",
    "mount_path",
    "allowed_origins",
    "allow_same_origin",
    "disable_forgery_protection",
    "tls_cert",
    "tls_key",
    "cable_url",
    "bench_channel",
    "max_command_bytes",
    "ping_interval_ms",
    "write_timeout_ms",
    "outbox_max_bytes",
    "outbox_max_frames",
    "shutdown_timeout_ms",
    "max_subscriptions_per_connection",
    "max_commands_per_sec",
    "command_burst",
    "log_format",
    "data_dir",
    "node_modules_dir",
    "default_url_scheme",
    "pubsub",
    "pubsub_prefix",
    "broker",
    "broker_prefix",
    "history_limit",
    "history_ttl_secs",
    "sessions_ttl_secs",
    "pong_timeout_secs",
    "broadcast_key",
    "broadcast_redis_url",
    "broadcast_redis_channel",
    "default_url_host",
    "default_url_port",
    "session_store",
    "session_key_prefix",
    "session_cookie_name",
    "session_expire_after_secs",
    "session_secure",
    "session_http_only",
    "session_same_site",
    "session_max_bytes",
    "session_compress_above",
    "secret_key_base",
    "strict",
    "rpc_host",
    "secret",
    "http_rpc_secret",
    "headers",
    "proxy_cookies",
    "rpc_concurrency",
    "rpc_tls_root_ca",
    "rpc_request_timeout",
    "rpc_call_timeout",
    "broadcast_adapter",
    "redis_url",
    "nats_servers",
    "nats_channel",
    "redis_group",
    "streams_secret",
    "public_streams",
    "streams_whisper",
    "turbo_streams",
    "turbo_streams_secret",
    "jwt_secret",
    "jwt_param",
    "jwt_claim",
    "enforce_jwt",
    "streams_presence",
    "presence_ttl",
    "max_presence_per_stream",
    "sse",
    "sse_path",
];

/// anycable-go's environment names (`ANYCABLE_*`) and the keys they set. ferrocable's own
/// names (`FERROCABLE_*`) win where both are set.
const ANYCABLE_KEYS: &[(&str, &str)] = &[
    ("rpc_host", "rpc_host"),
    ("secret", "secret"),
    ("http_rpc_secret", "http_rpc_secret"),
    ("headers", "headers"),
    ("proxy_cookies", "proxy_cookies"),
    ("rpc_concurrency", "rpc_concurrency"),
    ("rpc_tls_root_ca", "rpc_tls_root_ca"),
    ("rpc_request_timeout", "rpc_request_timeout"),
    ("broadcast_key", "broadcast_key"),
    ("allowed_origins", "allowed_origins"),
    ("path", "mount_path"),
    ("broadcast_adapter", "broadcast_adapter"),
    ("redis_url", "redis_url"),
    ("redis_channel", "broadcast_redis_channel"),
    ("nats_servers", "nats_servers"),
    ("redis_group", "redis_group"),
    ("nats_channel", "nats_channel"),
    ("streams_secret", "streams_secret"),
    ("public_streams", "public_streams"),
    ("streams_whisper", "streams_whisper"),
    ("turbo_streams", "turbo_streams"),
    ("turbo_streams_secret", "turbo_streams_secret"),
    ("jwt_secret", "jwt_secret"),
    ("jwt_param", "jwt_param"),
    ("enforce_jwt", "enforce_jwt"),
    ("streams_presence", "streams_presence"),
    ("presence_ttl", "presence_ttl"),
    ("sse", "sse"),
    ("sse_path", "sse_path"),
];

/// A list given as a list, or as one comma-separated string (how environment variables and
/// anycable-go's flags give lists).
fn list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Raw::Many(v) => v,
    })
}

/// `ANYCABLE_HOST` and `ANYCABLE_PORT` (anycable-go's two settings for one address), as a
/// `bind` override when either is set.
fn anycable_bind(default: SocketAddr) -> Option<String> {
    let host = std::env::var("ANYCABLE_HOST")
        .ok()
        .filter(|h| !h.is_empty());
    let port = std::env::var("ANYCABLE_PORT")
        .ok()
        .filter(|p| !p.is_empty());
    if host.is_none() && port.is_none() {
        return None;
    }
    let host = host.unwrap_or_else(|| default.ip().to_string());
    let host = if host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        host
    };
    let port = port.unwrap_or_else(|| default.port().to_string());
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

impl ServeConfig {
    /// Layers defaults, the optional TOML `file`, the environment and `overrides` (the
    /// command line: any serializable map of the keys above).
    pub fn load(
        file: Option<&Path>,
        overrides: impl Serialize,
    ) -> Result<Self, Box<figment::Error>> {
        let mut fig = Figment::from(Serialized::defaults(ServeConfig::default()));
        if let Some(file) = file {
            fig = fig.merge(Toml::file_exact(file));
        }
        // The names Rails and AnyCable users already set.
        let conventional = Env::raw().filter_map(|key| {
            if key == "session_store_url" {
                Some("session_store".into())
            } else if key == "secret_key_base" {
                Some("secret_key_base".into())
            } else {
                None
            }
        });
        let app_keys = Env::prefixed("FERROCABLE_APP_").map(|key| format!("app.{key}").into());
        let anycable = Env::prefixed("ANYCABLE_").filter_map(|key| {
            ANYCABLE_KEYS
                .iter()
                .find(|(name, _)| key == *name)
                .map(|(_, ours)| (*ours).into())
        });
        if let Some(bind) = anycable_bind(ServeConfig::default().bind) {
            fig = fig.merge(Serialized::default("bind", bind));
        }
        fig.merge(conventional)
            .merge(anycable)
            .merge(Env::prefixed("FERROCABLE_").only(ENV_KEYS))
            .merge(app_keys)
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)
    }

    /// The session store URL with bare `redis` / `postgres` / `memcached` resolved from
    /// `REDIS_URL`, `DATABASE_URL` and `MEMCACHED_URL`.
    pub fn session_store_url(&self) -> String {
        let env = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
        match self.session_store.trim() {
            "redis" => env("REDIS_URL", "redis://127.0.0.1:6379/0"),
            "postgres" | "postgresql" => env(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            "memcached" => env("MEMCACHED_URL", "memcached://127.0.0.1:11211"),
            other => other.to_owned(),
        }
    }

    /// The app's own settings (the `[app]` table and `FERROCABLE_APP_*`) as `T`. Values from
    /// the environment arrive as text or numbers, as the environment gives them.
    pub fn app_settings<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(serde_json::Value::Object(self.app.clone()))
    }

    /// URL options for renders outside a request.
    pub fn url_options(&self) -> ferrocable_reflex::UrlOptions {
        ferrocable_reflex::UrlOptions {
            scheme: self.default_url_scheme.clone(),
            host: self.default_url_host.clone(),
            port: Some(self.default_url_port.unwrap_or(self.bind.port())),
        }
    }

    /// The key of `$pubsub` signed stream names: `streams_secret`, else AnyCable's `secret`
    /// (as anycable-go uses them, verbatim), else a key derived from the secret key base for
    /// this purpose only (a Rust app with no AnyCable settings).
    pub fn streams_key(&self, secret_key_base: &[u8]) -> Vec<u8> {
        let given = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        given(&self.streams_secret)
            .or_else(|| given(&self.secret))
            .unwrap_or_else(|| ferrocable_rpc::derive_secret(secret_key_base, "signed-streams"))
            .into_bytes()
    }

    /// The key of Turbo signed stream names: `turbo_streams_secret`, else the streams key.
    pub fn turbo_streams_key(&self, secret_key_base: &[u8]) -> Vec<u8> {
        match self
            .turbo_streams_secret
            .as_deref()
            .filter(|s| !s.is_empty())
        {
            Some(s) => s.as_bytes().to_vec(),
            None => self.streams_key(secret_key_base),
        }
    }

    /// JWT identification as configured: with `jwt_secret` (else `secret`), or `None` when
    /// neither is set (tokens are then not looked at).
    pub fn jwt(&self) -> Option<ferrocable_node::JwtIdentifier> {
        let secret = [&self.jwt_secret, &self.secret]
            .into_iter()
            .find_map(|s| s.as_deref().filter(|s| !s.is_empty()))?;
        Some(
            ferrocable_node::JwtIdentifier::new(secret)
                .param(self.jwt_param.clone())
                .claim(self.jwt_claim.clone())
                .enforce(self.enforce_jwt),
        )
    }

    /// The RPC settings this configuration implies (`None` without an `rpc_host`).
    pub fn rpc_config(&self) -> Option<ferrocable_rpc::RpcConfig> {
        let host = self.rpc_host.as_deref().filter(|h| !h.is_empty())?;
        let secret = self
            .http_rpc_secret
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                self.secret
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .map(|s| ferrocable_rpc::derive_secret(s, "rpc-cable"))
            });
        Some(ferrocable_rpc::RpcConfig {
            host: host.to_owned(),
            secret,
            headers: self
                .headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            proxy_cookies: self.proxy_cookies.clone(),
            concurrency: self.rpc_concurrency.max(1),
            request_timeout: Duration::from_millis(self.rpc_request_timeout.max(1)),
            call_timeout: Duration::from_millis(self.rpc_call_timeout.max(1)),
            tls_root_ca: self.rpc_tls_root_ca.clone(),
            ..ferrocable_rpc::RpcConfig::default()
        })
    }

    /// The history and session-cache limits this configuration implies.
    pub fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            max_messages: self.history_limit.max(1),
            ttl: Duration::from_secs(self.history_ttl_secs.max(1)),
            sessions_ttl: Duration::from_secs(self.sessions_ttl_secs.max(1)),
        }
    }

    /// The node settings this configuration implies.
    pub fn node_config(&self) -> NodeConfig {
        NodeConfig {
            max_command_bytes: self.max_command_bytes,
            outbox: OutboxLimits {
                max_bytes: self.outbox_max_bytes,
                max_frames: self.outbox_max_frames,
            },
            ping_interval: Duration::from_millis(self.ping_interval_ms.max(1)),
            write_timeout: Duration::from_millis(self.write_timeout_ms.max(1)),
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
            history: self.history_limits(),
            pong_timeout: (self.pong_timeout_secs > 0)
                .then(|| Duration::from_secs(self.pong_timeout_secs)),
            max_subscriptions: self.max_subscriptions_per_connection,
            command_rate: (self.max_commands_per_sec > 0).then_some(ferrocable_node::CommandRate {
                per_sec: self.max_commands_per_sec as f32,
                burst: if self.command_burst > 0 {
                    self.command_burst
                } else {
                    self.max_commands_per_sec
                } as f32,
            }),
            presence_ttl: Duration::from_secs(self.presence_ttl),
            max_presence_per_stream: self.max_presence_per_stream,
            ..NodeConfig::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_reference_servers() {
        let c = ServeConfig::default();
        assert_eq!(c.bind.to_string(), "127.0.0.1:3000");
        assert_eq!(c.mount_path, "/cable");
        assert!(c.allow_same_origin && !c.disable_forgery_protection);
        assert_eq!(c.max_command_bytes, 64 * 1024);
        assert_eq!(c.ping_interval_ms, 3000);
        assert_eq!(c.session_store, "sqlite");
        assert_eq!(c.session_cookie_name, "_session");
    }

    #[test]
    fn conventional_env_names_are_honoured() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SESSION_STORE_URL", "redis");
            jail.set_env("REDIS_URL", "redis://127.0.0.1:6380/2");
            jail.set_env("SECRET_KEY_BASE", "s3cret");
            let c = ServeConfig::load(None, serde_json::json!({})).unwrap();
            assert_eq!(c.session_store_url(), "redis://127.0.0.1:6380/2");
            assert_eq!(c.secret_key_base.as_deref(), Some("s3cret"));
            jail.set_env("FERROCABLE_SESSION_STORE", "memory");
            let c = ServeConfig::load(None, serde_json::json!({})).unwrap();
            assert_eq!(c.session_store_url(), "memory");
            Ok(())
        });
    }

    #[test]
    fn file_env_and_flags_layer_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "f.toml",
                "bind = \"127.0.0.1:4000\"\nmount_path = \"/ws\"\nbench_channel = true\n",
            )?;
            jail.set_env("FERROCABLE_MOUNT_PATH", "/from-env");
            jail.set_env("FERROCABLE_UNRELATED", "ignored");
            let flags = serde_json::json!({"bind": "127.0.0.1:5000"});
            let c = ServeConfig::load(Some(Path::new("f.toml")), flags).unwrap();
            assert_eq!(c.bind.to_string(), "127.0.0.1:5000");
            assert_eq!(c.mount_path, "/from-env");
            assert!(c.bench_channel);
            Ok(())
        });
    }

    #[test]
    fn app_keys_come_from_the_file_table_and_the_environment() {
        #[derive(serde::Deserialize)]
        struct Mine {
            greeting: String,
            limit: u32,
        }
        figment::Jail::expect_with(|jail| {
            jail.create_file("f.toml", "[app]\ngreeting = \"hello\"\nlimit = 3\n")?;
            let c = ServeConfig::load(Some(Path::new("f.toml")), serde_json::json!({})).unwrap();
            let mine: Mine = c.app_settings().unwrap();
            assert_eq!((mine.greeting.as_str(), mine.limit), ("hello", 3));
            jail.set_env("FERROCABLE_APP_LIMIT", "9");
            let c = ServeConfig::load(Some(Path::new("f.toml")), serde_json::json!({})).unwrap();
            let mine: Mine = c.app_settings().unwrap();
            assert_eq!((mine.greeting.as_str(), mine.limit), ("hello", 9));
            Ok(())
        });
    }

    #[test]
    fn stream_keys_follow_anycable_settings() {
        figment::Jail::expect_with(|jail| {
            let base = b"secret key base";
            let c = ServeConfig::load(None, serde_json::json!({})).unwrap();
            let derived = c.streams_key(base);
            assert_eq!(
                derived,
                ferrocable_rpc::derive_secret(base, "signed-streams").into_bytes()
            );
            assert_eq!(c.turbo_streams_key(base), derived);
            assert!(!c.public_streams && !c.streams_whisper && !c.turbo_streams);
            assert!(c.jwt().is_none(), "no secret, no JWT identification");
            jail.set_env("ANYCABLE_SECRET", "app secret");
            let c = ServeConfig::load(None, serde_json::json!({})).unwrap();
            assert_eq!(c.streams_key(base), b"app secret");
            jail.set_env("ANYCABLE_STREAMS_SECRET", "streams");
            jail.set_env("ANYCABLE_PUBLIC_STREAMS", "true");
            jail.set_env("ANYCABLE_STREAMS_WHISPER", "true");
            jail.set_env("ANYCABLE_TURBO_STREAMS", "true");
            let c = ServeConfig::load(None, serde_json::json!({})).unwrap();
            assert_eq!(c.streams_key(base), b"streams");
            assert_eq!(c.turbo_streams_key(base), b"streams");
            assert!(c.public_streams && c.streams_whisper && c.turbo_streams);
            jail.set_env("ANYCABLE_TURBO_STREAMS_SECRET", "turbo");
            let c = ServeConfig::load(None, serde_json::json!({})).unwrap();
            assert_eq!(c.turbo_streams_key(base), b"turbo");
            // JWT: on with the app secret; its own secret, parameter and enforcement.
            let minted = ferrocable_node::JwtIdentifier::new("app secret")
                .mint(&serde_json::Map::new(), std::time::Duration::from_secs(60));
            assert!(c.jwt().unwrap().verify(&minted).is_ok());
            jail.set_env("ANYCABLE_JWT_SECRET", "jwt");
            jail.set_env("ANYCABLE_JWT_PARAM", "token");
            jail.set_env("ANYCABLE_ENFORCE_JWT", "true");
            let c = ServeConfig::load(None, serde_json::json!({})).unwrap();
            let jwt = c.jwt().unwrap();
            assert!(jwt.verify(&minted).is_err() && jwt.is_enforced());
            assert_eq!(c.jwt_param, "token");
            Ok(())
        });
    }

    #[test]
    fn anycable_go_settings_work_unchanged_and_ferrocable_names_win() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ANYCABLE_RPC_HOST", "http://app:3000/_anycable");
            jail.set_env("ANYCABLE_SECRET", "s3cret");
            jail.set_env("ANYCABLE_HEADERS", "cookie,x-api-token");
            jail.set_env("ANYCABLE_PROXY_COOKIES", "_session_id");
            jail.set_env("ANYCABLE_RPC_CONCURRENCY", "12");
            jail.set_env("ANYCABLE_ALLOWED_ORIGINS", "https://a.example,*.b.example");
            jail.set_env("ANYCABLE_HOST", "0.0.0.0");
            jail.set_env("ANYCABLE_PORT", "8080");
            jail.set_env("ANYCABLE_PATH", "/ws");
            jail.set_env("ANYCABLE_BROADCAST_ADAPTER", "http,redis");
            jail.set_env("ANYCABLE_REDIS_URL", "redis://cache:6379/1");
            jail.set_env("ANYCABLE_NATS_SERVERS", "nats://bus:4222");
            jail.set_env("ANYCABLE_REDIS_GROUP", "g1");
            let c = ServeConfig::load(None, serde_json::json!({})).unwrap();
            assert_eq!(c.bind.to_string(), "0.0.0.0:8080");
            assert_eq!(c.mount_path, "/ws");
            assert_eq!(c.allowed_origins, ["https://a.example", "*.b.example"]);
            assert_eq!(c.broadcast_adapter, ["http", "redis"]);
            assert_eq!(c.redis_url.as_deref(), Some("redis://cache:6379/1"));
            assert_eq!(c.nats_servers.as_deref(), Some("nats://bus:4222"));
            assert_eq!(c.redis_group, "g1");
            let rpc = c.rpc_config().unwrap();
            assert_eq!(rpc.host, "http://app:3000/_anycable");
            assert_eq!(
                rpc.secret.as_deref(),
                Some(ferrocable_rpc::derive_secret("s3cret", "rpc-cable").as_str())
            );
            assert_eq!(rpc.headers, ["cookie", "x-api-token"]);
            assert_eq!(rpc.proxy_cookies, ["_session_id"]);
            assert_eq!(rpc.concurrency, 12);
            jail.set_env("ANYCABLE_HTTP_RPC_SECRET", "given");
            jail.set_env("FERROCABLE_MOUNT_PATH", "/cable2");
            let c = ServeConfig::load(None, serde_json::json!({})).unwrap();
            assert_eq!(c.rpc_config().unwrap().secret.as_deref(), Some("given"));
            assert_eq!(c.mount_path, "/cable2", "ferrocable's own name wins");
            Ok(())
        });
    }

    #[test]
    fn no_rpc_host_means_no_rpc() {
        assert!(ServeConfig::default().rpc_config().is_none());
    }

    #[test]
    fn a_typo_in_the_file_is_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("f.toml", "bnid = \"127.0.0.1:4000\"\n")?;
            assert!(ServeConfig::load(Some(Path::new("f.toml")), serde_json::json!({})).is_err());
            Ok(())
        });
    }
}
