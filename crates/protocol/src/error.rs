//! Decode errors: small, allocation-free enums, because bad input is routine on a public socket.

use thiserror::Error;

/// Why an inbound frame could not be decoded into a [`crate::ClientCommand`].
///
/// Every variant has a stable [`DecodeError::code`] used in logs, metrics labels and the
/// `error` frame sent back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The frame is larger than the configured maximum.
    #[error("command of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Size of the frame received.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The frame is not valid JSON.
    #[error("command is not valid JSON")]
    MalformedJson,
    /// The frame is JSON but not an object.
    #[error("command is not a JSON object")]
    NotAnObject,
    /// The object has no `command` field, or it is not a string.
    #[error("command has no \"command\" string")]
    MissingCommand,
    /// The `command` names nothing this protocol knows.
    #[error("unknown command")]
    UnknownCommand,
    /// The command needs an `identifier` string and has none.
    #[error("command has no \"identifier\" string")]
    MissingIdentifier,
    /// A `message` command has no `data` string.
    #[error("message command has no \"data\" string")]
    MissingData,
    /// A `history` command has no `history` object.
    #[error("history command has no \"history\" object")]
    MissingHistory,
    /// A `history` object is malformed or asks for nothing.
    #[error("history request is malformed (needs \"since\" seconds or \"streams\" positions)")]
    MalformedHistory,
    /// A binary frame arrived on a JSON subprotocol.
    #[error("binary frames are not accepted on a JSON subprotocol")]
    BinaryFrame,
    /// A `whisper` command has no `data` object.
    #[error("whisper needs a \"data\" object")]
    MalformedWhisper,
    /// A `join` command has no `presence` object with a non-empty `id` (at most 256 bytes).
    #[error("join needs a \"presence\" object with an \"id\"")]
    MalformedPresence,
}

impl DecodeError {
    /// A short, stable, machine-readable name for this error.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::MalformedJson => "malformed_json",
            DecodeError::NotAnObject => "not_an_object",
            DecodeError::MissingCommand => "missing_command",
            DecodeError::UnknownCommand => "unknown_command",
            DecodeError::MissingIdentifier => "missing_identifier",
            DecodeError::MissingData => "missing_data",
            DecodeError::MissingHistory => "missing_history",
            DecodeError::MalformedHistory => "malformed_history",
            DecodeError::BinaryFrame => "binary_frame",
            DecodeError::MalformedWhisper => "malformed_whisper",
            DecodeError::MalformedPresence => "malformed_presence",
        }
    }
}

/// Why an identifier string could not be read as channel parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum IdentifierError {
    /// The identifier text is not JSON.
    #[error("identifier is not valid JSON")]
    MalformedJson,
    /// The identifier is JSON but not an object.
    #[error("identifier is not a JSON object")]
    NotAnObject,
    /// The identifier object has no `channel` string.
    #[error("identifier has no \"channel\" string")]
    MissingChannel,
}

impl IdentifierError {
    /// A short, stable, machine-readable name for this error.
    pub fn code(&self) -> &'static str {
        match self {
            IdentifierError::MalformedJson => "identifier_malformed_json",
            IdentifierError::NotAnObject => "identifier_not_an_object",
            IdentifierError::MissingChannel => "identifier_missing_channel",
        }
    }
}
