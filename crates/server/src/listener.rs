//! The accept loop: plain TCP or TLS on the same listener, HTTP/1.1 with upgrades.
//!
//! Our own loop rather than `axum::serve` so that TLS and plain TCP share one path, the
//! peer address and TLS flag reach the upgrade handler, and running out of file
//! descriptors (EMFILE, a real limit at 20k connections per process) backs off instead of
//! spinning.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::handshake::{CableHandshake, FirstRequest};

/// Facts about the TCP connection a request arrived on, put in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ConnMeta {
    /// The peer's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Accepts connections until `shutdown` is cancelled. Each HTTP connection runs in a task of
/// `http`, so shutdown can wait for the requests in flight; on shutdown, keep-alive
/// connections finish the request they serve and close. A plain TCP connection whose first
/// request is the cable's upgrade is upgraded by `cable` on the raw socket; every other
/// connection is hyper's.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    cable: Arc<CableHandshake>,
    tls: Option<Arc<crate::tls::Acceptor>>,
    shutdown: CancellationToken,
    http: TaskTracker,
) {
    let mut last_warning = None::<tokio::time::Instant>;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE/ENFILE and friends: wait for descriptors to free up, log at most once a second.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    warn!(error = %e, "accept failed; backing off");
                    last_warning = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let cable = cable.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        http.spawn(async move {
            match tls {
                None => match cable.serve(stream, remote, &shutdown).await {
                    FirstRequest::Upgraded | FirstRequest::Gone => {}
                    FirstRequest::Http(stream) => {
                        let meta = ConnMeta { remote, tls: false };
                        serve_http(TokioIo::new(stream), router, meta, shutdown).await
                    }
                },
                #[cfg(feature = "tls")]
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => {
                            let meta = ConnMeta { remote, tls: true };
                            serve_http(TokioIo::new(s), router, meta, shutdown).await
                        }
                        Ok(Err(e)) => debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%remote, "TLS handshake timed out"),
                    }
                }
                #[cfg(not(feature = "tls"))]
                Some(acceptor) => match *acceptor {},
            }
        });
    }
}

async fn serve_http<I>(io: TokioIo<I>, router: Router, meta: ConnMeta, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = router.map_request(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(meta);
        req
    });
    let svc = TowerToHyperService::new(svc);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(crate::handshake::HEAD_TIMEOUT)
        .serve_connection(io, svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let done = tokio::select! {
        done = conn.as_mut() => done,
        _ = shutdown.cancelled() => {
            // Finish the request in flight (if any), then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = done {
        debug!(remote = %meta.remote, error = %e, "http connection ended with an error");
    }
}
