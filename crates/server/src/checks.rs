//! Boot-time deployment checks: the deployment advice every StimulusReflex / AnyCable team
//! learns the hard way, checked against the configuration (and the session Redis itself)
//! before the server starts. Each finding is a warning that names the fix; with `strict`, the
//! server refuses to start instead.

use crate::ServeConfig;

/// One finding: which check, and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    /// The check's name (stable, for logs and tests).
    pub check: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Advice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.check, self.message)
    }
}

/// A Redis URL as `host:port/db`, for comparing two URLs that name the same database.
fn redis_db(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (host, db) = rest.split_once('/').unwrap_or((rest, "0"));
    let db = db
        .split('?')
        .next()
        .filter(|d| !d.is_empty())
        .unwrap_or("0");
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:6379")
    };
    let host = host.replace("localhost:", "127.0.0.1:");
    Some(format!("{host}/{db}"))
}

fn is_loopback(config: &ServeConfig) -> bool {
    config.bind.ip().is_loopback()
}

/// The checks that need only the configuration.
pub fn config_checks(config: &ServeConfig) -> Vec<Advice> {
    let mut advice = Vec::new();
    let sessions = config.session_store_url();
    let multi_node = config.pubsub.trim() != "memory" && !config.pubsub.trim().is_empty();
    let node_local =
        sessions == "memory" || sessions == "sqlite" || sessions.starts_with("sqlite:");
    if multi_node && node_local {
        advice.push(Advice {
            check: "node_local_sessions",
            message: format!(
                "the session store {sessions:?} lives on this node, but pubsub {:?} means several nodes: \
                 a user's next request may reach a node that does not have their session; \
                 use a shared store (session_store = redis://…, postgres://… or memcached://…)",
                config.pubsub
            ),
        });
    }
    let broker = config.broker.trim();
    if multi_node && (broker == "memory" || broker.is_empty()) {
        advice.push(Advice {
            check: "node_local_broker",
            message: format!(
                "the broker is in memory, but pubsub {:?} means several nodes: history and \
                 resumable sessions do not cross nodes; set broker = redis://… or nats://…",
                config.pubsub
            ),
        });
    }
    if let Some(session_db) = redis_db(&sessions) {
        let others = [
            ("pubsub", config.pubsub.as_str()),
            ("broker", config.broker.as_str()),
            (
                "broadcast_redis_url",
                config.broadcast_redis_url.as_deref().unwrap_or(""),
            ),
        ];
        for (role, url) in others {
            if redis_db(url.trim()).as_deref() == Some(session_db.as_str()) {
                advice.push(Advice {
                    check: "shared_session_redis",
                    message: format!(
                        "sessions share the Redis database {session_db} with the {role}: memory \
                         pressure from one evicts the other, and sessions get forgotten; give \
                         sessions their own Redis instance (or at least their own database number)"
                    ),
                });
            }
        }
    }
    if !is_loopback(config) && config.secret_key_base.as_deref().is_none_or(str::is_empty) {
        advice.push(Advice {
            check: "secret_key_base",
            message: format!(
                "binding {} (not loopback) with no SECRET_KEY_BASE: session cookies are signed \
                 with a secret generated on this machine, which other nodes do not share and a \
                 lost data directory forgets; set SECRET_KEY_BASE",
                config.bind
            ),
        });
    }
    advice
}

/// The eviction policies that may evict a session before it expires.
#[cfg(feature = "redis")]
const EVICTS_ANY_KEY: &[&str] = &["allkeys-lru", "allkeys-lfu", "allkeys-random"];

/// Checks the session Redis itself: an eviction policy that can drop live sessions.
#[cfg(feature = "redis")]
async fn session_redis_checks(url: &str) -> Vec<Advice> {
    let policy = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let policy: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await?;
        let maxmemory: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory")
            .query_async(&mut conn)
            .await?;
        Ok::<_, redis::RedisError>((policy.get(1).cloned(), maxmemory.get(1).cloned()))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), policy).await {
        Ok(Ok((Some(policy), maxmemory))) => {
            if EVICTS_ANY_KEY.contains(&policy.as_str()) {
                vec![Advice {
                    check: "session_redis_eviction",
                    message: format!(
                        "the session Redis evicts with maxmemory-policy {policy}, which drops \
                         live sessions (users logged out at random) before expired ones; set \
                         maxmemory-policy volatile-lru with a maxmemory (sessions carry a TTL)"
                    ),
                }]
            } else if policy.starts_with("volatile") && maxmemory.as_deref() == Some("0") {
                vec![Advice {
                    check: "session_redis_eviction",
                    message: format!(
                        "the session Redis has maxmemory-policy {policy} but no maxmemory: it \
                         grows until the machine runs out; set a maxmemory"
                    ),
                }]
            } else {
                Vec::new()
            }
        }
        // Managed Redis often refuses CONFIG: nothing to say, rather than a false alarm.
        Ok(Ok((None, _))) | Ok(Err(_)) | Err(_) => {
            tracing::debug!(
                "session Redis: CONFIG GET refused or timed out; eviction policy not checked"
            );
            Vec::new()
        }
    }
}

/// Every check: the configuration, then the session Redis if there is one.
pub async fn deployment_checks(config: &ServeConfig) -> Vec<Advice> {
    #[allow(unused_mut)]
    let mut advice = config_checks(config);
    #[cfg(feature = "redis")]
    {
        let sessions = config.session_store_url();
        if redis_db(&sessions).is_some() {
            advice.extend(session_redis_checks(&sessions).await);
        }
    }
    #[cfg(feature = "postgres")]
    {
        let sessions = config.session_store_url();
        if (sessions.starts_with("postgres://") || sessions.starts_with("postgresql://"))
            && let Ok(Some(false)) =
                ferrocable_session::sql::SqlStore::postgres_expiry_index(&sessions).await
        {
            advice.push(Advice {
                check: "sql_expiry_index",
                message: "the PostgreSQL sessions table has no index on expires_at: every sweep \
                          and expiry check scans the whole table; create it with \
                          `CREATE INDEX ferrocable_sessions_expires_at ON ferrocable_sessions (expires_at)` \
                          (ferrocable migrate creates it with a new table)"
                    .into(),
            });
        }
    }
    advice
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_name_databases() {
        assert_eq!(
            redis_db("redis://localhost").as_deref(),
            Some("127.0.0.1:6379/0")
        );
        assert_eq!(
            redis_db("redis://:pw@10.0.0.1:6380/2?x=1").as_deref(),
            Some("10.0.0.1:6380/2")
        );
        assert_eq!(redis_db("memory"), None);
    }

    #[test]
    fn the_defaults_need_no_advice() {
        assert_eq!(config_checks(&ServeConfig::default()), Vec::new());
    }

    #[test]
    fn each_finding_names_its_fix() {
        let config = ServeConfig {
            bind: "0.0.0.0:3000".parse().unwrap(),
            session_store: "redis://127.0.0.1:6379/0".into(),
            pubsub: "redis://127.0.0.1:6379/0".into(),
            ..ServeConfig::default()
        };
        let found: Vec<&str> = config_checks(&config).iter().map(|a| a.check).collect();
        assert_eq!(
            found,
            vec![
                "node_local_broker",
                "shared_session_redis",
                "secret_key_base"
            ]
        );
        let config = ServeConfig {
            session_store: "memory".into(),
            pubsub: "nats://127.0.0.1:4222".into(),
            broker: "nats://127.0.0.1:4222".into(),
            ..ServeConfig::default()
        };
        let advice = config_checks(&config);
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert_eq!(advice[0].check, "node_local_sessions");
        assert!(advice[0].message.contains("redis://"), "{}", advice[0]);
    }
}
