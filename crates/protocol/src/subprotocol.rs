//! WebSocket subprotocol negotiation.
//!
//! The Rails client accepts only `actioncable-v1-json` and silently stops working when the
//! server echoes nothing, so negotiation is explicit. `actioncable-v1-ext-json` (AnyCable's
//! extended protocol) is named here so a later codec plugs in without touching callers; a
//! server lists what it supports and [`negotiate`] never picks anything else.

/// A WebSocket subprotocol this crate can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subprotocol {
    /// Plain ActionCable JSON, spoken by `@rails/actioncable`.
    ActionCableV1Json,
    /// AnyCable's extended JSON protocol (session recovery, history).
    ActionCableV1ExtJson,
}

impl Subprotocol {
    /// The token sent in `Sec-WebSocket-Protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            Subprotocol::ActionCableV1Json => "actioncable-v1-json",
            Subprotocol::ActionCableV1ExtJson => "actioncable-v1-ext-json",
        }
    }

    /// Parses one token; unknown tokens (including `actioncable-unsupported` and
    /// `anycable-token.*`) are `None`.
    pub fn from_token(token: &str) -> Option<Self> {
        match token.trim() {
            "actioncable-v1-json" => Some(Subprotocol::ActionCableV1Json),
            "actioncable-v1-ext-json" => Some(Subprotocol::ActionCableV1ExtJson),
            _ => None,
        }
    }
}

/// Picks the subprotocol to echo from the client's offers (each header value may hold a
/// comma-separated list). The client's order wins among those in `supported`.
pub fn negotiate<'a>(
    offered: impl IntoIterator<Item = &'a str>,
    supported: &[Subprotocol],
) -> Option<Subprotocol> {
    offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(Subprotocol::from_token)
        .find(|p| supported.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &[Subprotocol] = &[Subprotocol::ActionCableV1Json];

    #[test]
    fn picks_v1_from_the_rails_client_offer() {
        let offer = ["actioncable-v1-json, actioncable-unsupported"];
        assert_eq!(negotiate(offer, V1), Some(Subprotocol::ActionCableV1Json));
    }

    #[test]
    fn never_picks_unsupported_or_token_entries() {
        assert_eq!(negotiate(["actioncable-unsupported"], V1), None);
        assert_eq!(negotiate(["anycable-token.abc", "foo"], V1), None);
        assert_eq!(negotiate([], V1), None);
    }

    #[test]
    fn ext_is_picked_only_when_supported() {
        let offer = ["actioncable-v1-ext-json"];
        assert_eq!(negotiate(offer, V1), None);
        let both = [
            Subprotocol::ActionCableV1Json,
            Subprotocol::ActionCableV1ExtJson,
        ];
        assert_eq!(
            negotiate(offer, &both),
            Some(Subprotocol::ActionCableV1ExtJson)
        );
    }

    #[test]
    fn tokens_round_trip() {
        for p in [
            Subprotocol::ActionCableV1Json,
            Subprotocol::ActionCableV1ExtJson,
        ] {
            assert_eq!(Subprotocol::from_token(p.as_str()), Some(p));
        }
    }
}
