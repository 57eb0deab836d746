//! The node: hub, channels, authenticator, heartbeat, metrics and shutdown, wired together.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ferrocable_protocol::{DEFAULT_MAX_COMMAND_BYTES, DisconnectReason, StreamPosition};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{AllowAll, Authenticator, ConnectRequest, DynAuthenticator};
use crate::broker::{Appended, Broker, BrokerError, HistoryLimits, MemoryBroker};
use crate::channel::{Channel, DynChannel};
use crate::heartbeat::{HeartbeatClock, Slices, heartbeat_task};
use crate::hub::{BroadcastReport, ConnId, Hub};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxLimits};
use crate::pubsub::{PubSub, encode_envelope};
use crate::remote::{DynRemoteApp, RemoteApp};

/// Tunables of a node. `Default` gives the reference values of the ActionCable and
/// AnyCable servers.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Largest inbound command, in bytes; larger frames close the connection with 1009.
    pub max_command_bytes: usize,
    /// Per-connection outbox limits; exceeding them disconnects with `too_slow`.
    pub outbox: OutboxLimits,
    /// Heartbeat period (`ping` frames).
    pub ping_interval: Duration,
    /// Longest a write to one socket may take before the client counts as too slow.
    pub write_timeout: Duration,
    /// Longest a graceful shutdown waits for connections to say goodbye.
    pub shutdown_timeout: Duration,
    /// Hub shards (stream registry locks).
    pub hub_shards: usize,
    /// History and session-cache limits of the default in-memory broker.
    pub history: HistoryLimits,
    /// Broadcasts waiting for a remote broker to store them; beyond this a broadcast is
    /// delivered unstored (no offset) and counted as a broker error.
    pub max_pending_appends: usize,
    /// Extended-protocol connections that send no frame at all (a `pong` counts) for this
    /// long are disconnected with `no_pong` (AnyCable's `--pong_timeout`; `None`: off).
    pub pong_timeout: Option<Duration>,
    /// Most subscriptions one connection may hold; one more is rejected with a
    /// `too_many_subscriptions` error (a real app never meets the default, 1,000).
    pub max_subscriptions: usize,
    /// How fast one connection may send commands (`None`: unlimited).
    pub command_rate: Option<CommandRate>,
    /// How long a dropped connection's presence outlives it (`ANYCABLE_PRESENCE_TTL`), so a
    /// reconnect does not show as leave + join.
    pub presence_ttl: Duration,
    /// Most presence records one stream holds; a join past it gets `presence_limit`.
    pub max_presence_per_stream: usize,
}

/// A per-connection command budget: `per_sec` commands a second on average, `burst` at once.
/// A command over budget is refused with a `rate_limited` error; a client that goes on until
/// it is a whole burst in debt is disconnected with `rate_limited`. Pongs do not count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CommandRate {
    /// Sustained commands per second.
    pub per_sec: f32,
    /// Commands allowed at once (the bucket's size).
    pub burst: f32,
}

impl Default for CommandRate {
    /// 1,000 a second with bursts of 1,000: far above what a page sends (a reflex per click,
    /// a whisper per keystroke), far below a flood.
    fn default() -> Self {
        CommandRate {
            per_sec: 1000.0,
            burst: 1000.0,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            max_command_bytes: DEFAULT_MAX_COMMAND_BYTES,
            outbox: OutboxLimits::default(),
            ping_interval: Duration::from_secs(3),
            write_timeout: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(10),
            hub_shards: 64,
            history: HistoryLimits::default(),
            max_pending_appends: 65_536,
            pong_timeout: None,
            max_subscriptions: 1000,
            command_rate: Some(CommandRate::default()),
            presence_ttl: Duration::from_secs(15),
            max_presence_per_stream: 10_000,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) config: NodeConfig,
    pub(crate) hub: Hub,
    pub(crate) channels: HashMap<String, Arc<dyn DynChannel>>,
    pub(crate) auth: Box<dyn DynAuthenticator>,
    /// Where a new connection's page session comes from (see [`NodeBuilder::session_of`]).
    pub(crate) session_of: Option<SessionOf>,
    /// The app behind RPC, if any: it identifies connections and serves unregistered channels.
    pub(crate) remote: Option<Arc<dyn DynRemoteApp>>,
    /// Identifies connections that carry a token (see [`NodeBuilder::jwt`]).
    pub(crate) jwt: Option<crate::jwt::JwtIdentifier>,
    /// This node's view of the presence streams it listens to.
    pub(crate) presence: crate::presence::PresenceRegistry,
    pub(crate) metrics: Metrics,
    pub(crate) shutdown: CancellationToken,
    tracker: TaskTracker,
    pub(crate) connections: Registry,
    /// Extended-protocol sessions by `sid`: how a publication's `exclude_socket` finds its
    /// connection (one entry per live extended connection, removed when it ends).
    pub(crate) sids: Mutex<HashMap<Box<str>, ConnId>>,
    /// When the node started: connections keep times as milliseconds since then (4 bytes).
    pub(crate) started: std::time::Instant,
    next_id: AtomicU64,
    pubsub: Option<Arc<dyn PubSub>>,
    pub(crate) broker: Arc<dyn Broker>,
    /// Ordered queue of broadcasts whose broker append did not finish inline.
    appends: tokio::sync::mpsc::Sender<PendingAppend>,
    pending_appends: std::sync::atomic::AtomicUsize,
    node_id: crate::pubsub::NodeId,
    /// The heartbeat's schedule, which large fan-outs read before they write (see
    /// [`crate::heartbeat`]).
    pub(crate) heartbeat: Arc<HeartbeatClock>,
}

/// A broadcast waiting for its broker append, in the broadcaster task's queue.
struct PendingAppend {
    append: crate::BoxFuture<'static, Result<Appended, BrokerError>>,
    stream: String,
    message: Box<RawValue>,
    except: Option<ConnId>,
}

/// Every live connection's outbox, sharded by connection id: how the node reaches all
/// connections at once (heartbeat, shutdown) without each one waiting on a shared signal.
pub(crate) struct Registry {
    shards: Box<[Mutex<RegistryShard>]>,
}

type RegistryShard = HashMap<ConnId, Arc<Outbox>>;

impl Registry {
    fn new(shards: usize) -> Self {
        Registry {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, id: ConnId) -> &Mutex<RegistryShard> {
        &self.shards[(id % self.shards.len() as u64) as usize]
    }

    pub(crate) fn insert(&self, id: ConnId, outbox: Arc<Outbox>) {
        self.shard(id).lock().insert(id, outbox);
    }

    pub(crate) fn remove(&self, id: ConnId) {
        let mut shard = self.shard(id).lock();
        shard.remove(&id);
        if shard.capacity() > 64 && shard.len() < shard.capacity() / 4 {
            shard.shrink_to_fit();
        }
    }

    /// Calls `f` on every outbox; holds one shard lock at a time and never awaits.
    pub(crate) fn for_each(&self, f: impl FnMut(&Arc<Outbox>)) {
        self.for_each_in_slice(0, 1, f);
    }

    /// Calls `f` on the outboxes of slice `slice` of `slices` (shards `i` with
    /// `i % slices == slice`): the slices together are every outbox, each once.
    pub(crate) fn for_each_in_slice(
        &self,
        slice: u32,
        slices: u32,
        mut f: impl FnMut(&Arc<Outbox>),
    ) {
        for shard in self
            .shards
            .iter()
            .skip(slice as usize)
            .step_by(slices.max(1) as usize)
        {
            for outbox in shard.lock().values() {
                f(outbox);
            }
        }
    }
}

impl Inner {
    /// Milliseconds since the node started, wrapping at `u32::MAX` (49 days): compare by
    /// difference.
    pub(crate) fn now_ms(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Attaches a subscription to a stream; the stream's first local subscriber subscribes
    /// the node on the bus.
    pub(crate) fn attach(
        &self,
        stream: &str,
        conn: ConnId,
        identifier: &ferrocable_protocol::Identifier,
        outbox: &Arc<Outbox>,
    ) {
        let (_, first) = self.hub.attach(stream, conn, identifier, outbox);
        if first && let Some(p) = &self.pubsub {
            p.subscribe(stream);
        }
    }

    /// Detaches a subscription; the last local subscriber unsubscribes the node on the bus.
    pub(crate) fn detach(
        &self,
        stream: &str,
        conn: ConnId,
        identifier: &ferrocable_protocol::Identifier,
    ) {
        let (removed, last) = self.hub.detach(stream, conn, identifier);
        if removed
            && last
            && let Some(p) = &self.pubsub
        {
            p.unsubscribe(stream);
        }
    }

    /// Applies a presence op here and publishes it to the other nodes listening to `ops`.
    pub(crate) fn presence_publish(&self, ops: &str, op: &str) {
        self.presence_apply(ops, op);
        if let Some(p) = &self.pubsub {
            p.publish(ops, encode_envelope(self.node_id, ops, op, None));
        }
    }

    /// Applies a presence op (ours or a peer's): an event for this node's subscribers of the
    /// presence stream, or an answer to a peer's `sync`.
    fn presence_apply(&self, ops: &str, op: &str) {
        match self.presence.apply(ops, op) {
            crate::presence::Applied::Event(event) => {
                let report = self.hub.broadcast_typed(ops, "presence", &event);
                self.metrics
                    .broadcast_deliveries
                    .inc_by(report.delivered as u64);
            }
            crate::presence::Applied::Answer(ops_list) => {
                if let Some(p) = &self.pubsub {
                    for answer in ops_list {
                        p.publish(ops, encode_envelope(self.node_id, ops, &answer, None));
                    }
                }
            }
            crate::presence::Applied::Malformed => {
                tracing::debug!(stream = ops, "malformed presence op refused");
                self.metrics.pubsub_errors.inc();
            }
            crate::presence::Applied::Quiet => {}
        }
    }

    /// Asks the other nodes for their records of `ops`.
    fn publish_sync(&self, ops: &str) {
        if let Some(p) = &self.pubsub {
            p.publish(
                ops,
                encode_envelope(self.node_id, ops, &self.presence.sync_op(), None),
            );
        }
    }

    /// Attaches a subscription to a presence stream's ops; the node's first listener asks the
    /// other nodes for their records.
    pub(crate) fn attach_presence(
        &self,
        ops: &str,
        conn: ConnId,
        identifier: &ferrocable_protocol::Identifier,
        outbox: &Arc<Outbox>,
    ) {
        let (_, first) = self.hub.attach(ops, conn, identifier, outbox);
        if first && let Some(p) = &self.pubsub {
            p.subscribe(ops);
            self.publish_sync(ops);
            self.presence.resync_later(ops);
        }
    }

    /// Publishes the leave of every dropped connection whose presence TTL ran out, and forgets
    /// streams nobody here listens to any more.
    pub(crate) fn sweep_presence(&self) {
        for (ops, conn, id) in self.presence.expired(std::time::Instant::now()) {
            let op = self.presence.leave_op(conn, &id);
            self.presence_publish(&ops, &op);
        }
        self.presence
            .forget_unwatched(|ops| self.hub.subscriber_count(ops) == 0);
        for ops in self.presence.take_resync() {
            self.publish_sync(&ops);
        }
    }

    /// A message from another node: local delivery only.
    fn deliver_remote(&self, stream: &str, message: &str, position: Option<&StreamPosition>) {
        if stream.starts_with(crate::presence::PRESENCE_PREFIX) {
            self.metrics.pubsub_received.inc();
            self.presence_apply(stream, message);
            return;
        }
        match serde_json::from_str::<&RawValue>(message) {
            Ok(raw) => {
                self.metrics.pubsub_received.inc();
                let report = self.fan_out_carrying_pings(stream, || {
                    self.hub.broadcast_at(stream, raw, None, position)
                });
                self.metrics
                    .broadcast_deliveries
                    .inc_by(report.delivered as u64);
            }
            Err(_) => {
                self.metrics.pubsub_errors.inc();
            }
        }
    }

    /// Broadcasts a message: the broker stores it (giving it an offset), then it is
    /// delivered locally and published to the other nodes.
    ///
    /// An in-memory broker stores at once and everything happens inline. A remote broker's
    /// append is polled once here (which sends the command) and, if it has not finished,
    /// queued to the broadcaster task, which completes appends in call order, so messages
    /// of a stream keep their order. The returned report is then empty (delivery happens
    /// when the append finishes).
    pub(crate) fn broadcast_raw(
        &self,
        stream: &str,
        message: &RawValue,
        except: Option<ConnId>,
    ) -> BroadcastReport {
        self.metrics.broadcasts.inc();
        let mut append = self.broker.append(
            stream,
            Bytes::copy_from_slice(message.get().as_bytes()),
            self.node_id,
        );
        if self.pending_appends.load(Ordering::Acquire) == 0 {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(appended) = append.as_mut().poll(&mut cx) {
                return self.fan_out(stream, message, except, appended);
            }
        }
        if self.pending_appends.fetch_add(1, Ordering::AcqRel) >= self.config.max_pending_appends {
            self.pending_appends.fetch_sub(1, Ordering::AcqRel);
            return self.fan_out(
                stream,
                message,
                except,
                Err(BrokerError::Unavailable(crate::broker::cause(
                    "too many pending appends",
                ))),
            );
        }
        let pending = PendingAppend {
            append,
            stream: stream.to_owned(),
            message: message.to_owned(),
            except,
        };
        if let Err(e) = self.appends.try_send(pending) {
            self.pending_appends.fetch_sub(1, Ordering::AcqRel);
            let p = e.into_inner();
            return self.fan_out(
                &p.stream,
                &p.message,
                p.except,
                Err(BrokerError::Unavailable(crate::broker::cause(
                    "broadcaster stopped",
                ))),
            );
        }
        BroadcastReport::default()
    }

    /// Delivers a stored (or, when the broker failed, unstored) message locally and
    /// publishes it to the other nodes unless the broker already did.
    fn fan_out(
        &self,
        stream: &str,
        message: &RawValue,
        except: Option<ConnId>,
        appended: Result<Appended, BrokerError>,
    ) -> BroadcastReport {
        let (position, published) = match appended {
            Ok(a) => (Some(a.position), a.published),
            Err(e) => {
                tracing::warn!(%stream, error = %e, "broker append failed: delivering without history");
                self.metrics.broker_error("append");
                (None, false)
            }
        };
        self.deliver(stream, message, except, position, published)
    }

    /// Broadcasts without storing: for messages meant for one client (a reflex's reply), which
    /// no one replays, so the broker keeps nothing per session.
    pub(crate) fn broadcast_transient(
        &self,
        stream: &str,
        message: &RawValue,
        except: Option<ConnId>,
    ) -> BroadcastReport {
        self.metrics.broadcasts.inc();
        self.deliver(stream, message, except, None, false)
    }

    /// Delivers to this node's subscribers and publishes to the other nodes unless the broker
    /// already did.
    fn deliver(
        &self,
        stream: &str,
        message: &RawValue,
        except: Option<ConnId>,
        position: Option<StreamPosition>,
        published: bool,
    ) -> BroadcastReport {
        let report = self.fan_out_carrying_pings(stream, || {
            self.hub
                .broadcast_at(stream, message, except, position.as_ref())
        });
        if !published && let Some(p) = &self.pubsub {
            p.publish(
                stream,
                encode_envelope(self.node_id, stream, message.get(), position.as_ref()),
            );
        }
        self.metrics
            .broadcast_deliveries
            .inc_by(report.delivered as u64);
        report
    }

    /// Runs a fan-out to `stream`, first running the heartbeat's due ticks if the stream holds
    /// at least a slice's worth of the node's connections, so its writes carry their pings and
    /// the timer does not wake a worker between broadcasts ([`crate::heartbeat`]); the pings
    /// it did not carry go alone once it is done. A smaller fan-out (a reflex's reply) is not
    /// held up by a tick. When no slice is due within a quarter period: one clock read, two
    /// atomic loads, and a store after a fan-out to nearly every connection.
    pub(crate) fn fan_out_carrying_pings(
        &self,
        stream: &str,
        fan_out: impl FnOnce() -> BroadcastReport,
    ) -> BroadcastReport {
        let clock = &self.heartbeat;
        let now = tokio::time::Instant::now();
        let held = if clock.is_due(now + clock.slack()) {
            self.ride_heartbeat(stream, now)
        } else {
            Slices::default()
        };
        let report = fan_out();
        if !held.is_empty() {
            crate::heartbeat::flush(self, held);
        }
        let reached = i64::try_from(report.delivered).unwrap_or(i64::MAX);
        clock.fan_out_done(now, reached, self.metrics.connections.get());
        report
    }

    /// The heartbeat's part of a fan-out to `stream` when a slice is due within the slack:
    /// nothing if the stream holds less than a slice's worth of the node's connections (a
    /// reflex's reply is never held up); the slices due now if it holds more; and, if it holds
    /// nearly every connection (three in four), also those the next such fan-out would come
    /// too late for ([`HeartbeatClock::early_for_whole_fan_out`]).
    fn ride_heartbeat(&self, stream: &str, now: tokio::time::Instant) -> Slices {
        let clock = &self.heartbeat;
        let subscribers = self.hub.subscriber_count(stream) as i64;
        let connections = self.metrics.connections.get();
        if subscribers == 0 || subscribers * i64::from(clock.slices()) < connections {
            return Slices::default();
        }
        let early = if crate::heartbeat::reaches_nearly_all(subscribers, connections) {
            clock.early_for_whole_fan_out(now)
        } else {
            Duration::ZERO
        };
        if clock.is_due(now + early) {
            clock.ride(self, now + early, now)
        } else {
            Slices::default()
        }
    }
}

/// A cable node. Cheap to clone; all clones share one hub.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("config", &self.inner.config)
            .field("channels", &self.inner.channels.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Node`]: register channels, pick an authenticator, set the config.
pub struct NodeBuilder {
    pubsub: Option<Arc<dyn PubSub>>,
    broker: Option<Arc<dyn Broker>>,
    config: NodeConfig,
    channels: HashMap<String, Arc<dyn DynChannel>>,
    auth: Box<dyn DynAuthenticator>,
    auth_set: bool,
    session_of: Option<SessionOf>,
    remote: Option<Arc<dyn DynRemoteApp>>,
    jwt: Option<crate::jwt::JwtIdentifier>,
}

/// Finds the page session of a connection from its upgrade request (see
/// [`NodeBuilder::session_of`]).
pub type SessionOf = Arc<dyn Fn(&ConnectRequest) -> Option<String> + Send + Sync>;

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for NodeBuilder {
    fn default() -> Self {
        NodeBuilder {
            pubsub: None,
            broker: None,
            config: NodeConfig::default(),
            channels: HashMap::new(),
            auth: Box::new(AllowAll),
            auth_set: false,
            session_of: None,
            remote: None,
            jwt: None,
        }
    }
}

impl NodeBuilder {
    /// Sets the node's tunables.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Registers `channel` under `name` (the identifier's `channel` value, e.g.
    /// `"ChatChannel"`). Only registered channels can be subscribed to.
    pub fn channel(mut self, name: impl Into<String>, channel: impl Channel) -> Self {
        self.channels.insert(name.into(), Arc::new(channel));
        self
    }

    /// Connects the node to other nodes through `pubsub` (default: none, a single node).
    pub fn pubsub(mut self, pubsub: impl PubSub) -> Self {
        self.pubsub = Some(Arc::new(pubsub));
        self
    }

    /// Stores broadcasts and extended-protocol sessions in `broker` (default: a
    /// [`MemoryBroker`] with the config's history limits).
    pub fn broker(mut self, broker: impl Broker) -> Self {
        self.broker = Some(Arc::new(broker));
        self
    }

    /// Sets the authenticator (default: [`AllowAll`]).
    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.auth = Box::new(auth);
        self.auth_set = true;
        self
    }

    /// Sets the authenticator unless the app already chose one (how a server installs its
    /// default without overriding the app).
    pub fn default_authenticator(self, auth: impl Authenticator) -> Self {
        if self.auth_set {
            self
        } else {
            self.authenticator(auth)
        }
    }

    /// Sets where a connection's page session comes from (a server that owns the session
    /// cookie installs this). It runs after the authenticator on every new connection and
    /// sets [`Identity::session`](crate::Identity::session), whatever the authenticator put there: an app's
    /// authenticator decides who the user is, never which session reflexes write.
    pub fn session_of(
        mut self,
        find: impl Fn(&ConnectRequest) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.session_of = Some(Arc::new(find));
        self
    }

    /// Puts an app behind the node (AnyCable RPC): it identifies every connection (the
    /// authenticator is not asked) and serves every channel that has no Rust channel
    /// registered under its name. Rust channels and the app's live side by side.
    pub fn remote_app(mut self, app: impl RemoteApp) -> Self {
        self.remote = Some(Arc::new(app));
        self
    }

    /// Identifies connections that carry a JWT from the token alone (AnyCable's JWT
    /// identification): no authenticator run, no connect call to the app behind. A bad token
    /// is refused with `unauthorized`, an expired one with `token_expired`; a connection
    /// without a token goes the usual way unless the identifier enforces tokens.
    pub fn jwt(mut self, jwt: crate::jwt::JwtIdentifier) -> Self {
        self.jwt = Some(jwt);
        self
    }

    /// Registers `channel` under `name` unless a channel of that name exists.
    pub fn default_channel(self, name: impl Into<String>, channel: impl Channel) -> Self {
        let name = name.into();
        if self.channels.contains_key(&name) {
            self
        } else {
            self.channel(name, channel)
        }
    }

    /// Builds the node and starts its heartbeat. Must run inside a tokio runtime.
    pub fn build(self) -> Node {
        let shutdown = CancellationToken::new();
        let (appends, append_queue) =
            tokio::sync::mpsc::channel(self.config.max_pending_appends.max(1));
        let broker = self
            .broker
            .unwrap_or_else(|| Arc::new(MemoryBroker::new(self.config.history)));
        // Random per process (the std hasher is seeded randomly), so two nodes never share one.
        let node_id = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            (std::process::id(), SystemTime::now()),
        );
        let presence = crate::presence::PresenceRegistry::new(
            node_id,
            self.config.max_presence_per_stream,
            self.config.presence_ttl,
        );
        let heartbeat = Arc::new(HeartbeatClock::new(self.config.ping_interval));
        let inner = Arc::new(Inner {
            broker,
            appends,
            pending_appends: std::sync::atomic::AtomicUsize::new(0),
            hub: Hub::new(self.config.hub_shards),
            config: self.config,
            channels: self.channels,
            auth: self.auth,
            session_of: self.session_of,
            remote: self.remote,
            jwt: self.jwt,
            presence,
            metrics: Metrics::default(),
            shutdown: shutdown.clone(),
            tracker: TaskTracker::new(),
            connections: Registry::new(64),
            sids: Mutex::new(HashMap::new()),
            pubsub: self.pubsub,
            node_id,
            started: std::time::Instant::now(),
            next_id: AtomicU64::new(1),
            heartbeat,
        });
        let weak = Arc::downgrade(&inner);
        let hooks = crate::pubsub::PubSubHooks {
            node_id: inner.node_id,
            deliver: Arc::new(
                move |stream: &str, message: &str, position: Option<&StreamPosition>| {
                    if let Some(node) = weak.upgrade() {
                        node.deliver_remote(stream, message, position);
                    }
                },
            ),
            errors: inner.metrics.pubsub_errors.clone(),
            connected: inner.metrics.pubsub_connected.clone(),
        };
        inner.broker.start(hooks.clone());
        if let Some(p) = &inner.pubsub {
            p.start(hooks);
        }
        tokio::spawn(broadcaster(Arc::downgrade(&inner), append_queue));
        tokio::spawn(heartbeat_task(
            Arc::downgrade(&inner),
            inner.heartbeat.clone(),
            shutdown,
        ));
        Node { inner }
    }
}

/// Completes remote broker appends in the order broadcasts were made (several in flight at
/// once, so a network broker is pipelined), then delivers each.
async fn broadcaster(
    node: std::sync::Weak<Inner>,
    mut queue: tokio::sync::mpsc::Receiver<PendingAppend>,
) {
    let mut in_flight = FuturesOrdered::new();
    loop {
        tokio::select! {
            next = queue.recv() => match next {
                Some(p) => in_flight.push_back(async move {
                    let PendingAppend { append, stream, message, except } = p;
                    (append.await, stream, message, except)
                }),
                None => break,
            },
            Some((appended, stream, message, except)) = in_flight.next(), if !in_flight.is_empty() => {
                let Some(node) = node.upgrade() else { return };
                node.fan_out(&stream, &message, except, appended);
                node.pending_appends.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
    while let Some((appended, stream, message, except)) = in_flight.next().await {
        let Some(node) = node.upgrade() else { return };
        node.fan_out(&stream, &message, except, appended);
        node.pending_appends.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A broadcast could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    /// The message is not valid JSON.
    #[error("broadcast message is not valid JSON")]
    InvalidJson,
}

/// How a graceful shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connection tasks still running when the timeout ran out (0 = clean).
    pub remaining: usize,
}

impl Node {
    pub(crate) fn from_inner(inner: Arc<Inner>) -> Node {
        Node { inner }
    }

    /// Starts building a node.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// Broadcasts `json` (one JSON value) to every subscription of `stream`.
    pub fn broadcast(&self, stream: &str, json: &str) -> Result<BroadcastReport, BroadcastError> {
        let raw: &RawValue = serde_json::from_str(json).map_err(|_| BroadcastError::InvalidJson)?;
        Ok(self.inner.broadcast_raw(stream, raw, None))
    }

    /// Delivers `json` to this node's subscribers of `stream` only, without publishing to the
    /// bus: for ingress that every node reads itself (Redis `__anycable__`).
    pub fn broadcast_local(
        &self,
        stream: &str,
        json: &str,
    ) -> Result<BroadcastReport, BroadcastError> {
        let raw: &RawValue = serde_json::from_str(json).map_err(|_| BroadcastError::InvalidJson)?;
        Ok(self.deliver_here(stream, raw, None))
    }

    /// To this node's subscribers only (no history, no bus), counted.
    fn deliver_here(
        &self,
        stream: &str,
        raw: &RawValue,
        except: Option<ConnId>,
    ) -> BroadcastReport {
        let report = self
            .inner
            .fan_out_carrying_pings(stream, || self.inner.hub.broadcast(stream, raw, except));
        self.inner.metrics.broadcasts.inc();
        self.inner
            .metrics
            .broadcast_deliveries
            .inc_by(report.delivered as u64);
        report
    }

    /// Delivers a publication from the ingress with its `meta`: `transient` is not stored,
    /// `exclude_socket` (a session id) skips that client. `local`: to this node's subscribers
    /// only (when every node reads the ingress itself, as with Redis). The excluded client is
    /// found on this node; a publication relayed to other nodes reaches theirs unfiltered.
    pub fn publish(
        &self,
        publication: &crate::ingress::Publication,
        local: bool,
    ) -> Result<BroadcastReport, BroadcastError> {
        let raw: &RawValue =
            serde_json::from_str(&publication.message).map_err(|_| BroadcastError::InvalidJson)?;
        let except = publication
            .meta
            .exclude_socket
            .as_deref()
            .and_then(|sid| self.inner.sids.lock().get(sid).copied());
        let stream = &publication.stream;
        Ok(if local {
            self.deliver_here(stream, raw, except)
        } else if publication.meta.transient {
            self.inner.broadcast_transient(stream, raw, except)
        } else {
            self.inner.broadcast_raw(stream, raw, except)
        })
    }

    /// Broadcasts an already validated JSON value to every subscription of `stream`.
    pub fn broadcast_raw(&self, stream: &str, message: &RawValue) -> BroadcastReport {
        self.inner.broadcast_raw(stream, message, None)
    }

    /// Broadcasts `message` to every subscription of `stream`, on this node and beyond,
    /// without storing it in history (no offset; a restored session does not replay it): for
    /// messages meant for one client, such as a reflex's reply.
    pub fn broadcast_transient(&self, stream: &str, message: &RawValue) -> BroadcastReport {
        self.inner.broadcast_transient(stream, message, None)
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The node's hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// A token cancelled when shutdown begins (for accept loops and other tasks).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Spawns a task that shutdown waits for (e.g. one awaiting an HTTP upgrade).
    pub fn spawn_tracked<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.inner.tracker.spawn(task);
    }

    /// Graceful shutdown: every connection gets `disconnect` with `server_restart` and
    /// `reconnect: true`, finishes the command it is running, runs its unsubscribe
    /// callbacks and closes. Waits at most `shutdown_timeout`.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.inner.shutdown.cancel();
        self.inner
            .connections
            .for_each(|outbox| outbox.request_disconnect(DisconnectReason::ServerRestart));
        self.inner.tracker.close();
        let _ = tokio::time::timeout(
            self.inner.config.shutdown_timeout,
            self.inner.tracker.wait(),
        )
        .await;
        ShutdownReport {
            remaining: self.inner.tracker.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::HEARTBEAT_SLICES;

    #[test]
    fn the_heartbeats_slices_reach_every_connection_once() {
        let registry = Registry::new(64);
        for id in 0..1000u64 {
            registry.insert(id, Arc::new(Outbox::new(OutboxLimits::default())));
        }
        let mut seen = std::collections::HashMap::<usize, u32>::new();
        let mut per_slice = Vec::new();
        for slice in 0..HEARTBEAT_SLICES {
            let mut n = 0;
            registry.for_each_in_slice(slice, HEARTBEAT_SLICES, |o| {
                *seen.entry(Arc::as_ptr(o) as usize).or_default() += 1;
                n += 1;
            });
            per_slice.push(n);
        }
        assert_eq!(seen.len(), 1000, "every connection is in some slice");
        assert!(seen.values().all(|&c| c == 1), "and in one only");
        // Ids are sequential, so the slices are even: no slice is a burst.
        assert!(
            per_slice.iter().all(|&n| (62..=63).contains(&n)),
            "{per_slice:?}"
        );
        // Two slices (short periods) cover everything too.
        let mut n = 0;
        registry.for_each_in_slice(0, 2, |_| n += 1);
        registry.for_each_in_slice(1, 2, |_| n += 1);
        assert_eq!(n, 1000);
    }
}
