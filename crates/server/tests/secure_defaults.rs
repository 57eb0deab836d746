//! What a server gives every app without asking, and what it never does: no channel that lets
//! a cable client write the session, and `sid`s that are credentials.
#![allow(missing_docs)]

mod common;

use common::*;
use ferrocable_server::Composition;

#[tokio::test]
async fn a_default_server_has_no_channel_that_writes_the_session() {
    let server = start_with(config(), Composition::default()).await;
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    for channel in [
        r#"{"channel":"SessionChannel"}"#,
        r#"{"channel":"ApplicationCable::SessionChannel"}"#,
    ] {
        c.send(&subscribe(channel)).await;
        let f = c.frame().await;
        assert_eq!(f["type"], "reject_subscription", "{channel}: {f}");
    }
    // The two channels every app gets are there.
    c.send(&subscribe(r#"{"channel":"StimulusReflex::Channel"}"#))
        .await;
    assert_eq!(c.frame().await["type"], "confirm_subscription");
}

#[tokio::test]
async fn extended_sids_are_unique_128_bit_credentials() {
    let server = start(config()).await;
    let mut sids = std::collections::HashSet::new();
    for _ in 0..50 {
        let mut c = connect_ext(server.local_addr(), None).await;
        let welcome = c.frame().await;
        assert_eq!(welcome["type"], "welcome");
        let sid = welcome["sid"].as_str().expect("a sid").to_owned();
        assert_eq!(sid.len(), 32, "16 bytes as hex: {sid}");
        assert!(sid.bytes().all(|b| b.is_ascii_hexdigit()), "{sid}");
        assert!(sids.insert(sid), "a sid repeated");
    }
}

/// An authenticator that tries to choose the session itself.
struct Forger;

impl ferrocable_node::Authenticator for Forger {
    async fn authenticate(
        &self,
        _: &ferrocable_node::ConnectRequest,
    ) -> Result<ferrocable_node::Identity, ferrocable_node::Unauthorized> {
        Ok(ferrocable_node::Identity::anonymous()
            .with("session_id", "forged")
            .with_session("forged"))
    }
}

#[tokio::test]
async fn an_authenticator_cannot_replace_the_cookie_session() {
    use ferrocable_server::CurrentSession;
    async fn bump(
        session: CurrentSession,
    ) -> Result<&'static str, ferrocable_server::SessionFailure> {
        session
            .update(|d| {
                d.insert("count".into(), serde_json::json!(41));
            })
            .await?;
        Ok("ok")
    }
    let app = Composition {
        node: ferrocable_node::Node::builder().authenticator(Forger),
        pages: axum::Router::new().route("/bump", axum::routing::get(bump)),
        deferred: vec![Box::new(|services, app| {
            app.node = std::mem::take(&mut app.node).channel(
                "SessionChannel",
                ferrocable_server::SessionChannel::new(services.sessions.clone(), &[]),
            );
        })],
        ..Default::default()
    };
    let server = start_with(config(), app).await;
    let addr = server.local_addr();
    let cookie = session_cookie(addr, "/bump").await;
    let mut c = connect_with(
        addr,
        &[
            ("sec-websocket-protocol", "actioncable-v1-json"),
            ("cookie", &cookie),
        ],
    )
    .await;
    c.welcomed().await;
    c.send(&subscribe(r#"{"channel":"SessionChannel"}"#)).await;
    let f = c.frame().await;
    assert_eq!(
        f["message"]["session"]["count"], 41,
        "the cookie's session: {f}"
    );
}
