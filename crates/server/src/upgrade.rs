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

fn refuse(state: &ServerState, status: StatusCode, reason: &'static str, body: String) -> Response {
    state.node.metrics().refused_upgrade(reason);
    // A refused upgrade ends the exchange: the client wanted a socket, not a keep-alive.
    (status, [(header::CONNECTION, "close")], body).into_response()
}

/// The socket under an upgraded connection: plain TCP is taken back from hyper (so the
/// WebSocket layer reads it on readiness and broadcasts write to it directly), with any bytes
/// hyper read past the request; TLS stays behind its stream.
pub(crate) fn websocket_io(upgraded: hyper::upgrade::Upgraded) -> (Transport, Decoder) {
    match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
        Ok(parts) => (
            Transport::Tcp(Box::new(parts.io.into_inner())),
            Decoder::with_buffered(&parts.read_buf),
        ),
        Err(upgraded) => (
            Transport::Stream(Box::new(TokioIo::new(upgraded))),
            Decoder::new(),
        ),
    }
}

/// Handles a request to the cable path.
pub(crate) async fn cable(State(state): State<ServerState>, mut req: Request) -> Response {
    let meta = req.extensions().get::<ConnMeta>().copied();
    let headers = req.headers();
    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        // Rails answers a plain request to the cable path with 404.
        return refuse(
            &state,
            StatusCode::NOT_FOUND,
            "not_websocket",
            "Page not found".into(),
        );
    }
    if !state.origins.allows(headers, meta.is_some_and(|m| m.tls)) {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_owned();
        warn!(%origin, "Request origin not allowed");
        return refuse(
            &state,
            StatusCode::FORBIDDEN,
            "origin",
            format!("Request origin not allowed: {origin}\n"),
        );
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut r = refuse(
            &state,
            StatusCode::UPGRADE_REQUIRED,
            "websocket_version",
            "Unsupported WebSocket version\n".into(),
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| !k.is_empty())
    else {
        return refuse(
            &state,
            StatusCode::BAD_REQUEST,
            "websocket_key",
            "Missing Sec-WebSocket-Key\n".into(),
        );
    };
    if state.node.is_shutting_down() {
        return refuse(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "Server is shutting down\n".into(),
        );
    }
    let accept = accept_key(key.as_bytes());
    let protocol = negotiate(
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
        SUPPORTED,
    );

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
