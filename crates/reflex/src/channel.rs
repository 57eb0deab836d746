//! The two channels the browser packages subscribe to: `StimulusReflex::Channel` (reflexes and
//! their replies) and `CableReady::Stream` (server-initiated operations on signed streams).

use std::sync::Arc;

use ferrocable_node::{Channel, ChannelContext, PerformError};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::dispatch::{PageRenderer, dispatch};
use crate::ledger::{Begin, ReflexLedger};
use crate::ops::Envelope;
use crate::registry::Registry;
use crate::signed::StreamSigner;

/// The stream a session's reflex replies go to: per session, never shared across users. All
/// tabs of the session subscribe to it.
pub fn reply_stream(session_id: &str) -> String {
    format!("{}:{session_id}", crate::CHANNEL)
}

/// `StimulusReflex::Channel`.
pub struct ReflexChannel {
    registry: Arc<Registry>,
    host: Arc<dyn PageRenderer>,
    max_form_bytes: usize,
    ledger: ReflexLedger,
}

impl ReflexChannel {
    /// A channel running reflexes from `registry` against `host`.
    pub fn new(registry: Registry, host: Arc<dyn PageRenderer>) -> Self {
        ReflexChannel {
            registry: Arc::new(registry),
            host,
            max_form_bytes: 32 * 1024,
            ledger: ReflexLedger::default(),
        }
    }

    /// How long, how many and how many bytes of reflex ids and replies are remembered for
    /// de-duplication (default 120 s, 100,000 ids, 16 MiB).
    pub fn idempotency_window(
        mut self,
        window: std::time::Duration,
        max_ids: usize,
        max_bytes: usize,
    ) -> Self {
        self.ledger = ReflexLedger::new(window, max_ids).max_bytes(max_bytes);
        self
    }

    /// Largest `formData` accepted (default 32 KiB); larger reflexes get `morph-error`.
    pub fn max_form_bytes(mut self, bytes: usize) -> Self {
        self.max_form_bytes = bytes;
        self
    }
}

/// Encodes a reply once and sends it; the encoded reply is what the idempotency ledger keeps.
fn deliver(ctx: &mut ChannelContext, envelope: &Envelope) -> Result<Box<RawValue>, PerformError> {
    let raw = serde_json::value::to_raw_value(&envelope.to_value())
        .map_err(|e| PerformError::Failed(e.to_string()))?;
    deliver_value(ctx, &raw)?;
    Ok(raw)
}

fn deliver_value(ctx: &mut ChannelContext, value: &RawValue) -> Result<(), PerformError> {
    // Replies go to every tab of the session, and are never stored: a reflex whose reply is
    // lost is re-sent by the client with the same id and answered from the ledger.
    let result = match ctx.identity().session_id().map(reply_stream) {
        Some(stream) => ctx.broadcast_transient(stream, value),
        None => ctx.transmit(value),
    };
    result.map_err(|e| PerformError::Failed(e.to_string()))
}

/// Reflex ids longer than this are not remembered (clients send UUIDs; a longer id is no
/// reason to keep kilobytes per reflex).
const MAX_LEDGER_ID: usize = 128;

/// The idempotency key of a reflex: its session and its id (none without either, or for an
/// oversized id).
fn ledger_key(ctx: &ChannelContext, data: &Value) -> Option<String> {
    let session = ctx.identity().session_id()?;
    let id = data
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| id.len() <= MAX_LEDGER_ID)?;
    Some(format!("{session}:{id}"))
}

impl Channel for ReflexChannel {
    async fn subscribed(&self, ctx: &mut ChannelContext) {
        if let Some(stream) = ctx.identity().session_id().map(reply_stream) {
            ctx.stream_from(stream);
        }
    }

    async fn perform(
        &self,
        ctx: &mut ChannelContext,
        action: &str,
        data: Value,
    ) -> Result<(), PerformError> {
        if action != "receive" {
            return Err(PerformError::UnknownAction(action.to_owned()));
        }
        let key = ledger_key(ctx, &data);
        if let Some(key) = &key {
            match self.ledger.begin(key) {
                Begin::Run => {}
                Begin::Running => {
                    tracing::debug!(%key, "duplicate reflex while it runs: dropped");
                    return Ok(());
                }
                Begin::Done(replies) => {
                    tracing::debug!(%key, "duplicate reflex: replies re-sent, not run again");
                    for reply in &replies {
                        deliver_value(ctx, reply)?;
                    }
                    return Ok(());
                }
            }
        }
        let identity = ctx.shared_identity().clone();
        let started = std::time::Instant::now();
        let out = dispatch(
            &self.registry,
            self.host.as_ref(),
            identity,
            ctx.node(),
            data,
            self.max_form_bytes,
        )
        .await;
        if let Some(node) = ctx.node() {
            node.metrics().reflex_ran(started.elapsed());
        }
        let mut replies = Vec::new();
        if let Some(now) = &out.immediate {
            replies.push(deliver(ctx, now)?);
        }
        for (stream, envelope) in &out.broadcasts {
            ctx.broadcast(stream.clone(), &envelope.to_value())
                .map_err(|e| PerformError::Failed(e.to_string()))?;
        }
        match &out.reply {
            Some(reply) => {
                replies.push(deliver(ctx, reply)?);
                if let Some(key) = &key {
                    self.ledger.finish(key, replies);
                }
                Ok(())
            }
            None => {
                if let Some(key) = &key {
                    self.ledger.forget(key);
                }
                Err(PerformError::InvalidData(
                    out.error.unwrap_or_else(|| "invalid reflex".into()),
                ))
            }
        }
    }
}

/// `CableReady::Stream`: subscribes to the stream named by a signed `identifier`, or rejects.
pub struct CableReadyStreamChannel {
    signer: StreamSigner,
}

impl CableReadyStreamChannel {
    /// A channel verifying names with `signer`.
    pub fn new(signer: StreamSigner) -> Self {
        CableReadyStreamChannel { signer }
    }
}

impl Channel for CableReadyStreamChannel {
    async fn subscribed(&self, ctx: &mut ChannelContext) {
        let name = ctx
            .params()
            .get("identifier")
            .and_then(Value::as_str)
            .and_then(|s| self.signer.verify(s));
        match name {
            Some(stream) => ctx.stream_from(stream),
            None => {
                tracing::warn!("CableReady::Stream subscription with a bad signature rejected");
                ctx.reject();
            }
        }
    }

    async fn perform(
        &self,
        _: &mut ChannelContext,
        action: &str,
        _: Value,
    ) -> Result<(), PerformError> {
        Err(PerformError::UnknownAction(action.to_owned()))
    }
}
