//! The Redis Streams broker against a real Redis (127.0.0.1:6379 or `REDIS_URL`): the shared
//! broker conformance suite, the atomic append + publish, and a new epoch after data loss.

use std::time::Duration;

use bytes::Bytes;
use ferrocable_node::broker::{Broker, BrokerError, HistoryError, random_token};
use ferrocable_node::conformance::{broker_suite, suite_limits};
use ferrocable_node::pubsub::decode_envelope;
use ferrocable_redis::RedisBroker;
use futures_util::StreamExt;

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

async fn broker(prefix: &str) -> RedisBroker {
    RedisBroker::connect(&url(), prefix, suite_limits())
        .await
        .expect("Redis must be running on 127.0.0.1:6379 (scripts/test.sh starts it)")
}

#[tokio::test]
async fn the_redis_broker_conforms() {
    let prefix = format!("fctest:{}:", random_token(4));
    broker_suite(&broker(&prefix).await).await;
}

#[tokio::test]
async fn an_append_publishes_its_positioned_envelope_in_the_same_script() {
    let prefix = format!("fctest:{}:", random_token(4));
    let channels = format!("fctest:{}:stream:", random_token(4));
    let b = broker(&prefix).await.publishing_to(&channels);
    let client = redis::Client::open(url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(format!("{channels}chat")).await.unwrap();
    let appended = b
        .append("chat", Bytes::from_static(br#"{"t":1}"#), 42)
        .await
        .unwrap();
    assert!(appended.published);
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.on_message().next())
        .await
        .expect("published within 5 s")
        .unwrap();
    let payload: String = msg.get_payload().unwrap();
    let e = decode_envelope(&payload).expect("a bus envelope");
    assert_eq!((e.origin, e.stream.as_str()), (42, "chat"));
    assert_eq!(e.message.get(), r#"{"t":1}"#);
    assert_eq!(e.position(), Some(appended.position));
}

#[tokio::test]
async fn lost_data_means_a_new_epoch_and_old_positions_are_rejected() {
    let prefix = format!("fctest:{}:", random_token(4));
    let b = broker(&prefix).await;
    let before = b
        .append("s", Bytes::from_static(b"1"), 1)
        .await
        .unwrap()
        .position;
    // Redis loses the broker's keys (a restart without persistence, a flush).
    let client = redis::Client::open(url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    let after = b
        .append("s", Bytes::from_static(b"2"), 1)
        .await
        .unwrap()
        .position;
    assert_ne!(after.epoch, before.epoch, "a new storage generation");
    assert_eq!(after.offset, 1);
    assert_eq!(
        b.history_from("s", &before).await,
        Err(BrokerError::History(HistoryError::EpochMismatch))
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_a_typed_error() {
    let err = RedisBroker::connect("redis://127.0.0.1:1/0", "x:", suite_limits())
        .await
        .unwrap_err();
    assert!(err.what.contains("redis broker"), "{err}");
    // The cause is the client's own error, kept as the source.
    let source = std::error::Error::source(&err).expect("a source");
    assert!(!source.to_string().is_empty());
}
