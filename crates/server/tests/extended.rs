//! AnyCable's extended protocol (`actioncable-v1-ext-json`) at the frame level: session ids,
//! restore after a drop, history replay in offset order without duplicates, rejections,
//! and plain clients left unchanged.

mod common;

use common::*;
use ferrocable_server::ServeConfig;
use serde_json::{Value, json};

fn offsets(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn welcome_carries_a_session_id_and_frames_carry_positions() {
    let server = start(config()).await;
    let mut ext = connect_ext(server.local_addr(), None).await;
    let welcome = ext.frame().await;
    assert_eq!(welcome["type"], "welcome");
    let sid = welcome["sid"].as_str().unwrap();
    assert!(sid.len() >= 8, "{welcome}");
    ext.subscribe(BENCH).await;

    let mut plain = connect(server.local_addr()).await;
    plain.welcomed().await;
    plain.subscribe(BENCH).await;

    server.node().broadcast("all", r#"{"n":1}"#).unwrap();
    server.node().broadcast("all", r#"{"n":2}"#).unwrap();
    let a = ext.frame().await;
    let b = ext.frame().await;
    assert_eq!(a["message"], json!({"n": 1}));
    assert_eq!(a["stream_id"], "all");
    assert!(a["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(b["epoch"], a["epoch"]);
    assert_eq!(
        b["offset"].as_u64().unwrap(),
        a["offset"].as_u64().unwrap() + 1
    );
    // A plain ActionCable client gets the Rails frame, byte for byte the same shape.
    assert_eq!(
        plain.frame().await,
        json!({"identifier": BENCH, "message": {"n": 1}})
    );

    ext.send(r#"{"command":"ping"}"#).await;
    assert_eq!(ext.frame().await, json!({"type": "pong"}));
    // A pong is accepted silently: the next frame is the next broadcast.
    ext.send(r#"{"command":"pong"}"#).await;
    server.node().broadcast("all", r#"{"n":3}"#).unwrap();
    assert_eq!(ext.frame().await["message"], json!({"n": 3}));
}

#[tokio::test]
async fn a_dropped_session_is_restored_and_replays_every_missed_message_once_in_order() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let mut c = connect_ext(addr, None).await;
    let sid = c.frame().await["sid"].as_str().unwrap().to_owned();
    c.subscribe(BENCH).await;
    server.node().broadcast("all", r#"{"n":1}"#).unwrap();
    let seen = c.frame().await;
    let epoch = seen["epoch"].as_str().unwrap().to_owned();
    let last = seen["offset"].as_u64().unwrap();

    // The transport dies without a close handshake; messages keep coming meanwhile.
    drop(c);
    for n in 2..=4 {
        server
            .node()
            .broadcast("all", &json!({ "n": n }).to_string())
            .unwrap();
    }

    let mut c = connect_ext(addr, Some(&sid)).await;
    let welcome = c.frame().await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert_eq!(welcome["restored"], true, "{welcome}");
    assert_eq!(welcome["restored_ids"], json!([BENCH]));
    let new_sid = welcome["sid"].as_str().unwrap();
    assert_ne!(new_sid, sid, "a restored session gets a new id");

    // A live message arrives before the client asks for history: it must not overtake the
    // replay, and must not come twice.
    server.node().broadcast("all", r#"{"n":5}"#).unwrap();
    c.send(&history(
        BENCH,
        json!({"streams": {"all": {"epoch": epoch, "offset": last}}}),
    ))
    .await;
    let (replayed, end) = until_history_end(&mut c).await;
    assert_eq!(end["type"], "confirm_history");
    assert_eq!(end["identifier"], BENCH);
    server.node().broadcast("all", r#"{"n":6}"#).unwrap();
    let mut frames = replayed;
    while frames.len() < 5 {
        frames.push(c.frame().await);
    }
    let ns: Vec<u64> = frames
        .iter()
        .map(|f| f["message"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![2, 3, 4, 5, 6], "{frames:?}");
    assert_eq!(offsets(&frames), (last + 1..=last + 5).collect::<Vec<_>>());

    // The restored subscription is live without a new subscribe.
    c.send(&message(BENCH, json!({"action": "echo", "x": 1})))
        .await;
    assert_eq!(
        c.frame().await["message"],
        json!({"action": "echo", "x": 1})
    );

    // A session id can be restored once; a second try is a fresh session.
    let mut again = connect_ext(addr, Some(&sid)).await;
    let w = again.frame().await;
    assert_eq!(w["type"], "welcome");
    assert!(w.get("restored").is_none(), "{w}");
}

#[tokio::test]
async fn unknown_or_empty_session_ids_start_fresh_sessions() {
    let server = start(config()).await;
    for sid in ["", "nope", &"x".repeat(500)] {
        let mut c = connect_ext(server.local_addr(), Some(sid)).await;
        let w = c.frame().await;
        assert_eq!(w["type"], "welcome");
        assert!(w["sid"].is_string());
        assert!(w.get("restored").is_none(), "{w}");
    }
}

#[tokio::test]
async fn subscribe_with_history_confirms_then_replays_since_a_time() {
    let server = start(config()).await;
    for n in 1..=3 {
        server
            .node()
            .broadcast("all", &json!({ "n": n }).to_string())
            .unwrap();
    }
    let mut c = connect_ext(server.local_addr(), None).await;
    c.frame().await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60;
    c.send(
        &json!({"command": "subscribe", "identifier": BENCH, "history": {"since": since}})
            .to_string(),
    )
    .await;
    assert_eq!(c.frame().await["type"], "confirm_subscription");
    let (replayed, end) = until_history_end(&mut c).await;
    assert_eq!(end["type"], "confirm_history");
    let ns: Vec<u64> = replayed
        .iter()
        .map(|f| f["message"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![1, 2, 3]);
}

#[tokio::test]
async fn history_that_cannot_be_served_is_rejected_never_guessed() {
    let server = start(config()).await;
    let mut c = connect_ext(server.local_addr(), None).await;
    c.frame().await;
    c.subscribe(BENCH).await;
    server.node().broadcast("all", "1").unwrap();
    let f = c.frame().await;

    // An epoch from another storage generation.
    c.send(&history(
        BENCH,
        json!({"streams": {"all": {"epoch": "other", "offset": 1}}}),
    ))
    .await;
    let (data, end) = until_history_end(&mut c).await;
    assert!(data.is_empty(), "nothing partial: {data:?}");
    assert_eq!(end["type"], "reject_history");

    // An offset beyond the newest.
    c.send(&history(
        BENCH,
        json!({"streams": {"all": {"epoch": f["epoch"], "offset": 999}}}),
    ))
    .await;
    assert_eq!(until_history_end(&mut c).await.1["type"], "reject_history");

    // A subscription the connection does not have.
    c.send(&history(r#"{"channel":"Nope"}"#, json!({"since": 1})))
        .await;
    assert_eq!(until_history_end(&mut c).await.1["type"], "reject_history");

    // A request that asks for nothing is a protocol error, answered with an error frame.
    c.send(&history(BENCH, json!({}))).await;
    let e = c.frame().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["reason"], "malformed_history");

    // Live delivery still works after the rejections.
    server.node().broadcast("all", "2").unwrap();
    assert_eq!(c.frame().await["message"], 2);
    let m = metrics(server.local_addr()).await;
    assert!(metric(&m, "ferrocable_history_rejected_total").unwrap() >= 3.0);
}

#[tokio::test]
async fn shutdown_hands_extended_sessions_over_without_a_disconnect_frame() {
    let server = start(config()).await;
    let mut ext = connect_ext(server.local_addr(), None).await;
    ext.frame().await;
    ext.subscribe(BENCH).await;
    let mut plain = connect(server.local_addr()).await;
    plain.welcomed().await;
    let node = server.node().clone();
    let stop = tokio::spawn(async move { node.shutdown().await });
    let (code, frames) = ext.closed().await;
    assert_eq!(code, Some(1001));
    assert!(
        frames.iter().all(|f| f["type"] != "disconnect"),
        "{frames:?}"
    );
    let (_, frames) = plain.closed().await;
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "disconnect" && f["reason"] == "server_restart"),
        "{frames:?}"
    );
    stop.await.unwrap();
}

/// A memory broker that counts session commits.
struct CountingBroker {
    inner: ferrocable_node::broker::MemoryBroker,
    commits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl ferrocable_node::broker::Broker for CountingBroker {
    fn append(
        &self,
        stream: &str,
        message: bytes::Bytes,
        origin: ferrocable_node::pubsub::NodeId,
    ) -> BoxFuture<
        'static,
        Result<ferrocable_node::broker::Appended, ferrocable_node::broker::BrokerError>,
    > {
        self.inner.append(stream, message, origin)
    }
    fn history_from<'a>(
        &'a self,
        stream: &'a str,
        position: &'a ferrocable_node::broker::StreamPosition,
    ) -> BoxFuture<'a, Result<ferrocable_node::broker::History, ferrocable_node::broker::BrokerError>>
    {
        self.inner.history_from(stream, position)
    }
    fn history_since<'a>(
        &'a self,
        stream: &'a str,
        since_secs: u64,
    ) -> BoxFuture<'a, Result<ferrocable_node::broker::History, ferrocable_node::broker::BrokerError>>
    {
        self.inner.history_since(stream, since_secs)
    }
    fn commit_session<'a>(
        &'a self,
        sid: &'a str,
        state: bytes::Bytes,
    ) -> BoxFuture<'a, Result<(), ferrocable_node::broker::BrokerError>> {
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.commit_session(sid, state)
    }
    fn restore_session<'a>(
        &'a self,
        sid: &'a str,
    ) -> BoxFuture<'a, Result<Option<bytes::Bytes>, ferrocable_node::broker::BrokerError>> {
        self.inner.restore_session(sid)
    }
}

#[tokio::test]
async fn a_live_idle_session_is_saved_again_every_half_ttl() {
    use std::sync::atomic::Ordering;
    let commits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cfg = ServeConfig {
        ping_interval_ms: 200,
        sessions_ttl_secs: 1,
        ..config()
    };
    let broker = CountingBroker {
        inner: ferrocable_node::broker::MemoryBroker::new(cfg.history_limits()),
        commits: commits.clone(),
    };
    let server = start_with(cfg, ferrocable_node::Node::builder().broker(broker)).await;
    let mut c = connect_ext(server.local_addr(), None).await;
    c.frame().await;
    c.subscribe(BENCH).await;
    let after_subscribe = commits.load(Ordering::Relaxed);
    assert!(after_subscribe >= 2, "welcome and subscribe commit");
    // Idle for 2.5 s (pings every 200 ms, TTL 1 s): saved again about every 0.5 s.
    let idle = tokio::time::Instant::now() + std::time::Duration::from_millis(2500);
    while tokio::time::Instant::now() < idle {
        let _ = tokio::time::timeout_at(idle, c.any_frame()).await;
    }
    let touched = commits.load(Ordering::Relaxed) - after_subscribe;
    assert!((3..=8).contains(&touched), "{touched} refreshes in 2.5 s");
}

#[tokio::test]
async fn with_a_pong_timeout_silent_extended_clients_are_disconnected_with_no_pong() {
    let cfg = ServeConfig {
        ping_interval_ms: 200,
        pong_timeout_secs: 1,
        ..config()
    };
    let server = start(cfg).await;
    let mut silent = connect_ext(server.local_addr(), None).await;
    let mut ponging = connect_ext(server.local_addr(), None).await;
    let mut plain = connect(server.local_addr()).await;
    let (code, frames) = tokio::time::timeout(std::time::Duration::from_secs(4), async {
        // The ponging client answers every ping meanwhile.
        let pong = async {
            loop {
                let f = ponging.any_frame().await;
                if f["type"] == "ping" {
                    ponging.send(r#"{"command":"pong"}"#).await;
                }
            }
        };
        tokio::select! {
            closed = silent.closed() => closed,
            _ = pong => unreachable!(),
        }
    })
    .await
    .expect("the silent client is disconnected within 4 s");
    assert!(
        frames.iter().any(|f| f["type"] == "disconnect"
            && f["reason"] == "no_pong"
            && f["reconnect"] == true),
        "{frames:?}"
    );
    assert_eq!(code, Some(1000));
    // The ponging extended client and the plain client are still served.
    ponging.send(r#"{"command":"ping"}"#).await;
    loop {
        if ponging.any_frame().await["type"] == "pong" {
            break;
        }
    }
    plain.send(&subscribe(BENCH)).await;
    loop {
        let f = plain.frame().await;
        if f["type"] == "confirm_subscription" {
            break;
        }
    }
}
