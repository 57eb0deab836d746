//! Redis store: one hash per session (`v` version, `d` data) under a configurable prefix,
//! expiring with `PEXPIRE`; compare-and-set in one Lua script, so it is atomic across nodes.
//! Give sessions their own Redis URL (or DB number) if the cache or broker Redis evicts keys.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::store::{SessionStore, StoreError, Stored, cause};

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(cause(e))
}

const SAVE: &str = r"
local cur = redis.call('HGET', KEYS[1], 'v')
local expected = tonumber(ARGV[1])
if cur == false then
  if expected ~= 0 then return -1 end
elseif tonumber(cur) ~= expected then
  return -1
end
local version = expected + 1
redis.call('HSET', KEYS[1], 'v', version, 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return version
";

/// Sessions in Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    save: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`); keys are `<prefix><session id>`.
    /// The connection reconnects by itself after an outage.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Config(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            Duration::from_secs(3),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| StoreError::Unavailable(cause("redis connect timed out")))?
        .map_err(unavailable)?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            save: Script::new(SAVE),
        })
    }

    fn key(&self, id: &str) -> String {
        format!("{}{}", self.prefix, id)
    }
}

impl SessionStore for RedisStore {
    async fn load(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        let mut conn = self.conn.clone();
        let (version, data): (Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(self.key(id))
            .arg("v")
            .arg("d")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match (version, data) {
            (Some(version), Some(bytes)) => Ok(Some(Stored { bytes, version })),
            (None, None) => Ok(None),
            _ => Err(StoreError::Corrupt(cause(
                "session hash is missing a field",
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
        let mut conn = self.conn.clone();
        let version: i64 = self
            .save
            .key(self.key(id))
            .arg(expected)
            .arg(bytes)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if version < 0 {
            Err(StoreError::Conflict)
        } else {
            Ok(version as u64)
        }
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.del(self.key(id)).await.map_err(unavailable)?;
        Ok(())
    }

    async fn touch(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let done: bool = conn
            .pexpire(self.key(id), ttl.as_millis().max(1) as i64)
            .await
            .map_err(unavailable)?;
        Ok(done)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
