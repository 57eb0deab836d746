//! Redis pub/sub against a real Redis (127.0.0.1:6379 or `REDIS_URL`): the shared pubsub
//! conformance suite, two nodes on one server.

use ferrocable_node::broker::random_token;
use ferrocable_node::conformance::pubsub_suite;
use ferrocable_redis::RedisPubSub;

#[tokio::test]
async fn redis_pubsub_conforms() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let prefix = format!("fctest:{}:", random_token(4));
    let a = RedisPubSub::new(&url, &prefix).unwrap();
    let b = RedisPubSub::new(&url, &prefix).unwrap();
    pubsub_suite(&a, &b).await;
}
