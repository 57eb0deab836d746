//! ferrocable in front of a Rails app over AnyCable HTTP RPC: the fake app in `fake_rails`
//! (written from the wire document) behind a real server, driven by a frame-level client.

mod common;
mod fake_rails;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use fake_rails::{FakeRails, Mode};
use ferrocable_server::{RunningServer, ServeConfig};
use serde_json::{Value, json};

const CHAT: &str = r#"{"channel":"ChatChannel","room":"1"}"#;

/// How ferrocable reaches the fake app: every test runs over both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Http,
    Grpc,
}

fn rpc_config(t: Transport, app: SocketAddr) -> ServeConfig {
    ServeConfig {
        rpc_host: Some(match t {
            Transport::Http => format!("http://{app}/_anycable"),
            Transport::Grpc => format!("grpc://{app}"),
        }),
        http_rpc_secret: Some(fake_rails::SECRET.into()),
        broadcast_key: Some("bkey".into()),
        ..config()
    }
}

async fn start_app(t: Transport, app: Arc<FakeRails>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    match t {
        Transport::Http => fake_rails::start(app).await,
        Transport::Grpc => fake_rails::grpc::start(app).await,
    }
}

async fn restart_app(
    t: Transport,
    app: Arc<FakeRails>,
    addr: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    match t {
        Transport::Http => fake_rails::restart(app, addr).await,
        Transport::Grpc => fake_rails::grpc::restart(app, addr).await,
    }
}

struct Setup {
    app: Arc<FakeRails>,
    app_addr: SocketAddr,
    app_task: tokio::task::JoinHandle<()>,
    server: RunningServer,
}

async fn setup_with(t: Transport, edit: impl FnOnce(&mut ServeConfig)) -> Setup {
    let app = FakeRails::new();
    let (app_addr, app_task) = start_app(t, app.clone()).await;
    let mut config = rpc_config(t, app_addr);
    edit(&mut config);
    let server = start(config).await;
    app.broadcast_to(
        format!("http://{}/_broadcast", server.local_addr()),
        "bkey".into(),
    );
    Setup {
        app,
        app_addr,
        app_task,
        server,
    }
}

async fn setup(t: Transport) -> Setup {
    setup_with(t, |_| {}).await
}

/// Performs `data` on `room` until a frame arrives (an ingress subscribes asynchronously after
/// start), within 10 s; returns that frame.
async fn until_broadcast(c: &mut Client<tokio::net::TcpStream>, room: &str, data: Value) -> Value {
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            c.send(&message(room, data.clone())).await;
            if let Ok(f) =
                tokio::time::timeout(std::time::Duration::from_millis(500), c.frame()).await
            {
                return f;
            }
        }
    })
    .await
    .expect("a broadcast through the adapter arrives")
}

async fn as_user(addr: SocketAddr, user: &str) -> Client<tokio::net::TcpStream> {
    connect_with(
        addr,
        &[
            ("sec-websocket-protocol", "actioncable-v1-json"),
            ("cookie", &format!("user={user}; theme=dark")),
        ],
    )
    .await
}

fn speak(text: &str) -> Value {
    json!({"action": "speak", "text": text})
}

async fn connect_goes_to_the_app_with_the_request_and_is_welcomed(t: Transport) {
    let s = setup(t).await;
    let addr = s.server.local_addr();
    let mut c = as_user(addr, "alice").await;
    c.welcomed().await;
    let call = s.app.wait_for(|c| c["path"] == "connect").await;
    assert_eq!(call["protov"], "v1");
    let env = &call["body"]["env"];
    assert_eq!(env["url"], format!("http://{addr}/cable"));
    assert_eq!(env["headers"]["cookie"], "user=alice; theme=dark");
    assert_eq!(env["headers"]["REMOTE_ADDR"], "127.0.0.1");
    assert!(env["headers"].get("sec-websocket-protocol").is_none());
}

async fn a_connection_the_app_rejects_gets_its_disconnect_and_a_normal_close(t: Transport) {
    let s = setup(t).await;
    let mut c = connect(s.server.local_addr()).await;
    let (code, frames) = c.closed().await;
    assert_eq!(code, Some(1000));
    assert_eq!(
        frames,
        vec![json!({"type":"disconnect","reason":"unauthorized","reconnect":false})]
    );
}

async fn an_app_exception_at_connect_closes_with_1011(t: Transport) {
    let s = setup(t).await;
    let mut c = as_user(s.server.local_addr(), "crash").await;
    let (code, frames) = c.closed().await;
    assert_eq!(code, Some(1011));
    assert!(frames.is_empty(), "{frames:?}");
}

async fn subscribe_confirmed_rejected_and_unknown(t: Transport) {
    let s = setup(t).await;
    let mut c = as_user(s.server.local_addr(), "alice").await;
    c.welcomed().await;
    c.subscribe(CHAT).await;
    let secret = r#"{"channel":"ChatChannel","room":"secret"}"#;
    c.send(&subscribe(secret)).await;
    assert_eq!(
        c.frame().await,
        json!({"identifier": secret, "type": "reject_subscription"})
    );
    let unknown = r#"{"channel":"NoSuchChannel"}"#;
    c.send(&subscribe(unknown)).await;
    assert_eq!(
        c.frame().await,
        json!({"identifier": unknown, "type": "reject_subscription"})
    );
    let call = s
        .app
        .wait_for(|c| c["body"]["command"] == "subscribe" && c["body"]["identifier"] == CHAT)
        .await;
    assert_eq!(
        call["body"]["connection_identifiers"],
        r#"{"user":"alice"}"#
    );
    assert_eq!(
        call["body"]["env"]["headers"]["cookie"],
        "user=alice; theme=dark"
    );
}

async fn perform_transmits_and_state_survives_between_commands(t: Transport) {
    let s = setup(t).await;
    let mut c = as_user(s.server.local_addr(), "alice").await;
    c.welcomed().await;
    c.subscribe(CHAT).await;
    c.send(&message(CHAT, speak("one"))).await;
    assert_eq!(
        c.frame().await,
        json!({"identifier": CHAT, "message": {"text":"one","user":"alice","room":"1","count":0}})
    );
    c.send(&message(CHAT, speak("two"))).await;
    let f = c.frame().await;
    assert_eq!(f["message"]["count"], 1, "cstate from the last reply: {f}");
    assert_eq!(f["message"]["room"], "1", "istate from the subscribe: {f}");
    // The cookie travels with every command: a reflex rebuilds its session from it.
    let call = s.app.wait_for(|c| c["body"]["command"] == "message").await;
    assert_eq!(
        call["body"]["env"]["headers"]["cookie"],
        "user=alice; theme=dark"
    );
    assert_eq!(call["body"]["data"], r#"{"action":"speak","text":"one"}"#);
    // An empty value deletes a key.
    c.send(&message(CHAT, json!({"action":"forget"}))).await;
    c.send(&message(CHAT, speak("three"))).await;
    let f = c.frame().await;
    assert_eq!(
        f["message"]["room"],
        Value::Null,
        "istate room deleted: {f}"
    );
    assert_eq!(f["message"]["count"], 2);
}

async fn a_valid_token_skips_the_connect_call(t: Transport) {
    let s = setup_with(t, |c| c.jwt_secret = Some("jwt secret".into())).await;
    let addr = s.server.local_addr();
    let token = ferrocable_node::JwtIdentifier::new("jwt secret").mint(
        json!({"user": "zoe"}).as_object().unwrap(),
        std::time::Duration::from_secs(60),
    );
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = connect_on(
        stream,
        &format!("ws://{addr}/cable?jid={token}"),
        &[("sec-websocket-protocol", "actioncable-v1-json")],
    )
    .await;
    c.welcomed().await;
    c.subscribe(CHAT).await;
    c.send(&message(CHAT, speak("hi"))).await;
    assert_eq!(c.frame().await["message"]["user"], "zoe");
    let command = s.app.wait_for(|c| c["body"]["command"] == "message").await;
    assert_eq!(
        command["body"]["connection_identifiers"],
        r#"{"user":"zoe"}"#
    );
    assert!(
        s.app.calls().iter().all(|c| c["path"] != "connect"),
        "no connect call: {:#?}",
        s.app.calls()
    );
    // A forged token is refused here, without asking the app either.
    let forged = ferrocable_node::JwtIdentifier::new("guess").mint(
        json!({"user": "admin"}).as_object().unwrap(),
        std::time::Duration::from_secs(60),
    );
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = connect_on(
        stream,
        &format!("ws://{addr}/cable?jid={forged}"),
        &[("sec-websocket-protocol", "actioncable-v1-json")],
    )
    .await;
    let (_, frames) = c.closed().await;
    assert_eq!(frames[0]["reason"], "unauthorized");
    assert!(s.app.calls().iter().all(|c| c["path"] != "connect"));
}

/// The next presence frame's message.
async fn presence(c: &mut Client<tokio::net::TcpStream>) -> Value {
    loop {
        let f = c.frame().await;
        if f["type"] == "presence" {
            return f["message"].clone();
        }
    }
}

async fn app_channels_join_presence_and_whisper_from_their_state_and_replies(t: Transport) {
    let s = setup(t).await;
    let addr = s.server.local_addr();
    const ROOM: &str = r#"{"channel":"PresenceChannel"}"#;
    let connect = |user: &'static str| async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut c = connect_on(
            stream,
            &format!("ws://{addr}/cable?user={user}"),
            &[("sec-websocket-protocol", EXT)],
        )
        .await;
        assert_eq!(c.frame().await["type"], "welcome");
        c
    };
    let mut alice = connect("alice").await;
    alice.subscribe(ROOM).await;
    assert_eq!(
        presence(&mut alice).await,
        json!({"type": "join", "id": "alice", "info": {"name": "alice"}})
    );
    let mut bob = connect("bob").await;
    bob.subscribe(ROOM).await;
    assert_eq!(presence(&mut alice).await["id"], "bob");
    assert_eq!(presence(&mut bob).await["id"], "bob");
    bob.send(&json!({"command": "presence", "identifier": ROOM}).to_string())
        .await;
    assert_eq!(presence(&mut bob).await["total"], 2);
    // istate `$w`: this app channel whispers (to Alice, not back to Bob).
    bob.send(
        &json!({"command": "whisper", "identifier": ROOM, "data": {"typing": "bob"}}).to_string(),
    )
    .await;
    let f = alice.frame().await;
    assert_eq!(f, json!({"identifier": ROOM, "message": {"typing": "bob"}}));
    // The app's reply to an action leaves (anycable-rails' `leave_presence`).
    bob.send(&message(ROOM, json!({"action": "leave"}))).await;
    assert_eq!(
        presence(&mut alice).await,
        json!({"type": "leave", "id": "bob"})
    );
}

async fn integer_statuses_work_like_names(t: Transport) {
    let s = setup(t).await;
    let mut c = as_user(s.server.local_addr(), "int").await;
    c.welcomed().await;
    c.subscribe(CHAT).await;
    c.send(&message(CHAT, speak("x"))).await;
    assert_eq!(c.frame().await["message"]["user"], "int");
}

async fn broadcasts_from_the_app_reach_the_stream_and_stop_streams_detaches(t: Transport) {
    let s = setup(t).await;
    let addr = s.server.local_addr();
    let mut alice = as_user(addr, "alice").await;
    alice.welcomed().await;
    alice.subscribe(CHAT).await;
    let room2 = r#"{"channel":"ChatChannel","room":"2"}"#;
    alice.subscribe(room2).await;
    let mut bob = as_user(addr, "bob").await;
    bob.welcomed().await;
    bob.subscribe(CHAT).await;
    bob.send(&message(CHAT, json!({"action":"broadcast","text":"hi"})))
        .await;
    let want = json!({"identifier": CHAT, "message": {"text":"hi","from":"bob"}});
    assert_eq!(alice.frame().await, want);
    assert_eq!(bob.frame().await, want);

    alice.send(&message(CHAT, json!({"action":"stop"}))).await;
    s.app
        .wait_for(|c| c["body"]["data"] == r#"{"action":"stop"}"#)
        .await;
    // The reply is applied before the next command is read: broadcast to room 1 (stopped),
    // then room 2 (the sentinel). Alice sees only the sentinel.
    alice.send(&message(room2, speak("sync"))).await;
    assert_eq!(alice.frame().await["message"]["text"], "sync");
    bob.send(&message(CHAT, json!({"action":"broadcast","text":"lost"})))
        .await;
    assert_eq!(bob.frame().await["message"]["text"], "lost");
    alice
        .send(&message(
            room2,
            json!({"action":"broadcast","text":"sentinel"}),
        ))
        .await;
    let f = alice.frame().await;
    assert_eq!(f["identifier"], room2, "room 1 was stopped: {f}");
    assert_eq!(f["message"]["text"], "sentinel");
}

async fn app_errors_become_error_frames_and_disconnect_closes(t: Transport) {
    let s = setup(t).await;
    let mut c = as_user(s.server.local_addr(), "alice").await;
    c.welcomed().await;
    c.subscribe(CHAT).await;
    c.send(&message(CHAT, json!({"action":"boom"}))).await;
    let f = c.frame().await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["reason"], "action_failed");
    assert!(
        f["message"].as_str().unwrap().contains("undefined method"),
        "{f}"
    );
    c.send(&message(CHAT, json!({"action":"kick"}))).await;
    let (code, frames) = c.closed().await;
    assert_eq!(code, Some(1000));
    assert_eq!(frames.last().unwrap()["reason"], "remote", "{frames:?}");
}

async fn disconnect_carries_the_subscriptions_and_their_state(t: Transport) {
    let s = setup(t).await;
    let mut c = as_user(s.server.local_addr(), "alice").await;
    c.welcomed().await;
    c.subscribe(CHAT).await;
    c.send(&message(CHAT, speak("x"))).await;
    c.frame().await;
    drop(c);
    let call = s.app.wait_for(|c| c["path"] == "disconnect").await;
    let body = &call["body"];
    assert_eq!(body["identifiers"], r#"{"user":"alice"}"#);
    assert_eq!(body["subscriptions"], json!([CHAT]));
    assert_eq!(body["env"]["cstate"]["count"], "1");
    let istate: Value =
        serde_json::from_str(body["env"]["istate"][CHAT].as_str().unwrap()).unwrap();
    assert_eq!(istate, json!({"room": "1"}));
    assert_eq!(body["env"]["headers"]["cookie"], "user=alice; theme=dark");
}

async fn extended_protocol_clients_get_a_sid_in_the_apps_welcome(t: Transport) {
    let s = setup(t).await;
    let mut c = connect_with(
        s.server.local_addr(),
        &[("sec-websocket-protocol", EXT), ("cookie", "user=alice")],
    )
    .await;
    let welcome = c.frame().await;
    assert_eq!(welcome["type"], "welcome");
    let sid = welcome["sid"].as_str().expect("sid injected").to_owned();
    let call = s.app.wait_for(|c| c["path"] == "connect").await;
    assert_eq!(call["sid"], sid.as_str(), "the same sid is sent to the app");
}

async fn shutdown_drains_the_disconnect_calls(t: Transport) {
    let s = setup(t).await;
    let addr = s.server.local_addr();
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = as_user(addr, &format!("u{i}")).await;
        c.welcomed().await;
        c.subscribe(CHAT).await;
        clients.push(c);
    }
    let report = s.server.shutdown().await;
    assert_eq!(report.remaining, 0);
    let disconnects = s
        .app
        .calls()
        .into_iter()
        .filter(|c| c["path"] == "disconnect")
        .count();
    assert_eq!(
        disconnects, 20,
        "every disconnect made before shutdown returned"
    );
}

async fn a_slow_call_of_a_closed_connection_is_cancelled(t: Transport) {
    let s = setup(t).await;
    let addr = s.server.local_addr();
    let mut c = as_user(addr, "alice").await;
    c.welcomed().await;
    c.subscribe(CHAT).await;
    c.send(&message(CHAT, json!({"action":"slow"}))).await;
    s.app
        .wait_for(|c| c["body"]["data"] == r#"{"action":"slow"}"#)
        .await;
    drop(c);
    // The connection ends at once (its disconnect call is made) instead of waiting 10 s.
    s.app.wait_for(|c| c["path"] == "disconnect").await;
    let text = metrics(addr).await;
    assert_eq!(
        metric(&text, "ferrocable_rpc_canceled_total"),
        Some(1.0),
        "{text}"
    );
}

async fn an_outage_gives_clear_answers_and_service_resumes_by_itself(t: Transport) {
    let s = setup_with(t, |c| c.rpc_call_timeout = 1000).await;
    let addr = s.server.local_addr();
    let mut c = as_user(addr, "alice").await;
    c.welcomed().await;
    c.subscribe(CHAT).await;

    // The app answers 503: a perform gets an error, a subscribe is rejected.
    s.app.set_mode(Mode::Down);
    c.send(&message(CHAT, speak("x"))).await;
    let f = c.frame().await;
    assert_eq!(
        (f["type"].as_str(), f["reason"].as_str()),
        (Some("error"), Some("rpc_error")),
        "{f}"
    );
    let room3 = r#"{"channel":"ChatChannel","room":"3"}"#;
    c.send(&subscribe(room3)).await;
    assert_eq!(c.frame().await["type"], "reject_subscription");

    // The app's process is gone: new connections close with 1011 within the call's deadline.
    s.app_task.abort();
    let _ = s.app_task.await;
    let mut refused = as_user(addr, "bob").await;
    assert_eq!(refused.closed().await.0, Some(1011));
    let text = metrics(addr).await;
    assert!(
        metric(&text, "ferrocable_rpc_retries_total").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        text.contains(r#"ferrocable_rpc_errors_total{method="connect",kind="unavailable"}"#),
        "{text}"
    );
    // A 503 is an answer (not retried); gRPC's UNAVAILABLE is retried until the deadline.
    let kind = match t {
        Transport::Http => "bad_reply",
        Transport::Grpc => "unavailable",
    };
    assert!(
        text.contains(&format!(
            r#"ferrocable_rpc_errors_total{{method="command",kind="{kind}"}}"#
        )),
        "{text}"
    );

    // Back on the same port: everything works again without restarting ferrocable.
    s.app.set_mode(Mode::Up);
    let _task = restart_app(t, s.app.clone(), s.app_addr).await;
    c.send(&message(CHAT, speak("back"))).await;
    assert_eq!(c.frame().await["message"]["text"], "back");
    let mut again = as_user(addr, "bob").await;
    again.welcomed().await;
}

async fn broadcasts_over_the_redis_adapter_reach_the_stream(t: Transport) {
    let s = setup_with(t, |c| {
        c.broadcast_adapter = vec!["http".into(), "redis".into()];
        c.redis_url = Some("redis://127.0.0.1:6379".into());
    })
    .await;
    s.app.redis_at("127.0.0.1:6379".into());
    let room = format!(
        r#"{{"channel":"ChatChannel","room":"redis-{}"}}"#,
        std::process::id()
    );
    let mut c = as_user(s.server.local_addr(), "alice").await;
    c.welcomed().await;
    c.subscribe(&room).await;
    let got = until_broadcast(&mut c, &room, json!({"action":"publish_redis","text":"r"})).await;
    assert_eq!(got["message"], json!({"text":"r","via":"redis"}));
}

async fn broadcasts_over_the_nats_adapter_reach_the_stream(t: Transport) {
    let s = setup_with(t, |c| {
        c.broadcast_adapter = vec!["http".into(), "nats".into()];
        c.nats_servers = Some("nats://127.0.0.1:4222".into());
    })
    .await;
    let room = format!(
        r#"{{"channel":"ChatChannel","room":"nats-{}-{t:?}"}}"#,
        std::process::id()
    );
    let mut c = as_user(s.server.local_addr(), "alice").await;
    c.welcomed().await;
    c.subscribe(&room).await;
    let got = until_broadcast(&mut c, &room, json!({"action":"publish_nats","text":"n"})).await;
    assert_eq!(got["message"], json!({"text":"n","via":"nats"}));
}

async fn broadcasts_over_the_redisx_adapter_reach_the_stream_once(t: Transport) {
    let s = setup_with(t, |c| {
        c.broadcast_adapter = vec!["http".into(), "redisx".into()];
        c.redis_url = Some("redis://127.0.0.1:6379".into());
        // A group of this test's own: other runs' ferrocables on the same Redis stay apart.
        c.redis_group = format!("test-{}-{t:?}", std::process::id());
        c.broadcast_redis_channel = format!("__anycable__{}{t:?}", std::process::id());
    })
    .await;
    s.app.redis_at("127.0.0.1:6379".into());
    let room = format!(
        r#"{{"channel":"ChatChannel","room":"redisx-{}-{t:?}"}}"#,
        std::process::id()
    );
    let mut c = as_user(s.server.local_addr(), "alice").await;
    c.welcomed().await;
    c.subscribe(&room).await;
    let key = format!("__anycable__{}{t:?}", std::process::id());
    // The node creates its consumer group at `$` (new entries only) when it starts reading: an
    // entry added before that is never the group's. The group's `MKSTREAM` makes the key.
    assert_eq!(
        redis_until(&["EXISTS", &key], ":1", 500).await,
        ":1",
        "the node's consumer group was created"
    );
    let data = json!({"action":"publish_redisx","text":"x","key":key});
    let got = until_broadcast(&mut c, &room, data).await;
    assert_eq!(got["message"], json!({"text":"x","via":"redisx"}));
    // Taken once by the group, acknowledged and deleted: the stream is empty again.
    // The ack follows the delivery: poll the condition for up to 2 s.
    assert_eq!(
        redis_until(&["XLEN", &key], ":0", 200).await,
        ":0",
        "every entry acknowledged and deleted"
    );
    fake_rails::redis_command("127.0.0.1:6379", &["DEL", &key]).await;
}

/// Repeats a Redis command every 10 ms until it answers `want` (at most `tries` times); the
/// last answer.
async fn redis_until(args: &[&str], want: &str, tries: usize) -> String {
    let mut answer = String::new();
    for _ in 0..tries {
        answer = redis_cli(args).await;
        if answer == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    answer
}

/// One Redis command's reply line.
async fn redis_cli(args: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect("127.0.0.1:6379")
        .await
        .unwrap();
    let mut command = format!("*{}\r\n", args.len());
    for a in args {
        command.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(command.as_bytes()).await.unwrap();
    let mut reply = [0u8; 64];
    let n = stream.read(&mut reply).await.unwrap();
    String::from_utf8_lossy(&reply[..n]).trim().to_owned()
}

async fn rust_channels_live_beside_the_apps_and_see_its_identity(t: Transport) {
    let app = FakeRails::new();
    let (app_addr, _task) = start_app(t, app.clone()).await;
    let server = start_with(
        rpc_config(t, app_addr),
        ferrocable_node::NodeBuilder::default().channel("RoomChannel", RoomChannel),
    )
    .await;
    let mut c = as_user(server.local_addr(), "alice").await;
    c.welcomed().await;
    let room = r#"{"channel":"RoomChannel","room":5}"#;
    c.subscribe_with_greeting(room).await;
    // Served in-process, with the identity the app gave at connect.
    c.send(&message(room, json!({"action":"whoami"}))).await;
    assert_eq!(c.frame().await["message"], json!({"user":"alice"}));
    c.subscribe(CHAT).await;
    c.send(&message(CHAT, speak("x"))).await;
    assert_eq!(c.frame().await["message"]["user"], "alice");
    let commands: Vec<_> = app
        .calls()
        .into_iter()
        .filter(|c| c["path"] == "command")
        .map(|c| {
            c["body"]["identifier"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        commands.iter().all(|i| i == CHAT),
        "RoomChannel never went to the app: {commands:?}"
    );
}

async fn a_slow_app_times_out_with_an_error_and_is_counted(t: Transport) {
    let s = setup_with(t, |c| c.rpc_call_timeout = 500).await;
    let addr = s.server.local_addr();
    let mut c = as_user(addr, "alice").await;
    c.welcomed().await;
    c.subscribe(CHAT).await;
    s.app.set_mode(Mode::Slow);
    let sent = std::time::Instant::now();
    c.send(&message(CHAT, speak("late"))).await;
    let f = c.frame().await;
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["reason"], "rpc_error");
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(3),
        "answered at the deadline, not after the app's 5 s"
    );
    let text = metrics(addr).await;
    assert!(
        metric(&text, "ferrocable_rpc_timeouts_total").unwrap() >= 1.0,
        "{text}"
    );
}

/// A Rails app behind `https://`: reached over TLS when its certificate chains to the
/// configured root CA; refused (1011, nothing sent in the clear) when it does not.
#[tokio::test]
async fn https_rpc_hosts_are_reached_over_tls_and_checked() {
    let dir = std::env::temp_dir().join(format!("ferrocable-rpc-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let app = FakeRails::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _task = tokio::spawn(fake_rails::serve_tls(app.clone(), listener, acceptor));
    let https = |root: Option<std::path::PathBuf>| ServeConfig {
        rpc_host: Some(format!("https://localhost:{port}/_anycable")),
        http_rpc_secret: Some(fake_rails::SECRET.into()),
        rpc_tls_root_ca: root,
        ..config()
    };

    let server = start(https(Some(ca))).await;
    let mut c = as_user(server.local_addr(), "alice").await;
    c.welcomed().await;
    c.subscribe(CHAT).await;
    c.send(&message(CHAT, speak("tls"))).await;
    assert_eq!(c.frame().await["message"]["text"], "tls");

    let untrusting = start(https(None)).await;
    let mut refused = as_user(untrusting.local_addr(), "bob").await;
    assert_eq!(refused.closed().await.0, Some(1011));
    assert!(
        !app.calls()
            .iter()
            .any(|c| c["body"]["env"]["headers"]["cookie"]
                .as_str()
                .is_some_and(|k| k.contains("bob"))),
        "nothing reached an untrusted host"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each scenario above, over HTTP RPC and over gRPC.
macro_rules! over_both {
    ($($name:ident),* $(,)?) => {
        mod http {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Transport::Http).await
            })*
        }
        mod grpc {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Transport::Grpc).await
            })*
        }
    };
}

over_both!(
    app_channels_join_presence_and_whisper_from_their_state_and_replies,
    a_valid_token_skips_the_connect_call,
    rust_channels_live_beside_the_apps_and_see_its_identity,
    a_slow_app_times_out_with_an_error_and_is_counted,
    broadcasts_over_the_redisx_adapter_reach_the_stream_once,
    broadcasts_over_the_nats_adapter_reach_the_stream,
    connect_goes_to_the_app_with_the_request_and_is_welcomed,
    a_connection_the_app_rejects_gets_its_disconnect_and_a_normal_close,
    an_app_exception_at_connect_closes_with_1011,
    subscribe_confirmed_rejected_and_unknown,
    perform_transmits_and_state_survives_between_commands,
    integer_statuses_work_like_names,
    broadcasts_from_the_app_reach_the_stream_and_stop_streams_detaches,
    app_errors_become_error_frames_and_disconnect_closes,
    disconnect_carries_the_subscriptions_and_their_state,
    extended_protocol_clients_get_a_sid_in_the_apps_welcome,
    shutdown_drains_the_disconnect_calls,
    a_slow_call_of_a_closed_connection_is_cancelled,
    an_outage_gives_clear_answers_and_service_resumes_by_itself,
    broadcasts_over_the_redis_adapter_reach_the_stream,
);
