//! The pubsub port: how nodes reach each other's subscribers (Redis pub/sub, NATS, …).
//!
//! Loopback rule: **the origin node delivers locally and publishes; every node ignores
//! messages it published itself.** Local delivery therefore never waits for, or depends on,
//! the bus: when the bus is down a node keeps serving its own subscribers.
//!
//! A node subscribes to a stream on the bus when the stream gets its first local subscriber
//! and unsubscribes when the last one leaves, so only nodes with subscribers receive it.

use std::sync::Arc;

use ferrocable_protocol::StreamPosition;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// A node's identity on the bus (random per process).
pub type NodeId = u64;

/// Hands a message from the bus to the node: `(stream, message JSON, history position)`.
pub type Deliver = Arc<dyn Fn(&str, &str, Option<&StreamPosition>) + Send + Sync>;

/// What a pubsub backend gets from its node.
#[derive(Clone)]
pub struct PubSubHooks {
    /// This node's id; messages carrying it are this node's own echo.
    pub node_id: NodeId,
    /// Delivers a message from another node to local subscribers.
    pub deliver: Deliver,
    /// Counts bus failures (connection lost, publish failed).
    pub errors: Counter,
    /// 1 while connected to the bus.
    pub connected: Gauge,
}

impl std::fmt::Debug for PubSubHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubHooks")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// A node ↔ node delivery backend. Calls never block the caller on the network: backends
/// queue commands to their own task.
pub trait PubSub: Send + Sync + 'static {
    /// Starts the backend's task(s); called once by the node.
    fn start(&self, hooks: PubSubHooks);
    /// Publishes a message of `stream` to the other nodes; `envelope` is its bus envelope
    /// ([`encode_envelope`]), made once by the node.
    fn publish(&self, stream: &str, envelope: String);
    /// Starts receiving `stream` from the bus.
    fn subscribe(&self, stream: &str);
    /// Stops receiving `stream`.
    fn unsubscribe(&self, stream: &str);
}

/// The bus envelope: `{"o":<origin node>,"s":"<stream>","m":<message JSON>}`, plus
/// `"e":"<epoch>","f":<offset>` for a message stored in the history.
pub fn encode_envelope(
    origin: NodeId,
    stream: &str,
    message: &str,
    position: Option<&StreamPosition>,
) -> String {
    let mut out = format!(
        "{{\"o\":{origin},\"s\":{},\"m\":{message}",
        ferrocable_protocol::encode_json_string(stream)
    );
    if let Some(p) = position {
        out.push_str(&format!(
            ",\"e\":{},\"f\":{}",
            ferrocable_protocol::encode_json_string(&p.epoch),
            p.offset
        ));
    }
    out.push('}');
    out
}

/// A decoded bus envelope.
#[derive(Debug, serde::Deserialize)]
pub struct Envelope {
    /// The node that published it.
    #[serde(rename = "o")]
    pub origin: NodeId,
    /// The stream.
    #[serde(rename = "s")]
    pub stream: String,
    /// The message JSON.
    #[serde(rename = "m")]
    pub message: Box<serde_json::value::RawValue>,
    #[serde(rename = "e", default)]
    epoch: Option<String>,
    #[serde(rename = "f", default)]
    offset: Option<u64>,
}

impl Envelope {
    /// The message's history position, when it was stored.
    pub fn position(&self) -> Option<StreamPosition> {
        Some(StreamPosition {
            epoch: self.epoch.clone()?,
            offset: self.offset?,
        })
    }
}

/// Reads a bus envelope; `None` for anything malformed (counted by the caller).
pub fn decode_envelope(text: &str) -> Option<Envelope> {
    serde_json::from_str(text).ok()
}

/// An in-process bus: several nodes in one process (tests, embedding) reach each other with
/// the same rules as over Redis or NATS.
#[derive(Clone, Default)]
pub struct MemoryBus {
    nodes: Arc<parking_lot::Mutex<Vec<MemoryNode>>>,
}

struct MemoryNode {
    id: NodeId,
    deliver: Deliver,
    streams: std::collections::HashSet<String>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field("nodes", &self.nodes.lock().len())
            .finish()
    }
}

/// One node's handle on a [`MemoryBus`].
#[derive(Debug)]
pub struct MemoryPubSub {
    bus: MemoryBus,
    id: parking_lot::Mutex<Option<NodeId>>,
}

impl MemoryBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// A pubsub handle for one node.
    pub fn pubsub(&self) -> MemoryPubSub {
        MemoryPubSub {
            bus: self.clone(),
            id: parking_lot::Mutex::new(None),
        }
    }
}

impl MemoryPubSub {
    fn with_node(&self, f: impl FnOnce(&mut MemoryNode)) {
        let Some(id) = *self.id.lock() else { return };
        if let Some(n) = self.bus.nodes.lock().iter_mut().find(|n| n.id == id) {
            f(n);
        }
    }
}

impl PubSub for MemoryPubSub {
    fn start(&self, hooks: PubSubHooks) {
        *self.id.lock() = Some(hooks.node_id);
        hooks.connected.set(1);
        self.bus.nodes.lock().push(MemoryNode {
            id: hooks.node_id,
            deliver: hooks.deliver,
            streams: Default::default(),
        });
    }

    fn publish(&self, stream: &str, envelope: String) {
        let Some(origin) = *self.id.lock() else {
            return;
        };
        let Some(e) = decode_envelope(&envelope) else {
            return;
        };
        let position = e.position();
        // Snapshot the receivers, then deliver without holding the bus lock.
        let targets: Vec<Deliver> = self
            .bus
            .nodes
            .lock()
            .iter()
            .filter(|n| n.id != origin && n.streams.contains(stream))
            .map(|n| n.deliver.clone())
            .collect();
        for deliver in targets {
            deliver(stream, e.message.get(), position.as_ref());
        }
    }

    fn subscribe(&self, stream: &str) {
        self.with_node(|n| {
            n.streams.insert(stream.to_owned());
        });
    }

    fn unsubscribe(&self, stream: &str) {
        self.with_node(|n| {
            n.streams.remove(stream);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_garbage_is_refused() {
        let text = encode_envelope(7, "chat \"1\"", r#"{"a":[1,2]}"#, None);
        let e = decode_envelope(&text).unwrap();
        assert_eq!(
            (e.origin, e.stream.as_str(), e.message.get(), e.position()),
            (7, "chat \"1\"", r#"{"a":[1,2]}"#, None)
        );
        let at = StreamPosition {
            epoch: "ep".into(),
            offset: 9,
        };
        let e = decode_envelope(&encode_envelope(7, "s", "1", Some(&at))).unwrap();
        assert_eq!(e.position(), Some(at));
        assert!(decode_envelope("nope").is_none());
        assert!(decode_envelope(r#"{"o":1,"s":"x"}"#).is_none());
    }
}
