//! A connection whose channels an app behind RPC serves (`RemoteApp`): its connect call, its
//! commands run beside the write loop, and its disconnect call.

use super::*;

/// What a connection identified by an app behind RPC keeps for its later calls: the app's
/// identifiers, the request the app sees on every call, and the connection state.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct AppConnection {
    pub(super) identifiers: Arc<str>,
    pub(super) env: Arc<Env>,
    pub(super) cstate: State,
}

/// A command the app ran, and its answer.
pub(super) struct RemoteDone {
    pub(super) kind: CommandKind,
    pub(super) identifier: Identifier,
    pub(super) result: Result<CommandReply, CallError>,
    /// The history the client asked for with its subscribe.
    pub(super) history: Option<HistoryRequest>,
}

/// How the app answered a new connection.
pub(super) enum RemoteConnect {
    /// Identified: the identity, the app's side of the connection, the app's frames (the
    /// welcome).
    Accepted(Identity, Box<AppConnection>, Vec<String>),
    /// Rejected, with the app's frames for the client (its `disconnect`).
    Refused(Vec<Bytes>),
    /// The app failed or could not be reached: close with 1011.
    Failed,
}

/// Asks the app behind RPC who a new connection is.
pub(super) async fn connect_remote(
    node: &Inner,
    request: &ConnectRequest,
    sid: Option<&str>,
) -> RemoteConnect {
    let Some(remote) = node.remote.as_ref() else {
        return RemoteConnect::Failed;
    };
    let env = Arc::new(remote.env(request));
    let call = ConnectCall {
        env: env.clone(),
        sid: sid.map(str::to_owned),
    };
    match remote.connect(call).await {
        Ok(reply) => match reply.status {
            Status::Success => {
                let mut identity = Identity {
                    identifiers: identifiers_of(&reply.identifiers),
                    session: None,
                };
                if let Some(session_of) = &node.session_of {
                    identity.session = session_of(request);
                }
                let mut cstate = State::new();
                merge_state(&mut cstate, reply.cstate);
                let app = AppConnection {
                    identifiers: Arc::from(reply.identifiers),
                    env,
                    cstate,
                };
                RemoteConnect::Accepted(identity, Box::new(app), reply.transmissions)
            }
            Status::Failure => {
                RemoteConnect::Refused(reply.transmissions.into_iter().map(Bytes::from).collect())
            }
            Status::Error => {
                warn!(error = ?reply.error, "the app failed to connect a client");
                RemoteConnect::Failed
            }
        },
        Err(e) => {
            warn!(error = %e, "connect call to the app failed");
            RemoteConnect::Failed
        }
    }
}

impl Connection {
    /// Queues the app's frames for a new connection; an extended-protocol welcome without a
    /// `sid` gets the connection's, so `@anycable/web` restores sessions in RPC mode too (the
    /// Rails-mounted RPC never sends one).
    pub(super) fn welcome_from_app(&mut self, frames: Vec<String>) {
        for frame in frames {
            match &self.sid {
                Some(sid) if is_welcome_without_sid(&frame) => {
                    let welcome = ServerFrame::WelcomeSession {
                        sid,
                        restored_ids: None,
                    }
                    .encode();
                    self.queue(welcome);
                }
                _ => self.queue(Bytes::from(frame)),
            }
        }
    }

    /// Starts a command on the app; [`Connection::finish_remote`] applies its reply.
    pub(super) fn call_remote(
        &mut self,
        kind: CommandKind,
        identifier: Identifier,
        data: Option<String>,
        istate: State,
        history: Option<HistoryRequest>,
    ) {
        let (Some(remote), Some(app)) = (self.node.remote.clone(), self.app.as_deref()) else {
            return;
        };
        let call = CommandCall {
            kind,
            identifier: identifier.as_str().to_owned(),
            identifiers: app.identifiers.clone(),
            data,
            env: app.env.clone(),
            cstate: app.cstate.clone(),
            istate,
            sid: self.sid.as_deref().map(str::to_owned),
        };
        self.running_remote = true;
        self.running = Some(Box::pin(async move {
            let result = remote.command(call).await;
            Finished::Remote(Box::new(RemoteDone {
                kind,
                identifier,
                result,
                history,
            }))
        }));
    }

    /// Applies the app's reply in anycable-go's order: streams stopped, streams added,
    /// channel state, connection state, transmissions (verbatim), then the close it asked for.
    pub(super) async fn finish_remote(&mut self, done: Box<RemoteDone>) {
        let RemoteDone {
            kind,
            identifier,
            result,
            history,
        } = *done;
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                warn!(conn = self.id, %identifier, command = kind.as_str(), error = %e, "call to the app failed");
                match kind {
                    CommandKind::Subscribe => self.reject(&identifier),
                    CommandKind::Message => self.refuse("rpc_error", &e.to_string()),
                    CommandKind::Unsubscribe => {}
                }
                return;
            }
        };
        let effects = Effects {
            stream_from: reply.streams,
            stop_stream_from: if reply.stop_streams {
                Vec::new()
            } else {
                reply.stopped_streams
            },
            stop_all_streams: reply.stop_streams,
            ..Effects::default()
        };
        let success = reply.status == Status::Success;
        let mut confirmed = false;
        match kind {
            CommandKind::Subscribe if success && !self.subscriptions.contains_key(&identifier) => {
                let mut sub = self.open_subscription(
                    &identifier,
                    Handler::Remote(State::new()),
                    history.is_some(),
                    &effects,
                );
                if let Handler::Remote(istate) = &mut sub.handler {
                    merge_state(istate, reply.istate);
                }
                self.subscriptions.insert(identifier.clone(), sub);
                self.node.metrics.subscriptions.inc();
                confirmed = true;
            }
            CommandKind::Subscribe | CommandKind::Unsubscribe => {}
            CommandKind::Message => {
                if let Some(sub) = self.subscriptions.get_mut(&identifier) {
                    apply_streams(
                        &self.node,
                        self.id,
                        &self.outbox,
                        &identifier,
                        &mut sub.streams,
                        &effects,
                    );
                    if let Handler::Remote(istate) = &mut sub.handler {
                        merge_state(istate, reply.istate);
                    }
                }
            }
        }
        if let Some(app) = self.app.as_mut() {
            merge_state(&mut app.cstate, reply.cstate);
        }
        let transmitted = !reply.transmissions.is_empty();
        for frame in reply.transmissions {
            self.queue(Bytes::from(frame));
        }
        if success {
            // After the confirmation: the presence stream (istate `$p`), then the app's change.
            self.remote_presence(&identifier, reply.presence);
        }
        if !success {
            warn!(conn = self.id, %identifier, command = kind.as_str(), status = ?reply.status, error = ?reply.error, "the app refused a command");
            match kind {
                CommandKind::Subscribe if transmitted => {
                    self.node.metrics.rejected_subscriptions.inc();
                }
                CommandKind::Subscribe => self.reject(&identifier),
                CommandKind::Message => {
                    let message = reply.error.as_deref().unwrap_or("the action failed");
                    self.refuse("action_failed", message);
                }
                CommandKind::Unsubscribe => {}
            }
        }
        if confirmed && let Some(history) = history {
            self.history(identifier, history).await;
        }
        self.commit().await;
        if reply.disconnect {
            self.outbox.request_disconnect(DisconnectReason::Remote);
        }
    }

    /// Tells the app the connection ended, with the subscriptions it served and their state
    /// (Rails runs `unsubscribed` for each, then `disconnect`).
    pub(super) fn disconnect_remote(&self) {
        let (Some(remote), Some(app)) = (self.node.remote.as_ref(), self.app.as_deref()) else {
            return;
        };
        let mut subscriptions = Vec::new();
        let mut istate = State::new();
        for (identifier, sub) in self.subscriptions.iter() {
            if let Handler::Remote(state) = &sub.handler {
                subscriptions.push(identifier.as_str().to_owned());
                if !state.is_empty() {
                    let encoded = serde_json::to_string(state).unwrap_or_default();
                    istate.insert(identifier.as_str().to_owned(), encoded);
                }
            }
        }
        remote.disconnect(DisconnectCall {
            identifiers: app.identifiers.clone(),
            subscriptions,
            env: app.env.clone(),
            cstate: app.cstate.clone(),
            istate,
            sid: self.sid.as_deref().map(str::to_owned),
        });
    }
}
