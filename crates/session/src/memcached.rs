//! Memcached store on the `memcache` crate (a blocking client, run on tokio's blocking pool).
//! Memcached's own CAS tokens are the versions: `add` creates, `cas` updates only if nobody
//! wrote in between. Expiry is memcached's exptime (seconds; absolute time past 30 days).

use std::sync::Arc;
use std::time::Duration;

use memcache::{Client, MemcacheError};

use crate::store::{SessionStore, StoreError, Stored, cause};

/// Memcached treats exptimes above this many seconds as absolute Unix times.
const RELATIVE_LIMIT: u64 = 30 * 24 * 3600;

fn unavailable(e: MemcacheError) -> StoreError {
    StoreError::Unavailable(cause(e))
}

fn exptime(ttl: Duration) -> u32 {
    let secs = ttl.as_secs().max(1) + u64::from(ttl.subsec_nanos() > 0);
    if secs <= RELATIVE_LIMIT {
        secs as u32
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (now + secs).min(u64::from(u32::MAX)) as u32
    }
}

/// Sessions in Memcached.
#[derive(Clone)]
pub struct MemcachedStore {
    /// ASCII protocol: about 2.6× the load+save rate of the crate's binary protocol here.
    client: Arc<Client>,
    /// Binary protocol, used only for `add`: the crate's ASCII `add` cannot report a key
    /// that already exists, and creation must fail then (compare-and-set from version 0).
    creator: Arc<Client>,
    prefix: String,
}

impl std::fmt::Debug for MemcachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl MemcachedStore {
    /// Connects to `memcached://host:port` (binary protocol); keys are `<prefix><id>`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let rest = url
            .strip_prefix("memcached://")
            .or_else(|| url.strip_prefix("memcache://"))
            .ok_or_else(|| StoreError::Config(format!("not a memcached URL: {url}")))?;
        let base = format!("memcache://{}?tcp_nodelay=true", rest.trim_end_matches('/'));
        let ascii = format!("{base}&protocol=ascii");
        let open = |target: String, size: u32| {
            move || {
                // Our own pool settings: r2d2 would otherwise send a `version` round trip on
                // every checkout (test_on_check_out), doubling the cost of each call (measured).
                let url = memcache::Url::parse(&target)?;
                let pool = r2d2::Pool::builder()
                    .max_size(size)
                    .min_idle(Some(1))
                    .test_on_check_out(false)
                    .connection_timeout(Duration::from_secs(2))
                    .build(memcache::ConnectionManager::new(url))?;
                let client = Client::with_pool(pool)?;
                client.set_read_timeout(Some(Duration::from_secs(2)))?;
                client.set_write_timeout(Some(Duration::from_secs(2)))?;
                client.version()?;
                Ok::<_, MemcacheError>(client)
            }
        };
        let client = tokio::task::spawn_blocking(open(ascii, 32))
            .await
            .map_err(|e| StoreError::Unavailable(cause(e)))?
            .map_err(unavailable)?;
        let creator = tokio::task::spawn_blocking(open(base, 4))
            .await
            .map_err(|e| StoreError::Unavailable(cause(e)))?
            .map_err(unavailable)?;
        Ok(MemcachedStore {
            client: Arc::new(client),
            creator: Arc::new(creator),
            prefix: prefix.to_owned(),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Client, &Client) -> Result<T, MemcacheError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let client = self.client.clone();
        let creator = self.creator.clone();
        tokio::task::spawn_blocking(move || f(&client, &creator))
            .await
            .map_err(|e| StoreError::Unavailable(cause(e)))?
            .map_err(unavailable)
    }

    fn key(&self, id: &str) -> String {
        format!("{}{}", self.prefix, id)
    }
}

impl SessionStore for MemcachedStore {
    async fn load(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        let key = self.key(id);
        let found = self
            .run(move |c, _| {
                let mut values: std::collections::HashMap<String, (Vec<u8>, u32, Option<u64>)> =
                    c.gets(&[key.as_str()])?;
                Ok(values.remove(&key))
            })
            .await?;
        match found {
            None => Ok(None),
            Some((bytes, _, Some(cas))) => Ok(Some(Stored {
                bytes,
                version: cas,
            })),
            Some((_, _, None)) => Err(StoreError::Corrupt(cause(
                "memcached returned no CAS token",
            ))),
        }
    }

    async fn save(
        &self,
        id: &str,
        bytes: &[u8],
        expected: u64,
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        let key = self.key(id);
        let bytes = bytes.to_vec();
        let exp = exptime(ttl);
        let stored = self
            .run(move |c, creator| {
                let ok = if expected == 0 {
                    match creator.add(&key, bytes.as_slice(), exp) {
                        Ok(()) => true,
                        Err(MemcacheError::CommandError(_)) => false,
                        Err(e) => return Err(e),
                    }
                } else {
                    c.cas(&key, bytes.as_slice(), exp, expected)?
                };
                if !ok {
                    return Ok(None);
                }
                // The new CAS token is the new version.
                let mut values: std::collections::HashMap<String, (Vec<u8>, u32, Option<u64>)> =
                    c.gets(&[key.as_str()])?;
                Ok(Some(values.remove(&key).and_then(|(_, _, cas)| cas)))
            })
            .await?;
        match stored {
            None => Err(StoreError::Conflict),
            Some(Some(version)) => Ok(version),
            // Written, then gone (evicted or replaced) before we read the token back: make the
            // caller retry from a fresh load rather than guess.
            Some(None) => Err(StoreError::Conflict),
        }
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let key = self.key(id);
        self.run(move |c, _| c.delete(&key).map(|_| ())).await
    }

    async fn touch(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = self.key(id);
        let exp = exptime(ttl);
        self.run(move |c, _| c.touch(&key, exp)).await
    }

    fn kind(&self) -> &'static str {
        "memcached"
    }
}
