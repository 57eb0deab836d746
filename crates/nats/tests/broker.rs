//! The JetStream broker against a real NATS server with JetStream (127.0.0.1:4222 or
//! `NATS_URL`): the shared broker conformance suite, offsets that two nodes cannot both
//! take, and a new epoch when the history is lost.

use bytes::Bytes;
use ferrocable_nats::JetStreamBroker;
use ferrocable_node::broker::{Broker, BrokerError, HistoryError, random_token};
use ferrocable_node::conformance::{broker_suite, suite_limits};

fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

async fn broker(name: &str) -> JetStreamBroker {
    JetStreamBroker::connect(&url(), name, &format!("fctest.{name}"), suite_limits())
        .await
        .expect("NATS with JetStream must be running on 127.0.0.1:4222 (scripts/test.sh starts it)")
}

async fn drop_stream(name: &str) {
    let client = async_nats::connect(url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let _ = js.delete_stream(name).await;
    let _ = js.delete_stream(format!("{name}_SESSIONS")).await;
}

#[tokio::test]
async fn the_jetstream_broker_conforms() {
    let name = format!("FCTEST_{}", random_token(4));
    broker_suite(&broker(&name).await).await;
    drop_stream(&name).await;
}

#[tokio::test]
async fn two_nodes_appending_to_one_stream_never_share_an_offset() {
    let name = format!("FCTEST_{}", random_token(4));
    let a = broker(&name).await;
    let b = broker(&name).await;
    assert_eq!(a.epoch(), b.epoch(), "one history, one epoch");
    let mut tasks = Vec::new();
    for (i, node) in [a.clone(), b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for n in 0..10 {
                let p = node
                    .append(
                        "race",
                        Bytes::from(format!("{{\"node\":{i},\"n\":{n}}}")),
                        1,
                    )
                    .await
                    .expect("append");
                offsets.push(p.position.offset);
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let offsets = t.await.unwrap();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "a node's offsets rise: {offsets:?}"
        );
        all.extend(offsets);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=20).collect::<Vec<_>>(),
        "every offset taken exactly once"
    );
    drop_stream(&name).await;
}

#[tokio::test]
async fn a_lost_history_is_a_new_epoch_and_old_positions_are_rejected() {
    let name = format!("FCTEST_{}", random_token(4));
    let before = broker(&name).await;
    let p = before
        .append("s", Bytes::from_static(b"1"), 1)
        .await
        .unwrap()
        .position;
    drop_stream(&name).await;
    // A new stream has a new creation time (nanoseconds), hence a new epoch.
    let after = broker(&name).await;
    assert_ne!(after.epoch(), p.epoch);
    assert_eq!(
        after.history_from("s", &p).await,
        Err(BrokerError::History(HistoryError::EpochMismatch))
    );
    drop_stream(&name).await;
}

#[tokio::test]
async fn hostile_session_ids_are_refused_not_looked_up() {
    let name = format!("FCTEST_{}", random_token(4));
    let b = broker(&name).await;
    assert_eq!(b.restore_session("a.b>*").await, Ok(None));
    assert!(
        b.commit_session("a b", Bytes::from_static(b"x"))
            .await
            .is_err()
    );
    drop_stream(&name).await;
}

/// With delivery on, a stored message reaches the other nodes through JetStream itself, with
/// its position; the origin does not get its own message back.
#[tokio::test]
async fn stored_messages_reach_other_nodes_through_jetstream_with_their_offsets() {
    use ferrocable_node::broker::StreamPosition;
    use ferrocable_node::pubsub::PubSubHooks;
    let name = format!("FCTEST_{}", random_token(4));
    let start = |node_id| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let hooks = PubSubHooks {
            node_id,
            deliver: std::sync::Arc::new(move |s: &str, m: &str, p: Option<&StreamPosition>| {
                let _ = tx.send((s.to_owned(), m.to_owned(), p.cloned()));
            }),
            errors: Default::default(),
            connected: Default::default(),
        };
        (hooks, rx)
    };
    let a = broker(&name).await.delivering_to_nodes();
    let b = broker(&name).await.delivering_to_nodes();
    let (hooks_a, mut at_a) = start(1);
    let (hooks_b, mut at_b) = start(2);
    a.start(hooks_a);
    b.start(hooks_b);
    // The nodes' consumers start at "new messages" once created: append warm-up messages
    // until each node gets one from the other, then read the warm-up copies to a marker.
    warm_up(&b, 2, &mut at_a).await;
    warm_up(&a, 1, &mut at_b).await;
    let appended = a
        .append("chat room", Bytes::from_static(br#"{"t":1}"#), 1)
        .await
        .unwrap();
    assert!(appended.published, "the append is the publish");
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), at_b.recv())
        .await
        .expect("delivered to node 2 within 5 s")
        .unwrap();
    assert_eq!(
        got,
        (
            "chat room".to_owned(),
            r#"{"t":1}"#.to_owned(),
            Some(appended.position)
        )
    );
    // The sentinel: node 2 stores a message; it is the next thing node 1 gets. Node 1's own
    // message, had it come back, would have come first.
    let sentinel = b
        .append("marks", Bytes::from_static(br#"{"mark":2}"#), 2)
        .await
        .unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), at_a.recv())
        .await
        .expect("the sentinel within 5 s")
        .unwrap();
    assert_eq!(
        next,
        (
            "marks".to_owned(),
            r#"{"mark":2}"#.to_owned(),
            Some(sentinel.position)
        ),
        "the origin does not get its own message"
    );
    drop_stream(&name).await;
}

/// Appends to `warmup` on `from` (node `origin`) until `rx` (another node) receives one, then appends a
/// marker and reads `rx` up to it, so nothing of the warm-up is left to read.
async fn warm_up(
    from: &JetStreamBroker,
    origin: u64,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(
        String,
        String,
        Option<ferrocable_node::broker::StreamPosition>,
    )>,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        from.append("warmup", Bytes::from_static(b"{}"), origin)
            .await
            .unwrap();
        if tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a node never got a stored message"
        );
    }
    from.append("warmup", Bytes::from_static(b"{\"end\":true}"), origin)
        .await
        .unwrap();
    loop {
        let (stream, message, _) =
            tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("the warm-up marker within 5 s")
                .unwrap();
        assert_eq!(stream, "warmup", "only warm-up messages before the marker");
        if message == r#"{"end":true}"# {
            return;
        }
    }
}
