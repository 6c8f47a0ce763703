//! The audit trail: who (the terminal's institution code) looked up whom
//! (the store's person ids answered), when, and with what result. One
//! record per lookup, batch items included; never a name, birth date, card
//! serial or insurance number.
//!
//! Files: `DIR/audit-YYYYMMDDTHH.jsonl`, one per UTC hour, created 0640
//! and only ever appended to. Each starts with a header line naming the
//! chain hash it continues from; then come batches of record lines, each
//! batch closed by a chain line `{"chain":H,"records":N}` where H is the
//! SHA-256 of the previous chain hash (32 bytes) followed by the batch's
//! record lines as written. Changing, inserting or removing a record
//! breaks its batch's chain line; removing a whole file in the middle
//! breaks the next file's header. Old files are removed after the
//! retention period (the oldest file left may begin anywhere in the
//! chain). [`verify`] checks all of it; [`query`] answers "who looked up
//! this person" and "whom did this facility look up".
//!
//! The request path only hands a request's events to [`Auditor::submit`]
//! (a capacity check on one counter and a channel send, no I/O, no lock
//! held across a write). One writer thread batches them (every 10 ms, or
//! 4,096 records), appends, fsyncs and seals each batch. In `required`
//! mode a request whose events cannot be queued (the queue is full, or
//! the writer cannot write) is answered UNAVAILABLE instead: no unaudited
//! answer leaves the server. It recovers by itself once the writer can
//! write again. A crash can lose what was queued or written but not yet
//! fsynced: at most the last ~10 ms of records.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::model::InstitutionCode;

/// What the daemon does when it cannot audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditMode {
    /// A lookup that cannot be audited is answered UNAVAILABLE.
    Required,
    /// A lookup that cannot be audited is answered; the lost records are
    /// counted.
    BestEffort,
}

/// The audit trail's settings.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Where the files go.
    pub dir: PathBuf,
    /// Required or best effort.
    pub mode: AuditMode,
    /// Files older than this many days are removed.
    pub retention_days: u32,
    /// Records that may wait for the writer.
    pub queue: usize,
}

/// The mode files are created with (less what the umask clears).
pub const FILE_MODE: u32 = 0o640;
/// Records waiting for the writer, by default.
pub const DEFAULT_QUEUE: usize = 100_000;
/// Retention, by default: five years.
pub const DEFAULT_RETENTION_DAYS: u32 = 1825;

/// How long the writer gathers records before writing a batch.
const BATCH_WAIT: Duration = Duration::from_millis(10);
/// The most records in one batch.
const BATCH_MAX: usize = 4096;
/// How often the writer tries again after a failed write.
const RETRY: Duration = Duration::from_millis(500);

/// A few store ids (persons, or qualification rows), inline for the
/// common one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Ids {
    /// Nobody: nothing was answered.
    #[default]
    Nobody,
    /// One person (almost every answer).
    One(u64),
    /// Several (a multiple hit).
    Many(Box<[u64]>),
}

impl Ids {
    /// From the ids an answer carries.
    pub fn of(mut ids: impl Iterator<Item = u64>) -> Ids {
        match (ids.next(), ids.next()) {
            (None, _) => Ids::Nobody,
            (Some(a), None) => Ids::One(a),
            (Some(a), Some(b)) => Ids::Many([a, b].into_iter().chain(ids).collect()),
        }
    }

    fn as_slice(&self) -> &[u64] {
        match self {
            Ids::Nobody => &[],
            Ids::One(id) => std::slice::from_ref(id),
            Ids::Many(ids) => ids,
        }
    }
}

/// One lookup as the request handler saw it; the server adds who and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// `card` or `insurance`.
    pub path: &'static str,
    /// Whether it was an item of a batch.
    pub batch: bool,
    /// The wire status answered.
    pub status: i32,
    /// The snapshot generation that answered (0: none loaded).
    pub generation: u64,
    /// Whom: the store's ids of the persons answered.
    pub whom: Ids,
    /// The store rows (CSV lines or `qualification_id`s) of the
    /// qualifications answered.
    pub rows: Ids,
}

/// One request's lookups, with who and when.
#[derive(Debug)]
struct Request {
    ns: u64,
    who: InstitutionCode,
    lookups: Vec<Lookup>,
}

/// Counters of the audit trail.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Records written and sealed.
    pub written: AtomicU64,
    /// Records lost (best effort: queue full or the writer failing).
    pub lost: AtomicU64,
    /// Requests answered UNAVAILABLE because they could not be audited
    /// (required mode).
    pub refused: AtomicU64,
    /// Batches that failed to write (each is retried in required mode).
    pub write_failures: AtomicU64,
}

/// Why a request could not be audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unaudited {
    /// The queue is full.
    Full,
    /// The writer cannot write (disk full, permissions, a missing
    /// directory).
    Failing,
}

/// The request path's handle on the audit trail.
#[derive(Debug)]
pub struct Auditor {
    mode: AuditMode,
    capacity: usize,
    /// Records queued and not yet written.
    queued: Arc<AtomicUsize>,
    /// Set while the writer cannot write.
    failing: Arc<AtomicBool>,
    /// The last write error, for logs and `/readyz` (no personal data).
    last_error: Arc<Mutex<String>>,
    stats: Arc<AuditStats>,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Why the audit trail could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The directory or a file could not be read, made or written.
    #[error("audit trail {path}: {source}")]
    Io {
        /// Which.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl Auditor {
    /// Starts the writer thread over `config.dir` (created if missing),
    /// continuing the chain of the files there; an unsealed tail left by a
    /// crash is sealed first.
    pub fn start(config: &AuditConfig) -> Result<Auditor, AuditError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AuditError::Io { path, source }
        };
        std::fs::create_dir_all(&config.dir).map_err(io(&config.dir))?;
        let mut writer = Writer {
            dir: config.dir.clone(),
            chain: [0; 32],
            retention: Duration::from_secs(u64::from(config.retention_days) * 86_400),
            removed_before: String::new(),
        };
        writer.resume().map_err(io(&config.dir))?;
        writer.remove_expired();
        let (tx, rx) = mpsc::channel::<Request>();
        let queued = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let last_error = Arc::new(Mutex::new(String::new()));
        let stats = Arc::new(AuditStats::default());
        let thread = {
            let (queued, failing, last_error, stats) = (
                queued.clone(),
                failing.clone(),
                last_error.clone(),
                stats.clone(),
            );
            let mode = config.mode;
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || {
                    writer.run(rx, mode, &queued, &failing, &last_error, &stats);
                })
                .map_err(io(&config.dir))?
        };
        Ok(Auditor {
            mode: config.mode,
            capacity: config.queue,
            queued,
            failing,
            last_error,
            stats,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(thread)),
        })
    }

    /// The mode.
    pub fn mode(&self) -> AuditMode {
        self.mode
    }

    /// Hands one request's lookups to the writer. `Err` when they cannot
    /// be audited: in required mode the request must then be answered
    /// UNAVAILABLE; in best-effort mode they are counted as lost (and the
    /// request answered).
    pub fn submit(&self, who: InstitutionCode, lookups: Vec<Lookup>) -> Result<(), Unaudited> {
        let n = lookups.len();
        if n == 0 {
            return Ok(());
        }
        let refuse = |why| {
            match self.mode {
                AuditMode::Required => self.stats.refused.fetch_add(1, Ordering::Relaxed),
                AuditMode::BestEffort => self.stats.lost.fetch_add(n as u64, Ordering::Relaxed),
            };
            Err(why)
        };
        // Required: nothing is queued while the writer cannot write (it
        // retries the batch it holds). Best effort: every batch is tried,
        // and one that fails is dropped and counted, so the writer notices
        // by itself when it can write again.
        if self.mode == AuditMode::Required && self.failing.load(Ordering::Relaxed) {
            return refuse(Unaudited::Failing);
        }
        if self.queued.fetch_add(n, Ordering::Relaxed) + n > self.capacity {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return refuse(Unaudited::Full);
        }
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(Request { ns, who, lookups }).is_ok());
        if !sent {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return refuse(Unaudited::Failing);
        }
        Ok(())
    }

    /// Whether the writer cannot write now, and why.
    pub fn failure(&self) -> Option<String> {
        self.failing.load(Ordering::Relaxed).then(|| {
            self.last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }

    /// Records waiting for the writer.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The counters.
    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }

    /// Stops taking records, lets the writer write and seal what is
    /// queued, and waits for it.
    pub fn shutdown(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    /// The chain hash of the last sealed batch.
    chain: [u8; 32],
    retention: Duration,
    /// The name below which files were already checked for expiry.
    removed_before: String,
}

impl Writer {
    /// Continues from the newest file: its last chain hash, after sealing
    /// any records a crash left unsealed.
    fn resume(&mut self) -> std::io::Result<()> {
        let Some(newest) = files(&self.dir)?.pop() else {
            return Ok(());
        };
        let scan = scan_file(&newest)?;
        self.chain = scan.chain;
        if scan.tail_records > 0 || !scan.ends_with_newline {
            // Seal the tail as written (a torn last line is closed with a
            // newline first), so the file verifies from here on.
            let mut f = OpenOptions::new().append(true).open(&newest)?;
            let mut hasher = Sha256::new();
            hasher.update(self.chain);
            hasher.update(&scan.tail);
            let mut extra = Vec::new();
            if !scan.ends_with_newline {
                extra.push(b'\n');
                hasher.update(b"\n");
            }
            let chain: [u8; 32] = hasher.finalize().into();
            extra.extend_from_slice(chain_line(&chain, scan.tail_records.max(1)).as_bytes());
            f.write_all(&extra)?;
            f.sync_data()?;
            self.chain = chain;
            tracing::warn!(file = %newest.display(), records = scan.tail_records, "audit: sealed records a crash left unsealed");
        }
        Ok(())
    }

    fn run(
        &mut self,
        rx: mpsc::Receiver<Request>,
        mode: AuditMode,
        queued: &AtomicUsize,
        failing: &AtomicBool,
        last_error: &Mutex<String>,
        stats: &AuditStats,
    ) {
        let mut pending: Vec<Request> = Vec::new();
        let mut records = 0usize;
        let mut open = true;
        while open || records > 0 {
            // Gather a batch: wait for the first request, then sleep
            // BATCH_WAIT and take what came meanwhile (up to BATCH_MAX).
            // Sleeping rather than waiting on the channel matters: a
            // receiver blocked on the channel is woken by every send, a
            // system call on the request path and a context switch here
            // for every request.
            if open && records == 0 {
                match rx.recv() {
                    Ok(r) => {
                        records += r.lookups.len();
                        pending.push(r);
                    }
                    Err(_) => open = false,
                }
                if open {
                    std::thread::sleep(BATCH_WAIT);
                }
            }
            while open && records < BATCH_MAX {
                match rx.try_recv() {
                    Ok(r) => {
                        records += r.lookups.len();
                        pending.push(r);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => open = false,
                }
            }
            if records == 0 {
                continue;
            }
            match self.write_batch(&pending, SystemTime::now()) {
                Ok(()) => {
                    stats.written.fetch_add(records as u64, Ordering::Relaxed);
                    queued.fetch_sub(records, Ordering::Relaxed);
                    pending.clear();
                    records = 0;
                    if failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(dir = %self.dir.display(), "audit: writing again");
                    }
                }
                Err(e) => {
                    stats.write_failures.fetch_add(1, Ordering::Relaxed);
                    *last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                    if !failing.swap(true, Ordering::Relaxed) {
                        tracing::error!(dir = %self.dir.display(), error = %e, "audit: cannot write; lookups are refused until it can (required) or not audited (best effort)");
                    }
                    match mode {
                        // Keep the batch and try again: these answers left.
                        AuditMode::Required if open => std::thread::sleep(RETRY),
                        AuditMode::Required => {
                            // Shutting down and still failing: give up.
                            stats.lost.fetch_add(records as u64, Ordering::Relaxed);
                            queued.fetch_sub(records, Ordering::Relaxed);
                            pending.clear();
                            records = 0;
                        }
                        AuditMode::BestEffort => {
                            stats.lost.fetch_add(records as u64, Ordering::Relaxed);
                            queued.fetch_sub(records, Ordering::Relaxed);
                            pending.clear();
                            records = 0;
                            if open {
                                std::thread::sleep(RETRY);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Appends one batch and its chain line to the current hour's file
    /// (opened for each batch, so a directory that goes away or comes
    /// back is noticed), fsyncs, and advances the chain.
    fn write_batch(&mut self, batch: &[Request], now: SystemTime) -> std::io::Result<()> {
        let path = self.dir.join(file_name(now));
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(&path)?;
        let mut out = String::new();
        if file.metadata()?.len() == 0 {
            out.push_str(&header_line(&self.chain));
            self.remove_expired();
        }
        let start = out.len();
        let mut n = 0;
        for r in batch {
            for l in &r.lookups {
                record_line(&mut out, r.ns, r.who, l);
                n += 1;
            }
        }
        let mut hasher = Sha256::new();
        hasher.update(self.chain);
        hasher.update(&out.as_bytes()[start..]);
        let chain: [u8; 32] = hasher.finalize().into();
        out.push_str(&chain_line(&chain, n));
        file.write_all(out.as_bytes())?;
        file.sync_data()?;
        self.chain = chain;
        Ok(())
    }

    /// Removes files older than the retention period.
    fn remove_expired(&mut self) {
        let Some(cutoff) = SystemTime::now().checked_sub(self.retention) else {
            return;
        };
        let before = file_name(cutoff);
        if before <= self.removed_before {
            return;
        }
        if let Ok(all) = files(&self.dir) {
            for f in all {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if name < before.as_str() {
                    match std::fs::remove_file(&f) {
                        Ok(()) => {
                            tracing::info!(file = %f.display(), "audit: removed after the retention period")
                        }
                        Err(e) => {
                            tracing::warn!(file = %f.display(), error = %e, "audit: could not remove an expired file")
                        }
                    }
                }
            }
        }
        self.removed_before = before;
    }
}

/// `audit-YYYYMMDDTHH.jsonl` for the UTC hour of `t`.
fn file_name(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let dt = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "audit-{:04}{:02}{:02}T{:02}.jsonl",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn header_line(chain: &[u8; 32]) -> String {
    format!(
        "{{\"audit\":\"qualcache\",\"version\":1,\"continues\":\"{}\"}}\n",
        hex(chain)
    )
}

fn chain_line(chain: &[u8; 32], records: usize) -> String {
    format!("{{\"chain\":\"{}\",\"records\":{records}}}\n", hex(chain))
}

fn record_line(out: &mut String, ns: u64, who: InstitutionCode, l: &Lookup) {
    let status = crate::metrics::status_label(l.status);
    let _ = write!(
        out,
        "{{\"ns\":{ns},\"who\":\"{who}\",\"path\":\"{}\",\"batch\":{},\"generation\":{},\"status\":\"{status}\",\"whom\":[",
        l.path, l.batch, l.generation
    );
    ids(out, &l.whom);
    out.push_str("],\"rows\":[");
    ids(out, &l.rows);
    out.push_str("]}\n");
}

fn ids(out: &mut String, ids: &Ids) {
    for (i, id) in ids.as_slice().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{id}");
    }
}

/// The audit files of `dir`, oldest first.
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    all.sort();
    Ok(all)
}

/// What a file's lines say about the chain.
struct Scan {
    /// The last chain hash (or the header's, if no batch was sealed).
    chain: [u8; 32],
    /// Record lines after the last chain line, as written.
    tail: Vec<u8>,
    tail_records: usize,
    ends_with_newline: bool,
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The hash in a `{"chain":H,...}` or `{"audit":...,"continues":H}` line.
fn hash_field(line: &str, field: &str) -> Option<[u8; 32]> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    parse_hex32(v.get(field)?.as_str()?)
}

fn scan_file(path: &Path) -> std::io::Result<Scan> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut line = Vec::new();
    let mut scan = Scan {
        chain: [0; 32],
        tail: Vec::new(),
        tail_records: 0,
        ends_with_newline: true,
    };
    let mut first = true;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        scan.ends_with_newline = line.ends_with(b"\n");
        let text = String::from_utf8_lossy(&line);
        if first {
            first = false;
            if let Some(h) = hash_field(&text, "continues") {
                scan.chain = h;
                continue;
            }
        }
        match hash_field(&text, "chain") {
            Some(h) => {
                scan.chain = h;
                scan.tail.clear();
                scan.tail_records = 0;
            }
            None => {
                scan.tail.extend_from_slice(&line);
                scan.tail_records += 1;
            }
        }
    }
    Ok(scan)
}

/// What [`verify`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// Files checked.
    pub files: usize,
    /// Records checked.
    pub records: u64,
    /// Batches checked.
    pub batches: u64,
}

/// Where the chain breaks.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The directory or a file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The chain breaks in `file` at byte `offset`.
    #[error("{file}: broken at byte {offset}: {reason}")]
    Broken {
        /// The file.
        file: PathBuf,
        /// Where (the start of the line that does not check).
        offset: u64,
        /// Why.
        reason: String,
    },
}

/// Checks every file's chain, in order: each batch against its chain
/// line, each file's header against the previous file's last chain.
pub fn verify(dir: &Path) -> Result<VerifyReport, VerifyError> {
    let all = files(dir).map_err(|source| VerifyError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut report = VerifyReport {
        files: 0,
        records: 0,
        batches: 0,
    };
    let mut previous: Option<[u8; 32]> = None;
    for file in &all {
        let io = |source| VerifyError::Io {
            path: file.clone(),
            source,
        };
        let broken = |offset: u64, reason: &str| VerifyError::Broken {
            file: file.clone(),
            offset,
            reason: reason.to_string(),
        };
        let mut reader = BufReader::new(File::open(file).map_err(io)?);
        let mut line = Vec::new();
        let mut offset = 0u64;
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        let text = String::from_utf8_lossy(&line);
        let Some(start) = hash_field(&text, "continues") else {
            return Err(broken(0, "no header line"));
        };
        if previous.is_some_and(|p| p != start) {
            return Err(broken(
                0,
                "does not continue the previous file's chain (a file is missing or altered before it)",
            ));
        }
        offset += n as u64;
        let mut chain = start;
        let mut hasher = Sha256::new();
        hasher.update(chain);
        let (mut batch_start, mut batch_records) = (offset, 0u64);
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(io)?;
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) if v.get("chain").is_some() => {
                    let expected = v
                        .get("chain")
                        .and_then(|c| c.as_str())
                        .and_then(parse_hex32)
                        .ok_or_else(|| broken(offset, "a chain line without a valid hash"))?;
                    let sealed: [u8; 32] = std::mem::take(&mut hasher).finalize().into();
                    if sealed != expected {
                        return Err(broken(
                            batch_start,
                            "the batch before this chain line does not match it (a record was changed, inserted or removed)",
                        ));
                    }
                    if v.get("records").and_then(|r| r.as_u64()) != Some(batch_records) {
                        return Err(broken(
                            offset,
                            "the chain line counts another number of records",
                        ));
                    }
                    report.batches += 1;
                    report.records += batch_records;
                    chain = expected;
                    hasher = Sha256::new();
                    hasher.update(chain);
                    offset += n as u64;
                    batch_start = offset;
                    batch_records = 0;
                }
                _ => {
                    hasher.update(&line);
                    batch_records += 1;
                    offset += n as u64;
                }
            }
        }
        if batch_records > 0 {
            return Err(broken(
                batch_start,
                "records after the last chain line (unsealed: being written, or cut off)",
            ));
        }
        previous = Some(chain);
        report.files += 1;
    }
    Ok(report)
}

/// What [`query`] selects.
#[derive(Debug, Clone, Default)]
pub struct QueryFilter {
    /// Records naming this person (store id) among whom.
    pub person: Option<u64>,
    /// Records of this institution.
    pub institution: Option<String>,
    /// From this time (Unix ns), inclusive.
    pub from_ns: Option<u64>,
    /// Up to this time (Unix ns), exclusive.
    pub to_ns: Option<u64>,
}

/// Calls `out` with every record (as its JSON value, with an added `time`
/// in ISO 8601, Japan time) that `filter` selects, oldest first. Chain and header
/// lines are skipped; run [`verify`] to trust the records.
pub fn query(
    dir: &Path,
    filter: &QueryFilter,
    mut out: impl FnMut(serde_json::Value) -> std::io::Result<()>,
) -> Result<u64, VerifyError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VerifyError::Io { path, source }
    };
    let mut found = 0;
    for file in files(dir).map_err(io(dir))? {
        let reader = BufReader::new(File::open(&file).map_err(io(&file))?);
        for line in reader.lines() {
            let line = line.map_err(io(&file))?;
            let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let Some(ns) = v.get("ns").and_then(|n| n.as_u64()) else {
                continue;
            };
            let keep = filter.from_ns.is_none_or(|f| ns >= f)
                && filter.to_ns.is_none_or(|t| ns < t)
                && filter
                    .institution
                    .as_deref()
                    .is_none_or(|i| v.get("who").and_then(|w| w.as_str()) == Some(i))
                && filter.person.is_none_or(|p| {
                    v.get("whom")
                        .and_then(|w| w.as_array())
                        .is_some_and(|w| w.iter().any(|id| id.as_u64() == Some(p)))
                });
            if !keep {
                continue;
            }
            let time = crate::model::date::iso_jst_nanos(i128::from(ns));
            if let Some(o) = v.as_object_mut() {
                o.insert("time".into(), time.into());
            }
            out(v).map_err(io(&file))?;
            found += 1;
        }
    }
    Ok(found)
}

/// A time for `--from` / `--to`: RFC 3339 (`2026-12-04T09:00:00Z`,
/// `2026-12-04T18:00:00+09:00`) or a day `YYYYMMDD` (its start in Japan
/// time, as every day in the domain). Returns Unix nanoseconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(day) = s.parse::<crate::model::Date>() {
        let secs = i64::from(day.day_number()) * 86_400 - 9 * 3_600;
        return u64::try_from(secs)
            .map(|s| s * 1_000_000_000)
            .map_err(|_| "before 1970".into());
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| "expected RFC 3339 (2026-12-04T09:00:00Z) or YYYYMMDD".to_string())?;
    u64::try_from(t.unix_timestamp_nanos()).map_err(|_| "before 1970".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(status: i32, whom: Ids) -> Lookup {
        Lookup {
            path: "card",
            batch: false,
            status,
            generation: 3,
            whom,
            rows: Ids::Nobody,
        }
    }

    fn config(dir: &Path, mode: AuditMode) -> AuditConfig {
        AuditConfig {
            dir: dir.to_path_buf(),
            mode,
            retention_days: DEFAULT_RETENTION_DAYS,
            queue: 1_000,
        }
    }

    #[test]
    fn records_are_chained_verified_and_queried() {
        let dir = tempfile::tempdir().unwrap();
        let who: InstitutionCode = crate::certs::institution_code(3);
        let a = Auditor::start(&config(dir.path(), AuditMode::Required)).unwrap();
        a.submit(who, vec![lookup(1, Ids::One(42))]).unwrap();
        a.submit(
            who,
            vec![lookup(5, Ids::Many([7, 8].into())), lookup(4, Ids::Nobody)],
        )
        .unwrap();
        a.shutdown();
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.records, 3);
        // A restart continues the chain.
        let a = Auditor::start(&config(dir.path(), AuditMode::Required)).unwrap();
        a.submit(who, vec![lookup(1, Ids::One(42))]).unwrap();
        drop(a);
        assert_eq!(verify(dir.path()).unwrap().records, 4);
        let mut seen = Vec::new();
        let filter = QueryFilter {
            person: Some(42),
            ..QueryFilter::default()
        };
        query(dir.path(), &filter, |v| {
            seen.push(v);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0]["who"], who.to_string());
        assert_eq!(seen[0]["status"], "VALID");
        assert!(seen[0]["time"].as_str().unwrap().ends_with("+09:00"));
    }

    #[test]
    fn an_unsealed_tail_is_sealed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let who = crate::certs::institution_code(1);
        let a = Auditor::start(&config(dir.path(), AuditMode::Required)).unwrap();
        a.submit(who, vec![lookup(1, Ids::One(1))]).unwrap();
        drop(a);
        // A crash after writing records and before their chain line, the
        // last one torn.
        let file = files(dir.path()).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(b"{\"ns\":1,\"who\":\"x\"}\n{\"ns\":2,\"wh")
            .unwrap();
        drop(f);
        assert!(verify(dir.path()).is_err());
        drop(Auditor::start(&config(dir.path(), AuditMode::Required)).unwrap());
        assert_eq!(verify(dir.path()).unwrap().records, 3);
    }

    /// Three hours of records, then each kind of tampering, each on a
    /// fresh copy: a flipped byte, a removed line, a removed middle file.
    #[test]
    fn tampering_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::create_dir(&good).unwrap();
        let mut w = Writer {
            dir: good.clone(),
            chain: [0; 32],
            retention: Duration::from_secs(u64::MAX / 4),
            removed_before: String::new(),
        };
        let who = crate::certs::institution_code(9);
        let start = UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        for hour in 0..3u64 {
            for batch in 0..2u64 {
                let r = Request {
                    ns: 1,
                    who,
                    lookups: vec![
                        lookup(1, Ids::One(hour * 10 + batch)),
                        lookup(4, Ids::Nobody),
                    ],
                };
                let t = start + Duration::from_secs(hour * 3_600 + batch);
                w.write_batch(&[r], t).unwrap();
            }
        }
        let all = files(&good).unwrap();
        assert_eq!(all.len(), 3);
        let report = verify(&good).unwrap();
        assert_eq!((report.files, report.batches, report.records), (3, 6, 12));

        let copy = |name: &str| {
            let to = dir.path().join(name);
            std::fs::create_dir(&to).unwrap();
            for f in &all {
                std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
            }
            (to.clone(), files(&to).unwrap())
        };
        let broken = |d: &Path| match verify(d) {
            Err(VerifyError::Broken {
                file,
                offset,
                reason,
            }) => (file, offset, reason),
            other => panic!("expected a broken chain, got {other:?}"),
        };
        // A flipped byte in a record of the second file.
        let (d, f) = copy("flipped");
        let mut bytes = std::fs::read(&f[1]).unwrap();
        let at = bytes.iter().position(|&b| b == b'"').unwrap() + 200;
        bytes[at] ^= 0x01;
        std::fs::write(&f[1], &bytes).unwrap();
        let (file, offset, _) = broken(&d);
        assert_eq!((file, offset > 0), (f[1].clone(), true));
        // A removed record line.
        let (d, f) = copy("removed_line");
        let text = std::fs::read_to_string(&f[2]).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(2);
        std::fs::write(&f[2], lines.join("\n") + "\n").unwrap();
        let (file, _, reason) = broken(&d);
        assert_eq!(file, f[2]);
        assert!(reason.contains("does not match"), "{reason}");
        // A removed file in the middle.
        let (d, f) = copy("removed_file");
        std::fs::remove_file(&f[1]).unwrap();
        let (file, offset, reason) = broken(&d);
        assert_eq!((file, offset), (f[2].clone(), 0));
        assert!(reason.contains("does not continue"), "{reason}");
        // The oldest file removed (retention) is fine.
        let (d, f) = copy("expired");
        std::fs::remove_file(&f[0]).unwrap();
        assert_eq!(verify(&d).unwrap().files, 2);
    }

    #[test]
    fn best_effort_loses_and_counts_while_it_cannot_write_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let trail = dir.path().join("trail");
        let who = crate::certs::institution_code(4);
        let a = Auditor::start(&config(&trail, AuditMode::BestEffort)).unwrap();
        let moved = dir.path().join("moved");
        std::fs::rename(&trail, &moved).unwrap();
        std::fs::write(&trail, "not a directory").unwrap();
        // Answered all the same; the records that cannot be written are lost.
        let mut n = 0u64;
        while a.failure().is_none() {
            assert!(a.submit(who, vec![lookup(1, Ids::One(n))]).is_ok() || a.failure().is_some());
            n += 1;
            assert!(n < 10_000, "the writer never failed");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(a.stats().lost.load(Ordering::Relaxed) >= 1);
        std::fs::remove_file(&trail).unwrap();
        std::fs::rename(&moved, &trail).unwrap();
        for _ in 0..500 {
            let _ = a.submit(who, vec![lookup(1, Ids::One(7))]);
            if a.failure().is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(a.failure().is_none(), "best effort never recovered");
        drop(a);
        assert!(verify(&trail).unwrap().records >= 1);
    }

    #[test]
    fn files_past_the_retention_period_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("audit-20000101T00.jsonl");
        let other = dir.path().join("notes.txt");
        std::fs::write(&old, header_line(&[0; 32])).unwrap();
        std::fs::write(&other, "kept").unwrap();
        let mut config = config(dir.path(), AuditMode::Required);
        config.retention_days = 30;
        let a = Auditor::start(&config).unwrap();
        a.submit(
            crate::certs::institution_code(2),
            vec![lookup(1, Ids::One(5))],
        )
        .unwrap();
        drop(a);
        assert!(!old.exists(), "an expired file was kept");
        assert!(other.exists(), "a file that is not the trail's was removed");
        assert_eq!(files(dir.path()).unwrap().len(), 1);
        assert_eq!(verify(dir.path()).unwrap().records, 1);
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("19700101"), Err("before 1970".into()));
        assert_eq!(
            parse_time("19700102").unwrap(),
            (86_400 - 9 * 3_600) * 1_000_000_000
        );
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1_000_000_000);
        assert!(parse_time("yesterday").is_err());
        assert_eq!(
            file_name(UNIX_EPOCH + Duration::from_secs(86_400 + 3_600 * 5)),
            "audit-19700102T05.jsonl"
        );
    }
}
