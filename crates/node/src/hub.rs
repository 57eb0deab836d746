//! The hub: a sharded stream → subscribers registry and the broadcast fan-out.
//!
//! A stream name hashes onto one of N shards, each behind its own lock. Subscribers of a
//! stream are grouped by channel identifier, because the frame a subscriber receives
//! depends only on (stream message, identifier): a broadcast is encoded **once per group**
//! as a complete WebSocket frame in shared [`Bytes`](bytes::Bytes), and every member's outbox gets the same
//! bytes (written straight to the socket when nothing is queued there).
//! Fan-out only `try_push`es (no `.await`), so a shard lock is never held across a
//! suspension point and a slow client never slows the others.
//!
//! A group keeps its members in the order they subscribed (an `IndexMap`, not a hash map):
//! the fan-out then walks outboxes, and the kernel's sockets, in the order they were
//! allocated rather than at random. Against the hash map, alternated with the floor on this
//! 2-core box (`bench/fanout-cpu.py`, 30 rounds, pings off): user CPU per delivery 0.66 → 0.42
//! µs at 19,000 subscribers and 0.60 → 0.42 at 10,000, user + kernel 0.96x / 0.95x
//! (docs/benchmarks.md, "Fan-out in subscription order").

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use ferrocable_protocol::{
    Identifier, StreamPosition, encode_data_frame, encode_data_frame_at, encode_json_string,
};
use ferrocable_websocket::frame;
use indexmap::IndexMap;
use parking_lot::RwLock;
use serde_json::value::RawValue;

use crate::outbox::{OutFrame, Outbox, PushError, StreamKey};

/// A connection's id, unique within a node.
pub type ConnId = u64;

/// Subscribers of one stream that share an identifier, and so share the encoded frame.
#[derive(Debug)]
struct Group {
    /// The identifier, pre-encoded as a JSON string literal for the data frame.
    identifier_literal: Box<str>,
    identifier: Identifier,
    /// (stream, identifier), shared by every frame of a stored message sent to this group.
    key: Arc<StreamKey>,
    /// In the order they subscribed: the fan-out walks connections (and the sockets and
    /// outboxes they allocated) in that order rather than in hash order.
    members: IndexMap<ConnId, Arc<Outbox>>,
}

type Shard = HashMap<Arc<str>, Vec<Group>>;

/// Sharded stream → subscribers registry with encode-once fan-out.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[RwLock<Shard>]>,
    hasher: std::hash::RandomState,
}

/// What one broadcast did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BroadcastReport {
    /// Frames queued to subscribers.
    pub delivered: usize,
    /// Subscribers whose outbox overflowed (they will be disconnected as too slow).
    pub overflowed: usize,
    /// Frames encoded (one per identifier group).
    pub encoded: usize,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(64)
    }
}

impl Hub {
    /// Creates a hub with `shards` shards (at least one).
    pub fn new(shards: usize) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| RwLock::new(HashMap::new()))
            .collect();
        Hub {
            shards,
            hasher: std::hash::RandomState::new(),
        }
    }

    fn shard(&self, stream: &str) -> &RwLock<Shard> {
        let h = self.hasher.hash_one(stream);
        &self.shards[(h % self.shards.len() as u64) as usize]
    }

    /// Attaches a subscription (connection + identifier) to a stream. Returns `false` if it
    /// was attached already. When this returns, broadcasts to the stream reach the outbox.
    pub fn subscribe(
        &self,
        stream: &str,
        conn: ConnId,
        identifier: &Identifier,
        outbox: &Arc<Outbox>,
    ) -> bool {
        self.attach(stream, conn, identifier, outbox).0
    }

    /// Like [`Hub::subscribe`], also telling whether this was the stream's first subscriber
    /// on this node (the moment to subscribe the node to the stream on the pubsub bus).
    pub fn attach(
        &self,
        stream: &str,
        conn: ConnId,
        identifier: &Identifier,
        outbox: &Arc<Outbox>,
    ) -> (bool, bool) {
        let mut shard = self.shard(stream).write();
        let first = !shard.contains_key(stream);
        let stream_name: Arc<str> = match shard.get_key_value(stream) {
            Some((k, _)) => k.clone(),
            None => Arc::from(stream),
        };
        let groups = shard.entry(stream_name.clone()).or_default();
        let group = match groups.iter().position(|g| &g.identifier == identifier) {
            Some(i) => &mut groups[i],
            None => {
                groups.push(Group {
                    identifier_literal: encode_json_string(identifier.as_str()).into(),
                    identifier: identifier.clone(),
                    key: Arc::new(StreamKey {
                        stream: stream_name,
                        identifier: identifier.clone(),
                    }),
                    members: IndexMap::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        (group.members.insert(conn, outbox.clone()).is_none(), first)
    }

    /// Detaches a subscription from a stream. Returns `false` if it was not attached.
    pub fn unsubscribe(&self, stream: &str, conn: ConnId, identifier: &Identifier) -> bool {
        self.detach(stream, conn, identifier).0
    }

    /// Like [`Hub::unsubscribe`], also telling whether the stream has no subscriber left on
    /// this node.
    pub fn detach(&self, stream: &str, conn: ConnId, identifier: &Identifier) -> (bool, bool) {
        let mut shard = self.shard(stream).write();
        let Some(groups) = shard.get_mut(stream) else {
            return (false, false);
        };
        let Some(i) = groups.iter().position(|g| &g.identifier == identifier) else {
            return (false, false);
        };
        let removed = groups[i].members.swap_remove(&conn).is_some();
        if groups[i].members.is_empty() {
            groups.swap_remove(i);
        }
        let last = groups.is_empty();
        if last {
            shard.remove(stream);
        }
        (removed, last)
    }

    /// Delivers `message` (JSON) to every subscription of `stream`, skipping connection
    /// `except` if given. The data frame is encoded once per identifier.
    pub fn broadcast(
        &self,
        stream: &str,
        message: &RawValue,
        except: Option<ConnId>,
    ) -> BroadcastReport {
        self.broadcast_at(stream, message, except, None)
    }

    /// Like [`Hub::broadcast`] for a message stored in the history at `position`: the frame
    /// carries `stream_id`, `epoch` and `offset`.
    pub fn broadcast_at(
        &self,
        stream: &str,
        message: &RawValue,
        except: Option<ConnId>,
        position: Option<&StreamPosition>,
    ) -> BroadcastReport {
        let mut report = BroadcastReport::default();
        let shard = self.shard(stream).read();
        let Some(groups) = shard.get(stream) else {
            return report;
        };
        let literals = position.map(|p| {
            (
                encode_json_string(stream),
                encode_json_string(&p.epoch),
                p.offset,
            )
        });
        for group in groups {
            // Plain and positioned frames are each encoded at most once per group.
            let mut plain: Option<OutFrame> = None;
            let mut positioned: Option<OutFrame> = None;
            for (conn, outbox) in &group.members {
                if Some(*conn) == except {
                    continue;
                }
                let frame = match &literals {
                    Some((stream_literal, epoch_literal, offset)) if outbox.wants_positions() => {
                        &*positioned.get_or_insert_with(|| {
                            report.encoded += 1;
                            OutFrame::Live {
                                bytes: frame::text(&encode_data_frame_at(
                                    &group.identifier_literal,
                                    message.get(),
                                    stream_literal,
                                    epoch_literal,
                                    *offset,
                                )),
                                key: group.key.clone(),
                                offset: *offset,
                            }
                        })
                    }
                    _ => &*plain.get_or_insert_with(|| {
                        report.encoded += 1;
                        OutFrame::Plain(frame::text(&encode_data_frame(
                            &group.identifier_literal,
                            message.get(),
                        )))
                    }),
                };
                match outbox.try_push_shared(frame) {
                    Ok(()) => report.delivered += 1,
                    Err(PushError::Overflow) => report.overflowed += 1,
                    Err(PushError::Closed) => {}
                }
            }
        }
        report
    }

    /// Delivers `message` to every subscription of `stream` as a typed frame,
    /// `{"type":T,"identifier":I,"message":M}` (presence events), encoded once per identifier.
    pub(crate) fn broadcast_typed(
        &self,
        stream: &str,
        frame_type: &str,
        message: &RawValue,
    ) -> BroadcastReport {
        let mut report = BroadcastReport::default();
        let shard = self.shard(stream).read();
        let Some(groups) = shard.get(stream) else {
            return report;
        };
        let type_literal = encode_json_string(frame_type);
        for group in groups {
            let typed = OutFrame::Plain(frame::text(
                format!(
                    "{{\"type\":{type_literal},\"identifier\":{},\"message\":{}}}",
                    group.identifier_literal,
                    message.get()
                )
                .as_bytes(),
            ));
            report.encoded += 1;
            for outbox in group.members.values() {
                match outbox.try_push_shared(&typed) {
                    Ok(()) => report.delivered += 1,
                    Err(PushError::Overflow) => report.overflowed += 1,
                    Err(PushError::Closed) => {}
                }
            }
        }
        report
    }

    /// Subscriptions attached to `stream` (all identifiers).
    pub fn subscriber_count(&self, stream: &str) -> usize {
        self.shard(stream)
            .read()
            .get(stream)
            .map_or(0, |gs| gs.iter().map(|g| g.members.len()).sum())
    }

    /// Streams with at least one subscriber.
    pub fn stream_count(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    /// The connections of `stream` in the order the fan-out visits them.
    #[cfg(test)]
    fn fanout_order(&self, stream: &str) -> Vec<ConnId> {
        self.shard(stream)
            .read()
            .get(stream)
            .map_or(Vec::new(), |gs| {
                gs.iter().flat_map(|g| g.members.keys().copied()).collect()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxLimits;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(OutboxLimits::default()))
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn texts(o: &Outbox) -> Vec<String> {
        o.take()
            .frames
            .iter()
            .map(|f| String::from_utf8(frame::payload_of(f.bytes()).to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn broadcast_reaches_every_subscriber_with_its_identifier() {
        let hub = Hub::new(4);
        let a = Identifier::new(r#"{"channel":"Chat","room":1}"#);
        let b = Identifier::new(r#"{"room":1,"channel":"Chat"}"#);
        let (o1, o2, o3) = (outbox(), outbox(), outbox());
        assert!(hub.subscribe("room1", 1, &a, &o1));
        assert!(hub.subscribe("room1", 2, &a, &o2));
        assert!(hub.subscribe("room1", 3, &b, &o3));
        let r = hub.broadcast("room1", &raw(r#"{"t":"hi"}"#), None);
        assert_eq!(
            r,
            BroadcastReport {
                delivered: 3,
                overflowed: 0,
                encoded: 2
            }
        );
        assert_eq!(
            texts(&o1),
            vec![r#"{"identifier":"{\"channel\":\"Chat\",\"room\":1}","message":{"t":"hi"}}"#]
        );
        assert_eq!(texts(&o2).len(), 1);
        assert_eq!(
            texts(&o3),
            vec![r#"{"identifier":"{\"room\":1,\"channel\":\"Chat\"}","message":{"t":"hi"}}"#]
        );
    }

    #[test]
    fn subscribers_share_one_encoding() {
        let hub = Hub::new(1);
        let id = Identifier::new(r#"{"channel":"C"}"#);
        let outs: Vec<_> = (0..10).map(|_| outbox()).collect();
        for (i, o) in outs.iter().enumerate() {
            hub.subscribe("s", i as u64, &id, o);
        }
        hub.broadcast("s", &raw("1"), None);
        let frames: Vec<_> = outs
            .iter()
            .map(|o| o.take().frames.pop_front().unwrap().into_bytes())
            .collect();
        // Same backing buffer: Bytes clones, not copies.
        assert!(frames.windows(2).all(|w| w[0].as_ptr() == w[1].as_ptr()));
    }

    #[test]
    fn duplicate_subscribe_is_harmless_and_unsubscribe_detaches() {
        let hub = Hub::new(2);
        let id = Identifier::new(r#"{"channel":"C"}"#);
        let o = outbox();
        assert!(hub.subscribe("s", 1, &id, &o));
        assert!(!hub.subscribe("s", 1, &id, &o));
        assert_eq!(hub.broadcast("s", &raw("1"), None).delivered, 1);
        assert!(hub.unsubscribe("s", 1, &id));
        assert!(!hub.unsubscribe("s", 1, &id));
        assert_eq!(hub.broadcast("s", &raw("1"), None).delivered, 0);
        assert_eq!(hub.stream_count(), 0);
    }

    #[test]
    fn except_skips_one_connection() {
        let hub = Hub::new(2);
        let id = Identifier::new(r#"{"channel":"C"}"#);
        let (o1, o2) = (outbox(), outbox());
        hub.subscribe("s", 1, &id, &o1);
        hub.subscribe("s", 2, &id, &o2);
        assert_eq!(hub.broadcast("s", &raw("1"), Some(1)).delivered, 1);
        assert!(o1.is_empty());
        assert_eq!(o2.len(), 1);
    }

    #[test]
    fn a_full_outbox_does_not_stop_the_others() {
        let hub = Hub::new(1);
        let id = Identifier::new(r#"{"channel":"C"}"#);
        let slow = Arc::new(Outbox::new(OutboxLimits {
            max_bytes: 100,
            max_frames: 1,
        }));
        let fast = outbox();
        hub.subscribe("s", 1, &id, &slow);
        hub.subscribe("s", 2, &id, &fast);
        for _ in 0..5 {
            hub.broadcast("s", &raw("1"), None);
        }
        assert!(slow.take().overflowed);
        assert_eq!(fast.take().frames.len(), 5);
    }

    #[test]
    fn the_fan_out_visits_subscribers_in_the_order_they_subscribed() {
        let hub = Hub::new(1);
        let id = Identifier::new(r#"{"channel":"C"}"#);
        let o = outbox();
        for conn in 1..=1000 {
            hub.subscribe("s", conn, &id, &o);
        }
        assert_eq!(hub.fanout_order("s"), (1..=1000).collect::<Vec<_>>());
        // Leaving moves the newest subscriber into the gap; the rest keep their places.
        hub.unsubscribe("s", 10, &id);
        let mut expected: Vec<ConnId> = (1..=999).collect();
        expected[9] = 1000;
        assert_eq!(hub.fanout_order("s"), expected);
    }

    #[test]
    fn streams_are_independent() {
        let hub = Hub::new(8);
        let id = Identifier::new(r#"{"channel":"C"}"#);
        let (o1, o2) = (outbox(), outbox());
        hub.subscribe("a", 1, &id, &o1);
        hub.subscribe("b", 2, &id, &o2);
        hub.broadcast("a", &raw("1"), None);
        assert_eq!(o1.len(), 1);
        assert!(o2.is_empty());
        assert_eq!(hub.subscriber_count("a"), 1);
        assert_eq!(hub.subscriber_count("zzz"), 0);
    }
}
