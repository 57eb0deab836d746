//! Server-side WebSocket framing (RFC 6455) of our own, over the raw socket.
//!
//! Why not a crate: with tokio-websockets every connection kept its codec's read buffer, and
//! every delivery woke the connection's task to write. `pair.py` against the C floor server
//! (10,000 subscribers, docs/benchmarks.md) measured 8.1 KiB RSS per idle connection and
//! 7.6 µs of user CPU per delivered broadcast against the floor's 0.4. This crate keeps
//! what those figures asked for and nothing else:
//!
//! - [`Decoder`]: an idle connection holds no buffer (8 bytes of state). Bytes are read into
//!   a per-thread scratch buffer ([`read_message`]) and parsed in place; only an incomplete
//!   frame (or frames read ahead) is copied into a per-connection buffer sized to fit and
//!   freed once consumed. Fragmented messages are assembled with their UTF-8 checked as
//!   they arrive, so a bad one fails fast.
//! - [`frame`]: a server frame is encoded once, header and payload in one [`bytes::Bytes`],
//!   so a broadcast's bytes go to every socket as they are.
//!
//! Extensions (permessage-deflate) are not negotiated: reserved bits are a protocol error.

mod decode;
pub mod frame;
mod read;

pub use decode::{CloseFrame, Decoder, Message, WsError};
pub use frame::CloseCode;
pub use read::{ReadError, SharedTcp, Stream, Transport, read_message};
