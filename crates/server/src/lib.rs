//! The ferrocable server: HTTP routes, the WebSocket upgrade, TLS, configuration and the
//! lifecycle (start, graceful shutdown) around a [`ferrocable_node::Node`], serving whatever
//! app a [`Composition`] describes: its pages, reflexes, channels and browser files.
//!
//! Apps normally reach this through the `ferrocable` crate's `App`; this crate is the
//! machinery underneath, with no app of its own.

pub mod app;
pub mod assets;
mod backends;
pub mod bench_channel;
pub mod checks;
pub mod cli;
pub mod config;
mod echo;
mod handshake;
pub mod listener;
pub mod origin;
pub mod page;
pub mod session;
mod sse;
mod state;
mod tls;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;

use ferrocable_node::{Node, NodeBuilder, ShutdownReport};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use assets::Assets;
pub use config::ServeConfig;
pub use page::{Cable, PageHost};
pub use session::{CurrentSession, SessionChannel, SessionFailure};

/// What the server hands to parts of an app that are built once it started: the session store
/// and the stream signer only exist then (both come from the configuration and the secret).
#[derive(Clone)]
pub struct Services {
    /// The sessions shared by pages and the cable.
    pub sessions: Arc<ferrocable_session::Sessions>,
    /// Signs `CableReady::Stream` names (the key derives from the secret key base).
    pub signer: ferrocable_reflex::StreamSigner,
    /// Signs `$pubsub` stream names (the streams key, see [`ServeConfig::streams_key`]).
    pub streams: ferrocable_streams::MessageVerifier,
    /// Signs Turbo stream names (see [`ServeConfig::turbo_streams_key`]).
    pub turbo: ferrocable_streams::MessageVerifier,
    /// The configuration the server runs with.
    pub config: Arc<ServeConfig>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("sessions", &self.sessions.store_kind())
            .finish_non_exhaustive()
    }
}

/// A step of composition that needs [`Services`] (a channel over the session store, say).
pub type Deferred = Box<dyn FnOnce(&Services, &mut Composition) + Send>;

/// Everything an app brings to a server. The server adds what every app gets: the cable, the
/// session layer and cookie, `StimulusReflex::Channel` and `CableReady::Stream`, `/health`,
/// `/metrics`, `/_broadcast` and the browser files.
pub struct Composition {
    /// The app's channels and authenticator (and, for tests, a pubsub or broker).
    pub node: NodeBuilder,
    /// The app's pages: its own axum routes, state applied.
    pub pages: axum::Router,
    /// The app's reflex classes.
    pub reflexes: ferrocable_reflex::Registry,
    /// The browser files.
    pub assets: Assets,
    /// Steps run once the services exist, in order.
    pub deferred: Vec<Deferred>,
}

impl Default for Composition {
    fn default() -> Self {
        Composition {
            node: NodeBuilder::default(),
            pages: axum::Router::new(),
            reflexes: ferrocable_reflex::Registry::new(),
            assets: Assets::new(),
            deferred: Vec::new(),
        }
    }
}

impl std::fmt::Debug for Composition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Composition")
            .field("node", &self.node)
            .field("reflexes", &self.reflexes)
            .field("assets", &self.assets)
            .finish_non_exhaustive()
    }
}

impl From<NodeBuilder> for Composition {
    /// An app of channels only.
    fn from(node: NodeBuilder) -> Self {
        Composition {
            node,
            ..Composition::default()
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// An allowed-origin entry is invalid.
    #[error(transparent)]
    Origin(#[from] origin::OriginRuleError),
    /// The TLS certificate or key could not be used.
    #[error("TLS setup failed: {what}: {source}")]
    Tls {
        /// Which part (`certificate cert.pem`, `key key.pem`, `configuration`).
        what: String,
        /// Why.
        #[source]
        source: ferrocable_node::broker::Cause,
    },
    /// `tls_cert` without `tls_key`, or the reverse.
    #[error("TLS needs both tls_cert and tls_key")]
    TlsPair,
    /// The broker's backend could not be reached or set up.
    #[error("broker: {0}")]
    Broker(#[source] ferrocable_node::broker::ConnectError),
    /// The pubsub's backend could not be reached or set up.
    #[error("pubsub: {0}")]
    PubSub(#[source] ferrocable_node::broker::ConnectError),
    /// A URL names no backend ferrocable knows.
    #[error("{role} {url:?}: use memory, redis://… or nats://…")]
    UnknownBackend {
        /// `pubsub` or `broker`.
        role: &'static str,
        /// The URL as configured.
        url: String,
    },
    /// With `strict`, a deployment check found something to fix (each named in the list).
    #[error("deployment checks failed (strict): {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Deployment(Vec<checks::Advice>),
    /// The RPC client could not be set up.
    #[error("RPC: {0}")]
    Rpc(#[source] ferrocable_rpc::RpcError),
    /// The configuration names a backend this build leaves out (a Cargo feature).
    #[error("{what} needs the `{feature}` feature of ferrocable, which this build leaves out")]
    NotBuilt {
        /// What was asked for (`pubsub redis://…`, `TLS`, …).
        what: String,
        /// The feature that builds it.
        feature: &'static str,
    },
    /// The session store could not be opened.
    #[error("session store {url}: {source}")]
    Session {
        /// The store URL (credentials included as given).
        url: String,
        /// The cause.
        source: ferrocable_session::StoreError,
    },
    /// The data directory or the secret in it could not be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The secret that signs session cookies: the configured one, or one generated once and
/// kept in the data directory so sessions survive restarts.
fn secret_key_base(config: &ServeConfig) -> Result<Vec<u8>, StartError> {
    if let Some(secret) = config.secret_key_base.as_deref().filter(|s| !s.is_empty()) {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = config.data_dir.join("secret_key_base");
    let io = |source| StartError::DataDir {
        path: path.clone(),
        source,
    };
    if let Ok(existing) = std::fs::read_to_string(&path)
        && !existing.trim().is_empty()
    {
        return Ok(existing.trim().as_bytes().to_vec());
    }
    std::fs::create_dir_all(&config.data_dir).map_err(io)?;
    let secret = format!(
        "{}{}{}{}",
        ferrocable_session::new_session_id(),
        ferrocable_session::new_session_id(),
        ferrocable_session::new_session_id(),
        ferrocable_session::new_session_id()
    );
    std::fs::write(&path, &secret).map_err(io)?;
    tracing::warn!(path = %path.display(), "no secret_key_base configured: generated one (set SECRET_KEY_BASE in production)");
    Ok(secret.into_bytes())
}

/// Binds with a deep accept backlog: a reconnect storm (every client of a restarted node at
/// once) otherwise overflows the default 128 and costs clients a one-second SYN retry.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Opens the configured session store.
pub async fn open_sessions(
    config: &ServeConfig,
) -> Result<Arc<ferrocable_session::Sessions>, StartError> {
    open_sessions_with(config, &secret_key_base(config)?).await
}

async fn open_sessions_with(
    config: &ServeConfig,
    secret: &[u8],
) -> Result<Arc<ferrocable_session::Sessions>, StartError> {
    let url = config.session_store_url();
    let store = ferrocable_session::open_store(&url, &config.data_dir, &config.session_key_prefix)
        .await
        .map_err(|source| StartError::Session {
            url: url.clone(),
            source,
        })?;
    let options = ferrocable_session::SessionOptions {
        cookie_name: config.session_cookie_name.clone(),
        expire_after: std::time::Duration::from_secs(config.session_expire_after_secs),
        secure: config.session_secure,
        http_only: config.session_http_only,
        same_site: config.session_same_site.clone(),
        codec: ferrocable_session::Codec {
            max_bytes: config.session_max_bytes,
            compress_above: Some(config.session_compress_above),
        },
    };
    Ok(Arc::new(ferrocable_session::Sessions::new(
        store, options, secret,
    )))
}

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    node: Node,
    services: Services,
    accept: JoinHandle<()>,
    /// The HTTP connections (page requests; upgraded sockets belong to the node).
    http: tokio_util::task::TaskTracker,
    /// The app behind RPC, if any (its disconnect calls are drained at shutdown).
    rpc: Option<ferrocable_rpc::RpcClient>,
}

impl RunningServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cable node (for in-process broadcasts).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The services the app's parts were built with.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Stops accepting, sends every client `disconnect` (`server_restart`, reconnect), lets
    /// page requests in flight finish, and waits for both within the configured timeout.
    pub async fn shutdown(self) -> ShutdownReport {
        let deadline = tokio::time::Instant::now() + self.node.config().shutdown_timeout;
        let report = self.node.shutdown().await;
        let _ = self.accept.await;
        self.http.close();
        let _ = tokio::time::timeout_at(deadline, self.http.wait()).await;
        if let Some(rpc) = &self.rpc {
            // The closed connections queued their disconnect calls: the app runs their
            // `unsubscribed` and `disconnect` callbacks before the process ends.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !rpc
                .drain(left.max(std::time::Duration::from_millis(100)))
                .await
            {
                tracing::warn!("shutdown timeout: some disconnect calls to the app were not made");
            }
        }
        ShutdownReport {
            remaining: report.remaining + self.http.len(),
        }
    }
}

/// Starts a server for `app` (a [`Composition`], or a [`NodeBuilder`] of channels only), plus
/// `BenchmarkChannel` when the configuration asks for it. Must run inside a tokio runtime.
pub async fn start(
    config: &ServeConfig,
    app: impl Into<Composition>,
) -> Result<RunningServer, StartError> {
    let mut app = app.into();
    let advice = checks::deployment_checks(config).await;
    for a in &advice {
        tracing::warn!(check = a.check, "{}", a.message);
    }
    if config.strict && !advice.is_empty() {
        return Err(StartError::Deployment(advice));
    }
    let origins = origin::OriginPolicy::new(
        config.disable_forgery_protection,
        config.allow_same_origin,
        &config.allowed_origins,
    )?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(tls::acceptor(cert, key)?)),
        (None, None) => None,
        _ => return Err(StartError::TlsPair),
    };
    let listener = listen(config.bind).map_err(|source| StartError::Bind {
        addr: config.bind,
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.bind,
        source,
    })?;

    let secret = secret_key_base(config)?;
    let sessions = open_sessions_with(config, &secret).await?;
    let services = Services {
        sessions: sessions.clone(),
        signer: ferrocable_reflex::StreamSigner::new(&secret),
        streams: ferrocable_streams::MessageVerifier::new(config.streams_key(&secret)),
        turbo: ferrocable_streams::MessageVerifier::new(config.turbo_streams_key(&secret)),
        config: Arc::new(config.clone()),
    };
    for step in std::mem::take(&mut app.deferred) {
        step(&services, &mut app);
    }
    let site = Arc::new(page::Site {
        signer: services.signer.clone(),
        streams: services.streams.clone(),
        turbo: services.turbo.clone(),
        cable_url: config
            .cable_url
            .clone()
            .unwrap_or_else(|| config.mount_path.clone())
            .into(),
        import_map: app.assets.import_map(),
    });
    let pages = app.pages.layer(axum::middleware::from_fn_with_state(
        session::SessionState {
            sessions: sessions.clone(),
        },
        session::session_layer,
    ));
    let host: Arc<dyn ferrocable_reflex::PageRenderer> = Arc::new(PageHost {
        sessions: sessions.clone(),
        pages: pages.clone(),
        site: site.clone(),
    });
    let cookie_sessions = sessions.clone();
    let mut builder = app
        .node
        .config(config.node_config())
        .session_of(move |request| session::cable_session(&cookie_sessions, request));
    // In front of a Rails app whose reflexes and CableReady streams are its own, these
    // channels go to the app; they are served here when the Rust app has reflexes, or when
    // there is no app behind.
    if config.rpc_config().is_none() || !app.reflexes.is_empty() {
        builder = builder
            .default_channel(
                ferrocable_reflex::CHANNEL,
                ferrocable_reflex::ReflexChannel::new(app.reflexes, host),
            )
            .default_channel(
                "CableReady::Stream",
                ferrocable_reflex::CableReadyStreamChannel::new(services.signer.clone()),
            );
    }
    // `$pubsub` is anycable-go's own channel, never the app's; Turbo::StreamsChannel is the
    // app's (over RPC) unless `turbo_streams` asks for it here, or there is no app behind.
    builder = builder.default_channel(
        ferrocable_streams::PUBSUB_CHANNEL,
        ferrocable_streams::PubSubChannel::new(services.streams.clone())
            .public_streams(config.public_streams)
            .whisper_on_signed(config.streams_whisper)
            .presence_on_signed(config.streams_presence),
    );
    if config.turbo_streams || config.rpc_config().is_none() {
        builder = builder.default_channel(
            ferrocable_streams::TURBO_STREAMS_CHANNEL,
            ferrocable_streams::TurboStreamsChannel::new(services.turbo.clone()),
        );
    }
    if config.bench_channel {
        builder = builder.channel("BenchmarkChannel", bench_channel::BenchmarkChannel);
    }
    let rpc = match config.rpc_config() {
        Some(rpc) => {
            let client = ferrocable_rpc::RpcClient::new(rpc).map_err(StartError::Rpc)?;
            tracing::info!(host = %client.config().host, "channels without Rust code go to the app over RPC");
            builder = builder.remote_app(client.clone());
            Some(client)
        }
        None => None,
    };
    if let Some(jwt) = config.jwt() {
        builder = builder.jwt(jwt);
    }
    builder = backends::pubsub(config, builder)?;
    builder = backends::broker(config, builder).await?;
    let node = builder.build();
    let state = state::ServerState {
        node: node.clone(),
        origins: Arc::new(origins),
        broadcast_key: config
            .broadcast_key
            .clone()
            .filter(|k| !k.is_empty())
            .unwrap_or_else(
                || match config.secret.as_deref().filter(|s| !s.is_empty()) {
                    Some(anycable) => ferrocable_rpc::derive_secret(anycable, "broadcast-cable"),
                    None => ferrocable_rpc::derive_secret(&secret, "broadcast-cable"),
                },
            )
            .into(),
        rpc: rpc.clone(),
    };
    backends::ingress(config, &node)?;
    let cable = Cable::new(node.clone(), site);
    let handshake = Arc::new(handshake::CableHandshake::new(
        state.clone(),
        &config.mount_path,
    ));
    let router = app::router(state, config, &app.assets, pages, cable);
    let http = tokio_util::task::TaskTracker::new();
    let accept = tokio::spawn(listener::accept_loop(
        listener,
        router,
        handshake,
        tls,
        node.shutdown_token(),
        http.clone(),
    ));
    Ok(RunningServer {
        addr,
        node,
        services,
        accept,
        http,
        rpc,
    })
}
