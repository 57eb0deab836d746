//! Presence over a real socket (AnyCable 1.6's `join` / `leave` / `presence` commands on a
//! `$pubsub` stream): one record per id across tabs, events to every subscriber, info on
//! request, leave after the TTL for a dropped connection, and a bounded stream.
#![allow(missing_docs)]

mod common;

use common::*;
use ferrocable_server::ServeConfig;
use serde_json::{Value, json};

const LOBBY: &str = r#"{"channel":"$pubsub","stream_name":"lobby"}"#;

fn join(id: &str, info: Value) -> String {
    json!({"command": "join", "identifier": LOBBY, "presence": {"id": id, "info": info}})
        .to_string()
}

fn cmd(command: &str) -> String {
    json!({"command": command, "identifier": LOBBY}).to_string()
}

async fn member(addr: std::net::SocketAddr) -> Client<tokio::net::TcpStream> {
    let mut c = connect_ext(addr, None).await;
    assert_eq!(c.frame().await["type"], "welcome");
    c.subscribe(LOBBY).await;
    c
}

/// The next presence frame's message.
async fn presence(c: &mut Client<tokio::net::TcpStream>) -> Value {
    loop {
        let f = c.frame().await;
        if f["type"] == "presence" {
            assert_eq!(f["identifier"], LOBBY);
            return f["message"].clone();
        }
    }
}

/// Frames before a sentinel broadcast to the lobby (so "nothing else" needs no sleep).
async fn until_sentinel(
    server: &ferrocable_server::RunningServer,
    c: &mut Client<tokio::net::TcpStream>,
) -> Vec<Value> {
    server
        .node()
        .broadcast("lobby", r#"{"sentinel":1}"#)
        .unwrap();
    let mut before = Vec::new();
    loop {
        let f = c.frame().await;
        if f["message"]["sentinel"] == 1 {
            return before;
        }
        before.push(f);
    }
}

fn config_with(edit: impl FnOnce(&mut ServeConfig)) -> ServeConfig {
    let mut c = ServeConfig {
        public_streams: true,
        ..config()
    };
    edit(&mut c);
    c
}

#[tokio::test]
async fn one_record_per_id_across_tabs_with_events_for_everyone() {
    let server = start(config_with(|_| {})).await;
    let addr = server.local_addr();
    let (mut ada1, mut ada2, mut bob) =
        (member(addr).await, member(addr).await, member(addr).await);

    ada1.send(&join("ada", json!({"name": "Ada"}))).await;
    let joined = json!({"type": "join", "id": "ada", "info": {"name": "Ada"}});
    assert_eq!(presence(&mut bob).await, joined);
    assert_eq!(presence(&mut ada1).await, joined, "the joiner gets it too");
    // Ada's second tab: the same id, no second event.
    ada2.send(&join("ada", json!({"name": "Ada"}))).await;
    assert_eq!(
        presence(&mut ada2).await,
        joined,
        "the event from her first tab"
    );
    bob.send(&join("bob", json!(null))).await;
    assert_eq!(
        presence(&mut ada2).await,
        json!({"type": "join", "id": "bob", "info": null})
    );
    assert_eq!(presence(&mut bob).await["id"], "bob", "his own join");
    bob.send(&cmd("presence")).await;
    let info = presence(&mut bob).await;
    assert_eq!(info["type"], "info");
    assert_eq!(info["total"], 2);
    let mut ids: Vec<_> = info["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, ["ada", "bob"]);

    // One tab leaves: Ada is still there, nobody is told anything.
    ada1.send(&cmd("leave")).await;
    let before: Vec<_> = until_sentinel(&server, &mut bob)
        .await
        .into_iter()
        .filter(|f| f["type"] == "presence")
        .collect();
    assert_eq!(before, Vec::<Value>::new());
    // Her last tab unsubscribes: leave.
    ada2.send(&unsubscribe(LOBBY)).await;
    assert_eq!(
        presence(&mut bob).await,
        json!({"type": "leave", "id": "ada"})
    );
}

#[tokio::test]
async fn a_dropped_connection_leaves_after_the_ttl() {
    let server = start(config_with(|c| {
        c.presence_ttl = 1;
        c.ping_interval_ms = 200;
    }))
    .await;
    let addr = server.local_addr();
    let mut bob = member(addr).await;
    let mut ada = member(addr).await;
    ada.send(&join("ada", json!({}))).await;
    assert_eq!(presence(&mut bob).await["type"], "join");
    let dropped_at = std::time::Instant::now();
    drop(ada);
    assert_eq!(
        presence(&mut bob).await,
        json!({"type": "leave", "id": "ada"})
    );
    assert!(
        dropped_at.elapsed() >= std::time::Duration::from_secs(1),
        "not before the TTL"
    );
}

#[tokio::test]
async fn a_flooded_stream_refuses_joins_past_its_bound_and_bad_joins_are_errors() {
    let server = start(config_with(|c| c.max_presence_per_stream = 3)).await;
    let addr = server.local_addr();
    let mut c = member(addr).await;
    let mut others = Vec::new();
    for i in 0..3 {
        let mut o = member(addr).await;
        o.send(&join(&format!("user{i}"), json!(i))).await;
        others.push(o);
    }
    for _ in 0..3 {
        assert_eq!(presence(&mut c).await["type"], "join");
    }
    c.send(&join("one too many", json!(null))).await;
    let f = c.frame().await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["reason"], "presence_limit");
    // An id already present may still join (another tab).
    c.send(&join("user0", json!(0))).await;
    c.send(&cmd("presence")).await;
    assert_eq!(presence(&mut c).await["total"], 3);
    // Malformed joins and presence on a subscription without a presence stream.
    c.send(&json!({"command": "join", "identifier": LOBBY, "presence": {"info": 1}}).to_string())
        .await;
    assert_eq!(c.frame().await["reason"], "malformed_presence");
    c.subscribe(BENCH).await;
    c.send(&json!({"command": "join", "identifier": BENCH, "presence": {"id": "x"}}).to_string())
        .await;
    assert_eq!(c.frame().await["reason"], "presence_not_allowed");
    c.send(&json!({"command": "presence", "identifier": BENCH}).to_string())
        .await;
    assert_eq!(
        c.frame().await,
        json!({"type": "presence", "identifier": BENCH, "message": {"type": "error"}})
    );
    let m = metrics(addr).await;
    assert_eq!(
        metric(&m, "ferrocable_limited_total{reason=\"presence\"}"),
        Some(1.0)
    );
}
