//! The ActionCable wire protocol as typed values.
//!
//! This crate is pure: bytes in, typed values out, and back. It does no I/O and knows no
//! runtime, so every frame can be tested (and fuzzed) without a socket.
//!
//! - [`ClientCommand`] is what a client sends (`subscribe`, `unsubscribe`, `message`),
//!   decoded by [`decode_command`].
//! - [`ServerFrame`] is what the server sends (`welcome`, `ping`, confirmations,
//!   `disconnect`, data frames), encoded by [`ServerFrame::encode`].
//! - [`Identifier`] keeps the client's identifier text byte for byte; it is the
//!   subscription key and is echoed unchanged.
//! - [`Subprotocol`] is the negotiated WebSocket subprotocol; [`negotiate`] picks it.

mod command;
mod disconnect;
mod error;
mod frame;
mod identifier;
mod subprotocol;

pub use command::{ClientCommand, HistoryRequest, StreamPosition, decode_command};
pub use disconnect::DisconnectReason;
pub use error::{DecodeError, IdentifierError};
pub use frame::{ServerFrame, encode_data_frame, encode_data_frame_at, encode_json_string};
pub use identifier::{Identifier, IdentifierParams};
pub use subprotocol::{Subprotocol, negotiate};

/// Largest inbound command accepted by default, in bytes (AnyCable's reference limit).
pub const DEFAULT_MAX_COMMAND_BYTES: usize = 64 * 1024;
