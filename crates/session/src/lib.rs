//! Sessions: one signed-cookie session shared by HTTP pages and the cable, stored in memory,
//! SQLite (the embedded default), PostgreSQL, Redis or Memcached.
//!
//! - [`SessionStore`] is the small port every backend implements: load, save with
//!   compare-and-set on a version, delete, touch. Stores keep opaque bytes.
//! - [`Sessions`] is what apps use: it encodes the session (JSON, compressed above a
//!   threshold, size-capped), serializes writes to one session on this node and retries a
//!   compare-and-set conflict, so concurrent updates from two tabs or two nodes are never lost.
//! - [`CookieSigner`] signs the cookie that carries only the session id.
//! - [`open_store`] builds a store from a URL (`memory`, `sqlite[:PATH]`, `postgres://…`,
//!   `redis://…`, `memcached://…`).

//!
//! Each networked store is a Cargo feature (`sqlite`, the default; `postgres`, `redis`,
//! `memcached`), so an app compiles only the clients it uses; `memory` is always there.

mod codec;
mod cookie_signer;
mod manager;
#[cfg(feature = "memcached")]
pub mod memcached;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis_store;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;
mod store;
mod url;

pub use codec::{Codec, SessionData};
pub use cookie_signer::CookieSigner;
pub use manager::{SessionOptions, Sessions, new_session_id};
pub use store::{Cause, Clock, DynStore, SessionStore, StoreError, Stored, cause, system_clock};
pub use url::open_store;
