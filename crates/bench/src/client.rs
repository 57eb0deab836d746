//! The cable client every scenario uses: WebSocket upgrade with the ActionCable subprotocol,
//! then a subscription that waits for its confirmation.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
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
    let deadline = Instant::now() + Duration::from_secs(30);
    next_text(ws, deadline, "the subscription's confirmation", |t| {
        t.contains("confirm_subscription")
    })
    .await?;
    Ok(())
}

/// Waits until `deadline` for the first text frame `wanted` accepts and returns it; frames it
/// does not want (pings, other messages) are skipped without moving the deadline, so a server
/// that keeps pinging cannot keep a client waiting forever. A `rate_limited` error frame is an
/// error: the server refused the command, and its reply will never come.
pub(crate) async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    deadline: Instant,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<Message> {
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("{what} did not arrive in time"))?
            .with_context(|| format!("closed by the server while waiting for {what}"))??;
        let Some(text) = m.as_text() else { continue };
        if text.contains(r#""reason":"rate_limited""#) {
            bail!(
                "the server refused a command as rate_limited while waiting for {what}: one \
                 connection sent more than its command rate (FERROCABLE_MAX_COMMANDS_PER_SEC); \
                 use more clients, a think time, or a higher limit"
            );
        }
        if wanted(text) {
            return Ok(m);
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

/// Makes `ws` close with a reset (`SO_LINGER` 0) rather than a FIN, so a run leaves no
/// TIME_WAIT behind. With a FIN the tool's side held each of its ports for 60 s when it exited,
/// and the next run (pair.py runs ferrocable right after the floor) searched past them: the
/// floor alone at 19,000, three runs back to back, connected 4,794, 4,502 and 4,271 times a
/// second with 18,869 and 37,869 sockets in TIME_WAIT. Only for scenarios whose connections
/// live to the tool's end; `churn` measures an ordinary close and keeps it. Best effort: a
/// socket the option failed on closes with a FIN, as before.
pub(crate) fn leave_no_time_wait(ws: &WebSocketStream<TcpStream>) {
    let _ = ws.get_ref().set_zero_linger();
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_websockets::ServerBuilder;

    /// A client and a server WebSocket over a loopback pair (no handshake: both taken over).
    async fn ws_pair() -> (WebSocketStream<TcpStream>, WebSocketStream<TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (
            ClientBuilder::new().take_over(client),
            ServerBuilder::new().serve(server),
        )
    }

    #[tokio::test]
    async fn pings_do_not_move_the_deadline() {
        let (mut client, mut server) = ws_pair().await;
        let pinger = tokio::spawn(async move {
            loop {
                let ping = Message::text(r#"{"type":"ping","message":1}"#.to_owned());
                if server.send(ping).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let deadline = Instant::now() + Duration::from_millis(300);
        // The outer bound turns a wait that never ends into a failure, not a hung test.
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            next_text(&mut client, deadline, "the reply", |t| t.contains("reply")),
        )
        .await
        .expect("the deadline ends the wait although pings keep coming");
        let e = waited.expect_err("no reply was sent");
        assert!(e.to_string().contains("did not arrive in time"), "{e}");
        assert!(Instant::now() >= deadline);
        pinger.abort();
    }

    #[tokio::test]
    async fn a_rate_limited_refusal_ends_the_wait_with_its_reason() {
        let (mut client, mut server) = ws_pair().await;
        for text in [
            r#"{"type":"ping","message":1}"#,
            r#"{"type":"error","reason":"rate_limited","message":"too many commands: slow down"}"#,
        ] {
            server.send(Message::text(text.to_owned())).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let e = next_text(&mut client, deadline, "the reply", |t| t.contains("reply"))
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("rate_limited"), "{e}");
    }

    #[tokio::test]
    async fn the_wanted_frame_is_returned_after_the_ones_skipped() {
        let (mut client, mut server) = ws_pair().await;
        for text in [r#"{"type":"ping","message":1}"#, "other", "the reply"] {
            server.send(Message::text(text.to_owned())).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let m = next_text(&mut client, deadline, "the reply", |t| t.contains("reply"))
            .await
            .unwrap();
        assert_eq!(m.as_text(), Some("the reply"));
    }
}
