//! Node metrics, rendered in the Prometheus text format for `GET /metrics`.
//!
//! Each node owns its registry (no process-global recorder), so several nodes in one test
//! process keep separate counts. Counters are atomics; the fan-out adds once per broadcast,
//! not once per delivery.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label set for counters split by a reason code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A stable machine-readable code.
    pub reason: String,
}

/// Every metric a node keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections (authenticated or not).
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_opened: Counter,
    /// Live subscriptions.
    pub subscriptions: Gauge,
    /// Broadcasts made on this node.
    pub broadcasts: Counter,
    /// Frames queued to subscribers by broadcasts.
    pub broadcast_deliveries: Counter,
    /// Inbound frames refused, by reason.
    pub bad_frames: Family<ReasonLabel, Counter>,
    /// Connections closed by the server, by reason.
    pub disconnects: Family<ReasonLabel, Counter>,
    /// Subscriptions refused (unknown channel, bad identifier, channel rejection).
    pub rejected_subscriptions: Counter,
    /// `whisper` commands broadcast to a whisper stream.
    pub whispers: Counter,
    /// Clients reading a subscription over server-sent events now.
    pub sse_clients: Gauge,
    /// Upgrade requests refused before upgrading (origin, bad request), by reason.
    pub refused_upgrades: Family<ReasonLabel, Counter>,
    /// Failed calls to a backing store (sessions today), by store and operation.
    pub store_errors: Family<StoreLabel, Counter>,
    /// Pubsub bus failures (connection lost, publish failed, bad envelope).
    pub pubsub_errors: Counter,
    /// Broker (history, session cache) failures, by operation.
    pub broker_errors: Family<ReasonLabel, Counter>,
    /// Sessions restored from the cache (extended protocol).
    pub sessions_restored: Counter,
    /// History requests answered with `reject_history`.
    pub history_rejected: Counter,
    /// Broadcast ingress requests refused (bad key, malformed body), by reason.
    pub ingress_refused: Family<ReasonLabel, Counter>,
    /// 1 while the node is connected to its pubsub bus.
    pub pubsub_connected: Gauge,
    /// Messages received from other nodes through the bus.
    pub pubsub_received: Counter,
    /// Commands refused by a per-connection limit, by limit (`subscriptions`, `rate`).
    pub limited: Family<ReasonLabel, Counter>,
    /// Connections that came with a token, by outcome (`accepted`, `expired`, `refused`,
    /// `missing` when tokens are enforced).
    pub jwt: Family<ReasonLabel, Counter>,
    /// How long reflexes take, from payload to reply (observe with [`Metrics::reflex_ran`]).
    pub reflex_duration: Histogram,
    /// Reflexes run and their total time in microseconds, readable in process (the histogram
    /// is write-only outside Prometheus): what a dashboard turns into a mean latency.
    reflex_totals: std::sync::Arc<(AtomicU64, AtomicU64)>,
}

/// Label set for store errors.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    /// Which store (`session`).
    pub store: String,
    /// Which operation (`load`, `save`, …).
    pub op: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            subscriptions: Gauge::default(),
            broadcasts: Counter::default(),
            broadcast_deliveries: Counter::default(),
            bad_frames: Family::default(),
            disconnects: Family::default(),
            rejected_subscriptions: Counter::default(),
            whispers: Counter::default(),
            sse_clients: Gauge::default(),
            refused_upgrades: Family::default(),
            store_errors: Family::default(),
            pubsub_errors: Counter::default(),
            broker_errors: Family::default(),
            sessions_restored: Counter::default(),
            history_rejected: Counter::default(),
            ingress_refused: Family::default(),
            pubsub_connected: Gauge::default(),
            pubsub_received: Counter::default(),
            // 0.5 ms … 4 s: a reflex that re-renders a page is a few milliseconds here.
            limited: Family::default(),
            jwt: Family::default(),
            reflex_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            reflex_totals: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "ferrocable_connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        registry.register(
            "ferrocable_connections_opened",
            "Connections accepted since start",
            m.connections_opened.clone(),
        );
        registry.register(
            "ferrocable_subscriptions",
            "Live channel subscriptions",
            m.subscriptions.clone(),
        );
        registry.register(
            "ferrocable_broadcasts",
            "Broadcasts made on this node",
            m.broadcasts.clone(),
        );
        registry.register(
            "ferrocable_broadcast_deliveries",
            "Frames queued to subscribers by broadcasts",
            m.broadcast_deliveries.clone(),
        );
        registry.register(
            "ferrocable_bad_frames",
            "Inbound frames refused, by reason",
            m.bad_frames.clone(),
        );
        registry.register(
            "ferrocable_disconnects",
            "Connections closed by the server, by reason",
            m.disconnects.clone(),
        );
        registry.register(
            "ferrocable_rejected_subscriptions",
            "Subscriptions refused",
            m.rejected_subscriptions.clone(),
        );
        registry.register(
            "ferrocable_sse_clients",
            "Clients reading a subscription over server-sent events",
            m.sse_clients.clone(),
        );
        registry.register(
            "ferrocable_whispers",
            "Whisper commands broadcast to a whisper stream",
            m.whispers.clone(),
        );
        registry.register(
            "ferrocable_refused_upgrades",
            "Upgrade requests refused before upgrading, by reason",
            m.refused_upgrades.clone(),
        );
        registry.register(
            "ferrocable_store_errors",
            "Failed calls to a backing store, by store and operation",
            m.store_errors.clone(),
        );
        registry.register(
            "ferrocable_pubsub_errors",
            "Pubsub bus failures",
            m.pubsub_errors.clone(),
        );
        registry.register(
            "ferrocable_broker_errors",
            "Broker (history, session cache) failures by operation",
            m.broker_errors.clone(),
        );
        registry.register(
            "ferrocable_sessions_restored",
            "Extended-protocol sessions restored after a reconnect",
            m.sessions_restored.clone(),
        );
        registry.register(
            "ferrocable_history_rejected",
            "History requests answered with reject_history",
            m.history_rejected.clone(),
        );
        registry.register(
            "ferrocable_pubsub_connected",
            "1 while connected to the pubsub bus",
            m.pubsub_connected.clone(),
        );
        registry.register(
            "ferrocable_pubsub_received",
            "Messages received from other nodes",
            m.pubsub_received.clone(),
        );
        registry.register(
            "ferrocable_ingress_refused",
            "Broadcast ingress requests refused, by reason",
            m.ingress_refused.clone(),
        );
        registry.register(
            "ferrocable_jwt",
            "Connections identified by a token, by outcome",
            m.jwt.clone(),
        );
        registry.register(
            "ferrocable_limited",
            "Commands refused by a per-connection limit, by limit",
            m.limited.clone(),
        );
        registry.register(
            "ferrocable_reflex_duration_seconds",
            "Reflexes run, by how long each took from payload to reply",
            m.reflex_duration.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts one connection that came with a token, by `outcome`.
    pub fn jwt(&self, outcome: &str) {
        self.jwt
            .get_or_create(&ReasonLabel {
                reason: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one command refused by a per-connection limit.
    pub fn limited(&self, limit: &str) {
        self.limited
            .get_or_create(&ReasonLabel {
                reason: limit.to_owned(),
            })
            .inc();
    }

    /// Records one reflex that took `elapsed`, payload to reply.
    pub fn reflex_ran(&self, elapsed: std::time::Duration) {
        self.reflex_duration.observe(elapsed.as_secs_f64());
        self.reflex_totals.0.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.reflex_totals.1.fetch_add(micros, Ordering::Relaxed);
    }

    /// Reflexes run since start and their total time.
    pub fn reflex_totals(&self) -> (u64, std::time::Duration) {
        (
            self.reflex_totals.0.load(Ordering::Relaxed),
            std::time::Duration::from_micros(self.reflex_totals.1.load(Ordering::Relaxed)),
        )
    }

    /// Counts one refused inbound frame.
    pub fn bad_frame(&self, reason: &str) {
        self.bad_frames
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one broker failure of operation `op`.
    pub fn broker_error(&self, op: &str) {
        self.broker_errors
            .get_or_create(&ReasonLabel {
                reason: op.to_owned(),
            })
            .inc();
    }

    /// Counts one server-initiated disconnect.
    pub fn disconnect(&self, reason: &str) {
        self.disconnects
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one refused upgrade request.
    pub fn refused_upgrade(&self, reason: &str) {
        self.refused_upgrades
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one refused ingress request.
    pub fn ingress_refused(&self, reason: &str) {
        self.ingress_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one failed store call.
    pub fn store_error(&self, store: &str, op: &str) {
        self.store_errors
            .get_or_create(&StoreLabel {
                store: store.to_owned(),
                op: op.to_owned(),
            })
            .inc();
    }

    /// Renders every metric in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_named_metrics() {
        let m = Metrics::default();
        m.connections.inc();
        m.bad_frame("malformed_json");
        let text = m.render();
        assert!(text.contains("ferrocable_connections 1"), "{text}");
        assert!(text.contains("ferrocable_subscriptions 0"), "{text}");
        assert!(text.contains("ferrocable_broadcasts_total 0"), "{text}");
        assert!(
            text.contains("ferrocable_bad_frames_total{reason=\"malformed_json\"} 1"),
            "{text}"
        );
    }
}
