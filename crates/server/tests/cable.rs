//! The cable endpoint frame by frame: every server frame and every bad-input case.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use ferrocable_node::{Authenticator, ConnectRequest, Identity, Node, Unauthorized};
use futures_util::SinkExt;
use serde_json::json;

fn rooms() -> ferrocable_node::NodeBuilder {
    Node::builder().channel("RoomChannel", RoomChannel)
}

const ROOM1: &str = r#"{"channel":"RoomChannel","room":1}"#;

#[tokio::test]
async fn welcome_comes_first_with_the_negotiated_subprotocol() {
    let server = start(config()).await;
    let mut c = connect(server.local_addr()).await;
    assert_eq!(c.protocol.as_deref(), Some("actioncable-v1-json"));
    c.welcomed().await;
    assert_eq!(
        metric(
            &metrics(server.local_addr()).await,
            "ferrocable_connections"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn unsupported_subprotocols_are_never_echoed() {
    let server = start(config()).await;
    let c = connect_with(
        server.local_addr(),
        &[(
            "sec-websocket-protocol",
            "actioncable-unsupported, anycable-token.x",
        )],
    )
    .await;
    assert_eq!(c.protocol, None);
}

#[tokio::test]
async fn subscribe_confirms_and_transmissions_in_subscribed_come_first() {
    let server = start_with(config(), rooms()).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    c.send(&subscribe(ROOM1)).await;
    assert_eq!(
        c.frame().await,
        json!({"identifier": ROOM1, "message": {"hello": 1}})
    );
    assert_eq!(
        c.frame().await,
        json!({"identifier": ROOM1, "type": "confirm_subscription"})
    );
    assert_eq!(
        metric(
            &metrics(server.local_addr()).await,
            "ferrocable_subscriptions"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn the_identifier_is_echoed_byte_for_byte() {
    let server = start_with(config(), rooms()).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    let odd = "{ \"room\" : 1, \"channel\":\"RoomChannel\", \"x\":\"é\\u00e9\" }";
    c.send(&subscribe(odd)).await;
    let f = c.frame().await;
    assert_eq!(f["identifier"].as_str(), Some(odd));
    let f = c.frame().await;
    assert_eq!(f["type"], "confirm_subscription");
    assert_eq!(f["identifier"].as_str(), Some(odd));
}

#[tokio::test]
async fn confirmation_means_broadcasts_arrive() {
    let server = start_with(config(), rooms()).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    c.send(&subscribe(ROOM1)).await;
    c.frame().await; // hello
    c.frame().await; // confirm
    let r = server.node().broadcast("room_1", r#"{"n":1}"#).unwrap();
    assert_eq!(r.delivered, 1);
    assert_eq!(
        c.frame().await,
        json!({"identifier": ROOM1, "message": {"n": 1}})
    );
}

#[tokio::test]
async fn unknown_channel_and_bad_identifiers_are_rejected_never_silent() {
    let server = start(config()).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    for id in [
        r#"{"channel":"NoSuchChannel"}"#,
        "not json",
        "[1,2]",
        r#"{"room":1}"#,
    ] {
        c.send(&subscribe(id)).await;
        assert_eq!(
            c.frame().await,
            json!({"identifier": id, "type": "reject_subscription"})
        );
    }
    let m = metrics(server.local_addr()).await;
    assert_eq!(
        metric(&m, "ferrocable_rejected_subscriptions_total"),
        Some(4.0)
    );
    assert_eq!(metric(&m, "ferrocable_subscriptions"), Some(0.0));
}

#[tokio::test]
async fn a_channel_can_reject_after_transmitting() {
    let server = start_with(config(), rooms()).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    let id = r#"{"channel":"RoomChannel","room":0}"#;
    c.send(&subscribe(id)).await;
    assert_eq!(
        c.frame().await,
        json!({"identifier": id, "message": {"why": "no room"}})
    );
    assert_eq!(
        c.frame().await,
        json!({"identifier": id, "type": "reject_subscription"})
    );
}

#[tokio::test]
async fn duplicate_subscribe_is_harmless() {
    let server = start(config()).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    c.subscribe(BENCH).await;
    c.send(&subscribe(BENCH)).await;
    c.send(&message(BENCH, json!({"action": "echo", "n": 1})))
        .await;
    // The next frame is the echo: no second confirmation, no error.
    assert_eq!(
        c.frame().await,
        json!({"identifier": BENCH, "message": {"action": "echo", "n": 1}})
    );
    server.node().broadcast("all", "7").unwrap();
    assert_eq!(c.frame().await, json!({"identifier": BENCH, "message": 7}));
    assert_eq!(
        metric(
            &metrics(server.local_addr()).await,
            "ferrocable_subscriptions"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn message_runs_the_action_and_missing_action_means_receive() {
    let server = start_with(config(), rooms()).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    c.send(&subscribe(ROOM1)).await;
    c.frame().await;
    c.frame().await;
    c.send(&message(ROOM1, json!({"text": "hi"}))).await;
    assert_eq!(
        c.frame().await,
        json!({"identifier": ROOM1, "message": {"received": {"text": "hi"}}})
    );
}

#[tokio::test]
async fn broadcast_reaches_two_clients_and_unsubscribe_stops_it() {
    let server = start_with(config(), rooms()).await;
    let mut a = connect(server.local_addr()).await;
    let mut b = connect(server.local_addr()).await;
    for c in [&mut a, &mut b] {
        c.welcomed().await;
        c.send(&subscribe(ROOM1)).await;
        c.frame().await;
        c.frame().await;
    }
    a.send(&message(ROOM1, json!({"action": "speak", "text": "hello"})))
        .await;
    assert_eq!(
        a.frame().await,
        json!({"identifier": ROOM1, "message": "hello"})
    );
    assert_eq!(
        b.frame().await,
        json!({"identifier": ROOM1, "message": "hello"})
    );

    b.send(&unsubscribe(ROOM1)).await;
    // Unsubscribe has no reply; prove it took effect through the hub.
    tokio::time::timeout(TIMEOUT, async {
        while server.node().hub().subscriber_count("room_1") != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    a.send(&message(ROOM1, json!({"action": "speak", "text": "again"})))
        .await;
    assert_eq!(
        a.frame().await,
        json!({"identifier": ROOM1, "message": "again"})
    );
    b.send(&message(ROOM1, json!({"action": "speak", "text": "x"})))
        .await;
    let f = b.frame().await;
    assert_eq!(f["type"], "error");
    assert_eq!(f["reason"], "unknown_subscription");
}

#[tokio::test]
async fn stop_all_streams_detaches_the_subscription() {
    let server = start_with(config(), rooms()).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    c.send(&subscribe(ROOM1)).await;
    c.frame().await;
    c.frame().await;
    c.send(&message(ROOM1, json!({"action": "leave"}))).await;
    c.send(&message(ROOM1, json!({"action": "receive"}))).await;
    c.frame().await; // the receive reply proves "leave" was handled
    assert_eq!(server.node().hub().subscriber_count("room_1"), 0);
}

#[tokio::test]
async fn ping_carries_unix_seconds() {
    let mut cfg = config();
    cfg.ping_interval_ms = 100;
    let server = start(cfg).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    let f = c.any_frame().await;
    assert_eq!(f["type"], "ping");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = f["message"].as_u64().expect("numeric seconds");
    assert!(now.abs_diff(at) <= 2, "ping {at} vs now {now}");
}

#[tokio::test]
async fn bad_frames_get_an_error_frame_are_counted_and_the_connection_stays() {
    let server = start_with(config(), rooms()).await;
    let mut c = connect(server.local_addr()).await;
    let mut other = connect(server.local_addr()).await;
    c.welcomed().await;
    other.welcomed().await;
    other.subscribe(BENCH).await;
    c.send(&subscribe(ROOM1)).await;
    c.frame().await;
    c.frame().await;
    let cases: Vec<(String, &str)> = vec![
        ("garbage".into(), "malformed_json"),
        ("[1]".into(), "not_an_object"),
        ("{}".into(), "missing_command"),
        (
            r#"{"command":"dance","identifier":"{}"}"#.into(),
            "unknown_command",
        ),
        (r#"{"command":"subscribe"}"#.into(), "missing_identifier"),
        (
            r#"{"command":"message","identifier":"{}"}"#.into(),
            "missing_data",
        ),
        (
            message(r#"{"channel":"Nope"}"#, json!({"action": "x"})),
            "unknown_subscription",
        ),
        (unsubscribe(r#"{"channel":"Nope"}"#), "unknown_subscription"),
        (
            json!({"command": "message", "identifier": ROOM1, "data": "not json"}).to_string(),
            "malformed_data",
        ),
        (
            json!({"command": "message", "identifier": ROOM1, "data": "[1]"}).to_string(),
            "malformed_data",
        ),
        (message(ROOM1, json!({"action": "fly"})), "unknown_action"),
        (
            message(ROOM1, json!({"action": "explode"})),
            "action_failed",
        ),
    ];
    for (frame, reason) in &cases {
        c.send(frame).await;
        let f = c.frame().await;
        assert_eq!(f["type"], "error", "{frame} -> {f}");
        assert_eq!(f["reason"], *reason, "{frame} -> {f}");
        assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    c.ws.send(tokio_websockets::Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    assert_eq!(c.frame().await["reason"], "binary_frame");

    // Still subscribed and served; the other connection never noticed.
    c.send(&message(ROOM1, json!({"x": 1}))).await;
    assert_eq!(c.frame().await["message"]["received"]["x"], 1);
    other
        .send(&message(BENCH, json!({"action": "echo", "k": 2})))
        .await;
    assert_eq!(other.frame().await["message"]["k"], 2);

    let m = metrics(server.local_addr()).await;
    assert_eq!(
        metric(
            &m,
            r#"ferrocable_bad_frames_total{reason="malformed_json"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"ferrocable_bad_frames_total{reason="unknown_subscription"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, r#"ferrocable_bad_frames_total{reason="binary_frame"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_and_is_counted() {
    let mut cfg = config();
    cfg.max_command_bytes = 1024;
    let server = start(cfg).await;
    let mut c = connect(server.local_addr()).await;
    let mut other = connect(server.local_addr()).await;
    c.welcomed().await;
    other.welcomed().await;
    other.subscribe(BENCH).await;
    c.send(&message(BENCH, json!({"pad": "x".repeat(2000)})))
        .await;
    let (code, _) = c.closed().await;
    assert_eq!(code, Some(1009));
    let m = metrics(server.local_addr()).await;
    assert_eq!(
        metric(&m, r#"ferrocable_bad_frames_total{reason="too_large"}"#),
        Some(1.0)
    );
    other.send(&message(BENCH, json!({"action": "echo"}))).await;
    assert_eq!(other.frame().await["message"]["action"], "echo");
}

#[tokio::test]
async fn a_slow_client_is_disconnected_as_too_slow_and_nobody_else_slows_down() {
    let mut cfg = config();
    cfg.outbox_max_bytes = 64 * 1024;
    cfg.write_timeout_ms = 500;
    let server = start(cfg).await;
    let mut fast = connect(server.local_addr()).await;
    let mut slow = connect(server.local_addr()).await;
    fast.welcomed().await;
    slow.welcomed().await;
    fast.subscribe(BENCH).await;
    slow.subscribe(BENCH).await;
    // `slow` never reads again. Broadcast far more than socket buffers and its outbox hold.
    let payload = format!("\"{}\"", "y".repeat(16 * 1024));
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 1000 {
            if fast.frame().await["message"].is_string() {
                n += 1;
            }
        }
        n
    });
    for _ in 0..1000 {
        server.node().broadcast("all", &payload).unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), reader)
            .await
            .unwrap()
            .unwrap(),
        1000
    );
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = metrics(server.local_addr()).await;
            if metric(&m, r#"ferrocable_disconnects_total{reason="too_slow"}"#) == Some(1.0) {
                assert_eq!(metric(&m, "ferrocable_connections"), Some(1.0));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("slow client disconnected");
    drop(slow);
}

struct CookieAuth;

impl Authenticator for CookieAuth {
    async fn authenticate(&self, req: &ConnectRequest) -> Result<Identity, Unauthorized> {
        match req.cookie("user_id") {
            Some(id) => Ok(Identity::anonymous().with("user", id)),
            None => Err(Unauthorized::new("no user_id cookie")),
        }
    }
}

#[tokio::test]
async fn unauthorized_connections_get_disconnect_without_reconnect() {
    let server = start_with(config(), rooms().authenticator(CookieAuth)).await;
    let mut c = connect(server.local_addr()).await;
    let (code, frames) = c.closed().await;
    assert_eq!(
        frames,
        vec![json!({"type": "disconnect", "reason": "unauthorized", "reconnect": false})]
    );
    assert_eq!(code, Some(1000));
}

#[tokio::test]
async fn the_identity_from_cookies_reaches_channels() {
    let server = start_with(config(), rooms().authenticator(CookieAuth)).await;
    let mut c = connect_with(
        server.local_addr(),
        &[
            ("sec-websocket-protocol", "actioncable-v1-json"),
            ("cookie", "a=b; user_id=42"),
        ],
    )
    .await;
    c.welcomed().await;
    c.send(&subscribe(ROOM1)).await;
    c.frame().await;
    c.frame().await;
    c.send(&message(ROOM1, json!({"action": "whoami"}))).await;
    assert_eq!(c.frame().await["message"], json!({"user": "42"}));
}

#[tokio::test]
async fn shutdown_sends_server_restart_then_closes_with_1001() {
    let server = start_with(config(), rooms()).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    c.subscribe(BENCH).await;
    let addr = server.local_addr();
    let stop = tokio::spawn(server.shutdown());
    let (code, frames) = c.closed().await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "disconnect", "reason": "server_restart", "reconnect": true}))
    );
    assert_eq!(code, Some(1001));
    drop(c);
    let report = stop.await.unwrap();
    assert_eq!(report.remaining, 0);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

/// Holds `wait` actions until the test lets them go.
struct Gate(std::sync::Arc<tokio::sync::Notify>);

impl ferrocable_node::Channel for Gate {
    async fn subscribed(&self, _: &mut ferrocable_node::ChannelContext) {}

    async fn perform(
        &self,
        ctx: &mut ferrocable_node::ChannelContext,
        action: &str,
        _: serde_json::Value,
    ) -> Result<(), ferrocable_node::PerformError> {
        assert_eq!(action, "wait");
        self.0.notified().await;
        ctx.transmit(&json!({"done": true}))
            .map_err(|e| ferrocable_node::PerformError::Failed(e.to_string()))
    }
}

#[tokio::test]
async fn a_slow_action_does_not_stall_its_connection() {
    const GATE: &str = r#"{"channel":"Gate"}"#;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let cfg = ferrocable_server::ServeConfig {
        ping_interval_ms: 100,
        ..config()
    };
    let server = start_with(cfg, rooms().channel("Gate", Gate(gate.clone()))).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    c.subscribe(GATE).await;
    c.subscribe_with_greeting(ROOM1).await;
    c.send(&message(GATE, json!({"action": "wait"}))).await;
    // Sent while the action runs: it waits its turn.
    c.send(&message(ROOM1, json!({"action": "receive", "n": 2})))
        .await;

    // While `wait` runs, pings and broadcasts to another subscription still arrive.
    let mut pings = 0;
    while pings < 2 {
        let f = c.any_frame().await;
        assert_eq!(
            f["type"], "ping",
            "nothing but pings while the action runs: {f}"
        );
        pings += 1;
    }
    server
        .node()
        .broadcast("room_1", r#"{"during":"wait"}"#)
        .unwrap();
    let f = c.frame().await;
    assert_eq!(
        f["message"]["during"], "wait",
        "the broadcast comes first: {f}"
    );

    gate.notify_one();
    let done = c.frame().await;
    assert_eq!(done["message"], json!({"done": true}), "{done}");
    let next = c.frame().await;
    assert_eq!(
        next["message"]["received"]["n"], 2,
        "then the next command: {next}"
    );
}

#[tokio::test]
async fn one_connection_cannot_hold_more_subscriptions_than_the_cap() {
    let cfg = ferrocable_server::ServeConfig {
        max_subscriptions_per_connection: 10,
        ..config()
    };
    let server = start_with(cfg, rooms()).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    for room in 1..=10 {
        c.subscribe_with_greeting(&format!(r#"{{"channel":"RoomChannel","room":{room}}}"#))
            .await;
    }
    let eleventh = r#"{"channel":"RoomChannel","room":11}"#;
    c.send(&subscribe(eleventh)).await;
    let error = c.frame().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["reason"], "too_many_subscriptions", "{error}");
    let reject = c.frame().await;
    assert_eq!(reject["type"], "reject_subscription", "{reject}");
    assert_eq!(reject["identifier"], eleventh);
    // Leaving one makes room again.
    c.send(&unsubscribe(r#"{"channel":"RoomChannel","room":1}"#))
        .await;
    c.subscribe_with_greeting(eleventh).await;
    let m = metrics(server.local_addr()).await;
    assert_eq!(
        metric(&m, r#"ferrocable_limited_total{reason="subscriptions"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_flooding_client_is_refused_then_disconnected_and_others_are_served() {
    let cfg = ferrocable_server::ServeConfig {
        max_commands_per_sec: 20,
        command_burst: 20,
        ..config()
    };
    let server = start_with(cfg, rooms()).await;
    let mut calm = connect(server.local_addr()).await;
    calm.welcomed().await;
    calm.subscribe_with_greeting(ROOM1).await;
    let mut flood = connect(server.local_addr()).await;
    flood.welcomed().await;
    flood.subscribe_with_greeting(ROOM1).await;
    // Ten bursts' worth at once, in one write (the server may close before it read them all).
    for n in 0..200 {
        let frame = tokio_websockets::Message::text(message(ROOM1, json!({"n": n})));
        let _ = flood.ws.feed(frame).await;
    }
    let _ = flood.ws.flush().await;
    let (code, frames) = flood.closed().await;
    let answered = frames
        .iter()
        .filter(|f| f["message"]["received"].is_object())
        .count();
    let limited = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["reason"] == "rate_limited")
        .count();
    assert!(
        (15..=25).contains(&answered),
        "about a burst answered: {answered}"
    );
    assert!(limited >= 1, "refusals before the disconnect");
    let bye = frames.last().expect("a disconnect frame");
    assert_eq!(bye["type"], "disconnect", "{bye}");
    assert_eq!(bye["reason"], "rate_limited", "{bye}");
    assert!(code.is_some());
    // The calm client on the same node is served.
    calm.send(&message(ROOM1, json!({"n": "calm"}))).await;
    let reply = calm.frame().await;
    assert_eq!(reply["message"]["received"]["n"], "calm", "{reply}");
    let m = metrics(server.local_addr()).await;
    assert!(metric(&m, r#"ferrocable_limited_total{reason="rate"}"#).unwrap() >= 21.0);
    assert_eq!(
        metric(&m, r#"ferrocable_disconnects_total{reason="rate_limited"}"#),
        Some(1.0)
    );
}
