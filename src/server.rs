//! The QUIC driver of `qualcached`: accepts terminal connections, reads one
//! request per bidirectional stream, answers it with [`protocol::handle`]
//! on the current snapshot, and drains in-flight requests on shutdown. A
//! connection is one task, which also polls its requests in flight.
//!
//! [`serve`] takes the endpoint and the shutdown future from its caller, so
//! tests bind `127.0.0.1:0` and decide when to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use futures_util::stream::{FuturesUnordered, StreamExt};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{AuditMode, Auditor, Unaudited};
use crate::metrics::{HandshakeFailure, Metrics, RequestKind, RequestMetrics};
use crate::model::{CardKey, Date, InstitutionCode};
use crate::overlay::Overlay;
use crate::overload::Credit;
use crate::protocol::{self, Context, Limits};
use crate::snapshot::Snapshot;

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    /// The snapshot answering now. A reload swaps the whole `Arc`; a request
    /// keeps the snapshot it loaded until it is answered, and the old
    /// mapping is dropped with its last reader.
    snapshot: ArcSwapOption<Snapshot>,
    /// The persons changed since the snapshot was built (a database
    /// source's change feed), swapped whole like the snapshot.
    overlay: ArcSwapOption<Overlay>,
    /// Told at each snapshot swap.
    swapped: tokio::sync::Notify,
    /// Digests card serials; must be the key the snapshots were built with.
    card_key: CardKey,
    /// Request size and batch limits.
    limits: Limits,
    started: Instant,
    /// Open connections, reported by status requests.
    connections: AtomicU64,
    /// Requests being answered now, across all connections.
    in_flight: AtomicU64,
    /// Set when shutdown begins: from then on a request stays until
    /// its answer is acknowledged, so the drain covers it.
    draining: AtomicBool,
    /// Above this many requests in flight, new ones are answered
    /// OVERLOADED at once instead of queueing behind the others.
    max_in_flight: u64,
    request_timeout: Duration,
    /// Open connections per terminal (institution code): one terminal
    /// cannot take the server's connections from the others.
    per_terminal: DashMap<InstitutionCode, Arc<Terminal>>,
    /// The most connections one terminal may hold.
    max_connections_per_terminal: u32,
    /// The most requests in flight one terminal may have across its
    /// connections: past it, its own new requests are answered
    /// OVERLOADED, so it cannot take the others' share of
    /// `max_in_flight` by holding streams open.
    max_in_flight_per_terminal: u64,
    /// Handshakes in progress (accepted, not yet finished or failed).
    handshaking: AtomicU64,
    /// Past half of this many handshakes in progress, a connection
    /// attempt must prove its address (QUIC Retry) before it gets any
    /// state; past all of it, it is refused.
    max_handshakes: u64,
    /// How long a handshake may take before it is dropped.
    handshake_timeout: Duration,
    /// Stream credit per connection, lowered while the server is short of
    /// CPU; `None`: the configured credit always (no controller runs).
    credit: Option<Credit>,
    /// Build, reload and handshake counters.
    metrics: Metrics,
    /// Requests by kind and status, with latency; `None` when nothing
    /// reads them (no admin listener), so the request path records nothing.
    requests: Option<RequestMetrics>,
    /// The audit trail every lookup is handed to, if one is kept.
    audit: Option<Arc<Auditor>>,
}

impl Shared {
    /// State with no snapshot loaded yet (requests answer UNAVAILABLE).
    pub fn new(card_key: CardKey, limits: Limits) -> Shared {
        Shared {
            snapshot: ArcSwapOption::empty(),
            overlay: ArcSwapOption::empty(),
            swapped: tokio::sync::Notify::new(),
            card_key,
            limits,
            started: Instant::now(),
            connections: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            request_timeout: REQUEST_READ_TIMEOUT,
            per_terminal: DashMap::new(),
            max_connections_per_terminal: DEFAULT_MAX_CONNECTIONS_PER_TERMINAL,
            max_in_flight_per_terminal: DEFAULT_MAX_IN_FLIGHT_PER_TERMINAL,
            handshaking: AtomicU64::new(0),
            max_handshakes: DEFAULT_MAX_HANDSHAKES.into(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            credit: None,
            metrics: Metrics::new(),
            requests: None,
            audit: None,
        }
    }

    /// The same, handing every lookup to `audit` (in required mode a
    /// request that cannot be audited is answered UNAVAILABLE).
    pub fn with_audit(mut self, audit: Arc<Auditor>) -> Shared {
        self.audit = Some(audit);
        self
    }

    /// The audit trail, if one is kept.
    pub fn audit(&self) -> Option<&Auditor> {
        self.audit.as_deref()
    }

    /// The same, recording every request's kind, status and latency
    /// (read by [`requests`](Self::requests)).
    pub fn with_request_metrics(mut self) -> Shared {
        self.requests = Some(RequestMetrics::new());
        self
    }

    /// The request counters, if they are recorded.
    pub fn requests(&self) -> Option<&RequestMetrics> {
        self.requests.as_ref()
    }

    /// The same, granting each connection at most `max` streams (its
    /// configured credit) and less while the server is short of CPU
    /// (see [`crate::overload`]).
    pub fn with_adaptive_credit(self, max: u32) -> Shared {
        self.with_adaptive_credit_at(max, crate::overload::Thresholds::default())
    }

    /// [`with_adaptive_credit`](Self::with_adaptive_credit), cut and
    /// grown at `thresholds`.
    pub fn with_adaptive_credit_at(
        mut self,
        max: u32,
        thresholds: crate::overload::Thresholds,
    ) -> Shared {
        self.credit = Some(Credit::with_thresholds(max, thresholds));
        self
    }

    /// The adaptive stream credit, if the server runs one.
    pub fn credit(&self) -> Option<&Credit> {
        self.credit.as_ref()
    }

    /// Handshakes in progress.
    pub fn handshaking(&self) -> u64 {
        self.handshaking.load(Ordering::Relaxed)
    }

    /// The same, with at most `max` handshakes in progress (past half of
    /// it, attempts must prove their address first), each given `timeout`.
    pub fn with_handshake_limits(mut self, max: u32, timeout: Duration) -> Shared {
        self.max_handshakes = max.into();
        self.handshake_timeout = timeout;
        self
    }

    /// What to do with a connection attempt: the memory of handshakes in
    /// progress is bounded by `max_handshakes`, and past half of it only
    /// attempts from an address proven by a Retry token get any state.
    fn admission(&self, incoming: &quinn::Incoming) -> Admission {
        let n = self.handshaking.load(Ordering::Relaxed);
        let validated = incoming.remote_address_validated();
        if !validated && incoming.may_retry() && n >= self.max_handshakes / 2 {
            Admission::Retry
        } else if n >= self.max_handshakes {
            Admission::Refuse { validated }
        } else {
            Admission::Handshake
        }
    }

    /// Open terminal connections.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// When this state was made (the daemon's start).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The same, allowing `max` connections per terminal.
    pub fn with_max_connections_per_terminal(mut self, max: u32) -> Shared {
        self.max_connections_per_terminal = max;
        self
    }

    /// The same, allowing one terminal `max` requests in flight across
    /// its connections.
    pub fn with_max_in_flight_per_terminal(mut self, max: u64) -> Shared {
        self.max_in_flight_per_terminal = max;
        self
    }

    /// Counts a new connection of `terminal`; `None` if it has too many.
    fn admit(&self, terminal: InstitutionCode) -> Option<Arc<Terminal>> {
        // The entry holds the map shard's lock: the check and the count
        // are one step against other connects and closes of `terminal`.
        let entry = self.per_terminal.entry(terminal).or_default();
        if entry.connections.load(Ordering::Relaxed) >= self.max_connections_per_terminal {
            return None;
        }
        entry.connections.fetch_add(1, Ordering::Relaxed);
        Some(entry.value().clone())
    }

    /// Counts a connection of `terminal` as closed.
    fn release(&self, terminal: InstitutionCode) {
        // Under the shard's lock, like `admit`.
        self.per_terminal.remove_if(&terminal, |_, t| {
            t.connections.fetch_sub(1, Ordering::Relaxed) <= 1
        });
    }

    /// The same, shedding load above `max` requests in flight.
    pub fn with_max_in_flight(mut self, max: u64) -> Shared {
        self.max_in_flight = max;
        self
    }

    /// The same, answering INVALID_REQUEST to a request stream not
    /// finished within `timeout` ([`REQUEST_READ_TIMEOUT`] by default).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Shared {
        self.request_timeout = timeout;
        self
    }

    /// Makes `snapshot` the one answering; returns the one it replaces.
    pub fn swap(&self, snapshot: Arc<Snapshot>) -> Option<Arc<Snapshot>> {
        let old = self.snapshot.swap(Some(snapshot));
        self.swapped.notify_one();
        old
    }

    /// Resolves after the next [`swap`](Self::swap) (or at once if one
    /// happened since the last call returned): the change follower
    /// retires what the new snapshot covers.
    pub async fn snapshot_swapped(&self) {
        self.swapped.notified().await;
    }

    /// The snapshot answering now.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    /// Makes `overlay` the one answering over the snapshot (`None`: the
    /// snapshot alone).
    pub fn swap_overlay(&self, overlay: Option<Arc<Overlay>>) {
        self.overlay.store(overlay);
    }

    /// The overlay answering now.
    pub fn overlay(&self) -> Option<Arc<Overlay>> {
        self.overlay.load_full()
    }

    /// Build and reload counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The card key.
    pub fn card_key(&self) -> &CardKey {
        &self.card_key
    }

    /// Answers one encoded request from terminal `who`; says what kind it
    /// was. Its lookups go to the audit trail, if one is kept; in required
    /// mode, lookups that cannot be audited are not answered (UNAVAILABLE).
    fn answer(&self, bytes: &[u8], who: InstitutionCode) -> (RequestKind, protocol::pb::Response) {
        let snapshot = self.snapshot.load();
        let overlay = self.overlay.load();
        let ctx = Context {
            snapshot: snapshot.as_deref(),
            overlay: overlay.as_deref(),
            card_key: &self.card_key,
            today: Date::today_jst(),
            limits: self.limits,
            uptime_seconds: self.started.elapsed().as_secs(),
            now_unix: crate::model::date::unix_now(),
            connections: self.connections.load(Ordering::Relaxed),
            metrics: &self.metrics,
        };
        let Some(audit) = &self.audit else {
            return protocol::handle_bytes(&ctx, bytes, None);
        };
        let mut lookups = Vec::new();
        let (kind, response) = protocol::handle_bytes(&ctx, bytes, Some(&mut lookups));
        match audit.submit(who, lookups) {
            Err(why) if audit.mode() == AuditMode::Required => (
                kind,
                protocol::pb::Response {
                    status: protocol::pb::Status::Unavailable as i32,
                    reason: match why {
                        Unaudited::Full => "audit trail busy; retry later",
                        Unaudited::Failing => "audit trail unavailable; retry later",
                    }
                    .into(),
                    ..Default::default()
                },
            ),
            _ => (kind, response),
        }
    }
}

/// What the server keeps per terminal (institution code), shared by its
/// connections.
#[derive(Debug, Default)]
struct Terminal {
    /// Its open connections; changed only at connect and close, under the
    /// map shard's lock.
    connections: std::sync::atomic::AtomicU32,
    /// Its requests in flight, across its connections (only its own
    /// connections touch this line).
    in_flight: AtomicU64,
}

/// Default of [`Shared::with_max_in_flight_per_terminal`]: two
/// connections' worth of streams.
pub const DEFAULT_MAX_IN_FLIGHT_PER_TERMINAL: u64 = 128;

/// Default of [`Shared::with_max_connections_per_terminal`].
pub const DEFAULT_MAX_CONNECTIONS_PER_TERMINAL: u32 = 8;

/// How long a connection stays open at shutdown once its requests are
/// answered, so answers finished before shutdown began are delivered
/// (within the grace period).
const LINGER: Duration = Duration::from_millis(200);

/// Default of [`Shared::with_max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 16_384;

/// Default `max` of [`Shared::with_handshake_limits`]: a handshake in
/// progress holds about 50 KiB, so about 50 MiB at most.
pub const DEFAULT_MAX_HANDSHAKES: u32 = 1024;

/// Default `timeout` of [`Shared::with_handshake_limits`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often failed handshakes are summed up in the log (one line with
/// counts by reason, when there were any).
pub const HANDSHAKE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What [`Shared::admission`] decides for a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Start the handshake.
    Handshake,
    /// Answer with a Retry: a client that really is at its address comes
    /// back with a token; one spoofing it costs the server nothing more.
    Retry,
    /// Refuse: `max_handshakes` are in progress. An address not proven
    /// gets no answer at all (nothing to amplify).
    Refuse {
        /// Whether the address was proven (then CONNECTION_REFUSED is sent).
        validated: bool,
    },
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Binds a UDP socket with explicit buffer sizes (the kernel default drops
/// packets with a thousand busy connections) and makes a QUIC endpoint.
pub fn bind(
    addr: SocketAddr,
    config: quinn::ServerConfig,
    buffer_bytes: usize,
) -> std::io::Result<quinn::Endpoint> {
    let mut endpoints = bind_many(addr, config, buffer_bytes, 1)?;
    Ok(endpoints.remove(0))
}

/// Binds `count` endpoints to one address with `SO_REUSEPORT`: the kernel
/// spreads connections over the sockets by their address and port (all
/// packets of a connection reach the same socket), so the endpoints'
/// receive loops run on several cores. With port 0 the first socket picks
/// the port and the others join it.
///
/// `SO_REUSEPORT` would also let a second daemon (same user) join the
/// group and take a share of the terminals silently, so a fixed port is
/// first probed with a plain bind, without `SO_REUSEPORT`, which fails if
/// any socket holds the port; the probe is closed before the group binds.
/// A port in use is an [`ErrorKind::AddrInUse`](std::io::ErrorKind::AddrInUse)
/// error saying so.
pub fn bind_many(
    addr: SocketAddr,
    config: quinn::ServerConfig,
    buffer_bytes: usize,
    count: usize,
) -> std::io::Result<Vec<quinn::Endpoint>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    let in_use = |addr: SocketAddr, e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("address {addr} in use: is another qualcached running?"),
            )
        } else {
            e
        }
    };
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        probe.bind(&addr.into()).map_err(|e| in_use(addr, e))?;
        drop(probe);
    }
    let mut addr = addr;
    let mut endpoints = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if count > 1 {
            socket.set_reuse_port(true)?;
        }
        socket.set_recv_buffer_size(buffer_bytes)?;
        socket.set_send_buffer_size(buffer_bytes)?;
        socket.bind(&addr.into()).map_err(|e| in_use(addr, e))?;
        let (recv, send) = (socket.recv_buffer_size()?, socket.send_buffer_size()?);
        if recv < buffer_bytes && endpoints.is_empty() {
            tracing::warn!(
                requested = buffer_bytes,
                granted = recv,
                "UDP receive buffer smaller than requested (kernel limit net.core.rmem_max)"
            );
        }
        tracing::debug!(recv, send, "UDP socket buffers");
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config.clone()),
            socket.into(),
            runtime.clone(),
        )?;
        addr = endpoint.local_addr()?;
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}

/// Serves `endpoint` until `shutdown` completes, then stops accepting,
/// lets requests in flight finish for up to `grace`, and closes.
pub async fn serve(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    serve_many(vec![endpoint], shared, shutdown, grace).await;
}

/// [`serve`] over several endpoints (see [`bind_many`]).
pub async fn serve_many(
    endpoints: Vec<quinn::Endpoint>,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let summary = tokio::spawn(log_handshake_failures(
        shared.clone(),
        HANDSHAKE_LOG_INTERVAL,
    ));
    let controller = shared.credit.is_some().then(|| {
        let shared = shared.clone();
        // The endpoints share one port (`bind_many`).
        let port = endpoints
            .first()
            .and_then(|e| e.local_addr().ok())
            .map(|a| a.port());
        tokio::spawn(async move {
            if let Some(credit) = &shared.credit {
                credit.run(port, &shared.connections).await;
            }
        })
    });
    let acceptors: Vec<_> = endpoints
        .iter()
        .map(|endpoint| {
            tokio::spawn(accept(
                endpoint.clone(),
                shared.clone(),
                tracker.clone(),
                stop.clone(),
            ))
        })
        .collect();
    shutdown.await;
    tracing::info!("shutting down: no new connections or requests");
    let deadline = tokio::time::Instant::now() + grace;
    shared.draining.store(true, Ordering::SeqCst);
    // The acceptors now refuse new connections at once rather than
    // letting them wait for a handshake timeout.
    stop.cancel();
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "requests still running at the end of the grace period"
        );
    }
    for endpoint in &endpoints {
        endpoint.close(0u32.into(), b"server shutting down");
    }
    for acceptor in acceptors {
        acceptor.abort();
    }
    summary.abort();
    if let Some(c) = controller {
        c.abort();
    }
    for endpoint in &endpoints {
        endpoint.wait_idle().await;
    }
}

/// Accepts connections on one endpoint until `stop`, then refuses them.
async fn accept(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => match shared.admission(&incoming) {
                    Admission::Handshake => {
                        // Counted here, so the next attempt sees it.
                        shared.handshaking.fetch_add(1, Ordering::Relaxed);
                        tracker.spawn(connection(incoming, shared.clone(), stop.clone()));
                    }
                    Admission::Retry => {
                        shared.metrics.handshake_retries.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = incoming.retry() {
                            e.into_incoming().ignore();
                        }
                    }
                    Admission::Refuse { validated } => {
                        shared.metrics.handshake_failed(HandshakeFailure::Busy);
                        if validated {
                            incoming.refuse();
                        } else {
                            incoming.ignore();
                        }
                    }
                },
                None => return,
            },
        }
    }
    while let Some(incoming) = endpoint.accept().await {
        incoming.refuse();
    }
}

/// Sums up failed handshakes in the log every `every`: one line with the
/// counts by reason, when there were any (a line per failure would let a
/// flood of bad connection attempts flood the log).
async fn log_handshake_failures(shared: Arc<Shared>, every: Duration) {
    let counts =
        || -> Vec<(HandshakeFailure, u64)> { shared.metrics.handshake_failures().collect() };
    let retries = || shared.metrics.handshake_retries.load(Ordering::Relaxed);
    let (mut last, mut last_retries) = (counts(), retries());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let (now, now_retries) = (counts(), retries());
        let failed: Vec<String> = now
            .iter()
            .zip(&last)
            .filter(|((_, n), (_, l))| n > l)
            .map(|((why, n), (_, l))| format!("{}={}", why.name(), n - l))
            .collect();
        if !failed.is_empty() {
            tracing::info!(
                seconds = every.as_secs(),
                retries = now_retries - last_retries,
                failed = %failed.join(" "),
                "connection attempts refused"
            );
        }
        (last, last_retries) = (now, now_retries);
    }
}

async fn connection(incoming: quinn::Incoming, shared: Arc<Shared>, stop: CancellationToken) {
    let remote = incoming.remote_address();
    // Counted by the acceptor; uncounted when the handshake ends.
    let handshake = InFlight(&shared.handshaking);
    let result = tokio::time::timeout(shared.handshake_timeout, incoming).await;
    drop(handshake);
    let conn = match result {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            shared.metrics.handshake_failed(handshake_failure(&e));
            // Summed up by `log_handshake_failures`.
            tracing::debug!(%remote, error = %e, "handshake failed");
            return;
        }
        Err(_elapsed) => {
            // Dropping the handshake closes the connection.
            shared.metrics.handshake_failed(HandshakeFailure::Timeout);
            tracing::debug!(%remote, "handshake timed out");
            return;
        }
    };
    let institution = crate::tls::institution_code(&conn);
    let Some(institution) = institution else {
        shared
            .metrics
            .handshake_failed(HandshakeFailure::NoInstitutionCode);
        tracing::debug!(%remote, "client certificate has no valid institution code; closing");
        conn.close(1u32.into(), b"certificate has no institution code");
        return;
    };
    let Some(terminal) = shared.admit(institution) else {
        shared
            .metrics
            .handshake_failed(HandshakeFailure::TooManyConnections);
        tracing::debug!(%remote, %institution, "too many connections from one terminal; closing");
        conn.close(2u32.into(), b"too many connections for this terminal");
        return;
    };
    tracing::debug!(%remote, %institution, "terminal connected");
    shared.connections.fetch_add(1, Ordering::Relaxed);
    // One cancellation future and one accept future for the connection's
    // life: making them anew for every stream would lock shared state
    // (the token's, the connection's) each time.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let mut accept = std::pin::pin!(conn.accept_bi());
    // The connection's requests are polled by this task rather than
    // spawned: a request arrives whole in one packet and is answered on
    // its first poll, and a spawn would cost a task and, on the
    // multi-threaded runtime, often a wake-up of an idle worker that then
    // finds nothing to do (about 10 % of the daemon's CPU at 5,000
    // lookups/s, BENCHMARKS.md).
    let mut requests = FuturesUnordered::new();
    // The stream credit this connection was last given (its handshake's,
    // `START_CREDIT` when the credit is adaptive), and its own credit.
    let mut credit = shared
        .credit
        .as_ref()
        .map(|c| crate::overload::START_CREDIT.min(c.max()));
    // How this connection rounds the server's credit (`Credit::dither`),
    // and its streams per period (`Credit::accepted`).
    let dither = shared.credit.as_ref().map_or(0, |c| c.dither());
    let mut usage = crate::overload::Usage::default();
    let mut own = credit.unwrap_or(0);
    loop {
        tokio::select! {
            biased;
            Some(()) = requests.next(), if !requests.is_empty() => {}
            () = &mut cancelled => break,
            stream = &mut accept => {
                match stream {
                    Ok((send, recv)) => {
                        requests.push(request(send, recv, shared.clone(), &terminal, institution));
                        if let (Some(given), Some(c)) = (&mut credit, &shared.credit) {
                            own = crate::overload::own_credit(own, requests.len(), c.max());
                            let now = c.for_stream(&mut usage, dither, own);
                            if now != *given {
                                conn.set_max_concurrent_bi_streams(now.into());
                                *given = now;
                            }
                            c.given(now);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%institution, reason = %e, "connection ended");
                        break;
                    }
                }
                accept.set(conn.accept_bi());
            }
        }
    }
    // Requests accepted before the end are still answered (the tracker
    // waits for this task at shutdown).
    while requests.next().await.is_some() {}
    if stop.is_cancelled() {
        // Answers finished before shutdown began were not waited for, and
        // dropping the last handle of `conn` would close it at once: keep
        // it open a moment so they are delivered (or resent), unless the
        // terminal closes first. The tracker waits for this too, within
        // the grace period.
        let _ = tokio::time::timeout(LINGER, conn.closed()).await;
    }
    shared.connections.fetch_sub(1, Ordering::Relaxed);
    shared.release(institution);
}

/// How long a request stream may take to arrive whole (its sending side
/// finished) before it is answered INVALID_REQUEST; default of
/// [`Shared::with_request_timeout`].
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection's handshake failed, for the metrics.
fn handshake_failure(e: &quinn::ConnectionError) -> HandshakeFailure {
    match e {
        quinn::ConnectionError::TransportError(t) => {
            let code = u64::from(t.code);
            match code.checked_sub(0x100) {
                Some(alert @ 0..=0xff) => HandshakeFailure::of_tls_alert(alert as u8),
                _ => HandshakeFailure::Other,
            }
        }
        quinn::ConnectionError::TimedOut => HandshakeFailure::Timeout,
        _ => HandshakeFailure::Other,
    }
}

async fn request(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shared: Arc<Shared>,
    terminal: &Terminal,
    who: InstitutionCode,
) {
    // The request's first bytes are here (its stream was opened by them);
    // its latency runs from now to its answer written.
    let started = shared.requests.as_ref().map(|_| Instant::now());
    let limit = shared.limits.max_request_bytes;
    let in_flight = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    let _guard = InFlight(&shared.in_flight);
    let mine = terminal.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    let _mine = InFlight(&terminal.in_flight);
    let shed = if mine > shared.max_in_flight_per_terminal {
        Some("this terminal has too many requests in flight; retry later")
    } else if in_flight > shared.max_in_flight {
        Some("server overloaded; retry later")
    } else {
        None
    };
    let (kind, response) = if let Some(reason) = shed {
        let _ = recv.stop(0u32.into());
        (
            RequestKind::Unread,
            protocol::pb::Response {
                status: protocol::pb::Status::Overloaded as i32,
                reason: reason.into(),
                ..Default::default()
            },
        )
    } else {
        // A request arrives whole in a packet or a few, so the read is
        // normally done on its first poll: the timeout then costs a clock
        // read, and its timer is registered only if the read is pending.
        match tokio::time::timeout(shared.request_timeout, recv.read_to_end(limit)).await {
            Ok(Ok(bytes)) => shared.answer(&bytes, who),
            Ok(Err(quinn::ReadToEndError::TooLong)) => {
                let _ = recv.stop(0u32.into());
                (
                    RequestKind::Unread,
                    protocol::invalid(format!("request larger than {limit} bytes")),
                )
            }
            // The client reset the stream or the connection is gone:
            // nobody to answer.
            Ok(Err(_)) => return,
            // A stream never finished would hold its in-flight slot for
            // the connection's life.
            Err(_elapsed) => {
                let _ = recv.stop(0u32.into());
                (
                    RequestKind::Unread,
                    protocol::invalid(format!(
                        "request not finished within {} ms",
                        shared.request_timeout.as_millis()
                    )),
                )
            }
        }
    };
    if send.write_all(&response.encode_to_vec()).await.is_ok() {
        let _ = send.finish();
        if let (Some(m), Some(started)) = (&shared.requests, started) {
            m.record(kind, response.status, started.elapsed());
        }
        // The connection delivers the finished answer (and resends it if
        // lost) without this task. Once shutdown has begun, the task waits
        // for the acknowledgement, so the drain covers the answer; before
        // that, not waiting saves a wake-up per request.
        if shared.draining.load(Ordering::SeqCst) {
            let _ = send.stopped().await;
        }
    }
}
