//! The node's heartbeat: one `ping` frame per period for every connection, encoded once and
//! given to all, a slice of the connections per tick; ticks run at the start of the node's
//! large fan-outs (the broadcast carries the pings in the same write) or, when no fan-out comes,
//! on a timer a quarter period late.
//!
//! Why it rides on fan-outs: the pings' work was never what cost a busy node; a runtime worker
//! woken by a timer between broadcasts was. With ticks on a timer alone, the worker that runs
//! the next fan-out (the one parked on the runtime's driver) woke ~4 times per broadcast round
//! and was then switched out ~10x as often during the fan-out (33,958–38,167 involuntary
//! context switches over 30 rounds of 10,000 against 3,729–4,817 with pings off,
//! `bench/preemptions.sh`); a timer whose ticks did nothing cost as much. Here the fan-out's
//! worker is switched out ~16,000–18,000 times, and the last receiver over 30 rounds of 10,000
//! is 1.01x the C floor's against 1.11x with the timer alone. Ticks run at fan-out *ends*
//! (521dbd2) spared the single node too but slowed the 11-node fleet ~2x: a node fans out once
//! per round there, so the end of a fan-out held a whole round's pings and the flush sent them
//! all alone at the start of the next round. At a fan-out's *start* the held pings go out with
//! that very fan-out, and ticks no fan-out takes run on the timer, spread out as before
//! (docs/benchmarks.md, "The heartbeat at the start of fan-outs").
//!
//! Each slice keeps its own due time, and a fan-out to nearly every connection pings early
//! the slices that would otherwise fall to the timer before the next such fan-out: a slice a
//! fan-out pinged is due again a period after that ping, so where a node's large fan-outs come
//! up to a period and a quarter apart (the 11-node fleet's come ~3.5 s apart at Rails' 3 s),
//! the slices gather on them and stay there, as the tests below show (docs/benchmarks.md,
//! "Slices that stay on the fan-outs").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::node::Inner;
use ferrocable_protocol::ServerFrame;

/// How many slices the heartbeat cuts a period into: each tick pings the connections of one
/// slice of the registry's shards, so every connection still gets a ping every period, but a
/// node's pings go out as 16 small sweeps rather than one burst. In the 200,000-connection
/// fleet a whole-node sweep (one `send` per connection, all nodes at once) landed on some
/// broadcast rounds and not others: rounds of ~2.3 s and rounds of ~4 s (docs/benchmarks.md).
pub(crate) const HEARTBEAT_SLICES: u32 = 16;

/// A set of slices (at most 32; the heartbeat uses 16 or 2): the ones a fan-out pinged before
/// it wrote, whose held pings it sends alone once it is done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Slices(u32);

impl Slices {
    /// Whether the set is empty (the usual case: no tick was due).
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn insert(&mut self, slice: u32) {
        self.0 |= 1 << slice;
    }

    fn iter(self) -> impl Iterator<Item = u32> {
        (0..32).filter(move |s| self.0 & (1 << s) != 0)
    }
}

/// The heartbeat's schedule: when each slice is next due, and when the pings the timer held
/// for busy connections are to go alone.
///
/// A due time per slice, not one cursor over the slices in turn: a slice a fan-out pinged is
/// next due a period after *that* ping, early or late, so a node whose large fan-outs come
/// up to a period and a quarter apart keeps its slices on them and they keep riding. With one
/// cursor the schedule stays fixed: only the slices due within the quarter period before a
/// fan-out can ride it, about a fifth of them when fan-outs come ~3.5 s apart (the 11-node
/// fleet) with Rails' 3 s period. And a slice pinged early keeps its old due time, so its
/// next gap could reach 1.75 periods. The timer keeps each slice on its own schedule, a
/// period apart, so a quiet node still pings every period.
struct Heartbeat {
    slices: u32,
    period: Duration,
    /// A period over `slices`: how far apart the slices first fall due, and how soon after a
    /// late timer run the next overdue slice runs.
    tick: Duration,
    /// A quarter period: how long past due a slice waits for a fan-out before the timer pings
    /// it, how long the timer's held pings wait for a frame to carry them, and how early a
    /// large fan-out may ping a slice.
    slack: Duration,
    /// When each slice is next due.
    due: Vec<Instant>,
    /// When each slice's pings held by the timer go alone if no frame has carried them.
    flush_at: Vec<Option<Instant>>,
}

impl Heartbeat {
    fn new(period: Duration, start: Instant) -> Self {
        // Periods under 16 ms (tests) still take two slices, so a held ping's flush is always
        // some other tick's work.
        let slices = if period >= Duration::from_millis(u64::from(HEARTBEAT_SLICES)) {
            HEARTBEAT_SLICES
        } else {
            2
        };
        let tick = (period / slices).max(Duration::from_micros(100));
        Heartbeat {
            slices,
            period,
            tick,
            // A quarter period (a broadcast round of pair.py is ~0.6 s, Rails' period 3 s).
            // With pings held a quarter period after running a quarter period late, a
            // connection's pings are at most 1.5 periods apart (4.5 s at Rails' 3 s; its
            // client reconnects after 6 s).
            slack: tick * (slices / 4).max(1),
            due: (1..=slices).map(|k| start + tick * k).collect(),
            flush_at: vec![None; slices as usize],
        }
    }

    /// When the first slice falls due.
    fn next_due(&self) -> Instant {
        self.due.iter().copied().min().unwrap_or_else(Instant::now)
    }

    /// When the timer next has work: a slice a slack past due, or held pings to send alone.
    fn deadline(&self) -> Instant {
        let ping = self.next_due() + self.slack;
        self.flush_at
            .iter()
            .flatten()
            .fold(ping, |at, &f| at.min(f))
    }

    /// Pings every connection of `slice` with `frame`: held for the fan-out about to write
    /// ([`crate::outbox::Outbox::hold_ping_for_fan_out`]), or by the timer
    /// ([`crate::outbox::Outbox::hold_ping`], held only by busy connections).
    fn ping(node: &Inner, slices: u32, slice: u32, frame: &bytes::Bytes, for_fan_out: bool) {
        node.connections.for_each_in_slice(slice, slices, |outbox| {
            if for_fan_out {
                outbox.hold_ping_for_fan_out(frame.clone());
            } else {
                outbox.hold_ping(frame.clone());
            }
        });
        if slice == 0 {
            node.sweep_presence();
        }
    }

    /// A fan-out's ticks: pings every slice due by `upto` (at or after `now`: a large fan-out
    /// may ping a slice early), each next due a period from `now`. Returns the slices pinged
    /// and those whose timer-held pings are past their slack, all to [`flush`] once the
    /// fan-out has written.
    ///
    /// However late: a slice more than a period behind (a stalled node) is pinged once, and
    /// due again a period on.
    fn run_for_fan_out(&mut self, node: &Inner, upto: Instant, now: Instant) -> Ran {
        let mut ran = Ran::default();
        let frame = ping_frame();
        for slice in 0..self.slices {
            let k = slice as usize;
            if self.due[k] <= upto {
                Heartbeat::ping(node, self.slices, slice, &frame, true);
                self.due[k] = now + self.period;
                self.flush_at[k] = None;
                ran.pinged.insert(slice);
            }
        }
        ran.expired = self.take_expired(now);
        ran
    }

    /// The timer's tick: pings the slices longest overdue, if they are a slack past due, and
    /// takes the held pings past their slack. Returns what it did; the caller [`flush`]es
    /// `expired`.
    ///
    /// The slices longest overdue are those due at the earliest due time: one slice, or the
    /// slices a fan-out pinged together (all due a period after it) when no fan-out came to
    /// take them. Released one per tick instead, the last of 16 would go a period late (a gap
    /// of 2.75 periods: 8.3 s at Rails' 3 s, past its client's 6 s).
    ///
    /// One due time per wake, however late the timer woke: the other overdue slices move on
    /// by the delay instead (as a `tokio::time::interval` with `MissedTickBehavior::Delay`,
    /// which the heartbeat was before). A node so busy that its timer runs late pings less
    /// often rather than catching up in bursts: catching up doubled the 11-node fleet's median
    /// round (18.3 and 20.6 s against 9.5 s, `bench/fleet.sh`, docs/benchmarks.md).
    fn run_late(&mut self, node: &Inner, now: Instant) -> Ran {
        let mut ran = Ran::default();
        let oldest = self.next_due();
        if let Some(upto) = now.checked_sub(self.slack).filter(|&upto| oldest <= upto) {
            let delay = upto - oldest;
            let next = upto + self.tick;
            let frame = ping_frame();
            for slice in 0..self.slices {
                let k = slice as usize;
                if self.due[k] == oldest {
                    Heartbeat::ping(node, self.slices, slice, &frame, false);
                    self.flush_at[k] = Some(now + self.slack);
                    self.due[k] = upto + self.period;
                    ran.pinged.insert(slice);
                } else if self.due[k] < next {
                    self.due[k] = (self.due[k] + delay).max(next);
                }
            }
        }
        ran.expired = self.take_expired(now);
        ran
    }

    /// The slices whose timer-held pings are past their slack at `now`, no longer held. A
    /// slice pinged at `now` is never among them: a fan-out's ping holds nothing for later,
    /// and the timer's is held until a slack after `now`.
    fn take_expired(&mut self, now: Instant) -> Slices {
        let mut expired = Slices::default();
        for (slice, at) in (0..self.slices).zip(self.flush_at.iter_mut()) {
            if at.is_some_and(|at| at <= now) {
                *at = None;
                expired.insert(slice);
            }
        }
        expired
    }
}

/// The ping frame, encoded once for every connection a run of ticks pings.
fn ping_frame() -> bytes::Bytes {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ferrocable_websocket::frame::text(&ServerFrame::Ping { at }.encode())
}

/// What a run of ticks did: the slices it pinged, and those whose held pings ran out of
/// slack.
#[derive(Debug, Default, Clone, Copy)]
struct Ran {
    pinged: Slices,
    expired: Slices,
}

/// Sends alone the pings held in `slices` that no frame carried.
pub(crate) fn flush(node: &Inner, slices: Slices) {
    let of = node.heartbeat.slices();
    for slice in slices.iter() {
        node.connections
            .for_each_in_slice(slice, of, |outbox| outbox.flush_ping());
    }
}

/// The heartbeat, shared by its timer task and the node's fan-outs.
pub(crate) struct HeartbeatClock {
    heartbeat: Mutex<Heartbeat>,
    slices: u32,
    /// When the first slice falls due, in microseconds since `origin`: what every fan-out
    /// reads (one atomic load) to see whether it has a tick to run.
    next_due: AtomicU64,
    /// When the last fan-out to (nearly) every connection ran, in microseconds since
    /// `origin` (0: none yet): the gap to the next one says which slices to ping early.
    last_whole_fan_out: AtomicU64,
    origin: Instant,
    slack: Duration,
    /// Tells the timer task that a fan-out ran the due ticks, so it sleeps to the new deadline
    /// instead of waking at the old one.
    rearm: tokio::sync::Notify,
}

impl HeartbeatClock {
    pub(crate) fn new(period: Duration) -> Self {
        let origin = Instant::now();
        let heartbeat = Heartbeat::new(period, origin);
        HeartbeatClock {
            next_due: AtomicU64::new(micros(heartbeat.next_due() - origin)),
            last_whole_fan_out: AtomicU64::new(0),
            slices: heartbeat.slices,
            slack: heartbeat.slack,
            heartbeat: Mutex::new(heartbeat),
            origin,
            rearm: tokio::sync::Notify::new(),
        }
    }

    /// How many slices a period has.
    pub(crate) fn slices(&self) -> u32 {
        self.slices
    }

    /// How early a fan-out may ping a slice: a quarter period.
    pub(crate) fn slack(&self) -> Duration {
        self.slack
    }

    /// Whether a slice is due at `at`: one atomic load.
    pub(crate) fn is_due(&self, at: Instant) -> bool {
        micros(at.saturating_duration_since(self.origin)) >= self.next_due.load(Ordering::Acquire)
    }

    /// A fan-out to (nearly) every connection of the node is about to write at `now`: how
    /// early it pings slices. A slice falls to the timer a slack past due; one due before the
    /// next such fan-out less the slack would go alone, so this one pings it early, at most a
    /// slack early. The next fan-out is guessed a gap like the last one away. Fan-outs closer
    /// together than the slack ping nothing early (pair.py's rounds, ~0.6 s apart).
    pub(crate) fn early_for_whole_fan_out(&self, now: Instant) -> Duration {
        let at = micros(now.saturating_duration_since(self.origin));
        let last = self.last_whole_fan_out.load(Ordering::Acquire);
        if last == 0 || last >= at {
            return Duration::ZERO;
        }
        let gap = Duration::from_micros(at - last);
        gap.saturating_sub(self.slack).min(self.slack)
    }

    /// A fan-out that began at `now` reached `reached` of the node's `connections`: if that is
    /// nearly all of them, the next such fan-out measures its gap from this one.
    ///
    /// Every fan-out reports here, not only those that had a slice due: counted only when a
    /// slice was due, the gap after slices gathered on one fan-out spanned every fan-out in
    /// between, and frequent fan-outs pinged them a quarter period early each period (pings
    /// 1.2 s apart at a 1.6 s period in the test below).
    pub(crate) fn fan_out_done(&self, now: Instant, reached: i64, connections: i64) {
        if reaches_nearly_all(reached, connections) {
            let at = micros(now.saturating_duration_since(self.origin)).max(1);
            self.last_whole_fan_out.store(at, Ordering::Release);
        }
    }

    /// A fan-out's turn, before it writes: pings the slices due by `upto` (`now`, or later for
    /// a fan-out to nearly every connection), unless the timer or another fan-out holds the
    /// schedule (a fan-out never waits for the heartbeat). The slices to [`flush`] once the
    /// fan-out is done.
    ///
    /// Every due slice, however late: unlike the timer (one slice per wake), a fan-out catches
    /// up, so a node whose timer runs late still pings each connection about once a period as
    /// long as it fans out. In the overloaded 11-node fleet that is ~2x the pings of the
    /// timer-only heartbeat, whose lag left 70,000–81,000 connections a round over
    /// @rails/actioncable's 6 s stale threshold against 4,500–21,000 here
    /// (docs/benchmarks.md, "what the fleet's pings cost").
    pub(crate) fn ride(&self, node: &Inner, upto: Instant, now: Instant) -> Slices {
        let Some(mut heartbeat) = self.heartbeat.try_lock() else {
            return Slices::default();
        };
        let ran = heartbeat.run_for_fan_out(node, upto, now);
        self.store_next_due(&heartbeat);
        drop(heartbeat);
        if ran.pinged.is_empty() && ran.expired.is_empty() {
            return Slices::default();
        }
        self.rearm.notify_one();
        Slices(ran.pinged.0 | ran.expired.0)
    }

    /// When the timer next has work (see [`Heartbeat::deadline`]).
    fn deadline(&self) -> Instant {
        self.heartbeat.lock().deadline()
    }

    /// The timer's turn: the tick a slack past due, and the held pings whose slack is over
    /// sent alone (the ones pinged now stay held). The lock is held by the tick only, never
    /// across an await.
    fn run_late(&self, node: &Inner, now: Instant) {
        let mut heartbeat = self.heartbeat.lock();
        let ran = heartbeat.run_late(node, now);
        self.store_next_due(&heartbeat);
        drop(heartbeat);
        flush(node, ran.expired);
    }

    fn store_next_due(&self, heartbeat: &Heartbeat) {
        let due = micros(heartbeat.next_due().saturating_duration_since(self.origin));
        self.next_due.store(due, Ordering::Release);
    }
}

/// Whether a fan-out to `reached` of a node's `connections` reaches nearly all of them (three
/// in four): one that may ping slices early.
pub(crate) fn reaches_nearly_all(reached: i64, connections: i64) -> bool {
    reached > 0 && reached.saturating_mul(4) >= connections.saturating_mul(3)
}

/// Whole microseconds in `d`, saturating (584,000 years).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The heartbeat's timer, as a task on the runtime's workers: it runs the ticks no fan-out
/// took within their slack ([`HeartbeatClock`]), so a quiet node still pings every period.
///
/// Why a task and not a thread of its own: on its own thread (c7317db) a single node's last
/// receiver with pings on went from 1.25x to 1.01x the C floor's at 10,000, but in the fleet
/// (11 nodes, 200,000 connections, Redis, `bench/fleet.sh`) the median round went from
/// ~2.2 s to 3.1–3.5 s: ticks running beside every node's fan-outs on two saturated cores.
/// SCHED_BATCH or nice 19 for that thread did not help either (docs/benchmarks.md).
pub(crate) async fn heartbeat_task(
    node: std::sync::Weak<Inner>,
    clock: Arc<HeartbeatClock>,
    shutdown: CancellationToken,
) {
    loop {
        let deadline = clock.deadline();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // A fan-out ran the due ticks: sleep to the new deadline.
            _ = clock.rearm.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {
                let Some(node) = node.upgrade() else { return };
                clock.run_late(&node, Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::node::{Node, NodeConfig};
    use crate::outbox::{Outbox, OutboxLimits};
    use ferrocable_protocol::Identifier;

    /// A node with a 1.6 s period (16 ticks of 100 ms, 400 ms of slack) and 64 connections
    /// (ids 0..64) whose outboxes are in `outboxes`; `subscribed` of them listen to "room".
    fn node_with(outboxes: &[Arc<Outbox>], subscribed: impl Fn(u64) -> bool) -> Node {
        let config = NodeConfig {
            ping_interval: Duration::from_millis(1600),
            ..NodeConfig::default()
        };
        let node = Node::builder().config(config).build();
        let id = Identifier::new(r#"{"channel":"Room"}"#);
        for (conn, outbox) in (0u64..).zip(outboxes) {
            node.inner.connections.insert(conn, outbox.clone());
            node.inner.metrics.connections.inc();
            if subscribed(conn) {
                node.inner.hub.attach("room", conn, &id, outbox);
            }
        }
        node
    }

    /// A node as [`node_with`] over 64 outboxes without sockets, and the paused clock's start.
    fn queued_node(subscribed: impl Fn(u64) -> bool) -> (Vec<Arc<Outbox>>, Instant, Node) {
        let outboxes = queued_outboxes();
        let start = Instant::now();
        let node = node_with(&outboxes, subscribed);
        (outboxes, start, node)
    }

    /// No connection pinged.
    const NONE: Vec<usize> = Vec::new();

    /// A node whose own heartbeat waits an hour, with `outboxes` as its connections: only a
    /// heartbeat made by the test pings.
    fn node_with_an_hours_period(outboxes: &[Arc<Outbox>]) -> Node {
        let config = NodeConfig {
            ping_interval: Duration::from_secs(3600),
            ..NodeConfig::default()
        };
        let node = Node::builder().config(config).build();
        for (conn, outbox) in (1u64..).zip(outboxes) {
            node.inner.connections.insert(conn, outbox.clone());
        }
        node
    }

    /// A heartbeat schedule of the test's own (a 1.6 s period from now) over a node of 64
    /// queued outboxes whose own heartbeat waits an hour.
    fn a_heartbeat_of_its_own() -> (Vec<Arc<Outbox>>, Node, Instant, Heartbeat) {
        let outboxes = queued_outboxes();
        let node = node_with_an_hours_period(&outboxes);
        let start = Instant::now();
        let heartbeat = Heartbeat::new(Duration::from_millis(1600), start);
        (outboxes, node, start, heartbeat)
    }

    /// 64 outboxes without sockets: pings and frames queue.
    fn queued_outboxes() -> Vec<Arc<Outbox>> {
        (0..64)
            .map(|_| Arc::new(Outbox::new(OutboxLimits::default())))
            .collect()
    }

    /// 64 outboxes writing to loopback sockets, and the client ends (blocking, so what a
    /// direct write sent is there to read at once).
    fn socket_outboxes() -> (Vec<Arc<Outbox>>, Vec<std::net::TcpStream>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        (0..64)
            .map(|_| {
                let client = std::net::TcpStream::connect(addr).expect("connect");
                let (server, _) = listener.accept().expect("accept");
                server.set_nonblocking(true).expect("nonblocking");
                let server = tokio::net::TcpStream::from_std(server).expect("register");
                let outbox = Outbox::new(OutboxLimits::default()).with_socket(server);
                (Arc::new(outbox), client)
            })
            .unzip()
    }

    /// Everything a client end has received so far, as text.
    fn received(client: &mut std::net::TcpStream) -> String {
        client.set_nonblocking(true).expect("nonblocking");
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match client.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    }

    /// The connections of `slice` (of 16), by id.
    fn slice_of(node: &Node, outboxes: &[Arc<Outbox>], slice: u32) -> Vec<usize> {
        let mut ids = Vec::new();
        node.inner
            .connections
            .for_each_in_slice(slice, HEARTBEAT_SLICES, |o| {
                ids.extend(outboxes.iter().position(|x| Arc::ptr_eq(x, o)));
            });
        ids.sort_unstable();
        ids
    }

    /// The frames queued on `outbox` since the last call, as text (and empties it).
    fn taken_texts(outbox: &Outbox) -> Vec<String> {
        let frames = outbox.take().frames;
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(f.bytes()).into_owned())
            .collect()
    }

    /// Which of `outboxes` got a frame since the last call (and empties them).
    fn pinged(outboxes: &[Arc<Outbox>]) -> Vec<usize> {
        (0..outboxes.len())
            .filter(|&i| !outboxes[i].take().frames.is_empty())
            .collect()
    }

    /// Lets the heartbeat task run (the runtime is the test's own, current-thread).
    async fn let_tasks_run() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// Moves the paused clock to `at` past `start`, letting the heartbeat task run.
    async fn advance_to(start: Instant, at: u64) {
        let to = start + Duration::from_millis(at);
        tokio::time::advance(to.saturating_duration_since(Instant::now())).await;
        let_tasks_run().await;
    }

    /// Like [`advance_to`], 10 ms at a time, so the timer wakes on time all along.
    async fn step_to(start: Instant, at: u64) {
        while Instant::now() < start + Duration::from_millis(at) {
            let next =
                (start + Duration::from_millis(at)).min(Instant::now() + Duration::from_millis(10));
            tokio::time::advance(next - Instant::now()).await;
            let_tasks_run().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tick_due_before_a_large_fan_out_runs_at_its_start_and_the_timer_sleeps_on() {
        let (outboxes, start, node) = queued_node(|_| true);
        // The first tick is due at 100 ms; the timer would run it at 500 ms.
        advance_to(start, 150).await;
        assert_eq!(pinged(&outboxes), NONE, "no tick before 500 ms");
        node.broadcast("room", r#""news""#).expect("valid JSON");
        let slice0 = slice_of(&node, &outboxes, 0);
        assert!(!slice0.is_empty());
        for (i, outbox) in outboxes.iter().enumerate() {
            let texts = taken_texts(outbox);
            if slice0.contains(&i) {
                assert_eq!(texts.len(), 2, "ping and news for {i}: {texts:?}");
                assert!(
                    texts[0].contains(r#""type":"ping""#),
                    "ping first: {texts:?}"
                );
                assert!(texts[1].contains("news"), "{texts:?}");
            } else {
                assert_eq!(texts.len(), 1, "news only for {i}: {texts:?}");
                assert!(texts[0].contains("news"), "{texts:?}");
            }
        }
        // Past the old deadline (500 ms) but before the new one (the next tick is due at
        // 200 ms, run by the timer at 600 ms): the timer was re-armed and stays asleep.
        advance_to(start, 590).await;
        assert_eq!(pinged(&outboxes), NONE, "the timer slept on");
        // Quiet since: at 600 ms the timer runs the tick due at 200 ms, one slice.
        advance_to(start, 601).await;
        assert_eq!(pinged(&outboxes), slice_of(&node, &outboxes, 1));
        node.inner.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_fan_out_leaves_the_tick_to_the_timer() {
        // Two listeners of 64 connections: less than a slice's worth (4).
        let (outboxes, start, node) = queued_node(|conn| conn < 2);
        advance_to(start, 150).await;
        node.broadcast("room", r#""reply""#).expect("valid JSON");
        assert_eq!(pinged(&outboxes), vec![0, 1], "the reply only, no tick");
        advance_to(start, 499).await;
        assert_eq!(pinged(&outboxes), NONE);
        advance_to(start, 501).await;
        assert_eq!(pinged(&outboxes), slice_of(&node, &outboxes, 0));
        node.inner.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_nodes_ticks_run_on_the_timer_a_quarter_period_late_one_slice_each() {
        let (outboxes, start, node) = queued_node(|_| true);
        advance_to(start, 499).await;
        assert_eq!(pinged(&outboxes), NONE, "due at 100 ms, slack to 500");
        for slice in 0..HEARTBEAT_SLICES {
            advance_to(start, 501 + 100 * u64::from(slice)).await;
            assert_eq!(
                pinged(&outboxes),
                slice_of(&node, &outboxes, slice),
                "slice {slice}"
            );
        }
        node.inner.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_woken_late_runs_one_tick_and_moves_the_schedule_on() {
        let (outboxes, start, node) = queued_node(|_| true);
        // Fifteen ticks are past their slack at 2 s; the timer wakes once, late.
        advance_to(start, 2000).await;
        assert_eq!(pinged(&outboxes), slice_of(&node, &outboxes, 0), "one tick");
        // The next is due a tick after 1,600 ms (2 s less the slack): run at 2,100 ms.
        advance_to(start, 2099).await;
        assert_eq!(pinged(&outboxes), NONE);
        advance_to(start, 2101).await;
        assert_eq!(pinged(&outboxes), slice_of(&node, &outboxes, 1));
        node.inner.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_ping_rides_the_fan_out_and_one_it_did_not_carry_goes_alone_after_it() {
        let (outboxes, mut clients) = socket_outboxes();
        let start = Instant::now();
        // Every fourth connection does not listen to the room.
        let node = node_with(&outboxes, |conn| conn % 4 != 3);
        // A first period on the timer: every connection gets its first ping, at once.
        step_to(start, 2050).await;
        for client in &mut clients {
            assert_eq!(received(client).matches(r#""type":"ping""#).count(), 1);
        }
        // Traffic since for slice 0 only: busy, so the timer holds its next ping. The other
        // slices are idle: the timer would send theirs at once, a fan-out holds them too.
        let slice0 = slice_of(&node, &outboxes, 0);
        for &i in &slice0 {
            outboxes[i]
                .try_push(bytes::Bytes::from_static(b"busy"))
                .expect("pushed");
            assert_eq!(received(&mut clients[i]), "busy");
        }
        // At 2,150 ms the timer has run slice 0's second tick (due at 1,700 ms; held), and
        // those of slices 1–4 (due at 1,800–2,100 ms) wait for it: the fan-out takes them.
        step_to(start, 2150).await;
        let ridden: Vec<usize> = (0..5).flat_map(|s| slice_of(&node, &outboxes, s)).collect();
        assert!(
            slice0.iter().all(|&i| outboxes[i].holds_ping()),
            "held by the timer"
        );
        let room = r#"{"news":1}"#;
        let raw: &serde_json::value::RawValue = serde_json::from_str(room).expect("JSON");
        node.inner.fan_out_carrying_pings("room", || {
            for &i in &ridden {
                assert!(
                    outboxes[i].holds_ping(),
                    "held before the fan-out wrote: {i}"
                );
            }
            node.inner.hub.broadcast("room", raw, None)
        });
        for (i, client) in clients.iter_mut().enumerate() {
            let got = received(client);
            let (ping, news) = (got.find(r#""type":"ping""#), got.find(r#""news""#));
            let listens = i % 4 != 3;
            let in_a_ridden_slice = ridden.contains(&i);
            let held_by_the_timer = slice0.contains(&i);
            match (listens, in_a_ridden_slice) {
                // Carried: the ping first, in the fan-out's write.
                (true, true) => assert!(ping.is_some() && ping < news, "{i}: {got}"),
                // The timer's held ping waits out its slack (to 2,500 ms) for a frame.
                (false, true) if held_by_the_timer => {
                    assert_eq!(got, "", "{i}");
                    assert!(outboxes[i].holds_ping(), "still held: {i}");
                    continue;
                }
                // Pinged for the fan-out but not reached by it: sent alone once it was done.
                (false, true) => assert!(ping.is_some() && news.is_none(), "{i}: {got}"),
                (true, false) => assert!(ping.is_none() && news.is_some(), "{i}: {got}"),
                (false, false) => assert_eq!(got, "", "{i}"),
            }
            assert!(!outboxes[i].holds_ping(), "nothing left held: {i}");
        }
        // At 2,500 ms the timer sends alone the held pings no frame carried.
        step_to(start, 2510).await;
        for (i, client) in clients.iter_mut().enumerate() {
            let got = received(client);
            let expected = usize::from(slice0.contains(&i) && i % 4 == 3);
            assert_eq!(
                got.matches(r#""type":"ping""#).count(),
                expected,
                "{i}: {got}"
            );
            assert!(!outboxes[i].holds_ping(), "nothing left held: {i}");
        }
        node.inner.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_more_than_a_period_behind_pings_everyone_once_and_starts_afresh() {
        let (outboxes, node, start, mut heartbeat) = a_heartbeat_of_its_own();
        let now = start + Duration::from_secs(10);
        let ran = heartbeat.run_for_fan_out(&node.inner, now, now);
        let frames: Vec<usize> = outboxes.iter().map(|o| o.take().frames.len()).collect();
        assert!(frames.iter().all(|&n| n == 1), "one ping each: {frames:?}");
        assert_eq!(ran.pinged.iter().count(), 16);
        let period_on = now + Duration::from_millis(1600);
        assert!(heartbeat.due.iter().all(|&due| due == period_on));
        node.inner.shutdown.cancel();
    }

    /// Moves the clock to `at` ms past `start` and broadcasts "room" to every connection of
    /// `node`: the connections pinged alone since the last call, and those whose ping the
    /// broadcast carried (the ping first in their frames).
    async fn broadcast_at(
        node: &Node,
        outboxes: &[Arc<Outbox>],
        start: Instant,
        at: u64,
    ) -> (Vec<usize>, Vec<usize>) {
        step_to(start, at).await;
        let alone = pinged(outboxes);
        node.broadcast("room", r#""news""#).expect("valid JSON");
        let mut carried = Vec::new();
        for (i, outbox) in outboxes.iter().enumerate() {
            let texts = taken_texts(outbox);
            assert!(
                texts.last().is_some_and(|t| t.contains("news")),
                "{i}: {texts:?}"
            );
            match texts.len() {
                1 => {}
                2 if texts[0].contains(r#""type":"ping""#) => carried.push(i),
                _ => panic!("{i}: {texts:?}"),
            }
        }
        (alone, carried)
    }

    #[tokio::test(start_paused = true)]
    async fn fan_outs_to_everyone_about_a_period_apart_carry_every_ping_and_the_timer_sends_none() {
        // A period of 1.6 s and broadcasts 1.9 s apart (as the fleet's ~3.5 s rounds against
        // Rails' 3 s): pinging early gathers the slices on the broadcasts, where they stay.
        let (outboxes, start, node) = queued_node(|_| true);
        let everyone: Vec<usize> = (0..64).collect();
        let mut carried_per_round = Vec::new();
        for round in 0..10 {
            let at = 50 + 1900 * round;
            let (alone, carried) = broadcast_at(&node, &outboxes, start, at).await;
            carried_per_round.push(carried.len());
            if round >= 5 {
                assert_eq!(alone, NONE, "round {round}: no ping alone since the last");
                assert_eq!(carried, everyone, "round {round}: every ping carried");
            }
        }
        // The first broadcast has no gap to go by; the slices then gather on the broadcasts.
        assert_eq!(carried_per_round[..5], [0, 32, 44, 56, 64]);
        node.inner.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn pings_stay_within_a_period_and_a_half_whatever_the_fan_outs_gaps() {
        // A period of 1.6 s; broadcasts to everyone at uneven gaps, some a few ticks apart,
        // some longer than a period and a quarter (the timer's turn).
        let (outboxes, start, node) = queued_node(|_| true);
        let gaps = [
            300, 2500, 1900, 700, 3100, 1750, 150, 1200, 2200, 1650, 40, 2900,
        ];
        let mut fan_outs = Vec::new();
        let mut at = 0;
        for round in 0..3 {
            for gap in gaps {
                at += gap + 7 * round;
                fan_outs.push(at);
            }
        }
        let mut last_ping = [0u64; 64];
        let mut widest = 0;
        let mut pings = 0;
        let mut now = 0;
        for fan_out in fan_outs {
            while now < fan_out {
                now = (now + 10).min(fan_out);
                advance_to(start, now).await;
                if now == fan_out {
                    node.broadcast("room", r#""news""#).expect("valid JSON");
                }
                for (i, outbox) in outboxes.iter().enumerate() {
                    let frames = outbox.take().frames;
                    if frames
                        .iter()
                        .any(|f| f.bytes().windows(13).any(|w| w == br#""type":"ping""#))
                    {
                        widest = widest.max(now - last_ping[i]);
                        last_ping[i] = now;
                        pings += 1;
                    }
                }
            }
        }
        assert!(pings >= 64 * (now / 2400), "{pings} pings in {now} ms");
        assert!(widest <= 2400, "a gap of {widest} ms between two pings");
        node.inner.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn fan_outs_closer_than_a_quarter_period_ping_nothing_early() {
        let (outboxes, start, node) = queued_node(|_| true);
        // 200 ms apart (slack 400 ms): at 250 ms, slices 0 and 1 (due at 100 and 200 ms) ride,
        // not slice 2 (due at 300 ms).
        assert_eq!(
            broadcast_at(&node, &outboxes, start, 50).await,
            (NONE, NONE)
        );
        let (alone, carried) = broadcast_at(&node, &outboxes, start, 250).await;
        assert_eq!(alone, NONE);
        let mut due: Vec<usize> = (0..2).flat_map(|s| slice_of(&node, &outboxes, s)).collect();
        due.sort_unstable();
        assert_eq!(carried, due);
        node.inner.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn slices_gathered_on_one_fan_out_are_not_pinged_early_once_fan_outs_come_often() {
        // A period of 1.6 s (slack 400 ms). Broadcasts 1.9 s apart gather every slice on
        // them; then broadcasts come every 200 ms. Only a fan-out with a slice due within the
        // slack looks at the heartbeat, but the gap that says how early to ping is the one
        // since the last fan-out to everyone, 200 ms: no ping comes early, so none comes
        // less than a period after the last.
        let (outboxes, start, node) = queued_node(|_| true);
        let mut last_ping = [None::<u64>; 64];
        let mut closest = u64::MAX;
        let mut at = 50;
        while at <= 9550 + 8000 {
            let (alone, carried) = broadcast_at(&node, &outboxes, start, at).await;
            for i in alone.into_iter().chain(carried) {
                if at > 9550
                    && let Some(last) = last_ping[i]
                {
                    closest = closest.min(at - last);
                }
                last_ping[i] = Some(at);
            }
            at += if at < 9550 { 1900 } else { 200 };
        }
        assert!(closest < u64::MAX, "no connection pinged twice");
        assert!(
            closest >= 1600,
            "two pings {closest} ms apart, under the 1.6 s period"
        );
        node.inner.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slice_pinged_early_is_next_due_a_period_after_that_ping() {
        let (_outboxes, node, start, mut heartbeat) = a_heartbeat_of_its_own();
        let ms = |n: u64| start + Duration::from_millis(n);
        // At 150 ms with 300 ms early: slices 0–3 (due at 100–400 ms), 4 (500 ms) not.
        let ran = heartbeat.run_for_fan_out(&node.inner, ms(450), ms(150));
        assert_eq!(ran.pinged.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert!(heartbeat.due[..4].iter().all(|&d| d == ms(1750)));
        assert_eq!(heartbeat.due[4], ms(500));
        // The timer keeps a late slice on its own schedule: slice 4 (due at 500 ms) run at
        // 900 ms is next due at 2,100 ms.
        let ran = heartbeat.run_late(&node.inner, ms(900));
        assert_eq!(ran.pinged.iter().collect::<Vec<_>>(), vec![4]);
        assert_eq!(heartbeat.due[4], ms(2100));
        node.inner.shutdown.cancel();
    }

    #[tokio::test]
    async fn the_heartbeat_task_pings_and_ends_with_its_token() {
        let outbox = Arc::new(Outbox::new(OutboxLimits::default()));
        let node = node_with_an_hours_period(std::slice::from_ref(&outbox));
        let token = CancellationToken::new();
        let task = tokio::spawn(heartbeat_task(
            Arc::downgrade(&node.inner),
            Arc::new(HeartbeatClock::new(Duration::from_millis(20))),
            token.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(5), outbox.ready())
            .await
            .expect("a ping from the task within 5 s");
        let frames = outbox.take().frames;
        let text = std::str::from_utf8(&frames[0].bytes()[2..]).expect("a text frame");
        assert!(text.starts_with(r#"{"type":"ping","message":"#), "{text}");
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends once its token is cancelled")
            .expect("the task did not panic");
        node.inner.shutdown.cancel();
    }
}
