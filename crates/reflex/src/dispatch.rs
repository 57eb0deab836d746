//! Running one reflex, from payload to the one envelope that ends it on the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ferrocable_node::Identity;
use serde_json::{Map, Value, json};
use tracing::{info, warn};

use crate::STIMULUS_REFLEX_VERSION;
use crate::context::{Morph, ReflexContext, SessionChange};
use crate::data::{ReflexData, minimal_echo};
use crate::html::{extract_inner, selector_operation};
use crate::ops::{Envelope, Operation};
use crate::outcome::Halt;
use crate::registry::Registry;

/// What the app provides to reflexes: its session store and its own router.
pub trait ReflexHost: Send + Sync + 'static {
    /// The session of `session_id` (empty when there is none).
    fn load_session(
        &self,
        session_id: Option<&str>,
    ) -> impl Future<Output = Result<Map<String, Value>, String>> + Send;
    /// Applies the reflex's session changes (replayed on fresh data on a concurrent write).
    fn commit_session(
        &self,
        session_id: Option<&str>,
        changes: Vec<SessionChange>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Renders the page a morph asks for the way a browser with this session would get it.
    fn render_page(
        &self,
        page: PageRequest<'_>,
    ) -> impl Future<Output = Result<String, String>> + Send;
}

/// The page a page morph re-renders: the browser's URL, its session and the node the reflex
/// runs on (what the app's page handlers may need, e.g. to sign a stream name).
#[derive(Debug, Clone, Copy)]
pub struct PageRequest<'a> {
    /// The reflex's session, if the connection has one.
    pub session_id: Option<&'a str>,
    /// The page's URL as the browser sent it (absolute).
    pub url: &'a str,
    /// The node running the reflex (`None` when dispatched outside a connection, in tests).
    pub node: Option<&'a ferrocable_node::Node>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Object-safe [`ReflexHost`].
pub trait PageRenderer: Send + Sync {
    /// See [`ReflexHost::load_session`].
    fn load_session<'a>(
        &'a self,
        session_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Map<String, Value>, String>>;
    /// See [`ReflexHost::commit_session`].
    fn commit_session<'a>(
        &'a self,
        session_id: Option<&'a str>,
        changes: Vec<SessionChange>,
    ) -> BoxFuture<'a, Result<(), String>>;
    /// See [`ReflexHost::render_page`].
    fn render_page<'a>(&'a self, page: PageRequest<'a>) -> BoxFuture<'a, Result<String, String>>;
}

impl<H: ReflexHost> PageRenderer for H {
    fn load_session<'a>(
        &'a self,
        session_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Map<String, Value>, String>> {
        Box::pin(ReflexHost::load_session(self, session_id))
    }
    fn commit_session<'a>(
        &'a self,
        session_id: Option<&'a str>,
        changes: Vec<SessionChange>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(ReflexHost::commit_session(self, session_id, changes))
    }
    fn render_page<'a>(&'a self, page: PageRequest<'a>) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(ReflexHost::render_page(self, page))
    }
}

/// What running a reflex produced.
#[derive(Debug, Default)]
pub struct Dispatched {
    /// The reply that ends the reflex on the client (`None` only when the payload had no id
    /// to answer to).
    pub reply: Option<Envelope>,
    /// Operations the reflex sent "now", before its reply.
    pub immediate: Option<Envelope>,
    /// Broadcasts to other streams.
    pub broadcasts: Vec<(String, Envelope)>,
    /// Why the reflex failed, if it did (for logs and metrics).
    pub error: Option<String>,
}

fn tag(
    op: Operation,
    echo: &Value,
    id: &str,
    payload: &Value,
    permanent: Option<&str>,
) -> Operation {
    let mut op = op
        .with("payload", payload.clone())
        .with("stimulusReflex", echo.clone())
        .with("reflexId", id);
    if let Some(p) = permanent
        && op.name() == "morph"
    {
        op = op.with("permanentAttributeName", p);
    }
    op
}

fn event(name: &str) -> Operation {
    Operation::dispatch_event(None, name, Value::Null)
}

fn terminal(
    name: &str,
    echo: &Value,
    id: &str,
    payload: &Value,
    mut piggyback: Vec<Operation>,
    error: Option<&str>,
) -> Envelope {
    let mut op = tag(event(name), echo, id, payload, None);
    op.0.remove("detail");
    if let Some(e) = error {
        op = op.with("error", e);
    }
    piggyback.push(op);
    Envelope::new(piggyback)
}

/// The reply for a payload whose `version` is not ours: what the Ruby server sends (a console
/// error and a `stimulus-reflex:version-mismatch` event, untagged), and the reflex does not run.
fn version_mismatch(id: &str, version: &str) -> Envelope {
    let message = format!(
        "StimulusReflex failed to execute your reflex action due to a version mismatch between the server ({STIMULUS_REFLEX_VERSION}) and the client ({version}). Install stimulus_reflex@{STIMULUS_REFLEX_VERSION} from npm."
    );
    Envelope::new(vec![
        Operation::console_log(&message, "error").with("reflexId", id),
        Operation::dispatch_event(None, "stimulus-reflex:version-mismatch", json!({"message": message, "gem": STIMULUS_REFLEX_VERSION, "npm": version, "level": "error"})).with("reflexId", id),
    ])
}

/// Runs the reflex in `payload` for a connection with `identity` on `node`. Session changes
/// are committed whatever the outcome (as in Ruby); every path ends with a reply the client
/// understands.
pub async fn dispatch(
    registry: &Registry,
    host: &dyn PageRenderer,
    identity: Arc<Identity>,
    node: Option<&ferrocable_node::Node>,
    payload: Value,
    max_form_bytes: usize,
) -> Dispatched {
    let session_id = identity.session_id().map(str::to_owned);
    let sid = session_id.as_deref();
    let empty = Value::Object(Map::new());
    let data = match ReflexData::parse(payload.clone()) {
        Ok(d) => d,
        Err((Some(id), e)) => {
            warn!(reflex_id = %id, error = %e, "reflex refused");
            let echo = minimal_echo(&id, &payload, "page");
            return Dispatched {
                reply: Some(terminal(
                    "stimulus-reflex:morph-error",
                    &echo,
                    &id,
                    &empty,
                    Vec::new(),
                    Some(&e.to_string()),
                )),
                error: Some(e.to_string()),
                ..Default::default()
            };
        }
        Err((None, e)) => {
            warn!(error = %e, "reflex without an id refused");
            return Dispatched {
                error: Some(e.to_string()),
                ..Default::default()
            };
        }
    };
    let id = data.id.clone();
    if data.version != STIMULUS_REFLEX_VERSION {
        warn!(reflex_id = %id, client = %data.version, "stimulus_reflex version mismatch; reflex not run");
        return Dispatched {
            reply: Some(version_mismatch(&id, &data.version)),
            error: Some("version mismatch".into()),
            ..Default::default()
        };
    }
    let fail = |data: &ReflexData, message: String| {
        warn!(reflex_id = %data.id, target = %data.target, error = %message, "reflex failed");
        Dispatched {
            reply: Some(terminal(
                "stimulus-reflex:morph-error",
                &data.echo("page"),
                &data.id,
                &empty,
                Vec::new(),
                Some(&message),
            )),
            error: Some(message),
            ..Default::default()
        }
    };
    if data.form_data.len() > max_form_bytes {
        return fail(
            &data,
            format!(
                "formData of {} bytes exceeds the maximum of {max_form_bytes} bytes",
                data.form_data.len()
            ),
        );
    }
    let Some(reflex) = registry.get(&data.class).cloned() else {
        return fail(&data, format!("unknown reflex {}", data.target));
    };
    let Some(&(_, min, max)) = reflex.methods().iter().find(|(m, _, _)| *m == data.method) else {
        return fail(
            &data,
            format!("{} is not an allowed reflex method", data.target),
        );
    };
    let given = data.args.len();
    if given < min || given > max {
        let expected = if min == max {
            min.to_string()
        } else {
            format!("{min}..{max}")
        };
        return fail(
            &data,
            format!(
                "wrong number of arguments (given {given}, expected {expected}) for {}",
                data.target
            ),
        );
    }
    let session = match host.load_session(sid).await {
        Ok(s) => s,
        Err(e) => return fail(&data, format!("session store unavailable: {e}")),
    };

    let mut ctx = ReflexContext::new(data, session, identity);
    let method = ctx.data().method.clone();
    let outcome: Result<(), Result<Halt, String>> = match reflex.before(&mut ctx).await {
        Err(halt) => Err(Ok(halt)),
        Ok(()) => match reflex.call(&method, &mut ctx).await {
            Err(e) => Err(Err(e.to_string())),
            Ok(()) => {
                reflex.after(&mut ctx).await;
                Ok(())
            }
        },
    };
    let changes = std::mem::take(&mut ctx.session_changes);
    let committed = if changes.is_empty() {
        Ok(())
    } else {
        host.commit_session(sid, changes).await
    };

    let data = ctx.data().clone();
    let payload = ctx.payload.clone();
    let piggyback = std::mem::take(&mut ctx.piggyback);
    let immediate = (!ctx.immediate.is_empty()).then(|| {
        Envelope::new(
            ctx.immediate
                .drain(..)
                .map(|op| op.with("reflexId", id.as_str()))
                .collect(),
        )
    });
    let broadcasts = std::mem::take(&mut ctx.broadcasts);
    let mode = ctx.morph_mode();
    let echo = data.echo(mode);
    let done = |reply: Envelope, error: Option<String>| Dispatched {
        reply: Some(reply),
        immediate: immediate.clone(),
        broadcasts: broadcasts.clone(),
        error,
    };
    // Ends the reflex with a terminal event (`morph-nothing`, `-halted`, `-forbidden`,
    // `-error`), the queued operations first.
    let end = |event: &str, error: Option<String>| {
        let reply = terminal(
            event,
            &echo,
            &id,
            &payload,
            piggyback.clone(),
            error.as_deref(),
        );
        done(reply, error)
    };
    const ERROR: &str = "stimulus-reflex:morph-error";

    if let Err(e) = committed {
        let message = format!("session store unavailable: {e}");
        warn!(reflex_id = %id, error = %message, "session commit failed");
        return end(ERROR, Some(message));
    }
    match outcome {
        Err(Ok(Halt::Abort)) => {
            info!(reflex_id = %id, target = %data.target, "reflex halted");
            return end("stimulus-reflex:morph-halted", None);
        }
        Err(Ok(Halt::Forbidden)) => {
            info!(reflex_id = %id, target = %data.target, "reflex forbidden");
            return end("stimulus-reflex:morph-forbidden", None);
        }
        Err(Err(message)) => {
            warn!(reflex_id = %id, target = %data.target, error = %message, "reflex failed");
            return end(ERROR, Some(message));
        }
        Ok(()) => {}
    }
    let permanent = Some(data.permanent_attribute_name.as_str());
    let mut ops = piggyback.clone();
    match ctx.morph.clone() {
        Morph::Nothing => return end("stimulus-reflex:morph-nothing", None),
        Morph::Selectors(list) => {
            for (selector, html) in list {
                match selector_operation(&selector, &html) {
                    Ok(op) => ops.push(tag(op, &echo, &id, &payload, permanent)),
                    Err(e) => return end(ERROR, Some(e.to_string())),
                }
            }
        }
        Morph::Page => {
            let request = PageRequest {
                session_id: sid,
                url: &data.url,
                node,
            };
            let page = match host.render_page(request).await {
                Ok(html) => html,
                Err(e) => return end(ERROR, Some(format!("page render failed: {e}"))),
            };
            let selectors = if data.selectors.is_empty() {
                vec!["body".to_owned()]
            } else {
                data.selectors.clone()
            };
            let found = match extract_inner(&page, &selectors) {
                Ok(f) => f,
                Err(e) => return end(ERROR, Some(e.to_string())),
            };
            for (selector, inner) in selectors.iter().zip(found) {
                if let Some(inner) = inner {
                    ops.push(tag(
                        Operation::morph(selector, &inner),
                        &echo,
                        &id,
                        &payload,
                        permanent,
                    ));
                }
            }
            if ops.len() == piggyback.len() {
                // Ruby would send an empty envelope here and the client would wait for ever.
                return end(
                    ERROR,
                    Some(format!(
                        "none of the selectors {selectors:?} matched the re-rendered page"
                    )),
                );
            }
        }
    }
    done(Envelope::new(ops), None)
}
