//! The quick start: a number in the session and a button that increments it through a
//! reflex; the page is re-rendered on the server and morphed in.
//!
//! `npm ci --prefix crates/ferrocable && cargo run --example counter`, then open
//! <http://127.0.0.1:3000/>.

use ferrocable::axum::{response::Html, routing::get};
use ferrocable::{App, Cable, Reflex, ReflexContext, ReflexError, Session, SessionFailure};

struct Counter;

impl Reflex for Counter {
    fn methods(&self) -> &'static [(&'static str, usize, usize)] {
        &[("increment", 0, 0)]
    }

    async fn call(&self, _method: &str, ctx: &mut ReflexContext) -> Result<(), ReflexError> {
        ctx.update_session(|s| {
            let n = s.get("count").and_then(|v| v.as_i64()).unwrap_or(0);
            s.insert("count".into(), (n + 1).into());
        });
        Ok(())
    }
}

async fn page(cable: Cable, session: Session) -> Result<Html<String>, SessionFailure> {
    let count = session
        .data()
        .await?
        .get("count")
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    Ok(Html(format!(
        r#"<!doctype html>
<html><head><title>Counter</title>{}</head>
<body><h1 id="count">{count}</h1>
<button id="increment" data-reflex="click->Counter#increment">+1</button></body></html>"#,
        cable.head()
    )))
}

fn main() -> Result<(), ferrocable::Error> {
    App::new()
        .browser_packages(concat!(env!("CARGO_MANIFEST_DIR"), "/node_modules"))
        .route("/", get(page))
        .reflex("Counter", Counter)
        .run()
}
