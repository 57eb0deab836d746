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
        http.spawn(serve_connection(
            stream,
            remote,
            router.clone(),
            cable.clone(),
            tls.clone(),
            shutdown.clone(),
        ));
    }
}

/// One accepted connection to its end: the cable's handshake on the raw socket, or hyper.
///
/// Every accepted connection's task holds this future, and spawning copies it whole into the
/// task (then once more when it ends), so the cold paths are boxed: hyper's connection state
/// and the TLS handshake made it 4,696 bytes, the cable's handshake alone needs ~1,000, and the
/// `memmove`s of `tokio::spawn` and of the task's completion were the largest user-space item
/// of the connect phase's profile (4.4 % of the server's samples).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    router: Router,
    cable: Arc<CableHandshake>,
    tls: Option<Arc<crate::tls::Acceptor>>,
    shutdown: CancellationToken,
) {
    match tls {
        None => match cable.serve(stream, remote, &shutdown).await {
            FirstRequest::Upgraded | FirstRequest::Gone => {}
            FirstRequest::Http(stream) => {
                let meta = ConnMeta { remote, tls: false };
                Box::pin(serve_http(TokioIo::new(stream), router, meta, shutdown)).await
            }
        },
        #[cfg(feature = "tls")]
        Some(acceptor) => Box::pin(serve_tls(&acceptor, stream, remote, router, shutdown)).await,
        #[cfg(not(feature = "tls"))]
        Some(acceptor) => match *acceptor {},
    }
}

/// A TLS connection: the TLS handshake (at most 10 s), then hyper.
#[cfg(feature = "tls")]
async fn serve_tls(
    acceptor: &crate::tls::Acceptor,
    stream: tokio::net::TcpStream,
    remote: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) {
    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            let meta = ConnMeta { remote, tls: true };
            serve_http(TokioIo::new(s), router, meta, shutdown).await
        }
        Ok(Err(e)) => debug!(%remote, error = %e, "TLS handshake failed"),
        Err(_) => debug!(%remote, "TLS handshake timed out"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_accepted_connections_task_is_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (stream, remote) = listener.accept().await.expect("accept");
        let state = crate::state::ServerState {
            node: ferrocable_node::Node::builder().build(),
            origins: Arc::new(crate::origin::OriginPolicy::new(true, true, &[]).expect("policy")),
            broadcast_key: Arc::from("key"),
            rpc: None,
        };
        let fut = serve_connection(
            stream,
            remote,
            Router::new(),
            Arc::new(CableHandshake::new(state, "/cable")),
            None,
            CancellationToken::new(),
        );
        let size = std::mem::size_of_val(&fut);
        eprintln!("ACCEPTED FUTURE {size}");
        // 4,696 bytes with hyper's connection and the TLS handshake inline.
        assert!(
            size <= 1200,
            "the accepted connection's future grew to {size} bytes"
        );
    }
}
