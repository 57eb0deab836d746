//! The channel API for Rust apps.
//!
//! A [`Channel`] is the server side of an ActionCable channel class: `subscribed`,
//! `unsubscribed` and `perform` (actions). It does not touch sockets: it records what it
//! wants in a [`ChannelContext`] (stream from, stop, transmit, reject, broadcast) and the
//! connection applies those [`Effects`] afterwards. So a channel can be tested by calling
//! it with a context and reading the effects.

use std::future::Future;
use std::sync::Arc;

use ferrocable_protocol::Identifier;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::BoxFuture;
use crate::auth::Identity;

/// What a channel asked for while handling one command. Applied by the connection in this
/// order: rejection, streams stopped, streams started, transmissions, broadcasts.
#[derive(Debug, Default)]
pub struct Effects {
    /// Messages to send to this subscription (each becomes a data frame).
    pub transmissions: Vec<Box<RawValue>>,
    /// Streams to attach to this subscription.
    pub stream_from: Vec<String>,
    /// Streams to detach from this subscription.
    pub stop_stream_from: Vec<String>,
    /// Detach every stream of this subscription (applied before `stream_from`).
    pub stop_all_streams: bool,
    /// The subscription is refused (only meaningful in `subscribed`).
    pub rejected: bool,
    /// Messages to broadcast: (stream, JSON message).
    pub broadcasts: Vec<(String, Box<RawValue>)>,
    /// Messages to broadcast without storing them in history (see
    /// [`ChannelContext::broadcast_transient`]).
    pub transient: Vec<(String, Box<RawValue>)>,
    /// The stream this subscription's `whisper` commands go to (see
    /// [`ChannelContext::allow_whisper`]).
    pub whisper: Option<String>,
    /// The presence stream of this subscription (see [`ChannelContext::allow_presence`]).
    pub presence: Option<String>,
}

/// Everything a channel callback can read, and the effects it records.
#[derive(Debug)]
pub struct ChannelContext {
    identifier: Identifier,
    params: Arc<Map<String, Value>>,
    identity: Arc<Identity>,
    streams: Vec<String>,
    effects: Effects,
    node: Option<crate::Node>,
}

impl ChannelContext {
    /// A context for one subscription. `streams` are the streams it is attached to now.
    pub fn new(
        identifier: Identifier,
        params: Arc<Map<String, Value>>,
        identity: Arc<Identity>,
        streams: Vec<String>,
    ) -> Self {
        ChannelContext {
            identifier,
            params,
            identity,
            streams,
            effects: Effects::default(),
            node: None,
        }
    }

    /// The same context, for a subscription running on `node` (the connection sets it; a
    /// test may leave it out).
    pub fn on_node(mut self, node: crate::Node) -> Self {
        self.node = Some(node);
        self
    }

    /// The node the subscription runs on: its metrics, its hub, broadcasts from async work
    /// the channel starts. `None` in a context built without one (tests).
    pub fn node(&self) -> Option<&crate::Node> {
        self.node.as_ref()
    }

    /// The subscription's identifier, as the client sent it.
    pub fn identifier(&self) -> &Identifier {
        &self.identifier
    }

    /// The identifier's params (`channel` included).
    pub fn params(&self) -> &Map<String, Value> {
        &self.params
    }

    /// The connection's identity (`identified_by` attributes).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The identity as shared by the connection (no copy: hand it to async work).
    pub fn shared_identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// Streams the subscription is attached to, before this command's effects.
    pub fn streams(&self) -> &[String] {
        &self.streams
    }

    /// Attaches the subscription to `stream` (Rails' `stream_from`).
    pub fn stream_from(&mut self, stream: impl Into<String>) {
        self.effects.stream_from.push(stream.into());
    }

    /// Detaches the subscription from `stream` (Rails' `stop_stream_from`).
    pub fn stop_stream_from(&mut self, stream: impl Into<String>) {
        self.effects.stop_stream_from.push(stream.into());
    }

    /// Detaches every stream of the subscription.
    pub fn stop_all_streams(&mut self) {
        self.effects.stop_all_streams = true;
    }

    /// Sends `message` to this subscription only.
    pub fn transmit<T: Serialize + ?Sized>(
        &mut self,
        message: &T,
    ) -> Result<(), serde_json::Error> {
        let raw = serde_json::value::to_raw_value(message)?;
        self.effects.transmissions.push(raw);
        Ok(())
    }

    /// Broadcasts `message` to every subscriber of `stream`, on this node and beyond.
    pub fn broadcast<T: Serialize + ?Sized>(
        &mut self,
        stream: impl Into<String>,
        message: &T,
    ) -> Result<(), serde_json::Error> {
        let raw = serde_json::value::to_raw_value(message)?;
        self.effects.broadcasts.push((stream.into(), raw));
        Ok(())
    }

    /// Broadcasts `message` like [`ChannelContext::broadcast`], but stores nothing in history:
    /// for messages meant for one client (a reply on its own stream) that no one needs
    /// replayed, so a node keeps no history per client.
    pub fn broadcast_transient<T: Serialize + ?Sized>(
        &mut self,
        stream: impl Into<String>,
        message: &T,
    ) -> Result<(), serde_json::Error> {
        let raw = serde_json::value::to_raw_value(message)?;
        self.effects.transient.push((stream.into(), raw));
        Ok(())
    }

    /// Lets this subscription whisper: its clients' `whisper` commands (typing indicators,
    /// cursors) are broadcast to `stream` for everyone else subscribed to it, never back to
    /// the sender and never stored in history (AnyCable's istate `$w`).
    pub fn allow_whisper(&mut self, stream: impl Into<String>) {
        self.effects.whisper = Some(stream.into());
    }

    /// Gives this subscription a presence stream: its clients may `join` (one record per
    /// presence id, across tabs and nodes), `leave` and ask who is `presence`; every
    /// subscriber gets the join and leave events (AnyCable's istate `$p`).
    pub fn allow_presence(&mut self, stream: impl Into<String>) {
        self.effects.presence = Some(stream.into());
    }

    /// Refuses the subscription (Rails' `reject`); the client gets `reject_subscription`.
    pub fn reject(&mut self) {
        self.effects.rejected = true;
    }

    /// The effects recorded so far.
    pub fn effects(&self) -> &Effects {
        &self.effects
    }

    /// Ends the command and hands over its effects.
    pub fn into_effects(self) -> Effects {
        self.effects
    }
}

/// Why an action failed. The connection logs it, counts it, answers the client with an
/// `error` frame, and stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PerformError {
    /// The channel has no such action.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    /// The action's input was not what it needs.
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// The action failed.
    #[error("action failed: {0}")]
    Failed(String),
}

/// The server side of a channel class. One value serves every subscription to the channel;
/// per-subscription data lives in the identifier's params.
pub trait Channel: Send + Sync + 'static {
    /// A client subscribed: attach streams, transmit, or reject.
    fn subscribed(&self, ctx: &mut ChannelContext) -> impl Future<Output = ()> + Send;

    /// The client unsubscribed or disconnected. Streams are detached afterwards anyway.
    fn unsubscribed(&self, ctx: &mut ChannelContext) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }

    /// The client performed `action` with `data` (the decoded `data` object, `action` key
    /// included). Without an `action` key, `action` is `"receive"`. A channel with no actions
    /// (one that only streams) leaves it out: every action is then unknown.
    fn perform(
        &self,
        ctx: &mut ChannelContext,
        action: &str,
        data: Value,
    ) -> impl Future<Output = Result<(), PerformError>> + Send {
        let _ = (ctx, data);
        let action = action.to_owned();
        async move { Err(PerformError::UnknownAction(action)) }
    }
}

/// Object-safe form of [`Channel`], so a registry can hold different channel types.
pub(crate) trait DynChannel: Send + Sync {
    fn subscribed<'a>(&'a self, ctx: &'a mut ChannelContext) -> BoxFuture<'a, ()>;
    fn unsubscribed<'a>(&'a self, ctx: &'a mut ChannelContext) -> BoxFuture<'a, ()>;
    fn perform<'a>(
        &'a self,
        ctx: &'a mut ChannelContext,
        action: &'a str,
        data: Value,
    ) -> BoxFuture<'a, Result<(), PerformError>>;
}

impl<C: Channel> DynChannel for C {
    fn subscribed<'a>(&'a self, ctx: &'a mut ChannelContext) -> BoxFuture<'a, ()> {
        Box::pin(Channel::subscribed(self, ctx))
    }
    fn unsubscribed<'a>(&'a self, ctx: &'a mut ChannelContext) -> BoxFuture<'a, ()> {
        Box::pin(Channel::unsubscribed(self, ctx))
    }
    fn perform<'a>(
        &'a self,
        ctx: &'a mut ChannelContext,
        action: &'a str,
        data: Value,
    ) -> BoxFuture<'a, Result<(), PerformError>> {
        Box::pin(Channel::perform(self, ctx, action, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chat;

    impl Channel for Chat {
        async fn subscribed(&self, ctx: &mut ChannelContext) {
            match ctx.params().get("room").and_then(Value::as_i64) {
                Some(room) => ctx.stream_from(format!("chat_{room}")),
                None => ctx.reject(),
            }
        }

        async fn perform(
            &self,
            ctx: &mut ChannelContext,
            action: &str,
            data: Value,
        ) -> Result<(), PerformError> {
            match action {
                "speak" => {
                    let room = ctx.params()["room"].clone();
                    ctx.broadcast(
                        format!("chat_{room}"),
                        &serde_json::json!({"text": data["text"]}),
                    )
                    .map_err(|e| PerformError::Failed(e.to_string()))
                }
                "whoami" => ctx
                    .transmit(&serde_json::json!({"user": ctx.identity().get("user")}))
                    .map_err(|e| PerformError::Failed(e.to_string())),
                other => Err(PerformError::UnknownAction(other.into())),
            }
        }
    }

    fn ctx(identifier: &str) -> ChannelContext {
        let id = Identifier::new(identifier);
        let params = Arc::new(id.params().unwrap().params);
        ChannelContext::new(
            id,
            params,
            Arc::new(Identity::anonymous().with("user", "u1")),
            vec![],
        )
    }

    #[tokio::test]
    async fn channels_are_testable_without_sockets() {
        let mut c = ctx(r#"{"channel":"Chat","room":5}"#);
        Channel::subscribed(&Chat, &mut c).await;
        assert_eq!(c.effects().stream_from, vec!["chat_5"]);
        assert!(!c.effects().rejected);

        let mut c = ctx(r#"{"channel":"Chat"}"#);
        Channel::subscribed(&Chat, &mut c).await;
        assert!(c.into_effects().rejected);

        let mut c = ctx(r#"{"channel":"Chat","room":5}"#);
        Channel::perform(&Chat, &mut c, "speak", serde_json::json!({"text":"hi"}))
            .await
            .unwrap();
        Channel::perform(&Chat, &mut c, "whoami", Value::Null)
            .await
            .unwrap();
        let fx = c.into_effects();
        assert_eq!(fx.broadcasts[0].0, "chat_5");
        assert_eq!(fx.broadcasts[0].1.get(), r#"{"text":"hi"}"#);
        assert_eq!(fx.transmissions[0].get(), r#"{"user":"u1"}"#);

        let mut c = ctx(r#"{"channel":"Chat","room":5}"#);
        assert_eq!(
            Channel::perform(&Chat, &mut c, "dance", Value::Null).await,
            Err(PerformError::UnknownAction("dance".into()))
        );
    }
}
