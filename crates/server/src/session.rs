//! The session door on HTTP and on the cable: one signed-cookie session, readable and
//! writable from page handlers and from channels.
//!
//! - [`session_layer`] gives every page request a [`CurrentSession`] (from the signed cookie,
//!   or a fresh id when the cookie is missing, tampered or unknown) and sets the cookie.
//! - [`cable_session`] reads the same cookie from the cable's upgrade request; the server
//!   installs it as the node's session source, so every connection's [`Identity::session`]
//!   is the page session whatever the app's authenticator does.
//! - [`SessionChannel`] (only when an app registers it) reads the session from the cable and
//!   changes allow-listed keys.
//! - A store outage answers 503 with a clear body (pages) or an `error` frame (cable), is
//!   counted in `ferrocable_store_errors_total{store="session"}`, and the server keeps running.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferrocable_node::{Channel, ChannelContext, ConnectRequest, Metrics, Node, PerformError};
use ferrocable_session::{SessionData, Sessions, StoreError, new_session_id};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tracing::warn;

#[cfg(doc)]
use ferrocable_node::Identity;

/// What the session layer needs.
#[derive(Clone)]
pub struct SessionState {
    /// The sessions.
    pub sessions: Arc<Sessions>,
}

/// The session of the current page request: an axum extractor for page handlers. Reads and
/// writes go to the same store the cable's reflexes use, so a page and a reflex see one
/// session.
#[derive(Clone)]
pub struct CurrentSession {
    /// Shared with the layer, which writes the cookie for whatever id the handler leaves.
    id: Arc<parking_lot::Mutex<String>>,
    sessions: Arc<Sessions>,
    /// For the store-error metric (absent only outside a running server).
    node: Option<Node>,
}

/// A session operation failed; renders as 503 (store down) or 413 (too large).
#[derive(Debug)]
pub struct SessionFailure(pub StoreError);

impl IntoResponse for SessionFailure {
    fn into_response(self) -> Response {
        let status = match self.0 {
            StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.0),
        )
            .into_response()
    }
}

fn observe<T>(
    metrics: Option<&Metrics>,
    op: &str,
    r: Result<T, StoreError>,
) -> Result<T, StoreError> {
    if let Err(e) = &r {
        if !matches!(e, StoreError::TooLarge { .. }) {
            warn!(op, error = %e, "session store call failed");
        }
        if let Some(metrics) = metrics {
            metrics.store_error("session", op);
        }
    }
    r
}

impl CurrentSession {
    /// The session id.
    pub fn id(&self) -> String {
        self.id.lock().clone()
    }

    /// The session's data (empty for a new session). A corrupt record reads as empty.
    pub async fn data(&self) -> Result<SessionData, SessionFailure> {
        match self.sessions.load(&self.id()).await {
            Ok(d) => Ok(d.unwrap_or_default()),
            Err(StoreError::Corrupt(e)) => {
                warn!(error = %e, "corrupt session read as empty");
                Ok(SessionData::new())
            }
            Err(e) => Err(SessionFailure(
                observe(
                    self.node.as_ref().map(Node::metrics),
                    "load",
                    Err::<(), _>(e),
                )
                .unwrap_err(),
            )),
        }
    }

    /// Changes the session with no lost updates (see [`Sessions::update`]).
    pub async fn update<R>(
        &self,
        change: impl FnMut(&mut SessionData) -> R,
    ) -> Result<R, SessionFailure> {
        observe(
            self.node.as_ref().map(Node::metrics),
            "save",
            self.sessions.update(&self.id(), change).await,
        )
        .map_err(SessionFailure)
    }

    /// Moves the session to a fresh id (call it at login, against session fixation); the
    /// response carries the new cookie and the old id stops working.
    pub async fn renew(&self) -> Result<(), SessionFailure> {
        let new_id = observe(
            self.node.as_ref().map(Node::metrics),
            "renew",
            self.sessions.renew(&self.id()).await,
        )
        .map_err(SessionFailure)?;
        *self.id.lock() = new_id;
        Ok(())
    }

    /// Empties the session, keeping its id.
    pub async fn clear(&self) -> Result<(), SessionFailure> {
        observe(
            self.node.as_ref().map(Node::metrics),
            "save",
            self.sessions.clear(&self.id()).await,
        )
        .map_err(SessionFailure)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentSession {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CurrentSession>()
            .cloned()
            .ok_or((StatusCode::INTERNAL_SERVER_ERROR, "session layer missing\n"))
    }
}

fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for a session id.
pub fn set_cookie(sessions: &Sessions, id: &str) -> String {
    let o = sessions.options();
    let mut c = format!(
        "{}={}; Path=/; Max-Age={}; SameSite={}",
        o.cookie_name,
        sessions.signer().sign(id),
        o.expire_after.as_secs(),
        o.same_site
    );
    if o.http_only {
        c.push_str("; HttpOnly");
    }
    if o.secure {
        c.push_str("; Secure");
    }
    c
}

/// Middleware: attach the session, refresh the cookie (sliding expiry).
pub async fn session_layer(
    State(state): State<SessionState>,
    mut req: Request,
    next: Next,
) -> Response {
    let name = &state.sessions.options().cookie_name;
    let id = match cookie_value(req.headers(), name) {
        Some(value) => match state.sessions.signer().verify(value) {
            Some(id) => id.to_owned(),
            None => {
                warn!("tampered session cookie; starting a fresh session");
                new_session_id()
            }
        },
        None => new_session_id(),
    };
    let id = Arc::new(parking_lot::Mutex::new(id));
    let node = req
        .extensions()
        .get::<crate::page::Cable>()
        .map(|c| c.node().clone());
    req.extensions_mut().insert(CurrentSession {
        id: id.clone(),
        sessions: state.sessions.clone(),
        node,
    });
    let mut response = next.run(req).await;
    let id = id.lock().clone();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(&state.sessions, &id)) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// The page session of a cable connection: the id in its signed session cookie, if the
/// cookie is there and untampered (pages set the cookie before the cable connects). The
/// server gives this to [`ferrocable_node::NodeBuilder::session_of`].
pub fn cable_session(sessions: &Sessions, request: &ConnectRequest) -> Option<String> {
    let value = request.cookie(&sessions.options().cookie_name)?;
    match sessions.signer().verify(value) {
        Some(id) => Some(id.to_owned()),
        None => {
            warn!("tampered session cookie on the cable; connecting without a session");
            None
        }
    }
}

/// `SessionChannel`: the session from the cable, for apps that want it (no server registers
/// it by default). Subscribing transmits the session; actions `get` (transmit it),
/// `increment` (add 1 to `data.key`, default `count`) and `set` (`data.key` = `data.value`),
/// both of which answer with the session. Only the keys given to [`SessionChannel::new`] can
/// be changed: a cable client must never write keys the server trusts (`user_id`, roles).
pub struct SessionChannel {
    sessions: Arc<Sessions>,
    writable: Vec<String>,
}

impl SessionChannel {
    /// A channel over `sessions` that may change only the `writable` keys.
    pub fn new(sessions: Arc<Sessions>, writable: &[&str]) -> Self {
        SessionChannel {
            sessions,
            writable: writable.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    fn failed(&self, ctx: &ChannelContext, op: &str, e: StoreError) -> PerformError {
        let _ = observe(ctx.node().map(Node::metrics), op, Err::<(), _>(e.clone()));
        PerformError::Failed(e.to_string())
    }
}

impl Channel for SessionChannel {
    async fn subscribed(&self, ctx: &mut ChannelContext) {
        let Some(id) = ctx.identity().session_id().map(str::to_owned) else {
            ctx.reject();
            return;
        };
        match self.sessions.load(&id).await {
            Ok(data) => {
                let _ = ctx.transmit(&json!({"session": data.unwrap_or_default()}));
            }
            Err(e) => {
                let _ = self.failed(ctx, "load", e.clone());
                let _ = ctx.transmit(&json!({"error": e.to_string()}));
            }
        }
    }

    async fn perform(
        &self,
        ctx: &mut ChannelContext,
        action: &str,
        data: Value,
    ) -> Result<(), PerformError> {
        let id = ctx
            .identity()
            .session_id()
            .map(str::to_owned)
            .ok_or_else(|| PerformError::Failed("no session".into()))?;
        let key = data
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or("count")
            .to_owned();
        if action != "get" && !self.writable.contains(&key) {
            return Err(PerformError::InvalidData(format!(
                "session key {key:?} cannot be changed from the cable"
            )));
        }
        let session = match action {
            "get" => self
                .sessions
                .load(&id)
                .await
                .map(Option::unwrap_or_default)
                .map_err(|e| self.failed(ctx, "load", e))?,
            "increment" => self
                .sessions
                .update(&id, |d| {
                    let n = d.get(&key).and_then(Value::as_i64).unwrap_or(0);
                    d.insert(key.clone(), json!(n + 1));
                    d.clone()
                })
                .await
                .map_err(|e| self.failed(ctx, "save", e))?,
            "set" => {
                let value = data.get("value").cloned().unwrap_or(Value::Null);
                self.sessions
                    .update(&id, |d| {
                        d.insert(key.clone(), value.clone());
                        d.clone()
                    })
                    .await
                    .map_err(|e| self.failed(ctx, "save", e))?
            }
            other => return Err(PerformError::UnknownAction(other.to_owned())),
        };
        ctx.transmit(&json!({"session": session}))
            .map_err(|e| PerformError::Failed(e.to_string()))
    }
}
