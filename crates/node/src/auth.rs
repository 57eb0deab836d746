//! Connection authentication: who is on the other end (`identified_by`).
//!
//! An [`Authenticator`] sees the upgrade request (URI, headers, cookies, peer address) and
//! returns an [`Identity`] or refuses the connection; a refusal is answered with
//! `{"type":"disconnect","reason":"unauthorized","reconnect":false}` and a close, as Rails'
//! `reject_unauthorized_connection` does.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;

use crate::BoxFuture;

/// What a connection's upgrade request carried, kept for authentication and channels.
#[derive(Debug, Clone, Default)]
pub struct ConnectRequest {
    /// The request URI (path and query).
    pub uri: http::Uri,
    /// The request headers (cookies included).
    pub headers: http::HeaderMap,
    /// The peer's address, when known.
    pub remote_addr: Option<SocketAddr>,
    /// The negotiated subprotocol (`None`: none was offered; treated as
    /// `actioncable-v1-json`). The extended protocol turns on session ids, restore and
    /// history.
    pub protocol: Option<ferrocable_protocol::Subprotocol>,
}

impl ConnectRequest {
    /// The value of cookie `name`, if the request carried it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The value of query parameter `name` (not percent-decoded).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.uri
            .query()?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// Who a connection belongs to: the `identified_by` attributes, e.g. `current_user`, and
/// the id of the session it shares with the pages (the signed session cookie).
///
/// The session is a field of its own, not an attribute: reflexes find the session through
/// [`Identity::session_id`], so no choice of attribute names can hide or forge it. A server
/// that owns the session cookie sets it after the app's authenticator ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// Attribute name → value (sorted, so the connection identifier is stable).
    pub identifiers: BTreeMap<String, String>,
    /// The page session this connection shares (from the session cookie), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

impl Identity {
    /// An identity with no attributes (an anonymous connection).
    pub fn anonymous() -> Self {
        Identity::default()
    }

    /// Adds an `identified_by` attribute.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.identifiers.insert(name.into(), value.into());
        self
    }

    /// Attaches the page session `id` (see [`Identity::session_id`]).
    pub fn with_session(mut self, id: impl Into<String>) -> Self {
        self.session = Some(id.into());
        self
    }

    /// The id of the page session this connection shares, if it has one: where reflexes
    /// read and commit the session.
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// The value of attribute `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.identifiers.get(name).map(String::as_str)
    }

    /// Rails' connection identifier: the values, sorted by name, joined with `:`.
    pub fn connection_identifier(&self) -> String {
        self.identifiers
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// Authentication refused the connection (`reject_unauthorized_connection`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unauthorized: {reason}")]
pub struct Unauthorized {
    /// Why, for the log (never sent to the client).
    pub reason: String,
}

impl Unauthorized {
    /// Refuses with a reason for the log.
    pub fn new(reason: impl Into<String>) -> Self {
        Unauthorized {
            reason: reason.into(),
        }
    }
}

/// Decides who a connection is, from its upgrade request.
pub trait Authenticator: Send + Sync + 'static {
    /// Returns the connection's identity, or refuses it.
    fn authenticate(
        &self,
        request: &ConnectRequest,
    ) -> impl Future<Output = Result<Identity, Unauthorized>> + Send;
}

/// Accepts every connection as anonymous: the default when an app has no users.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    async fn authenticate(&self, _: &ConnectRequest) -> Result<Identity, Unauthorized> {
        Ok(Identity::anonymous())
    }
}

/// Object-safe form of [`Authenticator`], so a node can hold any of them.
pub(crate) trait DynAuthenticator: Send + Sync {
    fn authenticate<'a>(
        &'a self,
        request: &'a ConnectRequest,
    ) -> BoxFuture<'a, Result<Identity, Unauthorized>>;
}

impl<A: Authenticator> DynAuthenticator for A {
    fn authenticate<'a>(
        &'a self,
        request: &'a ConnectRequest,
    ) -> BoxFuture<'a, Result<Identity, Unauthorized>> {
        Box::pin(Authenticator::authenticate(self, request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_query_params_are_read() {
        let mut req = ConnectRequest {
            uri: "/cable?token=abc&x=1".parse().unwrap(),
            ..Default::default()
        };
        req.headers.insert(
            http::header::COOKIE,
            "a=1; user_id=42; b=2".parse().unwrap(),
        );
        assert_eq!(req.cookie("user_id"), Some("42"));
        assert_eq!(req.cookie("nope"), None);
        assert_eq!(req.query_param("token"), Some("abc"));
        assert_eq!(req.query_param("y"), None);
    }

    #[test]
    fn connection_identifier_is_sorted_and_joined() {
        let id = Identity::anonymous()
            .with("user", "gid://app/User/1")
            .with("account", "7");
        assert_eq!(id.connection_identifier(), "7:gid://app/User/1");
    }
}
