//! [`App`]: the composition root of a ferrocable app.

use std::path::PathBuf;

use axum::Router;
use axum::routing::MethodRouter;
use ferrocable_node::{Authenticator, Channel, Node, NodeBuilder};
use ferrocable_reflex::Reflex;
use ferrocable_server::cli::ServeArgs;
use ferrocable_server::{Composition, RunningServer, ServeConfig, Services, StartError};
use tracing::info;

/// Why an app could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration (file, environment or flags) is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] Box<figment::Error>),
    /// The server could not start (address in use, store unreachable, bad TLS files, …).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The runtime or the signal handlers could not be set up.
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

type StartHook = Box<dyn FnOnce(&Node, &Services) + Send>;

/// A ferrocable app: its pages, reflexes, channels, identity and browser files, and the
/// server that runs them. Build it with the methods below, then [`App::run`] it.
///
/// Every app gets, without asking: the cable at `/cable` (ActionCable protocol, AnyCable's
/// extended protocol), one signed-cookie session shared by pages ([`crate::Session`]) and
/// reflexes, `StimulusReflex::Channel` and `CableReady::Stream`, `/health`, `/metrics`,
/// `/_broadcast`, graceful shutdown on SIGTERM, and the configuration of `ferrocable serve`
/// (flags, `FERROCABLE_*` variables, a TOML file).
pub struct App {
    parts: Composition,
    config: Option<ServeConfig>,
    node_modules: PathBuf,
    on_start: Vec<StartHook>,
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("parts", &self.parts)
            .field("node_modules", &self.node_modules)
            .finish_non_exhaustive()
    }
}

impl App {
    /// An app with no pages, reflexes or channels yet. Browser packages are looked for in
    /// `node_modules` of the working directory (see [`App::browser_packages`]).
    pub fn new() -> Self {
        App {
            parts: Composition::default(),
            config: None,
            node_modules: PathBuf::from("node_modules"),
            on_start: Vec::new(),
        }
    }

    /// Serves `path` with `handler` (an axum method router: `get(page)`). Handlers may take
    /// [`crate::Session`] and [`crate::Cable`]; a page morph renders through them too.
    pub fn route(mut self, path: &str, handler: MethodRouter) -> Self {
        self.parts.pages = self.parts.pages.route(path, handler);
        self
    }

    /// Adds an axum router of pages (with its own state applied: `.with_state(…)`).
    pub fn pages(mut self, router: Router) -> Self {
        self.parts.pages = self.parts.pages.merge(router);
        self
    }

    /// Registers a reflex class: `"Counter"` serves `data-reflex="click->Counter#increment"`
    /// (and `CounterReflex#…`), for the methods the class allows.
    pub fn reflex(mut self, name: impl Into<String>, reflex: impl Reflex) -> Self {
        self.parts.reflexes = self.parts.reflexes.reflex(name, reflex);
        self
    }

    /// Registers a reflex class built once the server's [`Services`] exist (a reflex that
    /// needs the configuration or the session store).
    pub fn reflex_with<R: Reflex>(
        mut self,
        name: impl Into<String>,
        build: impl FnOnce(&Services) -> R + Send + 'static,
    ) -> Self {
        let name = name.into();
        self.parts.deferred.push(Box::new(move |services, parts| {
            let reflexes = std::mem::take(&mut parts.reflexes);
            parts.reflexes = reflexes.reflex(name, build(services));
        }));
        self
    }

    /// Registers an ActionCable channel under `name` (the identifier's `channel`).
    pub fn channel(mut self, name: impl Into<String>, channel: impl Channel) -> Self {
        self.parts.node = std::mem::take(&mut self.parts.node).channel(name, channel);
        self
    }

    /// Registers a channel built once the server's [`Services`] exist (one over the session
    /// store, say).
    pub fn channel_with<C: Channel>(
        mut self,
        name: impl Into<String>,
        build: impl FnOnce(&Services) -> C + Send + 'static,
    ) -> Self {
        let name = name.into();
        self.parts.deferred.push(Box::new(move |services, parts| {
            parts.node = std::mem::take(&mut parts.node).channel(name, build(services));
        }));
        self
    }

    /// Decides who a cable connection is (Rails' `ApplicationCable::Connection#connect`):
    /// from its cookies, headers or query. The connection's page session is attached by the
    /// server afterwards from the session cookie, so an authenticator cannot lose or forge
    /// it; reflexes keep their session whatever identity it returns. Default: everyone is
    /// welcome, anonymously.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.parts.node = std::mem::take(&mut self.parts.node).authenticator(authenticator);
        self
    }

    /// Sets an authenticator built once the server's [`Services`] exist (one that reads the
    /// app's settings or the session store).
    pub fn authenticator_with<A: Authenticator>(
        mut self,
        build: impl FnOnce(&Services) -> A + Send + 'static,
    ) -> Self {
        self.parts.deferred.push(Box::new(move |services, parts| {
            parts.node = std::mem::take(&mut parts.node).authenticator(build(services));
        }));
        self
    }

    /// Changes the cable node before it is built: a pubsub or broker of the app's own making,
    /// more channels. The configuration's node settings still apply.
    pub fn node(mut self, change: impl FnOnce(NodeBuilder) -> NodeBuilder) -> Self {
        self.parts.node = change(std::mem::take(&mut self.parts.node));
        self
    }

    /// Where `npm install` put the browser packages of the app's `package.json` (default:
    /// `node_modules`); the `node_modules_dir` setting overrides it. They are served under
    /// `/vendor/` and named in the import map of [`crate::Cable::head`].
    pub fn browser_packages(mut self, node_modules: impl Into<PathBuf>) -> Self {
        self.node_modules = node_modules.into();
        self
    }

    /// Serves one of the app's own files at `path` (`/assets/app.css`).
    pub fn asset(
        mut self,
        path: impl Into<String>,
        body: impl Into<axum::body::Bytes>,
        content_type: &'static str,
    ) -> Self {
        self.parts.assets = std::mem::take(&mut self.parts.assets).file(path, body, content_type);
        self
    }

    /// Names a module in the import map (an app's own script: `import("app", "/assets/app.js")`).
    pub fn import(mut self, name: impl Into<String>, url: impl Into<String>) -> Self {
        self.parts.assets = std::mem::take(&mut self.parts.assets).import(name, url);
        self
    }

    /// Runs `hook` once the server listens: where background tasks that broadcast start.
    pub fn on_start(mut self, hook: impl FnOnce(&Node, &Services) + Send + 'static) -> Self {
        self.on_start.push(Box::new(hook));
        self
    }

    /// Runs with this configuration instead of loading one (tests, embedding).
    pub fn config(mut self, config: ServeConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Starts serving and returns the running server (for tests and embedding; [`App::run`]
    /// is the usual way). Without [`App::config`], the configuration comes from the
    /// environment and `FERROCABLE_CONFIG`, as `ferrocable serve` reads them (no flags).
    pub async fn start(self) -> Result<RunningServer, Error> {
        let config = match self.config {
            Some(c) => c,
            None => ServeArgs::default().load()?,
        };
        let mut parts = self.parts;
        // In front of a Rails app with no Rust reflexes, the pages and their packages are the
        // Rails app's: nothing to load (and nothing to warn about).
        if config.rpc_config().is_none() || !parts.reflexes.is_empty() {
            let node_modules = config.node_modules_dir.clone().unwrap_or(self.node_modules);
            parts.assets = std::mem::take(&mut parts.assets).browser_packages(node_modules);
        }
        let server = ferrocable_server::start(&config, parts).await?;
        for hook in self.on_start {
            hook(server.node(), server.services());
        }
        Ok(server)
    }

    /// Serves with the configuration `args` select until SIGTERM or SIGINT, then shuts down
    /// gracefully (clients are told `server_restart` and reconnect elsewhere).
    pub async fn serve(mut self, args: &ServeArgs) -> Result<(), Error> {
        let config = match self.config.take() {
            Some(c) => c,
            None => args.load()?,
        };
        ferrocable_server::cli::init_logging(&config.log_format);
        let scheme = if config.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let mount_path = config.mount_path.clone();
        let server = self.config(config).start().await?;
        let addr = server.local_addr();
        info!(%addr, "ferrocable listening on {scheme}://{addr}{mount_path}");
        let signal = ferrocable_server::cli::shutdown_signal().await?;
        info!(
            signal,
            "shutting down: disconnecting clients with server_restart"
        );
        let report = server.shutdown().await;
        info!(remaining = report.remaining, "shutdown complete");
        Ok(())
    }

    /// The usual `main`: reads the flags of `ferrocable serve` from the command line (`--help`
    /// lists them), starts a multi-threaded runtime and [`App::serve`]s.
    pub fn run(self) -> Result<(), Error> {
        use clap::{Args, Command};
        let name = std::env::args()
            .next()
            .and_then(|a| {
                std::path::Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "app".into());
        // clap names a command with a `'static` string; one program name per process.
        let name: &'static str = Box::leak(name.into_boxed_str());
        let command = ServeArgs::augment_args(Command::new(name));
        let matches = command.get_matches();
        let args = match <ServeArgs as clap::FromArgMatches>::from_arg_matches(&matches) {
            Ok(args) => args,
            Err(e) => e.exit(),
        };
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(self.serve(&args))
    }
}
