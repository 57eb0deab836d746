//! Building a store from a URL: `memory`, `sqlite[:PATH]`, `postgres://…`, `redis://…`,
//! `memcached://…`.

use std::path::Path;
use std::sync::Arc;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use std::time::Duration;

use crate::memory::MemoryStore;
use crate::store::{DynStore, StoreError};

/// The store `url` names was left out of this build.
#[cfg(not(all(
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "memcached"
)))]
fn not_built(url: &str, feature: &str) -> StoreError {
    StoreError::Config(format!(
        "session store {url:?} needs the `{feature}` feature of ferrocable, which this build leaves out"
    ))
}

/// Opens the store `url` names. `data_dir` holds the SQLite file when the URL gives no path;
/// `prefix` namespaces keys in Redis and Memcached (e.g. `app:session:`).
pub async fn open_store(
    url: &str,
    data_dir: &Path,
    prefix: &str,
) -> Result<Arc<dyn DynStore>, StoreError> {
    let url = url.trim();
    // Builds without the stores that take them leave these unused.
    let _ = (data_dir, prefix);
    if url == "memory" {
        return Ok(Arc::new(MemoryStore::default()));
    }
    if url == "sqlite" || url.starts_with("sqlite:") {
        #[cfg(not(feature = "sqlite"))]
        return Err(not_built(url, "sqlite"));
        #[cfg(feature = "sqlite")]
        {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .filter(|p| !p.is_empty())
                .map(Path::new)
                .map(Path::to_path_buf)
                .unwrap_or_else(|| data_dir.join("sessions.sqlite3"));
            let store = crate::sql::SqlStore::sqlite(&path).await?;
            store.spawn_sweeper(Duration::from_secs(60));
            return Ok(Arc::new(store));
        }
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        #[cfg(not(feature = "postgres"))]
        return Err(not_built(url, "postgres"));
        #[cfg(feature = "postgres")]
        {
            // Never fewer connections than runtime workers (each may hold one in a load or
            // save at once), and at least 10.
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            let store = crate::sql::SqlStore::postgres(url, workers.max(10)).await?;
            store.spawn_sweeper(Duration::from_secs(60));
            return Ok(Arc::new(store));
        }
    }
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        #[cfg(not(feature = "redis"))]
        return Err(not_built(url, "redis"));
        #[cfg(feature = "redis")]
        return Ok(Arc::new(
            crate::redis_store::RedisStore::connect(url, prefix).await?,
        ));
    }
    if url.starts_with("memcached://") || url.starts_with("memcache://") {
        #[cfg(not(feature = "memcached"))]
        return Err(not_built(url, "memcached"));
        #[cfg(feature = "memcached")]
        return Ok(Arc::new(
            crate::memcached::MemcachedStore::connect(url, prefix).await?,
        ));
    }
    Err(StoreError::Config(format!(
        "unknown session store {url:?}: use memory, sqlite[:PATH], postgres://…, redis://… or memcached://…"
    )))
}
