//! The ferrocable server: HTTP routes, the WebSocket upgrade, TLS, configuration and the
//! lifecycle (start, graceful shutdown) around a [`ferrocable_node::Node`].

pub mod app;
pub mod bench_channel;
pub mod config;
pub mod listener;
pub mod origin;
pub mod upgrade;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use ferrocable_node::{Node, NodeBuilder, ShutdownReport};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use config::ServeConfig;

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
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    node: Node,
    accept: JoinHandle<()>,
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

    /// Stops accepting, sends every client `disconnect` (`server_restart`, reconnect), and
    /// waits for connections to finish within the configured timeout.
    pub async fn shutdown(self) -> ShutdownReport {
        let report = self.node.shutdown().await;
        let _ = self.accept.await;
        report
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StartError::Tls(format!("certificate {}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| StartError::Tls(format!("key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Starts a server with the channels `builder` registers (plus `BenchmarkChannel` when the
/// configuration asks for it). Must run inside a tokio runtime.
pub async fn start(
    config: &ServeConfig,
    builder: NodeBuilder,
) -> Result<RunningServer, StartError> {
    let origins = origin::OriginPolicy::new(
        config.disable_forgery_protection,
        config.allow_same_origin,
        &config.allowed_origins,
    )?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(tls_acceptor(cert, key)?)),
        (None, None) => None,
        _ => {
            return Err(StartError::Tls(
                "both tls_cert and tls_key are needed".into(),
            ));
        }
    };
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.bind,
        source,
    })?;

    let mut builder = builder.config(config.node_config());
    if config.bench_channel {
        builder = builder.channel("BenchmarkChannel", bench_channel::BenchmarkChannel);
    }
    let node = builder.build();
    let state = app::AppState {
        node: node.clone(),
        origins: Arc::new(origins),
        cable_url: config
            .cable_url
            .clone()
            .unwrap_or_else(|| config.mount_path.clone())
            .into(),
    };
    let router = app::router(state, config);
    let accept = tokio::spawn(listener::accept_loop(
        listener,
        router,
        tls,
        node.shutdown_token(),
    ));
    Ok(RunningServer { addr, node, accept })
}
