//! Stream history for reliable delivery: every stored broadcast gets an epoch and a per-stream
//! offset, and a client that missed messages asks for everything after its last position.
//!
//! The rules clients rely on: offsets rise by one per stream; the epoch is random per broker
//! start, so a history that was lost (restart) can never look recoverable; a request with a
//! stale epoch or an evicted offset is **rejected**, never answered with a guess.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

/// Where a message sits in its stream's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    /// The history's epoch.
    pub epoch: String,
    /// The message's offset (the first message of an epoch has offset 1).
    pub offset: u64,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Its offset.
    pub offset: u64,
    /// When it was stored (milliseconds since the Unix epoch).
    pub at_ms: u64,
    /// The message JSON.
    pub message: Bytes,
}

/// Why history cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The client's epoch is not the current one: its position means nothing now.
    #[error("epoch mismatch")]
    EpochMismatch,
    /// Messages after the client's offset were evicted (count or age limit).
    #[error("history no longer holds the requested offset")]
    Evicted,
}

/// Limits of the in-memory history (AnyCable's defaults: 100 messages, 300 s per stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages kept per stream.
    pub max_messages: usize,
    /// Age after which a message is evicted.
    pub ttl: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_messages: 100,
            ttl: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Default)]
struct Ring {
    last_offset: u64,
    entries: VecDeque<HistoryEntry>,
}

/// In-memory history ring per stream.
#[derive(Debug)]
pub struct MemoryBroker {
    epoch: String,
    limits: HistoryLimits,
    streams: Mutex<HashMap<String, Ring>>,
}

impl MemoryBroker {
    /// A broker with a fresh random epoch.
    pub fn new(limits: HistoryLimits) -> Self {
        let seed = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            std::time::SystemTime::now(),
        );
        MemoryBroker {
            epoch: format!("{:x}", seed & 0xffff_ffff_ffff),
            limits,
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn evict(&self, ring: &mut Ring, now_ms: u64) {
        let ttl = self.limits.ttl.as_millis() as u64;
        while ring.entries.len() > self.limits.max_messages
            || ring
                .entries
                .front()
                .is_some_and(|e| e.at_ms + ttl <= now_ms)
        {
            ring.entries.pop_front();
        }
    }

    /// Stores `message` for `stream` at time `now_ms`; returns its position.
    pub fn append(&self, stream: &str, message: Bytes, now_ms: u64) -> StreamPosition {
        let mut streams = self.streams.lock();
        let ring = streams.entry(stream.to_owned()).or_default();
        ring.last_offset += 1;
        let offset = ring.last_offset;
        ring.entries.push_back(HistoryEntry {
            offset,
            at_ms: now_ms,
            message,
        });
        self.evict(ring, now_ms);
        StreamPosition {
            epoch: self.epoch.clone(),
            offset,
        }
    }

    /// Every stored message after `position` (exclusive), or a rejection.
    pub fn since_position(
        &self,
        stream: &str,
        position: &StreamPosition,
        now_ms: u64,
    ) -> Result<Vec<HistoryEntry>, HistoryError> {
        if position.epoch != self.epoch {
            return Err(HistoryError::EpochMismatch);
        }
        let mut streams = self.streams.lock();
        let Some(ring) = streams.get_mut(stream) else {
            return if position.offset == 0 {
                Ok(Vec::new())
            } else {
                Err(HistoryError::Evicted)
            };
        };
        self.evict(ring, now_ms);
        if position.offset > ring.last_offset {
            return Err(HistoryError::EpochMismatch);
        }
        if position.offset == ring.last_offset {
            return Ok(Vec::new());
        }
        // The next message the client needs must still be here.
        match ring.entries.front() {
            Some(first) if first.offset <= position.offset + 1 => {}
            _ => return Err(HistoryError::Evicted),
        }
        Ok(ring
            .entries
            .iter()
            .filter(|e| e.offset > position.offset)
            .cloned()
            .collect())
    }

    /// Every stored message at or after `since_ms`.
    pub fn since_time(&self, stream: &str, since_ms: u64, now_ms: u64) -> Vec<HistoryEntry> {
        let mut streams = self.streams.lock();
        let Some(ring) = streams.get_mut(stream) else {
            return Vec::new();
        };
        self.evict(ring, now_ms);
        ring.entries
            .iter()
            .filter(|e| e.at_ms >= since_ms)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    #[test]
    fn offsets_rise_per_stream_and_replay_is_exclusive() {
        let b = MemoryBroker::new(HistoryLimits::default());
        let p1 = b.append("a", msg("1"), 1000);
        let p2 = b.append("a", msg("2"), 1001);
        let q1 = b.append("b", msg("x"), 1002);
        assert_eq!((p1.offset, p2.offset, q1.offset), (1, 2, 1));
        let got = b.since_position("a", &p1, 1003).unwrap();
        assert_eq!(got.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![2]);
        assert!(b.since_position("a", &p2, 1003).unwrap().is_empty());
        let zero = StreamPosition {
            epoch: b.epoch().into(),
            offset: 0,
        };
        assert_eq!(b.since_position("a", &zero, 1003).unwrap().len(), 2);
    }

    #[test]
    fn stale_epochs_and_evicted_offsets_are_rejected_never_guessed() {
        let b = MemoryBroker::new(HistoryLimits {
            max_messages: 3,
            ttl: Duration::from_secs(300),
        });
        for i in 0..5 {
            b.append("a", msg(&i.to_string()), 1000);
        }
        let stale = StreamPosition {
            epoch: "other".into(),
            offset: 4,
        };
        assert_eq!(
            b.since_position("a", &stale, 1000),
            Err(HistoryError::EpochMismatch)
        );
        let evicted = StreamPosition {
            epoch: b.epoch().into(),
            offset: 1,
        };
        assert_eq!(
            b.since_position("a", &evicted, 1000),
            Err(HistoryError::Evicted)
        );
        let kept = StreamPosition {
            epoch: b.epoch().into(),
            offset: 2,
        };
        assert_eq!(b.since_position("a", &kept, 1000).unwrap().len(), 3);
        let future = StreamPosition {
            epoch: b.epoch().into(),
            offset: 99,
        };
        assert_eq!(
            b.since_position("a", &future, 1000),
            Err(HistoryError::EpochMismatch)
        );
    }

    #[test]
    fn messages_expire_and_time_queries_see_what_is_left() {
        let b = MemoryBroker::new(HistoryLimits {
            max_messages: 100,
            ttl: Duration::from_secs(10),
        });
        let p = b.append("a", msg("old"), 0);
        b.append("a", msg("new"), 9_000);
        assert_eq!(b.since_time("a", 0, 9_500).len(), 2);
        assert_eq!(b.since_time("a", 0, 12_000).len(), 1, "the old one expired");
        let before = StreamPosition {
            epoch: p.epoch.clone(),
            offset: 0,
        };
        assert_eq!(
            b.since_position("a", &before, 12_000),
            Err(HistoryError::Evicted)
        );
        assert_eq!(b.since_position("a", &p, 12_000).unwrap().len(), 1);
        assert_ne!(
            MemoryBroker::new(HistoryLimits::default()).epoch(),
            b.epoch(),
            "a new broker is a new epoch"
        );
    }
}
