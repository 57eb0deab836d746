//! Streams a page subscribes to with no app code, served the way AnyCable serves them, so a
//! Rails deployment keeps working when it switches and a Rust app gets the same tools:
//!
//! - [`MessageVerifier`]: the signed-name format of Rails' `ActiveSupport::MessageVerifier`
//!   (SHA256, JSON), which turbo-rails, cable_ready and AnyCable's `signed_stream_name` use;
//! - [`PubSubChannel`]: the `$pubsub` channel, `{"channel":"$pubsub","signed_stream_name":…}`
//!   (and `stream_name` when public streams are on), with whisper where AnyCable allows it;
//! - [`TurboStreamsChannel`] and [`TurboStream`]: `Turbo::StreamsChannel` subscriptions from
//!   `<turbo-cable-stream-source>` and the `<turbo-stream>` actions broadcast to them.

mod pubsub;
mod turbo;
mod verifier;

pub use pubsub::{PUBSUB_CHANNEL, PubSubChannel};
pub use turbo::{
    TURBO_STREAMS_CHANNEL, TurboAction, TurboStream, TurboStreamsChannel, broadcast_turbo_streams,
    stream_name_from, turbo_stream_from,
};
pub use verifier::{MAX_SIGNED_LEN, MessageVerifier, VerifyError};
