//! Overload control by QUIC stream credit.
//!
//! A request is one stream, and a terminal may open a new stream only
//! while it holds stream credit from the server (QUIC flow control,
//! `MAX_STREAMS`). When the server is short of CPU, requests wait where
//! nothing counts them (the UDP receive queue, the endpoint's packet
//! queue) and answering them OVERLOADED would cost as much as answering
//! them. So the server grants less credit instead: past its credit a
//! terminal cannot send a request at all, and learns so at once, without
//! costing the server anything.
//!
//! [`Credit`] watches two things: how late the runtime wakes a timer (its
//! scheduling lag: ready work waiting for a worker), and the bytes waiting
//! in the server's UDP receive queues (requests sent on credit granted
//! before, which no task has seen yet: where a flood's backlog sits while
//! the runtime itself keeps up; the kernel's own count, so no terminal can
//! raise it but by sending). It sets the credit per connection by
//! additive-increase, multiplicative-decrease: cut to three quarters
//! ([`KEEP_ON_CUT`]) while either stays above its high mark
//! ([`HIGH_LAG`], [`HIGH_QUEUED`]), and while both are below their low
//! marks ([`LOW_LAG`], [`LOW_QUEUED`]) grown every
//! [`GROW_EVERY`]: by an eighth of a stream ([`PROBE_STEP`]) within
//! [`RECOVER_AFTER`] of the last cut, where the server is still near its
//! limit, by a quarter after that, to return to full credit within
//! seconds once an overload is over.
//!
//! The credit is kept in sixteenths of a stream and each connection rounds
//! it with its own offset ([`Credit::dither`]): at 2.25 a quarter of the
//! connections may have 3 requests open and the rest 2. With hundreds of
//! connections one whole stream each is hundreds of requests, milliseconds
//! of work in the queue; the fractions let the credit settle between whole
//! numbers instead of swinging past the point where the queue builds.
//!
//! A heavy connection holds the lower of that and its own credit, which
//! starts at [`START_CREDIT`] and grows only as the terminal uses it
//! ([`own_credit`]), and at least [`LEAST_CREDIT`]; a light one (asking
//! little: [`Credit::accepted`]) holds its own credit alone, since it has
//! one request open at most and cutting its credit would shed nothing
//! ([`Credit::for_stream`]). While no connection is heavy the receive
//! queues are not read. Connections apply the current credit when they
//! accept their next stream (credit already granted cannot be taken back;
//! a lower limit stops new credit until the terminal's open streams fall
//! under it).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

/// How often the lag is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Lag above which the credit is cut.
pub const HIGH_LAG: Duration = Duration::from_millis(3);
/// Lag below which the credit may grow.
pub const LOW_LAG: Duration = Duration::from_millis(1);
/// Quarters of the credit a cut keeps: three, as TCP's CUBIC keeps 0.7 of
/// its window. Halving swung the credit further below the point where the
/// queue builds and cost a fifth of the goodput under a flood
/// (BENCHMARKS.md, "Overload").
pub const KEEP_ON_CUT: u32 = 3;
/// The least time between two cuts (the last one must show first).
pub const SHRINK_EVERY: Duration = Duration::from_millis(50);
/// How often the credit grows while the lag stays low.
pub const GROW_EVERY: Duration = Duration::from_millis(100);
/// How long after a cut the credit grows by [`PROBE_STEP`] only.
pub const RECOVER_AFTER: Duration = Duration::from_secs(3);
/// Sixteenths of a stream the credit is kept in.
pub const PARTS: u32 = 16;
/// What the credit grows by each [`GROW_EVERY`] within [`RECOVER_AFTER`]
/// of a cut, in [`PARTS`]: an eighth of a stream.
pub const PROBE_STEP: u32 = 2;
/// Bytes queued in the receive queues above which the credit is cut
/// (the kernel counts each datagram's buffer, about 1-2 KiB for a
/// request: a few hundred requests, a few milliseconds of work).
pub const HIGH_QUEUED: u64 = 256 << 10;
/// Bytes queued below which the credit may grow.
pub const LOW_QUEUED: u64 = 64 << 10;
/// The credit a connection starts with (its handshake grants it); it
/// doubles each time the terminal uses all of it, up to the server's
/// credit. Credit granted cannot be taken back, so a terminal that has
/// never needed more cannot pile up more than this the moment a flood
/// begins.
pub const START_CREDIT: u32 = 8;
/// The credit every heavy connection keeps, however far the server's
/// falls: a request may still be open while the answer to the one before
/// waits for the terminal's acknowledgement.
pub const LEAST_CREDIT: u32 = 2;
/// Streams a connection may accept in one period ([`GROW_EVERY`]) and
/// still count as light whatever the mean over connections: forty
/// requests a second, far more than a reception terminal asks (and
/// enough that terminals asking a few a second at random are not taken
/// for heavy by chance).
pub const ALWAYS_LIGHT: u32 = 4;
/// How often the receive queues are read (`/proc/net/udp`, `udp6`).
pub const QUEUE_PROBE_EVERY: Duration = Duration::from_millis(20);

/// When the credit is cut and when it may grow again: above `high_*`
/// (either) the server is behind, below both `low_*` it keeps up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Scheduling lag above which the credit is cut.
    pub high_lag: Duration,
    /// Lag below which it may grow.
    pub low_lag: Duration,
    /// Receive-queue bytes above which it is cut.
    pub high_queued: u64,
    /// Bytes below which it may grow.
    pub low_queued: u64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            high_lag: HIGH_LAG,
            low_lag: LOW_LAG,
            high_queued: HIGH_QUEUED,
            low_queued: LOW_QUEUED,
        }
    }
}

impl Thresholds {
    /// The thresholds for a configured lag and queue size (the `[server]`
    /// keys `shed_lag_ms` and `shed_queue_kib`): growing again once the lag
    /// is under a third and the queue under a quarter of them, as the
    /// defaults do.
    pub fn new(high_lag: Duration, high_queued: u64) -> Thresholds {
        Thresholds {
            high_lag,
            low_lag: high_lag / 3,
            high_queued,
            low_queued: high_queued / 4,
        }
    }
}

/// The stream credit each connection gets now.
#[derive(Debug)]
pub struct Credit {
    /// Requests in flight one connection may have now, in [`PARTS`]: 1 to
    /// `max` streams.
    now: AtomicU32,
    /// Hands out the connections' rounding offsets ([`Credit::dither`]).
    dithers: AtomicU32,
    /// The most streams any connection was given since the last cut
    /// ([`Credit::given`]): a cut starts from there, since credit no
    /// connection holds limits nothing.
    given_most: AtomicU32,
    /// Streams accepted by all connections since start.
    accepted: AtomicU64,
    /// Streams accepted by heavy connections since start: while none
    /// are, the receive queues are not read ([`Credit::run`]).
    heavy: AtomicU64,
    /// Counts the [`GROW_EVERY`] periods of the controller (connections
    /// count their streams per period, [`Usage`]).
    period: AtomicU32,
    /// A connection that accepted at most this many streams in the last
    /// period is light: half the mean over the connections.
    light_at_most: AtomicU32,
    /// The configured credit (`server.max_streams_per_connection`).
    max: u32,
    /// The last lag measured, microseconds.
    lag_micros: AtomicU64,
    /// The bytes last seen in the receive queues.
    queued: AtomicU64,
    /// Times the credit was cut.
    shrinks: AtomicU64,
    /// When to cut and when to grow.
    thresholds: Thresholds,
}

impl Credit {
    /// Full credit, `max` streams per connection, the default thresholds.
    pub fn new(max: u32) -> Credit {
        Credit::with_thresholds(max, Thresholds::default())
    }

    /// Full credit, `max` streams per connection, cut and grown at
    /// `thresholds`.
    pub fn with_thresholds(max: u32, thresholds: Thresholds) -> Credit {
        let max = max.max(1);
        Credit {
            now: AtomicU32::new(max * PARTS),
            dithers: AtomicU32::new(0),
            given_most: AtomicU32::new(0),
            accepted: AtomicU64::new(0),
            heavy: AtomicU64::new(0),
            period: AtomicU32::new(0),
            light_at_most: AtomicU32::new(u32::MAX),
            max,
            lag_micros: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            shrinks: AtomicU64::new(0),
            thresholds,
        }
    }

    /// When it is cut and grown.
    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// Streams one connection may have open now, on average over the
    /// connections (each rounds it with its own offset).
    pub fn now(&self) -> f64 {
        f64::from(self.now.load(Relaxed)) / f64::from(PARTS)
    }

    /// A new connection's rounding offset, 0 to [`PARTS`] - 1: successive
    /// connections get offsets spread over the whole range.
    pub fn dither(&self) -> u32 {
        // 7 is prime to 16: every offset once in 16 connections, the
        // neighbours far apart.
        self.dithers.fetch_add(7, Relaxed) % PARTS
    }

    /// Streams a connection with rounding offset `dither` may have open
    /// now: 1 to `max`.
    #[inline]
    pub fn for_connection(&self, dither: u32) -> u32 {
        ((self.now.load(Relaxed) + dither % PARTS) / PARTS).clamp(1, self.max)
    }

    /// The configured credit.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The last scheduling lag measured.
    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_micros.load(Relaxed))
    }

    /// Times the credit was cut since start.
    pub fn shrinks(&self) -> u64 {
        self.shrinks.load(Relaxed)
    }

    /// The bytes last seen in the server's UDP receive queues.
    pub fn queued(&self) -> u64 {
        self.queued.load(Relaxed)
    }

    /// Notes that a connection now holds `streams` of credit.
    #[inline]
    pub fn given(&self, streams: u32) {
        // Read first: the line stays shared while nobody holds more.
        if streams > self.given_most.load(Relaxed) {
            self.given_most.fetch_max(streams, Relaxed);
        }
    }

    /// The credit a connection should hold after accepting a stream
    /// (counted here): its own credit `own` while it is light
    /// ([`Credit::accepted`]), else the server's credit rounded with its
    /// `dither`, at most `own` and at least [`LEAST_CREDIT`].
    ///
    /// Light connections are left alone: stream credit limits how many
    /// requests a connection has open at once, and one that asks little
    /// has one open at most, so cutting its credit sheds nothing. It would
    /// only cost: every raise of a connection's credit is a `MAX_STREAMS`
    /// frame, often a datagram of its own, and with 10,000 terminals the
    /// credit following every step of the server's raised the datagrams a
    /// request cost by half and lost packets to full receive buffers
    /// (BENCHMARKS.md, "Overload"). And under a flood a reception terminal
    /// is not refused for the flood's sake.
    #[inline]
    pub fn for_stream(&self, usage: &mut Usage, dither: u32, own: u32) -> u32 {
        if self.accepted(usage) {
            own.clamp(1, self.max)
        } else {
            self.for_connection(dither).min(own).max(LEAST_CREDIT)
        }
    }

    /// Counts a stream accepted by the connection whose use is `usage`,
    /// and says whether that connection is light: in the last period
    /// ([`GROW_EVERY`]) it accepted at most half the mean number of
    /// streams over the connections, or at most [`ALWAYS_LIGHT`], or it
    /// accepted none. A new connection is light until its first period
    /// ends.
    #[inline]
    pub fn accepted(&self, usage: &mut Usage) -> bool {
        self.accepted.fetch_add(1, Relaxed);
        let period = self.period.load(Relaxed);
        if period != usage.period {
            usage.light = period.wrapping_sub(usage.period) > 1
                || usage.streams <= self.light_at_most.load(Relaxed).max(ALWAYS_LIGHT);
            usage.period = period;
            usage.streams = 0;
        }
        usage.streams = usage.streams.saturating_add(1);
        if !usage.light {
            self.heavy.fetch_add(1, Relaxed);
        }
        usage.light
    }

    /// Ends a period: `connections` connections are open now, and those
    /// that accepted at most half the mean of the streams accepted since
    /// the last call are light ([`Credit::accepted`]); `last` holds the
    /// count then (updated here).
    pub fn end_period(&self, connections: u64, last: &mut u64) {
        let accepted = self.accepted.load(Relaxed);
        let mean = (accepted - *last) / connections.max(1);
        *last = accepted;
        self.light_at_most
            .store(u32::try_from(mean / 2).unwrap_or(u32::MAX), Relaxed);
        self.period.fetch_add(1, Relaxed);
    }

    /// Folds one measurement taken at `at` (the scheduling lag, the bytes
    /// in the receive queues) into the credit; `history` holds when it
    /// last changed and was last cut (updated here).
    pub fn observe(&self, lag: Duration, queued: u64, at: Instant, history: &mut History) {
        self.lag_micros.store(lag.as_micros() as u64, Relaxed);
        self.queued.store(queued, Relaxed);
        let now = self.now.load(Relaxed);
        let (least, most) = (PARTS, self.max * PARTS);
        let since = at.saturating_duration_since(history.changed);
        let t = &self.thresholds;
        let behind = lag > t.high_lag || queued > t.high_queued;
        let keeping_up = lag < t.low_lag && queued < t.low_queued;
        if behind && now > least && since >= SHRINK_EVERY {
            // From the most any connection holds: above it a cut would
            // change nothing (at the start of a flood the credit is the
            // configured most while connections hold their first few).
            let held = self.given_most.swap(0, Relaxed).saturating_mul(PARTS);
            let from = if held == 0 { now } else { now.min(held) };
            self.now.store((from * KEEP_ON_CUT / 4).max(least), Relaxed);
            self.shrinks.fetch_add(1, Relaxed);
            history.changed = at;
            history.cut = Some(at);
        } else if keeping_up && now < most && since >= GROW_EVERY {
            let near_limit = history
                .cut
                .is_some_and(|cut| at.saturating_duration_since(cut) < RECOVER_AFTER);
            let step = if near_limit {
                PROBE_STEP
            } else {
                (now / 4).max(PARTS)
            };
            self.now.store((now + step).min(most), Relaxed);
            history.changed = at;
        }
    }

    /// Probes the runtime's scheduling lag every [`PROBE_EVERY`] and the
    /// receive queues of the UDP sockets bound to `port` every
    /// [`QUEUE_PROBE_EVERY`] (none: the lag alone), and sets the credit;
    /// ends a period every [`GROW_EVERY`] with `connections` (the open
    /// connections); until the task is dropped.
    ///
    /// The queues are read only while some connection is heavy: the
    /// credit acts on nothing else, and reading `/proc/net/udp` is not
    /// free. Under 20,000 requests a second from 10,000 terminals each
    /// read took up to 13 ms, and reading every 20 ms (from this task or
    /// any other process) went with stalls of 0.6-2 s in every 60 s run
    /// (BENCHMARKS.md, "10,000 terminals and the adaptive credit").
    pub async fn run(&self, port: Option<u16>, connections: &AtomicU64) {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut history = History::new(Instant::now());
        let mut queued = 0;
        let mut last_read: Option<Instant> = None;
        let mut heavy_before = 0;
        let mut period_end = Instant::now() + GROW_EVERY;
        let mut accepted = 0;
        loop {
            let due = tick.tick().await;
            let now = Instant::now();
            // The timer wheel has a 1 ms grain: up to that is not lag.
            let lag = now
                .saturating_duration_since(due)
                .saturating_sub(Duration::from_millis(1));
            let heavy = self.heavy.load(Relaxed);
            if heavy == heavy_before {
                // No heavy connection since the last read.
                queued = 0;
            } else if let Some(port) = port {
                if last_read.is_none_or(|t| now.duration_since(t) >= QUEUE_PROBE_EVERY) {
                    heavy_before = heavy;
                    // A read of procfs: memory the kernel formats, no disk.
                    queued = receive_queue_bytes(port).unwrap_or(0);
                    last_read = Some(now);
                }
            }
            self.observe(lag, queued, now, &mut history);
            if now >= period_end {
                self.end_period(connections.load(Relaxed), &mut accepted);
                period_end = now + GROW_EVERY;
            }
        }
    }
}

/// A connection's streams in the current period ([`Credit::accepted`]).
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    period: u32,
    streams: u32,
    light: bool,
}

impl Default for Usage {
    /// A new connection: light.
    fn default() -> Usage {
        Usage {
            period: 0,
            streams: 0,
            light: true,
        }
    }
}

/// When the credit last changed and was last cut ([`Credit::observe`]).
#[derive(Debug, Clone, Copy)]
pub struct History {
    changed: Instant,
    cut: Option<Instant>,
}

impl History {
    /// Unchanged since `start`, never cut.
    pub fn new(start: Instant) -> History {
        History {
            changed: start,
            cut: None,
        }
    }
}

/// A connection's own credit after it accepted a stream, with `open`
/// requests now being read or answered by it: doubled (up to `max`) when
/// they fill all of `own`, else unchanged. (Streams whose answer is
/// written but not yet acknowledged also hold credit and are not counted:
/// a terminal earns more only when its requests really pile up, which a
/// reception terminal's rarely do.)
#[inline]
pub fn own_credit(own: u32, open: usize, max: u32) -> u32 {
    if open >= own as usize {
        own.saturating_mul(2).min(max).max(own)
    } else {
        own
    }
}

/// The bytes waiting in the receive queues of this machine's UDP sockets
/// bound to `port` (IPv4 and IPv6), from `/proc/net/udp` and `udp6`;
/// `None` where neither can be read.
pub fn receive_queue_bytes(port: u16) -> Option<u64> {
    let mut any = false;
    let mut total = 0;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            any = true;
            total += queued_in(&text, port);
        }
    }
    any.then_some(total)
}

/// The `rx_queue` of every socket of a `/proc/net/udp` table bound to
/// `port`, summed (sockets sharing the port with `SO_REUSEPORT` each have
/// their own queue). Lines that do not parse are skipped.
fn queued_in(table: &str, port: u16) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let queues = fields.nth(2)?;
            let local_port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            let rx = u64::from_str_radix(queues.split_once(':')?.1, 16).ok()?;
            (local_port == port).then_some(rx)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receive_queue_of_the_port_is_read_from_the_kernel_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1053: 0100007F:1151 00000000:0000 07 00000000:00080000 00:00000000 00000000     0        0 21403 2 0000000000000000 0
 1053: 0100007F:1151 00000000:0000 07 00000000:00000400 00:00000000 00000000     0        0 21404 2 0000000000000000 0
 2000: 0100007F:0035 00000000:0000 07 00000000:00FFFFFF 00:00000000 00000000     0        0 21405 2 0000000000000000 0
 garbage
";
        // Port 4433 is 0x1151: both of its sockets, not port 53's.
        assert_eq!(queued_in(table, 4433), 0x80000 + 0x400);
        assert_eq!(queued_in(table, 9), 0);
    }

    #[test]
    fn a_connection_earns_its_credit_by_using_it() {
        assert_eq!(own_credit(START_CREDIT, 3, 64), START_CREDIT);
        assert_eq!(own_credit(8, 8, 64), 16);
        assert_eq!(own_credit(32, 40, 64), 64);
        assert_eq!(own_credit(64, 64, 64), 64, "never past the most");
        assert_eq!(own_credit(8, 8, 4), 8, "never below what was granted");
    }

    #[test]
    fn configured_thresholds_decide_when_it_is_cut_and_grown() {
        let t = Thresholds::new(Duration::from_millis(30), 1 << 20);
        assert_eq!(
            (t.low_lag, t.low_queued),
            (Duration::from_millis(10), 256 << 10)
        );
        assert_eq!(
            Thresholds::new(HIGH_LAG, HIGH_QUEUED),
            Thresholds::default(),
            "the defaults follow the same rule"
        );
        let credit = Credit::with_thresholds(64, t);
        let start = Instant::now();
        let mut last = History::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        // Behind by the defaults, not by these: kept.
        credit.observe(
            Duration::from_millis(10),
            HIGH_QUEUED * 2,
            at(60),
            &mut last,
        );
        assert_eq!(credit.now(), 64.0);
        credit.observe(Duration::from_millis(31), 0, at(120), &mut last);
        assert_eq!(credit.now(), 48.0, "cut to three quarters");
        credit.observe(Duration::ZERO, (1 << 20) + 1, at(180), &mut last);
        assert_eq!(credit.now(), 36.0);
        // Under a third of the lag and a quarter of the queue: grows.
        credit.observe(
            Duration::from_millis(9),
            (256 << 10) - 1,
            at(300),
            &mut last,
        );
        assert_eq!(
            credit.now(),
            36.125,
            "an eighth of a stream, just after a cut"
        );
    }

    #[test]
    fn a_full_receive_queue_cuts_the_credit_like_lag() {
        let credit = Credit::new(64);
        let start = Instant::now();
        let mut last = History::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        credit.observe(Duration::ZERO, HIGH_QUEUED + 1, at(60), &mut last);
        assert_eq!((credit.now(), credit.queued()), (48.0, HIGH_QUEUED + 1));
        // Between the marks: no change; below both: growth.
        credit.observe(Duration::ZERO, LOW_QUEUED, at(200), &mut last);
        assert_eq!(credit.now(), 48.0);
        credit.observe(Duration::ZERO, LOW_QUEUED - 1, at(300), &mut last);
        assert_eq!(credit.now(), 48.125);
        // Lag still counts alone: 770 sixteenths cut to 577.
        credit.observe(Duration::from_millis(10), 0, at(400), &mut last);
        assert_eq!(credit.now(), 36.0625);
    }

    #[test]
    fn cuts_under_lag_and_grows_back_when_it_is_gone() {
        let credit = Credit::new(64);
        let start = Instant::now();
        let mut last = History::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        // Lag, but too soon after the last change: nothing yet.
        credit.observe(Duration::from_millis(10), 0, at(10), &mut last);
        assert_eq!(credit.now(), 64.0);
        credit.observe(Duration::from_millis(10), 0, at(60), &mut last);
        assert_eq!(credit.now(), 48.0);
        credit.observe(Duration::from_millis(10), 0, at(80), &mut last);
        assert_eq!(credit.now(), 48.0, "one cut per 50 ms");
        for i in 0..20 {
            credit.observe(Duration::from_millis(10), 0, at(120 + 50 * i), &mut last);
        }
        assert_eq!(credit.now(), 1.0, "never below one stream");
        assert_eq!(credit.shrinks(), 15);
        // Between the thresholds: no change.
        credit.observe(Duration::from_millis(2), 0, at(2000), &mut last);
        assert_eq!(credit.now(), 1.0);
        // No lag: an eighth each 100 ms until three seconds after the last
        // cut (at 770 ms), then a quarter: back to full within seconds.
        let mut t = 2000;
        while credit.now() < 64.0 {
            t += 100;
            credit.observe(Duration::ZERO, 0, at(t), &mut last);
            assert!(t < 6000, "credit {} after {} ms", credit.now(), t - 2000);
        }
        assert_eq!(credit.now(), 64.0);
        assert_eq!(credit.lag(), Duration::ZERO);
    }

    #[test]
    fn near_its_limit_the_credit_grows_by_eighths_then_by_quarters() {
        let credit = Credit::new(64);
        let start = Instant::now();
        let mut last = History::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        credit.given(8);
        credit.observe(Duration::ZERO, HIGH_QUEUED + 1, at(60), &mut last);
        assert_eq!(credit.now(), 6.0);
        // Within three seconds of the cut: an eighth each 100 ms.
        for i in 1..=29 {
            credit.observe(Duration::ZERO, 0, at(60 + 100 * i), &mut last);
        }
        assert_eq!(credit.now(), 6.0 + 29.0 / 8.0);
        // Three seconds without a cut: the server keeps up again.
        credit.observe(Duration::ZERO, 0, at(3060), &mut last);
        assert_eq!(credit.now(), 12.0, "a quarter more, in sixteenths");
    }

    #[test]
    fn connections_round_the_credit_with_offsets_that_average_to_it() {
        let credit = Credit::new(64);
        let start = Instant::now();
        let mut last = History::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        credit.given(5);
        credit.observe(Duration::ZERO, HIGH_QUEUED + 1, at(60), &mut last);
        for i in 1..=4 {
            credit.observe(Duration::ZERO, 0, at(60 + 100 * i), &mut last);
        }
        assert_eq!(credit.now(), 4.25);
        let dithers: Vec<u32> = (0..PARTS).map(|_| credit.dither()).collect();
        let mut sorted = dithers.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..PARTS).collect::<Vec<_>>(), "each offset once");
        let given: Vec<u32> = dithers.iter().map(|&d| credit.for_connection(d)).collect();
        assert_eq!(given.iter().filter(|&&g| g == 5).count(), 4);
        assert_eq!(given.iter().filter(|&&g| g == 4).count(), 12);
        // Never below one stream or past the configured most.
        assert_eq!(Credit::new(3).for_connection(PARTS - 1), 3);
        for i in 0..10 {
            credit.observe(Duration::from_secs(1), 0, at(600 + 50 * i), &mut last);
        }
        assert_eq!(credit.now(), 1.0);
        assert!(dithers.iter().all(|&d| credit.for_connection(d) == 1));
    }

    #[test]
    fn a_cut_starts_from_the_most_any_connection_holds() {
        let credit = Credit::new(64);
        let start = Instant::now();
        let mut last = History::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        // A flood begins: the connections hold their start credit, far
        // under the configured most.
        credit.given(START_CREDIT);
        credit.given(3);
        credit.observe(Duration::ZERO, HIGH_QUEUED + 1, at(60), &mut last);
        assert_eq!(credit.now(), 6.0, "three quarters of 8, not of 64");
        // Nothing given since: from the credit itself.
        credit.observe(Duration::ZERO, HIGH_QUEUED + 1, at(110), &mut last);
        assert_eq!(credit.now(), 4.5);
        // One connection holds more than the credit: the credit is lower.
        credit.given(40);
        credit.observe(Duration::ZERO, HIGH_QUEUED + 1, at(160), &mut last);
        assert_eq!(credit.now(), 3.375);
    }
    #[test]
    fn a_connection_asking_under_half_its_share_is_light() {
        let credit = Credit::new(64);
        let (mut flood, mut calm, mut idle) =
            (Usage::default(), Usage::default(), Usage::default());
        assert!(credit.accepted(&mut flood), "new connections are light");
        for _ in 1..30 {
            credit.accepted(&mut flood);
        }
        for _ in 0..5 {
            credit.accepted(&mut calm);
        }
        let mut last = 0;
        // 35 streams over 3 connections: 11 each on average, light at 5.
        credit.end_period(3, &mut last);
        assert_eq!(last, 35);
        assert!(!credit.accepted(&mut flood), "30 streams: heavy");
        assert!(credit.accepted(&mut calm), "5 streams: light");
        assert!(credit.accepted(&mut idle));
        // The flood keeps on; the calm terminal asks nothing for a period.
        for _ in 0..40 {
            credit.accepted(&mut flood);
        }
        credit.end_period(3, &mut last);
        assert!(!credit.accepted(&mut flood));
        credit.end_period(3, &mut last);
        assert!(
            credit.accepted(&mut calm),
            "nothing in the last period: light"
        );
        // Few requests from many connections: a mean under one, and one
        // request in a period is still light, two are not.
        credit.end_period(10_000, &mut last);
        credit.accepted(&mut idle);
        credit.end_period(10_000, &mut last);
        assert!(credit.accepted(&mut idle), "one request in a period: light");
        for _ in 0..3 {
            credit.accepted(&mut idle);
        }
        credit.end_period(10_000, &mut last);
        assert!(credit.accepted(&mut idle), "four: still light");
        for _ in 0..4 {
            credit.accepted(&mut idle);
        }
        credit.end_period(10_000, &mut last);
        assert!(!credit.accepted(&mut idle), "five: heavy");
    }

    #[test]
    fn light_connections_keep_their_own_credit_and_heavy_ones_follow_the_server() {
        let credit = Credit::new(64);
        let start = Instant::now();
        let mut last = History::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        credit.given(START_CREDIT);
        for i in 0..4 {
            credit.observe(Duration::ZERO, HIGH_QUEUED + 1, at(60 + 50 * i), &mut last);
        }
        assert_eq!(credit.now(), 2.5, "8 cut to three quarters four times");
        let (mut flood, mut calm) = (Usage::default(), Usage::default());
        assert_eq!(
            credit.for_stream(&mut flood, 0, START_CREDIT),
            START_CREDIT,
            "new: light"
        );
        for _ in 0..20 {
            credit.for_stream(&mut flood, 0, START_CREDIT);
        }
        credit.for_stream(&mut calm, 0, START_CREDIT);
        let mut accepted = 0;
        credit.end_period(2, &mut accepted);
        assert_eq!(credit.for_stream(&mut flood, 0, START_CREDIT), 2);
        assert_eq!(
            credit.for_stream(&mut flood, 15, START_CREDIT),
            3,
            "rounded up"
        );
        assert_eq!(
            credit.for_stream(&mut flood, 0, 1),
            LEAST_CREDIT,
            "never under the least"
        );
        assert_eq!(
            credit.heavy.load(Relaxed),
            3,
            "the heavy connection's streams are counted, for the queue probe"
        );
        assert_eq!(credit.for_stream(&mut calm, 0, START_CREDIT), START_CREDIT);
        let small = Credit::new(4);
        assert_eq!(
            small.for_stream(&mut Usage::default(), 0, 8),
            4,
            "at most the configured most"
        );
    }
}
