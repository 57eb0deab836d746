//! The cable client every scenario uses: WebSocket upgrade with the ActionCable subprotocol,
//! then a subscription that waits for its confirmation.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

/// The identifier of `BenchmarkChannel`, the channel every fan-out scenario subscribes to.
pub(crate) const BENCH: &str = r#"{"channel":"BenchmarkChannel"}"#;

/// Upgrades `stream` to a cable connection on `addr` (with a session `cookie` if given).
pub(crate) async fn open(
    stream: TcpStream,
    addr: SocketAddr,
    cookie: Option<&str>,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    stream.set_nodelay(true)?;
    let mut builder = ClientBuilder::new()
        .uri(&format!("ws://{addr}/cable"))?
        .add_header(
            "sec-websocket-protocol".parse()?,
            "actioncable-v1-json".parse()?,
        )?
        .add_header("origin".parse()?, format!("http://{addr}").parse()?)?;
    if let Some(c) = cookie {
        builder = builder.add_header("cookie".parse()?, c.parse()?)?;
    }
    let (ws, _) = builder.connect_on(stream).await?;
    Ok(ws)
}

/// Subscribes to `identifier` and waits (30 s at most) for the confirmation.
pub(crate) async fn subscribe(
    ws: &mut WebSocketStream<TcpStream>,
    identifier: &str,
) -> anyhow::Result<()> {
    ws.send(Message::text(
        json!({"command": "subscribe", "identifier": identifier}).to_string(),
    ))
    .await?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no confirmation")?
            .context("closed")??;
        if m.as_text()
            .is_some_and(|t| t.contains("confirm_subscription"))
        {
            return Ok(());
        }
    }
}

/// A cable connection subscribed to `identifier`, from `source` (a loopback address to bind,
/// or the kernel's choice): TCP connect, upgrade and confirmation, bounded at 60 s in all so
/// a server that drops SYNs or never answers counts as a failure, not a hang.
pub(crate) async fn connect_subscribed(
    addr: SocketAddr,
    source: Option<SocketAddr>,
    identifier: &str,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    tokio::time::timeout(Duration::from_secs(60), async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(source) = source {
            socket.bind(source)?;
        }
        let mut ws = open(socket.connect(addr).await?, addr, None).await?;
        subscribe(&mut ws, identifier).await?;
        anyhow::Ok(ws)
    })
    .await
    .unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "connect, upgrade and subscribe took over 60 s"
        ))
    })
}

/// The `k`-th of `count` loopback source addresses (127.0.0.1..=127.0.0.count), or `None`
/// when `count` is 0 (the kernel picks).
pub(crate) fn source_address(count: u8, k: usize) -> Option<SocketAddr> {
    (count > 0).then(|| {
        SocketAddr::new(
            std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                127,
                0,
                0,
                1 + (k % count as usize) as u8,
            )),
            0,
        )
    })
}
