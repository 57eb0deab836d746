//! `ferrocable`: the command-line entry point. `serve` runs the demo app (or, with an RPC
//! host in later work, only the cable in front of another app); `migrate` prepares the SQL
//! session stores; `new` makes an app crate from the README's quick start.

mod new;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrocable::ServeArgs;
use tracing::info;

// The allocator decides how much of each connection's buffers stays resident: measured, not
// assumed (docs/benchmarks.md). jemalloc wins the per-connection figure; see Cargo.toml.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "ferrocable",
    version,
    about = "An ActionCable-protocol server for reactive apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: the demo app, or, with an RPC host, the cable in front of a Rails app.
    Serve(ServeArgs),
    /// Apply the session store's migrations (SQL stores) and exit; `serve` also applies them.
    Migrate(ServeArgs),
    /// Make a new app crate NAME (the README's quick start: a counter page and its reflex).
    New {
        /// The crate's name and folder.
        name: String,
        /// The `ferrocable` crate it depends on [default: the one this binary was built from].
        #[arg(long)]
        ferrocable_path: Option<std::path::PathBuf>,
    },
}

async fn migrate(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.load().context("invalid configuration")?;
    ferrocable_server::cli::init_logging(&config.log_format);
    let sessions = ferrocable_server::open_sessions(&config).await?;
    info!(store = sessions.store_kind(), "session store ready");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => {
            let config = args.load().context("invalid configuration")?;
            // In front of a Rails app (an RPC host), the app has the pages: serve the cable,
            // /health, /metrics and /_broadcast only.
            let app = if config.rpc_config().is_some() {
                ferrocable::App::new()
            } else {
                ferrocable_demo::app()
            };
            Ok(runtime.block_on(app.config(config).serve(&args))?)
        }
        Command::Migrate(args) => runtime.block_on(migrate(args)),
        Command::New {
            name,
            ferrocable_path,
        } => {
            let path = ferrocable_path.unwrap_or_else(new::default_ferrocable_path);
            let root = new::create(std::path::Path::new("."), &name, &path)?;
            println!(
                "made {}: cd {name} && npm install && cargo run, then open http://127.0.0.1:3000/",
                root.display()
            );
            Ok(())
        }
    }
}
