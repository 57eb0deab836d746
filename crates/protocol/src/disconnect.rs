//! The one table of disconnect reasons: wire name and whether the client should reconnect.

/// Why the server closes a connection, as sent in a `disconnect` frame.
///
/// Each reason carries its default `reconnect` flag, so no call site can forget it (the
/// Rails client treats a missing flag as "do not reconnect").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// Authentication refused the connection.
    Unauthorized,
    /// The request was not a usable cable request.
    InvalidRequest,
    /// The server is shutting down or restarting.
    ServerRestart,
    /// Disconnected on request of the application (remote disconnect).
    Remote,
    /// The client did not read its frames fast enough.
    TooSlow,
    /// The client did not authenticate in time.
    IdleTimeout,
    /// The client did not answer pings (extended protocol).
    NoPong,
    /// The client's token expired.
    TokenExpired,
    /// The client kept sending commands faster than its connection may (after `rate_limited`
    /// errors). It may reconnect; its client's back-off slows it down.
    RateLimited,
}

impl DisconnectReason {
    /// The `reason` string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Unauthorized => "unauthorized",
            DisconnectReason::InvalidRequest => "invalid_request",
            DisconnectReason::ServerRestart => "server_restart",
            DisconnectReason::Remote => "remote",
            DisconnectReason::TooSlow => "too_slow",
            DisconnectReason::IdleTimeout => "idle_timeout",
            DisconnectReason::NoPong => "no_pong",
            DisconnectReason::TokenExpired => "token_expired",
            DisconnectReason::RateLimited => "rate_limited",
        }
    }

    /// Whether clients should reconnect after this reason, unless the sender overrides it.
    pub fn default_reconnect(self) -> bool {
        match self {
            DisconnectReason::Unauthorized
            | DisconnectReason::IdleTimeout
            | DisconnectReason::TokenExpired => false,
            DisconnectReason::InvalidRequest
            | DisconnectReason::ServerRestart
            | DisconnectReason::Remote
            | DisconnectReason::TooSlow
            | DisconnectReason::NoPong
            | DisconnectReason::RateLimited => true,
        }
    }
}
