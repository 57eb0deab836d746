//! Reflexes and CableReady over the cable, frame by frame: replies stay within the session,
//! signed streams only, broadcasts from outside any request.
#![allow(missing_docs)]

mod demo;

use demo::*;
use ferrocable_reflex::{Operation, StreamSigner, broadcast_operations};
use serde_json::{Value, json};

const SR: &str = r#"{"channel":"StimulusReflex::Channel"}"#;

async fn cookie(addr: std::net::SocketAddr) -> String {
    session_cookie(addr, "/session").await
}

fn reflex(target: &str, id: &str) -> String {
    message(
        SR,
        json!({"id": id, "target": target, "args": [], "url": "http://127.0.0.1/", "selectors": ["#counter"],
                       "formData": "", "version": "3.5.5", "attrs": {}, "dataset": {"dataset": {}, "datasetAll": {}}}),
    )
}

async fn session_client(addr: std::net::SocketAddr) -> Client<tokio::net::TcpStream> {
    let c = cookie(addr).await;
    let mut client = connect_with(
        addr,
        &[
            ("sec-websocket-protocol", "actioncable-v1-json"),
            ("cookie", &c),
        ],
    )
    .await;
    client.welcomed().await;
    client.subscribe(SR).await;
    client
}

#[tokio::test]
async fn reflex_replies_stay_within_the_session() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let mut a = session_client(addr).await;
    let mut b = session_client(addr).await;
    a.send(&reflex("Counter#reset", "r-a")).await;
    let reply = a.frame().await;
    assert_eq!(reply["identifier"], SR);
    let ops = reply["message"]["operations"].as_array().unwrap();
    assert_eq!(reply["message"]["version"], "5.0.6");
    assert_eq!(ops[0]["selector"], "#counter");
    assert_eq!(ops[0]["reflexId"], "r-a");
    // The sentinel: b's own reflex. Its reply is the next thing b gets (pings aside); a's
    // reply, had it leaked to b, would have come first.
    b.send(&reflex("Counter#reset", "r-b")).await;
    let next = b.frame().await;
    assert_eq!(
        next["message"]["operations"][0]["reflexId"], "r-b",
        "b hears only its own reply: {next}"
    );
}

/// A reflex that arrives twice (a retry after a reconnect, a duplicated frame) runs once;
/// the duplicate gets the first run's reply again.
#[tokio::test]
async fn a_repeated_reflex_id_runs_once_and_gets_the_same_reply() {
    let server = start(config()).await;
    let mut a = session_client(server.local_addr()).await;
    let count = |f: &Value| {
        f["message"]["operations"][0]["html"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    a.send(&reflex("Counter#increment", "dup-1")).await;
    let first = a.frame().await;
    a.send(&reflex("Counter#increment", "dup-1")).await;
    let again = a.frame().await;
    assert_eq!(again, first, "the same reply, re-sent");
    a.send(&reflex("Counter#increment", "dup-2")).await;
    let next = a.frame().await;
    assert_ne!(count(&next), count(&first), "a new id runs: {next}");
    // The counter moved by two (dup-1 once, dup-2 once), not three.
    let text = |f: &Value| {
        count(f)
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse::<i64>()
            .unwrap()
    };
    assert_eq!(text(&next) - text(&first), 1, "{first} / {next}");
}

/// Ids longer than 128 bytes are not remembered (a client cannot make the server keep
/// kilobytes per reflex): such a reflex runs every time it arrives.
#[tokio::test]
async fn oversized_reflex_ids_are_not_remembered() {
    let server = start(config()).await;
    let mut a = session_client(server.local_addr()).await;
    let id = "x".repeat(200);
    let digits = |f: &Value| {
        f["message"]["operations"][0]["html"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse::<i64>()
            .unwrap()
    };
    a.send(&reflex("Counter#increment", &id)).await;
    let first = digits(&a.frame().await);
    a.send(&reflex("Counter#increment", &id)).await;
    let second = digits(&a.frame().await);
    assert_eq!(second - first, 1, "ran again");
}

#[tokio::test]
async fn bad_reflexes_get_a_morph_error_and_payloads_without_an_id_an_error_frame() {
    let server = start(config()).await;
    let mut a = session_client(server.local_addr()).await;
    a.send(&reflex("Admin#destroy_everything", "r-x")).await;
    let op = &a.frame().await["message"]["operations"][0];
    assert_eq!(op["name"], "stimulus-reflex:morph-error");
    assert_eq!(op["error"], "unknown reflex Admin#destroy_everything");
    a.send(&message(SR, json!({"target": "Counter#reset"})))
        .await;
    let f = a.frame().await;
    assert_eq!(
        (f["type"].as_str(), f["reason"].as_str()),
        (Some("error"), Some("invalid_data"))
    );
}

#[tokio::test]
async fn cable_ready_streams_need_a_valid_signature_and_take_broadcasts_from_anywhere() {
    let server = start(config()).await;
    let signer = StreamSigner::new(b"test secret key base");
    let mut c = connect(server.local_addr()).await;
    c.welcomed().await;
    let good =
        json!({"channel": "CableReady::Stream", "identifier": signer.sign("news")}).to_string();
    c.subscribe(&good).await;
    let forged = json!({"channel": "CableReady::Stream", "identifier": StreamSigner::new(b"other").sign("news")}).to_string();
    c.send(&subscribe(&forged)).await;
    assert_eq!(c.frame().await["type"], "reject_subscription");

    // A background task: no request, no reflex.
    let report = broadcast_operations(
        server.node(),
        "news",
        vec![Operation::inner_html("#headline", "<b>New</b>")],
    );
    assert_eq!(report.delivered, 1);
    let f = c.frame().await;
    assert_eq!(f["identifier"], good);
    assert_eq!(f["message"]["cableReady"], true);
    assert_eq!(
        f["message"]["operations"][0],
        json!({"operation": "innerHtml", "selector": "#headline", "html": "<b>New</b>"})
    );
}

#[tokio::test]
async fn chat_posts_reach_every_chat_page_with_absolute_links() {
    let mut cfg = config();
    cfg.default_url_host = "chat.example".into();
    cfg.default_url_port = Some(443);
    cfg.default_url_scheme = "https".into();
    let server = start(cfg).await;
    let addr = server.local_addr();
    let signer = StreamSigner::new(b"test secret key base");
    let chat =
        json!({"channel": "CableReady::Stream", "identifier": signer.sign("chat")}).to_string();
    let mut reader = connect(addr).await;
    reader.welcomed().await;
    reader.subscribe(&chat).await;
    let mut poster = session_client(addr).await;
    let mut p: Value = json!({"id": "r-c", "target": "Chat#post", "args": [], "url": "http://127.0.0.1/chat",
        "formData": "name=Ada&text=hi%20%3Cthere%3E", "version": "3.5.5", "attrs": {}, "dataset": {"dataset": {}, "datasetAll": {}}});
    p["selectors"] = json!([]);
    poster.send(&message(SR, p)).await;
    let f = reader.frame().await;
    let op = &f["message"]["operations"][0];
    assert_eq!(op["operation"], "insertAdjacentHtml");
    let html = op["html"].as_str().unwrap();
    assert!(
        html.contains("<b>Ada</b> hi &#60;there&#62;")
            || html.contains("<b>Ada</b> hi &lt;there&gt;"),
        "escaped: {html}"
    );
    assert!(
        html.contains(r#"href="https://chat.example/chat#m1""#),
        "{html}"
    );
    let reply = poster.frame().await;
    assert_eq!(
        reply["message"]["operations"][0]["name"],
        "stimulus-reflex:morph-nothing"
    );
}

/// Reflex replies are meant for one session: they reach it without being stored in history
/// (no offset on the extended protocol), so the broker keeps nothing per session.
#[tokio::test]
async fn reflex_replies_are_delivered_but_never_stored() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let c = cookie(addr).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut client = connect_on(
        stream,
        &format!("ws://{addr}/cable"),
        &[("sec-websocket-protocol", EXT), ("cookie", &c)],
    )
    .await;
    assert_eq!(client.frame().await["type"], "welcome");
    client.subscribe(SR).await;
    client.send(&reflex("Counter#reset", "r-ext")).await;
    let reply = client.frame().await;
    assert_eq!(
        reply["message"]["operations"][0]["reflexId"], "r-ext",
        "{reply}"
    );
    assert!(reply.get("offset").is_none(), "not stored: {reply}");
    // A broadcast to a stored stream on the same connection still carries its position.
    let signer = StreamSigner::new(b"test secret key base");
    let signed = signer.sign("stored-stream");
    let ident = format!(r#"{{"channel":"CableReady::Stream","identifier":"{signed}"}}"#);
    client.subscribe(&ident).await;
    broadcast_operations(
        server.node(),
        "stored-stream",
        vec![Operation::remove("#x")],
    );
    let stored = client.frame().await;
    assert!(stored["offset"].is_u64(), "stored: {stored}");
}
