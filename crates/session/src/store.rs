//! The session store port.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The error under a [`StoreError`]: the backend's own error (or a message where there is
/// none), kept whole for the log's cause chain and shared so the error stays `Clone`.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// A [`Cause`] from a backend error or a message.
pub fn cause(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Cause {
    Arc::from(e.into())
}

/// Why a store operation failed. Every backend maps its own errors onto these, keeping them
/// as the source.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or failed; the session is neither read nor written.
    #[error("session store unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The stored version changed since it was read (compare-and-set lost).
    #[error("session changed concurrently")]
    Conflict,
    /// The encoded session is larger than allowed.
    #[error("session of {size} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Allowed size.
        max: usize,
    },
    /// The stored bytes cannot be decoded.
    #[error("stored session is corrupt: {0}")]
    Corrupt(#[source] Cause),
    /// The store URL or options are invalid.
    #[error("invalid session store configuration: {0}")]
    Config(String),
}

impl PartialEq for StoreError {
    /// Same kind, and causes that read the same (a cause's type is the backend's own).
    fn eq(&self, other: &Self) -> bool {
        use StoreError::*;
        match (self, other) {
            (Unavailable(a), Unavailable(b)) | (Corrupt(a), Corrupt(b)) => {
                a.to_string() == b.to_string()
            }
            (Conflict, Conflict) => true,
            (TooLarge { size: a, max: m }, TooLarge { size: b, max: n }) => a == b && m == n,
            (Config(a), Config(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for StoreError {}

/// A stored session: opaque bytes and the version to compare against when saving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The encoded session.
    pub bytes: Vec<u8>,
    /// Version of this record (never 0).
    pub version: u64,
}

/// Milliseconds since the Unix epoch, injectable so expiry can be tested without waiting.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The real clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    })
}

/// Where sessions live. Implementations must make `save` atomic: it succeeds only when the
/// stored version equals `expected` (0 = no live record), and then returns the new version.
pub trait SessionStore: Send + Sync + 'static {
    /// The live (unexpired) record for `id`.
    fn load(&self, id: &str) -> impl Future<Output = Result<Option<Stored>, StoreError>> + Send;
    /// Writes `bytes` for `id` with a time to live, if the stored version is `expected`.
    fn save(
        &self,
        id: &str,
        bytes: &[u8],
        expected: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Removes `id` (no error if absent).
    fn delete(&self, id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Extends the life of a live record; `false` if there is none.
    fn touch(
        &self,
        id: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// A short name for logs and metrics (`memory`, `sqlite`, …).
    fn kind(&self) -> &'static str;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe form of [`SessionStore`], so the store can be picked at run time.
pub trait DynStore: Send + Sync {
    /// See [`SessionStore::load`].
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Stored>, StoreError>>;
    /// See [`SessionStore::save`].
    fn save<'a>(
        &'a self,
        id: &'a str,
        bytes: &'a [u8],
        expected: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// See [`SessionStore::delete`].
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    /// See [`SessionStore::touch`].
    fn touch<'a>(&'a self, id: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// See [`SessionStore::kind`].
    fn kind(&self) -> &'static str;
}

impl<S: SessionStore> DynStore for S {
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(SessionStore::load(self, id))
    }
    fn save<'a>(
        &'a self,
        id: &'a str,
        bytes: &'a [u8],
        expected: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(SessionStore::save(self, id, bytes, expected, ttl))
    }
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(SessionStore::delete(self, id))
    }
    fn touch<'a>(&'a self, id: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(SessionStore::touch(self, id, ttl))
    }
    fn kind(&self) -> &'static str {
        SessionStore::kind(self)
    }
}
