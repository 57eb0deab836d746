//! One conformance suite, run against every store on the real thing: memory, SQLite (a
//! temporary file), PostgreSQL (127.0.0.1:5432, db `test`), Redis (127.0.0.1:6379) and
//! Memcached (127.0.0.1:11211). A missing service fails the test: `scripts/test.sh` starts
//! them, and installs Memcached from Debian when it is absent.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ferrocable_session::memcached::MemcachedStore;
use ferrocable_session::memory::MemoryStore;
use ferrocable_session::redis_store::RedisStore;
use ferrocable_session::sql::SqlStore;
use ferrocable_session::{
    Clock, Codec, DynStore, SessionOptions, Sessions, StoreError, new_session_id,
};
use serde_json::json;

const SECRET: &[u8] = b"conformance secret key base";
const HOUR: Duration = Duration::from_secs(3600);

fn postgres_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}
fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}
fn memcached_url() -> String {
    std::env::var("MEMCACHED_URL").unwrap_or_else(|_| "memcached://127.0.0.1:11211".into())
}

/// A clock the test moves by hand.
fn manual_clock() -> (Clock, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(1_800_000_000_000));
    let n = now.clone();
    (Arc::new(move || n.load(Ordering::SeqCst)), now)
}

fn fresh_id() -> String {
    format!("conf-{}", new_session_id())
}

fn sessions(store: Arc<dyn DynStore>) -> Sessions {
    Sessions::new(store, SessionOptions::default(), SECRET)
}

/// How a backend lets time pass: by moving a manual clock, or by really waiting.
enum Time {
    Manual(Arc<AtomicI64>),
    Real,
}

impl Time {
    async fn pass(&self, d: Duration) {
        match self {
            Time::Manual(now) => {
                now.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
            }
            Time::Real => tokio::time::sleep(d).await,
        }
    }
}

async fn load_save_delete(store: &dyn DynStore) {
    let id = fresh_id();
    assert_eq!(store.load(&id).await.unwrap(), None);
    let v1 = store.save(&id, b"one", 0, HOUR).await.unwrap();
    assert_ne!(v1, 0);
    let got = store.load(&id).await.unwrap().unwrap();
    assert_eq!((got.bytes.as_slice(), got.version), (&b"one"[..], v1));

    assert_eq!(
        store.save(&id, b"x", 0, HOUR).await,
        Err(StoreError::Conflict),
        "create over a live record"
    );
    assert_eq!(
        store.save(&id, b"x", v1 + 1000, HOUR).await,
        Err(StoreError::Conflict),
        "stale version"
    );
    let v2 = store.save(&id, b"two", v1, HOUR).await.unwrap();
    assert_ne!(v2, v1);
    assert_eq!(
        store.save(&id, b"x", v1, HOUR).await,
        Err(StoreError::Conflict),
        "the old version is spent"
    );
    assert_eq!(store.load(&id).await.unwrap().unwrap().bytes, b"two");

    assert!(store.touch(&id, HOUR).await.unwrap());
    store.delete(&id).await.unwrap();
    store.delete(&id).await.unwrap();
    assert_eq!(store.load(&id).await.unwrap(), None);
    assert!(!store.touch(&id, HOUR).await.unwrap());
    assert!(
        store.save(&id, b"again", 0, HOUR).await.is_ok(),
        "an id can be created again after delete"
    );
}

async fn expiry(store: &dyn DynStore, time: &Time) {
    let id = fresh_id();
    let short = Duration::from_secs(1);
    store.save(&id, b"brief", 0, short).await.unwrap();
    assert!(store.load(&id).await.unwrap().is_some());
    time.pass(Duration::from_millis(2500)).await;
    assert_eq!(store.load(&id).await.unwrap(), None, "expired");
    assert!(!store.touch(&id, HOUR).await.unwrap());
    store
        .save(&id, b"new life", 0, HOUR)
        .await
        .expect("an expired id can be created again");

    // Touch extends (sliding expiry).
    let id = fresh_id();
    store
        .save(&id, b"kept", 0, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(store.touch(&id, HOUR).await.unwrap());
    time.pass(Duration::from_millis(3000)).await;
    assert!(
        store.load(&id).await.unwrap().is_some(),
        "touch extended the life"
    );
}

async fn sessions_api(store: Arc<dyn DynStore>) {
    let s = sessions(store.clone());
    let id = fresh_id();
    assert_eq!(s.load(&id).await.unwrap(), None);
    s.update(&id, |d| d.insert("user".into(), json!("alice")))
        .await
        .unwrap();
    assert_eq!(s.load(&id).await.unwrap().unwrap()["user"], "alice");

    // Oversized: a typed error, and nothing is half-written.
    let tiny = Sessions::new(
        store.clone(),
        SessionOptions {
            codec: Codec {
                max_bytes: 200,
                compress_above: None,
            },
            ..Default::default()
        },
        SECRET,
    );
    let r = tiny
        .update(&id, |d| d.insert("big".into(), json!("x".repeat(1000))))
        .await;
    assert!(
        matches!(r, Err(StoreError::TooLarge { max: 200, .. })),
        "{r:?}"
    );
    let kept = s.load(&id).await.unwrap().unwrap();
    assert_eq!(
        kept.len(),
        1,
        "the refused write left the session as it was"
    );

    // Corrupt stored bytes: a typed error on load; an update starts fresh.
    let bad = self::fresh_id();
    store.save(&bad, b"\x00garbage", 0, HOUR).await.unwrap();
    assert!(matches!(s.load(&bad).await, Err(StoreError::Corrupt(_))));
    s.update(&bad, |d| d.insert("ok".into(), json!(true)))
        .await
        .unwrap();
    assert_eq!(s.load(&bad).await.unwrap().unwrap()["ok"], true);

    // Renew moves the data to a new id; the old id is gone.
    let new_id = s.renew(&id).await.unwrap();
    assert_ne!(new_id, id);
    assert_eq!(s.load(&new_id).await.unwrap().unwrap()["user"], "alice");
    assert_eq!(s.load(&id).await.unwrap(), None);

    // Clear empties but keeps the id.
    s.clear(&new_id).await.unwrap();
    assert_eq!(s.load(&new_id).await.unwrap(), Some(Default::default()));
}

/// Two "nodes" (two `Sessions` over one store, no shared lock) each make 200 concurrent
/// increments of one key: every one must survive.
async fn no_lost_updates(store: Arc<dyn DynStore>) {
    let id = fresh_id();
    let nodes = [
        Arc::new(sessions(store.clone())),
        Arc::new(sessions(store.clone())),
    ];
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..200 {
            let node = node.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                node.update(&id, |d| {
                    let n = d.get("count").and_then(|v| v.as_i64()).unwrap_or(0);
                    d.insert("count".into(), json!(n + 1));
                })
                .await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let final_count = nodes[0].load(&id).await.unwrap().unwrap()["count"].as_i64();
    assert_eq!(final_count, Some(400));
    assert_eq!(
        nodes[0].pending_locks() + nodes[1].pending_locks(),
        0,
        "per-session locks are released"
    );
}

async fn suite(store: Arc<dyn DynStore>, time: Time) {
    load_save_delete(store.as_ref()).await;
    expiry(store.as_ref(), &time).await;
    sessions_api(store.clone()).await;
    no_lost_updates(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    let (clock, now) = manual_clock();
    let store: Arc<dyn DynStore> = Arc::new(MemoryStore::with_clock(10_000, 64 << 20, clock));
    suite(store, Time::Manual(now)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_conforms() {
    let dir = std::env::temp_dir().join(format!("ferrocable-sqlite-{}", new_session_id()));
    let (clock, now) = manual_clock();
    let store = SqlStore::sqlite(&dir.join("sessions.sqlite3"))
        .await
        .unwrap()
        .with_clock(clock);
    suite(Arc::new(store), Time::Manual(now)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sessions_survive_a_reopen() {
    let dir = std::env::temp_dir().join(format!("ferrocable-sqlite-{}", new_session_id()));
    let path = dir.join("sessions.sqlite3");
    let id = fresh_id();
    {
        let s = sessions(Arc::new(SqlStore::sqlite(&path).await.unwrap()));
        s.update(&id, |d| d.insert("count".into(), json!(7)))
            .await
            .unwrap();
    }
    let s = sessions(Arc::new(SqlStore::sqlite(&path).await.unwrap()));
    assert_eq!(s.load(&id).await.unwrap().unwrap()["count"], 7);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_sweep_removes_expired_rows() {
    let dir = std::env::temp_dir().join(format!("ferrocable-sqlite-{}", new_session_id()));
    let (clock, now) = manual_clock();
    let store = SqlStore::sqlite(&dir.join("s.sqlite3"))
        .await
        .unwrap()
        .with_clock(clock);
    store
        .save(&fresh_id(), b"a", 0, Duration::from_secs(1))
        .await
        .unwrap();
    store.save(&fresh_id(), b"b", 0, HOUR).await.unwrap();
    now.fetch_add(5000, Ordering::SeqCst);
    assert_eq!(store.sweep().await.unwrap(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let (clock, now) = manual_clock();
    let store = SqlStore::postgres(&postgres_url(), 10)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is required: {e}", postgres_url()))
        .with_clock(clock);
    suite(Arc::new(store), Time::Manual(now)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms() {
    let prefix = format!("ferrocable-test:{}:", new_session_id());
    let store = RedisStore::connect(&redis_url(), &prefix)
        .await
        .unwrap_or_else(|e| panic!("Redis at {} is required: {e}", redis_url()));
    suite(Arc::new(store), Time::Real).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_store_conforms() {
    let prefix = format!("ft{}:", &new_session_id()[..8]);
    let store = MemcachedStore::connect(&memcached_url(), &prefix)
        .await
        .unwrap_or_else(|e| panic!("Memcached at {} is required: {e}", memcached_url()));
    suite(Arc::new(store), Time::Real).await;
}

#[tokio::test]
async fn unreachable_stores_are_typed_errors_not_hangs() {
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        RedisStore::connect("redis://127.0.0.1:1/0", "x:"),
    )
    .await
    .unwrap();
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        SqlStore::postgres("postgres://postgres@127.0.0.1:1/test", 1),
    )
    .await
    .unwrap();
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        MemcachedStore::connect("memcached://127.0.0.1:1", "x:"),
    )
    .await
    .unwrap();
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    // The client's own error is kept as the source, for the log's cause chain.
    let e = r.err().unwrap();
    let source = std::error::Error::source(&e).expect("a source");
    assert!(e.to_string().ends_with(&source.to_string()), "{e}");
    let r = ferrocable_session::open_store("mongodb://x", std::path::Path::new("/tmp"), "").await;
    assert!(matches!(r, Err(StoreError::Config(_))));
}
