//! One client connection: authenticate, welcome, then a single task that reads commands,
//! writes its outbox and forwards heartbeats until the peer leaves, the server shuts down
//! or the client falls too far behind.
//!
//! One task per connection (a `select!` over the socket, the outbox, the heartbeat and the
//! shutdown token) keeps an idle connection small: no second task, no timer of its own, no
//! buffers beyond the WebSocket codec's.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferrocable_protocol::{
    ClientCommand, DecodeError, DisconnectReason, HistoryRequest, Identifier, ServerFrame,
    Subprotocol, decode_command, encode_data_frame, encode_data_frame_at, encode_json_string,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_websockets::{CloseCode, Message, Payload, WebSocketStream};
use tracing::{debug, info, warn};

use crate::auth::{ConnectRequest, Identity};
use crate::broker::new_sid;
use crate::channel::{ChannelContext, DynChannel, Effects, PerformError};
use crate::hub::ConnId;
use crate::node::Inner;
use crate::outbox::{OutFrame, Outbox, StreamKey};

/// How long live frames of a restored subscription wait for the client's `history` request
/// before they are sent anyway.
const REPLAY_GATE_TIMEOUT: Duration = Duration::from_secs(5);

/// What an extended-protocol session keeps in the broker so that a reconnecting client
/// gets its subscriptions back without authenticating again.
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionState {
    identity: Identity,
    subscriptions: Vec<SavedSubscription>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedSubscription {
    identifier: String,
    streams: Vec<String>,
}

/// Ordering state of a connection that replays history (extended protocol): live frames
/// of a subscription whose replay is pending are held back, and every stored message is
/// sent at most once, in offset order.
#[derive(Default)]
struct Replay {
    /// Most live frames held back at once (the outbox's frame limit): a client that never
    /// asks for its history cannot make the server hold an unbounded backlog.
    max_held: usize,
    /// Subscriptions whose replay is pending, and since when.
    gates: HashMap<Identifier, Instant>,
    /// Live frames held back by a gate.
    held: VecDeque<OutFrame>,
    /// Last offset sent per (stream, subscription).
    last_sent: HashMap<Arc<StreamKey>, u64>,
}

impl Replay {
    /// Whether a stored message may be sent (not sent before); records it.
    fn admit(&mut self, key: &Arc<StreamKey>, offset: u64) -> bool {
        match self.last_sent.get_mut(key) {
            Some(last) if offset <= *last => false,
            Some(last) => {
                *last = offset;
                true
            }
            None => {
                self.last_sent.insert(key.clone(), offset);
                true
            }
        }
    }

    /// Puts frames in wire order: held live frames wait for their replay's end.
    fn sequence(&mut self, frames: VecDeque<OutFrame>, out: &mut Vec<Bytes>) {
        for frame in frames {
            match frame {
                OutFrame::Plain(bytes) => out.push(bytes),
                OutFrame::Live {
                    ref key, offset, ..
                } => {
                    if self.gates.contains_key(&key.identifier) {
                        let identifier = key.identifier.clone();
                        self.held.push_back(frame);
                        if self.held.len() >= self.max_held {
                            self.release(&identifier, out);
                        }
                    } else if self.admit(key, offset) {
                        out.push(frame.into_bytes());
                    }
                }
                OutFrame::Replay { bytes, key, offset } => {
                    if self.admit(&key, offset) {
                        out.push(bytes);
                    }
                }
                OutFrame::EndReplay { bytes, identifier } => {
                    out.push(bytes);
                    self.release(&identifier, out);
                }
            }
        }
        let now = Instant::now();
        let expired: Vec<Identifier> = self
            .gates
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= REPLAY_GATE_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        for identifier in expired {
            self.release(&identifier, out);
        }
    }

    /// Ends the gate of `identifier` and sends its held frames that are still new.
    fn release(&mut self, identifier: &Identifier, out: &mut Vec<Bytes>) {
        self.gates.remove(identifier);
        let held = std::mem::take(&mut self.held);
        for frame in held {
            match &frame {
                OutFrame::Live { key, offset, .. } if &key.identifier == identifier => {
                    if self.admit(key, *offset) {
                        out.push(frame.into_bytes());
                    }
                }
                _ => self.held.push_back(frame),
            }
        }
    }

    /// Forgets a subscription.
    fn forget(&mut self, identifier: &Identifier) {
        self.gates.remove(identifier);
        self.last_sent.retain(|k, _| &k.identifier != identifier);
        self.held
            .retain(|f| !matches!(f, OutFrame::Live { key, .. } if &key.identifier == identifier));
    }
}

/// A live subscription of this connection.
struct Subscription {
    channel: Arc<dyn DynChannel>,
    params: Arc<Map<String, Value>>,
    streams: Vec<String>,
}

/// A channel action that runs while the connection keeps writing (pings, broadcasts, other
/// subscriptions' frames). The socket is not read until it ends, so commands still run one at
/// a time and in order, and a client that floods commands waits for its own.
type Running = std::pin::Pin<Box<dyn Future<Output = Box<Performed>> + Send>>;

/// What a finished action leaves for the connection to apply.
struct Performed {
    identifier: Identifier,
    action: String,
    result: Result<(), PerformError>,
    effects: Effects,
}

/// Resolves when the running action (if any) finishes; never while there is none.
async fn finished(running: &mut Option<Running>) -> Box<Performed> {
    std::future::poll_fn(|cx| match running {
        Some(action) => action.as_mut().poll(cx),
        None => Poll::Pending,
    })
    .await
}

/// Why the connection loop ended.
enum Exit {
    /// The peer closed or vanished.
    PeerGone,
    /// The server closes with a `disconnect` frame, after writing `pending` frames.
    Disconnect(DisconnectReason, CloseCode, Vec<Bytes>),
    /// The peer sent a frame over the size limit; the codec already queued close 1009.
    TooLarge,
    /// The node shuts down and an extended session was saved: close with 1001 after
    /// `pending`, without a `disconnect` frame, so the client restores elsewhere.
    HandOver(Vec<Bytes>),
}

struct Connection {
    node: Arc<Inner>,
    id: ConnId,
    identity: Arc<Identity>,
    outbox: Arc<Outbox>,
    subscriptions: HashMap<Identifier, Subscription>,
    /// The session id (extended protocol only).
    sid: Option<Box<str>>,
    /// When the session state was last saved (extended protocol only): it is saved again
    /// every half sessions TTL, so a live session outlives a node crash by a full TTL.
    committed_at: Option<Instant>,
    /// When the client last sent anything (extended protocol with a pong timeout only).
    heard_at: Option<Instant>,
    /// Replay ordering (only once the connection replayed or restored something).
    replay: Option<Box<Replay>>,
    /// The channel action running now, if any.
    running: Option<Running>,
    /// The command budget left (see [`crate::CommandRate`]).
    budget: Budget,
}

/// A token bucket in 8 bytes: tokens left (negative: commands refused past the budget) and
/// when it was last filled, in milliseconds since the node started (wrapping, compared by
/// difference).
#[derive(Debug, Clone, Copy)]
struct Budget {
    tokens: f32,
    at_ms: u32,
}

/// What the budget says of one more command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Yes,
    Refuse,
    Disconnect,
}

impl Budget {
    fn full(rate: Option<crate::CommandRate>, now_ms: u32) -> Self {
        Budget {
            tokens: rate.map_or(0.0, |r| r.burst),
            at_ms: now_ms,
        }
    }

    /// Spends one token if there is one; otherwise the client goes into debt, and a whole
    /// burst of debt means disconnect.
    fn admit(&mut self, rate: crate::CommandRate, now_ms: u32) -> Admit {
        let elapsed = now_ms.wrapping_sub(self.at_ms) as f32 / 1000.0;
        self.at_ms = now_ms;
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Admit::Yes
        } else if self.tokens > -rate.burst {
            Admit::Refuse
        } else {
            Admit::Disconnect
        }
    }
}

/// Decrements the connection gauge however the task ends.
struct Gauge<'a>(&'a Inner);

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.metrics.connections.dec();
    }
}

/// Runs one connection to its end.
///
/// `ws` and `request` arrive boxed on purpose: an async fn keeps its arguments for its whole
/// life, so large by-value arguments would be stored twice in every idle connection.
pub(crate) async fn run<S>(
    node: Arc<Inner>,
    mut ws: Box<WebSocketStream<S>>,
    request: Box<ConnectRequest>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    node.metrics.connections.inc();
    node.metrics.connections_opened.inc();
    let _gauge = Gauge(&node);
    let id = node.next_conn_id();

    let extended = request.protocol == Some(Subprotocol::ActionCableV1ExtJson);
    let restored = if extended {
        Box::pin(restore(&node, &request)).await
    } else {
        None
    };
    let identity = match restored {
        Some(ref state) => Ok(state.identity.clone()),
        None => tokio::select! {
            r = node.auth.authenticate(&request) => r.map(|mut identity| {
                if let Some(session_of) = &node.session_of {
                    identity.session = session_of(&request);
                }
                identity
            }),
            _ = node.shutdown.cancelled() => return,
        },
    };
    // The request (headers, cookies) is not kept: an idle connection holds only what it needs.
    let remote = request.remote_addr;
    drop(request);
    let identity = match identity {
        Ok(identity) => Arc::new(identity),
        Err(e) => {
            info!(conn = id, ?remote, reason = %e.reason, "connection rejected: unauthorized");
            node.metrics
                .disconnect(DisconnectReason::Unauthorized.as_str());
            let bye = ServerFrame::Disconnect {
                reason: DisconnectReason::Unauthorized,
                reconnect: false,
            };
            Box::pin(goodbye(
                &node,
                &mut ws,
                Vec::new(),
                bye.encode(),
                CloseCode::NORMAL_CLOSURE,
            ))
            .await;
            return;
        }
    };
    debug!(conn = id, ?remote, "connection opened");

    let mut conn = Connection {
        outbox: Arc::new(if extended {
            Outbox::with_positions(node.config.outbox)
        } else {
            Outbox::new(node.config.outbox)
        }),
        node: node.clone(),
        id,
        identity,
        subscriptions: HashMap::new(),
        sid: extended.then(|| new_sid().into_boxed_str()),
        committed_at: None,
        heard_at: (extended && node.config.pong_timeout.is_some()).then(Instant::now),
        replay: None,
        running: None,
        budget: Budget::full(node.config.command_rate, node.now_ms()),
    };
    node.connections.insert(id, conn.outbox.clone());
    if node.shutdown.is_cancelled() {
        // Shutdown began while this connection authenticated and missed the registry sweep.
        conn.outbox
            .request_disconnect(DisconnectReason::ServerRestart);
    }
    match (&conn.sid, restored) {
        (None, _) => conn.queue(ServerFrame::Welcome.encode()),
        (Some(sid), None) => {
            let frame = ServerFrame::WelcomeSession {
                sid,
                restored_ids: None,
            }
            .encode();
            conn.queue(frame);
        }
        (Some(_), Some(state)) => Box::pin(conn.resume(state)).await,
    }
    if conn.sid.is_some() {
        Box::pin(conn.commit()).await;
    }
    let exit = conn.serve(&mut ws).await;
    node.connections.remove(id);
    if let Some(running) = conn.running.take() {
        // The connection ends while an action runs (too slow, shutdown): let it finish within
        // the shutdown timeout, so what it changed (a reflex's session, its broadcasts) stands.
        // Boxed: a cold path, kept out of every idle connection's task.
        match Box::pin(tokio::time::timeout(node.config.shutdown_timeout, running)).await {
            Ok(done) => conn.broadcast_all(&done.effects),
            Err(_) => warn!(conn = id, "a running action outlived the shutdown timeout"),
        }
    }
    let exit = match exit {
        // A drop or a node shutdown keeps an extended session restorable: on shutdown the
        // client gets no `disconnect` frame (which would make it forget its session id), only
        // a close, and reconnects (to this node or another one sharing the broker) with its
        // `sid`.
        Exit::PeerGone if conn.sid.is_some() => {
            Box::pin(conn.commit()).await;
            Exit::PeerGone
        }
        Exit::Disconnect(DisconnectReason::ServerRestart, _, pending) if conn.sid.is_some() => {
            Box::pin(conn.commit()).await;
            Exit::HandOver(pending)
        }
        other => other,
    };
    Box::pin(conn.unsubscribe_all()).await;
    match exit {
        Exit::PeerGone => {
            let _ = tokio::time::timeout(node.config.write_timeout, ws.close()).await;
        }
        Exit::TooLarge => {
            let _ = tokio::time::timeout(node.config.write_timeout, ws.flush()).await;
        }
        Exit::HandOver(pending) => {
            node.metrics.disconnect("handover");
            let write = async {
                for frame in pending {
                    ws.feed(Message::text(Payload::from(frame))).await?;
                }
                ws.send(Message::close(Some(CloseCode::GOING_AWAY), ""))
                    .await?;
                ws.close().await
            };
            let _ = tokio::time::timeout(node.config.write_timeout, write).await;
        }
        Exit::Disconnect(reason, code, pending) => {
            node.metrics.disconnect(reason.as_str());
            let bye = ServerFrame::Disconnect {
                reason,
                reconnect: reason.default_reconnect(),
            };
            Box::pin(goodbye(&node, &mut ws, pending, bye.encode(), code)).await;
        }
    }
    conn.outbox.close();
    debug!(conn = id, "connection closed");
}

/// Writes the last frames, the `disconnect` frame and a close frame, within the write
/// timeout, then waits (bounded) for the peer's close.
async fn goodbye<S>(
    node: &Inner,
    ws: &mut WebSocketStream<S>,
    pending: Vec<Bytes>,
    bye: Bytes,
    code: CloseCode,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let write = async {
        for frame in pending.into_iter().chain(std::iter::once(bye)) {
            ws.feed(Message::text(Payload::from(frame))).await?;
        }
        ws.send(Message::close(Some(code), "")).await?;
        ws.close().await
    };
    let _ = tokio::time::timeout(node.config.write_timeout, write).await;
}

/// Writes `frames` and flushes. The write timeout's timer is armed only when the socket
/// does not take everything at once, so the common case costs no timer registration.
async fn write_frames<S, I>(
    ws: &mut WebSocketStream<S>,
    frames: I,
    timeout: std::time::Duration,
) -> Result<Result<(), tokio_websockets::Error>, tokio::time::error::Elapsed>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    I: IntoIterator<Item = Bytes>,
    I::IntoIter: Send,
{
    // Boxed: only alive while writing, so it need not sit in every idle task.
    let mut write = Box::pin(async move {
        for frame in frames {
            ws.feed(Message::text(Payload::from(frame))).await?;
        }
        ws.flush().await
    });
    match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        Poll::Ready(done) => Ok(done),
        Poll::Pending => tokio::time::timeout(timeout, write).await,
    }
}

/// Looks up the session a reconnecting extended-protocol client names (`X-ANYCABLE-RESTORE-SID`
/// header first, then the `sid` query parameter; empty means none).
async fn restore(node: &Inner, request: &ConnectRequest) -> Option<SessionState> {
    let sid = request
        .headers
        .get("x-anycable-restore-sid")
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.query_param("sid"))
        .filter(|s| !s.is_empty() && s.len() <= 128)?;
    match node.broker.restore_session(sid).await {
        Ok(Some(bytes)) => match serde_json::from_slice::<SessionState>(&bytes) {
            Ok(state) => Some(state),
            Err(e) => {
                warn!(error = %e, "session restore: corrupt session state");
                node.metrics.broker_error("restore_session");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, "session restore failed");
            node.metrics.broker_error("restore_session");
            None
        }
    }
}

/// Applies a command's stream effects to one subscription: stops first, then starts; the
/// node subscribes on the bus at a stream's first local subscriber.
fn apply_streams(
    node: &Inner,
    conn: ConnId,
    outbox: &Arc<Outbox>,
    identifier: &Identifier,
    streams: &mut Vec<String>,
    effects: &Effects,
) {
    if effects.stop_all_streams {
        for stream in streams.drain(..) {
            node.detach(&stream, conn, identifier);
        }
    }
    for stop in &effects.stop_stream_from {
        if let Some(i) = streams.iter().position(|s| s == stop) {
            streams.swap_remove(i);
            node.detach(stop, conn, identifier);
        }
    }
    for start in &effects.stream_from {
        if !streams.contains(start) {
            node.attach(start, conn, identifier, outbox);
            streams.push(start.clone());
        }
    }
}

impl Connection {
    fn queue(&self, frame: impl Into<OutFrame>) {
        // An overflow is noticed by the write loop, which disconnects with `too_slow`.
        let _ = self.outbox.try_push(frame);
    }

    fn replay(&mut self) -> &mut Replay {
        let max_held = self.node.config.outbox.max_frames.max(1);
        self.replay.get_or_insert_with(|| {
            Box::new(Replay {
                max_held,
                ..Replay::default()
            })
        })
    }

    /// Brings back a saved session: subscriptions and streams without running channel
    /// callbacks (as AnyCable does), then the welcome naming what came back. Live frames of
    /// restored subscriptions wait for the client's `history` request.
    async fn resume(&mut self, state: SessionState) {
        let mut restored = Vec::new();
        for saved in state.subscriptions {
            let identifier = Identifier::new(saved.identifier);
            let Ok(parsed) = identifier.params() else {
                continue;
            };
            let Some(channel) = self.node.channels.get(&parsed.channel).cloned() else {
                continue;
            };
            self.replay()
                .gates
                .insert(identifier.clone(), Instant::now());
            let mut sub = Subscription {
                channel,
                params: Arc::new(parsed.params),
                streams: Vec::new(),
            };
            let effects = Effects {
                stream_from: saved.streams,
                ..Effects::default()
            };
            apply_streams(
                &self.node,
                self.id,
                &self.outbox,
                &identifier,
                &mut sub.streams,
                &effects,
            );
            self.subscriptions.insert(identifier.clone(), sub);
            self.node.metrics.subscriptions.inc();
            restored.push(identifier);
        }
        self.node.metrics.sessions_restored.inc();
        let Some(sid) = &self.sid else { return };
        let frame = ServerFrame::WelcomeSession {
            sid,
            restored_ids: Some(&restored),
        }
        .encode();
        self.queue(frame);
    }

    /// Saves the session's state in the broker for the sessions TTL.
    async fn commit(&mut self) {
        let Some(sid) = &self.sid else { return };
        self.committed_at = Some(Instant::now());
        let state = SessionState {
            identity: (*self.identity).clone(),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(id, sub)| SavedSubscription {
                    identifier: id.as_str().to_owned(),
                    streams: sub.streams.clone(),
                })
                .collect(),
        };
        let Ok(bytes) = serde_json::to_vec(&state) else {
            return;
        };
        if let Err(e) = self
            .node
            .broker
            .commit_session(sid, Bytes::from(bytes))
            .await
        {
            warn!(conn = self.id, error = %e, "session commit failed");
            self.node.metrics.broker_error("commit_session");
        }
    }

    fn refuse(&self, code: &'static str, message: &str) {
        self.node.metrics.bad_frame(code);
        self.queue(ServerFrame::Error { code, message }.encode());
    }

    /// The connection's one loop: two sources only (its outbox and its socket), so an idle
    /// connection waits on nothing shared with other connections.
    async fn serve<S>(&mut self, ws: &mut WebSocketStream<S>) -> Exit
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let outbox = self.outbox.clone();
        loop {
            tokio::select! {
                biased;
                _ = outbox.ready() => {
                    let drained = outbox.take();
                    if drained.overflowed {
                        warn!(conn = self.id, "outbox overflowed: client too slow");
                        return Exit::Disconnect(DisconnectReason::TooSlow, CloseCode::POLICY_VIOLATION, Vec::new());
                    }
                    if let Some(reason) = drained.disconnect {
                        let code = if reason == DisconnectReason::ServerRestart { CloseCode::GOING_AWAY } else { CloseCode::NORMAL_CLOSURE };
                        let mut pending = Vec::with_capacity(drained.frames.len());
                        match self.replay.as_mut() {
                            Some(replay) => replay.sequence(drained.frames, &mut pending),
                            None => pending.extend(drained.frames.into_iter().map(OutFrame::into_bytes)),
                        }
                        return Exit::Disconnect(reason, code, pending);
                    }
                    if !drained.frames.is_empty() {
                        let timeout = self.node.config.write_timeout;
                        let written = match self.replay.as_mut() {
                            Some(replay) => {
                                let mut ordered = Vec::with_capacity(drained.frames.len());
                                replay.sequence(drained.frames, &mut ordered);
                                write_frames(ws, ordered, timeout).await
                            }
                            None => write_frames(ws, drained.frames.into_iter().map(OutFrame::into_bytes), timeout).await,
                        };
                        match written {
                            Ok(Ok(())) => {
                                // Both checks ride on writes (pings at least): no timer per
                                // connection.
                                // While an action runs the socket is not read, so silence
                                // says nothing about the client then.
                                if let (Some(heard), Some(limit)) = (self.heard_at, self.node.config.pong_timeout)
                                    && self.running.is_none()
                                    && heard.elapsed() > limit
                                {
                                    warn!(conn = self.id, "no frame from the client within the pong timeout");
                                    return Exit::Disconnect(DisconnectReason::NoPong, CloseCode::NORMAL_CLOSURE, Vec::new());
                                }
                                if self.committed_at.is_some_and(|at| {
                                    at.elapsed() >= self.node.config.history.sessions_ttl / 2
                                }) {
                                    Box::pin(self.commit()).await;
                                }
                            }
                            Ok(Err(e)) => {
                                debug!(conn = self.id, error = %e, "write failed");
                                return Exit::PeerGone;
                            }
                            Err(_) => {
                                warn!(conn = self.id, "write timed out: client too slow");
                                return Exit::Disconnect(DisconnectReason::TooSlow, CloseCode::POLICY_VIOLATION, Vec::new());
                            }
                        }
                    }
                }
                done = finished(&mut self.running), if self.running.is_some() => {
                    self.running = None;
                    if self.heard_at.is_some() {
                        // The client's frames waited unread meanwhile: count from now.
                        self.heard_at = Some(Instant::now());
                    }
                    Box::pin(self.finish_perform(done)).await;
                }
                message = ws.next(), if self.running.is_none() => match message {
                    None => return Exit::PeerGone,
                    Some(Ok(message)) => {
                        if self.heard_at.is_some() {
                            self.heard_at = Some(Instant::now());
                        }
                        if message.is_text() {
                            // Boxed: command handling is the largest state; keeping it out of line keeps
                            // every idle connection's task small.
                            Box::pin(self.handle_frame(message.as_payload())).await;
                        } else if message.is_binary() {
                            let e = DecodeError::BinaryFrame;
                            warn!(conn = self.id, error = %e, "bad frame");
                            self.refuse(e.code(), &e.to_string());
                        } else if message.is_close() {
                            return Exit::PeerGone;
                        }
                    }
                    Some(Err(tokio_websockets::Error::PayloadTooLong { len, max_len })) => {
                        let e = DecodeError::TooLarge { len, max: max_len };
                        warn!(conn = self.id, error = %e, "bad frame: closing with 1009");
                        self.node.metrics.bad_frame(e.code());
                        return Exit::TooLarge;
                    }
                    Some(Err(e)) => {
                        debug!(conn = self.id, error = %e, "socket error");
                        if matches!(e, tokio_websockets::Error::Protocol(_)) {
                            self.node.metrics.bad_frame("websocket_protocol");
                        }
                        return Exit::PeerGone;
                    }
                },
            }
        }
    }

    /// Whether the command budget admits one more command; answers the client when not.
    fn within_budget(&mut self) -> bool {
        let Some(rate) = self.node.config.command_rate else {
            return true;
        };
        match self.budget.admit(rate, self.node.now_ms()) {
            Admit::Yes => true,
            Admit::Refuse => {
                self.node.metrics.limited("rate");
                self.queue(
                    ServerFrame::Error {
                        code: "rate_limited",
                        message: "too many commands: slow down",
                    }
                    .encode(),
                );
                false
            }
            Admit::Disconnect => {
                self.node.metrics.limited("rate");
                warn!(conn = self.id, "command flood: disconnecting");
                self.outbox
                    .request_disconnect(DisconnectReason::RateLimited);
                false
            }
        }
    }

    async fn handle_frame(&mut self, frame: &[u8]) {
        let command = decode_command(frame, self.node.config.max_command_bytes);
        if !matches!(command, Ok(ClientCommand::Pong)) && !self.within_budget() {
            return;
        }
        match command {
            Err(e) => {
                warn!(conn = self.id, error = %e, "bad frame");
                self.refuse(e.code(), &e.to_string());
            }
            Ok(ClientCommand::Subscribe {
                identifier,
                history,
            }) => self.subscribe(identifier, history).await,
            Ok(ClientCommand::Unsubscribe { identifier }) => self.unsubscribe(identifier).await,
            Ok(ClientCommand::Message { identifier, data }) => self.perform(identifier, data),
            Ok(ClientCommand::History {
                identifier,
                history,
            }) => self.history(identifier, history).await,
            Ok(ClientCommand::Pong) => {}
            Ok(ClientCommand::Ping) => self.queue(ServerFrame::Pong.encode()),
        }
    }

    fn reject(&self, identifier: &Identifier) {
        self.node.metrics.rejected_subscriptions.inc();
        self.queue(ServerFrame::RejectSubscription { identifier }.encode());
    }

    async fn subscribe(&mut self, identifier: Identifier, history: Option<HistoryRequest>) {
        if self.subscriptions.contains_key(&identifier) {
            debug!(conn = self.id, %identifier, "duplicate subscribe ignored");
            return;
        }
        if self.subscriptions.len() >= self.node.config.max_subscriptions {
            warn!(conn = self.id, %identifier, "subscription refused: too many on one connection");
            self.node.metrics.limited("subscriptions");
            self.queue(
                ServerFrame::Error {
                    code: "too_many_subscriptions",
                    message: "this connection holds the most subscriptions it may",
                }
                .encode(),
            );
            self.reject(&identifier);
            return;
        }
        let parsed = match identifier.params() {
            Ok(p) => p,
            Err(e) => {
                warn!(conn = self.id, %identifier, error = %e, "subscription rejected: bad identifier");
                self.node.metrics.bad_frame(e.code());
                self.reject(&identifier);
                return;
            }
        };
        let Some(channel) = self.node.channels.get(&parsed.channel).cloned() else {
            warn!(conn = self.id, channel = %parsed.channel, "subscription rejected: unknown channel");
            self.reject(&identifier);
            return;
        };
        let params = Arc::new(parsed.params);
        let mut ctx = ChannelContext::new(
            identifier.clone(),
            params.clone(),
            self.identity.clone(),
            Vec::new(),
        )
        .on_node(crate::Node::from_inner(self.node.clone()));
        channel.subscribed(&mut ctx).await;
        let effects = ctx.into_effects();
        if effects.rejected {
            debug!(conn = self.id, %identifier, "subscription rejected by channel");
            self.transmit_all(&identifier, &effects);
            self.reject(&identifier);
            self.broadcast_all(&effects);
            return;
        }
        let mut sub = Subscription {
            channel,
            params,
            streams: Vec::new(),
        };
        if history.is_some() {
            // Live frames wait until the replay is queued, so they follow it in offset order.
            self.replay()
                .gates
                .insert(identifier.clone(), Instant::now());
        }
        // Streams are attached before the confirmation is queued: once the client reads
        // `confirm_subscription`, broadcasts to those streams reach it.
        apply_streams(
            &self.node,
            self.id,
            &self.outbox,
            &identifier,
            &mut sub.streams,
            &effects,
        );
        self.transmit_all(&identifier, &effects);
        self.queue(
            ServerFrame::ConfirmSubscription {
                identifier: &identifier,
            }
            .encode(),
        );
        self.broadcast_all(&effects);
        self.subscriptions.insert(identifier.clone(), sub);
        self.node.metrics.subscriptions.inc();
        if let Some(history) = history {
            // Confirmed first, then replayed (AnyCable's order).
            self.history(identifier, history).await;
        }
        self.commit().await;
    }

    /// Replays what the client missed on every stream of a subscription: all of it, in
    /// offset order, then `confirm_history`; or, if any stream cannot be served, nothing but
    /// `reject_history`.
    async fn history(&mut self, identifier: Identifier, request: HistoryRequest) {
        let Some(sub) = self.subscriptions.get(&identifier) else {
            warn!(conn = self.id, %identifier, "history for unknown subscription");
            self.node.metrics.history_rejected.inc();
            self.queue(
                ServerFrame::RejectHistory {
                    identifier: &identifier,
                }
                .encode(),
            );
            return;
        };
        let streams = sub.streams.clone();
        self.replay()
            .gates
            .insert(identifier.clone(), Instant::now());
        let broker = self.node.broker.clone();
        let mut replayed = Vec::new();
        let mut failed = None;
        for stream in &streams {
            let result = match request.streams.get(stream) {
                Some(position) => broker.history_from(stream, position).await,
                None => match request.since {
                    Some(since) => broker.history_since(stream, since).await,
                    None => continue,
                },
            };
            match result {
                Ok(history) => replayed.push((stream, history)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            debug!(conn = self.id, %identifier, error = %e, "history rejected");
            if matches!(
                e,
                crate::broker::BrokerError::Unavailable(_) | crate::broker::BrokerError::Corrupt(_)
            ) {
                self.node.metrics.broker_error("history");
            }
            self.node.metrics.history_rejected.inc();
            let bytes = ServerFrame::RejectHistory {
                identifier: &identifier,
            }
            .encode();
            self.queue(OutFrame::EndReplay { bytes, identifier });
            return;
        }
        let identifier_literal = encode_json_string(identifier.as_str());
        for (stream, history) in replayed {
            let key = Arc::new(StreamKey {
                stream: Arc::from(stream.as_str()),
                identifier: identifier.clone(),
            });
            let stream_literal = encode_json_string(stream);
            let epoch_literal = encode_json_string(&history.epoch);
            for entry in history.entries {
                let Ok(message) = std::str::from_utf8(&entry.message) else {
                    continue;
                };
                self.queue(OutFrame::Replay {
                    bytes: encode_data_frame_at(
                        &identifier_literal,
                        message,
                        &stream_literal,
                        &epoch_literal,
                        entry.offset,
                    ),
                    key: key.clone(),
                    offset: entry.offset,
                });
            }
        }
        let bytes = ServerFrame::ConfirmHistory {
            identifier: &identifier,
        }
        .encode();
        self.queue(OutFrame::EndReplay { bytes, identifier });
    }

    async fn unsubscribe(&mut self, identifier: Identifier) {
        let Some(sub) = self.subscriptions.remove(&identifier) else {
            warn!(conn = self.id, %identifier, "unsubscribe for unknown subscription");
            self.refuse(
                "unknown_subscription",
                "no subscription with this identifier",
            );
            return;
        };
        if let Some(replay) = self.replay.as_mut() {
            replay.forget(&identifier);
        }
        self.end_subscription(identifier, sub).await;
        self.commit().await;
    }

    async fn end_subscription(&mut self, identifier: Identifier, mut sub: Subscription) {
        let mut ctx = ChannelContext::new(
            identifier.clone(),
            sub.params.clone(),
            self.identity.clone(),
            sub.streams.clone(),
        )
        .on_node(crate::Node::from_inner(self.node.clone()));
        sub.channel.unsubscribed(&mut ctx).await;
        let effects = ctx.into_effects();
        for stream in sub.streams.drain(..) {
            self.node.detach(&stream, self.id, &identifier);
        }
        self.broadcast_all(&effects);
        self.node.metrics.subscriptions.dec();
    }

    async fn unsubscribe_all(&mut self) {
        let subs: Vec<_> = self.subscriptions.drain().collect();
        for (identifier, sub) in subs {
            self.end_subscription(identifier, sub).await;
        }
    }

    /// Starts the action; [`Connection::finish_perform`] applies what it did once it ends.
    fn perform(&mut self, identifier: Identifier, data: String) {
        let Some(sub) = self.subscriptions.get(&identifier) else {
            warn!(conn = self.id, %identifier, "message for unknown subscription");
            self.refuse(
                "unknown_subscription",
                "no subscription with this identifier",
            );
            return;
        };
        let data: Value = match serde_json::from_str(&data) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                warn!(conn = self.id, %identifier, "message data is not a JSON object");
                self.refuse("malformed_data", "message data is not a JSON object");
                return;
            }
        };
        let action = match data.get("action") {
            Some(Value::String(a)) if !a.is_empty() => a.clone(),
            _ => String::from("receive"),
        };
        let channel = sub.channel.clone();
        let mut ctx = ChannelContext::new(
            identifier.clone(),
            sub.params.clone(),
            self.identity.clone(),
            sub.streams.clone(),
        )
        .on_node(crate::Node::from_inner(self.node.clone()));
        self.running = Some(Box::pin(async move {
            let result = channel.perform(&mut ctx, &action, data).await;
            Box::new(Performed {
                identifier,
                action,
                result,
                effects: ctx.into_effects(),
            })
        }));
    }

    /// Applies a finished action: streams, transmissions, broadcasts, then its error, if any.
    async fn finish_perform(&mut self, done: Box<Performed>) {
        let Performed {
            identifier,
            action,
            result,
            effects,
        } = *done;
        let streams_changed = !effects.stream_from.is_empty()
            || !effects.stop_stream_from.is_empty()
            || effects.stop_all_streams;
        if let Some(sub) = self.subscriptions.get_mut(&identifier) {
            apply_streams(
                &self.node,
                self.id,
                &self.outbox,
                &identifier,
                &mut sub.streams,
                &effects,
            );
        }
        self.transmit_all(&identifier, &effects);
        self.broadcast_all(&effects);
        if streams_changed {
            self.commit().await;
        }
        if let Err(e) = result {
            warn!(conn = self.id, %identifier, %action, error = %e, "action failed");
            let code = match e {
                PerformError::UnknownAction(_) => "unknown_action",
                PerformError::InvalidData(_) => "invalid_data",
                PerformError::Failed(_) => "action_failed",
            };
            self.refuse(code, &e.to_string());
        }
    }

    fn transmit_all(&self, identifier: &Identifier, effects: &Effects) {
        if effects.transmissions.is_empty() {
            return;
        }
        let literal = encode_json_string(identifier.as_str());
        for message in &effects.transmissions {
            self.queue(encode_data_frame(&literal, message.get()));
        }
    }

    fn broadcast_all(&self, effects: &Effects) {
        for (stream, message) in &effects.broadcasts {
            self.node.broadcast_raw(stream, message, None);
        }
        for (stream, message) in &effects.transient {
            self.node.broadcast_transient(stream, message, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(key: &Arc<StreamKey>, offset: u64) -> OutFrame {
        OutFrame::Live {
            bytes: Bytes::from(offset.to_string()),
            key: key.clone(),
            offset,
        }
    }

    #[test]
    fn the_budget_admits_a_burst_then_refuses_then_disconnects() {
        let rate = crate::CommandRate {
            per_sec: 10.0,
            burst: 5.0,
        };
        let mut b = Budget::full(Some(rate), 0);
        let first: Vec<Admit> = (0..5).map(|_| b.admit(rate, 0)).collect();
        assert_eq!(first, vec![Admit::Yes; 5]);
        assert_eq!(b.admit(rate, 0), Admit::Refuse);
        // 100 ms later one token came back (10 a second); the debt is paid first.
        assert_eq!(b.admit(rate, 100), Admit::Refuse);
        for _ in 0..3 {
            assert_eq!(b.admit(rate, 100), Admit::Refuse);
        }
        // A whole burst (5) in debt.
        assert_eq!(b.admit(rate, 100), Admit::Disconnect);
        // A quiet second refills the bucket, never past the burst.
        let mut b = Budget::full(Some(rate), u32::MAX - 50);
        for _ in 0..5 {
            b.admit(rate, u32::MAX - 50);
        }
        assert_eq!(b.admit(rate, 2_000), Admit::Yes, "across the u32 wrap");
        assert!(b.tokens <= rate.burst - 1.0);
    }

    #[test]
    fn replay_orders_held_frames_after_the_replay_and_drops_repeats() {
        let id = Identifier::new(r#"{"channel":"A"}"#);
        let key = Arc::new(StreamKey {
            stream: Arc::from("s"),
            identifier: id.clone(),
        });
        let mut r = Replay {
            max_held: 100,
            ..Replay::default()
        };
        r.gates.insert(id.clone(), Instant::now());
        let mut out = Vec::new();
        let replayed = |offset: u64| OutFrame::Replay {
            bytes: Bytes::from(offset.to_string()),
            key: key.clone(),
            offset,
        };
        let frames = VecDeque::from([
            live(&key, 5),
            live(&key, 6),
            replayed(4),
            replayed(5),
            OutFrame::EndReplay {
                bytes: Bytes::from_static(b"end"),
                identifier: id.clone(),
            },
            live(&key, 7),
        ]);
        r.sequence(frames, &mut out);
        assert_eq!(
            out,
            ["4", "5", "end", "6", "7"].map(|s: &'static str| Bytes::from_static(s.as_bytes()))
        );
    }

    #[test]
    fn a_gate_never_answered_holds_at_most_max_held_frames() {
        let id = Identifier::new(r#"{"channel":"A"}"#);
        let key = Arc::new(StreamKey {
            stream: Arc::from("s"),
            identifier: id.clone(),
        });
        let mut r = Replay {
            max_held: 3,
            ..Replay::default()
        };
        r.gates.insert(id, Instant::now());
        let mut out = Vec::new();
        r.sequence((1..=2).map(|o| live(&key, o)).collect(), &mut out);
        assert!(out.is_empty(), "held while the replay is pending");
        r.sequence((3..=4).map(|o| live(&key, o)).collect(), &mut out);
        // At the bound the gate opens: the three held frames go, then live frames flow.
        assert!(r.gates.is_empty() && r.held.is_empty());
        assert_eq!(
            out,
            ["1", "2", "3", "4"].map(|s: &'static str| Bytes::from_static(s.as_bytes()))
        );
    }

    #[tokio::test]
    async fn an_idle_connection_task_is_small() {
        let node = crate::Node::builder().build();
        let (a, _b) = tokio::io::duplex(64);
        let ws = Box::new(tokio_websockets::ServerBuilder::new().serve(a));
        let fut = node.run_connection(ws, Box::new(ConnectRequest::default()));
        let size = std::mem::size_of_val(&fut);
        // Every idle connection holds this state; keep cold paths boxed so it stays small.
        assert!(size <= 1024, "connection future grew to {size} bytes");
    }
}
