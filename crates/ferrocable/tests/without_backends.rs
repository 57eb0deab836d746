//! An app built without the networked backends (`--no-default-features`): asking for one is a
//! start-up error that names the feature to turn on, never a silent fallback to memory.
//! `scripts/test.sh` runs this file in that build; with the features on it compiles to nothing.
#![cfg(not(any(
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "memcached",
    feature = "nats",
    feature = "tls"
)))]
#![allow(missing_docs)]

use ferrocable::{App, ServeConfig};

fn config() -> ServeConfig {
    ServeConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        session_store: "memory".into(),
        secret_key_base: Some("test secret key base".into()),
        data_dir: std::env::temp_dir().join("ferrocable-without-backends"),
        ..ServeConfig::default()
    }
}

/// A case: its name, the change to the configuration, the feature the error must name.
type Case = (&'static str, fn(&mut ServeConfig), &'static str);

#[tokio::test]
async fn a_backend_left_out_is_a_clear_start_error() {
    let cases: [Case; 6] = [
        ("sqlite", |c| c.session_store = "sqlite".into(), "sqlite"),
        (
            "postgres",
            |c| c.session_store = "postgres://127.0.0.1/x".into(),
            "postgres",
        ),
        (
            "redis sessions",
            |c| c.session_store = "redis://127.0.0.1".into(),
            "redis",
        ),
        (
            "redis bus",
            |c| c.pubsub = "redis://127.0.0.1".into(),
            "redis",
        ),
        (
            "nats broker",
            |c| c.broker = "nats://127.0.0.1".into(),
            "nats",
        ),
        (
            "tls",
            |c| {
                c.tls_cert = Some("cert.pem".into());
                c.tls_key = Some("key.pem".into());
            },
            "tls",
        ),
    ];
    for (name, change, feature) in cases {
        let mut c = config();
        change(&mut c);
        let err = App::new().config(c).start().await.expect_err(name);
        let text = err.to_string();
        assert!(
            text.contains(&format!("`{feature}` feature")),
            "{name}: {text}"
        );
    }
    // Memory everything still runs.
    let server = App::new()
        .config(config())
        .start()
        .await
        .expect("memory app starts");
    server.shutdown().await;
}
