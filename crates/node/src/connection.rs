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

use bytes::Bytes;
use ferrocable_protocol::{
    ClientCommand, DecodeError, DisconnectReason, Identifier, ServerFrame, decode_command,
    encode_data_frame, encode_json_string,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_websockets::{CloseCode, Message, Payload, WebSocketStream};
use tracing::{debug, info, warn};

use crate::auth::{ConnectRequest, Identity};
use crate::channel::{ChannelContext, DynChannel, Effects, PerformError};
use crate::hub::ConnId;
use crate::node::Inner;
use crate::outbox::Outbox;

/// A live subscription of this connection.
struct Subscription {
    channel: Arc<dyn DynChannel>,
    params: Arc<Map<String, Value>>,
    streams: Vec<String>,
}

/// Why the connection loop ended.
enum Exit {
    /// The peer closed or vanished.
    PeerGone,
    /// The server closes with a `disconnect` frame, after writing `pending` frames.
    Disconnect(DisconnectReason, CloseCode, VecDeque<Bytes>),
    /// The peer sent a frame over the size limit; the codec already queued close 1009.
    TooLarge,
}

struct Connection {
    node: Arc<Inner>,
    id: ConnId,
    identity: Arc<Identity>,
    outbox: Arc<Outbox>,
    subscriptions: HashMap<Identifier, Subscription>,
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

    let identity = tokio::select! {
        r = node.auth.authenticate(&request) => r,
        _ = node.shutdown.cancelled() => return,
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
                VecDeque::new(),
                bye.encode(),
                CloseCode::NORMAL_CLOSURE,
            ))
            .await;
            return;
        }
    };
    debug!(conn = id, ?remote, "connection opened");

    let mut conn = Connection {
        outbox: Arc::new(Outbox::new(node.config.outbox)),
        node: node.clone(),
        id,
        identity,
        subscriptions: HashMap::new(),
    };
    node.connections.insert(id, conn.outbox.clone());
    if node.shutdown.is_cancelled() {
        // Shutdown began while this connection authenticated and missed the registry sweep.
        conn.outbox
            .request_disconnect(DisconnectReason::ServerRestart);
    }
    conn.queue(ServerFrame::Welcome.encode());
    let exit = conn.serve(&mut ws).await;
    node.connections.remove(id);
    Box::pin(conn.unsubscribe_all()).await;
    match exit {
        Exit::PeerGone => {
            let _ = tokio::time::timeout(node.config.write_timeout, ws.close()).await;
        }
        Exit::TooLarge => {
            let _ = tokio::time::timeout(node.config.write_timeout, ws.flush()).await;
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
    pending: VecDeque<Bytes>,
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
async fn write_frames<S>(
    ws: &mut WebSocketStream<S>,
    frames: VecDeque<Bytes>,
    timeout: std::time::Duration,
) -> Result<Result<(), tokio_websockets::Error>, tokio::time::error::Elapsed>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
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
    fn queue(&self, frame: Bytes) {
        // An overflow is noticed by the write loop, which disconnects with `too_slow`.
        let _ = self.outbox.try_push(frame);
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
                        return Exit::Disconnect(DisconnectReason::TooSlow, CloseCode::POLICY_VIOLATION, VecDeque::new());
                    }
                    if let Some(reason) = drained.disconnect {
                        let code = if reason == DisconnectReason::ServerRestart { CloseCode::GOING_AWAY } else { CloseCode::NORMAL_CLOSURE };
                        return Exit::Disconnect(reason, code, drained.frames);
                    }
                    if !drained.frames.is_empty() {
                        match write_frames(ws, drained.frames, self.node.config.write_timeout).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                debug!(conn = self.id, error = %e, "write failed");
                                return Exit::PeerGone;
                            }
                            Err(_) => {
                                warn!(conn = self.id, "write timed out: client too slow");
                                return Exit::Disconnect(DisconnectReason::TooSlow, CloseCode::POLICY_VIOLATION, VecDeque::new());
                            }
                        }
                    }
                }
                message = ws.next() => match message {
                    None => return Exit::PeerGone,
                    Some(Ok(message)) => {
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

    async fn handle_frame(&mut self, frame: &[u8]) {
        match decode_command(frame, self.node.config.max_command_bytes) {
            Err(e) => {
                warn!(conn = self.id, error = %e, "bad frame");
                self.refuse(e.code(), &e.to_string());
            }
            Ok(ClientCommand::Subscribe { identifier }) => self.subscribe(identifier).await,
            Ok(ClientCommand::Unsubscribe { identifier }) => self.unsubscribe(identifier).await,
            Ok(ClientCommand::Message { identifier, data }) => self.perform(identifier, data).await,
        }
    }

    fn reject(&self, identifier: &Identifier) {
        self.node.metrics.rejected_subscriptions.inc();
        self.queue(ServerFrame::RejectSubscription { identifier }.encode());
    }

    async fn subscribe(&mut self, identifier: Identifier) {
        if self.subscriptions.contains_key(&identifier) {
            debug!(conn = self.id, %identifier, "duplicate subscribe ignored");
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
        );
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
        self.subscriptions.insert(identifier, sub);
        self.node.metrics.subscriptions.inc();
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
        self.end_subscription(identifier, sub).await;
    }

    async fn end_subscription(&mut self, identifier: Identifier, mut sub: Subscription) {
        let mut ctx = ChannelContext::new(
            identifier.clone(),
            sub.params.clone(),
            self.identity.clone(),
            sub.streams.clone(),
        );
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

    async fn perform(&mut self, identifier: Identifier, data: String) {
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
        );
        let result = channel.perform(&mut ctx, &action, data).await;
        let effects = ctx.into_effects();
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
