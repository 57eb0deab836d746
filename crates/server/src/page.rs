//! Pages and the cable, joined: the [`Cable`] extractor that page handlers use (the node, signed
//! stream names, the `<head>` tags that load the browser packages) and the [`PageHost`] that
//! re-renders a page for a page morph through the app's own router, with the user's session.
//!
//! A page morph is a GET of the browser's URL made inside the server: it runs the same
//! handlers, the same session layer and sees the same [`Cable`], so what a reflex re-renders
//! is exactly what a reload would show.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::FromRequestParts;
use ferrocable_node::Node;
use ferrocable_reflex::{PageRequest, ReflexHost, SessionChange, StreamSigner};
use ferrocable_session::{Sessions, StoreError};
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value};
use tower::ServiceExt;
use tracing::warn;

/// What pages know about the cable they run beside. Every page request carries one (the
/// server adds it; take it as a handler argument), and so do the renders of page morphs.
#[derive(Clone)]
pub struct Cable {
    node: Node,
    site: Arc<Site>,
}

/// The parts of a [`Cable`] that do not depend on the node: fixed when the server starts.
pub(crate) struct Site {
    pub(crate) signer: StreamSigner,
    pub(crate) streams: ferrocable_streams::MessageVerifier,
    pub(crate) turbo: ferrocable_streams::MessageVerifier,
    pub(crate) cable_url: Arc<str>,
    pub(crate) import_map: String,
}

impl std::fmt::Debug for Cable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cable")
            .field("cable_url", &self.site.cable_url)
            .finish_non_exhaustive()
    }
}

/// Escapes text for an HTML attribute value or element content.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Cable {
    pub(crate) fn new(node: Node, site: Arc<Site>) -> Self {
        Cable { node, site }
    }

    /// The cable node: broadcasts, metrics.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// `stream` signed for a `CableReady::Stream` subscription (the value of
    /// `<cable-ready-stream-from identifier="…">` or a `cable_ready` stream helper), so a page
    /// can listen to a stream a client could not pick by itself.
    pub fn signed_stream(&self, stream: &str) -> String {
        self.site.signer.sign(stream)
    }

    /// `stream` signed for a `$pubsub` subscription
    /// (`{"channel":"$pubsub","signed_stream_name":…}`, `@anycable/web`'s
    /// `cable.streamFromSigned(…)`), with the streams key (`ANYCABLE_STREAMS_SECRET`).
    pub fn signed_pubsub_stream(&self, stream: &str) -> String {
        self.site.streams.generate(stream)
    }

    /// The `<turbo-cable-stream-source>` tag that subscribes the page to `streamables`
    /// (turbo-rails' `turbo_stream_from`), signed with the Turbo key; broadcast to it with
    /// [`Cable::broadcast_turbo_streams`].
    pub fn turbo_stream_from(&self, streamables: &[&str]) -> String {
        ferrocable_streams::turbo_stream_from(&self.site.turbo, streamables)
    }

    /// The signed name of `streamables` for Turbo, as `<turbo-stream-source>` puts it in the
    /// URL of a server-sent events source (`/events?turbo_signed_stream_name=…`).
    pub fn turbo_signed_stream_name(&self, streamables: &[&str]) -> String {
        self.site
            .turbo
            .generate(&ferrocable_streams::stream_name_from(streamables))
    }

    /// Sends `<turbo-stream>` actions to every page subscribed to `streamables`.
    pub fn broadcast_turbo_streams(
        &self,
        streamables: &[&str],
        streams: &[ferrocable_streams::TurboStream],
    ) -> ferrocable_node::BroadcastReport {
        ferrocable_streams::broadcast_turbo_streams(&self.node, streamables, streams)
    }

    /// Where the browser opens the cable (`<meta name="action-cable-url">`).
    pub fn cable_url(&self) -> &str {
        &self.site.cable_url
    }

    /// The tags that connect a page to the cable with an app's own script: the
    /// `action-cable-url` meta tag and the import map of the browser packages the server
    /// serves. Put them in `<head>` before a `<script type="module">` of the app's.
    pub fn meta_tags(&self) -> String {
        format!(
            "<meta name=\"action-cable-url\" content=\"{}\">\n<script type=\"importmap\">{}</script>",
            escape(&self.site.cable_url),
            self.site.import_map
        )
    }

    /// Everything a reflex page needs in its `<head>`: [`Cable::meta_tags`] and the module
    /// that starts Stimulus, the cable consumer, CableReady and StimulusReflex. With it, a
    /// `data-reflex="click->Counter#increment"` button works and nothing else is needed.
    pub fn head(&self) -> String {
        format!(
            "{}\n<script type=\"module\">import \"ferrocable\"</script>",
            self.meta_tags()
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Cable {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Cable>().cloned().ok_or((
            StatusCode::INTERNAL_SERVER_ERROR,
            "no cable on this request (a route outside the app's pages)\n",
        ))
    }
}

/// Largest page a page morph reads back.
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// The reflex host of a server: the session store and the app's pages (behind the session
/// layer). Page morphs render through `pages`; sessions are loaded and committed in `sessions`.
pub struct PageHost {
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) pages: Router,
    pub(crate) site: Arc<Site>,
}

impl ReflexHost for PageHost {
    async fn load_session(&self, session_id: Option<&str>) -> Result<Map<String, Value>, String> {
        let Some(id) = session_id else {
            return Ok(Map::new());
        };
        match self.sessions.load(id).await {
            Ok(d) => Ok(d.unwrap_or_default()),
            Err(StoreError::Corrupt(_)) => Ok(Map::new()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn commit_session(
        &self,
        session_id: Option<&str>,
        mut changes: Vec<SessionChange>,
    ) -> Result<(), String> {
        let Some(id) = session_id else {
            warn!("reflex changed the session of a connection without a session cookie; dropped");
            return Ok(());
        };
        self.sessions
            .update(id, |d| {
                for change in changes.iter_mut() {
                    change(d);
                }
            })
            .await
            .map_err(|e| e.to_string())
    }

    async fn render_page(&self, page: PageRequest<'_>) -> Result<String, String> {
        let uri: http::Uri = page
            .url
            .parse()
            .map_err(|e| format!("bad url {:?}: {e}", page.url))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = http::Request::get(path)
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        if let Some(host) = uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        if let Some(id) = page.session_id {
            let cookie = format!(
                "{}={}",
                self.sessions.options().cookie_name,
                self.sessions.signer().sign(id)
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                req.headers_mut().insert(header::COOKIE, v);
            }
        }
        if let Some(node) = page.node {
            req.extensions_mut()
                .insert(Cable::new(node.clone(), self.site.clone()));
        }
        let response = self
            .pages
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{path} answered {}", response.status()));
        }
        let body = axum::body::to_bytes(response.into_body(), MAX_PAGE_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn attribute_text_is_escaped() {
        assert_eq!(
            super::escape(r#"/cable?a=1&b="<x>'"#),
            "/cable?a=1&amp;b=&quot;&lt;x&gt;&#39;"
        );
    }
}
