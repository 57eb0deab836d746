//! Building a store from a URL: `memory`, `sqlite[:PATH]`, `postgres://…`, `redis://…`,
//! `memcached://…`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::memcached::MemcachedStore;
use crate::memory::MemoryStore;
use crate::redis_store::RedisStore;
use crate::sql::SqlStore;
use crate::store::{DynStore, StoreError};

/// Opens the store `url` names. `data_dir` holds the SQLite file when the URL gives no path;
/// `prefix` namespaces keys in Redis and Memcached (e.g. `app:session:`).
pub async fn open_store(
    url: &str,
    data_dir: &Path,
    prefix: &str,
) -> Result<Arc<dyn DynStore>, StoreError> {
    let url = url.trim();
    if url == "memory" {
        return Ok(Arc::new(MemoryStore::default()));
    }
    if url == "sqlite" || url.starts_with("sqlite:") {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
            .map(Path::new)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| data_dir.join("sessions.sqlite3"));
        let store = SqlStore::sqlite(&path).await?;
        store.spawn_sweeper(Duration::from_secs(60));
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = SqlStore::postgres(url, 10).await?;
        store.spawn_sweeper(Duration::from_secs(60));
        return Ok(Arc::new(store));
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        return Ok(Arc::new(RedisStore::connect(url, prefix).await?));
    }
    if url.starts_with("memcached://") || url.starts_with("memcache://") {
        return Ok(Arc::new(MemcachedStore::connect(url, prefix).await?));
    }
    Err(StoreError::Config(format!(
        "unknown session store {url:?}: use memory, sqlite[:PATH], postgres://…, redis://… or memcached://…"
    )))
}
