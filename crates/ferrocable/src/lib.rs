//! Reactive, server-rendered web apps over WebSockets, the StimulusReflex way, in Rust.
//!
//! A click in the browser sends a *reflex* over an ActionCable WebSocket; the server runs the
//! reflex, re-renders the page (or a part of it) and answers with CableReady DOM operations.
//! The browser side is the unmodified npm packages (`stimulus_reflex`, `cable_ready`,
//! `@rails/actioncable`, `@hotwired/stimulus`), served by the app itself.
//!
//! # A tour
//!
//! - **[`App`]** is the composition root: [`App::route`] adds pages (plain axum handlers),
//!   [`App::reflex`] reflex classes, [`App::channel`] ActionCable channels,
//!   [`App::authenticator`] the connection's identity, [`App::browser_packages`] where the npm
//!   packages are; [`App::run`] serves until SIGTERM with the flags and `FERROCABLE_*`
//!   settings of `ferrocable serve`.
//! - **Pages** take a [`Session`] (the signed-cookie session reflexes share) and a [`Cable`]
//!   ([`Cable::head`] puts the import map and the start-up module in `<head>`;
//!   [`Cable::signed_stream`] signs a stream a page listens to).
//! - **Reflexes** implement [`Reflex`]: the allowed methods and what each does to a
//!   [`ReflexContext`] (session changes, morphs, CableReady operations, broadcasts). By default
//!   the page is re-rendered through the app's own routes and morphed in.
//! - **Channels** implement [`Channel`] and record effects in a [`ChannelContext`] (stream,
//!   transmit, broadcast, reject), so they test without sockets.
//! - **Broadcasts** from anywhere go through the [`Node`]: [`broadcast_operations`] for
//!   CableReady streams, [`Node::broadcast`] for channel streams; [`App::on_start`] hands the
//!   node to background tasks.
//!
//! ```no_run
//! use ferrocable::axum::{response::Html, routing::get};
//! use ferrocable::{App, Cable, Reflex, ReflexContext, ReflexError, Session, SessionFailure};
//!
//! struct Counter;
//!
//! impl Reflex for Counter {
//!     fn methods(&self) -> &'static [(&'static str, usize, usize)] {
//!         &[("increment", 0, 0)]
//!     }
//!     async fn call(&self, _: &str, ctx: &mut ReflexContext) -> Result<(), ReflexError> {
//!         ctx.update_session(|s| {
//!             let n = s.get("count").and_then(|v| v.as_i64()).unwrap_or(0);
//!             s.insert("count".into(), (n + 1).into());
//!         });
//!         Ok(())
//!     }
//! }
//!
//! async fn page(cable: Cable, session: Session) -> Result<Html<String>, SessionFailure> {
//!     let count = session.data().await?.get("count").and_then(|v| v.as_i64()).unwrap_or(0);
//!     Ok(Html(format!(
//!         r#"<html><head>{}</head><body><b id="count">{count}</b>
//!            <button data-reflex="click->Counter#increment">+1</button></body></html>"#,
//!         cable.head()
//!     )))
//! }
//!
//! fn main() -> Result<(), ferrocable::Error> {
//!     App::new().route("/", get(page)).reflex("Counter", Counter).run()
//! }
//! ```
//!
//! The examples (`cargo run --example counter`, `chat`, `token_channel`, `dashboard`) and the
//! demo app (`apps/demo`, what `ferrocable serve` runs) use only this crate's public API.

mod app;

pub use app::{App, Error};

/// The HTTP framework pages are written in (re-exported so an app needs no second version).
pub use axum;
/// JSON values: sessions, channel data and reflex arguments are `serde_json` values.
pub use serde_json;

pub use ferrocable_node::{
    AllowAll, Authenticator, BroadcastReport, Channel, ChannelContext, ConnectRequest, Identity,
    JwtIdentifier, Metrics, Node, PerformError, Unauthorized,
};
pub use ferrocable_reflex::{
    Element, Halt, Operation, Reflex, ReflexContext, ReflexError, StreamSigner, UrlOptions,
    broadcast_operations,
};
pub use ferrocable_server::cli::ServeArgs;
pub use ferrocable_server::{
    Assets, Cable, RunningServer, ServeConfig, Services, SessionChannel, SessionFailure,
};
pub use ferrocable_session::{SessionData, Sessions};
pub use ferrocable_streams::{
    MessageVerifier, PubSubChannel, TurboAction, TurboStream, TurboStreamsChannel,
    broadcast_turbo_streams,
};

/// The session of the current page request (an axum extractor). The same session reaches
/// reflexes through [`ReflexContext::session`] and [`ReflexContext::update_session`].
pub type Session = ferrocable_server::CurrentSession;
