//! Boot-time deployment checks against real Redis servers configured the ways that lose
//! sessions, and `strict`, which turns the warnings into a refusal to start.
#![allow(missing_docs)]

mod common;

use common::*;
use ferrocable_server::checks::deployment_checks;
use ferrocable_server::{ServeConfig, StartError};

fn own_redis(policy: &str, maxmemory: &str) -> (OwnService, u16) {
    let port = spare_port();
    let service = OwnService::redis_with(
        port,
        &["--maxmemory-policy", policy, "--maxmemory", maxmemory],
    );
    (service, port)
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
