//! The snapshot directory as the daemon manages it: which generation to
//! serve (the `CURRENT` pin, else the newest), building a new one from the
//! source, opening and swapping one in, and pruning old ones.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::build::{build_from_csv, build_from_postgres, BuildFailure, BuildOptions};
use crate::config::{Config, Source};
use crate::metrics::Metrics;
use crate::model::CardKey;
use crate::progress::{Logged, Progress};
use crate::server::Shared;
use crate::snapshot::{list_generations, write::snapshot_path, Header, Snapshot, SnapshotError};
use crate::store::csv::file_fingerprint;

/// Name of the pin file in a snapshot directory.
pub const CURRENT: &str = "CURRENT";

/// In `DIR/.synthetic`: the id of the card key the synthetic data's card
/// digests were made with.
const SYNTHETIC_KEY_STAMP: &str = "card_key_id";

/// The generation to serve from `dir`: the pinned one, else the newest.
pub fn target_generation(dir: &Path) -> Result<Option<u64>> {
    if let Some(pinned) = pinned(dir)? {
        return Ok(Some(pinned));
    }
    Ok(list_generations(dir)?.last().copied())
}

fn pinned(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(CURRENT);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{} does not name a generation", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Pins `generation` as the one to serve (atomically: temp file, rename).
pub fn pin(dir: &Path, generation: u64) -> Result<()> {
    let tmp = dir.join(format!(".{CURRENT}.tmp"));
    std::fs::write(&tmp, format!("{generation}\n"))
        .and_then(|()| std::fs::rename(&tmp, dir.join(CURRENT)))
        .with_context(|| format!("writing {}", dir.join(CURRENT).display()))
}

/// Removes the pin, so the newest generation is served.
pub fn unpin(dir: &Path) -> Result<()> {
    match std::fs::remove_file(dir.join(CURRENT)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.join(CURRENT).display()))
        }
        _ => Ok(()),
    }
}

/// `qualcache snapshot rollback`: pins the generation before the one
/// served now. Returns (from, to).
pub fn rollback(dir: &Path) -> Result<(u64, u64)> {
    let from =
        target_generation(dir)?.with_context(|| format!("no snapshot in {}", dir.display()))?;
    let to = list_generations(dir)?
        .into_iter()
        .rfind(|&g| g < from)
        .with_context(|| format!("no generation older than {from} in {}", dir.display()))?;
    pin(dir, to)?;
    Ok((from, to))
}

/// The snapshot directory and its source, as the daemon manages them.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    keep: usize,
    source: Source,
    /// The daemon's card key: snapshots must be built with it, and
    /// synthetic data digests its card serials with it.
    card_key: CardKey,
    /// The source version whose last build failed because of its content
    /// (shared by the clones the reload loop hands to its tasks).
    failed: Arc<Mutex<Option<FailedBuild>>>,
    /// Whether a snapshot is served from its file only under a read lease
    /// (else from a private copy). Set by the daemon once its SIGIO
    /// handler is installed; off for stores that serve no one (tests).
    leases: bool,
    /// Held while the served snapshot is swapped, so that a reload and a
    /// lease break do not swap over each other.
    swapping: Arc<Mutex<()>>,
}

/// A source version a build failed on, and whether the wait for a change
/// was logged.
#[derive(Debug, Clone, Copy)]
struct FailedBuild {
    version: u64,
    announced: bool,
}

/// What one reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// Nothing new.
    Unchanged,
    /// Now serving this generation.
    Swapped(u64),
}

impl Store {
    /// The store of a configuration.
    pub fn new(config: &Config, card_key: CardKey) -> Store {
        Store {
            dir: config.snapshot_dir.clone(),
            keep: config.keep,
            source: config.source.clone(),
            card_key,
            failed: Arc::default(),
            leases: false,
            swapping: Arc::default(),
        }
    }

    /// The same, serving snapshot files only under a read lease, else
    /// from a private copy (the SIGIO handler must be installed).
    pub fn with_leases(mut self) -> Store {
        self.leases = true;
        self
    }

    /// Answers a lease break: if a writer is waiting for the served
    /// snapshot's file, swaps in a verified private copy (read from the
    /// mapping, which the kernel keeps unchanged until the lease is
    /// released) and lets the mapping go, which releases the lease. True
    /// if it swapped.
    pub fn lease_broken(&self, shared: &Shared) -> Result<bool> {
        let _swapping = self.swapping.lock().unwrap_or_else(|p| p.into_inner());
        let Some(current) = shared.current() else {
            return Ok(false);
        };
        if current.is_private() || !current.lease_breaking() {
            return Ok(false);
        }
        let generation = current.header().generation;
        let copy = current
            .private_copy()
            .with_context(|| format!("copying generation {generation} before its file changes"))?;
        shared.swap(Arc::new(copy));
        shared.metrics().lease_breaks.fetch_add(1, Relaxed);
        tracing::warn!(
            generation,
            "another process opened the served snapshot file for writing or truncated it: \
             serving a private copy; the file is not read again"
        );
        release(current);
        Ok(true)
    }

    /// A store over `dir` building from `source` (tests).
    pub fn with(dir: PathBuf, keep: usize, source: Source, card_key: CardKey) -> Store {
        Store {
            dir,
            keep,
            source,
            card_key,
            failed: Arc::default(),
            leases: false,
            swapping: Arc::default(),
        }
    }

    /// Opens generation `g` for serving (under a read lease, else as a
    /// private copy, when the store has leases): [`Snapshot::open`]'s checks, then
    /// the card key (a snapshot built with another key would answer every
    /// card lookup "not registered"). Neither error names the key.
    fn open_servable(&self, g: u64) -> Result<Snapshot> {
        let path = snapshot_path(&self.dir, g);
        let snapshot = if !self.leases {
            Snapshot::open(&path)?
        } else {
            match Snapshot::open_leased(&path) {
                Err(SnapshotError::Lease { source, .. }) => {
                    tracing::warn!(generation = g, error = %source,
                        "no read lease on the snapshot file: serving a private copy (memory for the whole file)");
                    Snapshot::read(&path)?
                }
                opened => opened?,
            }
        };
        let header = snapshot.header();
        if header.generation != g {
            anyhow::bail!(
                "file of generation {g} holds generation {} (renamed or copied by hand?)",
                header.generation
            );
        }
        if header.card_key_id != self.card_key.id() {
            anyhow::bail!("generation {g} was built with another card key");
        }
        Ok(snapshot)
    }

    /// The snapshot to start with: the target generation, else the newest
    /// older one that opens and carries this store's card key, else a
    /// fresh build from the source (counted in `metrics.builds`, or in
    /// `build_failures` when it fails). First removes the temporary files
    /// of builds that were killed before they finished.
    pub fn initial(&self, metrics: &Metrics) -> Result<Arc<Snapshot>> {
        let removed = crate::snapshot::write::remove_stale_builds(&self.dir)?;
        if removed > 0 {
            tracing::info!(dir = %self.dir.display(), removed, "removed temporary files of abandoned builds");
        }
        let mut gens = list_generations(&self.dir)?;
        if let Some(t) = target_generation(&self.dir)? {
            gens.retain(|&g| g <= t);
        }
        for g in gens.into_iter().rev() {
            match self.open_servable(g) {
                Ok(s) => return Ok(Arc::new(s)),
                Err(e) => {
                    tracing::error!(generation = g, error = %format!("{e:#}"), "snapshot refused")
                }
            }
        }
        tracing::info!(dir = %self.dir.display(), "no usable snapshot: building one from the source");
        let generation = self.build_counted(metrics)?;
        Ok(Arc::new(self.open_servable(generation)?))
    }

    /// [`build`](Self::build), counted and timed in `metrics` (`builds` or
    /// `build_failures`, `build_time`).
    fn build_counted(&self, metrics: &Metrics) -> Result<u64> {
        let started = Instant::now();
        let built = self.build();
        metrics.build_time.record(started.elapsed());
        match &built {
            Ok(_) => metrics.builds.fetch_add(1, Relaxed),
            Err(_) => metrics.build_failures.fetch_add(1, Relaxed),
        };
        built
    }

    /// Builds a new generation from the source; returns it.
    pub fn build(&self) -> Result<u64> {
        // A long build (the first one, most of all) shows in the log as it
        // goes, timed from its start (not the synthetic data's).
        let opts = || BuildOptions {
            progress: Progress::to(Logged::new("building a snapshot")),
            skip_invalid: false,
            card_key_id: self.card_key.id(),
        };
        let csv = match &self.source {
            Source::Postgres { pg, .. } => {
                let summary = build_from_postgres(pg, &self.dir, &opts(), |e| {
                    tracing::warn!(qualification_id = e.line, column = e.column, reason = %e.reason, "row skipped")
                })
                .with_context(|| format!("building a snapshot from {}", pg.describe()))?;
                return self.built(&summary);
            }
            Source::Csv(path) => path.clone(),
            Source::Synthetic { records, seed } => self.synthetic(*records, *seed)?,
            Source::Fleet => anyhow::bail!(
                "a replica builds no snapshot: it serves the generation the fleet's pointer names"
            ),
        };
        let summary = build_from_csv(
            &csv,
            &self.dir,
            &opts(),
            |e| tracing::warn!(line = e.line, column = e.column, reason = %e.reason, "row skipped"),
        )
        .with_context(|| format!("building a snapshot from {}", csv.display()))?;
        self.built(&summary)
    }

    /// The synthetic data set in `DIR/.synthetic`, generated unless it is
    /// there already, complete (`gen` renames `enrollees.csv` into place
    /// last) and made with this store's card key (recorded by key id in
    /// `.synthetic/card_key_id`, written after the data).
    fn synthetic(&self, records: u64, seed: u64) -> Result<PathBuf> {
        let work = self.dir.join(".synthetic");
        let csv = work.join("enrollees.csv");
        let stamp = work.join(SYNTHETIC_KEY_STAMP);
        let key_id = format!("{:016x}\n", self.card_key.id());
        let current =
            csv.exists() && std::fs::read_to_string(&stamp).is_ok_and(|text| text == key_id);
        if !current {
            crate::gen::generate(&crate::gen::GenOptions {
                progress: Progress::to(Logged::new("generating the synthetic data")),
                records,
                seed,
                out: work.clone(),
                probes: 2_000,
                as_of: crate::model::Date::today_jst(),
                card_key: self.card_key.clone(),
            })?;
            let tmp = work.join(format!(".{SYNTHETIC_KEY_STAMP}.tmp"));
            std::fs::write(&tmp, key_id)
                .and_then(|()| std::fs::rename(&tmp, &stamp))
                .with_context(|| format!("writing {}", stamp.display()))?;
        }
        Ok(csv)
    }

    fn built(&self, summary: &crate::build::BuildSummary) -> Result<u64> {
        unpin(&self.dir)?;
        tracing::info!(
            generation = summary.generation,
            records = summary.records,
            seconds = summary.seconds,
            "snapshot built"
        );
        for w in &summary.warnings {
            tracing::warn!(
                generation = summary.generation,
                rule = w.rule,
                count = w.count,
                first = %w.first,
                "rows built despite a warning rule"
            );
        }
        Ok(summary.generation)
    }

    /// Whether the source is a database (checked on its own timer).
    pub fn source_is_database(&self) -> bool {
        matches!(self.source, Source::Postgres { .. })
    }

    /// The source's version now: the CSV file's fingerprint (`None` if
    /// the file is missing), or the database's change counter; synthetic
    /// data has none.
    fn source_version(&self) -> Result<Option<u64>> {
        match &self.source {
            Source::Csv(path) => Ok(Some(file_fingerprint(path)).filter(|&v| v != 0)),
            Source::Synthetic { .. } | Source::Fleet => Ok(None),
            Source::Postgres { pg, .. } => {
                let runtime = crate::store::postgres::runtime()?;
                let now = runtime
                    .block_on(pg.change_counter())
                    .with_context(|| format!("checking {} for changes", pg.describe()))?;
                Ok(Some(now))
            }
        }
    }

    /// Whether the source changed since the newest generation was built
    /// from it, and its version now: the CSV file's fingerprint, or the
    /// database's change counter, against the newest generation's header.
    /// Not against the served one: after a rollback that is older, and
    /// comparing with it would rebuild at once and undo the rollback. A
    /// directory without a readable newest header counts as changed.
    fn source_changed(&self) -> Result<(bool, Option<u64>)> {
        let now = self.source_version()?;
        let Some(newest) = list_generations(&self.dir)?.last().copied() else {
            return Ok((true, now));
        };
        let built_at = match Header::read(&snapshot_path(&self.dir, newest)) {
            Ok(h) => h.source_version,
            Err(e) => {
                tracing::warn!(generation = newest, error = %e, "newest snapshot header unreadable: rebuilding");
                return Ok((true, now));
            }
        };
        let changed = match &self.source {
            Source::Csv(_) => now.is_some_and(|v| v != built_at),
            Source::Synthetic { .. } | Source::Fleet => false,
            Source::Postgres { .. } => now != Some(built_at),
        };
        Ok((changed, now))
    }

    /// Whether the last build of source version `version` failed because
    /// of the source's content; logs the first time it is asked. A
    /// failure of another version is forgotten (the source changed).
    fn failed_before(&self, version: u64) -> bool {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        match failed.as_mut() {
            Some(f) if f.version == version => {
                if !f.announced {
                    f.announced = true;
                    tracing::info!(
                        "the source is unchanged since its last build failed: waiting for it to change (SIGHUP retries)"
                    );
                }
                true
            }
            _ => {
                *failed = None;
                false
            }
        }
    }

    /// Records the outcome of a build of source version `version`: a
    /// failure caused by the content is remembered, anything else forgets.
    fn record_build(&self, version: Option<u64>, result: &Result<u64>) {
        let by_data = result.as_ref().err().is_some_and(|e| {
            e.downcast_ref::<BuildFailure>()
                .is_some_and(BuildFailure::is_caused_by_the_data)
        });
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = match version {
            Some(version) if by_data => Some(FailedBuild {
                version,
                announced: false,
            }),
            _ => None,
        };
    }

    /// Forgets a failed build, so the next reload that checks the source
    /// builds again even if it did not change (SIGHUP).
    pub fn forget_failed_build(&self) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// One reload: when `check_source`, rebuild if the source changed
    /// since the newest generation; then serve the target generation if
    /// it is not the one served. A failed build, or a target that fails
    /// [`Snapshot::open`]'s checks or was built with another card key, is
    /// an error (counted in `shared`'s metrics) and the current snapshot
    /// keeps serving. A source version whose build failed because of its
    /// content is not built again (until [`forget_failed_build`](Self::forget_failed_build)).
    pub fn reload(&self, shared: &Shared, check_source: bool) -> Result<Reloaded> {
        let current = shared.current();
        if current.is_some() && check_source {
            let built = self.source_changed().and_then(|(changed, version)| {
                if !changed || version.is_some_and(|v| self.failed_before(v)) {
                    return Ok(None);
                }
                tracing::info!("source changed: rebuilding");
                let result = self.build_counted(shared.metrics());
                self.record_build(version, &result);
                result.map(Some)
            });
            built?;
        }
        let Some(target) = target_generation(&self.dir)? else {
            return Ok(Reloaded::Unchanged);
        };
        if current.as_ref().map(|c| c.header().generation) == Some(target) {
            self.prune(target);
            return Ok(Reloaded::Unchanged);
        }
        let started = Instant::now();
        let snapshot = self
            .open_servable(target)
            .with_context(|| format!("refusing generation {target}; still serving the current one"))
            .inspect_err(|_| {
                shared.metrics().reload_failures.fetch_add(1, Relaxed);
            })?;
        drop(current);
        self.serve(shared, snapshot, started);
        Ok(Reloaded::Swapped(target))
    }

    /// Generation `g` opened and checked for serving ([`open_servable`]:
    /// under a read lease, the card key), not yet served: a replica opens
    /// the next generation ahead of the time it is to be served.
    pub fn prepare(&self, g: u64) -> Result<Snapshot> {
        self.open_servable(g)
    }

    /// Serves `snapshot` (swapped in; the old one released and pruned
    /// around it); `started` is when its opening began (the reload time
    /// metric).
    pub fn serve(&self, shared: &Shared, snapshot: Snapshot, started: Instant) {
        let (target, records) = (snapshot.header().generation, snapshot.header().records);
        let swapping = self.swapping.lock().unwrap_or_else(|p| p.into_inner());
        let old = shared.swap(Arc::new(snapshot));
        drop(swapping);
        // A writer that came for the new file while it was being checked
        // was signalled before it was served: answer it now.
        if let Err(e) = self.lease_broken(shared) {
            tracing::error!(error = %format!("{e:#}"), "could not copy the served snapshot before its file changes");
        }
        shared.metrics().reload_time.record(started.elapsed());
        shared.metrics().reloads.fetch_add(1, Relaxed);
        tracing::info!(generation = target, records, "snapshot swapped in");
        if let Some(old) = old {
            release(old);
        }
        self.prune(target);
    }

    /// The generation `CURRENT` pins, if any.
    pub fn pinned_generation(&self) -> Result<Option<u64>> {
        pinned(&self.dir)
    }

    /// Whether `snapshot`, opened by [`prepare`](Self::prepare), still
    /// holds the bytes it was checked with: false when it is a mapping
    /// whose read lease another process is breaking (or broke).
    pub fn still_sound(&self, snapshot: &Snapshot) -> bool {
        !self.leases || snapshot.is_private() || !snapshot.lease_breaking()
    }

    /// Generations kept, the served one included (`[snapshots] keep`).
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes generations beyond the newest `keep`, never `serving`.
    fn prune(&self, serving: u64) {
        let Ok(gens) = list_generations(&self.dir) else {
            return;
        };
        let cut = gens.len().saturating_sub(self.keep);
        for &g in &gens[..cut] {
            if g == serving {
                continue;
            }
            match std::fs::remove_file(snapshot_path(&self.dir, g)) {
                Ok(()) => tracing::info!(generation = g, "old snapshot removed"),
                Err(e) => {
                    tracing::warn!(generation = g, error = %e, "could not remove old snapshot")
                }
            }
        }
    }
}

/// Drops a snapshot that was just swapped out here, on the reload thread,
/// once the requests still reading it are done: its last reference
/// unmaps it, which must not stall a request's worker thread. Requests
/// hold a snapshot for microseconds; after [`RELEASE_WAIT`] it is left to
/// its last reader.
fn release(old: Arc<Snapshot>) {
    let deadline = Instant::now() + RELEASE_WAIT;
    while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(old);
}

/// How long [`release`] waits for the readers of a swapped-out snapshot.
const RELEASE_WAIT: Duration = Duration::from_secs(1);
