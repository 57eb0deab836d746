//! One session, two doors: pages and the cable share the signed-cookie session; the
//! embedded SQLite default survives a restart; a store outage is a 503, not a crash.
#![allow(missing_docs)]

mod demo;

use std::net::SocketAddr;
use std::time::Duration;

use demo::*;
use ferrocable_server::ServeConfig;
use serde_json::{Value, json};

const SESSION: &str = r#"{"channel":"SessionChannel"}"#;

struct Reply {
    status: u16,
    set_cookie: Option<String>,
    body: String,
}

async fn http(addr: SocketAddr, method: &str, path: &str, cookie: Option<&str>) -> Reply {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n{cookie}\r\n"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let set_cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    Reply {
        status,
        set_cookie,
        body: body.to_owned(),
    }
}

fn count(body: &str) -> Option<i64> {
    serde_json::from_str::<Value>(body).ok()?["session"]["count"].as_i64()
}

fn sqlite_config(dir: &std::path::Path) -> ServeConfig {
    ServeConfig {
        session_store: "sqlite".into(),
        data_dir: dir.to_path_buf(),
        ..config()
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ferrocable-{name}-{}-{}",
        std::process::id(),
        ferrocable_session::new_session_id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn pages_keep_a_session_in_a_signed_cookie() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let first = http(addr, "POST", "/session/increment", None).await;
    assert_eq!(first.status, 200);
    let cookie = first.set_cookie.expect("a session cookie is set");
    assert!(cookie.starts_with("_session="));
    assert_eq!(count(&first.body), Some(1));
    assert_eq!(
        count(
            &http(addr, "POST", "/session/increment", Some(&cookie))
                .await
                .body
        ),
        Some(2)
    );
    assert_eq!(
        count(&http(addr, "GET", "/session", Some(&cookie)).await.body),
        Some(2)
    );
    // Another browser (no cookie) has its own session.
    assert_eq!(count(&http(addr, "GET", "/session", None).await.body), None);
}

#[tokio::test]
async fn renew_rotates_the_id_and_clear_empties() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let old = http(addr, "POST", "/session/increment", None)
        .await
        .set_cookie
        .unwrap();
    let renewed = http(addr, "POST", "/session/renew", Some(&old)).await;
    assert_eq!(count(&renewed.body), Some(1), "data kept");
    let new = renewed.set_cookie.unwrap();
    assert_ne!(new, old);
    assert_eq!(
        count(&http(addr, "GET", "/session", Some(&new)).await.body),
        Some(1)
    );
    assert_eq!(
        count(&http(addr, "GET", "/session", Some(&old)).await.body),
        None,
        "the old id stopped working"
    );
    let cleared = http(addr, "POST", "/session/clear", Some(&new)).await;
    assert_eq!(cleared.body.trim(), r#"{"session":{}}"#);
}

#[tokio::test]
async fn a_tampered_cookie_starts_a_fresh_session() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let cookie = http(addr, "POST", "/session/increment", None)
        .await
        .set_cookie
        .unwrap();
    let (name, value) = cookie.split_once('=').unwrap();
    let (id, sig) = value.rsplit_once('.').unwrap();
    let forged = format!("{name}={id}x.{sig}");
    let r = http(addr, "GET", "/session", Some(&forged)).await;
    assert_eq!(r.status, 200, "no error page");
    assert_eq!(count(&r.body), None, "fresh session");
    let new_cookie = r.set_cookie.unwrap();
    assert_ne!(new_cookie, cookie);
    assert_ne!(new_cookie, forged);
}

async fn cable_with(addr: SocketAddr, cookie: &str) -> Client<tokio::net::TcpStream> {
    let mut c = connect_with(
        addr,
        &[
            ("sec-websocket-protocol", "actioncable-v1-json"),
            ("cookie", cookie),
        ],
    )
    .await;
    c.welcomed().await;
    c
}

#[tokio::test]
async fn one_session_two_doors() {
    let dir = temp_dir("doors");
    let server = start(sqlite_config(&dir)).await;
    let addr = server.local_addr();
    let cookie = http(addr, "POST", "/session/increment", None)
        .await
        .set_cookie
        .unwrap();

    // Set over HTTP, seen on the cable.
    let mut c = cable_with(addr, &cookie).await;
    c.send(&subscribe(SESSION)).await;
    assert_eq!(c.frame().await["message"]["session"]["count"], 1);
    assert_eq!(c.frame().await["type"], "confirm_subscription");

    // Changed on the cable, seen on the next page load.
    c.send(&message(SESSION, json!({"action": "increment"})))
        .await;
    assert_eq!(c.frame().await["message"]["session"]["count"], 2);
    c.send(&message(
        SESSION,
        json!({"action": "set", "key": "name", "value": "ada"}),
    ))
    .await;
    assert_eq!(c.frame().await["message"]["session"]["name"], "ada");
    let page = http(addr, "GET", "/session", Some(&cookie)).await;
    let v: Value = serde_json::from_str(&page.body).unwrap();
    assert_eq!(v["session"], json!({"count": 2, "name": "ada"}));

    // A cable without a session cookie cannot use the session channel.
    let mut anon = connect(addr).await;
    anon.welcomed().await;
    anon.send(&subscribe(SESSION)).await;
    assert_eq!(anon.frame().await["type"], "reject_subscription");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_cable_cannot_write_session_keys_the_app_did_not_allow() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let cookie = http(addr, "POST", "/session/increment", None)
        .await
        .set_cookie
        .unwrap();
    let mut c = cable_with(addr, &cookie).await;
    c.subscribe_with_greeting(SESSION).await;
    for action in ["set", "increment"] {
        c.send(&message(
            SESSION,
            json!({"action": action, "key": "user_id", "value": 1}),
        ))
        .await;
        let f = c.frame().await;
        assert_eq!(f["type"], "error", "{action}: {f}");
        assert!(
            f["message"].as_str().unwrap().contains("user_id"),
            "{action}: {f}"
        );
    }
    let page = http(addr, "GET", "/session", Some(&cookie)).await;
    let v: Value = serde_json::from_str(&page.body).unwrap();
    assert_eq!(v["session"], json!({"count": 1}), "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_200_increments_each_end_at_400() {
    let dir = temp_dir("race");
    let server = start(sqlite_config(&dir)).await;
    let addr = server.local_addr();
    let cookie = http(addr, "GET", "/session", None)
        .await
        .set_cookie
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = cable_with(addr, &cookie).await;
            c.subscribe_with_greeting(SESSION).await;
            for _ in 0..200 {
                c.send(&message(SESSION, json!({"action": "increment"})))
                    .await;
            }
            // Every increment answers with the session; wait for all 200 replies.
            let mut replies = 0;
            while replies < 200 {
                if c.frame().await["message"]["session"].is_object() {
                    replies += 1;
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        count(&http(addr, "GET", "/session", Some(&cookie)).await.body),
        Some(400)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_sqlite_default_survives_a_restart() {
    let dir = temp_dir("restart");
    let cfg = ServeConfig {
        secret_key_base: None,
        ..sqlite_config(&dir)
    };
    let server = start(cfg.clone()).await;
    let addr = server.local_addr();
    let cookie = http(addr, "POST", "/session/increment", None)
        .await
        .set_cookie
        .unwrap();
    http(addr, "POST", "/session/increment", Some(&cookie)).await;
    server.shutdown().await;
    assert!(dir.join("sessions.sqlite3").exists());
    assert!(
        dir.join("secret_key_base").exists(),
        "a generated secret is kept"
    );

    let server = start(cfg).await;
    assert_eq!(
        count(
            &http(server.local_addr(), "GET", "/session", Some(&cookie))
                .await
                .body
        ),
        Some(2)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_a_503_and_the_server_recovers() {
    let port = spare_port();
    let mut redis = OwnService::redis(port);
    let cfg = ServeConfig {
        session_store: format!("redis://127.0.0.1:{port}/0"),
        ..config()
    };
    let server = start(cfg).await;
    let addr = server.local_addr();
    let cookie = http(addr, "POST", "/session/increment", None)
        .await
        .set_cookie
        .unwrap();
    let mut c = cable_with(addr, &cookie).await;
    c.subscribe_with_greeting(SESSION).await;

    redis.stop();
    let r = http(addr, "POST", "/session/increment", Some(&cookie)).await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("session store unavailable"), "{}", r.body);
    c.send(&message(SESSION, json!({"action": "increment"})))
        .await;
    let f = c.frame().await;
    assert_eq!(
        (f["type"].as_str(), f["reason"].as_str()),
        (Some("error"), Some("action_failed")),
        "{f}"
    );
    assert_eq!(
        http(addr, "GET", "/health", None).await.status,
        200,
        "still serving"
    );
    let m = metrics(addr).await;
    assert!(
        metric(
            &m,
            r#"ferrocable_store_errors_total{store="session",op="save"}"#
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );

    let _redis = OwnService::redis(port);
    let mut recovered = false;
    for _ in 0..50 {
        let r = http(addr, "POST", "/session/increment", Some(&cookie)).await;
        if r.status == 200 {
            // This Redis keeps nothing on disk: the session starts again from 1.
            assert_eq!(count(&r.body), Some(1));
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "sessions work again once the store is back");
}
