//! AnyCable RPC: ferrocable in front of an unchanged Rails app, where anycable-go sits today.
//!
//! [`RpcClient`] is a [`RemoteApp`]: the node asks it who connects and hands it every command
//! of a channel that has no Rust code. It carries the calls over HTTP (JSON, the Bearer
//! secret; the app's `/_anycable` mount) or gRPC (`anycable.RPC`, tonic), with the flow
//! control a production Rails app needs:
//! one concurrency limit for every call, a deadline per attempt and per call, retries with
//! exponential back-off only while the app is unreachable, a circuit breaker, calls of closed
//! connections cancelled, and a rate-limited, bounded disconnect queue drained at shutdown.

mod breaker;
mod call;
mod config;
mod env;
mod grpc;
mod http;
mod metrics;
pub mod proto;
mod transport;
mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrocable_node::ConnectRequest;
use ferrocable_node::RemoteApp;
use ferrocable_node::remote::{
    CallError, CommandCall, CommandReply, ConnectCall, ConnectReply, DisconnectCall, Env, Status,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use breaker::BreakerPolicy;
pub use config::{RpcConfig, derive_secret};
pub use metrics::RpcMetrics;

/// The RPC client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The host names a transport this build does not have.
    #[error("unsupported RPC host: {0}")]
    Unsupported(&'static str),
    /// The secret cannot travel in an HTTP header.
    #[error("the RPC secret is not a valid header value")]
    BadSecret,
    /// The TLS settings of an `https://` host could not be used.
    #[error("RPC TLS: {0}")]
    Tls(String),
    /// The host is not a `host:port` gRPC can dial.
    #[error("RPC host {0:?} is not host:port")]
    BadHost(String),
}

struct Shared {
    config: RpcConfig,
    transport: transport::Transport,
    slots: Semaphore,
    breaker: breaker::Breaker,
    metrics: RpcMetrics,
}

/// Talks to the app behind ferrocable. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct RpcClient {
    shared: Arc<Shared>,
    disconnects: mpsc::Sender<DisconnectCall>,
    drain: Arc<Drain>,
}

/// The disconnect worker's switch to drain mode and its end.
struct Drain {
    start: CancellationToken,
    done: CancellationToken,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("host", &self.shared.config.host)
            .finish_non_exhaustive()
    }
}

/// Counts a call as cancelled if it is dropped before it ends (its connection closed).
struct CancelGuard<'a> {
    metrics: &'a RpcMetrics,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.metrics.canceled.inc();
        }
    }
}

impl RpcClient {
    /// A client for `config`; starts the disconnect worker (inside a tokio runtime).
    pub fn new(config: RpcConfig) -> Result<Self, RpcError> {
        let transport = if config.is_http() {
            transport::Transport::Http(Box::new(http::HttpTransport::new(
                &config.host,
                config.secret.as_deref(),
                config.tls_root_ca.as_deref(),
            )?))
        } else {
            transport::Transport::Grpc(grpc::GrpcTransport::new(&config.host)?)
        };
        let metrics = RpcMetrics::new();
        metrics.capacity.set(config.concurrency as i64);
        let shared = Arc::new(Shared {
            slots: Semaphore::new(config.concurrency.max(1)),
            breaker: breaker::Breaker::new(config.breaker),
            transport,
            metrics,
            config,
        });
        let (disconnects, queue) = mpsc::channel(shared.config.disconnect_backlog.max(1));
        let drain = Arc::new(Drain {
            start: CancellationToken::new(),
            done: CancellationToken::new(),
        });
        tokio::spawn(disconnect_worker(shared.clone(), queue, drain.clone()));
        Ok(RpcClient {
            shared,
            disconnects,
            drain,
        })
    }

    /// The client's metrics (render them after the node's).
    pub fn metrics(&self) -> &RpcMetrics {
        &self.shared.metrics
    }

    /// The settings in use.
    pub fn config(&self) -> &RpcConfig {
        &self.shared.config
    }

    /// Runs the queued disconnect calls without the rate limit (16 at once), within
    /// `timeout`; for the end of a graceful shutdown, after the node closed its connections.
    /// Returns whether the queue emptied in time.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.drain.start.cancel();
        tokio::time::timeout(timeout, self.drain.done.cancelled())
            .await
            .is_ok()
    }
}

/// One call with the flow control: a slot, attempts with back-off while the app is
/// unreachable, all within the call's deadline.
async fn call(
    shared: &Shared,
    payload: &transport::Payload,
) -> Result<transport::Reply, CallError> {
    let m = &shared.metrics;
    let config = &shared.config;
    let method = payload.method();
    let mut guard = CancelGuard {
        metrics: m,
        armed: true,
    };
    m.calls
        .get_or_create(&metrics::MethodLabel { method })
        .inc();
    let deadline = tokio::time::Instant::now() + config.call_timeout;
    m.pending.inc();
    let permit = tokio::time::timeout_at(deadline, shared.slots.acquire()).await;
    m.pending.dec();
    let result = match permit {
        Err(_) => Err(CallError::Timeout),
        Ok(Err(_)) => Err(CallError::Overloaded),
        Ok(Ok(_permit)) => attempts(shared, payload, deadline).await,
    };
    guard.armed = false;
    if let Err(e) = &result {
        let kind = match e {
            CallError::Unavailable(_) => "unavailable",
            CallError::Timeout => {
                m.timeouts.inc();
                "timeout"
            }
            CallError::Unauthenticated => "unauthenticated",
            CallError::BadReply(_) => "bad_reply",
            CallError::Overloaded => "overloaded",
        };
        m.errors
            .get_or_create(&metrics::ErrorLabel { method, kind })
            .inc();
    }
    m.breaker_open.set(i64::from(shared.breaker.is_open()));
    result
}

async fn attempts(
    shared: &Shared,
    payload: &transport::Payload,
    deadline: tokio::time::Instant,
) -> Result<transport::Reply, CallError> {
    let config = &shared.config;
    let breaker = shared.transport.has_breaker().then_some(&shared.breaker);
    let mut attempt: u32 = 0;
    loop {
        if let Some(b) = breaker
            && !b.admit(Instant::now())
        {
            return Err(CallError::Unavailable(
                "the app's RPC is failing: the circuit breaker is open".into(),
            ));
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(CallError::Timeout);
        }
        let timeout = config.request_timeout.min(left);
        let result = shared.transport.send(payload, timeout).await;
        let reached = !matches!(
            result,
            Err(CallError::Unavailable(_)) | Err(CallError::Timeout)
        );
        if let Some(b) = breaker {
            b.record(reached, Instant::now());
        }
        match result {
            Err(CallError::Unavailable(e)) => {
                let backoff = config.retry_base * 2u32.saturating_pow(attempt.min(16));
                if tokio::time::Instant::now() + backoff >= deadline {
                    return Err(CallError::Unavailable(e));
                }
                debug!(method = payload.method(), attempt, error = %e, "the app is unavailable: retrying");
                shared.metrics.retries.inc();
                tokio::time::sleep(backoff).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

impl RemoteApp for RpcClient {
    fn env(&self, request: &ConnectRequest) -> Env {
        env::env_of(request, &self.shared.config)
    }

    async fn connect(&self, call: ConnectCall) -> Result<ConnectReply, CallError> {
        match call_payload(&self.shared, transport::Payload::Connect(call)).await? {
            transport::Reply::Connect(r) => Ok(r),
            _ => Err(CallError::BadReply("a reply of another call".into())),
        }
    }

    async fn command(&self, call: CommandCall) -> Result<CommandReply, CallError> {
        match call_payload(&self.shared, transport::Payload::Command(call)).await? {
            transport::Reply::Command(r) => Ok(r),
            _ => Err(CallError::BadReply("a reply of another call".into())),
        }
    }

    fn disconnect(&self, call: DisconnectCall) {
        match self.disconnects.try_send(call) {
            Ok(()) => {
                self.shared.metrics.disconnects_queued.inc();
            }
            Err(_) => {
                // Logged on the first drop and every 1,000th after: a mass disconnect would
                // otherwise write thousands of lines; the counter has every one.
                let dropped = self.shared.metrics.disconnects_dropped.inc();
                if dropped.is_multiple_of(1000) {
                    warn!(
                        dropped = dropped + 1,
                        backlog = self.shared.config.disconnect_backlog,
                        "disconnect queue full: disconnect calls to the app are dropped"
                    );
                }
            }
        }
    }
}

async fn call_payload(
    shared: &Shared,
    payload: transport::Payload,
) -> Result<transport::Reply, CallError> {
    call(shared, &payload).await
}

/// Sends one disconnect call and logs how it went.
async fn send_disconnect(shared: Arc<Shared>, call: DisconnectCall) {
    match crate::call(&shared, &transport::Payload::Disconnect(call)).await {
        Ok(transport::Reply::Disconnect(Status::Success, _)) => {}
        Ok(transport::Reply::Disconnect(_, error)) => {
            warn!(%error, "the app failed a disconnect")
        }
        Ok(_) => warn!("disconnect call: a reply of another call"),
        Err(e) => warn!(error = %e, "disconnect call to the app failed"),
    }
}

/// Sends queued disconnect calls at most `disconnect_rate` a second (each in a task of its
/// own, so a slow one does not hold the queue; the concurrency limit still applies); in drain
/// mode, all that are left, `drain_concurrency` at once.
async fn disconnect_worker(
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<DisconnectCall>,
    drain: Arc<Drain>,
) {
    let period = Duration::from_secs(1) / shared.config.disconnect_rate.max(1);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = drain.start.cancelled() => break,
            next = queue.recv() => {
                let Some(call) = next else { break };
                shared.metrics.disconnects_queued.dec();
                running.spawn(send_disconnect(shared.clone(), call));
                while running.try_join_next().is_some() {}
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = drain.start.cancelled() => {}
                }
            }
        }
    }
    let mut draining = tokio::task::JoinSet::new();
    loop {
        while draining.len() < shared.config.drain_concurrency.max(1) {
            match queue.try_recv() {
                Ok(call) => {
                    shared.metrics.disconnects_queued.dec();
                    draining.spawn(send_disconnect(shared.clone(), call));
                }
                Err(_) => break,
            }
        }
        if draining.join_next().await.is_none() {
            break;
        }
    }
    while running.join_next().await.is_some() {}
    drain.done.cancel();
}
