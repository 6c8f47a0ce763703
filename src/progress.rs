//! How far a long task is: generating data, building or verifying a
//! snapshot, loading the database.
//!
//! The task reports through a [`Progress`] handle (silent by default):
//! each [`stage`](Progress::stage) it enters, with its size where it is
//! known, and the work done in it, in batches ([`advance`](Progress::advance)
//! is meant for every few thousand rows or every chunk read, not every
//! row). What is shown is the watcher's business: the command line draws
//! a bar on a terminal (`cli`), the daemon logs every tenth of a long
//! stage ([`Logged`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a stage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes of a file.
    Bytes,
    /// Rows of a source.
    Rows,
    /// Qualification records.
    Records,
}

impl Unit {
    /// `n` of this unit without its name (bytes keep theirs): the first
    /// number of "704,542 of 1,000,000 records".
    pub fn count(self, n: u64) -> String {
        match self {
            Unit::Bytes => bytes(n),
            Unit::Rows | Unit::Records => thousands(n),
        }
    }

    /// `n` of this unit, for people: "1.5 GiB", "2,000,000 rows".
    pub fn show(self, n: u64) -> String {
        match self {
            Unit::Bytes => bytes(n),
            Unit::Rows => format!("{} rows", thousands(n)),
            Unit::Records => format!("{} records", thousands(n)),
        }
    }
}

/// `n` with a comma every three digits.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A byte count in binary units, one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Something that shows progress.
pub trait Watch: Send + Sync {
    /// A stage begins: `what` names it ("reading the CSV"), `total` is its
    /// size in `unit`s where known.
    fn stage(&self, what: &str, total: Option<u64>, unit: Unit);
    /// `n` more units of the current stage are done.
    fn advance(&self, n: u64);
    /// The task is over (done or failed).
    fn finish(&self);
}

/// A watcher shared with the caller (who may look at it after).
impl<W: Watch + ?Sized> Watch for Arc<W> {
    fn stage(&self, what: &str, total: Option<u64>, unit: Unit) {
        (**self).stage(what, total, unit);
    }
    fn advance(&self, n: u64) {
        (**self).advance(n);
    }
    fn finish(&self) {
        (**self).finish();
    }
}

/// A cheap handle to a [`Watch`], or to nothing ([`Progress::none`], the
/// default).
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<dyn Watch>>);

impl Progress {
    /// Reports go nowhere.
    pub fn none() -> Progress {
        Progress(None)
    }

    /// Reports go to `watch`.
    pub fn to(watch: impl Watch + 'static) -> Progress {
        Progress(Some(Arc::new(watch)))
    }

    /// See [`Watch::stage`].
    pub fn stage(&self, what: &str, total: Option<u64>, unit: Unit) {
        if let Some(w) = &self.0 {
            w.stage(what, total, unit);
        }
    }

    /// See [`Watch::advance`].
    pub fn advance(&self, n: u64) {
        if let Some(w) = &self.0 {
            w.advance(n);
        }
    }

    /// See [`Watch::finish`].
    pub fn finish(&self) {
        if let Some(w) = &self.0 {
            w.finish();
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(watched)"
        } else {
            "Progress(none)"
        })
    }
}

/// Counts units in the caller's loop and hands them to a [`Progress`]
/// every `every` units, so a per-row loop does not report per row.
#[derive(Debug)]
pub struct Batched<'a> {
    progress: &'a Progress,
    pending: u64,
    every: u64,
}

impl<'a> Batched<'a> {
    /// Reports to `progress` every `every` units.
    pub fn new(progress: &'a Progress, every: u64) -> Batched<'a> {
        Batched {
            progress,
            pending: 0,
            every: every.max(1),
        }
    }

    /// One more unit.
    pub fn tick(&mut self) {
        self.add(1);
    }

    /// `n` more units.
    pub fn add(&mut self, n: u64) {
        self.pending += n;
        if self.pending >= self.every {
            self.progress.advance(std::mem::take(&mut self.pending));
        }
    }
}

impl Drop for Batched<'_> {
    fn drop(&mut self) {
        if self.pending > 0 {
            self.progress.advance(self.pending);
        }
    }
}

/// Logs (tracing, INFO) every tenth of a stage of known size, once the
/// task has run for [`Logged::QUIET_FOR`]: a long build shows in the
/// daemon's log as it goes, a short one leaves no lines. For the daemon,
/// where there is no terminal to draw a bar on.
#[derive(Debug)]
pub struct Logged {
    task: &'static str,
    started: Instant,
    quiet_for: Duration,
    done: AtomicU64,
    /// The stage; its tenths logged so far.
    stage: Mutex<LoggedStage>,
}

#[derive(Debug)]
struct LoggedStage {
    what: String,
    total: Option<u64>,
    unit: Unit,
    tenths: u64,
}

impl Logged {
    /// A task lasting less than this logs nothing.
    pub const QUIET_FOR: Duration = Duration::from_secs(3);

    /// Logs the progress of `task` ("building a snapshot").
    pub fn new(task: &'static str) -> Logged {
        Logged {
            task,
            started: Instant::now(),
            quiet_for: Self::QUIET_FOR,
            done: AtomicU64::new(0),
            stage: Mutex::new(LoggedStage {
                what: String::new(),
                total: None,
                unit: Unit::Rows,
                tenths: 0,
            }),
        }
    }
}

impl Logged {
    /// Logs from the start, however short the task.
    pub fn from_the_start(mut self) -> Logged {
        self.quiet_for = Duration::ZERO;
        self
    }

    /// Counts `n` more units; the line to log when a new tenth of the
    /// stage is reached (and the task has run long enough to log).
    fn note(&self, n: u64) -> Option<String> {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let mut s = self.stage.lock().unwrap_or_else(|p| p.into_inner());
        let total = s.total.filter(|&t| t > 0)?;
        let tenths = done.min(total) * 10 / total;
        if tenths <= s.tenths {
            return None;
        }
        s.tenths = tenths;
        let elapsed = self.started.elapsed();
        (elapsed >= self.quiet_for).then(|| {
            format!(
                "{} {}% ({} of {}), {:.0} s so far",
                s.what,
                tenths * 10,
                s.unit.count(done.min(total)),
                s.unit.show(total),
                elapsed.as_secs_f64()
            )
        })
    }
}

impl Watch for Logged {
    fn stage(&self, what: &str, total: Option<u64>, unit: Unit) {
        let mut s = self.stage.lock().unwrap_or_else(|p| p.into_inner());
        self.done.store(0, Ordering::Relaxed);
        *s = LoggedStage {
            what: what.to_string(),
            total,
            unit,
            tenths: 0,
        };
        if self.started.elapsed() >= self.quiet_for {
            tracing::info!(task = self.task, stage = what, "progress: {what}");
        }
    }

    fn advance(&self, n: u64) {
        if let Some(line) = self.note(n) {
            tracing::info!(task = self.task, "progress: {line}");
        }
    }

    fn finish(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(100_000_000), "100,000,000");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    /// Records what it is told.
    #[derive(Default)]
    struct Tape(Mutex<Vec<(String, Option<u64>, u64)>>);

    impl Watch for Tape {
        fn stage(&self, what: &str, total: Option<u64>, _: Unit) {
            self.0.lock().unwrap().push((what.into(), total, 0));
        }
        fn advance(&self, n: u64) {
            self.0.lock().unwrap().last_mut().unwrap().2 += n;
        }
        fn finish(&self) {}
    }

    #[test]
    fn logged_notes_each_tenth_once() {
        let log = Logged::new("building").from_the_start();
        log.stage("reading x.csv", Some(1000), Unit::Bytes);
        let lines: Vec<String> = (0..40).filter_map(|_| log.note(25)).collect();
        assert_eq!(lines.len(), 10, "{lines:?}");
        assert!(
            lines[0].starts_with("reading x.csv 10% (100 B of 1000 B)"),
            "{lines:?}"
        );
        assert!(
            lines[9].starts_with("reading x.csv 100% (1000 B of 1000 B)"),
            "{lines:?}"
        );
        // Past the total (an estimate that was low) it says nothing more.
        assert_eq!(log.note(500), None);
        // A new stage starts from nothing; one of unknown size logs no tenths.
        log.stage("building the indexes", None, Unit::Records);
        assert_eq!(log.note(10), None);
        // A short task logs nothing.
        let quiet = Logged::new("building");
        quiet.stage("reading", Some(10), Unit::Rows);
        assert_eq!(quiet.note(10), None);
    }

    #[test]
    fn batched_reports_every_so_often_and_the_rest_at_the_end() {
        let tape = Arc::new(Tape::default());
        let p = Progress::to(tape.clone());
        p.stage("counting", Some(25), Unit::Rows);
        {
            let mut b = Batched::new(&p, 10);
            for i in 1..=25 {
                b.tick();
                let seen = tape.0.lock().unwrap()[0].2;
                assert_eq!(seen, i / 10 * 10, "after {i} ticks");
            }
        }
        assert_eq!(tape.0.lock().unwrap()[0], ("counting".into(), Some(25), 25));
        // The silent handle takes reports and does nothing.
        let none = Progress::none();
        none.stage("x", None, Unit::Bytes);
        none.advance(5);
        assert_eq!(format!("{none:?}"), "Progress(none)");
    }
}
