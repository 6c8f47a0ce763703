//! The change follower: with a PostgreSQL source, answers each committed
//! change within about a second, between snapshots.
//!
//! It `LISTEN`s on its own connection (and reads every second besides,
//! in case a notification is lost), reads the change log after its
//! position together with the changed persons' current rows in one
//! consistent read (`store::postgres::changes`), folds them into
//! [`Changes`] and swaps a new [`Overlay`](crate::overlay::Overlay) in.
//! When a snapshot is swapped in, the persons it covers are retired (a
//! snapshot older than the overlay, a rollback, makes it replay from that
//! snapshot's position instead). It asks the reload loop for an early
//! snapshot when the overlay holds more than `overlay_max_persons`, when
//! a change cannot be applied person by person (a TRUNCATE, an insurer
//! renamed, a bulk load), or when the log after its position was pruned.
//!
//! Faults: the database down or the connection lost leaves the snapshot
//! and overlay serving as they are; it is logged once, counted, and the
//! connection is made again with backoff (1 s doubling to 30 s), then the
//! follower catches up from its position, so no change is lost.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::model::row::RowError;
use crate::overlay::{Changes, Overlay, PersonChange};
use crate::server::Shared;
use crate::snapshot::write::{list_generations, snapshot_path};
use crate::snapshot::Header;
use crate::store::postgres::changes::{read_changes, ChangeRead, Listener};
use crate::store::postgres::{PgError, PgSource};

/// How often the log is read without a notification.
const POLL: Duration = Duration::from_secs(1);

/// First wait before connecting again; doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the follower needs.
#[derive(Debug)]
pub(super) struct Follower {
    /// The database.
    pub pg: PgSource,
    /// The snapshot directory (for the pruning rule).
    pub dir: PathBuf,
    /// Most changed persons before an early snapshot.
    pub max_persons: usize,
    /// `CardKey::id` of the daemon's card key.
    pub card_key_id: u64,
    /// Told to build a snapshot now.
    pub rebuild: Arc<Notify>,
}

/// The overlay's state against the served snapshot.
struct Followed {
    changes: Changes,
    /// The generation the changes are relative to.
    generation: u64,
    /// That snapshot's position.
    base: u64,
    /// An early snapshot was asked for since that generation.
    asked: bool,
}

impl Follower {
    /// Follows the change log until the task is dropped. `ready` is told
    /// once the log after the served snapshot has been replayed (or the
    /// first attempt failed: the snapshot serves meanwhile).
    pub(super) async fn run(self, shared: Arc<Shared>, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut state: Option<Followed> = None;
        let mut backoff = BACKOFF_MIN;
        let mut down = false;
        loop {
            let mut listener = match self.pg.listen().await {
                Ok(l) => {
                    backoff = BACKOFF_MIN;
                    l
                }
                Err(e) => {
                    self.fault(&shared, &mut down, "connecting", &e);
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    shared.metrics().listener_reconnects.fetch_add(1, Relaxed);
                    continue;
                }
            };
            match self
                .follow(&shared, &mut listener, &mut state, &mut ready, &mut down)
                .await
            {
                Ok(()) => {
                    // The listener's connection ended without an error
                    // from a read.
                    if !down {
                        tracing::warn!("the change listener's connection ended; serving the snapshot and overlay as they are, reconnecting");
                        down = true;
                    }
                }
                Err(e) => self.fault(&shared, &mut down, "reading changes", &e),
            }
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            shared.metrics().listener_reconnects.fetch_add(1, Relaxed);
        }
    }

    /// Logs a fault once per outage and counts it.
    fn fault(&self, shared: &Shared, down: &mut bool, during: &str, e: &PgError) {
        shared.metrics().change_read_failures.fetch_add(1, Relaxed);
        if !*down {
            tracing::error!(during, error = %e, "the change feed is unreachable; serving the snapshot and overlay as they are, retrying with backoff");
            *down = true;
        }
    }

    /// Reads changes as they are notified (or every [`POLL`]) until the
    /// connection ends (`Ok`) or a read fails.
    async fn follow(
        &self,
        shared: &Shared,
        listener: &mut Listener,
        state: &mut Option<Followed>,
        ready: &mut Option<oneshot::Sender<()>>,
        down: &mut bool,
    ) -> Result<(), PgError> {
        loop {
            self.rebase(shared, state).await;
            if let Some(s) = state.as_mut().filter(|s| s.base != u64::MAX) {
                let read = read_changes(
                    &mut listener.client,
                    s.changes.position(),
                    self.max_persons.max(1),
                )
                .await?;
                if std::mem::take(down) {
                    tracing::info!(
                        position = read.position,
                        "the change feed is reachable again; catching up"
                    );
                }
                self.apply(shared, s, read).await;
                if let Some(r) = ready.take() {
                    let _ = r.send(());
                }
            }
            tokio::select! {
                n = listener.notified.recv() => if n.is_none() {
                    return Ok(());
                },
                _ = tokio::time::sleep(POLL) => {}
                _ = shared.snapshot_swapped() => {}
            }
            // Notifications that came meanwhile are covered by one read.
            while listener.notified.try_recv().is_ok() {}
        }
    }

    /// Brings the state in line with the served snapshot: retires what a
    /// new snapshot covers, or starts over from it.
    async fn rebase(&self, shared: &Shared, state: &mut Option<Followed>) {
        let Some(snapshot) = shared.current() else {
            return;
        };
        let h = snapshot.header();
        if state.as_ref().is_some_and(|s| s.generation == h.generation) {
            return;
        }
        if h.source != self.pg.describe() {
            // Built from another source: its positions are not this log's.
            if state.take().is_some() || shared.overlay().is_some() {
                shared.swap_overlay(None);
            }
            tracing::warn!(generation = h.generation, source = %h.source, "the snapshot serving was not built from this database: no overlay until one is");
            *state = Some(Followed {
                changes: Changes::new(u64::MAX),
                generation: h.generation,
                base: u64::MAX,
                asked: true,
            });
            return;
        }
        let position = h.source_version;
        match state.as_mut() {
            Some(s) if s.changes.position() != u64::MAX && position <= s.changes.position() => {
                // A rollback to an older snapshot is covered as well: the
                // persons changed after it but retired by a newer one are
                // not in the overlay, so replay from its position.
                let retired = if position < s.base {
                    s.changes = Changes::new(position);
                    0
                } else {
                    s.changes.retire(position)
                };
                tracing::info!(
                    generation = h.generation,
                    position,
                    retired,
                    overlay_persons = s.changes.len(),
                    "snapshot swapped in: overlay rebased"
                );
                s.generation = h.generation;
                s.base = position;
                s.asked = false;
            }
            _ => {
                *state = Some(Followed {
                    changes: Changes::new(position),
                    generation: h.generation,
                    base: position,
                    asked: false,
                });
            }
        }
        drop(snapshot);
        // Persons whose changes a newer snapshot covers are answered from
        // it now.
        if let Some(s) = state.as_mut() {
            self.publish(shared, s).await;
        }
        self.prune().await;
    }

    /// Applies one read.
    async fn apply(&self, shared: &Shared, s: &mut Followed, read: ChangeRead) {
        if read.gap {
            if !s.asked {
                tracing::warn!(
                    position = s.changes.position(),
                    pruned_through = read.pruned_through,
                    "the change log after the snapshot's position was pruned: building a snapshot"
                );
                self.rebuild.notify_one();
                s.asked = true;
            }
            return;
        }
        if let Some(v) = read.whole {
            if !s.asked {
                tracing::info!(version = v, "a change that touches every person (TRUNCATE, an insurer renamed, a bulk load): building a snapshot");
                self.rebuild.notify_one();
                s.asked = true;
            }
        }
        if read.persons.is_empty() {
            let moved = read.position != s.changes.position();
            s.changes.apply([], read.position);
            if moved {
                // Statements that touched no person: the position the
                // answers reflect moved all the same.
                self.publish(shared, s).await;
            }
            return;
        }
        let now = crate::model::date::unix_now_micros();
        let lags: Vec<Duration> = read
            .persons
            .iter()
            .map(|p| Duration::from_micros(now.saturating_sub(p.changed_at_micros.max(0) as u64)))
            .collect();
        let applied = read.persons.len() as u64;
        let position = read.position;
        let (changes, unreadable) = person_changes(read);
        s.changes.apply(changes, position);
        self.publish(shared, s).await;
        let m = shared.metrics();
        m.changes_applied.fetch_add(applied, Relaxed);
        m.changes_unreadable.fetch_add(unreadable, Relaxed);
        let published = crate::model::date::unix_now_micros();
        for lag in lags {
            m.freshness_lag
                .record(lag + Duration::from_micros(published.saturating_sub(now)));
        }
        if s.changes.len() > self.max_persons && !s.asked {
            tracing::info!(
                overlay_persons = s.changes.len(),
                max = self.max_persons,
                "the overlay is full: building a snapshot"
            );
            self.rebuild.notify_one();
            s.asked = true;
        }
    }

    /// Makes the overlay of `s` and swaps it in (on a blocking thread: it
    /// builds a small snapshot).
    async fn publish(&self, shared: &Shared, s: &mut Followed) {
        if s.changes.is_empty() {
            // Nobody to answer from it, but the position is reported.
            if shared
                .overlay()
                .is_none_or(|o| !o.is_empty() || o.position() != s.changes.position())
            {
                shared.swap_overlay(Some(Arc::new(Overlay::empty(s.changes.position()))));
            }
            return;
        }
        let mut changes = std::mem::take(&mut s.changes);
        let id = self.card_key_id;
        let base = shared.current();
        let made = tokio::task::spawn_blocking(move || {
            let overlay = changes.overlay(id, base.as_deref());
            (changes, overlay)
        })
        .await;
        match made {
            Ok((changes, overlay)) => {
                s.changes = changes;
                match overlay {
                    Ok(o) => shared.swap_overlay(Some(Arc::new(o))),
                    Err(e) => {
                        // Nothing of it is served: keep the previous
                        // overlay and ask for a snapshot.
                        tracing::error!(error = %e, "could not make the overlay; building a snapshot");
                        self.rebuild.notify_one();
                        s.asked = true;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "the overlay task failed"),
        }
    }

    /// Prunes the change log up to the oldest position among the
    /// snapshots kept from this database (each can still be caught up by
    /// replay). Failures are logged; the next snapshot tries again.
    async fn prune(&self) {
        let dir = self.dir.clone();
        let source = self.pg.describe();
        let oldest = tokio::task::spawn_blocking(move || {
            let gens = list_generations(&dir).ok()?;
            gens.iter()
                .filter_map(|&g| Header::read(&snapshot_path(&dir, g)).ok())
                .filter(|h| h.source == source)
                .map(|h| h.source_version)
                .min()
        })
        .await
        .ok()
        .flatten();
        let Some(through) = oldest else { return };
        let pruned = async {
            let mut client = self.pg.connect().await?;
            crate::store::postgres::changes::prune(&mut client, through).await
        };
        match pruned.await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(through, rows, "change log pruned"),
            Err(e) => tracing::warn!(error = %e, "could not prune the change log"),
        }
    }
}

/// Groups a read's records by person (both in person order). A person
/// with a row that failed the checks is unreadable, logged by person id
/// and store row (never a value); a failed row whose person is unknown
/// makes every person of the read unreadable, since any could be its.
/// Returns the changes and how many were unreadable.
fn person_changes(read: ChangeRead) -> (Vec<PersonChange>, u64) {
    let mut by_person: HashMap<u64, Result<Vec<_>, RowError>> =
        HashMap::with_capacity(read.persons.len());
    for (row, rec) in read.records {
        if let Ok(v) = by_person
            .entry(rec.person_id)
            .or_insert_with(|| Ok(Vec::new()))
        {
            v.push((row, rec));
        }
    }
    let mut unknown = None;
    for (person, e) in read.failed {
        match person {
            Some(p) => {
                tracing::error!(person_id = p, row = e.line, error = %e, "a changed person's row fails the checks; the person is answered UNAVAILABLE until it changes again or a snapshot covers it");
                by_person.insert(p, Err(e));
            }
            None => {
                tracing::error!(row = e.line, error = %e, "a changed row fails the checks and names no person; every person of this read is answered UNAVAILABLE until it changes again or a snapshot covers it");
                unknown = Some(e);
            }
        }
    }
    let mut unreadable = 0;
    let out = read
        .persons
        .into_iter()
        .map(|p| PersonChange {
            person_id: p.person_id,
            version: p.version,
            records: match &unknown {
                Some(e) => Err(e.clone()),
                None => by_person.remove(&p.person_id).unwrap_or(Ok(Vec::new())),
            },
        })
        .inspect(|c| unreadable += u64::from(c.records.is_err()))
        .collect();
    (out, unreadable)
}
