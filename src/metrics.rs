//! What the daemon counts about itself: the snapshot life cycle (builds,
//! reloads and their durations), refused handshakes, and every request by
//! kind and status with its latency. The status request reports some of
//! it; the admin listener (`admin`) exposes all of it to Prometheus.
//!
//! The request path records into [`RequestMetrics`], which is sharded:
//! each thread adds to its own cache-line-aligned shard with relaxed
//! atomic adds that no other thread contends for, and a scrape sums the
//! shards. Recording takes no lock and shares no cache line between
//! threads (BENCHMARKS.md has its cost). Nothing here carries a label
//! with personal data or an institution code.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Counters of the snapshot life cycle and of refused connections since
/// start. All plain atomics: they move a few times an hour, or once per
/// refused handshake.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Snapshots built from the source (the one built at start included).
    pub builds: AtomicU64,
    /// Builds that failed (source unreachable, bad rows, disk); the
    /// snapshot served stays.
    pub build_failures: AtomicU64,
    /// Reloads that swapped in another snapshot.
    pub reloads: AtomicU64,
    /// Reloads that refused a snapshot (it would not open or verify).
    pub reload_failures: AtomicU64,
    /// Times another process opened the served snapshot file for writing
    /// or truncated it, and a private copy was swapped in.
    pub lease_breaks: AtomicU64,
    /// How long builds took (successful or not).
    pub build_time: Timing,
    /// How long reloads that swapped a snapshot in took (open, checks,
    /// swap).
    pub reload_time: Timing,
    /// Connections refused, by [`HandshakeFailure`].
    handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    /// Connection attempts answered with a QUIC Retry (prove the address
    /// first), the handshakes in progress being many.
    pub handshake_retries: AtomicU64,
    /// Changed persons applied to the overlay (a database source's
    /// change feed).
    pub changes_applied: AtomicU64,
    /// Changed persons whose rows could not be read (answered
    /// UNAVAILABLE until a later change or a snapshot).
    pub changes_unreadable: AtomicU64,
    /// Reads of the change feed that failed (the database down, say).
    pub change_read_failures: AtomicU64,
    /// Times the change listener's connection was made again after it was
    /// lost or could not be made.
    pub listener_reconnects: AtomicU64,
    /// From a change's statement in the database to the overlay that
    /// answers it being swapped in.
    pub freshness_lag: Timing,
    /// Fleet: generations published to the store (publisher).
    pub fleet_published: AtomicU64,
    /// Fleet: generations downloaded, checked and ready (replica).
    pub fleet_downloads: AtomicU64,
    /// Fleet: bytes downloaded (replica).
    pub fleet_download_bytes: AtomicU64,
    /// Fleet: downloads refused by the checks (checksum, open checks).
    pub fleet_refused: AtomicU64,
    /// Fleet: requests to the store that failed (store or network down).
    pub fleet_store_errors: AtomicU64,
    /// Fleet: the generation the pointer names, as last read (0: none).
    pub fleet_pointer: AtomicU64,
    /// Fleet: 1 while the pointer's generation is due but not ready here
    /// (this replica keeps serving the older one).
    pub fleet_waiting: AtomicU64,
}

impl Metrics {
    /// All zero.
    pub const fn new() -> Metrics {
        Metrics {
            builds: AtomicU64::new(0),
            build_failures: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            lease_breaks: AtomicU64::new(0),
            build_time: Timing::new(),
            reload_time: Timing::new(),
            handshake_failures: [const { AtomicU64::new(0) }; HandshakeFailure::ALL.len()],
            handshake_retries: AtomicU64::new(0),
            changes_applied: AtomicU64::new(0),
            changes_unreadable: AtomicU64::new(0),
            change_read_failures: AtomicU64::new(0),
            listener_reconnects: AtomicU64::new(0),
            freshness_lag: Timing::new(),
            fleet_published: AtomicU64::new(0),
            fleet_downloads: AtomicU64::new(0),
            fleet_download_bytes: AtomicU64::new(0),
            fleet_refused: AtomicU64::new(0),
            fleet_store_errors: AtomicU64::new(0),
            fleet_pointer: AtomicU64::new(0),
            fleet_waiting: AtomicU64::new(0),
        }
    }

    /// Counts a refused connection.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        self.handshake_failures[why as usize].fetch_add(1, Relaxed);
    }

    /// Refused connections so far, by reason.
    pub fn handshake_failures(&self) -> impl Iterator<Item = (HandshakeFailure, u64)> + '_ {
        HandshakeFailure::ALL
            .iter()
            .map(|&w| (w, self.handshake_failures[w as usize].load(Relaxed)))
    }
}

/// Why a connection was refused before it could send a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The terminal presented no certificate.
    NoCertificate,
    /// Its certificate does not chain to the terminal CA.
    UnknownCa,
    /// Its certificate has expired or is not valid yet.
    Expired,
    /// Another TLS failure (a bad certificate, no common ALPN, ...).
    Tls,
    /// The certificate's common name is not a valid institution code.
    NoInstitutionCode,
    /// The terminal holds `max_connections_per_terminal` already.
    TooManyConnections,
    /// The handshake did not finish in time.
    Timeout,
    /// `max_handshakes` were in progress: refused without a handshake.
    Busy,
    /// Anything else (the peer went away, a protocol violation).
    Other,
}

impl HandshakeFailure {
    /// Every reason, in label order.
    pub const ALL: [HandshakeFailure; 9] = [
        HandshakeFailure::NoCertificate,
        HandshakeFailure::UnknownCa,
        HandshakeFailure::Expired,
        HandshakeFailure::Tls,
        HandshakeFailure::NoInstitutionCode,
        HandshakeFailure::TooManyConnections,
        HandshakeFailure::Timeout,
        HandshakeFailure::Busy,
        HandshakeFailure::Other,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            HandshakeFailure::NoCertificate => "no_certificate",
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::Tls => "tls",
            HandshakeFailure::NoInstitutionCode => "no_institution_code",
            HandshakeFailure::TooManyConnections => "too_many_connections",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Busy => "busy",
            HandshakeFailure::Other => "other",
        }
    }

    /// The reason of a failed handshake, from its TLS alert (QUIC crypto
    /// error 0x100 + alert).
    pub fn of_tls_alert(alert: u8) -> HandshakeFailure {
        match alert {
            116 => HandshakeFailure::NoCertificate, // certificate_required
            48 => HandshakeFailure::UnknownCa,      // unknown_ca
            45 => HandshakeFailure::Expired,        // certificate_expired
            _ => HandshakeFailure::Tls,
        }
    }
}

/// Count, sum and buckets of a duration that is recorded rarely (builds,
/// reloads).
#[derive(Debug, Default)]
pub struct Timing {
    count: AtomicU64,
    sum_micros: AtomicU64,
    buckets: [AtomicU64; TIMING_BOUNDS.len() + 1],
}

/// Upper bounds of [`Timing`]'s buckets, seconds (then +Inf).
pub const TIMING_BOUNDS: [f64; 10] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0];

impl Timing {
    /// Nothing recorded.
    pub const fn new() -> Timing {
        Timing {
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; TIMING_BOUNDS.len() + 1],
        }
    }

    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = TIMING_BOUNDS.partition_point(|&b| b < s);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with their upper bounds,
    /// +Inf last).
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets = TIMING_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(b, n)| (b, n.load(Relaxed)))
            .collect();
        (
            self.sum_micros.load(Relaxed) as f64 / 1e6,
            self.count.load(Relaxed),
            buckets,
        )
    }
}

/// What a request asked for, as far as the server read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A lookup by card.
    Card,
    /// A lookup by insurance numbers.
    Insurance,
    /// A batch of lookups.
    Batch,
    /// The status request.
    Status,
    /// Bytes that are not a request, or a request with no kind.
    Malformed,
    /// Not read: shed as OVERLOADED, too large, or not finished in time.
    Unread,
}

impl RequestKind {
    /// Every kind, in label order.
    pub const ALL: [RequestKind; 6] = [
        RequestKind::Card,
        RequestKind::Insurance,
        RequestKind::Batch,
        RequestKind::Status,
        RequestKind::Malformed,
        RequestKind::Unread,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Card => "card",
            RequestKind::Insurance => "insurance",
            RequestKind::Batch => "batch",
            RequestKind::Status => "status",
            RequestKind::Malformed => "malformed",
            RequestKind::Unread => "unread",
        }
    }
}

/// The response statuses counted, by their wire codes (`Response.status`),
/// in label order.
pub const STATUS_CODES: [i32; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 100, 101, 102, 103];

/// The names of [`STATUS_CODES`], as `proto/qualcache.proto` spells them.
pub const STATUS_NAMES: [&str; 12] = [
    "VALID",
    "LOST",
    "LOST_WITH_NEWER",
    "NOT_FOUND",
    "MULTIPLE_HITS",
    "VALID_UNREGISTERED",
    "CARD_NOT_REGISTERED",
    "CARD_RESTRICTED",
    "OK",
    "INVALID_REQUEST",
    "OVERLOADED",
    "UNAVAILABLE",
];

/// The label of a wire status (its name in the .proto); `UNKNOWN` for a
/// code this server never sends.
pub fn status_label(code: i32) -> &'static str {
    if STATUS_CODES.contains(&code) {
        STATUS_NAMES[status_index(code)]
    } else {
        "UNKNOWN"
    }
}

/// Index of a wire status in [`STATUS_CODES`]; an unknown one counts as
/// the last (never sent by this server).
fn status_index(code: i32) -> usize {
    match code {
        1..=8 => (code - 1) as usize,
        100..=103 => (code - 92) as usize,
        _ => STATUS_CODES.len() - 1,
    }
}

/// Upper bounds of the request latency buckets, seconds (then +Inf).
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    10.0,
];

const KINDS: usize = RequestKind::ALL.len();
const STATUSES: usize = STATUS_CODES.len();
const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// One thread's counters, on cache lines of their own.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    /// Requests by kind and status.
    requests: [[AtomicU64; STATUSES]; KINDS],
    /// Latency bucket counts by kind.
    latency: [[AtomicU64; BUCKETS]; KINDS],
    /// Latency sums by kind, nanoseconds.
    latency_sum_nanos: [AtomicU64; KINDS],
}

impl Shard {
    fn new() -> Shard {
        Shard {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency_sum_nanos: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Requests answered, by kind and status, and their latency by kind,
/// recorded without contention (see the module doc).
#[derive(Debug)]
pub struct RequestMetrics {
    /// A power of two of shards, at least twice the cores.
    shards: Box<[Shard]>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics::new()
    }
}

/// The totals of [`RequestMetrics`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestTotals {
    /// Requests by kind (in `RequestKind::ALL` order) and status (in
    /// [`STATUS_CODES`] order).
    pub requests: [[u64; STATUSES]; KINDS],
    /// Latency bucket counts by kind (per bucket, not cumulative).
    pub latency: [[u64; BUCKETS]; KINDS],
    /// Latency sums by kind, seconds.
    pub latency_sum: [f64; KINDS],
}

impl RequestMetrics {
    /// Zeroed counters with shards for this machine's threads.
    pub fn new() -> RequestMetrics {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let n = (cores * 2).next_power_of_two().min(256);
        RequestMetrics {
            shards: (0..n).map(|_| Shard::new()).collect(),
        }
    }

    /// Counts one answered request: its kind, the status of its response
    /// and the time from its first byte to its answer written.
    #[inline]
    pub fn record(&self, kind: RequestKind, status: i32, elapsed: Duration) {
        let shard = self.shard();
        let k = kind as usize;
        shard.requests[k][status_index(status)].fetch_add(1, Relaxed);
        let nanos = elapsed.as_nanos().min(u128::from(u64::MAX)) as u64;
        let secs = nanos as f64 / 1e9;
        let b = LATENCY_BOUNDS.partition_point(|&bound| bound < secs);
        shard.latency[k][b].fetch_add(1, Relaxed);
        shard.latency_sum_nanos[k].fetch_add(nanos, Relaxed);
    }

    /// The calling thread's shard.
    #[inline]
    fn shard(&self) -> &Shard {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            /// This thread's shard number, handed out in turn.
            static SHARD: usize = NEXT.fetch_add(1, Relaxed);
        }
        let i = SHARD.with(|s| *s) & (self.shards.len() - 1);
        &self.shards[i]
    }

    /// Sums the shards.
    pub fn totals(&self) -> RequestTotals {
        let mut t = RequestTotals {
            requests: [[0; STATUSES]; KINDS],
            latency: [[0; BUCKETS]; KINDS],
            latency_sum: [0.0; KINDS],
        };
        for shard in self.shards.iter() {
            for k in 0..KINDS {
                for s in 0..STATUSES {
                    t.requests[k][s] += shard.requests[k][s].load(Relaxed);
                }
                for b in 0..BUCKETS {
                    t.latency[k][b] += shard.latency[k][b].load(Relaxed);
                }
                t.latency_sum[k] += shard.latency_sum_nanos[k].load(Relaxed) as f64 / 1e9;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_across_threads() {
        let m = std::sync::Arc::new(RequestMetrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.record(RequestKind::Card, 1, Duration::from_micros(70));
                    }
                    m.record(RequestKind::Batch, 100, Duration::from_millis(3));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        m.record(RequestKind::Unread, 102, Duration::from_secs(20));
        let t = m.totals();
        assert_eq!(t.requests[RequestKind::Card as usize][0], 4000);
        assert_eq!(t.requests[RequestKind::Batch as usize][8], 4);
        assert_eq!(t.requests[RequestKind::Unread as usize][10], 1);
        // 70 µs falls in the 100 µs bucket, 3 ms in the 5 ms one, 20 s in +Inf.
        assert_eq!(t.latency[RequestKind::Card as usize][1], 4000);
        assert_eq!(t.latency[RequestKind::Batch as usize][6], 4);
        assert_eq!(t.latency[RequestKind::Unread as usize][BUCKETS - 1], 1);
        assert!((t.latency_sum[RequestKind::Card as usize] - 0.28).abs() < 1e-9);
    }

    #[test]
    fn statuses_and_timings() {
        for (i, code) in STATUS_CODES.iter().enumerate() {
            assert_eq!(status_index(*code), i);
        }
        let t = Timing::new();
        t.record(Duration::from_millis(30));
        t.record(Duration::from_secs(1000));
        let (sum, count, buckets) = t.read();
        assert_eq!(count, 2);
        assert!((sum - 1000.03).abs() < 1e-6);
        assert_eq!(buckets[1], (0.05, 1));
        assert_eq!(buckets[TIMING_BOUNDS.len()], (f64::INFINITY, 1));
    }
}
