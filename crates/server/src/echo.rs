//! `GET /_echo`: a raw WebSocket echo, for the RFC 6455 conformance suite (Autobahn's cases,
//! run by `kosoku` in CI) against the server's own WebSocket layer. Served only with the
//! benchmark channel (`--bench-channel`): no subprotocol, no Origin check, no ActionCable.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use ferrocable_node::websocket::{CloseCode, Message, ReadError, frame, read_message};
use http::{StatusCode, header};
use tokio::time::timeout;

use crate::state::ServerState;
use crate::upgrade::{accept_key, is_websocket_upgrade, switching_protocols, websocket_io};

/// Longest an echo waits for the client to take its answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest message echoed: Autobahn's biggest (section 9, 16 MiB) fits.
pub(crate) const ECHO_MAX_MESSAGE: usize = 16 * 1024 * 1024 + 1024;

/// Handles a request to `/_echo`.
pub(crate) async fn echo(State(state): State<ServerState>, mut req: Request) -> Response {
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| is_websocket_upgrade(req.headers()))
    else {
        return (StatusCode::BAD_REQUEST, "WebSocket upgrade expected\n").into_response();
    };
    let accept = accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    state.node.spawn_tracked(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (mut transport, mut decoder) = websocket_io(upgraded);
        let close = loop {
            let reply = match read_message(&mut transport, &mut decoder, ECHO_MAX_MESSAGE).await {
                Ok(Some(Message::Text(text))) => frame::encode(frame::OP_TEXT, &text),
                Ok(Some(Message::Binary(data))) => frame::encode(frame::OP_BINARY, &data),
                Ok(Some(Message::Ping(data))) => frame::encode(frame::OP_PONG, &data),
                Ok(Some(Message::Pong)) => continue,
                Ok(Some(Message::Close(close))) => {
                    break Some(close.map_or(CloseCode::NORMAL, |c| c.code));
                }
                Ok(None) | Err(ReadError::Io(_)) => break None,
                Err(ReadError::Ws(e)) => break Some(e.close_code()),
            };
            if timeout(WRITE_TIMEOUT, transport.write_all(&[reply]))
                .await
                .map_or(true, |r| r.is_err())
            {
                break None;
            }
        };
        if let Some(code) = close {
            let _ = timeout(
                WRITE_TIMEOUT,
                transport.write_all(&[frame::close(code, "")]),
            )
            .await;
        }
        transport.close(Duration::from_secs(1)).await;
    });
    switching_protocols(&accept, None)
}
