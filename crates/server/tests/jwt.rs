//! JWT identification over a real socket: a token in the query, the `x-jid` header or the
//! `anycable-token.` subprotocol identifies the connection without the app's authenticator;
//! expired tokens get `token_expired`, bad ones `unauthorized`, and `enforce_jwt` refuses
//! connections without one.
#![allow(missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use ferrocable_node::{
    Authenticator, ConnectRequest, Identity, JwtIdentifier, NodeBuilder, Unauthorized,
};
use ferrocable_server::ServeConfig;
use serde_json::json;

const ROOM: &str = r#"{"channel":"RoomChannel","room":1}"#;

/// The app's own authenticator: refuses everyone, so an accepted connection was identified by
/// its token.
struct Nobody;

impl Authenticator for Nobody {
    async fn authenticate(&self, _: &ConnectRequest) -> Result<Identity, Unauthorized> {
        Err(Unauthorized::new("not through the authenticator"))
    }
}

fn app() -> NodeBuilder {
    NodeBuilder::default()
        .channel("RoomChannel", RoomChannel)
        .authenticator(Nobody)
}

fn token(secret: &str, user: &str, ttl: Duration) -> String {
    JwtIdentifier::new(secret).mint(json!({"user": user}).as_object().unwrap(), ttl)
}

async fn whoami(c: &mut Client<tokio::net::TcpStream>) -> serde_json::Value {
    c.subscribe_with_greeting(ROOM).await;
    c.send(&message(ROOM, json!({"action": "whoami"}))).await;
    loop {
        let f = c.frame().await;
        if f["message"].get("user").is_some() {
            return f["message"]["user"].clone();
        }
    }
}

async fn refused_with(addr: std::net::SocketAddr, uri_query: &str, reason: &str) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = connect_on(
        stream,
        &format!("ws://{addr}/cable{uri_query}"),
        &[("sec-websocket-protocol", "actioncable-v1-json")],
    )
    .await;
    let (_, frames) = c.closed().await;
    assert_eq!(
        frames,
        [json!({"type": "disconnect", "reason": reason, "reconnect": false})],
        "{uri_query}"
    );
}

#[tokio::test]
async fn a_token_identifies_the_connection_wherever_the_client_puts_it() {
    let cfg = ServeConfig {
        secret: Some("app secret".into()),
        ..config()
    };
    let server = start_with(cfg, app()).await;
    let addr = server.local_addr();
    let t = token("app secret", "ada", Duration::from_secs(60));

    // Query parameter (@anycable/web's default `param` strategy).
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = connect_on(
        stream,
        &format!("ws://{addr}/cable?jid={t}"),
        &[("sec-websocket-protocol", "actioncable-v1-json")],
    )
    .await;
    c.welcomed().await;
    assert_eq!(whoami(&mut c).await, "ada");

    // Header.
    let mut c = connect_with(
        addr,
        &[
            ("sec-websocket-protocol", "actioncable-v1-json"),
            (
                "x-jid",
                &token("app secret", "bob", Duration::from_secs(60)),
            ),
        ],
    )
    .await;
    c.welcomed().await;
    assert_eq!(whoami(&mut c).await, "bob");

    // Subprotocol: offered beside the real one, which is the one selected.
    let offer = format!(
        "actioncable-v1-json, anycable-token.{}",
        token("app secret", "cy", Duration::from_secs(60))
    );
    let mut c = connect_with(addr, &[("sec-websocket-protocol", &offer)]).await;
    assert_eq!(c.protocol.as_deref(), Some("actioncable-v1-json"));
    c.welcomed().await;
    assert_eq!(whoami(&mut c).await, "cy");

    // Without a token (not enforced) the app's authenticator decides: it refuses.
    refused_with(addr, "", "unauthorized").await;
    let m = metrics(addr).await;
    assert_eq!(
        metric(&m, "ferrocable_jwt_total{reason=\"accepted\"}"),
        Some(3.0),
        "{m}"
    );
}

#[tokio::test]
async fn expired_bad_and_missing_tokens_are_refused() {
    let cfg = ServeConfig {
        secret: Some("app secret".into()),
        jwt_secret: Some("jwt secret".into()),
        enforce_jwt: true,
        ..config()
    };
    let server = start_with(
        cfg,
        NodeBuilder::default().channel("RoomChannel", RoomChannel),
    )
    .await;
    let addr = server.local_addr();

    let expired = token("jwt secret", "ada", Duration::ZERO);
    refused_with(addr, &format!("?jid={expired}"), "token_expired").await;
    // Signed with the app secret, not the JWT secret.
    let foreign = token("app secret", "ada", Duration::from_secs(60));
    refused_with(addr, &format!("?jid={foreign}"), "unauthorized").await;
    // alg: none.
    let good = token("jwt secret", "ada", Duration::from_secs(60));
    let mut parts = good.split('.');
    let (_, payload) = (parts.next(), parts.next().unwrap());
    refused_with(
        addr,
        &format!("?jid=eyJhbGciOiJub25lIn0.{payload}."),
        "unauthorized",
    )
    .await;
    refused_with(addr, "?jid=garbage", "unauthorized").await;
    // Enforced: no token at all.
    refused_with(addr, "", "unauthorized").await;
    // And the good one passes.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = connect_on(
        stream,
        &format!("ws://{addr}/cable?jid={good}"),
        &[("sec-websocket-protocol", "actioncable-v1-json")],
    )
    .await;
    c.welcomed().await;
    let m = metrics(addr).await;
    assert_eq!(
        metric(&m, "ferrocable_jwt_total{reason=\"expired\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "ferrocable_jwt_total{reason=\"refused\"}"),
        Some(3.0)
    );
    assert_eq!(
        metric(&m, "ferrocable_jwt_total{reason=\"missing\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "ferrocable_disconnects_total{reason=\"token_expired\"}"),
        Some(1.0)
    );
}
