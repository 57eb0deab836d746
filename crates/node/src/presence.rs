//! Presence, as AnyCable 1.6's extended protocol has it: who is on a stream.
//!
//! A subscription with a presence stream `P` (a `$pubsub` stream, or a Rust channel that calls
//! [`crate::ChannelContext::allow_presence`]) is attached to the internal stream
//! `$presence:P` as well; `join` / `leave` become *ops* broadcast on that stream (to this node
//! and, through the bus, to every node with a subscriber), and every node applies them to its
//! own copy of the records. A node turns an op into a client event only when it changes what
//! is visible: `join` for an id nobody held, `leave` when the id's last holder (a connection
//! of any node) is gone. So one user in three tabs, on two nodes, is one record.
//!
//! A connection that drops without leaving keeps its records for the presence TTL
//! (`ANYCABLE_PRESENCE_TTL`, 15 s), so a reconnect does not flap; a node that starts listening
//! to a presence stream asks the others for what they hold (`sync`). Records per stream are
//! bounded (`max_presence_per_stream`): a join past the bound is refused with
//! `presence_limit`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::hub::ConnId;

/// Prefix of the internal stream that carries a presence stream's ops.
pub(crate) const PRESENCE_PREFIX: &str = "$presence:";

/// The internal stream of presence stream `stream`.
pub(crate) fn ops_stream(stream: &str) -> String {
    format!("{PRESENCE_PREFIX}{stream}")
}

/// A holder of a record: a connection of a node.
type Holder = (u64, ConnId);

#[derive(Debug)]
struct Record {
    info: Box<RawValue>,
    /// The connections (of any node) that joined as this id.
    holders: HashSet<Holder>,
}

/// What an op means for clients: an event to send, or nothing.
pub(crate) enum Applied {
    /// Nothing visible changed.
    Quiet,
    /// Send this event (`{"type":"join"|"leave",…}`) to the stream's local subscribers.
    Event(Box<RawValue>),
    /// Another node asked for our records: publish these ops.
    Answer(Vec<String>),
    /// Not an op (a peer's bug or a foreign publisher on the stream): refused, nothing changed.
    Malformed,
}

/// Why a local join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinRefused {
    /// The stream holds the most records it may.
    Full,
}

/// This node's view of every presence stream it listens to.
#[derive(Debug)]
pub(crate) struct PresenceRegistry {
    node: u64,
    streams: Mutex<HashMap<String, HashMap<String, Record>>>,
    /// Streams this node started listening to since the last sweep: their `sync` is sent
    /// again then, in case the first went out before the bus subscription was in place.
    resync: Mutex<Vec<String>>,
    /// Local holders that dropped without leaving, by deadline (the TTL is fixed, so in
    /// order): the sweep pops the due ones instead of scanning every record.
    dropped: Mutex<VecDeque<(Instant, String, ConnId, String)>>,
    max_per_stream: usize,
    ttl: Duration,
}

fn raw(json: String) -> Box<RawValue> {
    // Only called with JSON we built or checked.
    RawValue::from_string(json)
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"))
}

fn str_field<'a>(op: &'a Value, name: &str) -> Option<&'a str> {
    op.get(name).and_then(Value::as_str)
}

impl PresenceRegistry {
    pub(crate) fn new(node: u64, max_per_stream: usize, ttl: Duration) -> Self {
        PresenceRegistry {
            node,
            streams: Mutex::new(HashMap::new()),
            resync: Mutex::new(Vec::new()),
            dropped: Mutex::new(VecDeque::new()),
            max_per_stream: max_per_stream.max(1),
            ttl,
        }
    }

    /// The op a local `join` publishes, or why it may not.
    pub(crate) fn join_op(
        &self,
        ops: &str,
        conn: ConnId,
        id: &str,
        info: &str,
    ) -> Result<String, JoinRefused> {
        let streams = self.streams.lock();
        if let Some(records) = streams.get(ops)
            && records.len() >= self.max_per_stream
            && !records.contains_key(id)
        {
            return Err(JoinRefused::Full);
        }
        Ok(format!(
            r#"{{"op":"join","id":{},"info":{info},"n":{},"c":{conn}}}"#,
            ferrocable_protocol::encode_json_string(id),
            self.node
        ))
    }

    /// The op a local `leave` (or an expiry) publishes.
    pub(crate) fn leave_op(&self, conn: ConnId, id: &str) -> String {
        format!(
            r#"{{"op":"leave","id":{},"n":{},"c":{conn}}}"#,
            ferrocable_protocol::encode_json_string(id),
            self.node
        )
    }

    /// Remembers to ask for `ops`'s records once more at the next sweep.
    pub(crate) fn resync_later(&self, ops: &str) {
        let mut resync = self.resync.lock();
        // Bounded by the streams this node starts listening to within one sweep period.
        if resync.len() < 10_000 {
            resync.push(ops.to_owned());
        }
    }

    /// The streams to ask again (see [`PresenceRegistry::resync_later`]).
    pub(crate) fn take_resync(&self) -> Vec<String> {
        std::mem::take(&mut *self.resync.lock())
    }

    /// The op that asks other nodes for their records.
    pub(crate) fn sync_op(&self) -> String {
        format!(r#"{{"op":"sync","n":{}}}"#, self.node)
    }

    /// Applies an op (ours or another node's) to stream `ops`.
    pub(crate) fn apply(&self, ops: &str, op: &str) -> Applied {
        let Ok(op) = serde_json::from_str::<Value>(op) else {
            return Applied::Malformed;
        };
        let node = op.get("n").and_then(Value::as_u64);
        let conn = op.get("c").and_then(Value::as_u64);
        let mut streams = self.streams.lock();
        match (str_field(&op, "op"), node) {
            (Some("join"), Some(node)) => {
                let (Some(id), Some(conn)) = (str_field(&op, "id"), conn) else {
                    return Applied::Malformed;
                };
                let info = op
                    .get("info")
                    .map_or_else(|| "null".to_owned(), Value::to_string);
                let records = streams.entry(ops.to_owned()).or_default();
                if let Some(record) = records.get_mut(id) {
                    record.holders.insert((node, conn));
                    return Applied::Quiet;
                }
                // Another node's joins are bounded too: a peer past the bound is not followed.
                if records.len() >= self.max_per_stream {
                    return Applied::Quiet;
                }
                let info = raw(info);
                let event = raw(format!(
                    r#"{{"type":"join","id":{},"info":{}}}"#,
                    ferrocable_protocol::encode_json_string(id),
                    info.get()
                ));
                records.insert(
                    id.to_owned(),
                    Record {
                        info,
                        holders: HashSet::from([(node, conn)]),
                    },
                );
                Applied::Event(event)
            }
            (Some("leave"), Some(node)) => {
                let (Some(id), Some(conn)) = (str_field(&op, "id"), conn) else {
                    return Applied::Malformed;
                };
                let Some(records) = streams.get_mut(ops) else {
                    return Applied::Quiet;
                };
                let Some(record) = records.get_mut(id) else {
                    return Applied::Quiet;
                };
                record.holders.remove(&(node, conn));
                if !record.holders.is_empty() {
                    return Applied::Quiet;
                }
                records.remove(id);
                if records.is_empty() {
                    streams.remove(ops);
                }
                Applied::Event(raw(format!(
                    r#"{{"type":"leave","id":{}}}"#,
                    ferrocable_protocol::encode_json_string(id)
                )))
            }
            (Some("sync"), Some(node)) if node != self.node => {
                let Some(records) = streams.get(ops) else {
                    return Applied::Quiet;
                };
                let answer = records
                    .iter()
                    .flat_map(|(id, r)| {
                        r.holders
                            .iter()
                            .filter(|(n, _)| *n == self.node)
                            .map(move |(_, c)| {
                                format!(
                                    r#"{{"op":"join","id":{},"info":{},"n":{},"c":{c}}}"#,
                                    ferrocable_protocol::encode_json_string(id),
                                    r.info.get(),
                                    self.node
                                )
                            })
                    })
                    .collect::<Vec<_>>();
                if answer.is_empty() {
                    Applied::Quiet
                } else {
                    Applied::Answer(answer)
                }
            }
            (Some("sync"), Some(_)) => Applied::Quiet,
            _ => Applied::Malformed,
        }
    }

    /// `{"type":"info","total":N,"records":[{"id":…,"info":…}]}` for stream `ops`.
    pub(crate) fn info(&self, ops: &str) -> Box<RawValue> {
        let streams = self.streams.lock();
        let mut out = String::from(r#"{"type":"info","total":"#);
        let records = streams.get(ops);
        out.push_str(&records.map_or(0, HashMap::len).to_string());
        out.push_str(r#","records":["#);
        if let Some(records) = records {
            for (i, (id, r)) in records.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&format!(
                    r#"{{"id":{},"info":{}}}"#,
                    ferrocable_protocol::encode_json_string(id),
                    r.info.get()
                ));
            }
        }
        out.push_str("]}");
        raw(out)
    }

    /// A local connection dropped without leaving: its records expire after the TTL.
    /// At most one entry per holder (a dropped connection is dropped once).
    pub(crate) fn dropped(&self, ops: &str, conn: ConnId, id: &str) {
        let held = self
            .streams
            .lock()
            .get(ops)
            .and_then(|r| r.get(id))
            .is_some_and(|r| r.holders.contains(&(self.node, conn)));
        if held {
            let deadline = Instant::now() + self.ttl;
            self.dropped
                .lock()
                .push_back((deadline, ops.to_owned(), conn, id.to_owned()));
        }
    }

    /// Forgets streams with no local listener (`unwatched`) and no local holder: a node
    /// keeps no records of streams it no longer hears about.
    pub(crate) fn forget_unwatched(&self, unwatched: impl Fn(&str) -> bool) {
        let node = self.node;
        self.streams.lock().retain(|ops, records| {
            !unwatched(ops)
                || records
                    .values()
                    .any(|r| r.holders.iter().any(|(n, _)| *n == node))
        });
    }

    /// Local holders whose TTL ran out, as (ops stream, conn, id): the caller publishes their
    /// leave ops.
    pub(crate) fn expired(&self, now: Instant) -> Vec<(String, ConnId, String)> {
        let mut dropped = self.dropped.lock();
        let mut out = Vec::new();
        while dropped
            .front()
            .is_some_and(|(deadline, ..)| *deadline <= now)
        {
            if let Some((_, ops, conn, id)) = dropped.pop_front() {
                out.push((ops, conn, id));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(a: Applied) -> Option<String> {
        match a {
            Applied::Event(e) => Some(e.get().to_owned()),
            _ => None,
        }
    }

    #[test]
    fn one_record_per_id_across_tabs_and_nodes() {
        let here = PresenceRegistry::new(1, 10, Duration::from_secs(15));
        let join = here
            .join_op("$presence:room", 7, "42", r#"{"name":"Ada"}"#)
            .unwrap();
        assert_eq!(
            event(here.apply("$presence:room", &join)).as_deref(),
            Some(r#"{"type":"join","id":"42","info":{"name":"Ada"}}"#)
        );
        // A second tab here and a tab on node 2: no new event.
        let tab2 = here.join_op("$presence:room", 8, "42", "null").unwrap();
        assert!(event(here.apply("$presence:room", &tab2)).is_none());
        let there = r#"{"op":"join","id":"42","info":null,"n":2,"c":7}"#;
        assert!(event(here.apply("$presence:room", there)).is_none());
        // Leaves: only the last holder's is an event.
        assert!(event(here.apply("$presence:room", &here.leave_op(7, "42"))).is_none());
        assert!(event(here.apply("$presence:room", &here.leave_op(8, "42"))).is_none());
        assert_eq!(
            event(here.apply("$presence:room", r#"{"op":"leave","id":"42","n":2,"c":7}"#))
                .as_deref(),
            Some(r#"{"type":"leave","id":"42"}"#)
        );
        assert_eq!(
            here.info("$presence:room").get(),
            r#"{"type":"info","total":0,"records":[]}"#
        );
    }

    #[test]
    fn a_dropped_connection_leaves_after_the_ttl_and_a_full_stream_refuses() {
        let r = PresenceRegistry::new(1, 2, Duration::ZERO);
        for (conn, id) in [(1, "a"), (2, "b")] {
            let op = r.join_op("$presence:s", conn, id, "1").unwrap();
            r.apply("$presence:s", &op);
        }
        assert_eq!(
            r.join_op("$presence:s", 3, "c", "1"),
            Err(JoinRefused::Full)
        );
        assert!(
            r.join_op("$presence:s", 3, "a", "1").is_ok(),
            "an id already there"
        );
        // A peer's join past the bound is not followed either.
        assert!(event(r.apply("$presence:s", r#"{"op":"join","id":"z","n":9,"c":1}"#)).is_none());
        assert!(r.expired(Instant::now()).is_empty(), "nothing dropped yet");
        r.dropped("$presence:s", 1, "a");
        assert_eq!(
            r.expired(Instant::now()),
            [("$presence:s".to_owned(), 1, "a".to_owned())]
        );
    }

    #[test]
    fn sync_is_answered_with_our_own_holders_only() {
        let r = PresenceRegistry::new(1, 10, Duration::from_secs(15));
        let op = r.join_op("$presence:s", 5, "a", r#"{"x":1}"#).unwrap();
        r.apply("$presence:s", &op);
        r.apply("$presence:s", r#"{"op":"join","id":"b","n":2,"c":1}"#);
        match r.apply("$presence:s", r#"{"op":"sync","n":3}"#) {
            Applied::Answer(ops) => assert_eq!(ops, [op]),
            _ => panic!("no answer"),
        }
        assert!(matches!(
            r.apply("$presence:s", &r.sync_op()),
            Applied::Quiet
        ));
        for junk in [
            "",
            "[]",
            r#"{"op":"join"}"#,
            r#"{"op":"leave","id":"a"}"#,
            r#"{"op":"x","n":2}"#,
        ] {
            assert!(
                matches!(r.apply("$presence:s", junk), Applied::Malformed),
                "{junk}"
            );
        }
    }
}
