//! The demo app `ferrocable serve` runs by default: a counter (page and selector morphs), a
//! todo list (forms, selector morphs) and a chat (CableReady broadcasts to everyone on the
//! page), linked with Turbo Drive, all on the unmodified npm packages. It is written against
//! the `ferrocable` crate's public API only, like any app.

use std::collections::VecDeque;
use std::sync::Arc;

use askama::Template;
use ferrocable::axum::extract::State;
use ferrocable::axum::response::{Html, IntoResponse, Response};
use ferrocable::axum::routing::{get, post};
use ferrocable::axum::{Json, Router};
use ferrocable::serde_json::{Map, Value, json};
use ferrocable::{
    App, Cable, Channel, ChannelContext, Halt, Operation, Reflex, ReflexContext, ReflexError,
    Session, SessionChannel, SessionFailure,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// The stream every chat page listens to.
pub const CHAT_STREAM: &str = "chat";
const CHAT_KEEP: usize = 100;

/// A todo in the session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Todo {
    /// Unique within the session.
    pub id: u64,
    /// What to do.
    pub title: String,
    /// Whether it is done.
    pub done: bool,
}

/// A chat line.
#[derive(Debug, Clone)]
pub struct ChatMessage {
    /// Sequence number, for the permalink.
    pub id: u64,
    /// Absolute link to the message, rendered with the default URL options (broadcast
    /// renders have no request to take a host from).
    pub permalink: String,
    /// Who.
    pub name: String,
    /// What.
    pub text: String,
}

/// Demo state shared by pages and reflexes: the chat's last messages.
#[derive(Debug, Default)]
pub struct Demo {
    chat: Mutex<VecDeque<ChatMessage>>,
    chat_seq: std::sync::atomic::AtomicU64,
}

/// Where `npm ci --prefix apps/demo` puts the browser packages, as seen from this crate.
pub const DEFAULT_ASSETS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/node_modules");

/// The demo as an [`App`]: pages, reflexes, the session window used by the tests
/// (`/session…` and an allow-listed `SessionChannel`), its stylesheet and script.
pub fn app() -> App {
    let demo = Arc::new(Demo::default());
    let pages = Router::new()
        .route("/", get(counter_page))
        .route("/todos", get(todos_page))
        .route("/chat", get(chat_page))
        .with_state(demo.clone());
    App::new()
        .pages(pages)
        .route("/session", get(session_json))
        .route("/session/increment", post(session_increment))
        .route("/session/renew", post(session_renew))
        .route("/session/clear", post(session_clear))
        .reflex("Counter", CounterReflex)
        .reflex("Todos", TodosReflex)
        .reflex_with("Chat", move |services| ChatReflex {
            demo,
            urls: services.config.url_options(),
        })
        // Safe by construction: the cable may change only the counter and the chat name,
        // never a key the server trusts.
        .channel_with("SessionChannel", |services| {
            SessionChannel::new(services.sessions.clone(), &["count", "name"])
        })
        .channel("TypingChannel", TypingChannel)
        .browser_packages(DEFAULT_ASSETS_DIR)
        .asset(
            "/assets/app.css",
            &include_bytes!("../assets/app.css")[..],
            "text/css; charset=utf-8",
        )
        .asset(
            "/assets/app.js",
            &include_bytes!("../assets/app.js")[..],
            "text/javascript; charset=utf-8",
        )
}

#[derive(Template)]
#[template(path = "counter.html")]
struct CounterPage<'a> {
    title: &'a str,
    page: &'a str,
    head: &'a str,
    count: i64,
}

#[derive(Template)]
#[template(path = "todos.html")]
struct TodosPage<'a> {
    title: &'a str,
    page: &'a str,
    head: &'a str,
    todos: Vec<Todo>,
}

#[derive(Template)]
#[template(path = "todo_list.html")]
struct TodoList {
    todos: Vec<Todo>,
}

#[derive(Template)]
#[template(path = "chat.html")]
struct ChatPage<'a> {
    title: &'a str,
    page: &'a str,
    head: &'a str,
    stream: String,
    messages: Vec<ChatMessage>,
    name: String,
    presence_id: String,
}

#[derive(Template)]
#[template(path = "chat_message.html")]
struct ChatLine<'a> {
    m: &'a ChatMessage,
}

fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            warn!(error = %e, "template failed");
            (
                ferrocable::axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "template error\n",
            )
                .into_response()
        }
    }
}

fn count_of(d: &Map<String, Value>) -> i64 {
    d.get("count").and_then(Value::as_i64).unwrap_or(0)
}

fn todos_of(d: &Map<String, Value>) -> Vec<Todo> {
    d.get("todos")
        .and_then(|v| ferrocable::serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// `GET /`: the counter.
async fn counter_page(cable: Cable, session: Session) -> Result<Response, SessionFailure> {
    let data = session.data().await?;
    Ok(render(&CounterPage {
        title: "Counter",
        page: "counter",
        head: &cable.meta_tags(),
        count: count_of(&data),
    }))
}

/// `GET /todos`.
async fn todos_page(cable: Cable, session: Session) -> Result<Response, SessionFailure> {
    let data = session.data().await?;
    Ok(render(&TodosPage {
        title: "Todos",
        page: "todos",
        head: &cable.meta_tags(),
        todos: todos_of(&data),
    }))
}

/// `GET /chat`.
async fn chat_page(
    State(demo): State<Arc<Demo>>,
    cable: Cable,
    session: Session,
) -> Result<Response, SessionFailure> {
    let data = session.data().await?;
    let messages = demo.chat.lock().iter().cloned().collect();
    let name = data
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    Ok(render(&ChatPage {
        title: "Chat",
        page: "chat",
        head: &cable.meta_tags(),
        stream: cable.signed_stream(CHAT_STREAM),
        messages,
        name,
        presence_id: presence_id(&session.id()),
    }))
}

/// A visitor's presence id on the chat page: the same for every tab of a session, and not the
/// session id itself (SipHash of it, with the standard library's fixed keys).
fn presence_id(session: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    session.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The chat's live side: everyone on the chat page subscribes. A client's `whisper` ("Ada is
/// typing") reaches everyone else, never the typist, and is never stored; `join` puts the
/// visitor in the "here now" list (one entry per session, whatever the tabs), which everyone
/// sees change.
pub struct TypingChannel;

/// The stream typing whispers go to.
pub const TYPING_STREAM: &str = "chat:typing";

impl Channel for TypingChannel {
    async fn subscribed(&self, ctx: &mut ChannelContext) {
        ctx.stream_from(TYPING_STREAM);
        ctx.allow_whisper(TYPING_STREAM);
        ctx.allow_presence(TYPING_STREAM);
    }
}

/// `Counter#…`: increment (page morph), reset (selector morph), guarded (halt or forbid from
/// a before callback, by the element's `data-guard`), explode (always fails).
pub struct CounterReflex;

impl Reflex for CounterReflex {
    fn methods(&self) -> &'static [(&'static str, usize, usize)] {
        &[
            ("increment", 0, 1),
            ("reset", 0, 0),
            ("guarded", 0, 0),
            ("explode", 0, 0),
        ]
    }

    async fn before(&self, ctx: &mut ReflexContext) -> Result<(), Halt> {
        if ctx.data().method == "guarded" {
            return match ctx.element().data("guard") {
                Some("forbid") => Err(Halt::Forbidden),
                _ => Err(Halt::Abort),
            };
        }
        Ok(())
    }

    async fn call(&self, method: &str, ctx: &mut ReflexContext) -> Result<(), ReflexError> {
        match method {
            "increment" => {
                let step = match ctx.args().first() {
                    None => 1,
                    Some(v) => v
                        .as_i64()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| ReflexError::Argument("step must be 1..=1000".into()))?,
                };
                ctx.update_session(move |d| {
                    let n = count_of(d);
                    d.insert("count".into(), json!(n + step));
                });
                Ok(())
            }
            "reset" => {
                ctx.update_session(|d| {
                    d.insert("count".into(), json!(0));
                });
                ctx.morph("#counter", "0")
            }
            "explode" => Err(ReflexError::failed("the error button always fails")),
            _ => Ok(()),
        }
    }
}

/// `Todos#…`: add (from the form), toggle and remove (by `data-id`); selector morphs of
/// `#todos`.
pub struct TodosReflex;

fn morph_todos(ctx: &mut ReflexContext) -> Result<(), ReflexError> {
    let html = TodoList {
        todos: todos_of(ctx.session()),
    }
    .render()
    .map_err(ReflexError::failed)?;
    ctx.morph("#todos", html)
}

impl Reflex for TodosReflex {
    fn methods(&self) -> &'static [(&'static str, usize, usize)] {
        &[("add", 0, 0), ("toggle", 0, 0), ("remove", 0, 0)]
    }

    async fn call(&self, method: &str, ctx: &mut ReflexContext) -> Result<(), ReflexError> {
        match method {
            "add" => {
                let title = ctx
                    .param(&["todo", "title"])
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                if title.is_empty() {
                    return ctx.morph_nothing();
                }
                if title.chars().count() > 200 {
                    return Err(ReflexError::Argument(
                        "a todo title is at most 200 characters".into(),
                    ));
                }
                ctx.update_session(move |d| {
                    let next = d.get("todo_seq").and_then(Value::as_u64).unwrap_or(0) + 1;
                    let mut todos = todos_of(d);
                    todos.push(Todo {
                        id: next,
                        title: title.clone(),
                        done: false,
                    });
                    d.insert("todo_seq".into(), json!(next));
                    d.insert("todos".into(), json!(todos));
                });
                morph_todos(ctx)
            }
            "toggle" | "remove" => {
                let id: u64 = ctx
                    .element()
                    .data("id")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| ReflexError::Argument("data-id must be a number".into()))?;
                let remove = method == "remove";
                ctx.update_session(move |d| {
                    let mut todos = todos_of(d);
                    if remove {
                        todos.retain(|t| t.id != id);
                    } else if let Some(t) = todos.iter_mut().find(|t| t.id == id) {
                        t.done = !t.done;
                    }
                    d.insert("todos".into(), json!(todos));
                });
                morph_todos(ctx)
            }
            _ => Ok(()),
        }
    }
}

/// `Chat#post`: appends a message for everyone on the chat page (CableReady broadcast to
/// the chat stream) and answers this tab with `morph-nothing`.
pub struct ChatReflex {
    /// Shared demo state.
    pub demo: Arc<Demo>,
    /// Absolute URLs for permalinks (a broadcast render has no request to take a host from).
    pub urls: ferrocable::UrlOptions,
}

impl Reflex for ChatReflex {
    fn methods(&self) -> &'static [(&'static str, usize, usize)] {
        &[("post", 0, 0)]
    }

    async fn call(&self, _: &str, ctx: &mut ReflexContext) -> Result<(), ReflexError> {
        let text = ctx.param(&["text"]).unwrap_or("").trim().to_owned();
        let name = ctx
            .param(&["name"])
            .unwrap_or("")
            .trim()
            .chars()
            .take(40)
            .collect::<String>();
        let name = if name.is_empty() {
            "anonymous".to_owned()
        } else {
            name
        };
        if text.is_empty() {
            return ctx.morph_nothing();
        }
        if text.chars().count() > 500 {
            return Err(ReflexError::Argument(
                "a message is at most 500 characters".into(),
            ));
        }
        let id = self
            .demo
            .chat_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let permalink = self.urls.url_for(&format!("/chat#m{id}"));
        let message = ChatMessage {
            id,
            permalink,
            name: name.clone(),
            text,
        };
        let line = ChatLine { m: &message }
            .render()
            .map_err(ReflexError::failed)?;
        {
            let mut chat = self.demo.chat.lock();
            chat.push_back(message);
            while chat.len() > CHAT_KEEP {
                chat.pop_front();
            }
        }
        ctx.update_session(move |d| {
            d.insert("name".into(), json!(name));
        });
        ctx.broadcast(
            CHAT_STREAM,
            vec![Operation::insert_adjacent_html(
                "#messages",
                &line,
                "beforeend",
            )],
        );
        ctx.morph_nothing()
    }
}

/// `GET /session`: the current session as JSON (the demo's window on the session).
async fn session_json(session: Session) -> Result<Json<Value>, SessionFailure> {
    Ok(Json(json!({"session": session.data().await?})))
}

/// `POST /session/renew`: moves the session to a new id (new cookie), keeping its data.
async fn session_renew(session: Session) -> Result<Json<Value>, SessionFailure> {
    session.renew().await?;
    Ok(Json(json!({"session": session.data().await?})))
}

/// `POST /session/clear`: empties the session.
async fn session_clear(session: Session) -> Result<Json<Value>, SessionFailure> {
    session.clear().await?;
    Ok(Json(json!({"session": session.data().await?})))
}

/// `POST /session/increment`: adds one to the session's `count`.
async fn session_increment(session: Session) -> Result<Json<Value>, SessionFailure> {
    let data = session
        .update(|d| {
            let n = count_of(d);
            d.insert("count".into(), json!(n + 1));
            d.clone()
        })
        .await?;
    Ok(Json(json!({"session": data})))
}
