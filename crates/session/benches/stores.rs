//! Load + save round trips per session store, on the real services.
//!
//! `cargo bench -p ferrocable-session --bench stores` (all stores) or with store names as
//! arguments: `… --bench stores -- sqlite redis`. Each store runs `CONCURRENCY` workers for
//! `OPS` load+save pairs in total, each worker on its own sessions (no contention), and
//! prints one markdown row and one JSON line: ops/s (pairs per second), p50 and p99 in ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrocable_session::{DynStore, SessionOptions, Sessions, new_session_id, open_store};

const CONCURRENCY: usize = 16;
const OPS: usize = 20_000;

fn url(name: &str) -> Option<String> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    Some(match name {
        "memory" => "memory".into(),
        "sqlite" => "sqlite".into(),
        "postgres" => env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
        "redis" => env("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "memcached" => env("MEMCACHED_URL", "memcached://127.0.0.1:11211"),
        _ => return None,
    })
}

async fn run(name: &str) {
    let Some(url) = url(name) else {
        eprintln!("unknown store {name}");
        return;
    };
    let dir = std::env::temp_dir().join(format!("ferrocable-bench-{}", new_session_id()));
    let store: Arc<dyn DynStore> = match open_store(&url, &dir, "bench:").await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: {e}");
            return;
        }
    };
    let sessions = Arc::new(Sessions::new(
        store,
        SessionOptions::default(),
        b"bench secret",
    ));
    let per_worker = OPS / CONCURRENCY;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let sessions = sessions.clone();
        workers.push(tokio::spawn(async move {
            let ids: Vec<String> = (0..64).map(|_| new_session_id()).collect();
            let mut lat = Vec::with_capacity(per_worker);
            for i in 0..per_worker {
                let id = &ids[i % ids.len()];
                let t = Instant::now();
                // One load + one save (update = load, change, compare-and-set save).
                sessions
                    .update(id, |d| {
                        let n = d.get("n").and_then(|v| v.as_i64()).unwrap_or(0);
                        d.insert("n".into(), (n + 1).into());
                        d.insert("user".into(), "someone@example.com".into());
                    })
                    .await
                    .expect("update");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all: Vec<Duration> = Vec::with_capacity(OPS);
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    let wall = started.elapsed();
    all.sort();
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    let ops = all.len() as f64 / wall.as_secs_f64();
    println!(
        "| {name} | {} | {CONCURRENCY} | {ops:.0} | {:.2} | {:.2} |",
        all.len(),
        pct(0.5),
        pct(0.99)
    );
    eprintln!(
        "{{\"store\":\"{name}\",\"pairs\":{},\"concurrency\":{CONCURRENCY},\"ops_per_s\":{ops:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        all.len(),
        pct(0.5),
        pct(0.99)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let names: Vec<&str> = if args.is_empty() {
        vec!["memory", "sqlite", "postgres", "redis", "memcached"]
    } else {
        args.iter().map(String::as_str).collect()
    };
    println!("| store | load+save pairs | concurrency | pairs/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for name in names {
        run(name).await;
    }
}
