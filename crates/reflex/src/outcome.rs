//! How a reflex ends when it does not simply succeed: stopped by a callback ([`Halt`]) or
//! failed ([`ReflexError`]). Apart from the registry and the context so that both can use it.

/// How a before callback stops a reflex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// Ruby's `throw :abort`: the client gets `morph-halted` (its promise resolves).
    Abort,
    /// Ruby's `throw :forbidden`: the client gets `morph-forbidden`.
    Forbidden,
}

/// A reflex method failed; the client gets `morph-error` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReflexError {
    /// The method failed.
    #[error("{0}")]
    Failed(String),
    /// Morph modes were mixed (`morph_nothing` after a selector morph, or the reverse).
    #[error("cannot switch the morph mode from {from} to {to}")]
    MorphMode {
        /// The current mode.
        from: &'static str,
        /// The mode asked for.
        to: &'static str,
    },
    /// An argument was missing or of the wrong type.
    #[error("invalid argument: {0}")]
    Argument(String),
}

impl ReflexError {
    /// A failure with a message.
    pub fn failed(message: impl std::fmt::Display) -> Self {
        ReflexError::Failed(message.to_string())
    }
}
