//! HTTP around the cable: the Origin check, plain requests to the cable path, health,
#![allow(missing_docs)]
//! metrics, the cable URL meta tag, and TLS.

mod common;

use std::sync::Arc;

use common::*;
use ferrocable_server::ServeConfig;

fn upgrade_request(addr: std::net::SocketAddr, origin: Option<&str>) -> String {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /cable HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: actioncable-v1-json\r\n{origin}\r\n"
    )
}

fn protected() -> ServeConfig {
    ServeConfig {
        disable_forgery_protection: false,
        allowed_origins: vec!["https://*.example.com".into()],
        ..config()
    }
}

#[tokio::test]
async fn foreign_and_missing_origins_are_refused_before_the_upgrade() {
    let server = start(protected()).await;
    let addr = server.local_addr();
    let (status, body) = raw_http(addr, &upgrade_request(addr, Some("http://evil.test"))).await;
    assert_eq!(status, 403);
    assert!(
        body.contains("Request origin not allowed: http://evil.test"),
        "{body}"
    );
    let (status, _) = raw_http(addr, &upgrade_request(addr, None)).await;
    assert_eq!(status, 403);
    let m = metrics(addr).await;
    assert_eq!(
        metric(&m, r#"ferrocable_refused_upgrades_total{reason="origin"}"#),
        Some(2.0)
    );
    assert_eq!(metric(&m, "ferrocable_connections_opened_total"), Some(0.0));
}

#[tokio::test]
async fn same_origin_and_allow_listed_origins_upgrade() {
    let server = start(protected()).await;
    let addr = server.local_addr();
    let same = format!("http://{addr}");
    for origin in [same.as_str(), "https://app.example.com"] {
        let mut c = connect_with(
            addr,
            &[
                ("sec-websocket-protocol", "actioncable-v1-json"),
                ("origin", origin),
            ],
        )
        .await;
        c.welcomed().await;
    }
}

#[tokio::test]
async fn a_plain_request_to_the_cable_path_is_404() {
    let server = start(config()).await;
    let (status, body) = http_get(server.local_addr(), "/cable").await;
    assert_eq!(status, 404);
    assert_eq!(body, "Page not found");
}

#[tokio::test]
async fn wrong_websocket_version_is_426() {
    let server = start(config()).await;
    let addr = server.local_addr();
    let req = upgrade_request(addr, Some("http://x")).replace("Version: 13", "Version: 8");
    assert_eq!(raw_http(addr, &req).await.0, 426);
}

#[tokio::test]
async fn health_and_metrics() {
    let server = start(config()).await;
    assert_eq!(
        http_get(server.local_addr(), "/health").await,
        (200, "ok\n".into())
    );
    let m = metrics(server.local_addr()).await;
    for name in [
        "ferrocable_connections",
        "ferrocable_subscriptions",
        "ferrocable_broadcasts_total",
    ] {
        assert!(metric(&m, name).is_some(), "{name} missing in\n{m}");
    }
}

/// An app of one page that puts the cable's head tags in its `<head>`.
fn one_page() -> ferrocable_server::Composition {
    use axum::response::Html;
    async fn page(cable: ferrocable_server::Cable) -> Html<String> {
        Html(format!("<html><head>{}</head></html>", cable.head()))
    }
    ferrocable_server::Composition {
        pages: axum::Router::new().route("/", axum::routing::get(page)),
        ..Default::default()
    }
}

#[tokio::test]
async fn pages_carry_the_public_cable_url() {
    let cfg = ServeConfig {
        cable_url: Some("wss://cable.example.com/cable".into()),
        ..config()
    };
    let server = start_with(cfg, one_page()).await;
    let (_, body) = http_get(server.local_addr(), "/").await;
    assert!(
        body.contains(r#"<meta name="action-cable-url" content="wss://cable.example.com/cable">"#),
        "{body}"
    );
    let server = start_with(config(), one_page()).await;
    let (_, body) = http_get(server.local_addr(), "/").await;
    assert!(
        body.contains(r#"<meta name="action-cable-url" content="/cable">"#),
        "{body}"
    );
    assert!(
        body.contains(r#""ferrocable":"/vendor/ferrocable.js""#),
        "the import map names the start-up module: {body}"
    );
    let (status, boot) = http_get(server.local_addr(), "/vendor/ferrocable.js").await;
    assert_eq!(status, 200);
    assert!(boot.contains("StimulusReflex.initialize"), "{boot}");
}

#[tokio::test]
async fn mount_path_is_configurable() {
    let cfg = ServeConfig {
        mount_path: "/ws".into(),
        ..config()
    };
    let server = start(cfg).await;
    let stream = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let mut c = connect_on(
        stream,
        &format!("ws://{}/ws", server.local_addr()),
        &[("sec-websocket-protocol", "actioncable-v1-json")],
    )
    .await;
    c.welcomed().await;
}

#[tokio::test]
async fn wss_works_with_a_self_signed_certificate() {
    let dir = std::env::temp_dir().join(format!("ferrocable-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let cfg = ServeConfig {
        tls_cert: Some(cert_path),
        tls_key: Some(key_path),
        ..config()
    };
    let server = start(cfg).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let uri = format!("wss://localhost:{}/cable", server.local_addr().port());
    let mut c = connect_on(
        tls,
        &uri,
        &[("sec-websocket-protocol", "actioncable-v1-json")],
    )
    .await;
    c.welcomed().await;
    c.subscribe(BENCH).await;
    c.send(&message(
        BENCH,
        serde_json::json!({"action": "echo", "tls": true}),
    ))
    .await;
    assert_eq!(c.frame().await["message"]["tls"], true);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn shutdown_lets_a_page_request_in_flight_finish() {
    use std::sync::Arc;
    use tokio::sync::Notify;
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (e, r) = (entered.clone(), release.clone());
    let slow = axum::routing::get(move || {
        let (e, r) = (e.clone(), r.clone());
        async move {
            e.notify_one();
            r.notified().await;
            "finished page"
        }
    });
    let app = ferrocable_server::Composition {
        pages: axum::Router::new().route("/slow", slow),
        ..Default::default()
    };
    let server = start_with(config(), app).await;
    let addr = server.local_addr();
    let request = tokio::spawn(async move { http_get(addr, "/slow").await });
    entered.notified().await;
    let mut shutdown = tokio::spawn(server.shutdown());
    // Shutdown has begun: the listener takes no new connection…
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still open"
        );
        tokio::task::yield_now().await;
    }
    // …but it does not end while the page is being rendered.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut shutdown)
            .await
            .is_err(),
        "shutdown returned with a request in flight"
    );
    release.notify_one();
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "finished page");
    let report = shutdown.await.unwrap();
    assert_eq!(report.remaining, 0);
}

/// Reads an HTTP response head byte by byte, so that nothing after it is taken from the socket.
async fn response_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(TIMEOUT, s.read_u8())
            .await
            .expect("response within timeout")
            .expect("socket open");
        head.push(byte);
    }
    String::from_utf8(head).unwrap()
}

/// A client's masked text frame (payload under 126 bytes).
fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let payload = text.as_bytes();
    assert!(payload.len() < 126);
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn a_keep_alive_connection_upgrades_to_the_cable_after_another_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(config()).await;
    let addr = server.local_addr();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /health HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = response_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = [0u8; 3];
    s.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"ok\n");
    // The same connection, now through hyper: its second request is the upgrade.
    let mut c = connect_on(
        s,
        &format!("ws://{addr}/cable"),
        &[("sec-websocket-protocol", "actioncable-v1-json")],
    )
    .await;
    c.welcomed().await;
    c.subscribe(BENCH).await;
}

#[tokio::test]
async fn a_command_sent_with_the_upgrade_request_is_read() {
    use tokio::io::AsyncWriteExt;
    let server = start(config()).await;
    let addr = server.local_addr();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut bytes = upgrade_request(addr, None).into_bytes();
    bytes.extend(masked_text(&subscribe(BENCH)));
    s.write_all(&bytes).await.unwrap();
    let head = response_head(&mut s).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    assert!(
        head.contains("sec-websocket-protocol: actioncable-v1-json\r\n"),
        "{head}"
    );
    let mut c = Client {
        ws: tokio_websockets::ClientBuilder::new().take_over(s),
        protocol: None,
    };
    c.welcomed().await;
    let f = c.frame().await;
    assert_eq!(f["type"], "confirm_subscription", "{f}");
    assert_eq!(f["identifier"], BENCH);
}

#[tokio::test]
async fn an_upgrade_whose_head_is_over_8_kib_is_served() {
    let server = start(config()).await;
    let cookie = format!("big={}", "a".repeat(10_000));
    let mut c = connect_with(
        server.local_addr(),
        &[
            ("sec-websocket-protocol", "actioncable-v1-json"),
            ("cookie", &cookie),
        ],
    )
    .await;
    c.welcomed().await;
    c.subscribe(BENCH).await;
}

#[tokio::test]
async fn a_malformed_first_request_is_answered_400() {
    let server = start(config()).await;
    let (status, _) = raw_http(
        server.local_addr(),
        "GET /cable HTTP/1.1\r\nHo st: x\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
}
