//! Conformance suites every backend of a role must pass: one definition of what a broker
//! (and a pubsub bus) must do, run against the in-memory implementation here and against
//! Redis and NATS in their crates' tests. Each check panics with a message naming the rule
//! it found broken.

use std::time::Duration;

use bytes::Bytes;

use crate::broker::{Broker, BrokerError, HistoryError, StreamPosition, random_token};

/// The history limit backends are built with for [`broker_suite`].
pub const SUITE_MAX_MESSAGES: usize = 5;

fn fresh_stream(name: &str) -> String {
    format!("conformance:{name}:{}", random_token(6))
}

async fn append(broker: &dyn Broker, stream: &str, n: u64) -> StreamPosition {
    broker
        .append(stream, Bytes::from(format!("{{\"n\":{n}}}")), 1)
        .await
        .expect("append succeeds")
        .position
}

fn numbers(entries: &[crate::broker::HistoryEntry]) -> Vec<u64> {
    entries
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&e.message).expect("stored JSON");
            v["n"].as_u64().expect("n")
        })
        .collect()
}

/// Runs every broker rule. `broker` must keep [`SUITE_MAX_MESSAGES`] messages per stream,
/// a history TTL of at least a minute and a sessions TTL of at least a minute.
pub async fn broker_suite(broker: &dyn Broker) {
    offsets_rise_by_one_per_stream_under_one_epoch(broker).await;
    replay_is_exclusive_and_complete(broker).await;
    bad_positions_are_rejected(broker).await;
    evicted_offsets_are_rejected(broker).await;
    time_queries_return_kept_messages(broker).await;
    sessions_restore_once(broker).await;
}

async fn offsets_rise_by_one_per_stream_under_one_epoch(broker: &dyn Broker) {
    let (a, b) = (fresh_stream("a"), fresh_stream("b"));
    let a1 = append(broker, &a, 1).await;
    let a2 = append(broker, &a, 2).await;
    let b1 = append(broker, &b, 1).await;
    assert_eq!(a1.offset, 1, "a stream's first offset is 1");
    assert_eq!(a2.offset, 2, "offsets rise by one");
    assert_eq!(b1.offset, 1, "offsets are per stream");
    assert!(!a1.epoch.is_empty(), "an epoch is never empty");
    assert_eq!(a1.epoch, a2.epoch, "one epoch per storage generation");
    assert_eq!(a1.epoch, b1.epoch, "one epoch for all streams");
}

async fn replay_is_exclusive_and_complete(broker: &dyn Broker) {
    let s = fresh_stream("replay");
    let p1 = append(broker, &s, 1).await;
    append(broker, &s, 2).await;
    let p3 = append(broker, &s, 3).await;
    let h = broker.history_from(&s, &p1).await.expect("history");
    assert_eq!(
        numbers(&h.entries),
        vec![2, 3],
        "replay after a position is exclusive"
    );
    assert_eq!(
        h.entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![2, 3],
        "entries carry their offsets"
    );
    assert_eq!(h.epoch, p1.epoch);
    let h = broker.history_from(&s, &p3).await.expect("history");
    assert!(h.entries.is_empty(), "nothing after the newest message");
    let zero = StreamPosition {
        epoch: p1.epoch.clone(),
        offset: 0,
    };
    let h = broker.history_from(&s, &zero).await.expect("history");
    assert_eq!(
        numbers(&h.entries),
        vec![1, 2, 3],
        "offset 0 means everything"
    );
}

async fn bad_positions_are_rejected(broker: &dyn Broker) {
    let s = fresh_stream("bad");
    let p = append(broker, &s, 1).await;
    let stale = StreamPosition {
        epoch: format!("{}-old", p.epoch),
        offset: 1,
    };
    assert_eq!(
        broker.history_from(&s, &stale).await,
        Err(BrokerError::History(HistoryError::EpochMismatch)),
        "another epoch is rejected"
    );
    let future = StreamPosition {
        epoch: p.epoch.clone(),
        offset: 99,
    };
    assert!(
        matches!(
            broker.history_from(&s, &future).await,
            Err(BrokerError::History(_))
        ),
        "a position beyond the newest message is rejected"
    );
}

async fn evicted_offsets_are_rejected(broker: &dyn Broker) {
    let s = fresh_stream("evict");
    let mut positions = Vec::new();
    for n in 1..=(SUITE_MAX_MESSAGES as u64 + 3) {
        positions.push(append(broker, &s, n).await);
    }
    assert_eq!(
        broker.history_from(&s, &positions[0]).await,
        Err(BrokerError::History(HistoryError::Evicted)),
        "a position whose next message was evicted is rejected"
    );
    let kept = &positions[2]; // offset 3: messages 4..=8 are the 5 kept
    let h = broker.history_from(&s, kept).await.expect("history");
    assert_eq!(
        numbers(&h.entries),
        vec![4, 5, 6, 7, 8],
        "the kept tail is served"
    );
}

async fn time_queries_return_kept_messages(broker: &dyn Broker) {
    let s = fresh_stream("since");
    append(broker, &s, 1).await;
    append(broker, &s, 2).await;
    let now = crate::broker::now_ms() / 1000;
    let h = broker.history_since(&s, now - 60).await.expect("history");
    assert_eq!(numbers(&h.entries), vec![1, 2], "since a minute ago: both");
    assert!(!h.epoch.is_empty());
    let h = broker.history_since(&s, now + 60).await.expect("history");
    assert!(h.entries.is_empty(), "since the future: none");
    let h = broker
        .history_since(&fresh_stream("empty"), now - 60)
        .await
        .expect("history of an unknown stream");
    assert!(h.entries.is_empty());
}

async fn sessions_restore_once(broker: &dyn Broker) {
    let sid = random_token(8);
    broker
        .commit_session(&sid, Bytes::from_static(b"v1"))
        .await
        .expect("commit");
    broker
        .commit_session(&sid, Bytes::from_static(b"v2"))
        .await
        .expect("commit replaces");
    assert_eq!(
        broker.restore_session(&sid).await.expect("restore"),
        Some(Bytes::from_static(b"v2")),
        "the newest state is restored"
    );
    assert_eq!(
        broker.restore_session(&sid).await.expect("restore"),
        None,
        "a session restores once"
    );
    assert_eq!(
        broker
            .restore_session("never-existed")
            .await
            .expect("restore"),
        None
    );
}

/// Limits for [`broker_suite`].
pub fn suite_limits() -> crate::broker::HistoryLimits {
    crate::broker::HistoryLimits {
        max_messages: SUITE_MAX_MESSAGES,
        ttl: Duration::from_secs(300),
        sessions_ttl: Duration::from_secs(300),
    }
}

/// What a node received from the bus in [`pubsub_suite`].
type Received = tokio::sync::mpsc::UnboundedReceiver<(String, String, Option<StreamPosition>)>;

fn start_node(bus: &dyn crate::pubsub::PubSub, node_id: crate::pubsub::NodeId) -> Received {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    bus.start(crate::pubsub::PubSubHooks {
        node_id,
        deliver: std::sync::Arc::new(
            move |stream: &str, message: &str, position: Option<&StreamPosition>| {
                let _ = tx.send((stream.to_owned(), message.to_owned(), position.cloned()));
            },
        ),
        errors: Default::default(),
        connected: Default::default(),
    });
    rx
}

fn publish(
    bus: &dyn crate::pubsub::PubSub,
    origin: crate::pubsub::NodeId,
    stream: &str,
    n: u64,
    position: Option<&StreamPosition>,
) {
    bus.publish(
        stream,
        crate::pubsub::encode_envelope(origin, stream, &format!("{{\"n\":{n}}}"), position),
    );
}

/// Publishes until `rx` gets a message of `stream` (a bus subscription is asynchronous), then
/// returns it. Panics after 10 s.
async fn first_delivery(
    bus: &dyn crate::pubsub::PubSub,
    origin: crate::pubsub::NodeId,
    stream: &str,
    rx: &mut Received,
) -> (String, String, Option<StreamPosition>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        publish(bus, origin, stream, 0, None);
        if let Ok(Some(got)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a subscribed node never received {stream}"
        );
    }
}

/// Publishes the marker `{"n": mark}` on `marks` and reads `rx` until it arrives; what comes
/// before it may only be the `{"n":0}` copies [`first_delivery`] left behind.
async fn drain_until_mark(
    bus: &dyn crate::pubsub::PubSub,
    origin: crate::pubsub::NodeId,
    marks: &str,
    rx: &mut Received,
    mark: u64,
) {
    publish(bus, origin, marks, mark, None);
    let want = format!("{{\"n\":{mark}}}");
    loop {
        let (stream, message, _) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the marker within 5 s")
            .expect("bus open");
        if stream == marks && message == want {
            return;
        }
        assert_eq!(
            message, "{\"n\":0}",
            "only retry copies before the marker ({stream})"
        );
    }
}

/// Publishes the marker `{"n": mark}` on `marks` and asserts it is the very next thing `rx`
/// gets: the sentinel that ends every "nothing else arrives" check (a bus delivers one
/// publisher's messages in order, so anything wrongly delivered would come first).
async fn next_is_mark(
    bus: &dyn crate::pubsub::PubSub,
    origin: crate::pubsub::NodeId,
    marks: &str,
    rx: &mut Received,
    mark: u64,
    why: &str,
) {
    publish(bus, origin, marks, mark, None);
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the marker within 5 s")
        .expect("bus open");
    assert_eq!(
        got,
        (marks.to_owned(), format!("{{\"n\":{mark}}}"), None),
        "{why}"
    );
}

/// Runs every pubsub rule on two handles of one bus (two nodes). Both must be fresh (not
/// started); the suite starts them with node ids 1 and 2.
pub async fn pubsub_suite(a: &dyn crate::pubsub::PubSub, b: &dyn crate::pubsub::PubSub) {
    let mut at_a = start_node(a, 1);
    let mut at_b = start_node(b, 2);
    let stream = fresh_stream("bus");
    let other = fresh_stream("other");
    let marks = fresh_stream("marks");
    a.subscribe(&stream);
    a.subscribe(&marks);
    b.subscribe(&stream);
    b.subscribe(&marks);
    // Every subscription is live (a bus subscription is asynchronous), and the retry copies
    // that proved it are read.
    first_delivery(a, 1, &stream, &mut at_b).await;
    first_delivery(a, 1, &marks, &mut at_b).await;
    drain_until_mark(a, 1, &marks, &mut at_b, 900).await;
    first_delivery(b, 2, &marks, &mut at_a).await;
    drain_until_mark(b, 2, &marks, &mut at_a, 900).await;

    // A message from node 1 reaches node 2, with its position.
    let at = StreamPosition {
        epoch: "e1".into(),
        offset: 7,
    };
    publish(a, 1, &stream, 1, Some(&at));
    let got = tokio::time::timeout(Duration::from_secs(5), at_b.recv())
        .await
        .expect("delivered within 5 s")
        .expect("bus open");
    assert_eq!(
        got,
        (stream.clone(), "{\"n\":1}".to_owned(), Some(at)),
        "message, stream and position cross the bus"
    );
    next_is_mark(a, 1, &marks, &mut at_b, 901, "delivered once").await;
    // Node 1 ignores its own echoes (of everything it published above).
    next_is_mark(
        b,
        2,
        &marks,
        &mut at_a,
        902,
        "the origin ignores its own echo",
    )
    .await;

    // Only subscribed streams are delivered.
    publish(a, 1, &other, 2, None);
    next_is_mark(
        a,
        1,
        &marks,
        &mut at_b,
        903,
        "no delivery of a stream never subscribed",
    )
    .await;

    // An unsubscribed stream stops. A later subscription that delivers proves the unsubscribe
    // took effect (a node's bus commands run in order).
    b.unsubscribe(&stream);
    let after = fresh_stream("marks-after");
    b.subscribe(&after);
    first_delivery(a, 1, &after, &mut at_b).await;
    drain_until_mark(a, 1, &after, &mut at_b, 904).await;
    publish(a, 1, &stream, 3, None);
    next_is_mark(
        a,
        1,
        &after,
        &mut at_b,
        905,
        "no delivery of unsubscribed streams",
    )
    .await;
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_memory_broker_conforms() {
        let broker = crate::broker::MemoryBroker::new(super::suite_limits());
        super::broker_suite(&broker).await;
    }

    #[tokio::test]
    async fn the_memory_bus_conforms() {
        let bus = crate::pubsub::MemoryBus::new();
        super::pubsub_suite(&bus.pubsub(), &bus.pubsub()).await;
    }
}
