//! A chat: messages typed in any browser appear in every browser on the page (a reflex
//! broadcasts CableReady operations to a signed stream), and a background task posts the time
//! every few seconds through the same stream, from outside any request.
//!
//! `npm ci --prefix crates/ferrocable && cargo run --example chat`, then open
//! <http://127.0.0.1:3000/> in two windows. The clock's period is an app setting:
//! `FERROCABLE_APP_TICK_SECS=5` or `[app] tick_secs = 5` in the config file.

use std::time::Duration;

use ferrocable::axum::{response::Html, routing::get};
use ferrocable::{
    App, Cable, Node, Operation, Reflex, ReflexContext, ReflexError, broadcast_operations,
};

/// The stream every chat page listens to.
const ROOM: &str = "chat:lobby";

/// The app's own settings.
#[derive(serde::Deserialize)]
struct Settings {
    #[serde(default = "default_tick")]
    tick_secs: u64,
}

fn default_tick() -> u64 {
    3
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of the chat, as HTML.
fn line(who: &str, text: &str) -> String {
    format!(
        r#"<li class="message"><b>{}</b>: {}</li>"#,
        escape(who),
        escape(text)
    )
}

/// Appends a line for everyone on the page.
fn post(node: &Node, who: &str, text: &str) {
    broadcast_operations(
        node,
        ROOM,
        vec![Operation::insert_adjacent_html(
            "#messages",
            &line(who, text),
            "beforeend",
        )],
    );
}

/// `Chat#post`: the form's `name` and `text`, to everyone; this tab's page does not change.
struct Chat;

impl Reflex for Chat {
    fn methods(&self) -> &'static [(&'static str, usize, usize)] {
        &[("post", 0, 0)]
    }

    async fn call(&self, _method: &str, ctx: &mut ReflexContext) -> Result<(), ReflexError> {
        let text = ctx.param(&["text"]).unwrap_or("").trim().to_owned();
        let name = ctx.param(&["name"]).unwrap_or("").trim();
        let name = if name.is_empty() { "anonymous" } else { name }.to_owned();
        if text.is_empty() {
            return ctx.morph_nothing();
        }
        if text.chars().count() > 500 || name.chars().count() > 40 {
            return Err(ReflexError::Argument("message or name too long".into()));
        }
        ctx.broadcast(
            ROOM,
            vec![Operation::insert_adjacent_html(
                "#messages",
                &line(&name, &text),
                "beforeend",
            )],
        );
        ctx.morph_nothing()
    }
}

async fn page(cable: Cable) -> Html<String> {
    Html(format!(
        r#"<!doctype html>
<html><head><title>Chat</title>{head}</head>
<body>
<cable-ready-stream-from identifier="{stream}"></cable-ready-stream-from>
<ul id="messages"></ul>
<form id="chat" data-reflex="submit->Chat#post">
  <input id="name" name="name" placeholder="name">
  <input id="text" name="text" placeholder="message" autocomplete="off">
  <button id="send">Send</button>
</form>
</body></html>"#,
        head = cable.head(),
        stream = escape(&cable.signed_stream(ROOM)),
    ))
}

fn main() -> Result<(), ferrocable::Error> {
    App::new()
        .browser_packages(concat!(env!("CARGO_MANIFEST_DIR"), "/node_modules"))
        .route("/", get(page))
        .reflex("Chat", Chat)
        .on_start(|node, services| {
            let tick = services
                .config
                .app_settings::<Settings>()
                .map_or(default_tick(), |s| s.tick_secs)
                .max(1);
            let node = node.clone();
            // The task ends with the node: a broadcast after shutdown reaches no one, and the
            // runtime drops the task at exit.
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    tokio::time::sleep(Duration::from_secs(tick)).await;
                    n += 1;
                    post(&node, "clock", &format!("tick {n}"));
                }
            });
        })
        .run()
}
