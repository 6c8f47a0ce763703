//! The reload loop: reloads on SIGHUP and on timers, rebuilds when the
//! source changed, retries failures with backoff, and stops on shutdown.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use super::generations::{Reloaded, Store};
use super::notify_systemd;
use super::signals::Signal;
use crate::server::Shared;

/// First wait after a failed reload or build; doubled after each further
/// failure, up to the regular interval.
const RETRY_MIN: Duration = Duration::from_secs(1);

/// Reloads on SIGHUP, every `reload_interval` (a newer generation on disk,
/// a changed CSV) and, for a database source, checks the change counter
/// every `rebuild_interval`, and when the change follower asks
/// (`rebuild_now`). After a failure it retries with exponential
/// backoff; a retry of a build that failed on the source's content waits
/// for the source to change ([`Store::reload`]), but a SIGHUP builds
/// again. On SIGTERM / SIGINT it fires `stop`, abandoning a build in
/// progress.
pub(super) async fn reload_loop(
    store: Store,
    shared: Arc<Shared>,
    mut signals: tokio::sync::mpsc::Receiver<Signal>,
    stop: tokio::sync::oneshot::Sender<()>,
    reload_interval: Duration,
    rebuild_interval: Option<Duration>,
    rebuild_now: Arc<tokio::sync::Notify>,
) {
    let first_tick = |period| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    };
    let mut reload_tick = first_tick(reload_interval);
    let mut rebuild_tick = first_tick(rebuild_interval.unwrap_or(Duration::from_secs(86_400)));
    let cap = rebuild_interval.map_or(reload_interval, |r| r.min(reload_interval));
    // After a failure: when to retry, and the wait that led there.
    let mut retry: Option<(tokio::time::Instant, Duration)> = None;
    let mut failures_in_a_row = 0u32;
    // A SIGHUP that came during a reload: it may have announced a file
    // that reload had already looked past, so another reload follows.
    let mut hup_pending = false;
    loop {
        let retry_at = retry.map(|(at, _)| at);
        let (why, check_source) = if std::mem::take(&mut hup_pending) {
            store.forget_failed_build();
            ("SIGHUP", true)
        } else {
            tokio::select! {
            _ = reload_tick.tick() => ("timer", !store.source_is_database()),
            _ = rebuild_tick.tick(), if rebuild_interval.is_some() => ("rebuild timer", true),
            _ = sleep_until_some(retry_at), if retry_at.is_some() => ("retry", true),
            // The change follower asks for a snapshot early (the overlay
            // is full, or a change touches everyone); a failed build's
            // retry keeps its backoff.
            _ = rebuild_now.notified(), if retry_at.is_none() => ("changes", true),
            s = signals.recv() => match s {
                Some(Signal::Reload) => {
                    // An operator's SIGHUP retries a build that failed
                    // even if the source did not change.
                    store.forget_failed_build();
                    ("SIGHUP", true)
                }
                Some(Signal::Shutdown) | None => {
                    notify_systemd(&[NotifyState::Stopping]);
                    let _ = stop.send(());
                    return;
                }
                Some(Signal::LeaseBreak) => {
                    answer_lease_break(&store, &shared);
                    continue;
                }
            },
            }
        };
        // An operator's reload (systemd's ExecReload sends SIGHUP) is
        // bracketed for the service manager; timer reloads are not.
        let operator = why == "SIGHUP";
        if operator {
            let mut states = vec![NotifyState::Reloading];
            states.extend(NotifyState::monotonic_usec_now().ok());
            notify_systemd(&states);
        }
        let (s, sh) = (store.clone(), shared.clone());
        let mut work = tokio::task::spawn_blocking(move || s.reload(&sh, check_source));
        // A shutdown does not wait for a build to finish; a SIGHUP during a
        // reload runs another one after it.
        let outcome = loop {
            tokio::select! {
                r = &mut work => break r,
                s = signals.recv() => match s {
                    Some(Signal::Reload) => hup_pending = true,
                    Some(Signal::Shutdown) | None => {
                        tracing::info!("shutting down during a reload; it is abandoned");
                        notify_systemd(&[NotifyState::Stopping]);
                        let _ = stop.send(());
                        return;
                    }
                    // A writer waits on the served file: answer at once,
                    // not after the reload (the swap lock orders the two).
                    Some(Signal::LeaseBreak) => answer_lease_break(&store, &shared),
                },
            }
        };
        if operator {
            notify_systemd(&[NotifyState::Ready]);
        }
        let failed = match outcome {
            Ok(Ok(Reloaded::Swapped(g))) => {
                tracing::info!(generation = g, trigger = why, "reloaded");
                None
            }
            Ok(Ok(Reloaded::Unchanged)) => {
                tracing::debug!(trigger = why, "nothing to reload");
                None
            }
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(e) => Some(format!("reload task failed: {e}")),
        };
        match failed {
            None => {
                retry = None;
                failures_in_a_row = 0;
            }
            Some(error) => {
                failures_in_a_row += 1;
                let wait = retry.map_or(RETRY_MIN, |(_, w)| (w * 2).min(cap));
                retry = Some((tokio::time::Instant::now() + wait, wait));
                let m = shared.metrics();
                tracing::error!(
                    trigger = why,
                    error,
                    failures_in_a_row,
                    build_failures = m.build_failures.load(Relaxed),
                    reload_failures = m.reload_failures.load(Relaxed),
                    retry_in_secs = wait.as_secs_f64(),
                    "reload failed; still serving the current snapshot"
                );
            }
        }
    }
}

/// Answers a lease break on a blocking thread (it copies the snapshot),
/// without waiting for it.
pub(super) fn answer_lease_break(store: &Store, shared: &Arc<Shared>) {
    let (store, shared) = (store.clone(), shared.clone());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = store.lease_broken(&shared) {
            tracing::error!(error = %format!("{e:#}"), "could not copy the served snapshot before its file changes");
        }
    });
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
