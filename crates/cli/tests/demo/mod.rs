//! Test kit for the demo's tests: the server's frame-level kit, and `start` serving the demo app
//! as `ferrocable serve` does.
#![allow(dead_code, unreachable_pub)]

#[path = "../../../server/tests/common.rs"]
mod common;

pub use common::*;

/// The demo app, as `ferrocable serve` runs it, with the test configuration.
pub async fn start(config: ferrocable_server::ServeConfig) -> ferrocable_server::RunningServer {
    ferrocable_demo::app()
        .config(config)
        .start()
        .await
        .expect("demo starts")
}
