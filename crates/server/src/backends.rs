//! The distributed parts a configuration names: the node-to-node bus (`pubsub`), the broker
//! (history and the extended protocol's session cache) and AnyCable's Redis broadcast ingress.
//! Each networked backend is a Cargo feature (`redis`, `nats`); a URL whose backend this build
//! leaves out is a clear start-up error naming the feature, never a silent fallback.

use ferrocable_node::{Node, NodeBuilder};

use crate::{ServeConfig, StartError};

#[cfg(not(all(feature = "redis", feature = "nats")))]
fn not_built(what: String, feature: &'static str) -> StartError {
    StartError::NotBuilt { what, feature }
}

fn is_redis(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

/// Adds the configured bus: `memory` (none: one node), `redis://…` or `nats://…`.
pub(crate) fn pubsub(
    config: &ServeConfig,
    builder: NodeBuilder,
) -> Result<NodeBuilder, StartError> {
    match config.pubsub.trim() {
        "memory" | "" => Ok(builder),
        url if is_redis(url) => {
            #[cfg(feature = "redis")]
            {
                let bus = ferrocable_redis::RedisPubSub::new(url, &config.pubsub_prefix)
                    .map_err(StartError::PubSub)?;
                Ok(builder.pubsub(bus))
            }
            #[cfg(not(feature = "redis"))]
            Err(not_built(format!("pubsub {url}"), "redis"))
        }
        url if url.starts_with("nats://") => {
            #[cfg(feature = "nats")]
            {
                let prefix = config.pubsub_prefix.trim_end_matches(':').replace(':', ".");
                Ok(builder.pubsub(ferrocable_nats::NatsPubSub::new(url, &prefix)))
            }
            #[cfg(not(feature = "nats"))]
            Err(not_built(format!("pubsub {url}"), "nats"))
        }
        other => Err(StartError::UnknownBackend {
            role: "pubsub",
            url: other.to_owned(),
        }),
    }
}

/// Adds the configured broker: `memory` (the node's default), `redis://…` (Redis Streams) or
/// `nats://…` (JetStream). With the same server as the bus, storing and publishing become
/// one operation.
pub(crate) async fn broker(
    config: &ServeConfig,
    builder: NodeBuilder,
) -> Result<NodeBuilder, StartError> {
    match config.broker.trim() {
        "memory" | "" => Ok(builder),
        url if is_redis(url) => {
            #[cfg(feature = "redis")]
            {
                let mut broker = ferrocable_redis::RedisBroker::connect(
                    url,
                    &config.broker_prefix,
                    config.history_limits(),
                )
                .await
                .map_err(StartError::Broker)?;
                // Same Redis for bus and history: the append script publishes too (one atomic step).
                if config.pubsub.trim() == url {
                    broker = broker.publishing_to(&config.pubsub_prefix);
                }
                Ok(builder.broker(broker))
            }
            #[cfg(not(feature = "redis"))]
            Err(not_built(format!("broker {url}"), "redis"))
        }
        url if url.starts_with("nats://") => {
            #[cfg(feature = "nats")]
            {
                // `ferrocable:broker:` → stream FERROCABLE_BROKER on subjects `ferrocable.broker.…`.
                let subjects = config.broker_prefix.trim_end_matches(':').replace(':', ".");
                let name: String = subjects
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_uppercase()
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let mut broker = ferrocable_nats::JetStreamBroker::connect(
                    url,
                    &name,
                    &subjects,
                    config.history_limits(),
                )
                .await
                .map_err(StartError::Broker)?;
                // Same NATS for bus and history: nodes read stored messages from JetStream, so
                // storing and publishing are one operation.
                if config.pubsub.trim() == url {
                    broker = broker.delivering_to_nodes();
                }
                Ok(builder.broker(broker))
            }
            #[cfg(not(feature = "nats"))]
            Err(not_built(format!("broker {url}"), "nats"))
        }
        other => Err(StartError::UnknownBackend {
            role: "broker",
            url: other.to_owned(),
        }),
    }
}

/// Starts reading AnyCable's Redis broadcast channel when `broadcast_redis_url` is set.
pub(crate) fn ingress(config: &ServeConfig, node: &Node) -> Result<(), StartError> {
    for adapter in &config.broadcast_adapter {
        match adapter.as_str() {
            "http" | "redis" => {}
            "redisx" => {
                let url = config
                    .redis_url
                    .clone()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| "redis://localhost:6379".to_owned());
                #[cfg(feature = "redis")]
                ferrocable_redis::spawn_anycable_stream_ingress(
                    &url,
                    &config.broadcast_redis_channel,
                    &config.redis_group,
                    node.clone(),
                )
                .map_err(StartError::PubSub)?;
                #[cfg(not(feature = "redis"))]
                return Err(not_built(
                    format!("broadcast adapter redisx {url}"),
                    "redis",
                ));
            }
            "nats" => {
                let url = config
                    .nats_servers
                    .clone()
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
                #[cfg(feature = "nats")]
                ferrocable_nats::spawn_anycable_ingress(&url, &config.nats_channel, node.clone());
                #[cfg(not(feature = "nats"))]
                return Err(not_built(format!("broadcast adapter nats {url}"), "nats"));
            }
            other => {
                return Err(StartError::UnknownBackend {
                    role: "broadcast adapter (http, redis, redisx or nats)",
                    url: other.to_owned(),
                });
            }
        }
    }
    let anycable_redis = config
        .broadcast_adapter
        .iter()
        .any(|a| a == "redis")
        .then(|| {
            config
                .redis_url
                .clone()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "redis://localhost:6379".to_owned())
        });
    let Some(url) = config
        .broadcast_redis_url
        .clone()
        .filter(|u| !u.is_empty())
        .or(anycable_redis)
    else {
        return Ok(());
    };
    let url = url.as_str();
    #[cfg(feature = "redis")]
    {
        ferrocable_redis::spawn_anycable_ingress(url, &config.broadcast_redis_channel, node.clone())
            .map(drop)
            .map_err(StartError::PubSub)
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = node;
        Err(not_built(format!("broadcast ingress {url}"), "redis"))
    }
}
