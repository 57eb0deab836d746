//! SQL stores on sqlx: SQLite (the embedded default, a file that survives restarts) and
//! PostgreSQL (pooled, shared by nodes). One table, `ferrocable_sessions`; compare-and-set
//! through `version` in the `WHERE` clause; expired rows swept in the background.

#[cfg(feature = "sqlite")]
use std::path::Path;
#[cfg(feature = "sqlite")]
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
#[cfg(feature = "postgres")]
use sqlx::postgres::{PgPool, PgPoolOptions};
#[cfg(feature = "sqlite")]
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::store::{Clock, SessionStore, StoreError, Stored, cause, system_clock};

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(cause(e))
}

/// Which SQL engine a [`SqlStore`] talks to.
#[derive(Clone, Debug)]
enum Pool {
    #[cfg(feature = "sqlite")]
    Sqlite(SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(PgPool),
}

/// A session store in a SQL table.
#[derive(Clone)]
pub struct SqlStore {
    pool: Pool,
    clock: Clock,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "sqlite")]
const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS ferrocable_sessions (
    id TEXT PRIMARY KEY NOT NULL,
    data BLOB NOT NULL,
    version INTEGER NOT NULL,
    expires_at INTEGER NOT NULL)";
#[cfg(feature = "postgres")]
const PG_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS ferrocable_sessions (
    id TEXT PRIMARY KEY NOT NULL,
    data BYTEA NOT NULL,
    version BIGINT NOT NULL,
    expires_at BIGINT NOT NULL)";
const INDEX: &str =
    "CREATE INDEX IF NOT EXISTS ferrocable_sessions_expires_at ON ferrocable_sessions (expires_at)";

impl SqlStore {
    /// Opens (creating if needed) a SQLite database file and applies the migration.
    #[cfg(feature = "sqlite")]
    pub async fn sqlite(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Config(format!("{}: {e}", dir.display())))?;
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| StoreError::Config(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL never corrupts; a power cut may lose the last commits.
            // FULL measured 1.4k load+save pairs/s against NORMAL's (docs/benchmarks.md).
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        let store = SqlStore {
            pool: Pool::Sqlite(pool),
            clock: system_clock(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to PostgreSQL and applies the migration.
    #[cfg(feature = "postgres")]
    pub async fn postgres(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(unavailable)?;
        let store = SqlStore {
            pool: Pool::Postgres(pool),
            clock: system_clock(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Whether the PostgreSQL sessions table at `url` has its expiry index (`None`: there is
    /// no table yet, which the migration creates with its index). Without it, every sweep and
    /// every expired-session check scans the whole table.
    #[cfg(feature = "postgres")]
    pub async fn postgres_expiry_index(url: &str) -> Result<Option<bool>, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(2))
            .connect(url)
            .await
            .map_err(unavailable)?;
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('ferrocable_sessions')::text")
                .fetch_one(&pool)
                .await
                .map_err(unavailable)?;
        if table.is_none() {
            pool.close().await;
            return Ok(None);
        }
        let indexed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'ferrocable_sessions' \
             AND indexdef LIKE '%(expires_at)%'",
        )
        .fetch_one(&pool)
        .await
        .map_err(unavailable)?;
        pool.close().await;
        Ok(Some(indexed > 0))
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Creates the table and index if missing (idempotent; also `ferrocable migrate`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(p) => {
                sqlx::query(SQLITE_SCHEMA)
                    .execute(p)
                    .await
                    .map_err(unavailable)?;
                sqlx::query(INDEX).execute(p).await.map_err(unavailable)?;
            }
            #[cfg(feature = "postgres")]
            Pool::Postgres(p) => {
                sqlx::query(PG_SCHEMA)
                    .execute(p)
                    .await
                    .map_err(unavailable)?;
                sqlx::query(INDEX).execute(p).await.map_err(unavailable)?;
            }
        }
        Ok(())
    }

    /// Deletes expired rows; returns how many.
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let now = (self.clock)();
        let done = match &self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(p) => {
                sqlx::query("DELETE FROM ferrocable_sessions WHERE expires_at <= $1")
                    .bind(now)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            }
            #[cfg(feature = "postgres")]
            Pool::Postgres(p) => {
                sqlx::query("DELETE FROM ferrocable_sessions WHERE expires_at <= $1")
                    .bind(now)
                    .execute(p)
                    .await
                    .map(|r| r.rows_affected())
            }
        };
        done.map_err(unavailable)
    }

    /// Sweeps expired rows every `period` until the returned handle is aborted.
    pub fn spawn_sweeper(&self, period: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                if let Err(e) = store.sweep().await {
                    tracing::warn!(error = %e, "session sweep failed");
                }
            }
        })
    }
}

macro_rules! on_pool {
    ($self:expr, |$p:ident| $body:expr) => {
        match &$self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite($p) => $body,
            #[cfg(feature = "postgres")]
            Pool::Postgres($p) => $body,
        }
    };
}

impl SessionStore for SqlStore {
    async fn load(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        let now = (self.clock)();
        let q = "SELECT data, version FROM ferrocable_sessions WHERE id = $1 AND expires_at > $2";
        let row = on_pool!(self, |p| sqlx::query(q)
            .bind(id)
            .bind(now)
            .fetch_optional(p)
            .await
            .map_err(unavailable)?
            .map(|r| (r.try_get::<Vec<u8>, _>(0), r.try_get::<i64, _>(1))));
        match row {
            None => Ok(None),
            Some((Ok(bytes), Ok(version))) => Ok(Some(Stored {
                bytes,
                version: version as u64,
            })),
            Some(_) => Err(StoreError::Corrupt(cause("unreadable session row"))),
        }
    }

    async fn save(
        &self,
        id: &str,
        bytes: &[u8],
        expected: u64,
        ttl: Duration,
    ) -> Result<u64, StoreError> {
        let now = (self.clock)();
        let expires_at = now + ttl.as_millis() as i64;
        let version: Option<i64> = if expected == 0 {
            // Create, or take over a row that has expired but not been swept yet.
            let q = "INSERT INTO ferrocable_sessions (id, data, version, expires_at) VALUES ($1, $2, 1, $3)
                     ON CONFLICT (id) DO UPDATE SET data = excluded.data, version = ferrocable_sessions.version + 1,
                     expires_at = excluded.expires_at WHERE ferrocable_sessions.expires_at <= $4
                     RETURNING version";
            on_pool!(self, |p| sqlx::query_scalar(q)
                .bind(id)
                .bind(bytes)
                .bind(expires_at)
                .bind(now)
                .fetch_optional(p)
                .await
                .map_err(unavailable)?)
        } else {
            let q =
                "UPDATE ferrocable_sessions SET data = $1, version = version + 1, expires_at = $2
                     WHERE id = $3 AND version = $4 AND expires_at > $5 RETURNING version";
            on_pool!(self, |p| sqlx::query_scalar(q)
                .bind(bytes)
                .bind(expires_at)
                .bind(id)
                .bind(expected as i64)
                .bind(now)
                .fetch_optional(p)
                .await
                .map_err(unavailable)?)
        };
        version.map(|v| v as u64).ok_or(StoreError::Conflict)
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let q = "DELETE FROM ferrocable_sessions WHERE id = $1";
        on_pool!(self, |p| sqlx::query(q)
            .bind(id)
            .execute(p)
            .await
            .map(|_| ())
            .map_err(unavailable)?);
        Ok(())
    }

    async fn touch(&self, id: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = (self.clock)();
        let q = "UPDATE ferrocable_sessions SET expires_at = $1 WHERE id = $2 AND expires_at > $3";
        let n = on_pool!(self, |p| sqlx::query(q)
            .bind(now + ttl.as_millis() as i64)
            .bind(id)
            .bind(now)
            .execute(p)
            .await
            .map_err(unavailable)?
            .rows_affected());
        Ok(n > 0)
    }

    fn kind(&self) -> &'static str {
        match self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(_) => "sqlite",
            #[cfg(feature = "postgres")]
            Pool::Postgres(_) => "postgres",
        }
    }
}
