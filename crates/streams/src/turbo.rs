//! Turbo Streams over the cable, as turbo-rails and AnyCable serve them.
//!
//! A page carries `<turbo-cable-stream-source channel="Turbo::StreamsChannel"
//! signed-stream-name="…">` ([`turbo_stream_from`]); the element subscribes with
//! `{"channel":"Turbo::StreamsChannel","signed_stream_name":…}`, which
//! [`TurboStreamsChannel`] verifies with the Turbo key (`ANYCABLE_TURBO_STREAMS_SECRET`, the
//! Rails app's `config.turbo.signed_stream_verifier_key`). Broadcasts are plain HTML strings
//! of `<turbo-stream>` elements ([`TurboStream`], [`broadcast_turbo_streams`]).

use ferrocable_node::{BroadcastReport, Channel, ChannelContext, Node};
use serde_json::Value;
use tracing::debug;

use crate::MessageVerifier;

/// The channel name `<turbo-cable-stream-source>` subscribes with.
pub const TURBO_STREAMS_CHANNEL: &str = "Turbo::StreamsChannel";

/// `Turbo::StreamsChannel`: subscriptions by a name signed with the Turbo key.
#[derive(Debug, Clone)]
pub struct TurboStreamsChannel {
    verifier: MessageVerifier,
}

impl TurboStreamsChannel {
    /// Verifies names with `verifier` (keyed with the Turbo secret).
    pub fn new(verifier: MessageVerifier) -> Self {
        TurboStreamsChannel { verifier }
    }
}

impl Channel for TurboStreamsChannel {
    async fn subscribed(&self, ctx: &mut ChannelContext) {
        // Other params (the element's snakeized data-* attributes) are allowed and ignored.
        let verified = match ctx.params().get("signed_stream_name") {
            Some(Value::String(s)) => self.verifier.verify(s),
            _ => Err(crate::VerifyError::Malformed),
        };
        match verified {
            Ok(stream) => ctx.stream_from(stream),
            Err(e) => {
                debug!(error = %e, "Turbo::StreamsChannel subscription rejected");
                ctx.reject();
            }
        }
    }
}

/// The stream name turbo-rails derives from streamables: their params joined by `:` (a
/// record's is its GlobalID, `gid://app/Message/1`).
pub fn stream_name_from(streamables: &[&str]) -> String {
    streamables.join(":")
}

/// The `<turbo-cable-stream-source>` tag that subscribes a page to `streamables` (what
/// turbo-rails' `turbo_stream_from` writes), signed with `verifier`.
pub fn turbo_stream_from(verifier: &MessageVerifier, streamables: &[&str]) -> String {
    let signed = verifier.generate(&stream_name_from(streamables));
    format!(
        r#"<turbo-cable-stream-source channel="{TURBO_STREAMS_CHANNEL}" signed-stream-name="{}"></turbo-cable-stream-source>"#,
        escape_attr(&signed)
    )
}

/// The actions of a `<turbo-stream>` element (Turbo 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurboAction {
    /// Append the template to the target's children.
    Append,
    /// Prepend the template to the target's children.
    Prepend,
    /// Replace the target with the template.
    Replace,
    /// Replace the target's children with the template.
    Update,
    /// Remove the target.
    Remove,
    /// Insert the template before the target.
    Before,
    /// Insert the template after the target.
    After,
    /// Reload the page (Turbo 8 morphing refresh); no target.
    Refresh,
}

impl TurboAction {
    /// The `action` attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            TurboAction::Append => "append",
            TurboAction::Prepend => "prepend",
            TurboAction::Replace => "replace",
            TurboAction::Update => "update",
            TurboAction::Remove => "remove",
            TurboAction::Before => "before",
            TurboAction::After => "after",
            TurboAction::Refresh => "refresh",
        }
    }
}

/// One `<turbo-stream>` element: an action on a target (an element id) or on `targets` (a
/// CSS selector), with HTML content for the actions that insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurboStream {
    action: TurboAction,
    target: Option<String>,
    targets: Option<String>,
    html: Option<String>,
}

impl TurboStream {
    fn with(action: TurboAction, target: &str, html: Option<&str>) -> Self {
        TurboStream {
            action,
            target: Some(target.to_owned()),
            targets: None,
            html: html.map(str::to_owned),
        }
    }

    /// Appends `html` to the element with id `target`.
    pub fn append(target: &str, html: &str) -> Self {
        Self::with(TurboAction::Append, target, Some(html))
    }
    /// Prepends `html` to the element with id `target`.
    pub fn prepend(target: &str, html: &str) -> Self {
        Self::with(TurboAction::Prepend, target, Some(html))
    }
    /// Replaces the element with id `target` by `html`.
    pub fn replace(target: &str, html: &str) -> Self {
        Self::with(TurboAction::Replace, target, Some(html))
    }
    /// Replaces the children of the element with id `target` by `html`.
    pub fn update(target: &str, html: &str) -> Self {
        Self::with(TurboAction::Update, target, Some(html))
    }
    /// Removes the element with id `target`.
    pub fn remove(target: &str) -> Self {
        Self::with(TurboAction::Remove, target, None)
    }
    /// Inserts `html` before the element with id `target`.
    pub fn before(target: &str, html: &str) -> Self {
        Self::with(TurboAction::Before, target, Some(html))
    }
    /// Inserts `html` after the element with id `target`.
    pub fn after(target: &str, html: &str) -> Self {
        Self::with(TurboAction::After, target, Some(html))
    }
    /// Asks every page on the stream to refresh itself (Turbo 8).
    pub fn refresh() -> Self {
        TurboStream {
            action: TurboAction::Refresh,
            target: None,
            targets: None,
            html: None,
        }
    }

    /// The same action on every element matching the CSS `selector` instead of one id.
    pub fn on_all(mut self, selector: &str) -> Self {
        if self.action != TurboAction::Refresh {
            self.target = None;
            self.targets = Some(selector.to_owned());
        }
        self
    }

    /// The element's HTML, as turbo-rails renders it. `html` goes into the `<template>` as
    /// given: it is the app's markup, escaped by the app.
    pub fn to_html(&self) -> String {
        let mut out = format!(r#"<turbo-stream action="{}""#, self.action.as_str());
        if let Some(t) = &self.target {
            out.push_str(&format!(r#" target="{}""#, escape_attr(t)));
        }
        if let Some(t) = &self.targets {
            out.push_str(&format!(r#" targets="{}""#, escape_attr(t)));
        }
        out.push('>');
        if let Some(html) = &self.html {
            out.push_str("<template>");
            out.push_str(html);
            out.push_str("</template>");
        }
        out.push_str("</turbo-stream>");
        out
    }
}

/// Broadcasts `streams` to every `Turbo::StreamsChannel` subscriber of the stream named by
/// `streamables` (on every node), from anywhere: a handler, a channel, a background task.
pub fn broadcast_turbo_streams(
    node: &Node,
    streamables: &[&str],
    streams: &[TurboStream],
) -> BroadcastReport {
    let html: String = streams.iter().map(TurboStream::to_html).collect();
    let json = Value::String(html).to_string();
    // A JSON string is always valid JSON.
    node.broadcast(&stream_name_from(streamables), &json)
        .unwrap_or_default()
}

fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ferrocable_node::Identity;
    use ferrocable_protocol::Identifier;
    use serde_json::json;

    use super::*;

    #[test]
    fn the_tag_carries_a_name_signed_for_the_streamables() {
        let v = MessageVerifier::new("turbo key");
        let tag = turbo_stream_from(&v, &["gid://app/Room/1", "messages"]);
        let signed = tag
            .split(r#"signed-stream-name=""#)
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap();
        assert!(tag.starts_with(
            r#"<turbo-cable-stream-source channel="Turbo::StreamsChannel" signed-stream-name=""#
        ));
        assert_eq!(v.verify(signed).as_deref(), Ok("gid://app/Room/1:messages"));
    }

    #[test]
    fn actions_render_as_turbo_rails_renders_them() {
        assert_eq!(
            TurboStream::append("messages", "<p>hi</p>").to_html(),
            r#"<turbo-stream action="append" target="messages"><template><p>hi</p></template></turbo-stream>"#
        );
        assert_eq!(
            TurboStream::remove("message_1").to_html(),
            r#"<turbo-stream action="remove" target="message_1"></turbo-stream>"#
        );
        assert_eq!(
            TurboStream::update("x", "1").on_all(".count").to_html(),
            r#"<turbo-stream action="update" targets=".count"><template>1</template></turbo-stream>"#
        );
        assert_eq!(
            TurboStream::refresh().to_html(),
            r#"<turbo-stream action="refresh"></turbo-stream>"#
        );
        assert_eq!(
            TurboStream::replace(r#"a"b"#, "").to_html(),
            r#"<turbo-stream action="replace" target="a&quot;b"><template></template></turbo-stream>"#
        );
        for (s, action) in [
            (TurboStream::prepend("t", ""), "prepend"),
            (TurboStream::before("t", ""), "before"),
            (TurboStream::after("t", ""), "after"),
        ] {
            assert!(
                s.to_html()
                    .starts_with(&format!(r#"<turbo-stream action="{action}""#))
            );
        }
    }

    #[tokio::test]
    async fn the_channel_subscribes_signed_names_and_rejects_others() {
        let v = MessageVerifier::new("turbo key");
        let channel = TurboStreamsChannel::new(v.clone());
        let run = |params: Value| {
            let channel = channel.clone();
            async move {
                let id = Identifier::new(params.to_string());
                let p = id.params().unwrap().params;
                let mut ctx = ChannelContext::new(
                    id,
                    Arc::new(p),
                    Arc::new(Identity::anonymous()),
                    Vec::new(),
                );
                channel.subscribed(&mut ctx).await;
                ctx.into_effects()
            }
        };
        let ok = run(json!({"channel": TURBO_STREAMS_CHANNEL, "signed_stream_name": v.generate("room:1"), "extra": "x"})).await;
        assert!(!ok.rejected);
        assert_eq!(ok.stream_from, ["room:1"]);
        let forged = MessageVerifier::new("app secret").generate("room:1");
        for params in [
            json!({"channel": TURBO_STREAMS_CHANNEL, "signed_stream_name": forged}),
            json!({"channel": TURBO_STREAMS_CHANNEL}),
            json!({"channel": TURBO_STREAMS_CHANNEL, "signed_stream_name": ["room:1"]}),
        ] {
            let e = run(params.clone()).await;
            assert!(e.rejected && e.stream_from.is_empty(), "{params}");
        }
    }
}
