//! NATS JetStream as the cluster-wide broker.
//!
//! - History: one JetStream stream (`<NAME>`) holds every cable stream's messages on subject
//!   `<prefix>.h.<base64url(stream)>`, at most the history limit per subject. A message's
//!   offset travels in its `Fc-Offset` header; an append is **one JetStream publish** guarded by
//!   `Nats-Expected-Last-Subject-Sequence`, so two nodes can never give two messages the same
//!   offset (the loser re-reads and retries). Appends of one stream from one node are queued
//!   FIFO so they keep their order. Messages older than the history TTL are not served, but
//!   the newest one of a stream is kept for ten TTLs (JetStream `max_age`), so its offsets
//!   continue instead of restarting.
//! - Epoch: the history stream's creation time. If the stream (its data) is lost and made
//!   again, every old position is rejected, never guessed.
//! - Sessions: a second stream (`<NAME>_SESSIONS`, one message per session subject, expiring
//!   after the sessions TTL); a restore reads the session and purges its subject.
//!
//! Delivery to other nodes: with [`JetStreamBroker::delivering_to_nodes`] (the server turns it
//! on when the bus is the same NATS), every node reads the history stream through an ordered
//! JetStream consumer, so a message reaches other nodes **if and only if** it was stored,
//! with its offset: append and publish are one JetStream operation. (Core NATS subscribers
//! would also see a publish that failed its offset check, so they are not used for this.)
//! Every node reads every stored message, subscribed or not; the hub drops those without
//! local subscribers. Without it, delivery goes through the node's pubsub after the append.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ferrocable_node::broker::{
    Appended, Broker, BrokerError, ConnectError, History, HistoryEntry, HistoryLimits,
    StreamPosition, cause, now_ms, select_after, select_since,
};
use ferrocable_node::pubsub::{NodeId, PubSubHooks};
use futures_util::StreamExt;
use tracing::warn;

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

const OFFSET_HEADER: &str = "Fc-Offset";
const ORIGIN_HEADER: &str = "Fc-Origin";
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

/// A subject's FIFO append lock over its last (stream sequence, offset), when known.
type Tail = Arc<tokio::sync::Mutex<Option<(u64, u64)>>>;

/// The JetStream broker.
#[derive(Clone)]
pub struct JetStreamBroker {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    sessions: jetstream::stream::Stream,
    epoch: String,
    subject_prefix: String,
    session_prefix: String,
    /// Nodes read stored messages from the history stream (append = publish).
    deliver: AtomicBool,
    limits: HistoryLimits,
    /// Per subject: a FIFO lock (appends of a stream one at a time, in call order) guarding
    /// the subject's last (stream sequence, offset), when known.
    tails: parking_lot::Mutex<HashMap<String, Tail>>,
}

impl std::fmt::Debug for JetStreamBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamBroker")
            .field("epoch", &self.inner.epoch)
            .field("subject_prefix", &self.inner.subject_prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BrokerError {
    BrokerError::Unavailable(cause(e))
}

/// Session ids from clients go into KV keys: only plain token characters are looked up.
fn valid_sid(sid: &str) -> bool {
    !sid.is_empty()
        && sid.len() <= 128
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl JetStreamBroker {
    /// Connects to `url` and makes (or reuses) the history stream `<name>` on subjects
    /// `<prefix>.h.>` and the session bucket `<name>_sessions`.
    pub async fn connect(
        url: &str,
        name: &str,
        prefix: &str,
        limits: HistoryLimits,
    ) -> Result<Self, ConnectError> {
        let client = tokio::time::timeout(
            Duration::from_secs(3),
            async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .connect(url),
        )
        .await
        .map_err(|_| ConnectError::new(format!("jetstream broker {url}"), "connect timed out"))?
        .map_err(|e| ConnectError::new(format!("jetstream broker {url}"), e))?;
        let js = jetstream::new(client);
        let subject_prefix = format!("{}.h", prefix.trim_end_matches('.'));
        let mut stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: name.to_owned(),
                subjects: vec![format!("{subject_prefix}.>")],
                max_messages_per_subject: limits.max_messages as i64,
                max_age: limits.ttl * 10,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                ConnectError::new(format!("jetstream broker {url}: history stream {name}"), e)
            })?;
        let created = stream
            .info()
            .await
            .map_err(|e| ConnectError::new(format!("jetstream broker {url}"), e))?
            .created;
        let sessions = js
            .get_or_create_stream(jetstream::stream::Config {
                name: format!("{name}_SESSIONS"),
                subjects: vec![format!("{}.s.>", prefix.trim_end_matches('.'))],
                max_messages_per_subject: 1,
                max_age: limits.sessions_ttl,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| ConnectError::new(format!("jetstream broker {url}: session stream"), e))?;
        Ok(JetStreamBroker {
            inner: Arc::new(Inner {
                js,
                stream,
                sessions,
                epoch: format!("{:x}", created.unix_timestamp_nanos()),
                session_prefix: format!("{}.s", prefix.trim_end_matches('.')),
                deliver: AtomicBool::new(false),
                subject_prefix,
                limits,
                tails: parking_lot::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Carries stored messages to the other nodes itself (see the module docs). Must be set
    /// before the node starts.
    pub fn delivering_to_nodes(self) -> Self {
        self.inner.deliver.store(true, Ordering::Relaxed);
        self
    }

    /// The epoch (the history stream's creation time).
    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }
}

impl Inner {
    fn subject(&self, stream: &str) -> String {
        format!("{}.{}", self.subject_prefix, URL_SAFE_NO_PAD.encode(stream))
    }

    fn tail(&self, subject: &str) -> Tail {
        self.tails
            .lock()
            .entry(subject.to_owned())
            .or_default()
            .clone()
    }

    /// The subject's newest (stream sequence, offset), or (0, 0) when it has none.
    async fn last_of(&self, subject: &str) -> Result<(u64, u64), BrokerError> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok((m.sequence, offset_of(&m.headers)?)),
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                Ok((0, 0))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn append(
        &self,
        stream: &str,
        message: Bytes,
        origin: NodeId,
    ) -> Result<Appended, BrokerError> {
        let subject = self.subject(stream);
        let tail = self.tail(&subject);
        // FIFO: appends of this stream from this node complete in call order.
        let mut tail = tail.lock().await;
        for _ in 0..8 {
            let (last_seq, last_offset) = match *tail {
                Some(t) => t,
                None => self.last_of(&subject).await?,
            };
            let offset = last_offset + 1;
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                EXPECTED_LAST_SUBJECT_SEQUENCE,
                last_seq.to_string().as_str(),
            );
            headers.insert(OFFSET_HEADER, offset.to_string().as_str());
            headers.insert(ORIGIN_HEADER, origin.to_string().as_str());
            let ack = match self
                .js
                .publish_with_headers(subject.clone(), headers, message.clone())
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) => {
                    *tail = Some((ack.sequence, offset));
                    return Ok(Appended {
                        position: StreamPosition {
                            epoch: self.epoch.clone(),
                            offset,
                        },
                        published: self.deliver.load(Ordering::Relaxed),
                    });
                }
                // Another node appended first: re-read the tail and try again.
                Err(e) if matches!(e.kind(), PublishErrorKind::WrongLastSequence) => *tail = None,
                Err(e) => {
                    *tail = None;
                    return Err(unavailable(e));
                }
            }
        }
        Err(BrokerError::Unavailable(cause(format!(
            "append to {stream:?} kept losing the race"
        ))))
    }

    /// Delivers every message stored from now on by another node to this node (an ordered
    /// consumer: it resumes after reconnects without gaps or repeats).
    async fn read_stored(&self, hooks: &PubSubHooks) -> Result<(), BrokerError> {
        let consumer = self
            .stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.js.client().new_inbox(),
                filter_subject: format!("{}.>", self.subject_prefix),
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        hooks.connected.set(1);
        while let Some(m) = messages.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    hooks.errors.inc();
                    warn!(error = %e, "jetstream broker: delivery consumer error");
                    continue;
                }
            };
            let Some(headers) = m.headers.as_ref() else {
                hooks.errors.inc();
                continue;
            };
            let origin = headers
                .get(ORIGIN_HEADER)
                .and_then(|v| v.as_str().parse::<NodeId>().ok());
            if origin == Some(hooks.node_id) {
                continue; // the origin delivered it locally
            }
            let stream = m
                .subject
                .as_str()
                .strip_prefix(&self.subject_prefix)
                .and_then(|s| s.strip_prefix('.'))
                .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok());
            let (Some(stream), Ok(offset), Ok(text)) =
                (stream, offset_of(headers), std::str::from_utf8(&m.payload))
            else {
                hooks.errors.inc();
                continue;
            };
            let position = StreamPosition {
                epoch: self.epoch.clone(),
                offset,
            };
            (hooks.deliver)(&stream, text, Some(&position));
        }
        hooks.connected.set(0);
        Ok(())
    }

    /// The subject's unexpired messages in offset order, and its newest offset.
    async fn read(&self, stream: &str) -> Result<(u64, Vec<HistoryEntry>), BrokerError> {
        let subject = self.subject(stream);
        let (_, last) = self.last_of(&subject).await?;
        if last == 0 {
            return Ok((0, Vec::new()));
        }
        let consumer = self
            .stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: subject,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ack_policy: jetstream::consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(5),
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut messages = consumer
            .fetch()
            .max_messages(self.limits.max_messages)
            .messages()
            .await
            .map_err(unavailable)?;
        let now = now_ms();
        let mut entries = Vec::new();
        while let Some(m) = messages.next().await {
            let m = m.map_err(unavailable)?;
            let at_ms = m
                .info()
                .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as u64)
                .map_err(unavailable)?;
            let headers = m
                .headers
                .as_ref()
                .ok_or_else(|| BrokerError::Corrupt(cause("history message without headers")))?;
            let offset = offset_of(headers)?;
            if self.limits.keeps(at_ms, now) {
                entries.push(HistoryEntry {
                    offset,
                    at_ms,
                    message: m.payload.clone(),
                });
            }
        }
        let _ = self
            .js
            .delete_consumer_from_stream(
                consumer.cached_info().name.as_str(),
                self.stream.cached_info().config.name.as_str(),
            )
            .await;
        entries.sort_by_key(|e| e.offset);
        Ok((last, entries))
    }
}

fn offset_of(headers: &async_nats::HeaderMap) -> Result<u64, BrokerError> {
    headers
        .get(OFFSET_HEADER)
        .and_then(|v| v.as_str().parse().ok())
        .ok_or_else(|| BrokerError::Corrupt(cause("history message without Fc-Offset")))
}

impl Broker for JetStreamBroker {
    fn append(
        &self,
        stream: &str,
        message: Bytes,
        origin: NodeId,
    ) -> BoxFuture<'static, Result<Appended, BrokerError>> {
        let inner = self.inner.clone();
        let stream = stream.to_owned();
        Box::pin(async move { inner.append(&stream, message, origin).await })
    }

    fn start(&self, hooks: PubSubHooks) {
        if !self.inner.deliver.load(Ordering::Relaxed) {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = inner.read_stored(&hooks).await {
                    warn!(error = %e, "jetstream broker: delivery consumer failed; retrying");
                    hooks.errors.inc();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    fn history_from<'a>(
        &'a self,
        stream: &'a str,
        position: &'a StreamPosition,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(async move {
            if position.epoch != self.inner.epoch {
                return Err(ferrocable_node::broker::HistoryError::EpochMismatch.into());
            }
            let (last, entries) = self.inner.read(stream).await?;
            let entries = select_after(&self.inner.epoch, last, entries.iter(), position)?;
            Ok(History {
                epoch: self.inner.epoch.clone(),
                entries,
            })
        })
    }

    fn history_since<'a>(
        &'a self,
        stream: &'a str,
        since_secs: u64,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(async move {
            let (_, entries) = self.inner.read(stream).await?;
            Ok(History {
                epoch: self.inner.epoch.clone(),
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
            if !valid_sid(sid) {
                return Err(BrokerError::Unavailable(cause(format!(
                    "invalid session id {sid:?}"
                ))));
            }
            let subject = format!("{}.{sid}", self.inner.session_prefix);
            self.inner
                .js
                .publish(subject, state)
                .await
                .map_err(unavailable)?
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn restore_session<'a>(
        &'a self,
        sid: &'a str,
    ) -> BoxFuture<'a, Result<Option<Bytes>, BrokerError>> {
        Box::pin(async move {
            if !valid_sid(sid) {
                return Ok(None);
            }
            let subject = format!("{}.{sid}", self.inner.session_prefix);
            let state = match self
                .inner
                .sessions
                .get_last_raw_message_by_subject(&subject)
                .await
            {
                Ok(m) => m.payload,
                Err(e)
                    if matches!(
                        e.kind(),
                        jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(unavailable(e)),
            };
            self.inner
                .sessions
                .purge()
                .filter(subject)
                .await
                .map_err(unavailable)?;
            Ok(Some(state))
        })
    }
}
