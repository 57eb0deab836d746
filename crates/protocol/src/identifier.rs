//! Channel identifiers: the client's exact JSON text, kept opaque.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::IdentifierError;

/// A subscription identifier exactly as the client sent it (the JSON text inside the
/// `identifier` string).
///
/// It is the subscription key and is echoed byte for byte in every reply, never
/// re-serialized: two clients may encode the same params differently (the Rails client keeps
/// insertion order, the AnyCable client sorts keys). Cloning is cheap (shared text).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier(Arc<str>);

/// An identifier read as JSON: the channel name and every param (`channel` included, as in
/// Rails' `params`).
#[derive(Debug, Clone, PartialEq)]
pub struct IdentifierParams {
    /// The server-side channel name, e.g. `"ChatChannel"`.
    pub channel: String,
    /// All keys of the identifier object.
    pub params: Map<String, Value>,
}

impl Identifier {
    /// Wraps identifier text without checking it; see [`Identifier::params`].
    pub fn new(text: impl Into<Arc<str>>) -> Self {
        Identifier(text.into())
    }

    /// The identifier text, byte for byte as received.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text, for registries that key by it.
    pub fn shared(&self) -> &Arc<str> {
        &self.0
    }

    /// Reads the identifier as a JSON object with a `channel` string.
    pub fn params(&self) -> Result<IdentifierParams, IdentifierError> {
        let value: Value =
            serde_json::from_str(&self.0).map_err(|_| IdentifierError::MalformedJson)?;
        let Value::Object(params) = value else {
            return Err(IdentifierError::NotAnObject);
        };
        let channel = match params.get("channel") {
            Some(Value::String(c)) if !c.is_empty() => c.clone(),
            _ => return Err(IdentifierError::MissingChannel),
        };
        Ok(IdentifierParams { channel, params })
    }
}

impl std::fmt::Display for Identifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_keep_channel_and_every_key() {
        let id = Identifier::new(r#"{"channel":"ChatChannel","room":42}"#);
        let p = id.params().unwrap();
        assert_eq!(p.channel, "ChatChannel");
        assert_eq!(p.params["room"], 42);
        assert_eq!(p.params["channel"], "ChatChannel");
    }

    #[test]
    fn bad_identifiers_are_typed_errors() {
        assert_eq!(
            Identifier::new("{").params(),
            Err(IdentifierError::MalformedJson)
        );
        assert_eq!(
            Identifier::new("[1]").params(),
            Err(IdentifierError::NotAnObject)
        );
        assert_eq!(
            Identifier::new(r#"{"room":1}"#).params(),
            Err(IdentifierError::MissingChannel)
        );
        assert_eq!(
            Identifier::new(r#"{"channel":7}"#).params(),
            Err(IdentifierError::MissingChannel)
        );
        assert_eq!(
            Identifier::new(r#"{"channel":""}"#).params(),
            Err(IdentifierError::MissingChannel)
        );
    }

    #[test]
    fn text_is_kept_byte_for_byte() {
        let text = "{ \"room\" : 1 ,\"channel\":\"A\"}";
        assert_eq!(Identifier::new(text).as_str(), text);
    }
}
