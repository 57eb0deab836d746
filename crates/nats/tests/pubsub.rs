//! Core NATS pub/sub against a real NATS server (127.0.0.1:4222 or `NATS_URL`): the shared
//! pubsub conformance suite, two nodes on one server.

use ferrocable_nats::NatsPubSub;
use ferrocable_node::broker::random_token;
use ferrocable_node::conformance::pubsub_suite;

#[tokio::test]
async fn nats_pubsub_conforms() {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let prefix = format!("fctest{}", random_token(4));
    let a = NatsPubSub::new(&url, &prefix);
    let b = NatsPubSub::new(&url, &prefix);
    pubsub_suite(&a, &b).await;
}
