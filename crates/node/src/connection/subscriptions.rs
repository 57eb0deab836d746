//! A connection's subscriptions: subscribe and unsubscribe, the streams a channel starts and
//! stops, whispers and presence.

use super::*;

/// A live subscription of this connection.
pub(super) struct Subscription {
    pub(super) handler: Handler,
    pub(super) streams: Vec<String>,
    /// Where a Rust channel lets `whisper` go (the app's istate `$w` for RPC channels).
    pub(super) whisper: Option<Box<str>>,
    /// Presence: the internal ops stream of the subscription's presence stream, and the id
    /// this connection joined with (boxed: most subscriptions have none).
    pub(super) presence: Option<Box<PresenceState>>,
}

/// A subscription's params (the identifier's keys), parsed again when a channel needs them:
/// kept per subscription they cost ~0.45 KiB in every idle connection (an index map and its
/// `Arc`), and commands are rare next to idle time. The identifier was checked at subscribe.
pub(super) fn params_of(identifier: &Identifier) -> Arc<Map<String, Value>> {
    Arc::new(identifier.params().map(|p| p.params).unwrap_or_default())
}

/// A connection's subscriptions, in a vector: most connections hold one to three, and the
/// smallest hash table costs several times one entry in every idle connection (measured with
/// a map: ~0.4 KiB more per idle subscribed connection). Bounded by `max_subscriptions`.
#[derive(Default)]
pub(super) struct Subscriptions(Vec<(Identifier, Subscription)>);

impl Subscriptions {
    pub(super) fn position(&self, identifier: &Identifier) -> Option<usize> {
        self.0.iter().position(|(i, _)| i == identifier)
    }

    pub(super) fn get(&self, identifier: &Identifier) -> Option<&Subscription> {
        self.position(identifier).map(|i| &self.0[i].1)
    }

    pub(super) fn get_mut(&mut self, identifier: &Identifier) -> Option<&mut Subscription> {
        self.position(identifier).map(|i| &mut self.0[i].1)
    }

    pub(super) fn contains_key(&self, identifier: &Identifier) -> bool {
        self.position(identifier).is_some()
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn insert(&mut self, identifier: Identifier, sub: Subscription) {
        match self.position(&identifier) {
            Some(i) => self.0[i].1 = sub,
            None => {
                // The first one gets room for one, not the vector's usual four.
                if self.0.len() == self.0.capacity() {
                    self.0.reserve_exact(self.0.len().max(1));
                }
                self.0.push((identifier, sub));
            }
        }
    }

    pub(super) fn remove(&mut self, identifier: &Identifier) -> Option<Subscription> {
        let i = self.position(identifier)?;
        let (_, sub) = self.0.swap_remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(sub)
    }

    pub(super) fn drain(&mut self) -> std::vec::Drain<'_, (Identifier, Subscription)> {
        self.0.drain(..)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Identifier, &Subscription)> {
        self.0.iter().map(|(i, s)| (i, s))
    }
}

/// A subscription's presence stream and what this connection joined it as.
pub(super) struct PresenceState {
    pub(super) ops: String,
    pub(super) joined: Option<String>,
}

/// Who serves a subscription.
pub(super) enum Handler {
    /// A Rust channel registered on the node.
    Local(Arc<dyn DynChannel>),
    /// The app behind RPC, with this channel's state (`istate`).
    Remote(State),
}

/// Applies a command's stream effects to one subscription: stops first, then starts; the
/// node subscribes on the bus at a stream's first local subscriber.
pub(super) fn apply_streams(
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
            if streams.is_empty() {
                // Most subscriptions stream from one stream: room for one, not four.
                streams.reserve_exact(1);
            }
            streams.push(start.clone());
        }
    }
}

impl Connection {
    /// Listens to presence stream `stream` for subscription `identifier` (its join and leave
    /// events reach this connection), not joined yet.
    pub(super) fn open_presence(
        &self,
        identifier: &Identifier,
        stream: &str,
    ) -> Box<PresenceState> {
        let ops = crate::presence::ops_stream(stream);
        self.node
            .attach_presence(&ops, self.id, identifier, &self.outbox);
        Box::new(PresenceState { ops, joined: None })
    }

    /// A command named a subscription this connection does not hold.
    pub(super) fn unknown_subscription(&self, identifier: &Identifier, command: &str) {
        warn!(conn = self.id, %identifier, command, "command for unknown subscription");
        self.refuse(
            "unknown_subscription",
            "no subscription with this identifier",
        );
    }

    pub(super) fn reject(&self, identifier: &Identifier) {
        self.node.metrics.rejected_subscriptions.inc();
        self.queue(ServerFrame::RejectSubscription { identifier }.encode());
    }

    pub(super) async fn subscribe(
        &mut self,
        identifier: Identifier,
        history: Option<HistoryRequest>,
    ) {
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
            if self.app.is_some() {
                self.call_remote(
                    CommandKind::Subscribe,
                    identifier,
                    None,
                    State::new(),
                    history,
                );
                return;
            }
            warn!(conn = self.id, channel = %parsed.channel, "subscription rejected: unknown channel");
            self.reject(&identifier);
            return;
        };
        let params = Arc::new(parsed.params);
        let mut ctx = self.channel_context(&identifier, params.clone(), Vec::new());
        channel.subscribed(&mut ctx).await;
        let effects = ctx.into_effects();
        if effects.rejected {
            debug!(conn = self.id, %identifier, "subscription rejected by channel");
            self.transmit_all(&identifier, &effects);
            self.reject(&identifier);
            self.broadcast_all(&effects);
            return;
        }
        // Streams are attached before the confirmation is queued: once the client reads
        // `confirm_subscription`, broadcasts to those streams reach it.
        let sub = self.open_subscription(
            &identifier,
            Handler::Local(channel),
            history.is_some(),
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

    /// A new subscription with its first streams attached; with `gated`, its live frames wait
    /// until the history the client asked for is queued, so they follow it in offset order.
    pub(super) fn open_subscription(
        &mut self,
        identifier: &Identifier,
        handler: Handler,
        gated: bool,
        effects: &Effects,
    ) -> Subscription {
        let mut sub = Subscription {
            handler,
            streams: Vec::new(),
            whisper: effects.whisper.as_deref().map(Into::into),
            presence: effects
                .presence
                .as_deref()
                .map(|stream| self.open_presence(identifier, stream)),
        };
        if gated {
            self.replay()
                .gates
                .insert(identifier.clone(), Instant::now());
        }
        apply_streams(
            &self.node,
            self.id,
            &self.outbox,
            identifier,
            &mut sub.streams,
            effects,
        );
        sub
    }

    pub(super) async fn unsubscribe(&mut self, identifier: Identifier) {
        let Some(sub) = self.subscriptions.remove(&identifier) else {
            self.unknown_subscription(&identifier, "unsubscribe");
            return;
        };
        if let Some(replay) = self.replay.as_mut() {
            replay.forget(&identifier);
        }
        let remote_state = match &sub.handler {
            Handler::Remote(istate) => Some(istate.clone()),
            Handler::Local(_) => None,
        };
        self.end_subscription(identifier.clone(), sub, true).await;
        if let Some(istate) = remote_state {
            // Gone here at once (as anycable-go does); the app runs `unsubscribed` meanwhile.
            self.call_remote(CommandKind::Unsubscribe, identifier, None, istate, None);
        }
        self.commit().await;
    }

    /// Detaches a subscription's streams; a Rust channel's `unsubscribed` runs first. (The
    /// app's channels learn of it from the unsubscribe or disconnect call.)
    pub(super) async fn end_subscription(
        &mut self,
        identifier: Identifier,
        mut sub: Subscription,
        leaving: bool,
    ) {
        if let Some(p) = sub.presence.take() {
            self.node.detach(&p.ops, self.id, &identifier);
            if let Some(id) = &p.joined {
                if leaving {
                    let op = self.node.presence.leave_op(self.id, id);
                    self.node.presence_publish(&p.ops, &op);
                } else {
                    // Gone without leaving: kept for the presence TTL, so a reconnect does
                    // not show as leave + join.
                    self.node.presence.dropped(&p.ops, self.id, id);
                }
            }
        }
        let mut effects = Effects::default();
        if let Handler::Local(channel) = &sub.handler {
            let mut ctx =
                self.channel_context(&identifier, params_of(&identifier), sub.streams.clone());
            channel.unsubscribed(&mut ctx).await;
            effects = ctx.into_effects();
        }
        for stream in sub.streams.drain(..) {
            self.node.detach(&stream, self.id, &identifier);
        }
        self.broadcast_all(&effects);
        self.node.metrics.subscriptions.dec();
    }

    pub(super) async fn unsubscribe_all(&mut self) {
        let subs: Vec<_> = self.subscriptions.drain().collect();
        for (identifier, sub) in subs {
            self.end_subscription(identifier, sub, false).await;
        }
    }

    /// Broadcasts a `whisper`'s data to the subscription's whisper stream: everyone else
    /// subscribed to it gets `{"identifier":…,"message":data}`; never the sender, never stored.
    pub(super) fn whisper(&mut self, identifier: &Identifier, data: String) {
        let Some(sub) = self.subscriptions.get(identifier) else {
            self.unknown_subscription(identifier, "whisper");
            return;
        };
        let stream = match &sub.handler {
            Handler::Local(_) => sub.whisper.as_deref(),
            Handler::Remote(istate) => istate.get("$w").map(String::as_str),
        };
        let Some(stream) = stream else {
            debug!(conn = self.id, %identifier, "whisper refused: not a whispering subscription");
            self.refuse("whisper_not_allowed", "this subscription may not whisper");
            return;
        };
        // The decoder checked `data` is a JSON object.
        let Ok(raw) = serde_json::value::RawValue::from_string(data) else {
            self.refuse("malformed_whisper", "whisper data is not JSON");
            return;
        };
        self.node.metrics.whispers.inc();
        self.node.broadcast_transient(stream, &raw, Some(self.id));
    }

    /// `join`: this connection is present on the subscription's presence stream as `id` (a
    /// connection joins once per subscription: a new id replaces the old).
    pub(super) fn join(&mut self, identifier: &Identifier, id: &str, info: &str) {
        let Some(sub) = self.subscriptions.get_mut(identifier) else {
            self.unknown_subscription(identifier, "join");
            return;
        };
        let Some(presence) = sub.presence.as_mut() else {
            self.refuse(
                "presence_not_allowed",
                "this subscription has no presence stream",
            );
            return;
        };
        let node = &self.node;
        if let Some(old) = presence.joined.take()
            && old != id
        {
            node.presence_publish(&presence.ops, &node.presence.leave_op(self.id, &old));
        }
        match node.presence.join_op(&presence.ops, self.id, id, info) {
            Ok(op) => {
                node.presence_publish(&presence.ops, &op);
                presence.joined = Some(id.to_owned());
            }
            Err(crate::presence::JoinRefused::Full) => {
                node.metrics.limited("presence");
                self.refuse(
                    "presence_limit",
                    "this stream holds the most presence records it may",
                );
            }
        }
    }

    /// An app channel's presence: its stream is istate `$p` (attached the first time it
    /// appears); the app's reply may join or leave the client there.
    pub(super) fn remote_presence(
        &mut self,
        identifier: &Identifier,
        change: Option<crate::remote::PresenceChange>,
    ) {
        let Some(sub) = self.subscriptions.get_mut(identifier) else {
            return;
        };
        let Handler::Remote(istate) = &sub.handler else {
            return;
        };
        if sub.presence.is_none()
            && let Some(stream) = istate.get("$p").filter(|s| !s.is_empty()).cloned()
        {
            let opened = self.open_presence(identifier, &stream);
            if let Some(sub) = self.subscriptions.get_mut(identifier) {
                sub.presence = Some(opened);
            }
        }
        match change {
            Some(c) if c.join => self.join(identifier, &c.id, &c.info),
            Some(_) => self.leave(identifier),
            None => {}
        }
    }

    /// `leave`: this connection is no longer present (nothing if it never joined).
    pub(super) fn leave(&mut self, identifier: &Identifier) {
        let Some(sub) = self.subscriptions.get_mut(identifier) else {
            self.unknown_subscription(identifier, "leave");
            return;
        };
        if let Some(presence) = sub.presence.as_mut()
            && let Some(id) = presence.joined.take()
        {
            let op = self.node.presence.leave_op(self.id, &id);
            self.node.presence_publish(&presence.ops, &op);
        }
    }

    /// `presence`: who is present, as this node sees it, to this subscription only.
    pub(super) fn presence_info(&mut self, identifier: &Identifier) {
        let message = match self.subscriptions.get(identifier) {
            Some(sub) => match &sub.presence {
                Some(p) => self.node.presence.info(&p.ops).get().to_owned(),
                None => r#"{"type":"error"}"#.to_owned(),
            },
            None => {
                self.unknown_subscription(identifier, "presence");
                return;
            }
        };
        self.queue(Bytes::from(format!(
            r#"{{"type":"presence","identifier":{},"message":{message}}}"#,
            ferrocable_protocol::encode_json_string(identifier.as_str())
        )));
    }
}
