//! The hub: a sharded stream → subscribers registry and the broadcast fan-out.
//!
//! A stream name hashes onto one of N shards, each behind its own lock. Subscribers of a
//! stream are grouped by channel identifier, because the frame a subscriber receives
//! depends only on (stream message, identifier): a broadcast is encoded **once per group**
//! into shared [`Bytes`] and every member's outbox gets a clone of the same bytes.
//! Fan-out only `try_push`es (no `.await`), so a shard lock is never held across a
//! suspension point and a slow client never slows the others.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use ferrocable_protocol::{Identifier, encode_data_frame, encode_json_string};
use parking_lot::RwLock;
use serde_json::value::RawValue;

use crate::outbox::{Outbox, PushError};

/// A connection's id, unique within a node.
pub type ConnId = u64;

/// Subscribers of one stream that share an identifier, and so share the encoded frame.
#[derive(Debug)]
struct Group {
    /// The identifier, pre-encoded as a JSON string literal for the data frame.
    identifier_literal: Box<str>,
    identifier: Identifier,
    members: HashMap<ConnId, Arc<Outbox>>,
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
        let groups = match shard.get_mut(stream) {
            Some(g) => g,
            None => shard.entry(Arc::from(stream)).or_default(),
        };
        let group = match groups.iter().position(|g| &g.identifier == identifier) {
            Some(i) => &mut groups[i],
            None => {
                groups.push(Group {
                    identifier_literal: encode_json_string(identifier.as_str()).into(),
                    identifier: identifier.clone(),
                    members: HashMap::new(),
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
        let removed = groups[i].members.remove(&conn).is_some();
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
        let mut report = BroadcastReport::default();
        let shard = self.shard(stream).read();
        let Some(groups) = shard.get(stream) else {
            return report;
        };
        for group in groups {
            let frame = encode_data_frame(&group.identifier_literal, message.get());
            report.encoded += 1;
            for (conn, outbox) in &group.members {
                if Some(*conn) == except {
                    continue;
                }
                match outbox.try_push(frame.clone()) {
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
            .map(|f| String::from_utf8(f.to_vec()).unwrap())
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
            .map(|o| o.take().frames.pop_front().unwrap())
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
