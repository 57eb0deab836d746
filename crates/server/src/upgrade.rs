//! `GET /cable`: the WebSocket upgrade, done by hand on hyper so that the Origin check,
//! subprotocol negotiation and the WebSocket layer (our own, over the raw socket) are under
//! our control.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use ferrocable_node::ConnectRequest;
use ferrocable_node::websocket::{Decoder, Transport};
use ferrocable_protocol::{Subprotocol, negotiate};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use crate::handshake::Prefixed;
use crate::listener::ConnMeta;
use crate::state::ServerState;

/// The subprotocols this server speaks, in preference order.
const SUPPORTED: &[Subprotocol] = &[
    Subprotocol::ActionCableV1Json,
    Subprotocol::ActionCableV1ExtJson,
];

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the request asks for a WebSocket upgrade (`Connection: upgrade`,
/// `Upgrade: websocket`, version 13).
pub(crate) fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            == Some(b"13")
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455, section 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut input = Vec::with_capacity(key.len() + 36);
    input.extend_from_slice(key);
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Why an upgrade to the cable was refused, decided before any answer is written so that the
/// handshake read off the raw socket ([`crate::handshake`]) can leave a refusal to hyper, which
/// answers and counts it once.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// No `Connection: upgrade` / `Upgrade: websocket` (Rails answers 404).
    NotWebSocket,
    /// The Origin is not allowed (the header's value, or `(none)`).
    Origin(String),
    /// `Sec-WebSocket-Version` is not 13.
    Version,
    /// No `Sec-WebSocket-Key`.
    Key,
    /// The node is shutting down.
    ShuttingDown,
}

impl Refusal {
    /// The answer to the client, counted in `ferrocable_refused_upgrades_total`.
    pub(crate) fn into_response(self, state: &ServerState) -> Response {
        let (status, reason, body) = match self {
            Refusal::NotWebSocket => (
                StatusCode::NOT_FOUND,
                "not_websocket",
                "Page not found".to_owned(),
            ),
            Refusal::Origin(origin) => {
                warn!(%origin, "Request origin not allowed");
                (
                    StatusCode::FORBIDDEN,
                    "origin",
                    format!("Request origin not allowed: {origin}\n"),
                )
            }
            Refusal::Version => (
                StatusCode::UPGRADE_REQUIRED,
                "websocket_version",
                "Unsupported WebSocket version\n".to_owned(),
            ),
            Refusal::Key => (
                StatusCode::BAD_REQUEST,
                "websocket_key",
                "Missing Sec-WebSocket-Key\n".to_owned(),
            ),
            Refusal::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "Server is shutting down\n".to_owned(),
            ),
        };
        state.node.metrics().refused_upgrade(reason);
        // A refused upgrade ends the exchange: the client wanted a socket, not a keep-alive.
        let mut r = (status, [(header::CONNECTION, "close")], body).into_response();
        if status == StatusCode::UPGRADE_REQUIRED {
            r.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        r
    }
}

/// What an accepted upgrade to the cable answers with.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The negotiated subprotocol, if any.
    pub protocol: Option<Subprotocol>,
}

/// The cable's upgrade checks, in Rails' order: an upgrade at all, the Origin, the version,
/// the key, then whether the node still takes connections.
pub(crate) fn check_upgrade(
    state: &ServerState,
    headers: &HeaderMap,
    tls: bool,
) -> Result<Accepted, Refusal> {
    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(Refusal::NotWebSocket);
    }
    if !state.origins.allows(headers, tls) {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_owned();
        return Err(Refusal::Origin(origin));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(Refusal::Version);
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| !k.is_empty())
    else {
        return Err(Refusal::Key);
    };
    if state.node.is_shutting_down() {
        return Err(Refusal::ShuttingDown);
    }
    Ok(Accepted {
        accept: accept_key(key.as_bytes()),
        protocol: negotiate(
            headers
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok()),
            SUPPORTED,
        ),
    })
}

/// The socket under an upgraded connection: plain TCP (which reaches hyper as [`Prefixed`],
/// the raw handshake having read first) is taken back from hyper, so the WebSocket layer reads
/// it on readiness and broadcasts write to it directly, with any bytes read past the request;
/// TLS stays behind its stream.
pub(crate) fn websocket_io(upgraded: hyper::upgrade::Upgraded) -> (Transport, Decoder) {
    match upgraded.downcast::<TokioIo<Prefixed>>() {
        Ok(parts) => {
            let (stream, mut unread) = parts.io.into_inner().into_parts();
            unread.extend_from_slice(&parts.read_buf);
            (
                Transport::Tcp(Box::new(stream)),
                Decoder::with_buffered(&unread),
            )
        }
        Err(upgraded) => (
            Transport::Stream(Box::new(TokioIo::new(upgraded))),
            Decoder::new(),
        ),
    }
}

/// Handles a request to the cable path.
pub(crate) async fn cable(State(state): State<ServerState>, mut req: Request) -> Response {
    let meta = req.extensions().get::<ConnMeta>().copied();
    let tls = meta.is_some_and(|m| m.tls);
    let Accepted { accept, protocol } = match check_upgrade(&state, req.headers(), tls) {
        Ok(accepted) => accepted,
        Err(refusal) => return refusal.into_response(&state),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let request = Box::new(ConnectRequest {
        uri: req.uri().clone(),
        headers: std::mem::take(req.headers_mut()),
        remote_addr: meta.map(|m| m.remote),
        protocol,
    });
    let node = state.node.clone();
    state.node.spawn_tracked(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let (transport, decoder) = websocket_io(upgraded);
                node.run_connection(transport, decoder, request).await;
            }
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
    });

    switching_protocols(&accept, protocol)
}

/// The 101 answer to an upgrade: `accept` is the `Sec-WebSocket-Accept` value, `protocol` the
/// negotiated subprotocol, if any.
pub(crate) fn switching_protocols(accept: &str, protocol: Option<Subprotocol>) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(p.as_str()),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
