//! Server-sent events (AnyCable's SSE transport, `ANYCABLE_SSE`): a client that cannot keep a
//! WebSocket (a blocked proxy, a device without it, Turbo's `<turbo-stream-source>`) reads a
//! subscription as an `EventSource` stream at `GET /events`.
//!
//! The query names one subscription, first match wins: `identifier` (the JSON), `channel`,
//! `stream` (public `$pubsub`), `signed_stream` (signed `$pubsub`),
//! `turbo_signed_stream_name` (`Turbo::StreamsChannel`); `history_since` (Unix seconds) or a
//! `Last-Event-ID: offset/epoch/stream` header replays what was missed; `raw` sends data only.
//!
//! Each SSE client is an ordinary cable connection of the node, reached through an in-memory
//! pipe instead of a socket: identification (cookies, the app behind RPC, `?jid=` tokens),
//! subscriptions, history, the outbox limits and the `too_slow` policy are the WebSocket
//! ones. A client that stops reading stops this pipe, the node's write times out, and the
//! connection is cut as any slow WebSocket client is. Identification failures answer 401, a
//! rejected or missing subscription 400, before any event.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ferrocable_node::ConnectRequest;
use ferrocable_node::websocket::{Decoder, Transport};
use ferrocable_protocol::Subprotocol;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tokio_websockets::{ClientBuilder, Message};

use crate::listener::ConnMeta;
use crate::state::ServerState;

/// The pipe between an SSE response and its connection: two WebSocket frames' worth.
const PIPE_BYTES: usize = 64 * 1024;
/// Events queued for the HTTP body before the pipe stops being read.
const BODY_QUEUE: usize = 16;
/// Longest wait for the welcome and the subscription's answer.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// `retry:` for a client that must not reconnect (AnyCable's value).
const NEVER_RETRY_MS: u64 = 31_536_000_000;

/// What a GET asks for.
#[derive(Debug, PartialEq)]
struct Ask {
    identifier: String,
    history: Option<Value>,
    raw: bool,
}

/// Reads the query (and `Last-Event-ID`) of an SSE request; `None` when no subscription is
/// named.
fn ask(query: &str, headers: &HeaderMap) -> Option<Ask> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    };
    let identifier = if let Some(i) = get("identifier") {
        i.to_owned()
    } else if let Some(c) = get("channel") {
        json!({ "channel": c }).to_string()
    } else if let Some(s) = get("stream") {
        json!({"channel": "$pubsub", "stream_name": s}).to_string()
    } else if let Some(s) = get("signed_stream") {
        json!({"channel": "$pubsub", "signed_stream_name": s}).to_string()
    } else if let Some(s) = get("turbo_signed_stream_name") {
        json!({"channel": "Turbo::StreamsChannel", "signed_stream_name": s}).to_string()
    } else {
        return None;
    };
    let raw = get("raw").is_some_and(|v| matches!(v, "1" | "true" | "t" | "y" | "yes"));
    // `offset/epoch/stream`: the stream may itself contain '/'.
    let last_event = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let mut parts = v.splitn(3, '/');
            let offset: u64 = parts.next()?.parse().ok()?;
            let epoch = parts.next().filter(|e| !e.is_empty())?;
            let stream = parts.next().filter(|s| !s.is_empty())?;
            Some((stream.to_owned(), json!({"epoch": epoch, "offset": offset})))
        });
    let since = get("history_since").and_then(|s| s.parse::<u64>().ok());
    let history = match (last_event, since) {
        (Some((stream, position)), since) => {
            Some(json!({"since": since, "streams": { stream: position }}))
        }
        (None, Some(since)) => Some(json!({ "since": since })),
        (None, None) => None,
    };
    Some(Ask {
        identifier,
        history,
        raw,
    })
}

/// Most bytes of a POST's commands.
const MAX_POST_BYTES: usize = 64 * 1024;

/// The subscribe commands of a POST body: one JSON command a line, `subscribe` only.
fn posted(body: &[u8]) -> Result<Vec<String>, &'static str> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8")?;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(line).map_err(|_| "a line is not JSON")?;
        if v.get("command").and_then(Value::as_str) != Some("subscribe")
            || !v.get("identifier").is_some_and(Value::is_string)
        {
            return Err("only subscribe commands with an identifier");
        }
        out.push(line.to_owned());
    }
    if out.is_empty() {
        return Err("no subscribe command");
    }
    Ok(out)
}

/// One cable frame as an SSE event (`None`: nothing to send in this mode). Data frames carry
/// the message only, or the whole frame (`full`, for POSTed subscriptions: several
/// identifiers share the stream).
fn event(frame: &str, raw: bool, full: bool) -> Option<String> {
    let v: Value = serde_json::from_str(frame).ok()?;
    if let Some(kind) = v.get("type").and_then(Value::as_str) {
        if raw {
            return None;
        }
        let mut out = format!("event: {kind}\ndata: {frame}\n");
        if kind == "disconnect" && v.get("reconnect") == Some(&Value::Bool(false)) {
            out.push_str(&format!("retry: {NEVER_RETRY_MS}\n"));
        }
        out.push('\n');
        return Some(out);
    }
    let message = v.get("message")?;
    let mut out = String::new();
    if let (Some(offset), Some(epoch), Some(stream)) = (
        v.get("offset").and_then(Value::as_u64),
        v.get("epoch").and_then(Value::as_str),
        v.get("stream_id").and_then(Value::as_str),
    ) {
        out.push_str(&format!("id: {offset}/{epoch}/{stream}\n"));
    }
    let text = match message {
        _ if full => frame.to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for line in text.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    Some(out)
}

fn cors(headers: &mut HeaderMap, origin: Option<&HeaderValue>) {
    if let Some(o) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn refuse(status: StatusCode, origin: Option<&HeaderValue>, why: &str) -> Response {
    let mut r = (status, format!("{why}\n")).into_response();
    cors(r.headers_mut(), origin);
    r
}

/// Answers a CORS preflight from an allowed origin.
pub(crate) async fn preflight(State(state): State<ServerState>, req: Request) -> Response {
    let tls = req.extensions().get::<ConnMeta>().is_some_and(|m| m.tls);
    let origin = req.headers().get(header::ORIGIN).cloned();
    if !state.origins.allows(req.headers(), tls) {
        return refuse(StatusCode::FORBIDDEN, None, "Request origin not allowed");
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    cors(r.headers_mut(), origin.as_ref());
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Last-Event-ID, X-JID"),
    );
    r
}

/// `GET /events`.
pub(crate) async fn events(State(state): State<ServerState>, req: Request) -> Response {
    let meta = req.extensions().get::<ConnMeta>().copied();
    let origin = req.headers().get(header::ORIGIN).cloned();
    if origin.is_some()
        && !state
            .origins
            .allows(req.headers(), meta.is_some_and(|m| m.tls))
    {
        state.node.metrics().refused_upgrade("origin");
        return refuse(StatusCode::FORBIDDEN, None, "Request origin not allowed");
    }
    if state.node.is_shutting_down() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            origin.as_ref(),
            "Server is shutting down",
        );
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    let raw = form_urlencoded::parse(query.as_bytes())
        .any(|(k, v)| k == "raw" && matches!(&*v, "1" | "true" | "t" | "y" | "yes"));
    let post = req.method() == http::Method::POST;
    let subscribes = if post {
        let (parts, body) = req.into_parts();
        let body = match axum::body::to_bytes(body, MAX_POST_BYTES).await {
            Ok(b) => b,
            Err(_) => {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    origin.as_ref(),
                    "at most 64 KiB of commands",
                );
            }
        };
        match posted(&body) {
            Ok(s) => (s, Request::from_parts(parts, Body::empty())),
            Err(why) => return refuse(StatusCode::BAD_REQUEST, origin.as_ref(), why),
        }
    } else {
        let Some(ask) = ask(&query, req.headers()) else {
            return refuse(
                StatusCode::BAD_REQUEST,
                origin.as_ref(),
                "Name a subscription: identifier, channel, stream, signed_stream or turbo_signed_stream_name",
            );
        };
        let mut subscribe = json!({"command": "subscribe", "identifier": ask.identifier});
        if let Some(h) = &ask.history {
            subscribe["history"] = h.clone();
        }
        (vec![subscribe.to_string()], req)
    };
    let (subscribes, req) = subscribes;

    // The connection: the node's own, over an in-memory pipe.
    let (client_io, server_io) = tokio::io::duplex(PIPE_BYTES);
    let request = Box::new(ConnectRequest {
        uri: req.uri().clone(),
        headers: req.headers().clone(),
        remote_addr: meta.map(|m| m.remote),
        protocol: Some(Subprotocol::ActionCableV1ExtJson),
    });
    let node = state.node.clone();
    let transport = Transport::Stream(Box::new(server_io));
    state.node.spawn_tracked(async move {
        node.run_connection(transport, Decoder::new(), request)
            .await;
    });
    let mut client = ClientBuilder::new().take_over(client_io);

    // Welcome, then the subscription's answer, before the status is chosen.
    let mut early = Vec::new();
    let handshake = tokio::time::timeout(HANDSHAKE, async {
        let mut confirmed = 0;
        loop {
            let Some(Ok(m)) = client.next().await else {
                return Err((StatusCode::UNAUTHORIZED, "connection closed"));
            };
            let Some(text) = m.as_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or_default();
            match v.get("type").and_then(Value::as_str) {
                Some("welcome") => {
                    early.push(text.to_owned());
                    for subscribe in &subscribes {
                        if client.send(Message::text(subscribe.clone())).await.is_err() {
                            return Err((StatusCode::UNAUTHORIZED, "connection closed"));
                        }
                    }
                }
                Some("disconnect") => return Err((StatusCode::UNAUTHORIZED, "unauthorized")),
                Some("reject_subscription") => {
                    return Err((StatusCode::BAD_REQUEST, "subscription rejected"));
                }
                Some("confirm_subscription") => {
                    early.push(text.to_owned());
                    confirmed += 1;
                    if confirmed == subscribes.len() {
                        return Ok(());
                    }
                }
                Some("error") => return Err((StatusCode::BAD_REQUEST, "bad identifier")),
                _ => early.push(text.to_owned()),
            }
        }
    })
    .await;
    match handshake {
        Ok(Ok(())) => {}
        Ok(Err((status, why))) => return refuse(status, origin.as_ref(), why),
        Err(_) => {
            return refuse(
                StatusCode::GATEWAY_TIMEOUT,
                origin.as_ref(),
                "no answer from the cable",
            );
        }
    }

    // The stream: frames become events; a full body queue stops reading the pipe.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(BODY_QUEUE);
    let full = post;
    let gauge = state.node.metrics().sse_clients.clone();
    let write_timeout = state.node.config().write_timeout;
    gauge.inc();
    tokio::spawn(async move {
        let _gone = scopeguard(move || {
            gauge.dec();
        });
        // A reader that takes longer than the write timeout to make room is dropped, as a
        // WebSocket client would be; dropping the pipe ends the node's connection.
        let send = |e: String| {
            let tx = tx.clone();
            async move {
                matches!(
                    tokio::time::timeout(write_timeout, tx.send(Bytes::from(e))).await,
                    Ok(Ok(()))
                )
            }
        };
        for text in early {
            if let Some(e) = event(&text, raw, full)
                && !send(e).await
            {
                return;
            }
        }
        while let Some(Ok(m)) = client.next().await {
            let Some(text) = m.as_text() else { continue };
            let Some(e) = event(text, raw, full) else {
                continue;
            };
            if !send(e).await {
                return;
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
    }));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    cors(h, origin.as_ref());
    response
}

/// Runs `f` when dropped (the SSE gauge goes down however the stream task ends).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_one_subscription_first_match_wins() {
        let h = HeaderMap::new();
        let a = ask("channel=Chat&stream=x", &h).unwrap();
        assert_eq!(a.identifier, r#"{"channel":"Chat"}"#);
        let a = ask("identifier=%7B%22channel%22%3A%22A%22%7D&channel=B", &h).unwrap();
        assert_eq!(a.identifier, r#"{"channel":"A"}"#);
        let a = ask("turbo_signed_stream_name=abc--12&raw=1", &h).unwrap();
        assert_eq!(
            a.identifier,
            r#"{"channel":"Turbo::StreamsChannel","signed_stream_name":"abc--12"}"#
        );
        assert!(a.raw && a.history.is_none());
        assert_eq!(
            ask("stream=lobby&history_since=1700000000", &h)
                .unwrap()
                .history,
            Some(json!({"since": 1_700_000_000u64}))
        );
        assert_eq!(ask("", &h), None);
        assert_eq!(ask("channel=&raw=1", &h), None);
    }

    #[test]
    fn last_event_id_is_offset_epoch_stream_and_the_stream_may_hold_slashes() {
        let mut h = HeaderMap::new();
        h.insert(
            "last-event-id",
            HeaderValue::from_static("42/ep-1/chat/room/1"),
        );
        assert_eq!(
            ask("stream=chat/room/1", &h).unwrap().history,
            Some(
                json!({"since": null, "streams": {"chat/room/1": {"epoch": "ep-1", "offset": 42}}})
            )
        );
        for bad in ["x/ep/s", "42", "42/ep", "42//s", "/ep/s"] {
            h.insert("last-event-id", HeaderValue::from_str(bad).unwrap());
            assert_eq!(ask("stream=s", &h).unwrap().history, None, "{bad}");
        }
    }

    #[test]
    fn frames_become_events() {
        assert_eq!(
            event(r#"{"type":"welcome","sid":"s"}"#, false, false).as_deref(),
            Some("event: welcome\ndata: {\"type\":\"welcome\",\"sid\":\"s\"}\n\n")
        );
        assert_eq!(event(r#"{"type":"ping","message":1}"#, true, false), None);
        assert!(
            event(
                r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#,
                false,
                false
            )
            .unwrap()
            .contains("retry: 31536000000\n")
        );
        assert_eq!(
            event(
                r#"{"identifier":"i","message":"<p>a</p>\r\n<p>b</p>","stream_id":"s/1","epoch":"e","offset":7}"#,
                true,
                false
            )
            .as_deref(),
            Some("id: 7/e/s/1\ndata: <p>a</p>\ndata: <p>b</p>\n\n")
        );
        assert_eq!(
            event(r#"{"identifier":"i","message":{"n":1}}"#, false, false).as_deref(),
            Some("data: {\"n\":1}\n\n")
        );
        assert_eq!(event("not json", false, false), None);
        // POSTed subscriptions: the whole frame, so the reader knows which one it is.
        assert_eq!(
            event(r#"{"identifier":"i","message":{"n":1}}"#, false, true).as_deref(),
            Some("data: {\"identifier\":\"i\",\"message\":{\"n\":1}}\n\n")
        );
    }

    proptest::proptest! {
        #[test]
        fn any_query_and_last_event_id_is_a_subscription_or_none(
            query in ".{0,200}",
            last in "[ -~]{0,80}",
        ) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&last) {
                h.insert("last-event-id", v);
            }
            let _ = ask(&query, &h);
        }

        #[test]
        fn any_body_is_commands_or_a_refusal(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = posted(&body);
        }
    }

    #[test]
    fn a_post_holds_subscribe_commands_only() {
        let ok = posted(b"{\"command\":\"subscribe\",\"identifier\":\"{}\"}\n\n{\"command\":\"subscribe\",\"identifier\":\"x\"}\n");
        assert_eq!(ok.map(|v| v.len()), Ok(2));
        for bad in [
            &b""[..],
            b"\xff",
            b"not json",
            b"{\"command\":\"message\",\"identifier\":\"x\",\"data\":\"{}\"}",
            b"{\"command\":\"subscribe\"}",
        ] {
            assert!(posted(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
