//! StimulusReflex 3.5 for Rust apps, wire-compatible with the unmodified
//! `stimulus_reflex@3.5.5` and `cable_ready@5.0.6` browser packages.
//!
//! A click sends a reflex (`"Counter#increment"`) over the cable; [`dispatch`] finds it in the
//! allow-listed [`Registry`], runs the before callbacks (which may halt or forbid), the
//! method and the after callbacks, commits the session, and answers with one CableReady
//! envelope: a page morph (the page re-rendered through the app's own router, the client's
//! selectors cut out of it), selector morphs, or nothing. Every reflex ends with a terminal
//! reply the client understands (morph, `morph-nothing`, `morph-halted`, `morph-forbidden` or
//! `morph-error`), including unknown targets and bad payloads, which the Ruby server leaves
//! hanging.

mod channel;
mod context;
mod data;
mod dispatch;
mod element;
pub mod html;
pub mod ledger;
pub mod ops;
mod outcome;
mod params;
mod registry;
pub mod signed;
pub mod urls;
pub use signed::StreamSigner;
pub use urls::UrlOptions;

/// Broadcasts CableReady `operations` to `stream` from anywhere (a reflex, a channel, a
/// background task): every `CableReady::Stream` subscriber of the stream applies them.
pub fn broadcast_operations(
    node: &ferrocable_node::Node,
    stream: &str,
    operations: Vec<Operation>,
) -> ferrocable_node::BroadcastReport {
    let json = Envelope::new(operations).to_json();
    // An envelope is always valid JSON.
    node.broadcast(stream, &json).unwrap_or_default()
}

pub use channel::{CableReadyStreamChannel, ReflexChannel, reply_stream};
pub use context::{Morph, ReflexContext, SessionChange};
pub use data::{ReflexData, ReflexDataError};
pub use dispatch::{Dispatched, PageRenderer, PageRequest, ReflexHost, dispatch};
pub use element::Element;
pub use ledger::{Begin, ReflexLedger};
pub use ops::{CABLE_READY_VERSION, Envelope, Operation};
pub use outcome::{Halt, ReflexError};
pub use params::parse_nested_query;
pub use registry::{Reflex, Registry};

/// The `stimulus_reflex` npm version this server speaks; reflexes must carry it.
pub const STIMULUS_REFLEX_VERSION: &str = "3.5.5";

/// The channel name the client hard-codes.
pub const CHANNEL: &str = "StimulusReflex::Channel";
