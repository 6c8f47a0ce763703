//! The admin listener: plain HTTP/1.1 on its own small TCP listener beside
//! the QUIC data plane, for operators and load balancers.
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus / OpenMetrics text (`prometheus-client`, one registry, no globals) |
//! | `GET /healthz` | 200 `ok` while the process and its reload loop run, else 503 with the reason |
//! | `GET /readyz` | 200 `ready` while a snapshot is serving and the daemon is not draining, else 503 with the reason |
//!
//! Every metric is read at scrape time from the daemon's own state
//! ([`Shared`], its [`crate::metrics`] counters), so serving a scrape
//! touches the request path not at all. No label carries personal data
//! or an institution code.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;

use crate::audit::AuditMode;
use crate::metrics::{status_label, RequestKind, Timing, LATENCY_BOUNDS, STATUS_CODES};
use crate::server::Shared;

/// What the admin listener answers from: the daemon's shared state and
/// the registry built over it.
#[derive(Debug)]
pub struct Admin {
    shared: Arc<Shared>,
    /// The one registry: a collector reads `shared` at each scrape.
    registry: Registry,
    /// The reload loop's state, for `/healthz`: [`LOOP_STARTING`],
    /// [`LOOP_RUNNING`] or [`LOOP_ENDED`].
    reload_loop: AtomicU8,
}

const LOOP_STARTING: u8 = 0;
const LOOP_RUNNING: u8 = 1;
const LOOP_ENDED: u8 = 2;

/// The OpenMetrics text content type.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Admin {
    /// The admin state over `shared`.
    pub fn new(shared: Arc<Shared>) -> Admin {
        let mut registry = Registry::with_prefix("qualcache");
        let start_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
            - shared.uptime().as_secs_f64();
        registry.register_collector(Box::new(DaemonCollector {
            shared: shared.clone(),
            start_unix,
        }));
        Admin {
            shared,
            registry,
            reload_loop: AtomicU8::new(LOOP_STARTING),
        }
    }

    /// The reload loop has started (`/healthz` checks it from then on).
    pub fn loop_started(&self) {
        self.reload_loop.store(LOOP_RUNNING, Ordering::SeqCst);
    }

    /// The reload loop has ended: `/healthz` answers 503 unless the
    /// daemon is shutting down.
    pub fn loop_ended(&self) {
        self.reload_loop.store(LOOP_ENDED, Ordering::SeqCst);
    }

    /// The metrics as OpenMetrics text.
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail, and the collector's own
        // encoding returns errors only from the writer.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// `/healthz`: the process answers and its reload loop runs.
    pub fn health(&self) -> Result<&'static str, &'static str> {
        match self.reload_loop.load(Ordering::SeqCst) {
            LOOP_ENDED if !self.shared.is_draining() => Err("the reload loop has stopped"),
            _ => Ok("ok"),
        }
    }

    /// `/readyz`: a snapshot serves and the daemon is not draining.
    pub fn readiness(&self) -> Result<&'static str, &'static str> {
        if self.shared.is_draining() {
            return Err("shutting down");
        }
        if self.shared.current().is_none() {
            return Err("no snapshot yet: the first one is being opened or built");
        }
        if let Some(a) = self.shared.audit() {
            if a.mode() == AuditMode::Required && a.failure().is_some() {
                return Err(
                    "audit trail unavailable: lookups are answered UNAVAILABLE until it can write",
                );
            }
        }
        Ok("ready")
    }

    /// The answer to one HTTP request.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let text = |status: StatusCode, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        let probe = |result: Result<&str, &str>| match result {
            Ok(s) => text(StatusCode::OK, format!("{s}\n")),
            Err(s) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{s}\n")),
        };
        match req.uri().path() {
            "/metrics" => {
                let mut r = text(StatusCode::OK, self.metrics_text());
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(METRICS_CONTENT_TYPE),
                );
                r
            }
            "/healthz" => probe(self.health()),
            "/readyz" => probe(self.readiness()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: /metrics, /healthz, /readyz\n".into(),
            ),
        }
    }
}

/// Serves `admin` on `listener` until `stop` is cancelled. Each connection
/// is its own task; an error on one is logged at debug level and ends it.
pub async fn serve(listener: tokio::net::TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    loop {
        let (stream, remote) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: try again soon.
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = admin.respond(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "admin connection failed");
                },
                () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

/// Encodes the daemon's state at each scrape.
#[derive(Debug)]
struct DaemonCollector {
    shared: Arc<Shared>,
    /// The process start, Unix seconds.
    start_unix: f64,
}

impl Collector for DaemonCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shared = &self.shared;
        let m = shared.metrics();
        if let Some(requests) = shared.requests() {
            let t = requests.totals();
            let mut family = e.encode_descriptor(
                "requests",
                "Requests answered, by kind and by the status of the response",
                None,
                MetricType::Counter,
            )?;
            for kind in RequestKind::ALL {
                for (s, &code) in STATUS_CODES.iter().enumerate() {
                    let n = t.requests[kind as usize][s];
                    let labels = [("kind", kind.name()), ("status", status_label(code))];
                    family
                        .encode_family(&labels)?
                        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                            &n, None,
                        )?;
                }
            }
            let overloaded: u64 = t.requests.iter().map(|k| k[10]).sum();
            counter(
                &mut e,
                "overloaded",
                "Requests answered OVERLOADED (shed above max_in_flight)",
                overloaded,
            )?;
            let mut family = e.encode_descriptor(
                "request_duration",
                "Server time of a request, from its stream's first bytes to its answer written",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for kind in RequestKind::ALL {
                let k = kind as usize;
                let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(t.latency[k])
                    .collect();
                let count = t.latency[k].iter().sum();
                family
                    .encode_family(&[("kind", kind.name())])?
                    .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    t.latency_sum[k],
                    count,
                    &buckets,
                    None,
                )?;
            }
        }
        gauge(
            &mut e,
            "requests_in_flight",
            "Requests being answered now",
            shared.in_flight() as f64,
        )?;
        gauge(
            &mut e,
            "connections",
            "Open terminal connections",
            shared.connections() as f64,
        )?;
        if let Some(credit) = shared.credit() {
            gauge(
                &mut e,
                "stream_credit",
                "Requests one connection may have open now, on average over the connections \
                 (server.max_streams_per_connection, lowered while the server is behind)",
                credit.now(),
            )?;
            gauge(
                &mut e,
                "scheduling_lag_seconds",
                "How late the runtime last woke a 5 ms timer (ready work waiting for a worker)",
                credit.lag().as_secs_f64(),
            )?;
            gauge(
                &mut e,
                "receive_queue_bytes",
                "Bytes last seen waiting in the server's UDP receive queues (read only while some connection is heavy; 0 otherwise)",
                credit.queued() as f64,
            )?;
            counter(
                &mut e,
                "stream_credit_cuts",
                "Times the stream credit was cut because the server was behind (scheduling lag or receive queue)",
                credit.shrinks(),
            )?;
        }
        gauge(
            &mut e,
            "handshakes_in_progress",
            "Connections whose handshake has not finished (no valid client certificate yet)",
            shared.handshaking() as f64,
        )?;
        counter(
            &mut e,
            "handshake_retries",
            "Connection attempts asked to prove their address first (QUIC Retry), \
             because half of max_handshakes were in progress",
            m.handshake_retries.load(Ordering::Relaxed),
        )?;
        let mut family = e.encode_descriptor(
            "handshake_failures",
            "Connections refused before their first request, by reason",
            None,
            MetricType::Counter,
        )?;
        for (why, n) in m.handshake_failures() {
            family
                .encode_family(&[("reason", why.name())])?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
        }
        if let Some(snapshot) = shared.current() {
            let h = snapshot.header();
            gauge(
                &mut e,
                "snapshot_generation",
                "Generation of the snapshot serving",
                h.generation as f64,
            )?;
            gauge(
                &mut e,
                "snapshot_records",
                "Qualification records in the snapshot serving",
                h.records as f64,
            )?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            gauge(
                &mut e,
                "snapshot_private",
                "1 while the snapshot serving is a private copy rather than a mapping of its file",
                if snapshot.is_private() { 1.0 } else { 0.0 },
            )?;
            let mut age = e.encode_descriptor(
                "snapshot_age",
                "Seconds since the snapshot serving was built",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            age.encode_gauge(&(now.saturating_sub(h.created_at_unix) as f64))?;
        }
        let ok_failed = |ok: &std::sync::atomic::AtomicU64,
                         failed: &std::sync::atomic::AtomicU64,
                         names: [&'static str; 2]| {
            [
                (names[0], ok.load(Ordering::Relaxed)),
                (names[1], failed.load(Ordering::Relaxed)),
            ]
        };
        let mut family = e.encode_descriptor(
            "builds",
            "Snapshot builds from the source since start (the one at start included), by result",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in ok_failed(&m.builds, &m.build_failures, ["ok", "failed"]) {
            family
                .encode_family(&[("result", result)])?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
        }
        let mut family = e.encode_descriptor(
            "reloads",
            "Reloads since start that swapped a snapshot in, or refused one, by result",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in ok_failed(&m.reloads, &m.reload_failures, ["swapped", "refused"]) {
            family
                .encode_family(&[("result", result)])?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
        }
        if let Some(o) = shared.overlay() {
            gauge(
                &mut e,
                "overlay_persons",
                "Persons changed in the database since the snapshot was built, answered from the overlay",
                o.persons() as f64,
            )?;
            gauge(
                &mut e,
                "overlay_records",
                "Qualification records in the overlay",
                o.records() as f64,
            )?;
            gauge(
                &mut e,
                "overlay_unreadable_persons",
                "Persons in the overlay whose latest change could not be read (answered UNAVAILABLE)",
                o.unreadable() as f64,
            )?;
            gauge(
                &mut e,
                "change_position",
                "The database change counter the answers reflect",
                o.position() as f64,
            )?;
        }
        for (name, help, value) in [
            (
                "fleet_published",
                "Generations this publisher uploaded to the fleet's store",
                &m.fleet_published,
            ),
            (
                "fleet_downloads",
                "Generations this replica downloaded and verified",
                &m.fleet_downloads,
            ),
            (
                "fleet_download_bytes",
                "Bytes this replica downloaded from the fleet's store",
                &m.fleet_download_bytes,
            ),
            (
                "fleet_refused",
                "Downloaded generations refused (checksum or snapshot checks failed)",
                &m.fleet_refused,
            ),
            (
                "fleet_store_errors",
                "Requests to the fleet's store that failed",
                &m.fleet_store_errors,
            ),
        ] {
            counter(&mut e, name, help, value.load(Ordering::Relaxed))?;
        }
        gauge(
            &mut e,
            "fleet_pointer_generation",
            "The generation the fleet's pointer names, as last read (0: none)",
            m.fleet_pointer.load(Ordering::Relaxed) as f64,
        )?;
        gauge(
            &mut e,
            "fleet_waiting",
            "1 while the pointer's generation is due but not verified here (the older one is served)",
            m.fleet_waiting.load(Ordering::Relaxed) as f64,
        )?;
        counter(
            &mut e,
            "changes_applied",
            "Changed persons read from the database's change log and applied to the overlay",
            m.changes_applied.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "changes_unreadable",
            "Changed persons whose rows failed the checks (answered UNAVAILABLE until they change again or a snapshot covers them)",
            m.changes_unreadable.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "change_read_failures",
            "Reads of the change log that failed (the database unreachable, say)",
            m.change_read_failures.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "change_listener_reconnects",
            "Times the change listener's connection to the database was made again",
            m.listener_reconnects.load(Ordering::Relaxed),
        )?;
        histogram(
            &mut e,
            "freshness_lag",
            "From a change's statement in the database to the overlay answering it",
            &m.freshness_lag,
        )?;
        counter(
            &mut e,
            "snapshot_lease_breaks",
            "Times another process opened the served snapshot file for writing or truncated it \
             (a private copy was swapped in)",
            m.lease_breaks.load(Ordering::Relaxed),
        )?;
        histogram(
            &mut e,
            "build_duration",
            "Duration of snapshot builds",
            &m.build_time,
        )?;
        histogram(
            &mut e,
            "reload_duration",
            "Duration of reloads that swapped a snapshot in (open, checks, swap)",
            &m.reload_time,
        )?;
        if let Some(a) = shared.audit() {
            let st = a.stats();
            let mut family = e.encode_descriptor(
                "audit_records",
                "Audit records written and sealed, or lost (best effort only), by result",
                None,
                MetricType::Counter,
            )?;
            for (result, n) in [
                ("written", st.written.load(Ordering::Relaxed)),
                ("lost", st.lost.load(Ordering::Relaxed)),
            ] {
                family
                    .encode_family(&[("result", result)])?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
            }
            counter(
                &mut e,
                "audit_refused_requests",
                "Requests answered UNAVAILABLE because they could not be audited (required mode)",
                st.refused.load(Ordering::Relaxed),
            )?;
            counter(
                &mut e,
                "audit_write_failures",
                "Audit batches that failed to write",
                st.write_failures.load(Ordering::Relaxed),
            )?;
            gauge(
                &mut e,
                "audit_queue",
                "Audit records waiting for the writer",
                a.queued() as f64,
            )?;
            gauge(
                &mut e,
                "audit_failing",
                "1 while the audit writer cannot write",
                if a.failure().is_some() { 1.0 } else { 0.0 },
            )?;
        }
        let mut start = e.encode_descriptor(
            "process_start_time",
            "When the daemon started, Unix time",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        start.encode_gauge(&self.start_unix)?;
        Ok(())
    }
}

fn counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = prometheus_client::metrics::counter::ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

fn histogram(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    timing: &Timing,
) -> Result<(), std::fmt::Error> {
    let (sum, count, buckets) = timing.read();
    e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::pb;

    #[test]
    fn status_labels_are_the_proto_names() {
        for code in STATUS_CODES {
            let proto = pb::Status::try_from(code).unwrap().as_str_name();
            assert_eq!(status_label(code), proto);
        }
        assert_eq!(status_label(0), "UNKNOWN");
    }
}
