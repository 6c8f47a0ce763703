//! The load run: connect every terminal, send requests on an open-loop
//! Poisson schedule, check every answer, and collect the figures. The
//! work is split into shards, one thread each (see [`run`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::{self, FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use qualcache::client::Client;
use qualcache::protocol::pb;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::pacer::Pacer;
use crate::workload::{Kind, Planned, Rng, Workload};

/// How the offered rate moves over time.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "profile", rename_all = "lowercase")]
pub enum Profile {
    /// The same rate throughout.
    Constant {
        /// Requests per second, all terminals together (a batch is one request).
        rate: f64,
        /// Seconds.
        seconds: f64,
    },
    /// Reception opening: a linear ramp up, a plateau, a ramp down.
    Peak {
        /// Plateau rate, requests per second.
        rate: f64,
        /// Ramp-up seconds.
        ramp_up: f64,
        /// Plateau seconds.
        plateau: f64,
        /// Ramp-down seconds.
        ramp_down: f64,
    },
}

impl Profile {
    /// Total seconds.
    pub fn seconds(&self) -> f64 {
        match *self {
            Profile::Constant { seconds, .. } => seconds,
            Profile::Peak {
                ramp_up,
                plateau,
                ramp_down,
                ..
            } => ramp_up + plateau + ramp_down,
        }
    }

    /// Offered rate at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        match *self {
            Profile::Constant { rate, .. } => rate,
            Profile::Peak {
                rate,
                ramp_up,
                plateau,
                ramp_down,
            } => {
                if t < ramp_up {
                    rate * (t / ramp_up).max(0.05)
                } else if t < ramp_up + plateau {
                    rate
                } else {
                    rate * ((ramp_up + plateau + ramp_down - t) / ramp_down).max(0.05)
                }
            }
        }
    }

    /// The same shape at another peak rate.
    pub fn with_rate(self, r: f64) -> Profile {
        match self {
            Profile::Constant { seconds, .. } => Profile::Constant { rate: r, seconds },
            Profile::Peak {
                ramp_up,
                plateau,
                ramp_down,
                ..
            } => Profile::Peak {
                rate: r,
                ramp_up,
                plateau,
                ramp_down,
            },
        }
    }

    /// The peak rate.
    pub fn rate(&self) -> f64 {
        match *self {
            Profile::Constant { rate, .. } | Profile::Peak { rate, .. } => rate,
        }
    }
}

/// What the run talks to.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", content = "addr", rename_all = "lowercase")]
pub enum Target {
    /// qualcached.
    Qualcache(SocketAddr),
    /// The plain-quinn echo server: answers are not checked.
    Echo(SocketAddr),
    /// Redis holding the same answers (`redis-load`), one GET per lookup.
    Redis(crate::redis_peer::RedisUrl),
}

impl std::fmt::Display for Target {
    /// As given on the command line (a Redis password shown as `***`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Qualcache(addr) => write!(f, "qualcache://{addr}"),
            Target::Echo(addr) => write!(f, "echo://{addr}"),
            Target::Redis(url) => write!(f, "{url}"),
        }
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The server.
    pub target: Target,
    /// Output of `qualcache certs`: ca.pem and terminals/*.pem.
    pub certs: PathBuf,
    /// Simulated terminals, one connection each.
    pub terminals: usize,
    /// Client UDP endpoints the connections are spread over (each shard
    /// has at least one).
    pub endpoints: usize,
    /// Shards: threads, each with its own runtime, connections and
    /// endpoints (one per core is the default of the command line).
    pub threads: usize,
    /// Offered load over time.
    pub profile: Profile,
    /// A request slower than this counts as an error (timeout).
    pub timeout: Duration,
    /// Seed of the shards' random streams (a run is reproducible for the
    /// same seed and thread count).
    pub seed: u64,
    /// Name the server certificate must carry (QUIC targets).
    pub server_name: String,
    /// Show a progress bar.
    pub progress: bool,
    /// Card key (the Redis peer keys cards by digest).
    pub card_key: qualcache::model::CardKey,
}

/// Latency figures of one kind, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Answers measured.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// The latency at one percentile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentile {
    /// Percentile, 0 to below 100.
    pub percentile: f64,
    /// Latency there, milliseconds.
    pub ms: f64,
}

/// Points per decade of the distribution's log scale (90, 99, 99.9, ...).
const POINTS_PER_DECADE: f64 = 20.0;

/// The latency distribution of `h` on the usual log scale of percentiles:
/// `POINTS_PER_DECADE` points from 0 to 90, from 90 to 99, and so on, as
/// far as the sample resolves (99.9 needs a thousand values); empty when
/// `h` is.
pub fn distribution(h: &Histogram<u64>) -> Vec<Percentile> {
    let n = h.len() as f64;
    let mut out = Vec::new();
    for i in 0.. {
        // x decades: percentile 100 (1 - 10^-x).
        let x = f64::from(i) / POINTS_PER_DECADE;
        if n == 0.0 || 10f64.powf(x) > n || x > 7.0 {
            break;
        }
        let q = 1.0 - 10f64.powf(-x);
        out.push(Percentile {
            percentile: q * 100.0,
            ms: h.value_at_quantile(q) as f64 / 1000.0,
        });
    }
    out
}

/// One second of a run, as the generator saw it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the schedule started (the end of this second).
    pub t_s: f64,
    /// Requests answered in it (correctly or not), per second.
    pub answered_per_s: f64,
    /// p99 latency of the requests that ended in it, milliseconds.
    pub p99_ms: f64,
    /// Requests that failed in it (timeouts, refusals).
    pub errors: u64,
}

fn latency(h: &Histogram<u64>) -> Latency {
    let ms = |v: u64| v as f64 / 1000.0;
    Latency {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was loaded.
    pub target: Target,
    /// Terminals (connections).
    pub terminals: usize,
    /// Client endpoints.
    pub endpoints: usize,
    /// Generator threads (shards).
    pub threads: usize,
    /// The offered load.
    pub profile: Profile,
    /// Wall seconds of the schedule.
    pub seconds: f64,
    /// Requests sent.
    pub sent: u64,
    /// Requests answered (correctly or not) within the timeout.
    pub answered: u64,
    /// Answers per second over the schedule.
    pub throughput_rps: f64,
    /// Latency from the *scheduled* send time, all requests.
    pub latency: Latency,
    /// Latency by request kind.
    pub by_kind: BTreeMap<Kind, Latency>,
    /// The latency distribution of all requests (`all`) and of each kind,
    /// for plotting.
    pub distribution: BTreeMap<String, Vec<Percentile>>,
    /// Second by second: answers, p99 and errors.
    pub timeline: Vec<Second>,
    /// Failures by kind (timeout, stream, overloaded, no_credit: refused by
    /// flow control before it was sent, unavailable, invalid).
    pub errors: BTreeMap<String, u64>,
    /// The first reason seen for each kind of failure that has one (the
    /// transport's error, the server's reason; never personal data).
    pub error_examples: BTreeMap<String, String>,
    /// Answers with a status other than the probe's expectation.
    pub mismatches: u64,
    /// Connection set-up (handshake) time.
    pub connect: Latency,
    /// How late the generator sent each request after its scheduled time
    /// (included in `latency`): when this is high, the generator, not the
    /// target, was short of CPU.
    pub send_lag: Latency,
    /// UDP receive-buffer drops on this machine during the run
    /// (`/proc/net/snmp` Udp RcvbufErrors, after minus before).
    pub udp_rcvbuf_errors: Option<u64>,
    /// What the terminals' QUIC connections sent and received during the
    /// schedule (handshakes excluded), summed over all of them; `None`
    /// for Redis.
    pub quic: Option<QuicTraffic>,
}

/// QUIC traffic of the terminals during the schedule, summed over their
/// connections (client side: "sent" is towards the server).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QuicTraffic {
    /// UDP datagrams sent.
    pub datagrams_sent: u64,
    /// UDP datagrams received.
    pub datagrams_received: u64,
    /// ACK frames sent.
    pub acks_sent: u64,
    /// ACK frames received.
    pub acks_received: u64,
    /// PING frames received (the server's loss probes, among others).
    pub pings_received: u64,
    /// MAX_STREAMS frames received (stream credit).
    pub max_streams_received: u64,
    /// Packets the terminals declared lost.
    pub lost_packets: u64,
}

impl QuicTraffic {
    fn of(clients: &[Conn]) -> Option<QuicTraffic> {
        let mut t = QuicTraffic::default();
        let mut any = false;
        for c in clients {
            if let Conn::Quic(c) = c {
                any = true;
                let s = c.stats();
                t.datagrams_sent += s.udp_tx.datagrams;
                t.datagrams_received += s.udp_rx.datagrams;
                t.acks_sent += s.frame_tx.acks;
                t.acks_received += s.frame_rx.acks;
                t.pings_received += s.frame_rx.ping;
                t.max_streams_received += s.frame_rx.max_streams_bidi;
                t.lost_packets += s.path.lost_packets;
            }
        }
        any.then_some(t)
    }

    fn plus(self, o: QuicTraffic) -> QuicTraffic {
        QuicTraffic {
            datagrams_sent: self.datagrams_sent + o.datagrams_sent,
            datagrams_received: self.datagrams_received + o.datagrams_received,
            acks_sent: self.acks_sent + o.acks_sent,
            acks_received: self.acks_received + o.acks_received,
            pings_received: self.pings_received + o.pings_received,
            max_streams_received: self.max_streams_received + o.max_streams_received,
            lost_packets: self.lost_packets + o.lost_packets,
        }
    }

    fn since(self, before: QuicTraffic) -> QuicTraffic {
        QuicTraffic {
            datagrams_sent: self.datagrams_sent.saturating_sub(before.datagrams_sent),
            datagrams_received: self
                .datagrams_received
                .saturating_sub(before.datagrams_received),
            acks_sent: self.acks_sent.saturating_sub(before.acks_sent),
            acks_received: self.acks_received.saturating_sub(before.acks_received),
            pings_received: self.pings_received.saturating_sub(before.pings_received),
            max_streams_received: self
                .max_streams_received
                .saturating_sub(before.max_streams_received),
            lost_packets: self.lost_packets.saturating_sub(before.lost_packets),
        }
    }
}

impl Report {
    /// Errors and mismatches over requests sent.
    pub fn error_rate(&self) -> f64 {
        let bad = self.errors.values().sum::<u64>() + self.mismatches;
        bad as f64 / self.sent.max(1) as f64
    }
}

/// One terminal's connection, owned by its shard.
enum Conn {
    Quic(Client),
    Redis(redis::aio::MultiplexedConnection),
}

/// How one request ended.
enum Outcome {
    Ok,
    Mismatch,
    /// A failure of this kind, and why, where there is more to say (a
    /// transport error, the server's reason: never personal data).
    Error(&'static str, Option<String>),
}

/// One request, answered or failed, as its shard records it.
struct Done {
    kind: Kind,
    /// From the scheduled send time to the answer.
    micros: u64,
    outcome: Outcome,
}

/// How long after the last request's deadline a shard still waits for
/// the requests in flight (they end at their deadlines).
const CUTOFF_SLACK: Duration = Duration::from_secs(1);

/// Microseconds, up to the longest `--timeout-ms` and its slack.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 700_000_000, 3).expect("valid histogram bounds")
}

/// Reads UDP RcvbufErrors from /proc/net/snmp.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let col = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(col)?.parse().ok()
}

/// Terminal credentials (certificate, key) found in `certs/terminals`,
/// sorted.
/// The first `n` terminal credentials (certificate, key) of a `qualcache
/// certs` folder.
pub fn terminal_certs(certs: &std::path::Path, n: usize) -> Result<Vec<(PathBuf, PathBuf)>> {
    let dir = certs.join("terminals");
    let mut pems: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pem"))
        .collect();
    pems.sort();
    if pems.len() < n {
        bail!(
            "{} has {} terminal certificates; {n} terminals need as many (qualcache certs --out {} --terminals {n})",
            dir.display(),
            pems.len(),
            certs.display()
        );
    }
    pems.truncate(n);
    Ok(pems
        .into_iter()
        .map(|p| (p.clone(), p.with_extension("key")))
        .collect())
}

/// Binds a client UDP endpoint with large buffers, on any local address
/// of the server's family.
fn client_endpoint(server: SocketAddr) -> Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: SocketAddr = if server.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(8 << 20)?;
    socket.set_send_buffer_size(8 << 20)?;
    socket.bind(&addr.into())?;
    let runtime = quinn::default_runtime().context("no async runtime")?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        runtime,
    )?)
}

/// Handshakes a shard runs at once while connecting.
const CONCURRENT_HANDSHAKES: usize = 128;

/// How often a shard reports its answers (timeline, progress bar).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What one shard is given: its share of the terminals and of the client
/// endpoints, and everything it needs to run the schedule alone.
struct ShardPlan {
    index: usize,
    target: Target,
    /// Certificate and key of each of its terminals (QUIC targets).
    creds: Vec<(PathBuf, PathBuf)>,
    /// Its terminals (for Redis, which has no certificates).
    terminals: usize,
    ca: PathBuf,
    endpoints: usize,
    profile: Profile,
    /// Its share of the offered rate.
    share: f64,
    timeout: Duration,
    seed: u64,
    server_name: String,
    card_key: Arc<qualcache::model::CardKey>,
    workload: Arc<Workload>,
}

/// A shard's figures, merged into the report.
struct ShardFigures {
    all: Histogram<u64>,
    /// How late each request left after its scheduled time.
    lag: Histogram<u64>,
    by_kind: BTreeMap<Kind, Histogram<u64>>,
    errors: BTreeMap<&'static str, u64>,
    /// The first reason seen for each kind of failure.
    examples: BTreeMap<&'static str, String>,
    sent: u64,
    answered: u64,
    mismatches: u64,
    quic: Option<QuicTraffic>,
}

impl ShardFigures {
    fn new() -> ShardFigures {
        ShardFigures {
            all: new_histogram(),
            lag: new_histogram(),
            by_kind: BTreeMap::new(),
            errors: BTreeMap::new(),
            examples: BTreeMap::new(),
            sent: 0,
            answered: 0,
            mismatches: 0,
            quic: None,
        }
    }

    fn record(&mut self, d: Done, window: &mut Window) {
        match d.outcome {
            Outcome::Ok => self.answered += 1,
            Outcome::Mismatch => {
                self.answered += 1;
                self.mismatches += 1;
                window.mismatches += 1;
            }
            // A failed request still took its time: leaving it out of
            // the histograms would hide the tail (timeouts most of all).
            Outcome::Error(e, reason) => {
                *self.errors.entry(e).or_default() += 1;
                if let Some(reason) = reason {
                    self.examples.entry(e).or_insert(reason);
                }
                window.errors += 1;
            }
        }
        let v = d.micros.max(1);
        self.all.saturating_record(v);
        self.by_kind
            .entry(d.kind)
            .or_insert_with(new_histogram)
            .saturating_record(v);
        window.latency.saturating_record(v);
    }

    /// `n` requests still in flight when the shard stops waiting (past
    /// every request's own deadline, so normally none), each at least
    /// `waited` late: timeouts, in the latency of all requests at that
    /// lower bound.
    fn record_unanswered(&mut self, n: u64, waited: Duration, window: &mut Window) {
        if n == 0 {
            return;
        }
        *self.errors.entry("timeout").or_default() += n;
        window.errors += n;
        let v = (waited.as_micros() as u64).max(1);
        let _ = self.all.record_n(v.min(self.all.high()), n);
        let _ = window.latency.record_n(v.min(window.latency.high()), n);
    }
}

/// A shard's answers since its last progress report.
struct Window {
    latency: Histogram<u64>,
    errors: u64,
    mismatches: u64,
}

impl Window {
    fn new() -> Window {
        Window {
            latency: new_histogram(),
            errors: 0,
            mismatches: 0,
        }
    }

    /// This window as the `n`th second of the run.
    fn second(&self, n: usize) -> Second {
        let ended = self.latency.len();
        Second {
            t_s: n as f64,
            answered_per_s: ended.saturating_sub(self.errors) as f64,
            p99_ms: if ended == 0 {
                0.0
            } else {
                self.latency.value_at_quantile(0.99) as f64 / 1000.0
            },
            errors: self.errors,
        }
    }

    fn add(&mut self, other: &Window) {
        let _ = self.latency.add(&other.latency);
        self.errors += other.errors;
        self.mismatches += other.mismatches;
    }
}

/// The channels between the coordinator and one shard.
struct ShardLink {
    /// The shard's connections are up (with their handshake times).
    ready: oneshot::Sender<Result<Histogram<u64>>>,
    /// When the schedule starts; dropped if another shard failed.
    start: oneshot::Receiver<tokio::time::Instant>,
    /// The shard's answers every `PROGRESS_EVERY` (timeline, progress bar).
    progress: mpsc::UnboundedSender<Window>,
    /// The figures, once the schedule has run.
    done: oneshot::Sender<Result<ShardFigures>>,
}

/// Runs the load and returns the report.
///
/// The terminals are dealt to `threads` shards. A shard is a thread with
/// a single-threaded runtime that owns its terminals' connections and its
/// client endpoints, draws the merged Poisson arrivals of its terminals
/// (a Poisson process of their summed rate, each arrival given to one of
/// them at random: the same process per terminal), sends each request at
/// its time, checks the answers and records them in its own histograms.
/// Nothing crosses threads per request (no task spawn, no channel, no
/// wake-up of another worker), so the generator stays cheap beside the
/// server it loads.
pub async fn run(opts: &RunOptions, workload: Arc<Workload>) -> Result<Report> {
    let quic = !matches!(opts.target, Target::Redis(_));
    let creds = if quic {
        terminal_certs(&opts.certs, opts.terminals)?
    } else {
        Vec::new()
    };
    let shards = opts.threads.clamp(1, opts.terminals.max(1));
    let endpoints = opts.endpoints.max(1);
    let card_key = Arc::new(opts.card_key.clone());
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<Window>();
    let (mut readies, mut starts, mut dones, mut threads) = (vec![], vec![], vec![], vec![]);
    for g in 0..shards {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (start_tx, start_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        readies.push(ready_rx);
        starts.push(start_tx);
        dones.push(done_rx);
        let terminals = (g..opts.terminals).step_by(shards).count();
        let plan = ShardPlan {
            index: g,
            target: opts.target.clone(),
            creds: creds.iter().skip(g).step_by(shards).cloned().collect(),
            terminals,
            ca: opts.certs.join("ca.pem"),
            // Each shard's share of the endpoints, at least one.
            endpoints: ((g..endpoints).step_by(shards).count()).max(1),
            profile: opts.profile,
            share: terminals as f64 / opts.terminals.max(1) as f64,
            timeout: opts.timeout,
            seed: opts.seed,
            server_name: opts.server_name.clone(),
            card_key: card_key.clone(),
            workload: workload.clone(),
        };
        let link = ShardLink {
            ready: ready_tx,
            start: start_rx,
            progress: progress_tx.clone(),
            done: done_tx,
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("loadtest-{g}"))
                .spawn(move || shard_thread(plan, link))
                .context("starting a load thread")?,
        );
    }
    drop(progress_tx);

    // Every shard connects its terminals; the schedule starts when all are
    // up, or not at all.
    let mut connect = new_histogram();
    let mut failure = None;
    for r in readies {
        match r.await {
            Ok(Ok(h)) => {
                let _ = connect.add(&h);
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert_with(|| anyhow::anyhow!("a load thread stopped"));
            }
        }
    }
    if let Some(e) = failure {
        drop(starts);
        for t in threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        return Err(e);
    }

    let before = udp_rcvbuf_errors();
    let total = opts.profile.seconds();
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    for s in starts {
        let _ = s.send(start);
    }
    let timeline = watch(&mut progress_rx, start, total, opts.progress).await;
    let mut figures = Vec::with_capacity(shards);
    for d in dones {
        figures.push(d.await.context("a load thread stopped")??);
    }
    let after = udp_rcvbuf_errors();
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }

    let mut all = new_histogram();
    let mut lag = new_histogram();
    let mut by_kind: BTreeMap<Kind, Histogram<u64>> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut error_examples: BTreeMap<String, String> = BTreeMap::new();
    let (mut sent, mut answered, mut mismatches) = (0, 0, 0);
    let mut traffic: Option<QuicTraffic> = None;
    for f in &figures {
        let _ = all.add(&f.all);
        let _ = lag.add(&f.lag);
        for (k, h) in &f.by_kind {
            let _ = by_kind.entry(*k).or_insert_with(new_histogram).add(h);
        }
        for (e, n) in &f.errors {
            *errors.entry((*e).to_string()).or_default() += n;
        }
        for (e, why) in &f.examples {
            error_examples
                .entry((*e).to_string())
                .or_insert_with(|| why.clone());
        }
        sent += f.sent;
        answered += f.answered;
        mismatches += f.mismatches;
        if let Some(q) = f.quic {
            traffic = Some(traffic.unwrap_or_default().plus(q));
        }
    }
    Ok(Report {
        target: opts.target.clone(),
        terminals: opts.terminals,
        endpoints: if quic { endpoints.max(shards) } else { 0 },
        threads: shards,
        profile: opts.profile,
        seconds: total,
        sent,
        answered,
        throughput_rps: answered as f64 / total,
        latency: latency(&all),
        by_kind: by_kind.iter().map(|(k, h)| (*k, latency(h))).collect(),
        distribution: std::iter::once(("all".to_string(), distribution(&all)))
            .chain(
                by_kind
                    .iter()
                    .map(|(k, h)| (k.name().to_string(), distribution(h))),
            )
            .collect(),
        timeline,
        errors,
        error_examples,
        mismatches,
        connect: latency(&connect),
        send_lag: latency(&lag),
        udp_rcvbuf_errors: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
        quic: traffic,
    })
}

/// Collects the shards' windows until every shard is done: second by
/// second for the report's timeline and, with `bar`, a progress bar
/// (elapsed time, answers per second and p99 of the last half second,
/// errors and mismatches so far).
async fn watch(
    windows: &mut mpsc::UnboundedReceiver<Window>,
    start: tokio::time::Instant,
    total: f64,
    bar: bool,
) -> Vec<Second> {
    let bar = bar.then(|| {
        let bar = indicatif::ProgressBar::new((total * 1000.0) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let (mut window, mut since) = (Window::new(), Instant::now());
    let (mut errors, mut mismatches) = (0, 0);
    let mut timeline = Vec::new();
    let mut second = Window::new();
    while let Some(w) = windows.recv().await {
        // A window covers the shard's last `PROGRESS_EVERY`: it counts in
        // the second its middle falls in.
        let elapsed = start.elapsed().as_secs_f64() - PROGRESS_EVERY.as_secs_f64() / 2.0;
        // (Requests that end after the schedule, by their deadlines at
        // the latest, count in its last second.)
        while (timeline.len() + 1) as f64 <= elapsed.min(total.ceil() - 1.0) {
            timeline.push(second.second(timeline.len() + 1));
            second = Window::new();
        }
        second.add(&w);
        window.add(&w);
        let dt = since.elapsed();
        if dt >= Duration::from_millis(500) {
            errors += window.errors;
            mismatches += window.mismatches;
            if let Some(bar) = &bar {
                bar.set_position(start.elapsed().as_millis() as u64);
                bar.set_message(format!(
                    "{:>8.0} answers/s  p99 {:>7.2} ms  errors {errors}  mismatches {mismatches}",
                    window.latency.len() as f64 / dt.as_secs_f64(),
                    window.latency.value_at_quantile(0.99) as f64 / 1000.0,
                ));
            }
            window = Window::new();
            since = Instant::now();
        }
    }
    if !second.latency.is_empty() {
        timeline.push(second.second(timeline.len() + 1));
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    timeline
}

/// A shard's thread: its own single-threaded runtime.
fn shard_thread(plan: ShardPlan, link: ShardLink) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(shard(plan, link)),
        Err(e) => {
            let _ = link
                .ready
                .send(Err(anyhow::Error::new(e).context("starting a runtime")));
        }
    }
}

/// Connects a shard's terminals; returns them with their handshake times.
async fn connect(
    plan: &ShardPlan,
    endpoints: &mut Vec<quinn::Endpoint>,
) -> Result<(Vec<Conn>, Histogram<u64>)> {
    let mut times = new_histogram();
    let mut clients = Vec::with_capacity(plan.terminals);
    match &plan.target {
        Target::Qualcache(addr) | Target::Echo(addr) => {
            let addr = *addr;
            for _ in 0..plan.endpoints {
                endpoints.push(client_endpoint(addr).context("binding a client endpoint")?);
            }
            let endpoints = &*endpoints;
            let mut handshakes = stream::iter(plan.creds.iter().enumerate())
                .map(|(i, (cert, key))| async move {
                    let config = qualcache::tls::client_config(&plan.ca, cert, key)?;
                    let endpoint = endpoints[i % endpoints.len()].clone();
                    let t0 = Instant::now();
                    let client = Client::connect_on(endpoint, addr, &plan.server_name, config)
                        .await
                        .context("connecting a terminal")?;
                    anyhow::Ok((Conn::Quic(client), t0.elapsed()))
                })
                .buffer_unordered(CONCURRENT_HANDSHAKES);
            while let Some(done) = handshakes.next().await {
                let (client, took) = done?;
                clients.push(client);
                times.record(took.as_micros().max(1) as u64)?;
            }
        }
        Target::Redis(url) => {
            let client =
                redis::Client::open(url.expose()).with_context(|| format!("redis URL {url}"))?;
            let client = &client;
            let mut handshakes = stream::iter(0..plan.terminals)
                .map(|_| async move {
                    let t0 = Instant::now();
                    let con = client
                        .get_multiplexed_async_connection()
                        .await
                        .with_context(|| format!("connecting to {url}"))?;
                    anyhow::Ok((Conn::Redis(con), t0.elapsed()))
                })
                .buffer_unordered(CONCURRENT_HANDSHAKES);
            while let Some(done) = handshakes.next().await {
                let (con, took) = done?;
                clients.push(con);
                times.record(took.as_micros().max(1) as u64)?;
            }
        }
    }
    Ok((clients, times))
}

/// One shard: connect, wait for the start, run the schedule, report.
async fn shard(plan: ShardPlan, link: ShardLink) {
    let mut endpoints = Vec::new();
    let clients = match connect(&plan, &mut endpoints).await {
        Ok((clients, times)) => {
            if link.ready.send(Ok(times)).is_err() {
                return;
            }
            clients
        }
        Err(e) => {
            let _ = link.ready.send(Err(e));
            return;
        }
    };
    if let Ok(start) = link.start.await {
        let _ = link
            .done
            .send(schedule(&plan, &clients, start, link.progress).await);
    }
    for c in &clients {
        if let Conn::Quic(c) = c {
            c.close_now();
        }
    }
    for e in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(5), e.wait_idle()).await;
    }
}

/// Sends a shard's requests at their scheduled times and records the
/// answers. Requests in flight are polled by this task itself; each ends
/// at its deadline (`timeout` after its scheduled time) at the latest, so
/// the shard is done soon after the schedule's end plus the timeout.
async fn schedule(
    plan: &ShardPlan,
    clients: &[Conn],
    start: tokio::time::Instant,
    progress: mpsc::UnboundedSender<Window>,
) -> Result<ShardFigures> {
    let check = !matches!(plan.target, Target::Echo(_));
    let total = plan.profile.seconds();
    let at = |t: f64| start + Duration::from_secs_f64(t);
    let mut rng = Rng::new(plan.seed, plan.index as u64);
    let mut figures = ShardFigures::new();
    let mut window = Window::new();
    let traffic_before = QuicTraffic::of(clients);
    let mut in_flight = FuturesUnordered::new();
    let mut report = tokio::time::interval_at(start + PROGRESS_EVERY, PROGRESS_EVERY);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pacer = Pacer::new().context("creating the schedule's timer")?;
    let mut t = rng.exp((plan.profile.rate_at(0.0) * plan.share).max(1e-6));
    let mut sending = t < total && !clients.is_empty();
    pacer.arm(if sending { at(t) } else { start })?;
    loop {
        tokio::select! {
            biased;
            fired = pacer.wait() => {
                fired?;
                if !sending {
                    // The end of the schedule plus the timeout: whatever is
                    // still in flight has timed out.
                    figures.record_unanswered(
                        in_flight.len() as u64,
                        plan.timeout + CUTOFF_SLACK,
                        &mut window,
                    );
                    break;
                }
                // Every request that has come due goes out now.
                let now = tokio::time::Instant::now();
                while at(t) <= now {
                    figures.lag.saturating_record((now - at(t)).as_micros().max(1) as u64);
                    let conn = &clients[rng.below(clients.len())];
                    let planned = plan.workload.next(&mut rng);
                    in_flight.push(request(conn, planned, at(t), plan.timeout, check, plan));
                    figures.sent += 1;
                    t += rng.exp((plan.profile.rate_at(t) * plan.share).max(1e-6));
                    if t >= total {
                        sending = false;
                        break;
                    }
                }
                pacer.arm(if sending { at(t) } else { at(total) + plan.timeout + CUTOFF_SLACK })?;
            }
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                figures.record(done, &mut window);
            }
            _ = report.tick() => {
                let _ = progress.send(std::mem::replace(&mut window, Window::new()));
            }
        }
        if !sending && in_flight.is_empty() {
            break;
        }
    }
    let _ = progress.send(window);
    figures.quic = QuicTraffic::of(clients)
        .zip(traffic_before)
        .map(|(a, b)| a.since(b));
    Ok(figures)
}

/// Sends one planned request and judges its answer.
async fn request(
    conn: &Conn,
    planned: Planned,
    scheduled: tokio::time::Instant,
    timeout: Duration,
    check: bool,
    plan: &ShardPlan,
) -> Done {
    // Bounded here, so a request never answered is recorded at its own
    // deadline, with its kind, and does not stay in flight.
    let answered = tokio::time::timeout_at(scheduled + timeout, async {
        match conn {
            Conn::Quic(client) => match client.try_request_raw(&planned.bytes).await {
                // Refused by flow control, at once: the server sheds load.
                Err(qualcache::client::ClientError::NoCredit) => Outcome::Error("no_credit", None),
                Err(e) => Outcome::Error("stream", Some(e.to_string())),
                Ok(_) if !check => Outcome::Ok,
                Ok(bytes) => match <Statuses as prost::Message>::decode(&bytes[..]) {
                    Ok(resp) => judge(&planned, &plan.workload, &resp),
                    Err(e) => Outcome::Error("decode", Some(e.to_string())),
                },
            },
            Conn::Redis(con) => {
                match redis_get(&mut con.clone(), &planned, &plan.workload, &plan.card_key).await {
                    Err(e) => Outcome::Error("redis", Some(e.to_string())),
                    Ok(statuses)
                        if planned.kind != Kind::Batch
                            && statuses == [pb::Status::InvalidRequest as i32] =>
                    {
                        Outcome::Error("invalid_request", None)
                    }
                    Ok(statuses) => verdict(&planned, &plan.workload, statuses.into_iter()),
                }
            }
        }
    })
    .await;
    let elapsed = scheduled.elapsed();
    Done {
        kind: planned.kind,
        micros: elapsed.as_micros() as u64,
        outcome: match answered {
            Ok(outcome) if elapsed <= timeout => outcome,
            _ => Outcome::Error("timeout", None),
        },
    }
}

/// The statuses Redis gives for a plan's lookups (GET, or MGET for a batch).
async fn redis_get(
    con: &mut redis::aio::MultiplexedConnection,
    planned: &Planned,
    workload: &Workload,
    card_key: &qualcache::model::CardKey,
) -> redis::RedisResult<Vec<i32>> {
    use crate::redis_peer::{key, missing_status};
    let lookups = || planned.items().iter().map(|&i| &workload.probe(i).lookup);
    // A lookup whose key does not parse is asked of nobody: the daemon
    // answers it INVALID_REQUEST, and so does this peer.
    let keys: Vec<Option<String>> = lookups().map(|l| key(l, planned.as_of, card_key)).collect();
    let asked: Vec<&String> = keys.iter().flatten().collect();
    let mut values: std::vec::IntoIter<Option<Vec<u8>>> = match asked[..] {
        [] => Vec::new(),
        [one] => vec![redis::cmd("GET").arg(one).query_async(con).await?],
        _ => redis::cmd("MGET").arg(&asked).query_async(con).await?,
    }
    .into_iter();
    Ok(lookups()
        .zip(&keys)
        .map(|(l, k)| match k.as_ref().map(|_| values.next().flatten()) {
            None => pb::Status::InvalidRequest as i32,
            Some(None) => missing_status(l),
            Some(Some(bytes)) => {
                <pb::Answer as prost::Message>::decode(&bytes[..]).map_or(-1, |a| a.status)
            }
        })
        .collect())
}

/// The part of a `Response` the generator checks: the statuses (prost
/// skips the other fields, so checking an answer allocates nothing for
/// the qualification it carries).
#[derive(Clone, PartialEq, prost::Message)]
struct Statuses {
    #[prost(int32, tag = "1")]
    status: i32,
    /// Empty unless the request failed.
    #[prost(string, tag = "2")]
    reason: String,
    #[prost(message, optional, tag = "4")]
    answer: Option<AnswerStatus>,
    #[prost(message, repeated, tag = "5")]
    answers: Vec<AnswerStatus>,
}

/// The status of one `Answer`.
#[derive(Clone, PartialEq, prost::Message)]
struct AnswerStatus {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// Compares an answer with the plan's expectations.
fn judge(planned: &Planned, workload: &Workload, resp: &Statuses) -> Outcome {
    const OVERLOADED: i32 = pb::Status::Overloaded as i32;
    const UNAVAILABLE: i32 = pb::Status::Unavailable as i32;
    const INVALID: i32 = pb::Status::InvalidRequest as i32;
    match resp.status {
        OVERLOADED => return Outcome::Error("overloaded", Some(resp.reason.clone())),
        UNAVAILABLE => return Outcome::Error("unavailable", Some(resp.reason.clone())),
        INVALID => return Outcome::Error("invalid_request", Some(resp.reason.clone())),
        _ => {}
    }
    // The response's own status is OK for a batch and its answer's
    // status for a single lookup: anything else is a wrong answer too.
    match planned.kind {
        Kind::Batch if resp.status != pb::Status::Ok as i32 => Outcome::Mismatch,
        Kind::Batch => verdict(planned, workload, resp.answers.iter().map(|a| a.status)),
        _ if resp.answer.as_ref().map(|a| a.status) != Some(resp.status) => Outcome::Mismatch,
        _ => verdict(planned, workload, resp.answer.iter().map(|a| a.status)),
    }
}

/// Whether `statuses` are exactly the statuses the plan's probes expect.
fn verdict(planned: &Planned, workload: &Workload, statuses: impl Iterator<Item = i32>) -> Outcome {
    let mut expected = planned
        .items()
        .iter()
        .map(|&i| i32::from(workload.probe(i).expect.code()));
    let mut statuses = statuses;
    loop {
        match (statuses.next(), expected.next()) {
            (None, None) => return Outcome::Ok,
            (Some(got), Some(want)) if got == want => {}
            _ => return Outcome::Mismatch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Mix;
    use qualcache::model::{Date, Status};
    use qualcache::probe::{Probe, ProbeLookup};

    fn workload(batch: f64) -> Workload {
        let probes = [
            ("A", Status::Valid),
            ("B", Status::Lost),
            ("C", Status::CardNotRegistered),
        ]
        .into_iter()
        .map(|(serial, expect)| Probe {
            case: "test".into(),
            lookup: ProbeLookup::Card {
                serial: serial.into(),
            },
            as_of: Date::from_ymd(2026, 11, 1).unwrap(),
            expect,
            expect_key: None,
            expect_newer_key: None,
            expect_matches: None,
        })
        .collect();
        let mix = Mix {
            card: 1.0,
            batch,
            batch_size: 5,
            miss: 0.3,
            lost: 0.3,
        };
        Workload::new(probes, mix).unwrap()
    }

    /// A full `Answer`, as the daemon sends it, with a qualification the
    /// slim decoding must skip.
    fn answer(status: i32) -> pb::Answer {
        pb::Answer {
            status,
            qualification: Some(pb::Qualification {
                insurer_number: "06130488".into(),
                name: "山田　太郎".into(),
                birth_date: 19800101,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn judged(planned: &Planned, w: &Workload, resp: &pb::Response) -> Outcome {
        let bytes = prost::Message::encode_to_vec(resp);
        let slim = <Statuses as prost::Message>::decode(&bytes[..]).unwrap();
        judge(planned, w, &slim)
    }

    fn expected(planned: &Planned, w: &Workload) -> Vec<i32> {
        planned
            .items()
            .iter()
            .map(|&i| i32::from(w.probe(i).expect.code()))
            .collect()
    }

    #[test]
    fn a_wrong_single_answer_is_a_mismatch() {
        let w = workload(0.0);
        let mut rng = Rng::new(3, 0);
        for _ in 0..20 {
            let p = w.next(&mut rng);
            let want = expected(&p, &w)[0];
            let right = pb::Response {
                status: want,
                answer: Some(answer(want)),
                ..Default::default()
            };
            assert!(matches!(judged(&p, &w, &right), Outcome::Ok));
            let wrong_status = if want == 1 { 4 } else { 1 };
            let wrong = pb::Response {
                status: wrong_status,
                answer: Some(answer(wrong_status)),
                ..Default::default()
            };
            assert!(matches!(judged(&p, &w, &wrong), Outcome::Mismatch));
            let missing = pb::Response {
                status: want,
                ..Default::default()
            };
            assert!(matches!(judged(&p, &w, &missing), Outcome::Mismatch));
            // The right answer under another response status.
            let disagreeing = pb::Response {
                status: wrong_status,
                answer: Some(answer(want)),
                ..Default::default()
            };
            assert!(matches!(judged(&p, &w, &disagreeing), Outcome::Mismatch));
        }
    }

    #[test]
    fn a_batch_must_answer_every_item_in_order() {
        let w = workload(1.0);
        let mut rng = Rng::new(4, 0);
        let p = w.next(&mut rng);
        assert_eq!(p.kind, Kind::Batch);
        let want = expected(&p, &w);
        let batch = |statuses: &[i32]| pb::Response {
            status: pb::Status::Ok as i32,
            answers: statuses.iter().map(|&s| answer(s)).collect(),
            ..Default::default()
        };
        assert!(matches!(judged(&p, &w, &batch(&want)), Outcome::Ok));
        let mut one_wrong = want.clone();
        one_wrong[3] = if want[3] == 1 { 2 } else { 1 };
        assert!(matches!(
            judged(&p, &w, &batch(&one_wrong)),
            Outcome::Mismatch
        ));
        assert!(matches!(
            judged(&p, &w, &batch(&want[..4])),
            Outcome::Mismatch
        ));
        let mut longer = want.clone();
        longer.push(1);
        assert!(matches!(judged(&p, &w, &batch(&longer)), Outcome::Mismatch));
        // The right statuses in another order.
        let j = (1..want.len())
            .find(|&j| want[j] != want[0])
            .expect("the batch mixes statuses");
        let mut swapped = want.clone();
        swapped.swap(0, j);
        assert!(matches!(
            judged(&p, &w, &batch(&swapped)),
            Outcome::Mismatch
        ));
        // A batch response whose own status is not OK.
        let mut not_ok = batch(&want);
        not_ok.status = pb::Status::Valid as i32;
        assert!(matches!(judged(&p, &w, &not_ok), Outcome::Mismatch));
    }

    #[test]
    fn protocol_failures_are_errors_not_mismatches() {
        let w = workload(0.0);
        let p = w.next(&mut Rng::new(5, 0));
        for (status, kind) in [
            (pb::Status::Overloaded, "overloaded"),
            (pb::Status::Unavailable, "unavailable"),
            (pb::Status::InvalidRequest, "invalid_request"),
        ] {
            let resp = pb::Response {
                status: status as i32,
                reason: "why".into(),
                ..Default::default()
            };
            assert!(
                matches!(
                    judged(&p, &w, &resp),
                    Outcome::Error(k, Some(why)) if k == kind && why == "why"
                ),
                "{status:?}"
            );
        }
    }
}
