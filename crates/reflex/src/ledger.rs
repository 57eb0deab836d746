//! Reflex idempotency: every reflex id is remembered per session for a window, so a reflex
//! that arrives twice (a client retry after a reconnect, a duplicated frame) runs **once**.
//!
//! Two stages: `begin` marks the id as running (a duplicate arriving now is dropped: the
//! first run's reply is on its way); `finish` stores the replies, which a later duplicate
//! gets again instead of a second run. Side effects (session changes, broadcasts to other
//! users) therefore happen once whatever the network does.
//!
//! Bounded three ways, since ids and replies come from (or for) clients: by age (the window),
//! by count, and by the bytes of stored replies; the oldest ids are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::value::RawValue;

/// What to do with a reflex id.
#[derive(Debug, Clone)]
pub enum Begin {
    /// First time seen: run it.
    Run,
    /// The same reflex is running: drop the duplicate.
    Running,
    /// It ran already: re-send these replies (encoded JSON).
    Done(Vec<Box<RawValue>>),
}

impl PartialEq for Begin {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Begin::Run, Begin::Run) | (Begin::Running, Begin::Running) => true,
            (Begin::Done(a), Begin::Done(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.get() == y.get())
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
enum Entry {
    Running,
    Done(Vec<Box<RawValue>>),
}

impl Entry {
    fn bytes(&self) -> usize {
        match self {
            Entry::Running => 0,
            Entry::Done(replies) => replies.iter().map(|r| r.get().len()).sum(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    order: VecDeque<(Instant, String)>,
    /// Bytes of stored replies and keys.
    bytes: usize,
}

impl State {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= e.bytes() + key.len();
        }
    }
}

/// Remembered reflex ids, bounded in time and count.
#[derive(Debug)]
pub struct ReflexLedger {
    state: Mutex<State>,
    window: Duration,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for ReflexLedger {
    /// 120 s, 100,000 ids, 16 MiB of ids and replies. The byte bound is what a busy node
    /// meets: in the soak (`bench/soak.sh`, ~900 page-morph reflexes/s of ~0.5 KiB replies)
    /// 64 MiB took two minutes to fill and was a third of the node's RSS; 16 MiB fills in
    /// ~35 s, so a busy node reaches its steady state within the first minute and still
    /// answers a retry seconds after a reconnect (quieter nodes keep the full 120 s).
    fn default() -> Self {
        ReflexLedger::new(Duration::from_secs(120), 100_000).max_bytes(16 * 1024 * 1024)
    }
}

impl ReflexLedger {
    /// Remembers ids for `window`, at most `max_entries` at once (oldest forgotten first),
    /// with no byte bound until [`ReflexLedger::max_bytes`] sets one.
    pub fn new(window: Duration, max_entries: usize) -> Self {
        ReflexLedger {
            state: Mutex::new(State::default()),
            window,
            max_entries: max_entries.max(1),
            max_bytes: usize::MAX,
        }
    }

    /// Bounds the stored keys and replies to `bytes` (oldest forgotten first).
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    fn expire(&self, s: &mut State, now: Instant) {
        while let Some((at, _)) = s.order.front() {
            if now.duration_since(*at) < self.window
                && s.order.len() <= self.max_entries
                && s.bytes <= self.max_bytes
            {
                break;
            }
            if let Some((_, key)) = s.order.pop_front() {
                s.remove(&key);
            }
        }
    }

    /// Stage one: claims `key` (session + reflex id).
    pub fn begin(&self, key: &str) -> Begin {
        let now = Instant::now();
        let mut s = self.state.lock();
        self.expire(&mut s, now);
        match s.entries.get(key) {
            Some(Entry::Running) => Begin::Running,
            Some(Entry::Done(replies)) => Begin::Done(replies.clone()),
            None => {
                s.entries.insert(key.to_owned(), Entry::Running);
                s.bytes += key.len();
                s.order.push_back((now, key.to_owned()));
                Begin::Run
            }
        }
    }

    /// Stage two: the reflex ran and sent `replies`.
    pub fn finish(&self, key: &str, replies: Vec<Box<RawValue>>) {
        let mut s = self.state.lock();
        let added: usize = replies.iter().map(|r| r.get().len()).sum();
        if let Some(e) = s.entries.get_mut(key) {
            *e = Entry::Done(replies);
            s.bytes += added;
            self.expire(&mut s, Instant::now());
        }
    }

    /// The reflex did not complete (refused before running): a retry may run it.
    pub fn forget(&self, key: &str) {
        self.state.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn done(b: Begin) -> Vec<String> {
        match b {
            Begin::Done(r) => r.iter().map(|r| r.get().to_owned()).collect(),
            other => panic!("expected Done, got {other:?}"),
        }
    }

    #[test]
    fn a_reflex_id_runs_once_and_its_replies_are_resent() {
        let l = ReflexLedger::default();
        assert_eq!(l.begin("s:r1"), Begin::Run);
        assert_eq!(l.begin("s:r1"), Begin::Running);
        l.finish("s:r1", vec![raw(r#"{"ok":1}"#)]);
        assert_eq!(done(l.begin("s:r1")), vec![r#"{"ok":1}"#]);
        assert_eq!(l.begin("other:r1"), Begin::Run, "per session");
        l.forget("other:r1");
        assert_eq!(l.begin("other:r1"), Begin::Run, "forgotten ids run again");
    }

    #[test]
    fn ids_are_forgotten_after_the_window_and_beyond_the_bound() {
        let l = ReflexLedger::new(Duration::from_millis(20), 2);
        assert_eq!(l.begin("a"), Begin::Run);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(l.begin("a"), Begin::Run, "expired");
        assert_eq!(l.begin("b"), Begin::Run);
        assert_eq!(l.begin("c"), Begin::Run);
        assert_eq!(
            l.begin("a"),
            Begin::Run,
            "the oldest was dropped at the bound"
        );
    }

    #[test]
    fn stored_replies_are_bounded_in_bytes() {
        let l = ReflexLedger::new(Duration::from_secs(60), 1000).max_bytes(100);
        let big = raw(&format!("\"{}\"", "x".repeat(60)));
        assert_eq!(l.begin("a"), Begin::Run);
        l.finish("a", vec![big.clone()]);
        assert_eq!(done(l.begin("a")).len(), 1, "within the budget");
        assert_eq!(l.begin("b"), Begin::Run);
        l.finish("b", vec![big]);
        assert_eq!(
            l.begin("a"),
            Begin::Run,
            "the oldest reply went over the budget"
        );
        assert_eq!(done(l.begin("b")).len(), 1, "the newest is kept");
        assert!(l.state.lock().bytes <= 100 + "a".len());
    }
}
