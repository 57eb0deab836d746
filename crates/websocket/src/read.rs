//! Reading messages from a socket through a per-thread scratch buffer.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::decode::{Decoder, Message, WsError};

/// Bytes read at once. One buffer per worker thread, whatever the number of connections.
const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// Any byte stream a WebSocket can run on (TLS, an in-memory pipe).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Something that owns a plain TCP socket and shares it: the connection reads it through
/// [`Transport::Shared`] while others write to it directly. Whoever implements it keeps the
/// socket inline, so a direct write touches one allocation, not two.
pub trait SharedTcp: Send + Sync + 'static {
    /// The socket (`None` if this owner holds none).
    fn tcp(&self) -> Option<&TcpStream>;
}

impl SharedTcp for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

/// The byte stream under one WebSocket connection.
pub enum Transport {
    /// A plain TCP socket, as an upgrade hands it over: read on readiness. (Boxed: this enum
    /// lives in every idle connection's task, the socket moves into the outbox at once.)
    Tcp(Box<TcpStream>),
    /// A plain TCP socket shared with direct writers (a connection's outbox owns it): its
    /// connection reads it, broadcasts write to it with `send` while nothing is queued.
    Shared(Arc<dyn SharedTcp>),
    /// Any other stream (TLS, an in-memory pipe): read the same way through its
    /// `AsyncRead`, written only by its connection's task.
    Stream(Box<dyn Stream>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Transport::Shared(s) => f.debug_tuple("Shared").field(&s.tcp()).finish(),
            Transport::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// Why reading a message failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("socket read failed")]
    Io(#[from] io::Error),
    /// The bytes are not an acceptable WebSocket stream.
    #[error(transparent)]
    Ws(#[from] WsError),
}

fn not_connected() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the shared socket is gone")
}

/// Writes `frame` whole to `socket`, waiting on its writability.
async fn write_tcp(socket: &TcpStream, frame: &[u8]) -> io::Result<()> {
    let mut at = 0;
    while at < frame.len() {
        socket.writable().await?;
        match socket.try_write(&frame[at..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads and drops what `socket` still receives until the peer closes.
async fn drain_tcp(socket: &TcpStream) {
    let mut buf = [0u8; 512];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        match socket.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

impl Transport {
    /// The plain TCP socket under this transport, if it is one.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Transport::Tcp(s) => Some(&**s),
            Transport::Shared(s) => s.tcp(),
            Transport::Stream(_) => None,
        }
    }

    /// Writes `frames` whole, in order (the connection's own path: the first frames of a
    /// connection, a goodbye, a stream other than plain TCP). The caller makes sure nobody
    /// writes to a shared socket meanwhile.
    pub async fn write_all(&mut self, frames: &[Bytes]) -> io::Result<()> {
        if let Transport::Stream(s) = self {
            for frame in frames {
                s.write_all(frame).await?;
            }
            return s.flush().await;
        }
        let socket = self.tcp().ok_or_else(not_connected)?;
        for frame in frames {
            write_tcp(socket, frame).await?;
        }
        Ok(())
    }

    /// Closes the connection after the close frame was written: shuts our side down, then
    /// reads and drops what the peer still sends until it closes too, for at most `linger`
    /// (closing with unread bytes would reset the connection and could lose our last frames).
    /// A shared socket's descriptor is released when its owner drops it.
    pub async fn close(self, linger: std::time::Duration) {
        async fn drain(mut r: impl AsyncRead + Unpin) {
            let mut buf = [0u8; 512];
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut r, &mut buf).await {
                if n == 0 {
                    return;
                }
            }
        }
        match self {
            Transport::Stream(mut s) => {
                let _ = s.shutdown().await;
                let _ = tokio::time::timeout(linger, drain(&mut s)).await;
            }
            tcp => {
                if let Some(socket) = tcp.tcp() {
                    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
                    let _ = tokio::time::timeout(linger, drain_tcp(socket)).await;
                }
            }
        }
    }
}

/// Reads what `socket` holds into `buf`. A short read means the receive queue was emptied, so
/// the socket's readiness is cleared then, as tokio's own `poll_read` does (`try_read` clears
/// it only on `WouldBlock`; the `&mut` `poll_read` is out of reach, the socket being shared with
/// the outbox): the next read waits for the next readiness edge instead of spending a `recv`
/// that returns `EAGAIN`. That was one syscall in two on the read side, for every received
/// message (strace of a connect: recv request, recv subscribe, recv `EAGAIN`). `try_io`
/// clears readiness when its closure says `WouldBlock`, and only the readiness seen before the
/// read, so data that arrives after the read is not missed.
fn read_drained(socket: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read as _;
    let len = buf.len();
    let mut short = 0;
    let read = socket.try_io(tokio::io::Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(socket)).read(buf)?;
        if n > 0 && n < len {
            short = n;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
        read => read,
    }
}

/// Reads until the next complete message, refusing messages over `max` bytes. `Ok(None)`:
/// the peer closed the socket. Bytes are read into this thread's scratch buffer and parsed
/// there; only an incomplete frame is copied into `decoder`.
pub async fn read_message(
    transport: &mut Transport,
    decoder: &mut Decoder,
    max: usize,
) -> Result<Option<Message>, ReadError> {
    if let Some(message) = decoder.next_buffered(max)? {
        return Ok(Some(message));
    }
    std::future::poll_fn(|cx| {
        loop {
            let step = SCRATCH.with_borrow_mut(|scratch| {
                let n = match transport {
                    Transport::Tcp(_) | Transport::Shared(_) => {
                        let s = transport.tcp().ok_or_else(not_connected)?;
                        ready!(s.poll_read_ready(cx))?;
                        match read_drained(s, scratch) {
                            Ok(n) => n,
                            // Readiness was stale: the read cleared it, poll again.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Poll::Ready(Ok(None));
                            }
                            Err(e) => return Poll::Ready(Err(ReadError::Io(e))),
                        }
                    }
                    Transport::Stream(s) => {
                        let mut buf = ReadBuf::new(scratch);
                        ready!(Pin::new(s).poll_read(cx, &mut buf))?;
                        buf.filled().len()
                    }
                };
                if n == 0 {
                    return Poll::Ready(Ok(Some(None)));
                }
                match decoder.feed(&mut scratch[..n], max) {
                    Ok(Some(message)) => Poll::Ready(Ok(Some(Some(message)))),
                    // A partial frame: read again.
                    Ok(None) => Poll::Ready(Ok(None)),
                    Err(e) => Poll::Ready(Err(ReadError::Ws(e))),
                }
            });
            match step {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(Some(outcome))) => return Poll::Ready(Ok(outcome)),
                Poll::Ready(Ok(None)) => continue,
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;
    use tokio::io::AsyncWriteExt;

    fn masked(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x81, 0x80 | payload.len() as u8, 7, 7, 7, 7];
        out.extend(payload.iter().map(|b| b ^ 7));
        out
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
    async fn reads_messages_from_tcp_and_keeps_nothing_while_idle() {
        let (mut client, server) = tcp_pair().await;
        let mut t = Transport::Shared(Arc::new(server));
        let mut d = Decoder::new();
        // Two messages in one write, then one cut in two writes.
        let mut both = masked(b"one");
        both.extend(masked(b"two"));
        client.write_all(&both).await.unwrap();
        assert_eq!(
            read_message(&mut t, &mut d, 1024).await.unwrap(),
            Some(Message::Text(b"one".to_vec()))
        );
        assert_eq!(
            read_message(&mut t, &mut d, 1024).await.unwrap(),
            Some(Message::Text(b"two".to_vec()))
        );
        assert_eq!(d.buffered_capacity(), 0);
        let three = masked(b"three");
        client.write_all(&three[..3]).await.unwrap();
        let reader = tokio::spawn(async move {
            let m = read_message(&mut t, &mut d, 1024).await.unwrap();
            (m, t, d)
        });
        tokio::task::yield_now().await;
        client.write_all(&three[3..]).await.unwrap();
        let (m, mut t, mut d) = reader.await.unwrap();
        assert_eq!(m, Some(Message::Text(b"three".to_vec())));
        assert_eq!(d.buffered_capacity(), 0);
        // Server frames written back are read by the client as they are.
        t.write_all(&[frame::text(b"hi")]).await.unwrap();
        let mut got = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"\x81\x02hi");
        drop(client);
        assert_eq!(read_message(&mut t, &mut d, 1024).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_short_read_clears_readiness_and_the_next_message_still_arrives() {
        let (mut client, server) = tcp_pair().await;
        let server = Arc::new(server);
        let mut t = Transport::Shared(server.clone());
        let mut d = Decoder::new();
        let readiness_pending = |s: &TcpStream| {
            let waker = std::task::Waker::noop();
            s.poll_read_ready(&mut std::task::Context::from_waker(waker))
                .is_pending()
        };
        client.write_all(&masked(b"one")).await.unwrap();
        assert_eq!(
            read_message(&mut t, &mut d, 1024).await.unwrap(),
            Some(Message::Text(b"one".to_vec()))
        );
        // The read drained the socket: readiness is cleared, so waiting for the next message
        // costs no `recv` that would only say EAGAIN.
        assert!(
            readiness_pending(&server),
            "readiness left set after a short read"
        );
        // And the next message, arriving after the clear, is not missed.
        client.write_all(&masked(b"two")).await.unwrap();
        assert_eq!(
            read_message(&mut t, &mut d, 1024).await.unwrap(),
            Some(Message::Text(b"two".to_vec()))
        );
        assert!(readiness_pending(&server));
    }

    #[tokio::test]
    async fn reads_from_any_stream_and_reports_bad_frames() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut t = Transport::Stream(Box::new(b));
        let mut d = Decoder::new();
        a.write_all(&masked(b"x")).await.unwrap();
        assert_eq!(
            read_message(&mut t, &mut d, 1024).await.unwrap(),
            Some(Message::Text(b"x".to_vec()))
        );
        a.write_all(&[0x81, 0x01, b'x']).await.unwrap();
        assert!(matches!(
            read_message(&mut t, &mut d, 1024).await,
            Err(ReadError::Ws(WsError::Protocol(_)))
        ));
    }
}
