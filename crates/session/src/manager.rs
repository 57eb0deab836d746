//! [`Sessions`]: what apps use. Load, update with no lost writes, renew, clear.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parking_lot::Mutex;
use ring::rand::{SecureRandom, SystemRandom};

use crate::codec::{Codec, SessionData};
use crate::cookie_signer::CookieSigner;
use crate::store::{DynStore, StoreError};

/// Session settings, named as Rails users know them.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Cookie name (`_session`).
    pub cookie_name: String,
    /// Sliding expiry: every save or touch extends the session this long (one year).
    pub expire_after: Duration,
    /// `Secure` cookie flag.
    pub secure: bool,
    /// `HttpOnly` cookie flag.
    pub http_only: bool,
    /// `SameSite` cookie attribute (`Lax`, `Strict` or `None`).
    pub same_site: String,
    /// Encoding, size cap and compression threshold.
    pub codec: Codec,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            cookie_name: "_session".into(),
            expire_after: Duration::from_secs(365 * 24 * 3600),
            secure: false,
            http_only: true,
            same_site: "Lax".into(),
            codec: Codec::default(),
        }
    }
}

/// A fresh random session id: 128 bits, base64url.
pub fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    // The system RNG does not fail on Linux; a zero id would still be unique per process
    // start only, so fall back to time-based bytes rather than panicking.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = t.to_le_bytes();
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Sessions over one store. Cheap to share (`Arc`).
pub struct Sessions {
    store: Arc<dyn DynStore>,
    options: SessionOptions,
    signer: CookieSigner,
    /// Per-session write locks on this node: two tabs on one node queue instead of racing;
    /// the store's compare-and-set covers other nodes.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("store", &self.store.kind())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Most compare-and-set retries before an update gives up (only under pathological contention).
const MAX_ATTEMPTS: u32 = 1000;

impl Sessions {
    /// Sessions in `store`, cookies signed with a key derived from `secret_key_base`.
    pub fn new(store: Arc<dyn DynStore>, options: SessionOptions, secret_key_base: &[u8]) -> Self {
        Sessions {
            store,
            options,
            signer: CookieSigner::new(secret_key_base),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The options.
    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// The cookie signer.
    pub fn signer(&self) -> &CookieSigner {
        &self.signer
    }

    /// The store's kind (`memory`, `sqlite`, …).
    pub fn store_kind(&self) -> &'static str {
        self.store.kind()
    }

    /// The session's data, or `None` if there is no live session with this id.
    pub async fn load(&self, id: &str) -> Result<Option<SessionData>, StoreError> {
        match self.store.load(id).await? {
            None => Ok(None),
            Some(stored) => self.options.codec.decode(&stored.bytes).map(Some),
        }
    }

    /// Applies `change` to the session (created empty if absent) and saves it, retrying on a
    /// concurrent write so that no update is lost. Returns what `change` returned last.
    /// A corrupt stored session is replaced by a fresh one (logged).
    pub async fn update<R>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut SessionData) -> R,
    ) -> Result<R, StoreError> {
        let lock = self.lock_for(id);
        let guard = lock.lock().await;
        let result = async {
            for attempt in 0..MAX_ATTEMPTS {
                let (mut data, version) = match self.store.load(id).await? {
                    None => (SessionData::new(), 0),
                    Some(stored) => match self.options.codec.decode(&stored.bytes) {
                        Ok(data) => (data, stored.version),
                        Err(e) => {
                            tracing::warn!(error = %e, "corrupt session replaced by a fresh one");
                            (SessionData::new(), stored.version)
                        }
                    },
                };
                let out = change(&mut data);
                let bytes = self.options.codec.encode(&data)?;
                match self
                    .store
                    .save(id, &bytes, version, self.options.expire_after)
                    .await
                {
                    Ok(_) => return Ok(out),
                    Err(StoreError::Conflict) => {
                        if attempt >= 2 {
                            // Another node keeps winning: back off a little, with jitter.
                            let jitter = u64::from(id.len() as u32 + attempt) % 7;
                            tokio::time::sleep(Duration::from_millis(1 + jitter)).await;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(StoreError::Conflict)
        }
        .await;
        drop(guard);
        self.release_lock(id, lock);
        result
    }

    /// Extends the session's life; `false` if there is none.
    pub async fn touch(&self, id: &str) -> Result<bool, StoreError> {
        self.store.touch(id, self.options.expire_after).await
    }

    /// Deletes the session.
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.store.delete(id).await
    }

    /// Empties the session (Rails' `reset_session` keeps the id; see [`Sessions::renew`]).
    pub async fn clear(&self, id: &str) -> Result<(), StoreError> {
        self.update(id, |data| data.clear()).await
    }

    /// Moves the session to a fresh id (against session fixation) and returns the new id;
    /// the old id stops working.
    pub async fn renew(&self, id: &str) -> Result<String, StoreError> {
        let data = self.load(id).await.or_else(|e| match e {
            StoreError::Corrupt(_) => Ok(None),
            e => Err(e),
        })?;
        let new_id = new_session_id();
        let data = data.unwrap_or_default();
        let bytes = self.options.codec.encode(&data)?;
        self.store
            .save(&new_id, &bytes, 0, self.options.expire_after)
            .await?;
        self.store.delete(id).await?;
        Ok(new_id)
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().entry(id.to_owned()).or_default().clone()
    }

    fn release_lock(&self, id: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.locks.lock();
        drop(lock);
        // Only the map holds it now: nobody is waiting, forget it.
        if locks.get(id).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(id);
        }
    }

    /// Writers currently holding or awaiting a per-session lock (for tests and metrics).
    pub fn pending_locks(&self) -> usize {
        self.locks.lock().len()
    }
}
