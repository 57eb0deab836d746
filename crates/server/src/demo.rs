//! The demo app `ferrocable serve` runs by default: a counter (page and selector morphs), a
//! todo list (forms, selector morphs) and a chat (CableReady broadcasts to everyone on the
//! page), linked with Turbo Drive, all on the unmodified npm packages.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::response::{Html, IntoResponse, Response};
use bytes::Bytes;
use ferrocable_reflex::{
    Halt, Operation, Reflex, ReflexContext, ReflexError, ReflexHost, SessionChange, StreamSigner,
};
use ferrocable_session::{Sessions, StoreError};
use http::{HeaderValue, StatusCode, header};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tower::ServiceExt;
use tracing::warn;

use crate::app::AppState;
use crate::session::{CurrentSession, SessionFailure};

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

/// Demo state shared by pages and reflexes.
pub struct Demo {
    chat: Mutex<VecDeque<ChatMessage>>,
    chat_seq: std::sync::atomic::AtomicU64,
    urls: ferrocable_reflex::UrlOptions,
    signer: StreamSigner,
    vendor: HashMap<String, Bytes>,
    /// Files expected in `vendor` (the flat list plus every module of the package folders).
    vendor_expected: usize,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("vendor", &self.vendor.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Import-map name → file inside `node_modules`.
const VENDOR: &[(&str, &str)] = &[
    ("stimulus.js", "@hotwired/stimulus/dist/stimulus.js"),
    ("turbo.js", "@hotwired/turbo/dist/turbo.es2017-esm.js"),
    (
        "actioncable.esm.js",
        "@rails/actioncable/app/assets/javascripts/actioncable.esm.js",
    ),
    ("morphdom-esm.js", "morphdom/dist/morphdom-esm.js"),
    ("cable_ready.js", "cable_ready/dist/cable_ready.js"),
    (
        "stimulus_reflex.js",
        "stimulus_reflex/dist/stimulus_reflex.js",
    ),
];

/// Packages served whole under `/vendor/pkg/<package>/…` (ES modules with relative imports):
/// `@anycable/web`, its core and its one dependency.
const VENDOR_PACKAGES: &[&str] = &["@anycable/web", "@anycable/core", "nanoevents"];

/// Every `.js` file under `dir`, as paths relative to `root`.
fn js_files(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "node_modules") {
                js_files(root, &path, out);
            }
        } else if path.extension().is_some_and(|e| e == "js")
            && let Ok(rel) = path.strip_prefix(root)
        {
            out.push(rel.to_path_buf());
        }
    }
}

/// Where `npm ci --prefix demo` puts the browser packages, as seen from this crate.
pub const DEFAULT_ASSETS_DIR: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../demo/node_modules");

impl Demo {
    /// Loads the browser packages from `node_modules` (missing files are named in the log:
    /// pages then render but their scripts fail).
    pub fn new(
        secret_key_base: &[u8],
        node_modules: &Path,
        urls: ferrocable_reflex::UrlOptions,
    ) -> Self {
        let mut vendor = HashMap::new();
        let mut missing = Vec::new();
        for (name, rel) in VENDOR {
            match std::fs::read(node_modules.join(rel)) {
                Ok(b) => {
                    vendor.insert((*name).to_owned(), Bytes::from(b));
                }
                Err(_) => missing.push((*rel).to_owned()),
            }
        }
        let mut vendor_expected = VENDOR.len();
        for package in VENDOR_PACKAGES {
            let mut files = Vec::new();
            js_files(node_modules, &node_modules.join(package), &mut files);
            if files.is_empty() {
                missing.push((*package).to_owned());
                vendor_expected += 1;
            }
            for rel in files {
                vendor_expected += 1;
                if let (Ok(b), Some(key)) = (std::fs::read(node_modules.join(&rel)), rel.to_str()) {
                    vendor.insert(format!("pkg/{key}"), Bytes::from(b));
                }
            }
        }
        if !missing.is_empty() {
            warn!(dir = %node_modules.display(), ?missing, "demo browser packages missing: run `npm ci --prefix demo`");
        }
        Demo {
            chat: Mutex::new(VecDeque::new()),
            chat_seq: std::sync::atomic::AtomicU64::new(0),
            urls,
            signer: StreamSigner::new(secret_key_base),
            vendor,
            vendor_expected,
        }
    }

    /// The signer for `CableReady::Stream` names.
    pub fn signer(&self) -> &StreamSigner {
        &self.signer
    }

    /// Whether every browser package was found.
    pub fn assets_complete(&self) -> bool {
        self.vendor.len() == self.vendor_expected
    }
}

#[derive(Template)]
#[template(path = "counter.html")]
struct CounterPage<'a> {
    title: &'a str,
    page: &'a str,
    cable_url: &'a str,
    count: i64,
}

#[derive(Template)]
#[template(path = "todos.html")]
struct TodosPage<'a> {
    title: &'a str,
    page: &'a str,
    cable_url: &'a str,
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
    cable_url: &'a str,
    stream: String,
    messages: Vec<ChatMessage>,
    name: String,
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
            (StatusCode::INTERNAL_SERVER_ERROR, "template error\n").into_response()
        }
    }
}

fn count_of(d: &Map<String, Value>) -> i64 {
    d.get("count").and_then(Value::as_i64).unwrap_or(0)
}

fn todos_of(d: &Map<String, Value>) -> Vec<Todo> {
    d.get("todos")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// `GET /`: the counter.
pub(crate) async fn counter_page(
    State(state): State<AppState>,
    session: CurrentSession,
) -> Result<Response, SessionFailure> {
    let data = session.data().await?;
    Ok(render(&CounterPage {
        title: "Counter",
        page: "counter",
        cable_url: &state.cable_url,
        count: count_of(&data),
    }))
}

/// `GET /todos`.
pub(crate) async fn todos_page(
    State(state): State<AppState>,
    session: CurrentSession,
) -> Result<Response, SessionFailure> {
    let data = session.data().await?;
    Ok(render(&TodosPage {
        title: "Todos",
        page: "todos",
        cable_url: &state.cable_url,
        todos: todos_of(&data),
    }))
}

/// `GET /chat`.
pub(crate) async fn chat_page(
    State(state): State<AppState>,
    session: CurrentSession,
) -> Result<Response, SessionFailure> {
    let data = session.data().await?;
    let messages = state.demo.chat.lock().iter().cloned().collect();
    let name = data
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    Ok(render(&ChatPage {
        title: "Chat",
        page: "chat",
        cable_url: &state.cable_url,
        stream: state.demo.signer.sign(CHAT_STREAM),
        messages,
        name,
    }))
}

fn asset(body: Bytes, content_type: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r
}

/// `GET /assets/app.css`.
pub(crate) async fn app_css() -> Response {
    asset(
        Bytes::from_static(include_bytes!("../assets/app.css")),
        "text/css; charset=utf-8",
    )
}

/// `GET /assets/app.js`.
pub(crate) async fn app_js() -> Response {
    asset(
        Bytes::from_static(include_bytes!("../assets/app.js")),
        "text/javascript; charset=utf-8",
    )
}

/// `GET /vendor/{*file}`: the pinned npm packages (a fixed set of files, looked up by name:
/// nothing else on disk is reachable).
pub(crate) async fn vendor(
    State(state): State<AppState>,
    UrlPath(file): UrlPath<String>,
) -> Response {
    match state.demo.vendor.get(file.as_str()) {
        Some(b) => asset(b.clone(), "text/javascript; charset=utf-8"),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
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
        let permalink = self.demo.urls.url_for(&format!("/chat#m{id}"));
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

/// What reflexes need from the app: the session store and the router (page morphs render
/// the page through it, with the user's session cookie).
pub struct DemoHost {
    /// Sessions.
    pub sessions: Arc<Sessions>,
    /// The app's router, set once it is built.
    pub router: Arc<OnceLock<Router>>,
}

const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

impl ReflexHost for DemoHost {
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

    async fn render_page(&self, session_id: Option<&str>, url: &str) -> Result<String, String> {
        let router = self.router.get().cloned().ok_or("router not ready")?;
        let uri: http::Uri = url.parse().map_err(|e| format!("bad url {url:?}: {e}"))?;
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
        if let Some(id) = session_id {
            let cookie = format!(
                "{}={}",
                self.sessions.options().cookie_name,
                self.sessions.signer().sign(id)
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                req.headers_mut().insert(header::COOKIE, v);
            }
        }
        let response = router.oneshot(req).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{path} answered {}", response.status()));
        }
        let body = axum::body::to_bytes(response.into_body(), MAX_PAGE_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
    }
}
