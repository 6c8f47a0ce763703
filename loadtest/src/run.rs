//! The load run: connect every terminal, send requests on an open-loop
//! Poisson schedule, check every answer, and collect the figures.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use qualcache::client::Client;
use qualcache::protocol::pb;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::workload::{Kind, Planned, Rng, Workload};

/// How the offered rate moves over time.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "profile", rename_all = "lowercase")]
pub enum Profile {
    /// The same rate throughout.
    Constant {
        /// Lookups per second, all terminals together.
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
    Redis(String),
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
    /// Client UDP endpoints the connections are spread over.
    pub endpoints: usize,
    /// Offered load over time.
    pub profile: Profile,
    /// A request slower than this counts as an error (timeout).
    pub timeout: Duration,
    /// Seed of the per-terminal random streams.
    pub seed: u64,
    /// Show a progress bar.
    pub progress: bool,
    /// Card key (the Redis peer keys cards by digest).
    pub card_key: qualcache::model::CardKey,
}

/// One terminal's connection.
#[derive(Clone)]
enum Conn {
    Quic(Arc<Client>),
    Redis(redis::aio::MultiplexedConnection),
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
    /// Failures by kind (timeout, stream, overloaded, unavailable, invalid).
    pub errors: BTreeMap<String, u64>,
    /// Answers with a status other than the probe's expectation.
    pub mismatches: u64,
    /// Connection set-up (handshake) time.
    pub connect: Latency,
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

/// One answered (or failed) request.
struct Sample {
    kind: Kind,
    micros: u64,
    outcome: Outcome,
}

enum Outcome {
    Ok,
    Mismatch,
    Error(&'static str),
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Reads UDP RcvbufErrors from /proc/net/snmp.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let col = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(col)?.parse().ok()
}

/// Terminal credentials found in `certs/terminals`, sorted.
fn terminal_certs(certs: &std::path::Path, n: usize) -> Result<Vec<(PathBuf, PathBuf)>> {
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
        .map(|p| (p.with_extension("key"), p))
        .map(|(k, p)| (p, k))
        .collect())
}

/// Binds a client UDP endpoint with large buffers.
fn client_endpoint() -> Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
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

/// Runs the load and returns the report.
pub async fn run(opts: &RunOptions, workload: Arc<Workload>) -> Result<Report> {
    let check = !matches!(opts.target, Target::Echo(_));
    let mut connect = new_histogram();
    let mut clients: Vec<Conn> = Vec::with_capacity(opts.terminals);
    let mut endpoints: Vec<quinn::Endpoint> = Vec::new();
    match &opts.target {
        Target::Qualcache(addr) | Target::Echo(addr) => {
            let addr = *addr;
            let creds = terminal_certs(&opts.certs, opts.terminals)?;
            let ca = opts.certs.join("ca.pem");
            endpoints = (0..opts.endpoints.max(1))
                .map(|_| client_endpoint())
                .collect::<Result<_>>()?;
            // A few hundred handshakes at a time.
            for (c, chunk) in creds.chunks(256).enumerate() {
                let mut tasks = Vec::new();
                for (j, (cert, key)) in chunk.iter().enumerate() {
                    let config = qualcache::tls::client_config(&ca, cert, key)?;
                    let endpoint = endpoints[(c * 256 + j) % endpoints.len()].clone();
                    tasks.push(tokio::spawn(async move {
                        let t0 = Instant::now();
                        let client = Client::connect_on(endpoint, addr, "localhost", config).await;
                        (client, t0.elapsed())
                    }));
                }
                for t in tasks {
                    let (client, took) = t.await?;
                    clients.push(Conn::Quic(Arc::new(
                        client.context("connecting a terminal")?,
                    )));
                    connect.record(took.as_micros().max(1) as u64)?;
                }
            }
        }
        Target::Redis(url) => {
            let client =
                redis::Client::open(url.as_str()).with_context(|| format!("redis URL {url}"))?;
            for _ in 0..opts.terminals {
                let t0 = Instant::now();
                let con = client
                    .get_multiplexed_async_connection()
                    .await
                    .with_context(|| format!("connecting to {url}"))?;
                connect.record(t0.elapsed().as_micros().max(1) as u64)?;
                clients.push(Conn::Redis(con));
            }
        }
    }

    let before = udp_rcvbuf_errors();
    let traffic_before = QuicTraffic::of(&clients);
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let total = opts.profile.seconds();
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    // Open-loop arrivals: each terminal sends as a Poisson process of
    // rate R/T. The terminals are dealt to a few schedulers, one per core;
    // a scheduler draws the merged arrivals of its terminals (a Poisson
    // process of the summed rate) and gives each arrival to one of them
    // at random, which is the same process per terminal. One timer wake
    // sends every request that has come due, instead of one wake per
    // request: the generator stays cheap beside the server it loads.
    let terminals = clients.len() as f64;
    let groups = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, clients.len().max(1));
    let mut schedulers = Vec::with_capacity(groups);
    let card_key = Arc::new(opts.card_key.clone());
    for g in 0..groups {
        let members: Vec<Conn> = clients.iter().skip(g).step_by(groups).cloned().collect();
        let (tx, workload) = (tx.clone(), workload.clone());
        let card_key = card_key.clone();
        let (profile, timeout, seed) = (opts.profile, opts.timeout, opts.seed);
        let share = members.len() as f64 / terminals;
        schedulers.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed, g as u64);
            let mut t = 0.0;
            let mut sent = 0u64;
            loop {
                t += rng.exp((profile.rate_at(t) * share).max(1e-6));
                if t >= total {
                    return sent;
                }
                let at = start + Duration::from_secs_f64(t);
                if at > tokio::time::Instant::now() {
                    tokio::time::sleep_until(at).await;
                }
                let client = members[rng.below(members.len())].clone();
                let planned = workload.next(&mut rng);
                sent += 1;
                tokio::spawn(request(
                    client,
                    planned,
                    at,
                    timeout,
                    check,
                    card_key.clone(),
                    tx.clone(),
                ));
            }
        }));
    }
    drop(tx);

    // Collect while the schedule runs.
    let progress = opts.progress.then(|| {
        let bar = indicatif::ProgressBar::new((total * 1000.0) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut all = new_histogram();
    let mut by_kind: BTreeMap<Kind, Histogram<u64>> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut answered, mut mismatches) = (0u64, 0u64);
    let mut window = new_histogram();
    let mut window_start = Instant::now();
    while let Some(s) = rx.recv().await {
        match s.outcome {
            Outcome::Ok => answered += 1,
            Outcome::Mismatch => {
                answered += 1;
                mismatches += 1;
            }
            Outcome::Error(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
        if !matches!(s.outcome, Outcome::Error(_)) {
            let v = s.micros.max(1);
            let _ = all.record(v);
            let _ = by_kind
                .entry(s.kind)
                .or_insert_with(new_histogram)
                .record(v);
            let _ = window.record(v);
        }
        if let Some(bar) = &progress {
            let dt = window_start.elapsed();
            if dt >= Duration::from_millis(500) {
                bar.set_position(start.elapsed().as_millis() as u64);
                bar.set_message(format!(
                    "{:>8.0} answers/s  p99 {:>7.2} ms  errors {}  mismatches {}",
                    window.len() as f64 / dt.as_secs_f64(),
                    window.value_at_quantile(0.99) as f64 / 1000.0,
                    errors.values().sum::<u64>(),
                    mismatches
                ));
                window.reset();
                window_start = Instant::now();
            }
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let mut sent = 0;
    for s in schedulers {
        sent += s.await?;
    }
    let after = udp_rcvbuf_errors();
    let quic = QuicTraffic::of(&clients)
        .zip(traffic_before)
        .map(|(a, b)| a.since(b));
    for c in &clients {
        if let Conn::Quic(c) = c {
            c.close_now();
        }
    }
    for e in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(5), e.wait_idle()).await;
    }
    Ok(Report {
        target: opts.target.clone(),
        terminals: opts.terminals,
        endpoints: endpoints.len(),
        profile: opts.profile,
        seconds: total,
        sent,
        answered,
        throughput_rps: answered as f64 / total,
        latency: latency(&all),
        by_kind: by_kind.iter().map(|(k, h)| (*k, latency(h))).collect(),
        errors,
        mismatches,
        connect: latency(&connect),
        udp_rcvbuf_errors: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
        quic,
    })
}

async fn request(
    conn: Conn,
    planned: Planned,
    scheduled: tokio::time::Instant,
    timeout: Duration,
    check: bool,
    card_key: Arc<qualcache::model::CardKey>,
    tx: mpsc::UnboundedSender<Sample>,
) {
    let outcome = match conn {
        Conn::Quic(client) => {
            match tokio::time::timeout(timeout, client.request_bytes(&planned.bytes)).await {
                Err(_) => Outcome::Error("timeout"),
                Ok(Err(qualcache::client::ClientError::Decode)) if !check => Outcome::Ok,
                Ok(Err(_)) => Outcome::Error("stream"),
                Ok(Ok(_)) if !check => Outcome::Ok,
                Ok(Ok(resp)) => judge(&planned, &resp),
            }
        }
        Conn::Redis(mut con) => {
            match tokio::time::timeout(timeout, redis_get(&mut con, &planned, &card_key)).await {
                Err(_) => Outcome::Error("timeout"),
                Ok(Err(_)) => Outcome::Error("redis"),
                Ok(Ok(statuses)) => {
                    let expected: Vec<i32> =
                        planned.expect.iter().map(|s| i32::from(s.code())).collect();
                    if statuses == expected {
                        Outcome::Ok
                    } else {
                        Outcome::Mismatch
                    }
                }
            }
        }
    };
    let micros = scheduled.elapsed().as_micros() as u64;
    let _ = tx.send(Sample {
        kind: planned.kind,
        micros,
        outcome,
    });
}

/// The statuses Redis gives for a plan's lookups (GET, or MGET for a batch).
async fn redis_get(
    con: &mut redis::aio::MultiplexedConnection,
    planned: &Planned,
    card_key: &qualcache::model::CardKey,
) -> redis::RedisResult<Vec<i32>> {
    use crate::redis_peer::{key, missing_status};
    let keys: Vec<String> = planned
        .lookups
        .iter()
        .map(|l| key(l, planned.as_of, card_key).unwrap_or_default())
        .collect();
    let values: Vec<Option<Vec<u8>>> = if keys.len() == 1 {
        vec![redis::cmd("GET").arg(&keys[0]).query_async(con).await?]
    } else {
        redis::cmd("MGET").arg(&keys).query_async(con).await?
    };
    Ok(planned
        .lookups
        .iter()
        .zip(values)
        .map(|(l, v)| match v {
            None => missing_status(l),
            Some(bytes) => {
                <pb::Answer as prost::Message>::decode(&bytes[..]).map_or(-1, |a| a.status)
            }
        })
        .collect())
}

/// Compares an answer with the plan's expectations.
fn judge(planned: &Planned, resp: &pb::Response) -> Outcome {
    const OVERLOADED: i32 = pb::Status::Overloaded as i32;
    const UNAVAILABLE: i32 = pb::Status::Unavailable as i32;
    const INVALID: i32 = pb::Status::InvalidRequest as i32;
    match resp.status {
        OVERLOADED => return Outcome::Error("overloaded"),
        UNAVAILABLE => return Outcome::Error("unavailable"),
        INVALID => return Outcome::Error("invalid_request"),
        _ => {}
    }
    let statuses: Vec<i32> = match planned.kind {
        Kind::Batch => resp.answers.iter().map(|a| a.status).collect(),
        _ => resp.answer.iter().map(|a| a.status).collect(),
    };
    let expected: Vec<i32> = planned.expect.iter().map(|s| i32::from(s.code())).collect();
    if statuses == expected {
        Outcome::Ok
    } else {
        Outcome::Mismatch
    }
}
