//! `BenchmarkChannel`: the channel the ActionCable load tools speak (the same one the Rails
//! reference server in the peers folder runs), so one tool measures both servers.

use ferrocable_node::{Channel, ChannelContext, PerformError};
use serde_json::Value;

/// Streams from `"all"`; `echo` transmits the data back; `broadcast` broadcasts the data to
/// `"all"` and transmits it back to the sender with `action: "broadcastResult"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BenchmarkChannel;

/// The stream every `BenchmarkChannel` subscription listens to.
pub const BENCH_STREAM: &str = "all";

impl Channel for BenchmarkChannel {
    async fn subscribed(&self, ctx: &mut ChannelContext) {
        ctx.stream_from(BENCH_STREAM);
    }

    async fn perform(
        &self,
        ctx: &mut ChannelContext,
        action: &str,
        mut data: Value,
    ) -> Result<(), PerformError> {
        let fail = |e: serde_json::Error| PerformError::Failed(e.to_string());
        match action {
            "echo" => ctx.transmit(&data).map_err(fail),
            "broadcast" => {
                ctx.broadcast(BENCH_STREAM, &data).map_err(fail)?;
                data["action"] = Value::from("broadcastResult");
                ctx.transmit(&data).map_err(fail)
            }
            other => Err(PerformError::UnknownAction(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ferrocable_node::Identity;
    use ferrocable_protocol::Identifier;

    use super::*;

    fn ctx() -> ChannelContext {
        let id = Identifier::new(r#"{"channel":"BenchmarkChannel"}"#);
        let params = Arc::new(id.params().unwrap().params);
        ChannelContext::new(id, params, Arc::new(Identity::anonymous()), vec![])
    }

    #[tokio::test]
    async fn subscribes_to_all() {
        let mut c = ctx();
        BenchmarkChannel.subscribed(&mut c).await;
        assert_eq!(c.effects().stream_from, vec!["all"]);
    }

    #[tokio::test]
    async fn broadcast_keeps_key_order_and_acks_the_sender() {
        let mut c = ctx();
        let data: Value = serde_json::from_str(r#"{"action":"broadcast","rid":1,"ts":5}"#).unwrap();
        BenchmarkChannel
            .perform(&mut c, "broadcast", data)
            .await
            .unwrap();
        let fx = c.into_effects();
        assert_eq!(fx.broadcasts[0].0, "all");
        assert_eq!(
            fx.broadcasts[0].1.get(),
            r#"{"action":"broadcast","rid":1,"ts":5}"#
        );
        assert_eq!(
            fx.transmissions[0].get(),
            r#"{"action":"broadcastResult","rid":1,"ts":5}"#
        );
    }

    #[tokio::test]
    async fn echo_and_unknown_action() {
        let mut c = ctx();
        BenchmarkChannel
            .perform(&mut c, "echo", serde_json::json!({"x":1}))
            .await
            .unwrap();
        assert_eq!(c.effects().transmissions[0].get(), r#"{"x":1}"#);
        assert!(matches!(
            BenchmarkChannel.perform(&mut c, "nope", Value::Null).await,
            Err(PerformError::UnknownAction(_))
        ));
    }
}
