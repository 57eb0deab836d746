//! The fake Rails app of the RPC tests as a process, for the JavaScript tests:
//! `fake_rails [PORT] [BROADCAST_URL] [BROADCAST_KEY]` serves HTTP RPC at `/_anycable`
//! (secret `fake-rails-rpc-secret`) and the same app over gRPC on a second port, prints
//! `listening on ADDR` and `grpc on ADDR`, and records calls at `GET /_calls`. With
//! `FAKE_RAILS_NODE_MODULES` set, a StimulusReflex counter page at `/`; with
//! `FAKE_RAILS_REDIS` (`host:port`), the Redis broadcast actions. Written from the wire
//! document: no Rails app can run here.

#[path = "../tests/fake_rails/mod.rs"]
mod fake_rails;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let app = fake_rails::FakeRails::new();
    if let (Some(url), Some(key)) = (args.next(), args.next()) {
        app.broadcast_to(url, key);
    }
    if let Ok(dir) = std::env::var("FAKE_RAILS_NODE_MODULES") {
        app.serve_page(std::path::Path::new(&dir));
    }
    if let Ok(redis) = std::env::var("FAKE_RAILS_REDIS") {
        app.redis_at(redis);
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("port free");
    let (grpc, _task) = fake_rails::grpc::start(app.clone()).await;
    println!("grpc on {grpc}");
    println!("listening on {}", listener.local_addr().expect("bound"));
    fake_rails::serve(app, listener).await;
}
