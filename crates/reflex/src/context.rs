//! What a reflex method sees and what it asks for.

use std::sync::Arc;

use ferrocable_node::Identity;
use serde_json::{Map, Value};

use crate::data::ReflexData;
use crate::element::Element;
use crate::ops::{Envelope, Operation};
use crate::outcome::ReflexError;
use crate::params::parse_nested_query;

/// A change to the session, replayed on fresh data if another tab wrote concurrently, so no
/// update is lost.
pub type SessionChange = Box<dyn FnMut(&mut Map<String, Value>) + Send>;

/// How the reflex answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Morph {
    /// Re-render the page and morph the client's selectors (default).
    #[default]
    Page,
    /// Morph the given selectors with the given HTML.
    Selectors(Vec<(String, String)>),
    /// Change nothing; the client's promise resolves.
    Nothing,
}

impl Morph {
    fn name(&self) -> &'static str {
        match self {
            Morph::Page => "page",
            Morph::Selectors(_) => "selector",
            Morph::Nothing => "nothing",
        }
    }
}

/// The reflex's view of the request and the effects it records.
pub struct ReflexContext {
    data: ReflexData,
    element: Element,
    params: Map<String, Value>,
    identity: Arc<Identity>,
    session: Map<String, Value>,
    pub(crate) session_changes: Vec<SessionChange>,
    pub(crate) morph: Morph,
    pub(crate) payload: Value,
    pub(crate) piggyback: Vec<Operation>,
    pub(crate) immediate: Vec<Operation>,
    pub(crate) broadcasts: Vec<(String, Envelope)>,
}

impl std::fmt::Debug for ReflexContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReflexContext")
            .field("target", &self.data.target)
            .field("morph", &self.morph)
            .finish_non_exhaustive()
    }
}

impl ReflexContext {
    /// A context for `data`, with the session as loaded and the connection's identity.
    pub fn new(data: ReflexData, session: Map<String, Value>, identity: Arc<Identity>) -> Self {
        let element = Element::from_payload(data.raw());
        // Params: URL query, then the form (query wins on collisions, as in Rails), then the
        // client's `params`.
        let mut params = parse_nested_query(&data.form_data);
        if let Some(query) = data
            .url
            .split_once('?')
            .map(|(_, q)| q.split('#').next().unwrap_or(""))
        {
            params.extend(parse_nested_query(query));
        }
        params.extend(data.params.clone());
        ReflexContext {
            data,
            element,
            params,
            identity,
            session,
            session_changes: Vec::new(),
            morph: Morph::Page,
            payload: Value::Object(Map::new()),
            piggyback: Vec::new(),
            immediate: Vec::new(),
            broadcasts: Vec::new(),
        }
    }

    /// The decoded payload (url, id, selectors, …).
    pub fn data(&self) -> &ReflexData {
        &self.data
    }
    /// The reflex element.
    pub fn element(&self) -> &Element {
        &self.element
    }
    /// Positional arguments.
    pub fn args(&self) -> &[Value] {
        &self.data.args
    }
    /// Argument `i` as a string or number rendered as text.
    pub fn arg_str(&self, i: usize) -> Result<String, ReflexError> {
        match self.data.args.get(i) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            other => Err(ReflexError::Argument(format!(
                "argument {i} must be a string, got {other:?}"
            ))),
        }
    }
    /// Request parameters: URL query + form (Rack rules) + client params.
    pub fn params(&self) -> &Map<String, Value> {
        &self.params
    }
    /// A parameter as text (`params["todo"]["title"]` is `param(&["todo", "title"])`).
    pub fn param(&self, path: &[&str]) -> Option<&str> {
        let (first, rest) = path.split_first()?;
        let mut v = self.params.get(*first)?;
        for k in rest {
            v = v.get(*k)?;
        }
        v.as_str()
    }
    /// The connection's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    /// The session as it is now (changes made by this reflex included).
    pub fn session(&self) -> &Map<String, Value> {
        &self.session
    }
    /// Changes the session. The change is committed after the reflex and replayed on fresh
    /// data if another tab or node wrote meanwhile, so write changes as functions of the data
    /// they receive (`count + 1`), not of values read earlier.
    pub fn update_session(
        &mut self,
        mut change: impl FnMut(&mut Map<String, Value>) + Send + 'static,
    ) {
        change(&mut self.session);
        self.session_changes.push(Box::new(change));
    }

    /// Morphs `selector` with `html` (selector morph). Several calls add up.
    pub fn morph(
        &mut self,
        selector: impl Into<String>,
        html: impl Into<String>,
    ) -> Result<(), ReflexError> {
        match &mut self.morph {
            Morph::Nothing => Err(ReflexError::MorphMode {
                from: "nothing",
                to: "selector",
            }),
            Morph::Selectors(list) => {
                list.push((selector.into(), html.into()));
                Ok(())
            }
            m @ Morph::Page => {
                *m = Morph::Selectors(vec![(selector.into(), html.into())]);
                Ok(())
            }
        }
    }
    /// Answers with no DOM change (`morph :nothing`).
    pub fn morph_nothing(&mut self) -> Result<(), ReflexError> {
        match self.morph {
            Morph::Selectors(_) => Err(ReflexError::MorphMode {
                from: "selector",
                to: "nothing",
            }),
            _ => {
                self.morph = Morph::Nothing;
                Ok(())
            }
        }
    }
    /// The morph mode so far.
    pub fn morph_mode(&self) -> &'static str {
        self.morph.name()
    }
    /// Sets the payload the client's promise and callbacks receive.
    pub fn set_payload(&mut self, payload: Value) {
        self.payload = payload;
    }
    /// Queues a CableReady operation for this tab, run after the morph (piggyback).
    pub fn cable_ready(&mut self, op: Operation) {
        self.piggyback.push(op);
    }
    /// Sends a CableReady operation to this tab now, before the morph.
    pub fn cable_ready_now(&mut self, op: Operation) {
        self.immediate.push(op);
    }
    /// Broadcasts operations to a stream (other users, other tabs: `CableReady::Stream`).
    pub fn broadcast(&mut self, stream: impl Into<String>, ops: Vec<Operation>) {
        self.broadcasts.push((stream.into(), Envelope::new(ops)));
    }
}
