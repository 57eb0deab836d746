//! Redis pub/sub as the node ↔ node bus.
//!
//! One dedicated subscriber connection per node, subscribed only to streams that have local
//! subscribers (`<prefix><stream>` channels). When the connection drops, the node keeps
//! serving local traffic, counts the failure, reconnects with back-off and **resubscribes every
//! stream** (the failure Rails' Redis adapter is known for is staying silent here). Publishing
//! goes through a separate auto-reconnecting connection from a bounded queue; delivery is
//! at-most-once, like Redis pub/sub itself.

mod broker;

pub use broker::RedisBroker;

use std::collections::HashSet;
use std::time::Duration;

use ferrocable_node::pubsub::{PubSub, PubSubHooks, decode_envelope};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Messages waiting to be published before new ones are dropped (and counted).
const PUBLISH_QUEUE: usize = 65_536;

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

/// The Redis bus for one node.
pub struct RedisPubSub {
    client: redis::Client,
    prefix: String,
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    publish: Mutex<Option<mpsc::Sender<(String, String)>>>,
    hooks: Mutex<Option<PubSubHooks>>,
}

impl std::fmt::Debug for RedisPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPubSub")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisPubSub {
    /// A bus on `url` (`redis://host:port/db`); channels are `<prefix><stream>`.
    pub fn new(url: &str, prefix: &str) -> Result<Self, ferrocable_node::broker::ConnectError> {
        let client = redis::Client::open(url).map_err(|e| {
            ferrocable_node::broker::ConnectError::new(format!("invalid redis URL {url:?}"), e)
        })?;
        Ok(RedisPubSub {
            client,
            prefix: prefix.to_owned(),
            commands: Mutex::new(None),
            publish: Mutex::new(None),
            hooks: Mutex::new(None),
        })
    }
}

async fn subscriber(
    client: redis::Client,
    prefix: String,
    hooks: PubSubHooks,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut streams: HashSet<String> = HashSet::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected =
            tokio::time::timeout(Duration::from_secs(3), client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                warn!(error = %e, "redis pubsub: connect failed; retrying");
                hooks.errors.inc();
                if !wait_draining(&mut commands, &mut streams, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(_) => {
                warn!("redis pubsub: connect timed out; retrying");
                hooks.errors.inc();
                if !wait_draining(&mut commands, &mut streams, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (mut sink, mut messages) = pubsub.split();
        let mut ok = true;
        for s in &streams {
            if let Err(e) = sink.subscribe(format!("{prefix}{s}")).await {
                warn!(error = %e, "redis pubsub: resubscribe failed");
                ok = false;
                break;
            }
        }
        if ok {
            if !streams.is_empty() {
                info!(streams = streams.len(), "redis pubsub: (re)subscribed");
            }
            hooks.connected.set(1);
            backoff = Duration::from_millis(100);
            loop {
                tokio::select! {
                    cmd = commands.recv() => match cmd {
                        None => return,
                        Some(Command::Subscribe(s)) => {
                            let r = sink.subscribe(format!("{prefix}{s}")).await;
                            streams.insert(s);
                            if r.is_err() { break; }
                        }
                        Some(Command::Unsubscribe(s)) => {
                            let r = sink.unsubscribe(format!("{prefix}{s}")).await;
                            streams.remove(&s);
                            if r.is_err() { break; }
                        }
                    },
                    msg = messages.next() => match msg {
                        None => break,
                        Some(msg) => {
                            let payload: String = match msg.get_payload() {
                                Ok(p) => p,
                                Err(_) => { hooks.errors.inc(); continue; }
                            };
                            match decode_envelope(&payload) {
                                Some(e) if e.origin == hooks.node_id => {}
                                Some(e) if streams.contains(&e.stream) => (hooks.deliver)(&e.stream, e.message.get(), e.position().as_ref()),
                                Some(_) => {}
                                None => {
                                    hooks.errors.inc();
                                }
                            }
                        }
                    },
                }
            }
        }
        hooks.connected.set(0);
        hooks.errors.inc();
        warn!("redis pubsub: connection lost; local traffic continues, reconnecting");
        if !wait_draining(&mut commands, &mut streams, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Sleeps `d` while keeping the wanted set of streams current. `false` when the node is gone.
async fn wait_draining(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    streams: &mut HashSet<String>,
    d: Duration,
) -> bool {
    let deadline = tokio::time::sleep(d);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return true,
            cmd = commands.recv() => match cmd {
                None => return false,
                Some(Command::Subscribe(s)) => { streams.insert(s); }
                Some(Command::Unsubscribe(s)) => { streams.remove(&s); }
            },
        }
    }
}

async fn publisher(
    client: redis::Client,
    prefix: String,
    hooks: PubSubHooks,
    mut queue: mpsc::Receiver<(String, String)>,
) {
    let mut conn: Option<redis::aio::ConnectionManager> = None;
    while let Some((stream, envelope)) = queue.recv().await {
        if conn.is_none() {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(1);
            match tokio::time::timeout(
                Duration::from_secs(3),
                redis::aio::ConnectionManager::new_with_config(client.clone(), config),
            )
            .await
            {
                Ok(Ok(c)) => conn = Some(c),
                _ => {
                    hooks.errors.inc();
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            let r: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(format!("{prefix}{stream}"))
                .arg(envelope)
                .query_async(c)
                .await;
            if r.is_err() {
                hooks.errors.inc();
            }
        }
    }
}

impl PubSub for RedisPubSub {
    fn start(&self, hooks: PubSubHooks) {
        let (ctx, crx) = mpsc::unbounded_channel();
        let (ptx, prx) = mpsc::channel(PUBLISH_QUEUE);
        *self.commands.lock() = Some(ctx);
        *self.publish.lock() = Some(ptx);
        *self.hooks.lock() = Some(hooks.clone());
        tokio::spawn(subscriber(
            self.client.clone(),
            self.prefix.clone(),
            hooks.clone(),
            crx,
        ));
        tokio::spawn(publisher(
            self.client.clone(),
            self.prefix.clone(),
            hooks,
            prx,
        ));
    }

    fn publish(&self, stream: &str, envelope: String) {
        let Some(hooks) = self.hooks.lock().clone() else {
            return;
        };
        if let Some(tx) = self.publish.lock().as_ref()
            && tx.try_send((stream.to_owned(), envelope)).is_err()
        {
            // The queue is full (Redis down for long) or closed: drop and count.
            hooks.errors.inc();
        }
    }

    fn subscribe(&self, stream: &str) {
        if let Some(tx) = self.commands.lock().as_ref() {
            let _ = tx.send(Command::Subscribe(stream.to_owned()));
        }
    }

    fn unsubscribe(&self, stream: &str) {
        if let Some(tx) = self.commands.lock().as_ref() {
            let _ = tx.send(Command::Unsubscribe(stream.to_owned()));
        }
    }
}

/// Reads AnyCable publications from a Redis pub/sub channel (`__anycable__` by default) and
/// delivers them to this node's subscribers. Every node reads the channel itself, so
/// deliveries are local only (never republished on the bus). Reconnects with back-off.
pub fn spawn_anycable_ingress(
    url: &str,
    channel: &str,
    node: ferrocable_node::Node,
) -> Result<tokio::task::JoinHandle<()>, ferrocable_node::broker::ConnectError> {
    let client = redis::Client::open(url).map_err(|e| {
        ferrocable_node::broker::ConnectError::new(format!("invalid redis URL {url:?}"), e)
    })?;
    let channel = channel.to_owned();
    Ok(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let shutdown = node.shutdown_token();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let connected =
                tokio::time::timeout(Duration::from_secs(3), client.get_async_pubsub()).await;
            if let Ok(Ok(mut pubsub)) = connected
                && pubsub.subscribe(&channel).await.is_ok()
            {
                backoff = Duration::from_millis(100);
                let mut messages = pubsub.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    let Ok(payload) = msg.get_payload::<Vec<u8>>() else {
                        continue;
                    };
                    match ferrocable_node::ingress::decode_publications(&payload) {
                        Ok(list) => {
                            for p in list {
                                let _ = node.publish(&p, true);
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "redis ingress: publication refused");
                            node.metrics().ingress_refused(
                                if matches!(e, ferrocable_node::ingress::IngressError::Malformed) {
                                    "malformed"
                                } else {
                                    "invalid"
                                },
                            );
                        }
                    }
                }
            }
            node.metrics().pubsub_errors.inc();
            warn!(channel = %channel, "redis ingress: connection lost; reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }))
}

/// The entries of a stream reply (`[[id, [field, value, …]], …]`): each id and its `payload`.
fn stream_entries(entries: &redis::Value) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let redis::Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let redis::Value::Array(parts) = entry else {
                return None;
            };
            let (Some(redis::Value::BulkString(id)), Some(redis::Value::Array(fields))) =
                (parts.first(), parts.get(1))
            else {
                return None;
            };
            let payload = fields.chunks(2).find_map(|kv| match kv {
                [redis::Value::BulkString(k), redis::Value::BulkString(v)] if k == b"payload" => {
                    Some(v.clone())
                }
                _ => None,
            });
            Some((id.clone(), payload))
        })
        .collect()
}

/// Reads AnyCable publications from the Redis Stream `stream` (`__anycable__`, anycable-rails'
/// `redisx` adapter: `XADD __anycable__ * payload <json>`) in the consumer group `group`, so
/// that each publication is taken by one node, which broadcasts it to every node (bus and
/// history included). Each entry is acknowledged and deleted once delivered; entries another
/// consumer left pending for longer than the read block are claimed (a crashed node's).
/// Reconnects with back-off.
pub fn spawn_anycable_stream_ingress(
    url: &str,
    stream: &str,
    group: &str,
    node: ferrocable_node::Node,
) -> Result<tokio::task::JoinHandle<()>, ferrocable_node::broker::ConnectError> {
    let client = redis::Client::open(url).map_err(|e| {
        ferrocable_node::broker::ConnectError::new(format!("invalid redis URL {url:?}"), e)
    })?;
    let stream = stream.to_owned();
    let group = group.to_owned();
    let consumer = ferrocable_node::broker::new_sid();
    const BLOCK_MS: u64 = 2000;
    Ok(tokio::spawn(async move {
        let shutdown = node.shutdown_token();
        let mut backoff = Duration::from_millis(100);
        'connect: loop {
            if shutdown.is_cancelled() {
                return;
            }
            let connected = tokio::time::timeout(
                Duration::from_secs(3),
                client.get_multiplexed_async_connection(),
            )
            .await;
            if let Ok(Ok(mut conn)) = connected {
                let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&stream)
                    .arg(&group)
                    .arg("$")
                    .arg("MKSTREAM")
                    .query_async(&mut conn)
                    .await;
                let ready = match created {
                    Ok(()) => true,
                    Err(e) => e.code() == Some("BUSYGROUP"),
                };
                let mut claimed_at = tokio::time::Instant::now();
                if !ready {
                    warn!(stream = %stream, group = %group, "redisx ingress: cannot create the consumer group");
                }
                while ready && !shutdown.is_cancelled() {
                    let claim = claimed_at.elapsed() >= Duration::from_millis(BLOCK_MS);
                    let reply: redis::RedisResult<redis::Value> = if claim {
                        claimed_at = tokio::time::Instant::now();
                        redis::cmd("XAUTOCLAIM")
                            .arg(&stream)
                            .arg(&group)
                            .arg(&consumer)
                            .arg(BLOCK_MS)
                            .arg("0-0")
                            .query_async(&mut conn)
                            .await
                    } else {
                        let mut command = redis::cmd("XREADGROUP");
                        command
                            .arg("GROUP")
                            .arg(&group)
                            .arg(&consumer)
                            .arg("COUNT")
                            .arg(100)
                            .arg("BLOCK")
                            .arg(BLOCK_MS)
                            .arg("STREAMS")
                            .arg(&stream)
                            .arg(">");
                        let read = command.query_async(&mut conn);
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            r = read => r,
                        }
                    };
                    let reply = match reply {
                        Ok(v) => v,
                        Err(e) => {
                            warn!(error = %e, stream = %stream, "redisx ingress: read failed; reconnecting");
                            break;
                        }
                    };
                    backoff = Duration::from_millis(100);
                    let entries = match (&reply, claim) {
                        // XAUTOCLAIM: [next, entries, deleted]
                        (redis::Value::Array(parts), true) => {
                            parts.get(1).map(stream_entries).unwrap_or_default()
                        }
                        // XREADGROUP: [[stream, entries]] or nil
                        (redis::Value::Array(streams), false) => streams
                            .iter()
                            .filter_map(|s| match s {
                                redis::Value::Array(kv) => kv.get(1).map(stream_entries),
                                _ => None,
                            })
                            .flatten()
                            .collect(),
                        _ => Vec::new(),
                    };
                    for (id, payload) in entries {
                        match payload.map(|p| ferrocable_node::ingress::decode_publications(&p)) {
                            Some(Ok(list)) => {
                                for p in &list {
                                    let _ = node.publish(p, false);
                                }
                            }
                            Some(Err(e)) => {
                                warn!(error = %e, "redisx ingress: publication refused");
                                node.metrics().ingress_refused("malformed");
                            }
                            None => node.metrics().ingress_refused("malformed"),
                        }
                        let acked: redis::RedisResult<()> = redis::pipe()
                            .cmd("XACK")
                            .arg(&stream)
                            .arg(&group)
                            .arg(&id)
                            .ignore()
                            .cmd("XDEL")
                            .arg(&stream)
                            .arg(&id)
                            .ignore()
                            .query_async(&mut conn)
                            .await;
                        if let Err(e) = acked {
                            warn!(error = %e, "redisx ingress: ack failed; reconnecting");
                            continue 'connect;
                        }
                    }
                }
            }
            node.metrics().pubsub_errors.inc();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }))
}
