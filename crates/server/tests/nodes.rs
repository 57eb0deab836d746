//! Several nodes, one bus: broadcasts cross nodes, only nodes with subscribers get them, the
//! origin delivers once, and a Redis outage leaves local traffic alone and heals by itself.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use ferrocable_node::Node;
use ferrocable_node::pubsub::MemoryBus;
use ferrocable_server::{RunningServer, ServeConfig};
use futures_util::StreamExt;
use serde_json::json;

async fn subscribed(server: &RunningServer) -> Client<tokio::net::TcpStream> {
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    c.subscribe(BENCH).await;
    c
}

/// Broadcasts `tag` through `via` until `client` receives it (the bus subscription is
/// asynchronous), or panics after `limit`.
async fn until_received(
    via: &RunningServer,
    client: &mut Client<tokio::net::TcpStream>,
    tag: &str,
    limit: Duration,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        via.node()
            .broadcast("all", &json!({"tag": tag}).to_string())
            .unwrap();
        let got = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                let f = client.frame().await;
                if f["message"]["tag"] == tag {
                    return;
                }
            }
        })
        .await;
        if got.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{tag} never crossed the bus"
        );
    }
}

async fn nothing_more(client: &mut Client<tokio::net::TcpStream>, d: Duration) {
    if let Ok(Some(Ok(m))) = tokio::time::timeout(d, client.ws.next()).await {
        let t = m.as_text().unwrap_or_default().to_owned();
        assert!(t.contains("\"ping\""), "unexpected extra frame {t}");
    }
}

#[tokio::test]
async fn memory_bus_crosses_nodes_once_and_only_where_subscribed() {
    let bus = MemoryBus::new();
    let a = start_with(config(), Node::builder().pubsub(bus.pubsub())).await;
    let b = start_with(config(), Node::builder().pubsub(bus.pubsub())).await;
    let c = start_with(config(), Node::builder().pubsub(bus.pubsub())).await;
    let mut on_a = subscribed(&a).await;
    let mut on_b = subscribed(&b).await;
    until_received(&b, &mut on_a, "hello", Duration::from_secs(5)).await;
    // The origin delivered its own copy exactly once.
    assert_eq!(on_b.frame().await["message"]["tag"], "hello");
    nothing_more(&mut on_b, Duration::from_millis(200)).await;
    nothing_more(&mut on_a, Duration::from_millis(200)).await;
    assert_eq!(
        metric(
            &metrics(c.local_addr()).await,
            "ferrocable_pubsub_received_total"
        ),
        Some(0.0),
        "no subscribers, no traffic"
    );
}

fn redis_config(url: &str, prefix: &str) -> ServeConfig {
    ServeConfig {
        pubsub: url.into(),
        pubsub_prefix: prefix.into(),
        ..config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pubsub_crosses_nodes() {
    let prefix = format!("ferrocable-test:{}:", ferrocable_session::new_session_id());
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let a = start(redis_config(&url, &prefix)).await;
    let b = start(redis_config(&url, &prefix)).await;
    let mut on_a = subscribed(&a).await;
    let mut on_b = subscribed(&b).await;
    until_received(&b, &mut on_a, "via-b", Duration::from_secs(10)).await;
    until_received(&a, &mut on_b, "via-a", Duration::from_secs(10)).await;
    assert_eq!(
        metric(
            &metrics(a.local_addr()).await,
            "ferrocable_pubsub_connected"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_leaves_local_traffic_alone_and_the_bus_heals() {
    let port = spare_port();
    let mut redis = OwnService::redis(port);
    let url = format!("redis://127.0.0.1:{port}/0");
    let a = start(redis_config(&url, "t:")).await;
    let b = start(redis_config(&url, "t:")).await;
    let mut on_a = subscribed(&a).await;
    until_received(&b, &mut on_a, "before", Duration::from_secs(10)).await;

    redis.stop();
    // Local delivery does not depend on the bus.
    a.node().broadcast("all", r#"{"tag":"local"}"#).unwrap();
    assert_eq!(on_a.frame().await["message"]["tag"], "local");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = metrics(a.local_addr()).await;
            if metric(&m, "ferrocable_pubsub_connected") == Some(0.0)
                && metric(&m, "ferrocable_pubsub_errors_total").unwrap_or(0.0) >= 1.0
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the outage shows in the metrics");

    let _redis = OwnService::redis(port);
    // Resubscribed without restarting anything.
    until_received(&b, &mut on_a, "after", Duration::from_secs(20)).await;
    assert_eq!(
        metric(
            &metrics(a.local_addr()).await,
            "ferrocable_pubsub_connected"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_pubsub_crosses_nodes() {
    let prefix = format!(
        "ferrocable-test-{}",
        &ferrocable_session::new_session_id()[..8]
    )
    .replace('-', "_");
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let a = start(redis_config(&url, &prefix)).await;
    let b = start(redis_config(&url, &prefix)).await;
    let mut on_a = subscribed(&a).await;
    let mut on_b = subscribed(&b).await;
    until_received(&b, &mut on_a, "nats-via-b", Duration::from_secs(10)).await;
    until_received(&a, &mut on_b, "nats-via-a", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_leaves_local_traffic_alone_and_the_bus_heals() {
    let port = spare_port();
    let mut nats = OwnService::nats(port);
    let url = format!("nats://127.0.0.1:{port}");
    let a = start(redis_config(&url, "t")).await;
    let b = start(redis_config(&url, "t")).await;
    let mut on_a = subscribed(&a).await;
    until_received(&b, &mut on_a, "before", Duration::from_secs(10)).await;
    nats.stop();
    a.node().broadcast("all", r#"{"tag":"local"}"#).unwrap();
    assert_eq!(on_a.frame().await["message"]["tag"], "local");
    tokio::time::timeout(Duration::from_secs(10), async {
        while metric(
            &metrics(a.local_addr()).await,
            "ferrocable_pubsub_connected",
        ) != Some(0.0)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the outage shows in the metrics");
    let _nats = OwnService::nats(port);
    until_received(&b, &mut on_a, "after", Duration::from_secs(30)).await;
}

/// Two nodes sharing a bus and a broker: a broadcast made through node B reaches a client of
/// node A; node A stops; its client reconnects to node B with its session id, is restored
/// without subscribing again, and gets every message broadcast meanwhile, once and in order.
async fn a_session_moves_between(a: RunningServer, b: RunningServer) {
    let mut c = connect_ext(a.local_addr(), None).await;
    let sid = c.frame().await["sid"].as_str().unwrap().to_owned();
    c.subscribe(BENCH).await;
    // Through node B (the bus subscription is asynchronous: retry until it crosses).
    until_received(&b, &mut c, "via-b", Duration::from_secs(10)).await;
    // Frames of registered messages carry positions from the shared broker.
    b.node().broadcast("all", r#"{"n":0}"#).unwrap();
    let last = c
        .message_n(0, Duration::from_secs(10))
        .await
        .expect("the stored message arrives");
    assert!(last["offset"].as_u64().is_some(), "{last}");

    // Node A goes away; its client is handed over (close 1001, no disconnect frame).
    a.shutdown().await;
    let (code, _) = c.closed().await;
    assert_eq!(code, Some(1001));
    for n in 1..=5 {
        b.node()
            .broadcast("all", &json!({ "n": n }).to_string())
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut c = connect_ext(b.local_addr(), Some(&sid)).await;
    let welcome = c.frame().await;
    assert_eq!(welcome["restored"], true, "{welcome}");
    assert_eq!(welcome["restored_ids"], json!([BENCH]));
    c.send(&history(
        BENCH,
        json!({"streams": {"all": {"epoch": last["epoch"], "offset": last["offset"]}}}),
    ))
    .await;
    let (replayed, end) = until_history_end(&mut c).await;
    assert_eq!(end["type"], "confirm_history", "{end}");
    let ns: Vec<u64> = replayed
        .iter()
        .map(|f| f["message"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![1, 2, 3, 4, 5]);
    // And it is live on node B.
    b.node().broadcast("all", r#"{"n":6}"#).unwrap();
    assert_eq!(c.frame().await["message"]["n"], 6);
}

/// Redis pub/sub + the Redis Streams broker (one script appends and publishes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_restores_on_another_node_via_redis() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let tag = ferrocable_session::new_session_id();
    let shared = || ServeConfig {
        broker: url.clone(),
        broker_prefix: format!("ferrocable-test:{tag}:broker:"),
        ..redis_config(&url, &format!("ferrocable-test:{tag}:stream:"))
    };
    a_session_moves_between(start(shared()).await, start(shared()).await).await;
}

/// NATS pub/sub + the JetStream broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_restores_on_another_node_via_nats() {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let tag: String = ferrocable_session::new_session_id()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    let shared = || ServeConfig {
        pubsub: url.clone(),
        pubsub_prefix: format!("fctest{tag}:stream:"),
        broker: url.clone(),
        broker_prefix: format!("fctest{tag}:broker:"),
        ..config()
    };
    a_session_moves_between(start(shared()).await, start(shared()).await).await;
    // Leave no test streams behind.
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let name = format!("FCTEST{}_BROKER", tag.to_ascii_uppercase());
    let _ = js.delete_stream(&name).await;
    let _ = js.delete_stream(format!("{name}_SESSIONS")).await;
}

/// A Redis restart in the middle of a broadcast run, with Redis as bus **and** broker:
/// broadcasts keep reaching local subscribers (unstored: no offset) while Redis is gone, the
/// metrics count the failed appends, and after Redis returns broadcasts are stored and cross
/// nodes again, under a new epoch (this Redis kept nothing on disk), without restarting
/// ferrocable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_run_keeps_broadcasts_flowing_and_storing_resumes() {
    let port = spare_port();
    let mut redis = OwnService::redis(port);
    let url = format!("redis://127.0.0.1:{port}/0");
    let shared = || ServeConfig {
        broker: url.clone(),
        broker_prefix: "b:".into(),
        ..redis_config(&url, "s:")
    };
    let a = start(shared()).await;
    let b = start(shared()).await;
    let mut on_a = connect_ext(a.local_addr(), None).await;
    on_a.frame().await;
    on_a.subscribe(BENCH).await;
    until_received(&b, &mut on_a, "before", Duration::from_secs(10)).await;
    a.node().broadcast("all", r#"{"n":1}"#).unwrap();
    let stored = on_a
        .message_n(1, Duration::from_secs(10))
        .await
        .expect("the stored message arrives");
    let epoch_before = stored["epoch"].as_str().unwrap().to_owned();

    redis.stop();
    for n in 2..=4 {
        a.node()
            .broadcast("all", &json!({ "n": n }).to_string())
            .unwrap();
        let f = on_a
            .message_n(n, Duration::from_secs(10))
            .await
            .expect("local delivery continues while Redis is down");
        assert!(f.get("offset").is_none(), "unstored during the outage: {f}");
    }
    let m = metrics(a.local_addr()).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("ferrocable_broker_errors_total{reason=\"append\"}")),
        "the failed appends are counted"
    );

    let _redis = OwnService::redis(port);
    // Bus and broker come back by themselves.
    until_received(&b, &mut on_a, "after", Duration::from_secs(20)).await;
    let f = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            a.node().broadcast("all", r#"{"n":5}"#).unwrap();
            let f = on_a.frame().await;
            if f["message"]["n"] == 5 && f.get("offset").is_some() {
                return f;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("stored again after Redis returned");
    assert_ne!(f["epoch"], epoch_before, "Redis lost its data: a new epoch");
}

/// A NATS restart in the middle of a run, with NATS as bus **and** JetStream broker: local
/// delivery continues (unstored) while NATS is gone, the failures are counted, and after NATS
/// returns with its JetStream store, stored delivery across nodes resumes in the **same**
/// epoch (the history survived), without restarting ferrocable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_run_keeps_broadcasts_flowing_and_history_survives() {
    let port = spare_port();
    let store = std::env::temp_dir().join(format!("ferrocable-js-{port}"));
    let _ = std::fs::remove_dir_all(&store);
    let mut nats = OwnService::nats_jetstream(port, &store);
    let url = format!("nats://127.0.0.1:{port}");
    let shared = || ServeConfig {
        pubsub: url.clone(),
        pubsub_prefix: "fcrestart:stream:".into(),
        broker: url.clone(),
        broker_prefix: "fcrestart:broker:".into(),
        ..config()
    };
    let a = start(shared()).await;
    let b = start(shared()).await;
    let mut on_a = connect_ext(a.local_addr(), None).await;
    on_a.frame().await;
    on_a.subscribe(BENCH).await;
    until_received(&b, &mut on_a, "before", Duration::from_secs(10)).await;
    a.node().broadcast("all", r#"{"n":1}"#).unwrap();
    let stored = on_a
        .message_n(1, Duration::from_secs(10))
        .await
        .expect("the stored message arrives");
    let epoch = stored["epoch"].as_str().unwrap().to_owned();

    nats.stop();
    a.node().broadcast("all", r#"{"n":2}"#).unwrap();
    let f = on_a
        .message_n(2, Duration::from_secs(15))
        .await
        .expect("local delivery continues while NATS is down");
    assert!(f.get("offset").is_none(), "unstored during the outage: {f}");
    let m = metrics(a.local_addr()).await;
    assert!(
        metric(&m, "ferrocable_pubsub_errors_total").unwrap_or(0.0) >= 1.0
            || m.lines()
                .any(|l| l.starts_with("ferrocable_broker_errors_total")),
        "the outage is counted"
    );

    let _nats = OwnService::nats_jetstream(port, &store);
    let f = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            b.node().broadcast("all", r#"{"n":3}"#).unwrap();
            if let Some(f) = on_a.message_n(3, Duration::from_millis(500)).await
                && f.get("offset").is_some()
            {
                return f;
            }
        }
    })
    .await
    .expect("stored delivery across nodes resumes after NATS returns");
    assert_eq!(
        f["epoch"],
        epoch.as_str(),
        "the JetStream store survived: same epoch"
    );
    let _ = std::fs::remove_dir_all(&store);
}
