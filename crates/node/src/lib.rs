//! The cable engine: connections, channels, hub fan-out, outboxes and shutdown.
//!
//! Data flows through it in one direction:
//! socket → `connection` (decode, dispatch) → [`channel`] (app code, returns effects as
//! data) → [`hub`] (stream → subscribers) → [`outbox`] (bounded per connection) → socket.
//!
//! [`Node`] ties these together. It knows nothing of HTTP: a server hands it an upgraded
//! WebSocket and the upgrade request's details ([`ConnectRequest`]).

pub mod auth;
pub mod broker;
pub mod channel;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod connection;
mod heartbeat;
pub mod hub;
pub mod ingress;
pub mod jwt;
pub mod metrics;
mod node;
pub mod outbox;
mod presence;
pub mod pubsub;
pub mod remote;

pub use auth::{AllowAll, Authenticator, ConnectRequest, Identity, Unauthorized};
pub use channel::{Channel, ChannelContext, Effects, PerformError};
/// The WebSocket layer connections run on (re-exported for [`Node::run_connection`]).
pub use ferrocable_websocket as websocket;
pub use hub::{BroadcastReport, ConnId, Hub};
pub use jwt::{JwtError, JwtIdentifier};
pub use metrics::Metrics;
pub use node::{
    BroadcastError, CommandRate, Node, NodeBuilder, NodeConfig, SessionOf, ShutdownReport,
};
pub use outbox::{Outbox, OutboxLimits, PushError};
pub use pubsub::{PubSub, PubSubHooks};
pub use remote::RemoteApp;

/// Boxed, sendable future: how trait objects carry the async methods users write natively.
pub(crate) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
