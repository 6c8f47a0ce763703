//! `snapshot build`: stream a store's rows through the [`Builder`] and write
//! the snapshot.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::progress::{Batched, Progress, Unit};
use crate::snapshot::{
    write_snapshot, BuildError, Builder, SnapshotError, SnapshotMeta, WarningCount,
};
use crate::store::chunks::read_file;
use crate::store::csv::{CsvError, RowError, RowUnit};
use crate::store::postgres::{self, PgError, PgSource};

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Build without bad rows instead of failing (overlapping keys, shared
    /// cards and scattered persons still fail).
    pub skip_invalid: bool,
    /// `CardKey::id` of the key the store's digests were made with.
    pub card_key_id: u64,
    /// Told each stage (reading, indexing, writing) and how far reading is.
    pub progress: Progress,
}

/// The JSON summary `snapshot build` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    /// The snapshot written.
    pub path: PathBuf,
    /// Its generation.
    pub generation: u64,
    /// Qualification records in it.
    pub records: u64,
    /// Persons in it.
    pub persons: u64,
    /// File size.
    pub bytes: u64,
    /// Bytes per record, indexes included.
    pub bytes_per_record: f64,
    /// Rows left out (`--skip-invalid`).
    pub skipped_rows: u64,
    /// Rows built that break a warning rule (`model::rules`), by rule.
    pub warnings: Vec<WarningCount>,
    /// Wall-clock seconds, read to written.
    pub seconds: f64,
    /// Records per second.
    pub records_per_second: f64,
    /// Seconds reading and folding rows.
    pub read_seconds: f64,
    /// Seconds building the indexes.
    pub index_seconds: f64,
    /// Seconds writing and syncing the file.
    pub write_seconds: f64,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildFailure {
    /// The source could not be read.
    #[error(transparent)]
    Source(#[from] CsvError),
    /// Bad rows or a capacity limit.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Writing the snapshot failed.
    #[error(transparent)]
    Write(#[from] SnapshotError),
    /// The database failed (rows already read are discarded).
    #[error(transparent)]
    Postgres(#[from] PgError),
    /// The CSV file's fingerprint (size, modification time) differed after
    /// reading from before: the file opened was written into during the
    /// build (not renamed over, which the build does not see), so the rows
    /// read may be partial. Nothing is written; the next reload retries.
    #[error("{path}: the CSV was written into while it was read; export to a temporary name and rename it into place")]
    SourceChanged {
        /// The file.
        path: PathBuf,
    },
}

impl BuildFailure {
    /// Whether the failure is decided by the source's content (bad rows,
    /// duplicates, a bad header, a capacity limit), so that building the
    /// same source version again would fail again. I/O and database
    /// failures, and a source that changed while read, are not.
    pub fn is_caused_by_the_data(&self) -> bool {
        match self {
            BuildFailure::Build(_) | BuildFailure::Source(CsvError::Header { .. }) => true,
            BuildFailure::Source(CsvError::Io { .. })
            | BuildFailure::Write(_)
            | BuildFailure::Postgres(_)
            | BuildFailure::SourceChanged { .. } => false,
        }
    }
}

/// Threads parsing the CSV; the calling thread builds.
pub const PARSE_THREADS: usize = 2;

/// Builds a snapshot in `out_dir` from a CSV export. With `skip_invalid`,
/// bad rows are left out and `on_skip` sees each; otherwise the first bad
/// rows are returned in the error and nothing is written.
///
/// The CSV is read and parsed on other threads (`store::chunks`) while
/// this one folds rows into the [`Builder`]; memory holds at most a few
/// chunks of parsed rows, never the file.
///
/// The file is opened once and read, header and rows, through that one
/// descriptor: a new export renamed over the path meanwhile does not
/// disturb the build (it reads the file it opened; the next reload sees
/// the new one). The header records the fingerprint of the file opened,
/// taken *before* reading; if the same file's fingerprint differs after
/// reading (it was rewritten in place meanwhile), the build fails with
/// [`BuildFailure::SourceChanged`] and writes nothing. Exporters should
/// write to a temporary name and rename it into place.
pub fn build_from_csv(
    source: &Path,
    out_dir: &Path,
    opts: &BuildOptions,
    mut on_skip: impl FnMut(&RowError),
) -> Result<BuildSummary, BuildFailure> {
    let started = Instant::now();
    let name = source.display().to_string();
    let io_err = |source| CsvError::Io {
        path: name.clone(),
        source,
    };
    let file = std::fs::File::open(source).map_err(io_err)?;
    let stat = file.metadata().map_err(io_err)?;
    let fingerprint = crate::store::csv::fingerprint(&stat);
    let mut builder = Builder::with_capacity_for(stat.len());
    let mut rows = Rows::default();
    // Parsing is most of the work: two parsing threads feed this one, which
    // folds rows into the builder in file order.
    read_file(&file, &name, PARSE_THREADS, &opts.progress, |batch| {
        for row in batch {
            rows.fold(
                row.and_then(|(line, rec)| builder.push(line, rec)),
                opts,
                &mut on_skip,
            );
        }
        std::ops::ControlFlow::Continue(())
    })?;
    if crate::store::csv::fingerprint(&file.metadata().map_err(io_err)?) != fingerprint {
        return Err(BuildFailure::SourceChanged {
            path: source.to_path_buf(),
        });
    }
    let meta = SnapshotMeta {
        source: format!("csv:{}", source.display()),
        source_version: fingerprint,
        card_key_id: opts.card_key_id,
    };
    finish(builder, rows, opts, &meta, out_dir, started)
}

/// Builds a snapshot in `out_dir` from a PostgreSQL store: every
/// qualification in one consistent read (see `store::postgres::export`).
/// The header's source version is the change counter the rows were read
/// at. Bad rows are handled as in [`build_from_csv`], their position
/// being their qualification id.
pub fn build_from_postgres(
    source: &PgSource,
    out_dir: &Path,
    opts: &BuildOptions,
    mut on_skip: impl FnMut(&RowError),
) -> Result<BuildSummary, BuildFailure> {
    let started = Instant::now();
    let runtime =
        postgres::runtime().map_err(|e| PgError::Config(format!("cannot start a runtime: {e}")))?;
    let (builder, rows, exported) = runtime.block_on(async {
        let estimate = postgres::export::estimated_rows(source).await?;
        let mut builder =
            Builder::with_capacity(estimate.min(1 << 32) as usize).counting(RowUnit::Qualification);
        let mut rows = Rows::default();
        opts.progress.stage(
            &format!("reading {}", source.describe()),
            (estimate > 0).then_some(estimate),
            Unit::Rows,
        );
        let mut read = Batched::new(&opts.progress, 1 << 16);
        let exported = postgres::export::export(source, |row| {
            read.tick();
            rows.fold(
                row.and_then(|(id, rec)| builder.push(id, rec)),
                opts,
                &mut on_skip,
            )
        })
        .await?;
        drop(read);
        Ok::<_, PgError>((builder, rows, exported))
    })?;
    let meta = SnapshotMeta {
        source: source.describe(),
        source_version: exported.change_counter,
        card_key_id: opts.card_key_id,
    };
    finish(builder, rows, opts, &meta, out_dir, started)
}

/// Bad rows met while reading.
#[derive(Debug, Default)]
struct Rows {
    /// The first ones (at most 100), in order.
    bad: Vec<RowError>,
    bad_count: u64,
}

impl Rows {
    /// Counts a failed row: skipped with `skip_invalid`, else kept for the error.
    fn fold(
        &mut self,
        result: Result<(), RowError>,
        opts: &BuildOptions,
        on_skip: &mut impl FnMut(&RowError),
    ) {
        if let Err(e) = result {
            self.bad_count += 1;
            if opts.skip_invalid {
                on_skip(&e);
            } else if self.bad.len() < 100 {
                self.bad.push(e);
            }
        }
    }
}

/// Indexes the rows read, writes the snapshot and sums up the build.
fn finish(
    builder: Builder,
    rows: Rows,
    opts: &BuildOptions,
    meta: &SnapshotMeta,
    out_dir: &Path,
    started: Instant,
) -> Result<BuildSummary, BuildFailure> {
    let bad_count = rows.bad_count;
    if bad_count > 0 && !opts.skip_invalid {
        return Err(BuildError::Rows {
            errors: rows.bad,
            count: bad_count,
        }
        .into());
    }
    let read_seconds = started.elapsed().as_secs_f64();
    let warnings = builder.warnings();
    opts.progress
        .stage("building the indexes", None, Unit::Records);
    let body = builder.finish()?;
    let index_seconds = started.elapsed().as_secs_f64() - read_seconds;
    opts.progress
        .stage("writing the snapshot", None, Unit::Bytes);
    let written = write_snapshot(out_dir, &body, meta)?;
    drop(body);
    let seconds = started.elapsed().as_secs_f64();
    Ok(BuildSummary {
        path: written.path,
        generation: written.generation,
        records: written.records,
        persons: written.persons,
        bytes: written.bytes,
        bytes_per_record: written.bytes as f64 / written.records.max(1) as f64,
        skipped_rows: if opts.skip_invalid { bad_count } else { 0 },
        warnings,
        seconds,
        records_per_second: written.records as f64 / seconds.max(1e-9),
        read_seconds,
        index_seconds,
        write_seconds: seconds - read_seconds - index_seconds,
    })
}
