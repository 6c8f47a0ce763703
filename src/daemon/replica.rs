//! The daemon's part in a fleet: a replica pulls each published generation
//! and serves the one the pointer names from the pointer's `activate_at`;
//! a publisher uploads each generation it builds.
//!
//! A replica runs three tasks over one [`State`]:
//!
//! - the **watcher** reads `current.json` every poll interval, hands it to
//!   the switcher, and writes this replica's report;
//! - the **downloader** lists the published generations and pulls the
//!   pointer's (first) and the newer ones it lacks, as many as the
//!   directory keeps beside the served one ([`fleet::pull`]:
//!   checked against the manifest and by the open checks before it is
//!   linked into the snapshot directory);
//! - the **switcher** opens the pointer's generation up to 30 s ahead (the
//!   daemon's usual open: read lease, checks, card key), waits for
//!   `activate_at`, pins it (`CURRENT`, so a restart serves it too) and
//!   swaps it in. A generation it does not have by then is waited for
//!   while the older one keeps serving (`waiting_for` in the report,
//!   `fleet_waiting` = 1).
//!
//! The store or the network down: everything already here keeps serving;
//! reads are retried every poll interval, doubling up to [`BACKOFF_MAX`];
//! the report says the last error once it can be written again.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::{watch, Notify};

use super::generations::{pin, Store};
use crate::fleet::{self, rfc3339, Fleet, FleetError, Refusal, Report};
use crate::server::Shared;
use crate::snapshot::list_generations;

/// Longest wait between tries while the store fails.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long before its activation time the pointer's generation is opened
/// (and its file leased).
const PREPARE_AHEAD: time::Duration = time::Duration::seconds(30);

/// How long a refused generation is left alone before it is tried again
/// (the object may be uploaded again under the same manifest).
const REFUSED_RETRY: Duration = Duration::from_secs(60);

/// A replica.
#[derive(Debug, Clone)]
pub(super) struct Replica {
    pub fleet: Fleet,
    pub id: String,
    pub poll: Duration,
    pub store: Store,
    pub card_key_id: u64,
}

/// What the replica's tasks know, shared between them.
#[derive(Debug, Default)]
struct State {
    /// The pointer as last read: generation, activation time.
    pointer: Option<(u64, OffsetDateTime)>,
    /// Refused generations: why, and when.
    refused: BTreeMap<u64, (String, Instant)>,
    /// The last failure talking to the store (cleared by a success).
    last_error: Option<String>,
    /// When the served generation was swapped in here.
    serving_since: Option<OffsetDateTime>,
    /// The pointer's generation while it is due but not ready here.
    waiting_for: Option<u64>,
}

/// The replica's tasks; `served` is notified after every swap.
pub(super) fn start(replica: Replica, shared: Arc<Shared>, served: Arc<Notify>) {
    match crate::snapshot::write::remove_stale_builds(replica.store.dir()) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            "removed temporary files of abandoned downloads"
        ),
        Err(e) => tracing::warn!(error = %e, "could not look for abandoned downloads"),
    }
    let state = Arc::new(Mutex::new(State::default()));
    let (pointer_tx, pointer_rx) = watch::channel(None);
    let downloaded = Arc::new(Notify::new());
    let report_now = Arc::new(Notify::new());
    let r = Arc::new(replica);
    tokio::spawn(watch_pointer(
        r.clone(),
        shared.clone(),
        state.clone(),
        pointer_tx,
        report_now.clone(),
    ));
    tokio::spawn(download(
        r.clone(),
        shared.clone(),
        state.clone(),
        pointer_rx.clone(),
        downloaded.clone(),
    ));
    tokio::spawn(switch(
        r, shared, state, pointer_rx, downloaded, report_now, served,
    ));
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The next wait after `failures` failures in a row (`poll` after none).
fn backoff(poll: Duration, failures: u32) -> Duration {
    poll.saturating_mul(1 << failures.min(8))
        .min(BACKOFF_MAX.max(poll))
}

/// Records a store failure: counted, logged on the first of a streak.
fn failed(shared: &Shared, state: &Mutex<State>, what: &str, e: &FleetError, failures: u32) {
    shared.metrics().fleet_store_errors.fetch_add(1, Relaxed);
    let text = format!("{e:#}");
    if failures == 1 {
        tracing::warn!(error = %text, "{what} failed; still serving what is here, retrying with backoff");
    }
    lock(state).last_error = Some(text);
}

/// Reads the pointer every poll interval and writes the report.
async fn watch_pointer(
    r: Arc<Replica>,
    shared: Arc<Shared>,
    state: Arc<Mutex<State>>,
    pointer_tx: watch::Sender<Option<(u64, OffsetDateTime)>>,
    report_now: Arc<Notify>,
) {
    let mut failures = 0u32;
    loop {
        match r.fleet.pointer().await {
            Ok(p) => {
                if failures > 0 {
                    tracing::info!("the fleet's store answers again");
                }
                failures = 0;
                let p = match p {
                    Some((p, _)) => match p.activate_time() {
                        Ok(at) => Some((p.generation, at)),
                        Err(e) => {
                            tracing::error!(error = %e, "the fleet's pointer is unreadable; keeping the last one");
                            *pointer_tx.borrow()
                        }
                    },
                    None => None,
                };
                if let Some((g, _)) = p {
                    shared.metrics().fleet_pointer.store(g, Relaxed);
                }
                lock(&state).pointer = p;
                pointer_tx.send_if_modified(|old| {
                    let changed = *old != p;
                    *old = p;
                    changed
                });
                lock(&state).last_error = None;
            }
            Err(e) => {
                failures += 1;
                failed(&shared, &state, "reading the fleet's pointer", &e, failures);
            }
        }
        write_report(&r, &shared, &state).await;
        let wait = backoff(r.poll, failures);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = report_now.notified() => write_report(&r, &shared, &state).await,
        }
    }
}

/// Writes `replicas/<id>.json` (a failure is counted, not retried: the
/// next poll writes it again).
async fn write_report(r: &Replica, shared: &Shared, state: &Mutex<State>) {
    let report = {
        let s = lock(state);
        Report {
            replica_id: r.id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            serving: shared.current().map(|c| c.header().generation),
            serving_since: s.serving_since.map(rfc3339),
            pointer: s.pointer.map(|(g, _)| g),
            waiting_for: s.waiting_for,
            ready: list_generations(r.store.dir()).unwrap_or_default(),
            refused: s
                .refused
                .iter()
                .map(|(&generation, (reason, _))| Refusal {
                    generation,
                    reason: reason.clone(),
                })
                .collect(),
            last_error: s.last_error.clone(),
            updated_at: rfc3339(OffsetDateTime::now_utc()),
        }
    };
    if let Err(e) = r.fleet.write_report(&report).await {
        shared.metrics().fleet_store_errors.fetch_add(1, Relaxed);
        tracing::debug!(error = %e, "could not write this replica's report");
    }
}

/// Pulls the pointer's generation and every newer published one missing
/// here, each poll interval and whenever the pointer moves.
async fn download(
    r: Arc<Replica>,
    shared: Arc<Shared>,
    state: Arc<Mutex<State>>,
    mut pointer_rx: watch::Receiver<Option<(u64, OffsetDateTime)>>,
    downloaded: Arc<Notify>,
) {
    let mut failures = 0u32;
    loop {
        let pointer = *pointer_rx.borrow_and_update();
        match download_missing(&r, &shared, &state, pointer, &downloaded).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                failed(
                    &shared,
                    &state,
                    "downloading from the fleet's store",
                    &e,
                    failures,
                );
            }
        }
        let wait = backoff(r.poll, failures);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = pointer_rx.changed() => if r.is_err() { return },
        }
    }
}

async fn download_missing(
    r: &Replica,
    shared: &Shared,
    state: &Mutex<State>,
    pointer: Option<(u64, OffsetDateTime)>,
    downloaded: &Notify,
) -> Result<(), FleetError> {
    let published = r.fleet.generations().await?;
    let here = list_generations(r.store.dir()).unwrap_or_default();
    let serving = shared.current().map(|c| c.header().generation);
    let pointer = pointer.map(|(g, _)| g);
    let floor = pointer.max(serving).unwrap_or(0);
    // The pointer's generation first (it is due), then the newest of the
    // newer ones in order (they are next): no more of them than the
    // directory keeps beside the one served.
    let newer: Vec<u64> = published.iter().copied().filter(|&g| g > floor).collect();
    let room = r.store.keep().saturating_sub(1).max(1);
    let mut wanted: Vec<u64> = pointer
        .filter(|p| published.contains(p))
        .into_iter()
        .collect();
    wanted.extend(&newer[newer.len().saturating_sub(room)..]);
    wanted.retain(|g| !here.contains(g));
    for g in wanted {
        if lock(state)
            .refused
            .get(&g)
            .is_some_and(|(_, at)| at.elapsed() < REFUSED_RETRY)
        {
            continue;
        }
        let Some(manifest) = r.fleet.manifest(g).await? else {
            continue;
        };
        let started = Instant::now();
        let metrics = shared.metrics();
        let counted = |n: u64| {
            metrics.fleet_download_bytes.fetch_add(n, Relaxed);
        };
        match fleet::pull(&r.fleet, &manifest, r.store.dir(), r.card_key_id, &counted).await {
            Ok(_) => {
                metrics.fleet_downloads.fetch_add(1, Relaxed);
                lock(state).refused.remove(&g);
                let seconds = started.elapsed().as_secs_f64();
                tracing::info!(
                    generation = g,
                    bytes = manifest.size,
                    seconds,
                    mb_per_s = manifest.size as f64 / 1e6 / seconds.max(1e-9),
                    "generation downloaded and verified"
                );
                downloaded.notify_one();
            }
            Err(FleetError::Refused { reason, .. }) => {
                metrics.fleet_refused.fetch_add(1, Relaxed);
                tracing::error!(generation = g, reason = %reason, "downloaded generation refused; it is not served");
                lock(state).refused.insert(g, (reason, Instant::now()));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves the pointer's generation from its activation time.
async fn switch(
    r: Arc<Replica>,
    shared: Arc<Shared>,
    state: Arc<Mutex<State>>,
    mut pointer_rx: watch::Receiver<Option<(u64, OffsetDateTime)>>,
    downloaded: Arc<Notify>,
    report_now: Arc<Notify>,
    served: Arc<Notify>,
) {
    loop {
        let desired = *pointer_rx.borrow_and_update();
        let serving = shared.current().map(|c| c.header().generation);
        let due = match desired {
            Some((g, at)) if serving != Some(g) => Some((g, at)),
            _ => None,
        };
        let set_waiting = |w: Option<u64>| {
            lock(&state).waiting_for = w;
            shared
                .metrics()
                .fleet_waiting
                .store(u64::from(w.is_some()), Relaxed);
        };
        let Some((g, at)) = due else {
            set_waiting(None);
            tokio::select! {
                r = pointer_rx.changed() => if r.is_err() { return },
                _ = downloaded.notified() => {}
            }
            continue;
        };
        let until_due = at - OffsetDateTime::now_utc();
        let here = list_generations(r.store.dir()).unwrap_or_default();
        if !here.contains(&g) {
            if until_due.is_negative() {
                if lock(&state).waiting_for != Some(g) {
                    match serving {
                        Some(older) => tracing::warn!(generation = g, serving = older, "the pointer's generation is due but not here yet; serving the older one meanwhile"),
                        None => tracing::info!(generation = g, "the pointer's generation is due; serving it once it is downloaded and verified"),
                    }
                }
                set_waiting(Some(g));
                report_now.notify_one();
            }
            tokio::select! {
                r = pointer_rx.changed() => if r.is_err() { return },
                _ = downloaded.notified() => {}
                _ = sleep_for(until_due), if until_due.is_positive() => {}
            }
            continue;
        }
        // Open and check it shortly before `at`, so that the swap at `at`
        // is instant; not long before: the open holds a read lease, which
        // would make a writer of the file wait.
        if until_due > PREPARE_AHEAD {
            tokio::select! {
                r = pointer_rx.changed() => if r.is_err() { return },
                _ = sleep_for(until_due - PREPARE_AHEAD) => {}
            }
            continue;
        }
        let started = Instant::now();
        let store = r.store.clone();
        let prepared = match tokio::task::spawn_blocking(move || store.prepare(g)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                shared.metrics().reload_failures.fetch_add(1, Relaxed);
                tracing::error!(generation = g, error = %format!("{e:#}"), "the pointer's generation does not open; serving the older one");
                lock(&state)
                    .refused
                    .insert(g, (format!("{e:#}"), Instant::now()));
                set_waiting(Some(g));
                tokio::select! {
                    r = pointer_rx.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(REFUSED_RETRY) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "opening the pointer's generation failed");
                tokio::time::sleep(REFUSED_RETRY).await;
                continue;
            }
        };
        let until_due = at - OffsetDateTime::now_utc();
        if until_due.is_positive() {
            tokio::select! {
                // The pointer moved before the time came: start over.
                r = pointer_rx.changed() => if r.is_err() { return } else { continue },
                _ = sleep_for(until_due) => {}
            }
        }
        if !r.store.still_sound(&prepared) {
            // Another process came to write the file while it waited:
            // let it go and open (and check) it again.
            tracing::warn!(generation = g, "the generation's file was opened for writing while it waited to be served; checking it again");
            drop(prepared);
            continue;
        }
        if let Err(e) = pin(r.store.dir(), g) {
            tracing::error!(error = %format!("{e:#}"), "could not pin the pointer's generation (a restart may serve another)");
        }
        let (store, sh) = (r.store.clone(), shared.clone());
        let swapped =
            tokio::task::spawn_blocking(move || store.serve(&sh, prepared, started)).await;
        if swapped.is_ok() {
            let now = OffsetDateTime::now_utc();
            {
                let mut s = lock(&state);
                s.serving_since = Some(now);
                s.refused.remove(&g);
            }
            set_waiting(None);
            tracing::info!(
                generation = g,
                late_ms = (now - at).whole_milliseconds() as i64,
                "switched to the fleet's generation"
            );
            served.notify_waiters();
            report_now.notify_one();
        }
    }
}

async fn sleep_for(d: time::Duration) {
    tokio::time::sleep(d.try_into().unwrap_or(Duration::ZERO)).await
}

/// Publishes the newest generation built here whenever it is not in the
/// store yet: after each build, or as soon as the store answers again.
pub(super) async fn publish_loop(
    fleet: Fleet,
    dir: std::path::PathBuf,
    source: String,
    poll: Duration,
    shared: Arc<Shared>,
) {
    let mut published: Option<u64> = None;
    let mut failures = 0u32;
    loop {
        let newest = list_generations(&dir).ok().and_then(|g| g.last().copied());
        if let Some(g) = newest.filter(|&g| Some(g) != published) {
            let path = crate::snapshot::write::snapshot_path(&dir, g);
            match fleet::publish(&fleet, &path, &source).await {
                Ok(p) => {
                    failures = 0;
                    published = Some(g);
                    shared.metrics().fleet_published.fetch_add(1, Relaxed);
                    tracing::info!(
                        generation = g,
                        bytes = p.manifest.size,
                        seconds = p.seconds,
                        mb_per_s = p.mb_per_s,
                        "generation published"
                    );
                }
                Err(FleetError::Exists(_)) => {
                    failures = 0;
                    published = Some(g);
                }
                Err(e) => {
                    failures += 1;
                    shared.metrics().fleet_store_errors.fetch_add(1, Relaxed);
                    if failures == 1 {
                        tracing::warn!(generation = g, error = %format!("{e:#}"), "publishing failed; retrying with backoff");
                    }
                }
            }
        }
        let wait = backoff(poll, failures);
        tokio::time::sleep(wait).await;
    }
}
