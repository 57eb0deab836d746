//! Redis Streams as the cluster-wide broker: one history per cable stream (a Redis Stream
//! capped at the history limit and expiring with the history TTL), a per-stream offset
//! counter, one epoch per Redis dataset, and the session cache.
//!
//! An append is **one Lua script**: it takes the next offset, adds the entry and, when the
//! node's bus is Redis pub/sub on the same server, publishes the bus envelope with its
//! position, so a message is never stored without being sent nor sent without being stored.
//! If Redis loses its data the epoch key goes with it: the next append makes a new epoch and
//! every old position is rejected, never guessed.

use std::time::Duration;

use bytes::Bytes;
use ferrocable_node::broker::{
    Appended, Broker, BrokerError, ConnectError, History, HistoryEntry, HistoryLimits,
    StreamPosition, cause, now_ms, random_token, select_after, select_since,
};
use ferrocable_node::pubsub::{NodeId, encode_envelope};
use redis::Script;
use redis::aio::ConnectionManager;

/// One stream's read: epoch, newest offset, and raw entries (`id`, flat field/value list).
type ReadReply = (String, String, Vec<(String, Vec<Vec<u8>>)>);

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

const APPEND: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[1], epoch)
end
local offset = redis.call('INCR', KEYS[2])
local ttl = tonumber(ARGV[3])
redis.call('EXPIRE', KEYS[2], ttl * 10)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[2], '*', 'o', offset, 't', now, 'm', ARGV[1])
redis.call('EXPIRE', KEYS[3], ttl)
if ARGV[5] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[6] .. ',"e":' .. cjson.encode(epoch) .. ',"f":' .. offset .. '}')
end
return {epoch, offset}
"#;

const READ: &str = r#"
local epoch = redis.call('GET', KEYS[1])
local last = redis.call('GET', KEYS[2])
local entries = redis.call('XRANGE', KEYS[3], '-', '+')
return {epoch or '', last or '0', entries}
"#;

/// The Redis Streams broker.
#[derive(Clone)]
pub struct RedisBroker {
    conn: ConnectionManager,
    prefix: String,
    limits: HistoryLimits,
    append: Script,
    read: Script,
    /// Channel prefix of the node's Redis bus, when appends publish too.
    publish_prefix: Option<String>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.prefix)
            .field("limits", &self.limits)
            .field("publish_prefix", &self.publish_prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> BrokerError {
    BrokerError::Unavailable(cause(e))
}

impl RedisBroker {
    /// Connects to `url`; keys are `<prefix>epoch`, `<prefix>offset:<stream>`,
    /// `<prefix>history:<stream>` and `<prefix>session:<sid>`. The connection reconnects by
    /// itself after an outage.
    pub async fn connect(
        url: &str,
        prefix: &str,
        limits: HistoryLimits,
    ) -> Result<Self, ConnectError> {
        let client = redis::Client::open(url)
            .map_err(|e| ConnectError::new(format!("invalid redis URL {url:?}"), e))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            Duration::from_secs(3),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| ConnectError::new(format!("redis broker {url}"), "connect timed out"))?
        .map_err(|e| ConnectError::new(format!("redis broker {url}"), e))?;
        // Loaded up front so appends never take the NOSCRIPT round trip (which could reorder
        // pipelined appends).
        let append = Script::new(APPEND);
        let mut c = conn.clone();
        append
            .prepare_invoke()
            .load_async(&mut c)
            .await
            .map_err(|e| ConnectError::new(format!("redis broker {url}"), e))?;
        Ok(RedisBroker {
            conn,
            prefix: prefix.to_owned(),
            limits,
            append,
            read: Script::new(READ),
            publish_prefix: None,
        })
    }

    /// Makes every append also publish the message on the node's Redis bus (channels
    /// `<channel_prefix><stream>`, as [`crate::RedisPubSub`] uses), in the same script.
    pub fn publishing_to(mut self, channel_prefix: &str) -> Self {
        self.publish_prefix = Some(channel_prefix.to_owned());
        self
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    fn epoch_key(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// A stream's epoch, newest offset and unexpired entries.
    async fn read(&self, stream: &str) -> Result<(String, u64, Vec<HistoryEntry>), BrokerError> {
        let mut conn = self.conn.clone();
        let (epoch, last, raw): ReadReply = self
            .read
            .key(self.epoch_key())
            .key(self.key("offset", stream))
            .key(self.key("history", stream))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let last: u64 = last
            .parse()
            .map_err(|_| BrokerError::Corrupt(cause(format!("offset {last:?}"))))?;
        let now = now_ms();
        let mut entries = Vec::with_capacity(raw.len());
        for (_, fields) in raw {
            let entry = parse_entry(fields)?;
            if self.limits.keeps(entry.at_ms, now) {
                entries.push(entry);
            }
        }
        Ok((epoch, last, entries))
    }
}

/// Reads one history entry's fields (`o`, `t`, `m`).
fn parse_entry(fields: Vec<Vec<u8>>) -> Result<HistoryEntry, BrokerError> {
    let mut offset = None;
    let mut at_ms = None;
    let mut message = None;
    let mut it = fields.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        let number = || -> Option<u64> { std::str::from_utf8(&value).ok()?.parse().ok() };
        match name.as_slice() {
            b"o" => offset = number(),
            b"t" => at_ms = number(),
            b"m" => message = Some(Bytes::from(value)),
            _ => {}
        }
    }
    match (offset, at_ms, message) {
        (Some(offset), Some(at_ms), Some(message)) => Ok(HistoryEntry {
            offset,
            at_ms,
            message,
        }),
        _ => Err(BrokerError::Corrupt(cause("history entry without o/t/m"))),
    }
}

impl Broker for RedisBroker {
    fn append(
        &self,
        stream: &str,
        message: Bytes,
        origin: NodeId,
    ) -> BoxFuture<'static, Result<Appended, BrokerError>> {
        let keys = [
            self.epoch_key(),
            self.key("offset", stream),
            self.key("history", stream),
        ];
        let publish = self.publish_prefix.as_ref().map(|prefix| {
            let text = std::str::from_utf8(&message).unwrap_or("null");
            let mut head = encode_envelope(origin, stream, text, None);
            head.pop(); // the closing brace: the script appends the position
            (format!("{prefix}{stream}"), head)
        });
        let (max, ttl) = (self.limits.max_messages, self.limits.ttl.as_secs().max(1));
        let script = self.append.clone();
        let mut conn = self.conn.clone();
        // Everything is owned by the future; its first poll (inline, in the node) sends the
        // script, so appends reach Redis in broadcast order.
        Box::pin(async move {
            let mut invocation = script.prepare_invoke();
            invocation
                .key(&keys[0])
                .key(&keys[1])
                .key(&keys[2])
                .arg(message.as_ref())
                .arg(max)
                .arg(ttl)
                .arg(random_token(4));
            let published = match &publish {
                Some((channel, head)) => {
                    invocation.arg(channel).arg(head);
                    true
                }
                None => {
                    invocation.arg("").arg("");
                    false
                }
            };
            let (epoch, offset): (String, u64) = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(Appended {
                position: StreamPosition { epoch, offset },
                published,
            })
        })
    }

    fn history_from<'a>(
        &'a self,
        stream: &'a str,
        position: &'a StreamPosition,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(async move {
            let (epoch, last, entries) = self.read(stream).await?;
            let entries = select_after(&epoch, last, entries.iter(), position)?;
            Ok(History { epoch, entries })
        })
    }

    fn history_since<'a>(
        &'a self,
        stream: &'a str,
        since_secs: u64,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(async move {
            let (epoch, _, entries) = self.read(stream).await?;
            Ok(History {
                epoch,
                entries: select_since(entries, since_secs.saturating_mul(1000)),
            })
        })
    }

    fn commit_session<'a>(
        &'a self,
        sid: &'a str,
        state: Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            redis::cmd("SET")
                .arg(self.key("session", sid))
                .arg(state.as_ref())
                .arg("EX")
                .arg(self.limits.sessions_ttl.as_secs().max(1))
                .query_async::<()>(&mut conn)
                .await
                .map_err(unavailable)
        })
    }

    fn restore_session<'a>(
        &'a self,
        sid: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, BrokerError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let state: Option<Vec<u8>> = redis::cmd("GETDEL")
                .arg(self.key("session", sid))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(state.map(Bytes::from))
        })
    }
}
