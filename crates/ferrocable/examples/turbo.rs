//! Turbo Streams with no JavaScript of the app's own: the page subscribes with turbo-rails'
//! `<turbo-cable-stream-source>` (a signed stream name, [`Cable::turbo_stream_from`]); a
//! message posted from any browser is appended in every browser by a `<turbo-stream>`
//! broadcast, and the poster's form is reset by the `<turbo-stream>` the POST answers with.
//!
//! `/sse` is the same page reading the stream as server-sent events instead
//! (`<turbo-stream-source src=".../events?turbo_signed_stream_name=…">`, Turbo's EventSource
//! source): run with `FERROCABLE_SSE=true`; `FERROCABLE_APP_EVENTS_URL` puts the events on
//! another origin (allow the page's origin with `FERROCABLE_ALLOWED_ORIGINS`).
//!
//! `npm ci --prefix crates/ferrocable && cargo run --example turbo`, then open
//! <http://127.0.0.1:3000/> in two windows.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use ferrocable::axum::body::Bytes;
use ferrocable::axum::extract::State;
use ferrocable::axum::http::header;
use ferrocable::axum::response::{Html, IntoResponse};
use ferrocable::axum::routing::get;
use ferrocable::{App, Cable, TurboStream};

/// The streamables every page listens to (turbo-rails joins them with `:`).
const ROOM: &[&str] = &["room", "lobby"];
/// Messages kept for pages opened later (the oldest are forgotten).
const KEEP: usize = 50;

/// Every message posted so far is counted; the last [`KEEP`] are kept as HTML.
#[derive(Default)]
struct Room {
    total: usize,
    recent: VecDeque<String>,
}

type Messages = Arc<Mutex<Room>>;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn message_html(n: usize, text: &str) -> String {
    format!(r#"<li id="message_{n}">{}</li>"#, escape(text))
}

const FORM: &str = r#"<form id="new_message" action="/messages" method="post">
  <input id="text" name="text" placeholder="message" autocomplete="off" autofocus>
  <button id="send">Send</button>
</form>"#;

/// The app's own settings.
#[derive(serde::Deserialize, Default)]
struct Settings {
    /// Where the events are served (default: this origin).
    #[serde(default)]
    events_url: String,
}

async fn page(cable: Cable, State(messages): State<Messages>) -> Html<String> {
    let source = cable.turbo_stream_from(ROOM);
    render(&cable, &messages, &source)
}

/// The same page, reading the stream as server-sent events.
async fn sse_page(
    cable: Cable,
    State((messages, events_url)): State<(Messages, Arc<str>)>,
) -> Html<String> {
    let src = format!(
        "{events_url}/events?turbo_signed_stream_name={}",
        form_urlencoded::byte_serialize(cable.turbo_signed_stream_name(ROOM).as_bytes())
            .collect::<String>()
    );
    let source = format!(
        r#"<turbo-stream-source src="{}"></turbo-stream-source>"#,
        escape(&src)
    );
    render(&cable, &messages, &source)
}

fn render(cable: &Cable, messages: &Messages, source: &str) -> Html<String> {
    let (count, items) = {
        let room = messages.lock().unwrap_or_else(|p| p.into_inner());
        (
            room.total,
            room.recent.iter().map(String::as_str).collect::<String>(),
        )
    };
    Html(format!(
        r#"<!doctype html>
<html><head><title>Turbo Streams</title>{meta}
<script type="module">import "@hotwired/turbo-rails"</script></head>
<body>
{source}
<p><span id="count">{count}</span> messages</p>
<ul id="messages">{items}</ul>
{FORM}
</body></html>"#,
        meta = cable.meta_tags(),
    ))
}

/// `POST /messages`: appends the message in every browser (over the cable) and answers the
/// poster with a fresh form (a Turbo Stream response).
async fn create(cable: Cable, State(messages): State<Messages>, body: Bytes) -> impl IntoResponse {
    let text = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "text")
        .map(|(_, v)| v.trim().chars().take(500).collect::<String>())
        .unwrap_or_default();
    if !text.is_empty() {
        let (n, html) = {
            let mut room = messages.lock().unwrap_or_else(|p| p.into_inner());
            room.total += 1;
            let html = message_html(room.total, &text);
            room.recent.push_back(html.clone());
            if room.recent.len() > KEEP {
                room.recent.pop_front();
            }
            (room.total, html)
        };
        cable.broadcast_turbo_streams(
            ROOM,
            &[
                TurboStream::append("messages", &html),
                TurboStream::update("count", &n.to_string()),
            ],
        );
    }
    (
        [(header::CONTENT_TYPE, "text/vnd.turbo-stream.html")],
        TurboStream::replace("new_message", FORM).to_html(),
    )
}

fn main() -> Result<(), ferrocable::Error> {
    let messages = Messages::default();
    // The app's settings as `run` will read them (`FERROCABLE_APP_EVENTS_URL`).
    let events_url: Arc<str> =
        ferrocable::ServeConfig::load(None, ferrocable::serde_json::json!({}))?
            .app_settings::<Settings>()
            .unwrap_or_default()
            .events_url
            .trim_end_matches('/')
            .into();
    App::new()
        .browser_packages(concat!(env!("CARGO_MANIFEST_DIR"), "/node_modules"))
        .route("/", get(page).with_state(messages.clone()))
        .route(
            "/sse",
            get(sse_page).with_state((messages.clone(), events_url)),
        )
        .route(
            "/messages",
            ferrocable::axum::routing::post(create).with_state(messages),
        )
        .run()
}
