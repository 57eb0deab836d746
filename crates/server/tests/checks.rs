//! Boot-time deployment checks against real Redis servers configured the ways that lose
//! sessions, a real PostgreSQL sessions table without its expiry index, and `strict`, which
//! turns the warnings into a refusal to start.
#![allow(missing_docs)]

mod common;

use common::*;
use ferrocable_server::checks::deployment_checks;
use ferrocable_server::{ServeConfig, StartError};

fn own_redis(policy: &str, maxmemory: &str) -> (OwnService, u16) {
    OwnService::redis_on_spare_port(&["--maxmemory-policy", policy, "--maxmemory", maxmemory])
}

fn sessions_in(port: u16) -> ServeConfig {
    ServeConfig {
        session_store: format!("redis://127.0.0.1:{port}/0"),
        ..config()
    }
}

#[tokio::test]
async fn a_session_redis_that_evicts_any_key_is_named_and_strict_refuses_it() {
    let (_redis, port) = own_redis("allkeys-lru", "64mb");
    let advice = deployment_checks(&sessions_in(port)).await;
    assert_eq!(advice.len(), 1, "{advice:?}");
    assert_eq!(advice[0].check, "session_redis_eviction");
    assert!(advice[0].message.contains("volatile-lru"), "{}", advice[0]);

    // Warned, it still starts.
    let server = start(sessions_in(port)).await;
    server.shutdown().await;
    // Strict, it does not.
    let strict = ServeConfig {
        strict: true,
        ..sessions_in(port)
    };
    match ferrocable_server::start(&strict, ferrocable_server::Composition::default()).await {
        Err(StartError::Deployment(found)) => assert_eq!(found, advice),
        other => panic!("strict start with advice: {other:?}"),
    }
}

#[tokio::test]
async fn a_volatile_policy_needs_a_maxmemory_and_is_fine_with_one() {
    let (_unbounded, port) = own_redis("volatile-lru", "0");
    let advice = deployment_checks(&sessions_in(port)).await;
    assert_eq!(advice.len(), 1, "{advice:?}");
    assert!(advice[0].message.contains("maxmemory"), "{}", advice[0]);

    let (_good, port) = own_redis("volatile-lru", "64mb");
    assert_eq!(deployment_checks(&sessions_in(port)).await, Vec::new());
    let strict = ServeConfig {
        strict: true,
        ..sessions_in(port)
    };
    let server = start(strict).await;
    server.shutdown().await;
}

#[tokio::test]
async fn sessions_in_the_bus_redis_are_refused_under_strict() {
    let (_redis, port) = own_redis("volatile-lru", "64mb");
    let url = format!("redis://127.0.0.1:{port}/0");
    let config = ServeConfig {
        strict: true,
        pubsub: url.clone(),
        broker: url.clone(),
        ..sessions_in(port)
    };
    let err = ferrocable_server::start(&config, ferrocable_server::Composition::default())
        .await
        .expect_err("strict refuses");
    let text = err.to_string();
    assert!(text.contains("shared_session_redis"), "{text}");
    assert!(text.contains("own Redis instance"), "{text}");
}

/// Runs one SQL statement on the real PostgreSQL with `psql`, as an operator would.
fn psql(database: &str, sql: &str) {
    let status = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            sql,
        ])
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .status()
        .expect("psql runs");
    assert!(status.success(), "psql {sql:?} failed");
}

#[tokio::test]
async fn a_postgres_sessions_table_without_its_expiry_index_is_named() {
    let db = format!("ferrocable_checks_{}", std::process::id());
    psql("test", &format!("DROP DATABASE IF EXISTS {db}"));
    psql("test", &format!("CREATE DATABASE {db}"));
    let cfg = ServeConfig {
        session_store: format!("postgres://postgres@127.0.0.1:5432/{db}"),
        ..config()
    };
    let named = |advice: &[ferrocable_server::checks::Advice]| {
        advice.iter().any(|a| a.check == "sql_expiry_index")
    };
    assert!(
        !named(&deployment_checks(&cfg).await),
        "no table yet: the migration makes it with its index"
    );
    psql(
        &db,
        "CREATE TABLE ferrocable_sessions (id TEXT PRIMARY KEY, data BYTEA NOT NULL, \
         version BIGINT NOT NULL, expires_at BIGINT NOT NULL)",
    );
    let advice = deployment_checks(&cfg).await;
    assert!(named(&advice), "{advice:?}");
    assert!(
        advice.iter().any(|a| a.message.contains("CREATE INDEX")),
        "the fix is named: {advice:?}"
    );
    psql(
        &db,
        "CREATE INDEX ferrocable_sessions_expires_at ON ferrocable_sessions (expires_at)",
    );
    assert!(!named(&deployment_checks(&cfg).await));
    psql("test", &format!("DROP DATABASE {db}"));
}
