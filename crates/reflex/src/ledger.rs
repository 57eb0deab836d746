//! Reflex idempotency: every reflex id is remembered per session for a window, so a reflex
//! that arrives twice (a client retry after a reconnect, a duplicated frame) runs **once**.
//!
//! Two stages: `begin` marks the id as running (a duplicate arriving now is dropped: the
//! first run's reply is on its way); `finish` stores the replies, which a later duplicate
//! gets again instead of a second run. Side effects (session changes, broadcasts to other
//! users) therefore happen once whatever the network does.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

/// What to do with a reflex id.
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// First time seen: run it.
    Run,
    /// The same reflex is running: drop the duplicate.
    Running,
    /// It ran already: re-send these replies.
    Done(Vec<Value>),
}

#[derive(Debug)]
enum Entry {
    Running,
    Done(Vec<Value>),
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    order: VecDeque<(Instant, String)>,
}

/// Remembered reflex ids, bounded in time and count.
#[derive(Debug)]
pub struct ReflexLedger {
    state: Mutex<State>,
    window: Duration,
    max_entries: usize,
}

impl Default for ReflexLedger {
    fn default() -> Self {
        ReflexLedger::new(Duration::from_secs(120), 100_000)
    }
}

impl ReflexLedger {
    /// Remembers ids for `window`, at most `max_entries` at once (oldest forgotten first).
    pub fn new(window: Duration, max_entries: usize) -> Self {
        ReflexLedger {
            state: Mutex::new(State::default()),
            window,
            max_entries: max_entries.max(1),
        }
    }

    fn expire(&self, s: &mut State, now: Instant) {
        while let Some((at, _)) = s.order.front() {
            if now.duration_since(*at) < self.window && s.order.len() <= self.max_entries {
                break;
            }
            if let Some((_, key)) = s.order.pop_front() {
                s.entries.remove(&key);
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
                s.order.push_back((now, key.to_owned()));
                Begin::Run
            }
        }
    }

    /// Stage two: the reflex ran and sent `replies`.
    pub fn finish(&self, key: &str, replies: Vec<Value>) {
        if let Some(e) = self.state.lock().entries.get_mut(key) {
            *e = Entry::Done(replies);
        }
    }

    /// The reflex did not complete (refused before running): a retry may run it.
    pub fn forget(&self, key: &str) {
        self.state.lock().entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reflex_id_runs_once_and_its_replies_are_resent() {
        let l = ReflexLedger::default();
        assert_eq!(l.begin("s:r1"), Begin::Run);
        assert_eq!(l.begin("s:r1"), Begin::Running);
        l.finish("s:r1", vec![serde_json::json!({"ok": 1})]);
        assert_eq!(
            l.begin("s:r1"),
            Begin::Done(vec![serde_json::json!({"ok": 1})])
        );
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
}
