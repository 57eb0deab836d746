//! The cable client every scenario uses: WebSocket upgrade with the ActionCable subprotocol,
//! then a subscription that waits for its confirmation.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

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
