//! `qualcached`: the daemon around [`server::serve`]. It finds or builds
//! the snapshot to serve, reloads on SIGHUP and on a timer (the new
//! generation must pass [`Snapshot::open`]'s checks and carry this
//! daemon's card key before it is swapped in; on any failure the old
//! snapshot keeps serving), keeps the last few generations for rollback,
//! and shuts down gracefully on SIGTERM or SIGINT.
//!
//! The snapshot directory may hold a `CURRENT` file naming the generation
//! to serve (written by `qualcache snapshot rollback`); without it the
//! newest generation is served. Whether the source changed is decided
//! against the newest generation (the last one built), not the pinned
//! one, so a rollback stays until the source changes again; then the new
//! build removes `CURRENT`.
//!
//! A rebuild that fails because of the source's content (bad rows,
//! duplicates, a bad header) is not tried again for the same source
//! version (CSV fingerprint, database change counter): the daemon logs
//! once that it waits for the source to change and keeps serving. A
//! SIGHUP forgets the failure and tries once more. Failures that are not
//! about the content (I/O, the database being down, a CSV rewritten while
//! it was read) are retried with backoff as before.

//! Layout: `generations` (the snapshot directory: which generation to
//! serve, building, reloading, pruning, the `CURRENT` pin), `reload` (the
//! loop that reloads on signals and timers, with backoff), `signals` (the
//! handlers, turned into [`Signal`]s), and [`run`] here.

mod follower;
mod generations;
mod reload;
mod replica;
mod signals;

pub use generations::{pin, rollback, target_generation, unpin, Reloaded, Store, CURRENT};
pub use signals::{Signal, Signals};

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};

use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::{Config, FleetConfig, FleetRole, Source};
use crate::server::{self, Shared};
use reload::{answer_lease_break, reload_loop};
use signals::forward_signals;

/// Tells a service manager the daemon's state (systemd `Type=notify`:
/// `READY=1` once serving, `RELOADING=1` / `READY=1` around a reload asked
/// by SIGHUP, `STOPPING=1` at shutdown). Without `$NOTIFY_SOCKET` it does
/// nothing; a failure to send is logged, never fatal.
pub(crate) fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

/// How long the start waits for the change log to be replayed before it
/// serves the snapshot anyway.
const FOLLOWER_READY: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs the daemon until SIGTERM or SIGINT; `handlers` are the signal
/// handlers, installed by the caller before anything else
/// ([`Signals::install`]).
pub async fn run(config: Config, mut handlers: Signals) -> Result<()> {
    let (card_key, demo_key) = config.card_key()?;
    if demo_key {
        tracing::warn!("using the public demo card key: set [card_key] file or $QUALCACHE_CARD_KEY in production");
    }
    if config.dev_certs && !config.cert.exists() {
        let dir = config.cert.parent().unwrap_or(Path::new("."));
        crate::certs::generate(dir, crate::certs::DEV_TERMINALS)?;
        tracing::info!(dir = %dir.display(), "development certificates created");
    }
    let mut transport = config.transport;
    if config.adaptive_stream_credit {
        // A connection starts with the least credit and earns more by
        // using it (`overload::own_credit`).
        transport.max_streams = transport.max_streams.min(crate::overload::START_CREDIT);
    }
    let tls = crate::tls::server_config(&config.cert, &config.key, &config.client_ca, transport)?;
    // Leases are safe now: the SIGIO handler is installed.
    let store = Store::new(&config, card_key.clone()).with_leases();
    let mut shared = Shared::new(card_key, config.limits)
        .with_max_in_flight(config.max_in_flight)
        .with_max_connections_per_terminal(config.max_connections_per_terminal)
        .with_max_in_flight_per_terminal(config.max_in_flight_per_terminal)
        .with_handshake_limits(config.max_handshakes, config.handshake_timeout);
    if config.adaptive_stream_credit {
        shared =
            shared.with_adaptive_credit_at(config.transport.max_streams, config.shed_thresholds);
    }
    if config.admin_listen.is_some() {
        shared = shared.with_request_metrics();
    }
    let audit = match &config.audit {
        Some(a) => {
            let auditor = Arc::new(crate::audit::Auditor::start(a)?);
            tracing::info!(dir = %a.dir.display(), mode = ?a.mode, retention_days = a.retention_days, "audit trail");
            shared = shared.with_audit(auditor.clone());
            Some(auditor)
        }
        None => {
            tracing::warn!("[audit] mode = \"off\": lookups are not audited");
            None
        }
    };
    let shared = Arc::new(shared);
    // The admin listener comes up before the first snapshot, so a load
    // balancer sees /readyz answer 503 while it is built.
    let admin_stop = CancellationToken::new();
    let admin = match config.admin_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the admin listener ([admin] listen) {addr}"))?;
            let bound = listener.local_addr().unwrap_or(addr);
            let admin = Arc::new(Admin::new(shared.clone()));
            tokio::spawn(crate::admin::serve(
                listener,
                admin.clone(),
                admin_stop.clone(),
            ));
            tracing::info!(admin = %bound, "admin listener: /metrics /healthz /readyz");
            Some(admin)
        }
        None => None,
    };
    let replica = match &config.fleet {
        Some(FleetConfig {
            role: FleetRole::Replica { id },
            store: settings,
            poll_interval,
            ..
        }) => Some(replica::Replica {
            fleet: crate::fleet::Fleet::open(settings)?,
            id: id.clone(),
            poll: *poll_interval,
            store: store.clone(),
            card_key_id: shared.card_key().id(),
        }),
        _ => None,
    };
    // A replica starts with the generation it was pinned to (it served it
    // before a restart), else waits for the pointer's; anything else
    // starts with what the directory holds or builds it.
    let start_here = replica.is_none() || store.pinned_generation()?.is_some();
    if start_here {
        let (st, sh) = (store.clone(), shared.clone());
        let mut initial = tokio::task::spawn_blocking(move || st.initial(sh.metrics()));
        let first = loop {
            tokio::select! {
                r = &mut initial => break r.context("the initial snapshot task failed")?,
                s = handlers.next() => match s {
                    Signal::Reload => tracing::info!("SIGHUP before the first snapshot is ready: ignored"),
                    // Answered once the first snapshot is in place (below).
                    Signal::LeaseBreak => {}
                    Signal::Shutdown => {
                        // The build is abandoned (its temporary file is
                        // never linked in; the next start removes it).
                        tracing::info!("shutting down before the first snapshot was ready");
                        return Ok(());
                    }
                },
            }
        };
        match first {
            Ok(first) => {
                shared.swap(first);
                // A writer may have come for the file between its lease and now
                // (answered on a blocking thread: it may copy the whole file).
                answer_lease_break(&store, &shared);
            }
            Err(e) if replica.is_some() => {
                tracing::error!(error = %format!("{e:#}"), "the pinned generation cannot be served; waiting for the fleet's pointer")
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(replica) = replica {
        let served = Arc::new(tokio::sync::Notify::new());
        tracing::info!(store = replica.fleet.url(), replica_id = %replica.id, "fleet replica");
        replica::start(replica, shared.clone(), served.clone());
        while shared.current().is_none() {
            tracing::info!("waiting for the fleet's pointer and its generation before serving");
            tokio::select! {
                _ = served.notified() => {}
                s = handlers.next() => match s {
                    Signal::Shutdown => {
                        tracing::info!("shutting down before the first snapshot was ready");
                        return Ok(());
                    }
                    Signal::Reload | Signal::LeaseBreak => {}
                },
            }
        }
    }
    if let Some(FleetConfig {
        role: FleetRole::Publisher,
        store: settings,
        poll_interval,
        ..
    }) = &config.fleet
    {
        let fleet = crate::fleet::Fleet::open(settings)?;
        tracing::info!(
            store = fleet.url(),
            "fleet publisher: each generation built here is published"
        );
        tokio::spawn(replica::publish_loop(
            fleet,
            config.snapshot_dir.clone(),
            config.source.describe(),
            *poll_interval,
            shared.clone(),
        ));
    }
    let Some(first) = shared.current() else {
        anyhow::bail!("no snapshot to serve");
    };
    let (generation, records) = (first.header().generation, first.header().records);
    drop(first);
    let endpoints = server::bind_many(
        config.listen,
        tls,
        config.udp_buffer_bytes,
        config.endpoints,
    )
    .with_context(|| format!("binding {}", config.listen))?;
    let rebuild_now = Arc::new(tokio::sync::Notify::new());
    let follower = match &config.source {
        Source::Postgres {
            pg,
            overlay_max_persons,
            ..
        } if *overlay_max_persons > 0 => {
            let follower = follower::Follower {
                pg: (**pg).clone(),
                dir: config.snapshot_dir.clone(),
                max_persons: *overlay_max_persons,
                card_key_id: shared.card_key().id(),
                rebuild: rebuild_now.clone(),
            };
            let (ready_tx, ready) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(follower.run(shared.clone(), ready_tx));
            // Changes committed after the snapshot are answered from the
            // first request on (or the first try failed and was logged);
            // a database that hangs does not keep the port closed.
            if tokio::time::timeout(FOLLOWER_READY, ready).await.is_err() {
                tracing::warn!(
                    waited_secs = FOLLOWER_READY.as_secs(),
                    "the change log is not replayed yet; serving the snapshot meanwhile"
                );
            }
            Some(task.abort_handle())
        }
        _ => None,
    };
    let listen = endpoints[0].local_addr().unwrap_or(config.listen);
    tracing::info!(%listen, endpoints = endpoints.len(), generation, records, "serving");
    notify_systemd(&[sd_notify::NotifyState::Ready]);

    let (signal_tx, signals) = tokio::sync::mpsc::channel(8);
    tokio::spawn(forward_signals(handlers, signal_tx));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reloader = tokio::spawn(reload_loop(
        store,
        shared.clone(),
        signals,
        stop_tx,
        config.reload_interval,
        match &config.source {
            Source::Postgres {
                rebuild_interval, ..
            } => Some(*rebuild_interval),
            _ => None,
        },
        rebuild_now,
    ));
    let reloader_abort = reloader.abort_handle();
    if let Some(admin) = &admin {
        admin.loop_started();
        let admin = admin.clone();
        // The loop returns only at shutdown; if it panics, /healthz says so.
        tokio::spawn(async move {
            if let Err(e) = reloader.await {
                if e.is_panic() {
                    tracing::error!("the reload loop panicked; snapshots are no longer reloaded");
                    admin.loop_ended();
                }
            }
        });
    }
    server::serve_many(
        endpoints,
        shared,
        async {
            let _ = stop_rx.await;
        },
        config.shutdown_grace,
    )
    .await;
    reloader_abort.abort();
    if let Some(f) = follower {
        f.abort();
    }
    if let Some(audit) = audit {
        // Write and seal what the last requests queued.
        tokio::task::spawn_blocking(move || audit.shutdown())
            .await
            .ok();
    }
    admin_stop.cancel();
    tracing::info!("stopped");
    Ok(())
}
