//! A custom channel behind a token authenticator, with no reflexes: the browser talks to
//! `RoomChannel` with the plain `@rails/actioncable` client. The connection is identified by
//! a `token` query parameter (Rails' `identified_by :current_user`); a wrong or missing token
//! is refused with `unauthorized` and the client does not reconnect.
//!
//! `npm ci --prefix crates/ferrocable && cargo run --example token_channel`, then open
//! <http://127.0.0.1:3000/?token=alice-token&room=lobby> and
//! <http://127.0.0.1:3000/?token=bob-token&room=lobby>.
//! The tokens are an app setting (`[app.tokens]` in the config file: token = user); a real
//! app verifies a signed token (a JWT, a Rails message) instead of a table.

use std::collections::HashMap;

use ferrocable::axum::{response::Html, routing::get};
use ferrocable::serde_json::{Value, json};
use ferrocable::{
    App, Authenticator, Cable, Channel, ChannelContext, ConnectRequest, Identity, PerformError,
    Unauthorized,
};

/// Token → user name.
#[derive(Clone, serde::Deserialize)]
struct Tokens(HashMap<String, String>);

impl Default for Tokens {
    fn default() -> Self {
        Tokens(HashMap::from([
            ("alice-token".into(), "alice".into()),
            ("bob-token".into(), "bob".into()),
        ]))
    }
}

#[derive(serde::Deserialize, Default)]
struct Settings {
    #[serde(default)]
    tokens: Tokens,
}

/// `identified_by :user`, from the `token` query parameter of the cable URL.
struct TokenAuthenticator {
    tokens: Tokens,
}

impl Authenticator for TokenAuthenticator {
    async fn authenticate(&self, request: &ConnectRequest) -> Result<Identity, Unauthorized> {
        let token = request
            .query_param("token")
            .ok_or_else(|| Unauthorized::new("no token"))?;
        let user = self
            .tokens
            .0
            .get(token)
            .ok_or_else(|| Unauthorized::new("unknown token"))?;
        Ok(Identity::anonymous().with("user", user.clone()))
    }
}

/// `RoomChannel`: `{"channel":"RoomChannel","room":"lobby"}` streams `room:lobby`; the
/// `speak` action says `text` to the room as the connection's user.
struct RoomChannel;

fn room(ctx: &ChannelContext) -> Option<String> {
    ctx.params()
        .get("room")
        .and_then(Value::as_str)
        .filter(|r| {
            !r.is_empty()
                && r.len() <= 32
                && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(|r| format!("room:{r}"))
}

impl Channel for RoomChannel {
    async fn subscribed(&self, ctx: &mut ChannelContext) {
        match room(ctx) {
            Some(stream) => ctx.stream_from(stream),
            None => ctx.reject(),
        }
    }

    async fn perform(
        &self,
        ctx: &mut ChannelContext,
        action: &str,
        data: Value,
    ) -> Result<(), PerformError> {
        if action != "speak" {
            return Err(PerformError::UnknownAction(action.to_owned()));
        }
        let text = data
            .get("text")
            .and_then(Value::as_str)
            .filter(|t| !t.trim().is_empty() && t.chars().count() <= 500)
            .ok_or_else(|| PerformError::InvalidData("text: 1 to 500 characters".into()))?;
        let user = ctx.identity().get("user").unwrap_or("?").to_owned();
        let stream = room(ctx).ok_or_else(|| PerformError::InvalidData("no room".into()))?;
        ctx.broadcast(stream, &json!({"user": user, "text": text}))
            .map_err(|e| PerformError::Failed(e.to_string()))
    }
}

/// The page's script: the plain Action Cable client, the token from the page's own URL.
const SCRIPT: &str = r##"
import { createConsumer } from "@rails/actioncable"
const params = new URLSearchParams(location.search)
const consumer = createConsumer(`/cable?token=${encodeURIComponent(params.get("token") || "")}`)
const status = document.querySelector("#status")
const room = consumer.subscriptions.create({ channel: "RoomChannel", room: params.get("room") || "lobby" }, {
  connected() { status.textContent = "connected" },
  rejected() { status.textContent = "rejected" },
  disconnected({ willAttemptReconnect }) { status.textContent = willAttemptReconnect ? "reconnecting" : "refused" },
  received({ user, text }) {
    const li = document.createElement("li")
    li.textContent = `${user}: ${text}`
    document.querySelector("#messages").append(li)
  },
})
document.querySelector("#say").addEventListener("submit", (e) => {
  e.preventDefault()
  const input = document.querySelector("#text")
  room.perform("speak", { text: input.value })
  input.value = ""
})
"##;

async fn page(cable: Cable) -> Html<String> {
    Html(format!(
        r#"<!doctype html>
<html><head><title>Room</title>{head}</head>
<body><p id="status">connecting</p><ul id="messages"></ul>
<form id="say"><input id="text" autocomplete="off"><button id="send">Say</button></form>
<script type="module">{SCRIPT}</script>
</body></html>"#,
        head = cable.meta_tags()
    ))
}

fn main() -> Result<(), ferrocable::Error> {
    App::new()
        .browser_packages(concat!(env!("CARGO_MANIFEST_DIR"), "/node_modules"))
        .route("/", get(page))
        .channel("RoomChannel", RoomChannel)
        .authenticator_with(|services| TokenAuthenticator {
            tokens: services
                .config
                .app_settings::<Settings>()
                .unwrap_or_default()
                .tokens,
        })
        .run()
}
