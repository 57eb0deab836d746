//! Streams with no app code, over a real socket: `$pubsub` signed and public streams, whisper
//! (to everyone else on the stream, never the sender, never stored), and Turbo Streams,
//! configured with AnyCable's settings.
#![allow(missing_docs)]

mod common;

use common::*;
use ferrocable_server::ServeConfig;
use ferrocable_streams::{MessageVerifier, TurboStream};
use serde_json::{Value, json};

fn identifier(v: Value) -> String {
    v.to_string()
}

fn whisper(identifier: &str, data: Value) -> String {
    json!({"command": "whisper", "identifier": identifier, "data": data}).to_string()
}

/// Sends a broadcast through the node and reads frames until it arrives: everything before
/// the sentinel is returned, so "nothing else arrived" is checked without a sleep.
async fn until_sentinel(
    server: &ferrocable_server::RunningServer,
    c: &mut Client<tokio::net::TcpStream>,
    stream: &str,
) -> Vec<Value> {
    server
        .node()
        .broadcast(stream, r#"{"sentinel":true}"#)
        .unwrap();
    let mut before = Vec::new();
    loop {
        let f = c.frame().await;
        if f["message"]["sentinel"] == true {
            return before;
        }
        before.push(f);
    }
}

#[tokio::test]
async fn signed_pubsub_streams_need_the_streams_secret() {
    let cfg = ServeConfig {
        secret: Some("anycable secret".into()),
        streams_secret: Some("streams secret".into()),
        ..config()
    };
    let server = start(cfg).await;
    let addr = server.local_addr();
    let ours = MessageVerifier::new("streams secret");
    let mut c = connect(addr).await;
    c.welcomed().await;

    let signed =
        identifier(json!({"channel": "$pubsub", "signed_stream_name": ours.generate("chat:1")}));
    c.subscribe(&signed).await;
    server
        .node()
        .broadcast("chat:1", r#"{"text":"hi"}"#)
        .unwrap();
    let f = c.frame().await;
    assert_eq!(f["identifier"], signed.as_str());
    assert_eq!(f["message"]["text"], "hi");

    // A name signed with another key (the app's own secret, a foreign app's), a tampered one,
    // and a public name while public streams are off are all rejected.
    let mut tampered = ours.generate("chat:2");
    tampered.pop();
    tampered.push(if tampered.ends_with('0') { '1' } else { '0' });
    for params in [
        json!({"channel": "$pubsub", "signed_stream_name": MessageVerifier::new("anycable secret").generate("chat:1")}),
        json!({"channel": "$pubsub", "signed_stream_name": MessageVerifier::new("other app").generate("chat:1")}),
        json!({"channel": "$pubsub", "signed_stream_name": tampered}),
        json!({"channel": "$pubsub", "stream_name": "chat:1"}),
    ] {
        let id = identifier(params);
        c.send(&subscribe(&id)).await;
        let f = c.frame().await;
        assert_eq!(f["type"], "reject_subscription", "{f}");
        assert_eq!(f["identifier"], id.as_str());
    }
    // The page helper signs with the same key.
    assert_eq!(
        ours.verify(&server.services().streams.generate("x"))
            .as_deref(),
        Ok("x")
    );
}

#[tokio::test]
async fn public_streams_whisper_to_everyone_else_and_never_store_it() {
    let cfg = ServeConfig {
        public_streams: true,
        ..config()
    };
    let server = start(cfg).await;
    let addr = server.local_addr();
    let lobby = identifier(json!({"channel": "$pubsub", "stream_name": "lobby"}));
    let (mut alice, mut bob) = (connect_ext(addr, None).await, connect_ext(addr, None).await);
    for c in [&mut alice, &mut bob] {
        assert_eq!(c.frame().await["type"], "welcome");
        c.subscribe(&lobby).await;
    }

    alice
        .send(&whisper(
            &lobby,
            json!({"event": "typing", "name": "alice"}),
        ))
        .await;
    let f = bob.frame().await;
    assert_eq!(f["identifier"], lobby.as_str());
    assert_eq!(f["message"], json!({"event": "typing", "name": "alice"}));
    assert!(
        f.get("offset").is_none(),
        "a whisper has no history position: {f}"
    );
    // The sender gets nothing back: the sentinel is the next thing Alice reads.
    assert_eq!(
        until_sentinel(&server, &mut alice, "lobby").await,
        Vec::<Value>::new()
    );
    let _ = bob.frame().await; // Bob's sentinel.

    // Not stored: a history request from the start sees the sentinel, not the whisper.
    let mut carol = connect_ext(addr, None).await;
    assert_eq!(carol.frame().await["type"], "welcome");
    carol.subscribe(&lobby).await;
    carol.send(&history(&lobby, json!({"since": 1}))).await;
    let (replayed, end) = until_history_end(&mut carol).await;
    assert_eq!(end["type"], "confirm_history", "{end}");
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert_eq!(replayed[0]["message"]["sentinel"], true);

    let m = metrics(addr).await;
    assert_eq!(metric(&m, "ferrocable_whispers_total"), Some(1.0), "{m}");
}

#[tokio::test]
async fn whisper_is_refused_where_it_is_not_allowed_and_when_malformed() {
    let cfg = ServeConfig {
        public_streams: true,
        streams_whisper: false,
        ..config()
    };
    let server = start(cfg).await;
    let addr = server.local_addr();
    let verifier = server.services().streams.clone();
    let signed =
        identifier(json!({"channel": "$pubsub", "signed_stream_name": verifier.generate("room")}));
    let (mut a, mut b) = (connect_ext(addr, None).await, connect_ext(addr, None).await);
    for c in [&mut a, &mut b] {
        assert_eq!(c.frame().await["type"], "welcome");
        c.subscribe(&signed).await;
    }
    // Signed streams may not whisper unless ANYCABLE_STREAMS_WHISPER is on.
    a.send(&whisper(&signed, json!({"typing": true}))).await;
    let f = a.frame().await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["reason"], "whisper_not_allowed");
    // Not subscribed, data not an object.
    a.send(&whisper(
        r#"{"channel":"$pubsub","stream_name":"nope"}"#,
        json!({}),
    ))
    .await;
    assert_eq!(a.frame().await["reason"], "unknown_subscription");
    a.send(
        &json!({"command": "whisper", "identifier": signed, "data": "{\"typing\":true}"})
            .to_string(),
    )
    .await;
    assert_eq!(a.frame().await["reason"], "malformed_whisper");
    // An oversized whisper is refused by the command size limit (64 KiB) and closes 1009.
    let big = "x".repeat(70 * 1024);
    a.send(&whisper(&signed, json!({ "text": big }))).await;
    let (code, _) = a.closed().await;
    assert_eq!(code, Some(1009));
    // Nothing reached the other subscriber.
    assert_eq!(
        until_sentinel(&server, &mut b, "room").await,
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn signed_streams_whisper_with_anycable_streams_whisper() {
    let cfg = ServeConfig {
        streams_whisper: true,
        ..config()
    };
    let server = start(cfg).await;
    let addr = server.local_addr();
    let signed = identifier(
        json!({"channel": "$pubsub", "signed_stream_name": server.services().streams.generate("doc:7")}),
    );
    let (mut a, mut b) = (connect(addr).await, connect(addr).await);
    for c in [&mut a, &mut b] {
        c.welcomed().await;
        c.subscribe(&signed).await;
    }
    a.send(&whisper(&signed, json!({"cursor": [1, 2]}))).await;
    assert_eq!(b.frame().await["message"], json!({"cursor": [1, 2]}));
    assert_eq!(
        until_sentinel(&server, &mut a, "doc:7").await,
        Vec::<Value>::new()
    );
}

#[tokio::test]
async fn turbo_streams_subscribe_with_the_turbo_key_and_get_turbo_stream_html() {
    let cfg = ServeConfig {
        turbo_streams_secret: Some("turbo verifier key".into()),
        ..config()
    };
    let server = start(cfg).await;
    let addr = server.local_addr();
    let turbo = MessageVerifier::new("turbo verifier key");
    // What turbo-rails' <turbo-cable-stream-source> sends: the signed name plus its params.
    let id = identifier(
        json!({"channel": "Turbo::StreamsChannel", "signed_stream_name": turbo.generate("gid://app/Room/1:messages")}),
    );
    let mut c = connect(addr).await;
    c.welcomed().await;
    c.subscribe(&id).await;
    let report = ferrocable_streams::broadcast_turbo_streams(
        server.node(),
        &["gid://app/Room/1", "messages"],
        &[TurboStream::append("messages", "<p>hi</p>")],
    );
    assert_eq!(report.delivered, 1);
    let f = c.frame().await;
    assert_eq!(
        f["message"],
        r#"<turbo-stream action="append" target="messages"><template><p>hi</p></template></turbo-stream>"#
    );
    // Signed with the streams key instead of the Turbo key: rejected.
    let wrong = identifier(
        json!({"channel": "Turbo::StreamsChannel", "signed_stream_name": server.services().streams.generate("gid://app/Room/1:messages")}),
    );
    c.send(&subscribe(&wrong)).await;
    assert_eq!(c.frame().await["type"], "reject_subscription");
}
