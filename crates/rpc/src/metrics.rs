//! `ferrocable_rpc_*` metrics (anycable-go's `rpc_*` under ferrocable's prefix), in a
//! registry of their own that the server renders after the node's.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of a call: its method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabel {
    pub(crate) method: &'static str,
}

/// Label of a failed call: method and kind (`unavailable`, `timeout`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabel {
    pub(crate) method: &'static str,
    pub(crate) kind: &'static str,
}

/// Every RPC metric.
#[derive(Debug)]
pub struct RpcMetrics {
    registry: Registry,
    pub(crate) calls: Family<MethodLabel, Counter>,
    pub(crate) errors: Family<ErrorLabel, Counter>,
    pub(crate) retries: Counter,
    pub(crate) timeouts: Counter,
    pub(crate) canceled: Counter,
    pub(crate) pending: Gauge,
    pub(crate) capacity: Gauge,
    pub(crate) disconnects_queued: Gauge,
    pub(crate) disconnects_dropped: Counter,
    pub(crate) breaker_open: Gauge,
}

impl RpcMetrics {
    pub(crate) fn new() -> Self {
        let m = RpcMetrics {
            registry: Registry::default(),
            calls: Family::default(),
            errors: Family::default(),
            retries: Counter::default(),
            timeouts: Counter::default(),
            canceled: Counter::default(),
            pending: Gauge::default(),
            capacity: Gauge::default(),
            disconnects_queued: Gauge::default(),
            disconnects_dropped: Counter::default(),
            breaker_open: Gauge::default(),
        };
        let mut registry = Registry::default();
        registry.register(
            "ferrocable_rpc_calls",
            "Calls to the app, by method",
            m.calls.clone(),
        );
        registry.register(
            "ferrocable_rpc_errors",
            "Calls to the app that gave no reply, by method and kind",
            m.errors.clone(),
        );
        registry.register(
            "ferrocable_rpc_retries",
            "Calls to the app retried (the app was unavailable)",
            m.retries.clone(),
        );
        registry.register(
            "ferrocable_rpc_timeouts",
            "Calls to the app that ran out of time",
            m.timeouts.clone(),
        );
        registry.register(
            "ferrocable_rpc_canceled",
            "Calls to the app cancelled because their connection ended",
            m.canceled.clone(),
        );
        registry.register(
            "ferrocable_rpc_pending",
            "Calls waiting for a free slot",
            m.pending.clone(),
        );
        registry.register(
            "ferrocable_rpc_capacity",
            "Calls that may run at once (rpc_concurrency)",
            m.capacity.clone(),
        );
        registry.register(
            "ferrocable_rpc_disconnects_queued",
            "Disconnect calls waiting in the rate-limited queue",
            m.disconnects_queued.clone(),
        );
        registry.register(
            "ferrocable_rpc_disconnects_dropped",
            "Disconnect calls dropped because the queue was full",
            m.disconnects_dropped.clone(),
        );
        registry.register(
            "ferrocable_rpc_breaker_open",
            "1 while the HTTP circuit breaker is open",
            m.breaker_open.clone(),
        );
        RpcMetrics { registry, ..m }
    }

    /// Renders the metrics in the Prometheus text format, to append to the node's.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}
