//! Bounded per-connection outbound queues, and the direct write that usually skips them.
//!
//! The hub never waits on a client: it `try_push`es shared frame bytes (complete WebSocket
//! frames) into each connection's outbox. On a plain TCP connection with nothing queued, the
//! push writes the frame straight to the socket (`try_write`) and the connection's task is
//! not woken at all; only when the kernel says `WouldBlock` (or writes part of it) is the
//! rest queued and the task woken to finish when the socket is writable. A connection that
//! lets its outbox fill past the limits is marked overflowed and its task disconnects it with
//! `too_slow`; nobody else slows down.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::Bytes;
use ferrocable_protocol::{DisconnectReason, Identifier};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Limits of one outbox; exceeding either one marks the connection as too slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Most bytes of frames waiting to be written (AnyCable's reference is 1 MiB).
    pub max_bytes: usize,
    /// Most frames waiting to be written.
    pub max_frames: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_bytes: 1024 * 1024,
            max_frames: 4096,
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The outbox is over its limits: the connection is too slow and will be closed.
    #[error("outbox overflowed: connection too slow")]
    Overflow,
    /// The connection is closing or closed.
    #[error("outbox closed")]
    Closed,
}

/// One subscription's view of one stream: what a stored message's offset is counted
/// against when a connection de-duplicates replayed and live frames.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    /// The stream.
    pub stream: Arc<str>,
    /// The subscription.
    pub identifier: Identifier,
}

/// A queued frame. Most are opaque bytes; frames of stored messages carry their stream key
/// and offset, so a connection that replays history can keep its frames in offset order
/// and never send one twice (the extended protocol's clients do not de-duplicate).
#[derive(Debug, Clone)]
pub enum OutFrame {
    /// Any frame.
    Plain(Bytes),
    /// A live broadcast of a stored message.
    Live {
        /// The encoded frame.
        bytes: Bytes,
        /// Its subscription and stream.
        key: Arc<StreamKey>,
        /// Its offset.
        offset: u64,
    },
    /// A message replayed from history.
    Replay {
        /// The encoded frame.
        bytes: Bytes,
        /// Its subscription and stream.
        key: Arc<StreamKey>,
        /// Its offset.
        offset: u64,
    },
    /// `confirm_history` / `reject_history`: the replay of `identifier` is complete, live
    /// frames held back meanwhile may follow.
    EndReplay {
        /// The encoded frame.
        bytes: Bytes,
        /// The subscription whose replay ended.
        identifier: Identifier,
    },
}

impl OutFrame {
    /// The encoded frame.
    pub fn bytes(&self) -> &Bytes {
        match self {
            OutFrame::Plain(b)
            | OutFrame::Live { bytes: b, .. }
            | OutFrame::Replay { bytes: b, .. }
            | OutFrame::EndReplay { bytes: b, .. } => b,
        }
    }

    /// The encoded frame, by value.
    pub fn into_bytes(self) -> Bytes {
        match self {
            OutFrame::Plain(b)
            | OutFrame::Live { bytes: b, .. }
            | OutFrame::Replay { bytes: b, .. }
            | OutFrame::EndReplay { bytes: b, .. } => b,
        }
    }
}

impl From<Bytes> for OutFrame {
    fn from(b: Bytes) -> Self {
        OutFrame::Plain(b)
    }
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<OutFrame>,
    bytes: usize,
    overflowed: bool,
    closed: bool,
    disconnect: Option<DisconnectReason>,
    /// Whether pushes may write to the socket directly (until the connection needs its
    /// frames ordered by its task, or closes).
    direct: bool,
    /// The heartbeat's ping, held on a direct-write connection (for the fan-out about to
    /// start, or a quarter period) so that a broadcast carries it in the same write (see [`Outbox::hold_ping`]).
    ping: Option<Bytes>,
    /// Whether the heartbeat has pinged this connection before: the first ping is never
    /// held, so it keeps Rails' schedule (clients count the first period from connecting).
    pinged: bool,
    /// Whether a frame other than a ping was pushed since the last ping: only a busy
    /// connection's ping is held, as only there a frame is likely to come and carry it.
    busy: bool,
}

/// One connection's outbound queue. Idle, it holds no heap buffer: the queue is taken
/// whole by the writer, so its capacity is freed after every burst.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    limits: OutboxLimits,
    positions: bool,
    /// Whether the heartbeat wakes the connection's task (its pong-timeout and session
    /// checks ride on it) even though the ping itself was written directly.
    ticks: bool,
    /// The connection's plain TCP socket, kept here (not behind another pointer) so a
    /// direct write touches this allocation only; the connection reads it through
    /// [`ferrocable_websocket::Transport::Shared`].
    socket: Option<TcpStream>,
}

/// What [`Outbox::flush`] left.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued is on the socket.
    Empty,
    /// The socket is full: wait until it is writable and flush again.
    Blocked,
}

/// What a writer takes out of an outbox in one go.
#[derive(Debug, Default)]
pub struct Drained {
    /// Frames to write, oldest first.
    pub frames: VecDeque<OutFrame>,
    /// Whether the outbox overflowed: the connection must be closed as too slow.
    pub overflowed: bool,
    /// The node asked the connection to close with this reason (e.g. shutdown).
    pub disconnect: Option<DisconnectReason>,
}

impl ferrocable_websocket::SharedTcp for Outbox {
    fn tcp(&self) -> Option<&TcpStream> {
        self.socket.as_ref()
    }
}

impl Outbox {
    /// Creates an empty outbox.
    pub fn new(limits: OutboxLimits) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            limits,
            positions: false,
            ticks: false,
            socket: None,
        }
    }

    /// Takes the connection's socket: pushes write straight to it while nothing is queued.
    pub fn with_socket(mut self, socket: TcpStream) -> Self {
        self.socket = Some(socket);
        self.state.get_mut().direct = true;
        self
    }

    /// Queues `head`, bytes the socket owes its peer before any frame (the handshake's 101,
    /// not yet written), to go first and in the same write as the connection's first frames:
    /// pushes queue behind it rather than write ahead of it, and the connection's task, woken
    /// at once, writes them all with one `sendmsg`. The 101 and the `welcome` then cost one
    /// write instead of two, and the client one wake-up instead of two.
    pub fn with_pending_head(mut self, head: Bytes) -> Self {
        let s = self.state.get_mut();
        s.bytes += head.len();
        s.frames.push_back(OutFrame::Plain(head));
        self.ready.notify_one();
        self
    }

    /// Makes the heartbeat wake the connection's task every period.
    pub fn with_ticks(mut self) -> Self {
        self.ticks = true;
        self
    }

    /// Ends direct writes: from now on every frame is queued for the connection's task
    /// (which orders replayed and live frames). Frames already queued stay, first.
    pub fn stop_direct_writes(&self) {
        let mut s = self.state.lock();
        s.direct = false;
        if let Some(ping) = s.ping.take() {
            s.bytes += ping.len();
            s.frames.push_back(OutFrame::Plain(ping));
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Whether pushes may write to the socket directly.
    pub fn writes_directly(&self) -> bool {
        self.state.lock().direct
    }

    /// Creates an empty outbox whose connection wants stored messages with their
    /// `stream_id` / `epoch` / `offset` (the extended protocol). Plain ActionCable clients
    /// get the Rails frame, byte for byte.
    pub fn with_positions(limits: OutboxLimits) -> Self {
        Outbox {
            positions: true,
            ..Outbox::new(limits)
        }
    }

    /// Whether this connection gets position metadata on stored messages.
    pub fn wants_positions(&self) -> bool {
        self.positions
    }

    /// Queues a frame without waiting. Never blocks on the client.
    pub fn try_push(&self, frame: impl Into<OutFrame>) -> Result<(), PushError> {
        self.push(&frame.into(), true)
    }

    /// [`Outbox::try_push`] for a frame many outboxes get (a broadcast): it is cloned only if
    /// it has to wait in the queue, so a direct write costs no reference count per socket.
    pub fn try_push_shared(&self, frame: &OutFrame) -> Result<(), PushError> {
        self.push(frame, true)
    }

    /// [`Outbox::try_push`]; `traffic` says whether the frame makes the connection busy
    /// (everything but the heartbeat's pings).
    fn push(&self, frame: &OutFrame, traffic: bool) -> Result<(), PushError> {
        let len = frame.bytes().len();
        let mut s = self.state.lock();
        s.busy |= traffic;
        if s.closed {
            return Err(PushError::Closed);
        }
        if s.overflowed {
            return Err(PushError::Overflow);
        }
        if s.bytes + len > self.limits.max_bytes || s.frames.len() >= self.limits.max_frames {
            s.overflowed = true;
            drop(s);
            self.ready.notify_one();
            return Err(PushError::Overflow);
        }
        let was_empty = s.frames.is_empty();
        // What is left of `frame` after a partial direct write.
        let mut rest = None;
        if s.direct
            && s.frames.is_empty()
            && s.disconnect.is_none()
            && let Some(socket) = &self.socket
        {
            let ping = s.ping.take();
            let head = ping.as_ref().map_or(0, Bytes::len);
            // The socket itself, not tokio's `try_write`: that first loads the socket's
            // readiness from its own allocation, a cache miss per delivery that perf put at
            // 93 % of `Registration::try_io`'s samples and ~half the server's user CPU in a
            // 10,000-subscriber broadcast (docs/benchmarks.md). A `WouldBlock` here leaves
            // tokio's readiness stale; the task's `flush` goes through tokio and clears it.
            let sent = match &ping {
                None => socket2::SockRef::from(socket).send(frame.bytes()),
                Some(p) => socket2::SockRef::from(socket)
                    .send_vectored(&[IoSlice::new(p), IoSlice::new(frame.bytes())]),
            };
            match (sent, ping) {
                (Ok(n), _) if n == head + len => return Ok(()),
                // Part of it went: the rest waits for the socket, first in the queue.
                (Ok(n), Some(p)) if n < head => {
                    s.bytes += p.len() - n;
                    s.frames.push_back(OutFrame::Plain(p.slice(n..)));
                }
                (Ok(n), _) => rest = Some(OutFrame::Plain(frame.bytes().slice(n - head..))),
                // Full, or failing: the task finds out when it writes.
                (Err(_), Some(p)) => {
                    s.bytes += p.len();
                    s.frames.push_back(OutFrame::Plain(p));
                }
                (Err(_), None) => {}
            }
        }
        let queued = rest.unwrap_or_else(|| frame.clone());
        s.bytes += queued.bytes().len();
        s.frames.push_back(queued);
        drop(s);
        // The writer takes the whole queue when woken, so only the empty → non-empty edge
        // needs a wake-up (a stored permit covers a writer that is busy writing).
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The heartbeat's push: like [`Outbox::try_push`], and wakes the task of a connection
    /// that asked for ticks.
    pub fn push_tick(&self, frame: Bytes) {
        // A full outbox already means "too slow"; the ping is not needed then.
        let _ = self.push(&OutFrame::Plain(frame), false);
        if self.ticks {
            self.ready.notify_one();
        }
    }

    /// The heartbeat's first pass. A busy direct-write connection (sent a frame since its last
    /// ping) holds its ping until the next frame written to it (both go in one `sendmsg`) or
    /// [`Outbox::flush_ping`] (after the fan-out that held it, or a quarter period later),
    /// whichever comes first: a ping sweep is one syscall per connection, and in the
    /// 200,000-connection fleet sweeps meeting broadcast rounds made the last receiver ~30 %
    /// later when each ping had a write of its own. A connection's first ping, an idle
    /// connection's and any other connection's go at once, so pings are at most 1.5 periods
    /// apart (a tick runs at most a quarter period late) and the first keeps Rails' schedule.
    pub fn hold_ping(&self, frame: Bytes) {
        self.hold(frame, false);
    }

    /// The heartbeat's first pass just before a fan-out that reaches this connection's slice:
    /// any direct-write connection holds its ping, busy or not, first or not, since the
    /// fan-out about to write carries it in the same write; [`Outbox::flush_ping`] sends it
    /// alone right after the fan-out if this connection was not among its receivers. In the
    /// 11-node fleet a round's fan-outs come ~10 s apart, so at the start of one hardly any
    /// connection is busy, and the pings sent at once before the broadcast delayed it.
    pub fn hold_ping_for_fan_out(&self, frame: Bytes) {
        self.hold(frame, true);
    }

    fn hold(&self, frame: Bytes, always: bool) {
        let mut s = self.state.lock();
        let hold = always || (s.pinged && s.busy);
        s.pinged = true;
        s.busy = false;
        if hold && s.direct && !s.closed && self.socket.is_some() {
            // A ping still held from the last period was never sent: the new one replaces it.
            s.ping = Some(frame);
            drop(s);
            if self.ticks {
                self.ready.notify_one();
            }
        } else {
            drop(s);
            self.push_tick(frame);
        }
    }

    /// Whether a ping is held for the next frame (tests).
    #[cfg(test)]
    pub(crate) fn holds_ping(&self) -> bool {
        self.state.lock().ping.is_some()
    }

    /// The heartbeat's second pass: sends a ping no frame has carried yet.
    pub fn flush_ping(&self) {
        let ping = self.state.lock().ping.take();
        if let Some(ping) = ping {
            let _ = self.push(&OutFrame::Plain(ping), false);
        }
    }

    /// Writes queued frames to the direct-write socket until they are all written or the
    /// socket is full (`try_write_vectored`, under the outbox's lock so pushes stay in
    /// order). Without a direct-write socket, nothing is written: the task takes the frames.
    pub fn flush(&self) -> io::Result<Flushed> {
        const BATCH: usize = 64;
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let Some(socket) = self.socket.as_ref().filter(|_| s.direct) else {
            return Ok(if s.frames.is_empty() {
                Flushed::Empty
            } else {
                Flushed::Blocked
            });
        };
        while !s.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); BATCH];
            let mut count = 0;
            for (slot, frame) in slices.iter_mut().zip(s.frames.iter()) {
                *slot = IoSlice::new(frame.bytes());
                count += 1;
            }
            let mut written = match socket.try_write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) => return Err(e),
            };
            s.bytes = s.bytes.saturating_sub(written);
            while written > 0 {
                let Some(front) = s.frames.front_mut() else {
                    break;
                };
                let len = front.bytes().len();
                if written >= len {
                    written -= len;
                    s.frames.pop_front();
                } else {
                    *front = OutFrame::Plain(front.bytes().slice(written..));
                    written = 0;
                }
            }
        }
        // Free the queue's buffer: an idle connection holds none.
        s.frames = VecDeque::new();
        Ok(Flushed::Empty)
    }

    /// Whether the outbox overflowed, and the disconnect the node asked for, if any.
    pub fn flags(&self) -> (bool, Option<DisconnectReason>) {
        let s = self.state.lock();
        (s.overflowed, s.disconnect)
    }

    /// Takes every queued frame.
    pub fn take(&self) -> Drained {
        let mut s = self.state.lock();
        s.bytes = 0;
        Drained {
            frames: std::mem::take(&mut s.frames),
            overflowed: s.overflowed,
            disconnect: s.disconnect,
        }
    }

    /// Waits until frames are queued or the outbox overflowed.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Asks the connection to say goodbye with `reason` after the frames already queued.
    /// The first request wins. This is how the node reaches every connection (shutdown)
    /// without each idle connection waiting on a shared signal of its own.
    pub fn request_disconnect(&self, reason: DisconnectReason) {
        let mut s = self.state.lock();
        if s.disconnect.is_none() {
            s.disconnect = Some(reason);
        }
        drop(s);
        self.ready.notify_one();
    }

    /// Refuses all further frames and drops the queued ones.
    pub fn close(&self) {
        let mut s = self.state.lock();
        s.closed = true;
        s.frames = VecDeque::new();
        s.bytes = 0;
        s.direct = false;
        s.ping = None;
    }

    /// Frames waiting to be written.
    pub fn len(&self) -> usize {
        self.state.lock().frames.len()
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connected pair on loopback: the server's end, the client's (tests of sockets in
/// outboxes and connections).
#[cfg(test)]
pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    (listener.accept().await.unwrap().0, client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn frames_come_out_in_order() {
        let o = Outbox::new(OutboxLimits::default());
        for i in 0..5u8 {
            o.try_push(Bytes::from(vec![i])).unwrap();
        }
        let d = o.take();
        assert!(!d.overflowed);
        assert_eq!(
            d.frames.iter().map(|f| f.bytes()[0]).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        assert!(o.is_empty());
    }

    #[test]
    fn byte_limit_overflows_and_stays_overflowed() {
        let o = Outbox::new(OutboxLimits {
            max_bytes: 10,
            max_frames: 100,
        });
        o.try_push(frame(6)).unwrap();
        assert_eq!(o.try_push(frame(6)), Err(PushError::Overflow));
        // Even a small frame is refused once the connection is known to be slow.
        assert_eq!(o.try_push(frame(1)), Err(PushError::Overflow));
        assert!(o.take().overflowed);
    }

    #[test]
    fn frame_limit_overflows() {
        let o = Outbox::new(OutboxLimits {
            max_bytes: 1000,
            max_frames: 2,
        });
        o.try_push(frame(1)).unwrap();
        o.try_push(frame(1)).unwrap();
        assert_eq!(o.try_push(frame(1)), Err(PushError::Overflow));
    }

    #[test]
    fn taking_frees_room() {
        let o = Outbox::new(OutboxLimits {
            max_bytes: 10,
            max_frames: 100,
        });
        o.try_push(frame(8)).unwrap();
        o.take();
        o.try_push(frame(8)).unwrap();
    }

    #[test]
    fn a_disconnect_request_comes_after_queued_frames() {
        let o = Outbox::new(OutboxLimits::default());
        o.try_push(frame(1)).unwrap();
        o.request_disconnect(DisconnectReason::ServerRestart);
        o.request_disconnect(DisconnectReason::Remote);
        let d = o.take();
        assert_eq!(d.frames.len(), 1);
        assert_eq!(d.disconnect, Some(DisconnectReason::ServerRestart));
    }

    #[test]
    fn closed_outbox_refuses() {
        let o = Outbox::new(OutboxLimits::default());
        o.try_push(frame(1)).unwrap();
        o.close();
        assert!(o.is_empty());
        assert_eq!(o.try_push(frame(1)), Err(PushError::Closed));
    }

    /// A connected pair: the server end inside an outbox, the client end.
    async fn tcp_outbox(limits: OutboxLimits) -> (Outbox, tokio::net::TcpStream) {
        let (server, client) = tcp_pair().await;
        (Outbox::new(limits).with_socket(server), client)
    }

    #[tokio::test]
    async fn a_push_with_nothing_queued_goes_straight_to_the_socket() {
        use tokio::io::AsyncReadExt;
        let (o, mut client) = tcp_outbox(OutboxLimits::default()).await;
        o.try_push(Bytes::from_static(b"one")).unwrap();
        o.try_push(Bytes::from_static(b"two")).unwrap();
        assert!(o.is_empty(), "written, not queued");
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"onetwo");
        // Once direct writes stop (a replay, a goodbye), pushes queue for the task.
        o.stop_direct_writes();
        o.try_push(Bytes::from_static(b"three")).unwrap();
        assert_eq!(o.len(), 1);
    }

    #[tokio::test]
    async fn a_pending_head_goes_first_and_in_one_write_with_the_first_frames() {
        use std::future::Future;
        use tokio::io::AsyncReadExt;
        let (o, mut client) = tcp_outbox(OutboxLimits::default()).await;
        let o = o.with_pending_head(Bytes::from_static(b"HEAD"));
        // Pushes queue behind the head instead of writing ahead of it.
        o.try_push(Bytes::from_static(b"welcome")).unwrap();
        o.try_push(Bytes::from_static(b"confirm")).unwrap();
        assert_eq!(o.len(), 3);
        let mut peeked = [std::mem::MaybeUninit::<u8>::uninit(); 16];
        let nothing = socket2::SockRef::from(&client).peek(&mut peeked);
        assert_eq!(
            nothing.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::WouldBlock),
            "nothing written yet"
        );
        // The task is woken at once (a stored permit), and its flush writes all three.
        let mut ready = std::pin::pin!(o.ready());
        let woken =
            std::future::poll_fn(|cx| std::task::Poll::Ready(ready.as_mut().poll(cx).is_ready()))
                .await;
        assert!(woken, "the task's wake-up is stored");
        assert_eq!(o.flush().unwrap(), Flushed::Empty);
        let mut got = [0u8; 18];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HEADwelcomeconfirm");
    }

    #[tokio::test]
    async fn a_busy_connections_ping_rides_with_the_next_frame_or_goes_alone_at_the_flush() {
        use tokio::io::AsyncReadExt;
        let (o, mut client) = tcp_outbox(OutboxLimits::default()).await;
        // The first ping goes at once, even after traffic (Rails' schedule from connecting).
        o.try_push(Bytes::from_static(b"welcome")).unwrap();
        o.hold_ping(Bytes::from_static(b"P0"));
        assert!(!o.holds_ping());
        let mut got = [0u8; 9];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"welcomeP0");
        // Idle since its last ping: the next goes at once too.
        o.hold_ping(Bytes::from_static(b"P1"));
        assert!(!o.holds_ping());
        let mut got = [0u8; 2];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"P1");
        // Busy: held until the next frame, which carries it in one write, ping first.
        o.try_push(Bytes::from_static(b"a")).unwrap();
        client.read_exact(&mut [0u8; 1]).await.unwrap();
        o.hold_ping(Bytes::from_static(b"P2"));
        assert!(o.holds_ping(), "held, not written");
        o.try_push(Bytes::from_static(b"data")).unwrap();
        assert!(!o.holds_ping());
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"P2data");
        // Busy, and nothing comes: the second pass sends it alone; a flush with nothing held
        // sends nothing (the next bytes are the frame pushed after it).
        o.hold_ping(Bytes::from_static(b"P3"));
        assert!(o.holds_ping());
        o.flush_ping();
        o.flush_ping();
        assert!(!o.holds_ping());
        o.try_push(Bytes::from_static(b"x")).unwrap();
        let mut got = [0u8; 3];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"P3x");
        // Before a fan-out, even an idle connection holds its ping for the fan-out's frame.
        o.hold_ping_for_fan_out(Bytes::from_static(b"Pf"));
        assert!(o.holds_ping(), "held although idle");
        o.try_push(Bytes::from_static(b"fan")).unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"Pffan");
        // Direct writes stopping queue a held ping for the task.
        o.hold_ping(Bytes::from_static(b"P4"));
        assert!(o.holds_ping());
        o.stop_direct_writes();
        assert!(!o.holds_ping());
        let queued = o.take().frames;
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].bytes().as_ref(), b"P4");
    }

    #[tokio::test]
    async fn a_full_socket_queues_in_order_and_the_flush_finishes_it() {
        use tokio::io::AsyncReadExt;
        let (o, mut client) = tcp_outbox(OutboxLimits {
            max_bytes: 64 * 1024 * 1024,
            max_frames: 100_000,
        })
        .await;
        // The client reads nothing: push until the kernel's buffers are full and frames queue.
        let frame = Bytes::from(vec![b'x'; 16 * 1024]);
        let mut pushed = 0usize;
        while o.is_empty() {
            o.try_push(frame.clone()).unwrap();
            pushed += 1;
            assert!(pushed < 10_000, "the socket never filled");
        }
        // Queued behind the full socket, in order: a marker, then more.
        o.try_push(Bytes::from_static(b"END")).unwrap();
        assert_eq!(o.flush().unwrap(), Flushed::Blocked);
        let total = pushed * frame.len() + 3;
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; total];
            client.read_exact(&mut buf).await.unwrap();
            buf
        });
        let socket_writable = || async {
            use ferrocable_websocket::SharedTcp;
            o.tcp().unwrap().writable().await.unwrap();
        };
        while o.flush().unwrap() == Flushed::Blocked {
            socket_writable().await;
        }
        let buf = reader.await.unwrap();
        assert!(buf[..total - 3].iter().all(|b| *b == b'x'));
        assert_eq!(&buf[total - 3..], b"END");
        assert!(o.is_empty());
    }

    #[tokio::test]
    async fn push_wakes_a_waiting_writer_and_permits_are_not_lost() {
        let o = std::sync::Arc::new(Outbox::new(OutboxLimits::default()));
        // Pushed before anyone waits: the stored permit must still wake the writer.
        o.try_push(frame(1)).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), o.ready())
            .await
            .unwrap();
        assert_eq!(o.take().frames.len(), 1);
        let o2 = o.clone();
        let waiter = tokio::spawn(async move {
            o2.ready().await;
            o2.take().frames.len()
        });
        tokio::task::yield_now().await;
        o.try_push(frame(1)).unwrap();
        let n = tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1);
    }
}
