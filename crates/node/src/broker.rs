//! The broker: stream history for reliable delivery, and the session cache that lets a
//! client of the extended protocol restore its subscriptions after a reconnect.
//!
//! The rules clients rely on: offsets rise by one per stream; the epoch is random per
//! storage generation, so a history that was lost (restart, flush) can never look
//! recoverable; a request with a stale epoch or an evicted offset is **rejected**, never
//! answered with a guess.
//!
//! [`Broker`] is the port; [`MemoryBroker`] the single-node implementation. Backends that
//! share history across nodes (Redis Streams, NATS JetStream) live in their own crates and
//! pass the same conformance suite.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
pub use ferrocable_protocol::StreamPosition;
use parking_lot::Mutex;

use crate::BoxFuture;

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

/// Messages replayed for one stream, with the epoch they belong to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The epoch of every entry.
    pub epoch: String,
    /// Entries in offset order.
    pub entries: Vec<HistoryEntry>,
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

/// The error under a [`BrokerError`]: the backend's own error (or a message where there is
/// none), kept whole for the log's cause chain and shared so the error stays `Clone`.
pub type Cause = std::sync::Arc<dyn std::error::Error + Send + Sync>;

/// A [`Cause`] from a backend error or a message.
pub fn cause(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Cause {
    std::sync::Arc::from(e.into())
}

/// A backend (a broker, a bus) could not be reached or set up at start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {source}")]
pub struct ConnectError {
    /// What was being set up (`redis broker redis://…`).
    pub what: String,
    /// Why it failed.
    #[source]
    pub source: Cause,
}

impl ConnectError {
    /// `what` failed because of `source`.
    pub fn new(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ConnectError {
            what: what.into(),
            source: cause(source),
        }
    }
}

/// A broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The history cannot answer this request (the client must resynchronise).
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The backend is unreachable or answered with an error.
    #[error("broker unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The backend returned something that is not what this broker stored.
    #[error("broker returned corrupt data: {0}")]
    Corrupt(#[source] Cause),
}

impl PartialEq for BrokerError {
    /// Same kind, and causes that read the same (a cause's type is the backend's own).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (BrokerError::History(a), BrokerError::History(b)) => a == b,
            (BrokerError::Unavailable(a), BrokerError::Unavailable(b))
            | (BrokerError::Corrupt(a), BrokerError::Corrupt(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for BrokerError {}

/// A message registered in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Where it was stored.
    pub position: StreamPosition,
    /// The broker also published it to the other nodes in the same atomic step (a Redis
    /// broker sharing the node's Redis bus); the node must not publish it again.
    pub published: bool,
}

/// Limits of a history (AnyCable's defaults: 100 messages, 300 s per stream) and of the
/// session cache (300 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages kept per stream.
    pub max_messages: usize,
    /// Age after which a message is evicted.
    pub ttl: Duration,
    /// How long a disconnected session can be restored.
    pub sessions_ttl: Duration,
}

impl HistoryLimits {
    /// Whether a message stored at `at_ms` is still served at `now_ms` (the age rule every
    /// broker applies).
    pub fn keeps(&self, at_ms: u64, now_ms: u64) -> bool {
        at_ms.saturating_add(self.ttl.as_millis() as u64) > now_ms
    }
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_messages: 100,
            ttl: Duration::from_secs(300),
            sessions_ttl: Duration::from_secs(300),
        }
    }
}

/// Stream history and session cache. Methods return boxed futures so a node can hold any
/// backend as `Arc<dyn Broker>`; [`Broker::append`]'s future owns its inputs, so the node can
/// poll it once inline (an in-memory broker is done at once) and hand it to its ordered
/// broadcaster task if it is not.
pub trait Broker: Send + Sync + 'static {
    /// Starts the broker's own delivery to this node, for brokers that carry stored
    /// messages between nodes themselves (and answer [`Appended::published`]); called once
    /// by the node with the same hooks a pubsub gets. Default: nothing to start.
    fn start(&self, _hooks: crate::pubsub::PubSubHooks) {}

    /// Stores `message` (JSON) for `stream` and gives it the next offset. `origin` is the
    /// node's bus id, for brokers that publish the message in the same atomic step.
    fn append(
        &self,
        stream: &str,
        message: Bytes,
        origin: crate::pubsub::NodeId,
    ) -> BoxFuture<'static, Result<Appended, BrokerError>>;

    /// Every stored message of `stream` after `position` (exclusive), or a rejection.
    fn history_from<'a>(
        &'a self,
        stream: &'a str,
        position: &'a StreamPosition,
    ) -> BoxFuture<'a, Result<History, BrokerError>>;

    /// Every stored message of `stream` stored at or after `since_secs` (Unix seconds).
    fn history_since<'a>(
        &'a self,
        stream: &'a str,
        since_secs: u64,
    ) -> BoxFuture<'a, Result<History, BrokerError>>;

    /// Keeps a session's state under `sid` for the sessions TTL (replacing an older one).
    fn commit_session<'a>(
        &'a self,
        sid: &'a str,
        state: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Takes the state of session `sid` out of the cache (once: a restored session gets a new
    /// id), or `None` when it expired or never existed.
    fn restore_session<'a>(
        &'a self,
        sid: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, BrokerError>>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A session id for the extended protocol (`sid`): 128 bits from the system CSPRNG, as
/// lowercase hex. A `sid` is a bearer credential (it restores the session, identity included,
/// without authenticating again), so it must be unguessable like a session cookie id.
pub fn new_sid() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // The system RNG does not fail on Linux; should it, a time-seeded id is unique but
        // guessable, so say so rather than panic.
        tracing::error!("system random number generator failed: sid falls back to a weak id");
        return random_token(16);
    }
    let mut out = String::with_capacity(32);
    for b in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// A random epoch or a test name: `bytes` bytes from a randomly seeded hasher, as lowercase
/// hex. Unique, not secret: credentials come from [`new_sid`].
pub fn random_token(bytes: usize) -> String {
    use std::hash::BuildHasher;
    let mut out = String::with_capacity(bytes * 2);
    while out.len() < bytes * 2 {
        let seed = std::collections::hash_map::RandomState::new().hash_one((
            SystemTime::now(),
            std::process::id(),
            out.len(),
        ));
        out.push_str(&format!("{seed:016x}"));
    }
    out.truncate(bytes * 2);
    out
}

/// The time rule every broker applies to a `since` request: the entries stored at or after
/// `since_ms` (milliseconds since the Unix epoch).
pub fn select_since(
    entries: impl IntoIterator<Item = HistoryEntry>,
    since_ms: u64,
) -> Vec<HistoryEntry> {
    entries
        .into_iter()
        .filter(|e| e.at_ms >= since_ms)
        .collect()
}

/// The one rule every broker applies to a position request: `entries` are a stream's
/// unexpired messages in offset order, `last_offset` its newest offset in epoch `epoch`.
/// Returns every entry after the position, or a rejection when the epoch differs, the
/// position is beyond the newest message, or the next message it needs is gone.
pub fn select_after<'a>(
    epoch: &str,
    last_offset: u64,
    entries: impl IntoIterator<Item = &'a HistoryEntry>,
    position: &StreamPosition,
) -> Result<Vec<HistoryEntry>, HistoryError> {
    if position.epoch != epoch || position.offset > last_offset {
        return Err(HistoryError::EpochMismatch);
    }
    if position.offset == last_offset {
        return Ok(Vec::new());
    }
    let mut entries = entries.into_iter().peekable();
    // The next message the client needs must still be here.
    match entries.peek() {
        Some(first) if first.offset <= position.offset + 1 => {}
        _ => return Err(HistoryError::Evicted),
    }
    Ok(entries
        .filter(|e| e.offset > position.offset)
        .cloned()
        .collect())
}

#[derive(Debug)]
struct Ring {
    last_offset: u64,
    entries: VecDeque<HistoryEntry>,
    /// The epoch of this ring's offsets: the broker's, or, for a ring made after its shard
    /// forgot idle ones, the broker's with that generation, so a position from a forgotten
    /// ring of the same name can never be taken for one of this ring's.
    epoch: std::sync::Arc<str>,
}

/// One shard of rings, with its sweep bookkeeping.
#[derive(Debug, Default)]
struct Shard {
    rings: HashMap<String, Ring>,
    /// Appends since the last sweep.
    appends: u32,
    /// How many sweeps forgot rings; new rings take it into their epoch.
    generation: u64,
    /// The epoch new rings get (the broker's until the first forgetting sweep).
    epoch: Option<std::sync::Arc<str>>,
}

/// A shard's idle rings are looked for once every this many appends to it: a ring whose
/// messages have all expired is forgotten (its stream has nothing left to replay).
const SWEEP_EVERY: u32 = 1024;

/// In-memory history ring per stream and session cache: a single node's broker.
#[derive(Debug)]
pub struct MemoryBroker {
    epoch: String,
    limits: HistoryLimits,
    /// Rings by stream, sharded like the hub so appends to different streams do not queue
    /// on one lock (an append runs on every broadcast).
    streams: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    /// The next shard a sweep visits besides the busy one.
    sweep_cursor: std::sync::atomic::AtomicUsize,
    sessions: Mutex<HashMap<String, (Bytes, Instant)>>,
}

impl MemoryBroker {
    /// A broker with a fresh random epoch.
    pub fn new(limits: HistoryLimits) -> Self {
        MemoryBroker {
            epoch: random_token(4),
            limits,
            streams: (0..64).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            sweep_cursor: std::sync::atomic::AtomicUsize::new(0),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn shard(&self, stream: &str) -> &Mutex<Shard> {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(stream);
        &self.streams[(h % self.streams.len() as u64) as usize]
    }

    fn evict(&self, ring: &mut Ring, now_ms: u64) {
        while ring.entries.len() > self.limits.max_messages
            || ring
                .entries
                .front()
                .is_some_and(|e| !self.limits.keeps(e.at_ms, now_ms))
        {
            ring.entries.pop_front();
        }
    }

    /// Forgets the idle rings of one shard: those with no unexpired message left.
    fn sweep_shard(&self, shard: &mut Shard, now_ms: u64) {
        shard.appends = 0;
        let before = shard.rings.len();
        shard.rings.retain(|_, ring| {
            self.evict(ring, now_ms);
            !ring.entries.is_empty()
        });
        if shard.rings.len() < before {
            shard.generation += 1;
            shard.epoch = Some(format!("{}.{}", self.epoch, shard.generation).into());
        }
    }

    /// Forgets every idle ring now (appends do it as they go; for tests and tools).
    pub fn sweep_at(&self, now_ms: u64) {
        for shard in self.streams.iter() {
            self.sweep_shard(&mut shard.lock(), now_ms);
        }
    }

    /// Streams with a ring held.
    pub fn streams_held(&self) -> usize {
        self.streams.iter().map(|s| s.lock().rings.len()).sum()
    }

    /// Stores `message` for `stream` at time `now_ms`; returns its position.
    pub fn append_at(&self, stream: &str, message: Bytes, now_ms: u64) -> StreamPosition {
        let position = self.append_in_shard(stream, message, now_ms);
        if position.1 {
            // The busy shard was swept: sweep one other in turn too, so shards that get no
            // appends any more are swept as long as any shard does (one lock at a time).
            let next = self
                .sweep_cursor
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.sweep_shard(&mut self.streams[next % self.streams.len()].lock(), now_ms);
        }
        position.0
    }

    fn append_in_shard(&self, stream: &str, message: Bytes, now_ms: u64) -> (StreamPosition, bool) {
        let mut shard = self.shard(stream).lock();
        shard.appends += 1;
        let swept = shard.appends >= SWEEP_EVERY;
        if swept {
            self.sweep_shard(&mut shard, now_ms);
        }
        let shard = &mut *shard;
        let ring = match shard.rings.get_mut(stream) {
            Some(r) => r,
            None => {
                // Only a new ring takes the shard's epoch (no allocation per append).
                let epoch = shard
                    .epoch
                    .clone()
                    .unwrap_or_else(|| std::sync::Arc::from(self.epoch.as_str()));
                shard.rings.entry(stream.to_owned()).or_insert(Ring {
                    last_offset: 0,
                    entries: VecDeque::new(),
                    epoch,
                })
            }
        };
        ring.last_offset += 1;
        let offset = ring.last_offset;
        ring.entries.push_back(HistoryEntry {
            offset,
            at_ms: now_ms,
            message,
        });
        self.evict(ring, now_ms);
        let position = StreamPosition {
            epoch: ring.epoch.to_string(),
            offset,
        };
        (position, swept)
    }

    /// Every stored message after `position` (exclusive), or a rejection.
    pub fn since_position(
        &self,
        stream: &str,
        position: &StreamPosition,
        now_ms: u64,
    ) -> Result<Vec<HistoryEntry>, HistoryError> {
        let mut shard = self.shard(stream).lock();
        match shard.rings.get_mut(stream) {
            None => select_after(&self.epoch, 0, [], position),
            Some(ring) => {
                self.evict(ring, now_ms);
                select_after(&ring.epoch, ring.last_offset, ring.entries.iter(), position)
            }
        }
    }

    /// The epoch of `stream`'s offsets now.
    fn epoch_of(&self, stream: &str) -> String {
        match self.shard(stream).lock().rings.get(stream) {
            Some(ring) => ring.epoch.to_string(),
            None => self.epoch.clone(),
        }
    }

    /// Every stored message at or after `since_ms`.
    pub fn since_time(&self, stream: &str, since_ms: u64, now_ms: u64) -> Vec<HistoryEntry> {
        let mut shard = self.shard(stream).lock();
        let Some(ring) = shard.rings.get_mut(stream) else {
            return Vec::new();
        };
        self.evict(ring, now_ms);
        select_since(ring.entries.iter().cloned(), since_ms)
    }
}

impl Broker for MemoryBroker {
    fn append(
        &self,
        stream: &str,
        message: Bytes,
        _origin: crate::pubsub::NodeId,
    ) -> BoxFuture<'static, Result<Appended, BrokerError>> {
        let position = self.append_at(stream, message, now_ms());
        Box::pin(std::future::ready(Ok(Appended {
            position,
            published: false,
        })))
    }

    fn history_from<'a>(
        &'a self,
        stream: &'a str,
        position: &'a StreamPosition,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let r = self
            .since_position(stream, position, now_ms())
            .map(|entries| History {
                epoch: self.epoch_of(stream),
                entries,
            })
            .map_err(BrokerError::from);
        Box::pin(std::future::ready(r))
    }

    fn history_since<'a>(
        &'a self,
        stream: &'a str,
        since_secs: u64,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let entries = self.since_time(stream, since_secs.saturating_mul(1000), now_ms());
        Box::pin(std::future::ready(Ok(History {
            epoch: self.epoch_of(stream),
            entries,
        })))
    }

    fn commit_session<'a>(
        &'a self,
        sid: &'a str,
        state: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let now = Instant::now();
        let mut sessions = self.sessions.lock();
        // Expired sessions are swept when the map has doubled since the last sweep.
        if sessions.len() >= 1024 && sessions.len().is_power_of_two() {
            sessions.retain(|_, (_, expires)| *expires > now);
        }
        sessions.insert(sid.to_owned(), (state, now + self.limits.sessions_ttl));
        Box::pin(std::future::ready(Ok(())))
    }

    fn restore_session<'a>(
        &'a self,
        sid: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, BrokerError>> {
        let found = self
            .sessions
            .lock()
            .remove(sid)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(state, _)| state);
        Box::pin(std::future::ready(Ok(found)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sids_are_128_bit_hex_and_unique() {
        let sids: std::collections::HashSet<String> =
            (0..10_000).map(|_| super::new_sid()).collect();
        assert_eq!(sids.len(), 10_000, "a sid repeated");
        for sid in &sids {
            assert_eq!(sid.len(), 32, "{sid} is not 16 bytes of hex");
            assert!(
                sid.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        // 128 random bits: every one of the 32 hex positions takes many values.
        for pos in 0..32 {
            let seen: std::collections::HashSet<u8> =
                sids.iter().map(|s| s.as_bytes()[pos]).collect();
            assert_eq!(seen.len(), 16, "hex position {pos} is not random");
        }
    }

    use super::*;

    fn msg(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    #[test]
    fn offsets_rise_per_stream_and_replay_is_exclusive() {
        let b = MemoryBroker::new(HistoryLimits::default());
        let p1 = b.append_at("a", msg("1"), 1000);
        let p2 = b.append_at("a", msg("2"), 1001);
        let q1 = b.append_at("b", msg("x"), 1002);
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
            ..HistoryLimits::default()
        });
        for i in 0..5 {
            b.append_at("a", msg(&i.to_string()), 1000);
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
    fn idle_rings_are_forgotten_and_a_recreated_stream_cannot_be_confused_with_the_old() {
        let b = MemoryBroker::new(HistoryLimits {
            ttl: Duration::from_secs(10),
            ..HistoryLimits::default()
        });
        for i in 0..3 {
            b.append_at("a", msg(&i.to_string()), 0);
        }
        let old = b.append_at("keep", msg("k"), 0);
        b.append_at("keep", msg("k2"), 15_000);
        let held = b.since_position("a", &b.append_at("a", msg("3"), 0), 0);
        assert_eq!(held, Ok(Vec::new()));
        let old_a = StreamPosition {
            epoch: b.epoch().into(),
            offset: 3,
        };
        assert_eq!(b.streams_held(), 2);
        b.sweep_at(20_000);
        assert_eq!(b.streams_held(), 1, "a's messages all expired: forgotten");
        // Re-created: offsets start again, under another epoch.
        let mut last = None;
        for i in 0..5 {
            last = Some(b.append_at("a", msg(&format!("new{i}")), 20_000));
        }
        let last = last.unwrap();
        assert_eq!(last.offset, 5);
        assert_ne!(last.epoch, old_a.epoch);
        assert_eq!(
            b.since_position("a", &old_a, 20_000),
            Err(HistoryError::EpochMismatch),
            "offset 3 of the forgotten ring is not offset 3 of the new one"
        );
        // A stream that was never forgotten keeps its epoch and its positions.
        let newer = b.since_position("keep", &old, 20_000).unwrap();
        assert_eq!(newer.iter().map(|e| e.offset).collect::<Vec<_>>(), vec![2]);
        // Appends sweep by themselves: a shard's idle rings go after SWEEP_EVERY appends.
        let b = MemoryBroker::new(HistoryLimits {
            ttl: Duration::from_secs(10),
            ..HistoryLimits::default()
        });
        for i in 0..500 {
            b.append_at(&format!("reply-{i}"), msg("r"), 0);
        }
        for _ in 0..(SWEEP_EVERY as usize * 64) {
            b.append_at("busy", msg("b"), 60_000);
        }
        assert_eq!(b.streams_held(), 1, "only the busy stream is held");
    }

    #[test]
    fn messages_expire_and_time_queries_see_what_is_left() {
        let b = MemoryBroker::new(HistoryLimits {
            ttl: Duration::from_secs(10),
            ..HistoryLimits::default()
        });
        let p = b.append_at("a", msg("old"), 0);
        b.append_at("a", msg("new"), 9_000);
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
