//! HTTP routes: the cable endpoint, health, metrics, broadcast ingress, the browser files and
//! the app's own pages (behind the session layer, each request carrying a [`Cable`]).

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{StatusCode, header};

use crate::assets::Assets;
use crate::config::ServeConfig;
use crate::page::Cable;
use crate::state::ServerState;

/// Builds the router: the server's own routes, the browser files, then the app's `pages`
/// (already behind the session layer), each page request given `cable`.
pub(crate) fn router(
    state: ServerState,
    config: &ServeConfig,
    assets: &Assets,
    pages: Router,
    cable: Cable,
) -> Router {
    let mut router = Router::new().route(&config.mount_path, get(crate::upgrade::cable));
    if config.sse {
        router = router.route(
            &config.sse_path,
            get(crate::sse::events)
                .post(crate::sse::events)
                .options(crate::sse::preflight),
        );
    }
    if config.bench_channel {
        router = router.route("/_echo", get(crate::echo::echo));
    }
    router
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/_broadcast", post(broadcast_ingress))
        .with_state(state)
        .merge(assets.routes())
        .merge(pages.layer(axum::Extension(cable)))
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
async fn broadcast_ingress(
    State(state): State<ServerState>,
    req: axum::extract::Request,
) -> Response {
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
                let _ = state.node.publish(p, false);
            }
            (StatusCode::CREATED, "").into_response()
        }
        Err(e) => {
            metrics.ingress_refused("malformed");
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
    }
}

async fn health(State(state): State<ServerState>) -> Response {
    if state.node.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn metrics(State(state): State<ServerState>) -> Response {
    let mut text = state.node.metrics().render();
    if let Some(rpc) = &state.rpc {
        text.push_str(&rpc.metrics().render());
    }
    (
        [(header::CONTENT_TYPE, ferrocable_node::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response()
}
