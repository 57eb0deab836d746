//! Broadcast ingress in AnyCable's format: `POST /_broadcast` and the Redis `__anycable__`
//! channel, so an app that broadcasts through AnyCable can point at ferrocable unchanged.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use ferrocable_server::ServeConfig;

async fn post(addr: std::net::SocketAddr, key: Option<&str>, body: &str) -> (u16, String) {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    raw_http(
        addr,
        &format!(
            "POST /_broadcast HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .await
}

#[tokio::test]
async fn http_ingress_needs_the_key_and_delivers_single_and_batched_publications() {
    let cfg = ServeConfig {
        broadcast_key: Some("k3y".into()),
        ..config()
    };
    let server = start(cfg).await;
    let addr = server.local_addr();
    let mut c = connect(addr).await;
    c.welcomed().await;
    c.subscribe(BENCH).await;

    assert_eq!(
        post(addr, None, r#"{"stream":"all","data":"1"}"#).await.0,
        401
    );
    assert_eq!(
        post(addr, Some("wrong"), r#"{"stream":"all","data":"1"}"#)
            .await
            .0,
        401
    );
    let (status, body) = post(addr, Some("k3y"), "not json").await;
    assert_eq!(status, 400);
    assert!(body.contains("not a publication"), "{body}");
    assert_eq!(post(addr, Some("k3y"), r#"{"data":"1"}"#).await.0, 400);

    assert_eq!(
        post(
            addr,
            Some("k3y"),
            r#"{"stream":"all","data":"{\"text\":\"hi\"}"}"#
        )
        .await
        .0,
        201
    );
    assert_eq!(
        c.frame().await["message"],
        serde_json::json!({"text": "hi"})
    );
    assert_eq!(post(addr, Some("k3y"), r#"[{"stream":"all","data":"plain"},{"stream":"other","data":"2"},{"stream":"all","data":"3"}]"#).await.0, 201);
    assert_eq!(c.frame().await["message"], "plain");
    assert_eq!(c.frame().await["message"], 3);
    let m = metrics(addr).await;
    assert_eq!(
        metric(
            &m,
            r#"ferrocable_ingress_refused_total{reason="unauthorized"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"ferrocable_ingress_refused_total{reason="malformed"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn meta_exclude_socket_skips_that_session_and_transient_is_not_stored() {
    let cfg = ServeConfig {
        broadcast_key: Some("k3y".into()),
        ..config()
    };
    let server = start(cfg).await;
    let addr = server.local_addr();
    let mut sender = connect_ext(addr, None).await;
    let sid = sender.frame().await["sid"].as_str().unwrap().to_owned();
    sender.subscribe(BENCH).await;
    let mut other = connect_ext(addr, None).await;
    other.frame().await;
    other.subscribe(BENCH).await;

    // anycable-rails' "broadcast to others": the X-Socket-ID session does not get it.
    let body =
        format!(r#"{{"stream":"all","data":"{{\"n\":1}}","meta":{{"exclude_socket":"{sid}"}}}}"#);
    assert_eq!(post(addr, Some("k3y"), &body).await.0, 201);
    assert_eq!(other.frame().await["message"]["n"], 1);
    // A sentinel after it: the sender's first message is the sentinel, so it never got n=1.
    let transient = r#"{"stream":"all","data":"{\"n\":2}","meta":{"transient":true}}"#;
    assert_eq!(post(addr, Some("k3y"), transient).await.0, 201);
    let f = sender.frame().await;
    assert_eq!(f["message"]["n"], 2, "{f}");
    assert!(
        f.get("offset").is_none(),
        "a transient message has no history position: {f}"
    );
    let f = other.frame().await;
    assert_eq!(f["message"]["n"], 2);
    // A stored one has its position.
    assert_eq!(
        post(addr, Some("k3y"), r#"{"stream":"all","data":"{\"n\":3}"}"#)
            .await
            .0,
        201
    );
    assert!(sender.frame().await.get("offset").is_some());
}

#[tokio::test]
async fn the_default_key_is_derived_from_the_secret_like_anycable() {
    let server = start(config()).await;
    // hex(HMAC-SHA256("test secret key base", "broadcast-cable"))
    let key = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"test secret key base"),
        b"broadcast-cable",
    );
    let hex: String = key.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        post(
            server.local_addr(),
            Some(&hex),
            r#"{"stream":"x","data":"1"}"#
        )
        .await
        .0,
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_anycable_channel_ingress() {
    let channel = format!("__anycable__{}", ferrocable_session::new_session_id());
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let cfg = ServeConfig {
        broadcast_redis_url: Some(url.clone()),
        broadcast_redis_channel: channel.clone(),
        ..config()
    };
    let server = start(cfg).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    c.subscribe(BENCH).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(r#"{"stream":"all","data":"{\"via\":\"redis\"}"}"#)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Ok(f) = tokio::time::timeout(Duration::from_millis(300), c.frame()).await {
            assert_eq!(f["message"]["via"], "redis");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ingress never subscribed"
        );
    }
}
