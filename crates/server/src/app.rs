//! HTTP routes: the cable endpoint, health, metrics and the landing page.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::session::{CurrentSession, SessionFailure, SessionState, session_layer};
use ferrocable_node::Node;
use http::{StatusCode, header};

use crate::config::ServeConfig;
use crate::origin::OriginPolicy;

/// Shared state of every route.
#[derive(Clone)]
pub struct AppState {
    /// The cable node.
    pub node: Node,
    /// Who may open the cable.
    pub origins: Arc<OriginPolicy>,
    /// Where pages tell clients the cable is.
    pub cable_url: Arc<str>,
    /// The sessions shared by pages and the cable.
    pub sessions: Arc<ferrocable_session::Sessions>,
    /// The demo app's state.
    pub demo: Arc<crate::demo::Demo>,
    /// Bearer key of `POST /_broadcast`.
    pub broadcast_key: Arc<str>,
}

/// Builds the router.
pub fn router(state: AppState, config: &ServeConfig) -> Router {
    let session_state = SessionState {
        sessions: state.sessions.clone(),
        node: state.node.clone(),
    };
    let pages = Router::new()
        .route("/", get(crate::demo::counter_page))
        .route("/todos", get(crate::demo::todos_page))
        .route("/chat", get(crate::demo::chat_page))
        .route("/session", get(session_json))
        .route("/session/increment", post(session_increment))
        .route("/session/renew", post(session_renew))
        .route("/session/clear", post(session_clear))
        .layer(axum::middleware::from_fn_with_state(
            session_state,
            session_layer,
        ));
    Router::new()
        .route(&config.mount_path, get(crate::upgrade::cable))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/_broadcast", post(broadcast_ingress))
        .route("/assets/app.css", get(crate::demo::app_css))
        .route("/assets/app.js", get(crate::demo::app_js))
        .route("/vendor/{*file}", get(crate::demo::vendor))
        .merge(pages)
        .with_state(state)
}

/// Compares two secrets in constant time (HMACs of both under one key, verified by ring).
fn keys_match(given: &str, expected: &str) -> bool {
    use ring::hmac;
    let k = hmac::Key::new(hmac::HMAC_SHA256, b"ferrocable ingress key check");
    let tag = hmac::sign(&k, expected.as_bytes());
    hmac::verify(&k, given.as_bytes(), tag.as_ref()).is_ok()
}

/// Largest `POST /_broadcast` body.
const MAX_INGRESS_BYTES: usize = 1024 * 1024;

/// `POST /_broadcast`: AnyCable's HTTP broadcast ingress (Bearer key; one publication or an
/// array). 201 when delivered to this node and the bus; 401, 400 or 413 otherwise.
async fn broadcast_ingress(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    let metrics = state.node.metrics();
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| keys_match(k.trim(), &state.broadcast_key));
    if !authorized {
        metrics.ingress_refused("unauthorized");
        return (StatusCode::UNAUTHORIZED, "missing or wrong broadcast key\n").into_response();
    }
    let body = match axum::body::to_bytes(req.into_body(), MAX_INGRESS_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            metrics.ingress_refused("too_large");
            return (StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB\n").into_response();
        }
    };
    match ferrocable_node::ingress::decode_publications(&body) {
        Ok(list) => {
            for p in &list {
                let _ = state.node.broadcast(&p.stream, &p.message);
            }
            (StatusCode::CREATED, "").into_response()
        }
        Err(e) => {
            metrics.ingress_refused("malformed");
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
    }
}

/// `GET /session`: the current session as JSON (the demo's window on the session).
async fn session_json(session: CurrentSession) -> Result<Json<Value>, SessionFailure> {
    Ok(Json(json!({"session": session.data().await?})))
}

/// `POST /session/renew`: moves the session to a new id (new cookie), keeping its data.
async fn session_renew(session: CurrentSession) -> Result<Json<Value>, SessionFailure> {
    session.renew().await?;
    Ok(Json(json!({"session": session.data().await?})))
}

/// `POST /session/clear`: empties the session.
async fn session_clear(session: CurrentSession) -> Result<Json<Value>, SessionFailure> {
    session.clear().await?;
    Ok(Json(json!({"session": session.data().await?})))
}

/// `POST /session/increment`: adds one to the session's `count`.
async fn session_increment(session: CurrentSession) -> Result<Json<Value>, SessionFailure> {
    let data = session
        .update(|d| {
            let n = d.get("count").and_then(Value::as_i64).unwrap_or(0);
            d.insert("count".into(), json!(n + 1));
            d.clone()
        })
        .await?;
    Ok(Json(json!({"session": data})))
}

async fn health(State(state): State<AppState>) -> Response {
    if state.node.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, ferrocable_node::metrics::CONTENT_TYPE)],
        state.node.metrics().render(),
    )
        .into_response()
}
