//! The cable's WebSocket handshake read straight off a plain TCP socket: a connection's first
//! request, when it is a well-formed upgrade to the cable path that passes the cable's checks,
//! is parsed here (httparse), answered with the 101 and handed to the node, without hyper's
//! connection, axum's router or hyper's upgrade machinery in between.
//!
//! Why our own: connect + subscribe is where the server's user-space CPU per connection stood
//! far above the C floor's (`bench/connect-cpu.py`: ~17 µs against ~2 before this path, of
//! which hyper, the router and the second task made a fifth), and connects per second are
//! what a reconnect storm after a deploy is made of. Everything else — another path, any
//! request this does not take whole (a body, HTTP/1.0, an absolute-form target, a header hyper
//! would take and httparse would not), a refusal, a keep-alive connection's later requests,
//! TLS — goes to hyper and the router exactly as before, with the bytes read so far put back
//! in front of the socket ([`Prefixed`]); refusals are answered (and counted) there, once.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ferrocable_node::ConnectRequest;
use ferrocable_node::websocket::{Decoder, Transport};
use ferrocable_protocol::Subprotocol;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::state::ServerState;
use crate::upgrade::{Accepted, check_upgrade};

/// Longest a connection may take to send its first request head (hyper's
/// `header_read_timeout`, as configured for the rest of the server).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest first request head read here; a longer one is left to hyper (which takes up to its
/// own limit, or answers 431).
const HEAD_LIMIT: usize = 8 * 1024;

/// The first read's buffer: a browser's upgrade with its cookies fits, the benchmark's in a
/// fifth. Freed once the connection is upgraded or handed to hyper.
const FIRST_READ: usize = 1024;

/// Most headers parsed here (hyper's own limit is 100; a request with more goes to hyper).
const MAX_HEADERS: usize = 64;

/// The cable's handshake on the raw socket, for the listener's plain TCP connections.
pub(crate) struct CableHandshake {
    state: ServerState,
    path: Box<str>,
}

/// What became of a connection's first request.
pub(crate) enum FirstRequest {
    /// Upgraded here: the connection runs in the node.
    Upgraded,
    /// For hyper: the socket, with the bytes read from it so far in front.
    Http(Prefixed),
    /// Nothing to serve: the peer left or failed before a whole request head, took longer than
    /// [`HEAD_TIMEOUT`], or the node began shutting down meanwhile.
    Gone,
}

/// A first request head, as far as this path cares.
enum Parsed {
    /// Not whole yet.
    Partial,
    /// Whole, and not one this path takes: hyper's.
    Other,
    /// An upgrade to the cable path, `head_len` bytes long.
    Cable {
        head_len: usize,
        uri: Uri,
        headers: HeaderMap,
    },
}

impl CableHandshake {
    /// The handshake for the cable mounted at `path`.
    pub(crate) fn new(state: ServerState, path: &str) -> Self {
        CableHandshake {
            state,
            path: path.into(),
        }
    }

    /// Reads the connection's first request head and upgrades it here if it is the cable's;
    /// otherwise gives the socket back for hyper.
    pub(crate) async fn serve(
        &self,
        stream: TcpStream,
        remote: SocketAddr,
        shutdown: &CancellationToken,
    ) -> FirstRequest {
        let mut head = Vec::with_capacity(FIRST_READ);
        let read = tokio::select! {
            r = tokio::time::timeout(HEAD_TIMEOUT, read_head(&stream, &mut head, &self.path)) => r,
            _ = shutdown.cancelled() => return FirstRequest::Gone,
        };
        let (head_len, uri, headers) = match read {
            Ok(Ok(Parsed::Cable {
                head_len,
                uri,
                headers,
            })) => (head_len, uri, headers),
            Ok(Ok(_)) => return FirstRequest::Http(Prefixed::new(stream, head)),
            Ok(Err(e)) => {
                debug!(%remote, error = %e, "connection ended before a whole request head");
                return FirstRequest::Gone;
            }
            Err(_) => {
                debug!(%remote, "request head timed out");
                return FirstRequest::Gone;
            }
        };
        // A refusal is hyper's to answer (the router's cable handler checks again).
        let Ok(Accepted { accept, protocol }) = check_upgrade(&self.state, &headers, false) else {
            return FirstRequest::Http(Prefixed::new(stream, head));
        };
        // The 101 goes with the connection: admitted at once, it leaves in the same write as
        // the `welcome` (one syscall per connection fewer).
        let response = Bytes::from(switching_protocols(&accept, protocol));
        // Bytes the client sent after its request head are the WebSocket's.
        let decoder = Decoder::with_buffered(&head[head_len..]);
        drop(head);
        let request = Box::new(ConnectRequest {
            uri,
            headers,
            remote_addr: Some(remote),
            protocol,
        });
        let node = self.state.node.clone();
        self.state.node.spawn_tracked(async move {
            node.run_connection_with_response(
                Transport::Tcp(Box::new(stream)),
                decoder,
                request,
                response,
            )
            .await;
        });
        FirstRequest::Upgraded
    }
}

/// Reads until `head` holds a whole request head (or one this path leaves to hyper).
async fn read_head(stream: &TcpStream, head: &mut Vec<u8>, path: &str) -> io::Result<Parsed> {
    loop {
        if head.len() == head.capacity() {
            head.reserve(FIRST_READ);
        }
        stream.readable().await?;
        match stream.try_read_buf(head) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        match parse(head, path) {
            Parsed::Partial if head.len() < HEAD_LIMIT => {}
            Parsed::Partial => return Ok(Parsed::Other),
            parsed => return Ok(parsed),
        }
    }
}

/// Parses a request head: a GET of exactly `path` (a query allowed), HTTP/1.1, no body, every
/// header a valid `http` header. Anything else, malformed included, is [`Parsed::Other`].
fn parse(head: &[u8], path: &str) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return Parsed::Other;
    }
    let Some(target) = req.path else {
        return Parsed::Other;
    };
    if target.split_once('?').map_or(target, |(p, _)| p) != path {
        return Parsed::Other;
    }
    let Ok(uri) = Uri::try_from(target) else {
        return Parsed::Other;
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let body = h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0");
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Other;
        };
        if body {
            return Parsed::Other;
        }
        headers.append(name, value);
    }
    Parsed::Cable {
        head_len,
        uri,
        headers,
    }
}

/// The 101 head, as the router's cable handler answers it.
fn switching_protocols(accept: &str, protocol: Option<Subprotocol>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    if let Some(p) = protocol {
        out.extend_from_slice(b"\r\nsec-websocket-protocol: ");
        out.extend_from_slice(p.as_str().as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// A plain TCP socket with the bytes already read from it in front: what the raw handshake
/// read before it knew the request was hyper's. The bytes are freed once read.
pub(crate) struct Prefixed {
    unread: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl Prefixed {
    fn new(stream: TcpStream, unread: Vec<u8>) -> Self {
        Prefixed {
            unread,
            at: 0,
            stream,
        }
    }

    /// The socket and the bytes not yet read from the front (after an upgrade through hyper).
    pub(crate) fn into_parts(self) -> (TcpStream, Vec<u8>) {
        let mut unread = self.unread;
        unread.drain(..self.at);
        (self.stream, unread)
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.unread.len() {
            let n = (this.unread.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.unread[this.at..this.at + n]);
            this.at += n;
            if this.at == this.unread.len() {
                this.unread = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const UPGRADE: &[u8] = b"GET /cable?token=a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a2V5\r\n\r\n";

    #[test]
    fn an_upgrade_to_the_cable_path_is_taken_with_its_query_and_headers() {
        let Parsed::Cable {
            head_len,
            uri,
            headers,
        } = parse(UPGRADE, "/cable")
        else {
            panic!("not taken");
        };
        assert_eq!(head_len, UPGRADE.len());
        assert_eq!(uri.query(), Some("token=a"));
        assert_eq!(headers.get("upgrade").unwrap(), "websocket");
        assert_eq!(headers.len(), 5);
    }

    #[test]
    fn a_head_cut_anywhere_is_partial() {
        for cut in 0..UPGRADE.len() {
            assert!(
                matches!(parse(&UPGRADE[..cut], "/cable"), Parsed::Partial),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn what_this_path_does_not_take_is_left_to_hyper() {
        let text = std::str::from_utf8(UPGRADE).unwrap();
        let others = [
            text.replace("GET /cable?token=a", "GET /cable/"),
            text.replace("GET /cable?token=a", "GET /other"),
            text.replace("GET /cable?token=a", "GET http://x/cable"),
            text.replace("GET ", "POST "),
            text.replace("HTTP/1.1", "HTTP/1.0"),
            text.replace("Host: x", "Content-Length: 3"),
            text.replace("Host: x", "Transfer-Encoding: chunked"),
            text.replace("Host: x", "Ho st: x"),
            format!(
                "GET /cable HTTP/1.1\r\n{}\r\n",
                "X: y\r\n".repeat(MAX_HEADERS + 1)
            ),
            "\x00\x01garbage\r\n\r\n".to_owned(),
        ];
        for other in &others {
            assert!(
                matches!(parse(other.as_bytes(), "/cable"), Parsed::Other),
                "{other:?}"
            );
        }
        // A zero Content-Length is no body.
        let zero = text.replace("Host: x", "Content-Length: 0");
        assert!(matches!(
            parse(zero.as_bytes(), "/cable"),
            Parsed::Cable { .. }
        ));
    }

    #[test]
    fn the_101_names_the_accept_key_and_the_subprotocol() {
        let head = switching_protocols("abc=", Some(Subprotocol::ActionCableV1Json));
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut res = httparse::Response::new(&mut slots);
        assert_eq!(
            res.parse(&head).unwrap(),
            httparse::Status::Complete(head.len())
        );
        assert_eq!(res.code, Some(101));
        let find = |name: &str| {
            res.headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.value.to_vec())
        };
        assert_eq!(find("sec-websocket-accept").unwrap(), b"abc=");
        assert_eq!(
            find("sec-websocket-protocol").unwrap(),
            b"actioncable-v1-json"
        );
        assert_eq!(find("upgrade").unwrap(), b"websocket");
        let plain = switching_protocols("abc=", None);
        assert!(!String::from_utf8(plain).unwrap().contains("protocol"));
    }

    /// A connected loopback pair: (client, server).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn hyper_reads_the_bytes_already_read_first_then_the_socket() {
        let (mut client, server) = tcp_pair().await;
        let mut prefixed = Prefixed::new(server, b"head".to_vec());
        client.write_all(b" and body").await.unwrap();
        let mut first = [0u8; 3];
        prefixed.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"hea");
        let mut rest = [0u8; 10];
        prefixed.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"d and body");
        prefixed.write_all(b"reply").await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"reply");
        let (_, unread) = prefixed.into_parts();
        assert!(unread.is_empty());
    }

    #[tokio::test]
    async fn a_head_read_in_pieces_is_taken_whole_and_what_follows_it_kept() {
        let (mut client, server) = tcp_pair().await;
        let writer = tokio::spawn(async move {
            let (body, last) = UPGRADE.split_at(UPGRADE.len() - 3);
            for piece in body.chunks(7) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            // The head's end and a first WebSocket byte in one segment.
            client.write_all(&[last, b"\x81"].concat()).await.unwrap();
            client
        });
        let mut head = Vec::with_capacity(4);
        let parsed = read_head(&server, &mut head, "/cable").await.unwrap();
        let _client = writer.await.unwrap();
        let Parsed::Cable { head_len, .. } = parsed else {
            panic!("not taken");
        };
        assert_eq!(head_len, UPGRADE.len());
        assert_eq!(&head[head_len..], b"\x81");
    }
}
