//! Resumable sessions (extended protocol): what a connection saves in the broker, and how a
//! reconnecting client gets its identity and subscriptions back.

use super::*;

/// What an extended-protocol session keeps in the broker so that a reconnecting client
/// gets its subscriptions back without authenticating again.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct SessionState {
    pub(super) identity: Identity,
    pub(super) subscriptions: Vec<SavedSubscription>,
    /// The app's side of the connection, when an app behind RPC identified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) app: Option<AppConnection>,
}

/// One subscription of a saved session, as the client will get it back.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct SavedSubscription {
    pub(super) identifier: String,
    pub(super) streams: Vec<String>,
    /// The channel state of a subscription the app serves (`None`: a Rust channel's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) istate: Option<State>,
    /// The whisper stream a Rust channel allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) whisper: Option<String>,
    /// The presence stream a Rust channel allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) presence: Option<String>,
}

/// Looks up the session a reconnecting extended-protocol client names (`X-ANYCABLE-RESTORE-SID`
/// header first, then the `sid` query parameter; empty means none).
pub(super) async fn restore(node: &Inner, request: &ConnectRequest) -> Option<SessionState> {
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

/// Whether `frame` is a `welcome` that names no session.
pub(super) fn is_welcome_without_sid(frame: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Welcome<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        sid: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_str::<Welcome<'_>>(frame)
        .is_ok_and(|w| w.kind.as_deref() == Some("welcome") && w.sid.is_none())
}

impl Connection {
    /// Brings back a saved session: subscriptions and streams without running channel
    /// callbacks (as AnyCable does), then the welcome naming what came back. Live frames of
    /// restored subscriptions wait for the client's `history` request.
    pub(super) async fn resume(&mut self, state: SessionState) {
        let mut restored = Vec::new();
        for saved in state.subscriptions {
            let identifier = Identifier::new(saved.identifier);
            let Ok(parsed) = identifier.params() else {
                continue;
            };
            let handler = match (self.node.channels.get(&parsed.channel), saved.istate) {
                (Some(channel), _) => Handler::Local(channel.clone()),
                (None, Some(istate)) if self.app.is_some() => Handler::Remote(istate),
                (None, _) => continue,
            };
            self.replay()
                .gates
                .insert(identifier.clone(), Instant::now());
            let mut sub = Subscription {
                handler,
                streams: Vec::new(),
                whisper: saved.whisper.map(Into::into),
                presence: None,
            };
            if let Some(stream) = saved.presence {
                sub.presence = Some(self.open_presence(&identifier, &stream));
            }
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
            // An app channel's presence stream comes back with its istate.
            self.remote_presence(&identifier, None);
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
    pub(super) async fn commit(&mut self) {
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
                    istate: match &sub.handler {
                        Handler::Local(_) => None,
                        Handler::Remote(istate) => Some(istate.clone()),
                    },
                    whisper: sub.whisper.as_deref().map(str::to_owned),
                    presence: sub.presence.as_ref().map(|p| {
                        p.ops
                            .strip_prefix(crate::presence::PRESENCE_PREFIX)
                            .unwrap_or(&p.ops)
                            .to_owned()
                    }),
                })
                .collect(),
            app: self.app.as_deref().cloned(),
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
}
