//! In-memory store: bounded by entry count and bytes (least recently used goes first), with
//! per-entry expiry. For tests and single-node development; sessions die with the process.

use std::num::NonZeroUsize;
use std::time::Duration;

use lru::LruCache;
use parking_lot::Mutex;

use crate::store::{Clock, SessionStore, StoreError, Stored, system_clock};

struct Entry {
    bytes: Vec<u8>,
    version: u64,
    expires_at: i64,
}

struct Inner {
    entries: LruCache<String, Entry>,
    bytes: usize,
    next_version: u64,
}

/// Expired sessions removed from the least-recently-used end on each save, at most.
const SWEEP_PER_SAVE: usize = 8;

/// Bounded in-memory session store.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    max_bytes: usize,
    clock: Clock,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store holding at most `max_entries` sessions and `max_bytes` bytes of them.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self::with_clock(max_entries, max_bytes, system_clock())
    }

    /// Same, with an injected clock (tests).
    pub fn with_clock(max_entries: usize, max_bytes: usize, clock: Clock) -> Self {
        let cap = NonZeroUsize::new(max_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        MemoryStore {
            inner: Mutex::new(Inner {
                entries: LruCache::new(cap),
                bytes: 0,
                next_version: 1,
            }),
            max_bytes,
            clock,
        }
    }

    /// Sessions held (live or not yet evicted).
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(100_000, 256 * 1024 * 1024)
    }
}

impl SessionStore for MemoryStore {
    async fn load(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        let now = (self.clock)();
        let mut inner = self.inner.lock();
        match inner.entries.get(id) {
            Some(e) if e.expires_at > now => Ok(Some(Stored {
                bytes: e.bytes.clone(),
                version: e.version,
            })),
            Some(_) => {
                if let Some(e) = inner.entries.pop(id) {
                    inner.bytes -= e.bytes.len();
                }
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn save(
        &self,
        id: &str,
        bytes: &[u8],
        expected: u64,
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        if bytes.len() > self.max_bytes {
            return Err(StoreError::TooLarge {
                size: bytes.len(),
                max: self.max_bytes,
            });
        }
        let now = (self.clock)();
        let mut inner = self.inner.lock();
        let current = inner
            .entries
            .peek(id)
            .filter(|e| e.expires_at > now)
            .map(|e| e.version)
            .unwrap_or(0);
        if current != expected {
            return Err(StoreError::Conflict);
        }
        let version = inner.next_version;
        inner.next_version += 1;
        let entry = Entry {
            bytes: bytes.to_vec(),
            version,
            expires_at: now + ttl.as_millis() as i64,
        };
        inner.bytes += bytes.len();
        if let Some((_, old)) = inner.entries.push(id.to_owned(), entry) {
            // Either the previous value of this id or an evicted least-recently-used entry.
            inner.bytes -= old.bytes.len();
        }
        while inner.bytes > self.max_bytes {
            match inner.entries.pop_lru() {
                Some((_, e)) => inner.bytes -= e.bytes.len(),
                None => break,
            }
        }
        // The sweep: expired sessions at the least-recently-used end go now, a few per save
        // (amortised, under the lock already held), so sessions of visitors who never came
        // back do not wait for the count or byte bound to push them out.
        for _ in 0..SWEEP_PER_SAVE {
            match inner.entries.peek_lru() {
                Some((_, e)) if e.expires_at <= now => {
                    if let Some((_, e)) = inner.entries.pop_lru() {
                        inner.bytes -= e.bytes.len();
                    }
                }
                _ => break,
            }
        }
        Ok(version)
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        if let Some(e) = inner.entries.pop(id) {
            inner.bytes -= e.bytes.len();
        }
        Ok(())
    }

    async fn touch(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = (self.clock)();
        let mut inner = self.inner.lock();
        match inner.entries.get_mut(id) {
            Some(e) if e.expires_at > now => {
                e.expires_at = now + ttl.as_millis() as i64;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn least_recently_used_goes_first_by_count_and_by_bytes() {
        let s = MemoryStore::new(2, 1000);
        let ttl = Duration::from_secs(60);
        s.save("a", b"1", 0, ttl).await.unwrap();
        s.save("b", b"2", 0, ttl).await.unwrap();
        s.load("a").await.unwrap();
        s.save("c", b"3", 0, ttl).await.unwrap();
        assert!(
            s.load("b").await.unwrap().is_none(),
            "b was least recently used"
        );
        assert!(s.load("a").await.unwrap().is_some());

        let s = MemoryStore::new(100, 10);
        s.save("a", b"123456", 0, ttl).await.unwrap();
        s.save("b", b"123456", 0, ttl).await.unwrap();
        assert!(
            s.load("a").await.unwrap().is_none(),
            "evicted to stay under 10 bytes"
        );
        assert_eq!(s.len(), 1);
    }

    #[tokio::test]
    async fn expired_sessions_are_swept_by_later_saves() {
        let now = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(1_000_000));
        let t = now.clone();
        let clock: Clock = std::sync::Arc::new(move || t.load(std::sync::atomic::Ordering::SeqCst));
        let s = MemoryStore::with_clock(1000, 1 << 20, clock);
        for i in 0..20 {
            s.save(&format!("old{i}"), b"x", 0, Duration::from_secs(1))
                .await
                .unwrap();
        }
        s.save("long", b"x", 0, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(s.len(), 21);
        now.fetch_add(2_000, std::sync::atomic::Ordering::SeqCst);
        // Each save sweeps up to 8 expired ones: three saves clear the 20, never the live one.
        for i in 0..3 {
            s.save(&format!("new{i}"), b"x", 0, Duration::from_secs(1))
                .await
                .unwrap();
        }
        assert_eq!(s.len(), 4, "20 expired swept, long and the 3 new kept");
        assert!(s.load("long").await.unwrap().is_some());
    }
}
