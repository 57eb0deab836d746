//! The `$pubsub` channel: a page subscribes to a stream by name, with no channel class in the
//! app. `{"channel":"$pubsub","signed_stream_name":"<signed>"}` subscribes to the stream the
//! name was signed for ([`MessageVerifier`]); `{"channel":"$pubsub","stream_name":"x"}` only
//! when public streams are on (`ANYCABLE_PUBLIC_STREAMS`). Public streams may always whisper;
//! signed ones only with `ANYCABLE_STREAMS_WHISPER`, as in AnyCable.

use ferrocable_node::{Channel, ChannelContext};
use serde_json::Value;
use tracing::debug;

use crate::MessageVerifier;

/// The channel name pages subscribe with (`$pubsub`, as AnyCable names it).
pub const PUBSUB_CHANNEL: &str = "$pubsub";

/// The `$pubsub` channel (see the module docs).
#[derive(Debug, Clone)]
pub struct PubSubChannel {
    verifier: MessageVerifier,
    public: bool,
    whisper_signed: bool,
    presence_signed: bool,
}

impl PubSubChannel {
    /// Signed streams verified with `verifier`; no public streams, no whisper on signed ones.
    pub fn new(verifier: MessageVerifier) -> Self {
        PubSubChannel {
            verifier,
            public: false,
            whisper_signed: false,
            presence_signed: true,
        }
    }

    /// Also accept unsigned `stream_name` subscriptions (`ANYCABLE_PUBLIC_STREAMS=true`).
    pub fn public_streams(mut self, on: bool) -> Self {
        self.public = on;
        self
    }

    /// Give signed streams presence (`ANYCABLE_STREAMS_PRESENCE`, on by default; public streams
    /// always have it).
    pub fn presence_on_signed(mut self, on: bool) -> Self {
        self.presence_signed = on;
        self
    }

    /// Let signed-stream subscribers whisper (`ANYCABLE_STREAMS_WHISPER=true`).
    pub fn whisper_on_signed(mut self, on: bool) -> Self {
        self.whisper_signed = on;
        self
    }
}

impl Channel for PubSubChannel {
    async fn subscribed(&self, ctx: &mut ChannelContext) {
        let params = ctx.params();
        if let Some(signed) = params.get("signed_stream_name") {
            let verified = signed
                .as_str()
                .ok_or(crate::VerifyError::Malformed)
                .and_then(|s| self.verifier.verify(s));
            match verified {
                Ok(stream) => {
                    if self.whisper_signed {
                        ctx.allow_whisper(stream.clone());
                    }
                    if self.presence_signed {
                        ctx.allow_presence(stream.clone());
                    }
                    ctx.stream_from(stream);
                }
                Err(e) => {
                    debug!(error = %e, "$pubsub subscription rejected");
                    ctx.reject();
                }
            }
        } else if let Some(Value::String(stream)) = params.get("stream_name") {
            // `$presence:` names carry presence ops between nodes, never a client's stream.
            if self.public && !stream.is_empty() && !stream.starts_with("$presence:") {
                let stream = stream.clone();
                ctx.allow_whisper(stream.clone());
                ctx.allow_presence(stream.clone());
                ctx.stream_from(stream);
            } else {
                debug!("$pubsub subscription rejected: public streams are off");
                ctx.reject();
            }
        } else {
            ctx.reject();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ferrocable_node::Identity;
    use ferrocable_protocol::Identifier;
    use serde_json::json;

    use super::*;

    async fn subscribe(channel: &PubSubChannel, identifier: Value) -> ChannelContext {
        let id = Identifier::new(identifier.to_string());
        let params = id.params().unwrap().params;
        let mut ctx = ChannelContext::new(
            id,
            Arc::new(params),
            Arc::new(Identity::anonymous()),
            Vec::new(),
        );
        channel.subscribed(&mut ctx).await;
        ctx
    }

    #[tokio::test]
    async fn signed_streams_subscribe_and_forged_ones_are_rejected() {
        let v = MessageVerifier::new("streams secret");
        let channel = PubSubChannel::new(v.clone());
        let ctx = subscribe(
            &channel,
            json!({"channel": "$pubsub", "signed_stream_name": v.generate("chat:1")}),
        )
        .await;
        assert!(!ctx.effects().rejected);
        assert_eq!(ctx.effects().stream_from, ["chat:1"]);
        assert_eq!(
            ctx.effects().whisper,
            None,
            "no whisper on signed streams by default"
        );

        let foreign = MessageVerifier::new("other").generate("chat:1");
        for params in [
            json!({"channel": "$pubsub", "signed_stream_name": foreign}),
            json!({"channel": "$pubsub", "signed_stream_name": 42}),
            json!({"channel": "$pubsub", "stream_name": "chat:1"}),
            json!({"channel": "$pubsub"}),
        ] {
            let ctx = subscribe(&channel, params.clone()).await;
            assert!(ctx.effects().rejected, "{params}");
            assert!(ctx.effects().stream_from.is_empty(), "{params}");
        }
    }

    #[tokio::test]
    async fn public_streams_and_whisper_follow_the_settings() {
        let v = MessageVerifier::new("s");
        let channel = PubSubChannel::new(v.clone())
            .public_streams(true)
            .whisper_on_signed(true);
        let ctx = subscribe(
            &channel,
            json!({"channel": "$pubsub", "stream_name": "lobby"}),
        )
        .await;
        assert_eq!(ctx.effects().stream_from, ["lobby"]);
        assert_eq!(ctx.effects().whisper.as_deref(), Some("lobby"));
        let ctx = subscribe(
            &channel,
            json!({"channel": "$pubsub", "signed_stream_name": v.generate("room")}),
        )
        .await;
        assert_eq!(ctx.effects().whisper.as_deref(), Some("room"));
        let ctx = subscribe(&channel, json!({"channel": "$pubsub", "stream_name": ""})).await;
        assert!(ctx.effects().rejected);
    }
}
