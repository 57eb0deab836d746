//! The allow-list: reflex classes and the methods each one exposes.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::context::ReflexContext;
use crate::outcome::{Halt, ReflexError};

/// A reflex class (Ruby's `CounterReflex`): the methods a client may call, and the calls.
///
/// Only the methods listed by [`Reflex::methods`] can run; a target naming anything else is
/// refused with `morph-error` and nothing executes.
pub trait Reflex: Send + Sync + 'static {
    /// Allowed methods with the number of arguments each takes: `(name, min, max)`.
    fn methods(&self) -> &'static [(&'static str, usize, usize)];

    /// Runs before the method (Ruby's `before_reflex`); `Err` stops the reflex. Anything done
    /// before stopping stands (session changes, broadcasts, payload).
    fn before(&self, ctx: &mut ReflexContext) -> impl Future<Output = Result<(), Halt>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Runs the allowed `method`.
    fn call(
        &self,
        method: &str,
        ctx: &mut ReflexContext,
    ) -> impl Future<Output = Result<(), ReflexError>> + Send;

    /// Runs after the method when it succeeded (Ruby's `after_reflex`). A before/after pair
    /// is this framework's `around_reflex`.
    fn after(&self, ctx: &mut ReflexContext) -> impl Future<Output = ()> + Send {
        let _ = ctx;
        async {}
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) trait DynReflex: Send + Sync {
    fn methods(&self) -> &'static [(&'static str, usize, usize)];
    fn before<'a>(&'a self, ctx: &'a mut ReflexContext) -> BoxFuture<'a, Result<(), Halt>>;
    fn call<'a>(
        &'a self,
        method: &'a str,
        ctx: &'a mut ReflexContext,
    ) -> BoxFuture<'a, Result<(), ReflexError>>;
    fn after<'a>(&'a self, ctx: &'a mut ReflexContext) -> BoxFuture<'a, ()>;
}

impl<R: Reflex> DynReflex for R {
    fn methods(&self) -> &'static [(&'static str, usize, usize)] {
        Reflex::methods(self)
    }
    fn before<'a>(&'a self, ctx: &'a mut ReflexContext) -> BoxFuture<'a, Result<(), Halt>> {
        Box::pin(Reflex::before(self, ctx))
    }
    fn call<'a>(
        &'a self,
        method: &'a str,
        ctx: &'a mut ReflexContext,
    ) -> BoxFuture<'a, Result<(), ReflexError>> {
        Box::pin(Reflex::call(self, method, ctx))
    }
    fn after<'a>(&'a self, ctx: &'a mut ReflexContext) -> BoxFuture<'a, ()> {
        Box::pin(Reflex::after(self, ctx))
    }
}

/// Reflex classes by name (`"Counter"` serves targets `Counter#…` and `CounterReflex#…`).
#[derive(Clone, Default)]
pub struct Registry {
    classes: HashMap<String, Arc<dyn DynReflex>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("classes", &self.classes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// Whether no reflex class is registered (an app whose reflexes live elsewhere, such as
    /// a Rails app behind RPC).
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a reflex class under `name`.
    pub fn reflex(mut self, name: impl Into<String>, reflex: impl Reflex) -> Self {
        self.classes.insert(name.into(), Arc::new(reflex));
        self
    }

    pub(crate) fn get(&self, class: &str) -> Option<&Arc<dyn DynReflex>> {
        self.classes.get(class)
    }
}
