//! Writing snapshot files into a snapshot directory, atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rkyv::ser::writer::IoWriter;
use serde::Serialize;
use xxhash_rust::xxh3::Xxh3;

use super::body::{Body, SCHEMA_VERSION};
use super::header::{Header, FORMAT_VERSION, HEADER_LEN, POINTER_WIDTH};
use super::SnapshotError;

/// File name extension of snapshots.
pub const EXTENSION: &str = "qcs";

/// The mode snapshot files are created with (less what the umask clears):
/// owner read-write, group read, nothing for others, since they hold
/// names and birth dates.
pub const SNAPSHOT_MODE: u32 = 0o640;

/// What the header records about where a snapshot came from.
#[derive(Debug, Clone)]
pub struct SnapshotMeta {
    /// Human-readable source, e.g. `csv:/data/enrollees.csv`.
    pub source: String,
    /// The source's change counter at build time (0 if it has none).
    pub source_version: u64,
    /// `CardKey::id` of the key the card digests were made with.
    pub card_key_id: u64,
}

/// A snapshot that was written.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// Its path.
    pub path: PathBuf,
    /// Its generation.
    pub generation: u64,
    /// Qualification records.
    pub records: u64,
    /// Persons.
    pub persons: u64,
    /// File size.
    pub bytes: u64,
}

/// The generations present in `dir`, ascending (files named `<n>.qcs`).
pub fn list_generations(dir: &Path) -> Result<Vec<u64>, SnapshotError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SnapshotError::io(dir, e)),
    };
    let mut gens = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SnapshotError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_suffix(".qcs")
            .and_then(|stem| stem.parse::<u64>().ok())
        {
            gens.push(n);
        }
    }
    gens.sort_unstable();
    Ok(gens)
}

/// The newest generation in `dir`, if any.
pub fn newest_generation(dir: &Path) -> Result<Option<u64>, SnapshotError> {
    Ok(list_generations(dir)?.last().copied())
}

/// Path of generation `n` in `dir`.
pub fn snapshot_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{generation}.{EXTENSION}"))
}

/// Writes `body` as the next generation in `dir` (created if missing).
///
/// The file is created with mode [`SNAPSHOT_MODE`] under a temporary
/// name, written, fsynced, then hard-linked to
/// `<generation>.qcs`, which fails rather than replaces if that name exists
/// (a concurrent builder took it; the next generation is tried). The
/// directory is fsynced after the link.
pub fn write_snapshot(
    dir: &Path,
    body: &Body,
    meta: &SnapshotMeta,
) -> Result<Written, SnapshotError> {
    fs::create_dir_all(dir).map_err(|e| SnapshotError::io(dir, e))?;
    let tmp = temp_path(dir);
    let result = write_tmp_and_link(dir, &tmp, body, meta);
    let _ = fs::remove_file(&tmp);
    result
}

/// A fresh temporary file name in `dir` for a snapshot being written
/// (built here or downloaded): `.build-<pid>-<n>.qcs.tmp`, the form
/// [`remove_stale_builds`] removes once its process is gone.
pub fn temp_path(dir: &Path) -> PathBuf {
    dir.join(format!(
        ".build-{}-{}.qcs.tmp",
        std::process::id(),
        unique()
    ))
}

/// Links the complete, fsynced file `tmp` into `dir` as generation
/// `generation`; fails with [`io::ErrorKind::AlreadyExists`] (never
/// replaces) if that generation is there. Fsyncs the directory.
pub fn link_generation(dir: &Path, tmp: &Path, generation: u64) -> Result<PathBuf, SnapshotError> {
    let path = snapshot_path(dir, generation);
    fs::hard_link(tmp, &path).map_err(|e| SnapshotError::io(&path, e))?;
    sync_dir(dir)?;
    Ok(path)
}

/// How long a temporary build file may go unmodified before it counts as
/// abandoned whatever its process id says (a builder writes continuously;
/// this covers builders in another PID namespace sharing the directory).
pub const STALE_BUILD_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the temporary files (`.build-<pid>-<n>.qcs.tmp`) that builds
/// killed before they finished left in `dir`; returns how many.
///
/// Call it before this process starts a build in `dir`. A file counts as
/// abandoned when its process id is this process's (it has no build in
/// progress yet), or names no running process (checked in `/proc`, when
/// there is one), or when it was not modified for [`STALE_BUILD_AGE`].
/// A file a running `qualcache snapshot build` is writing is left alone.
pub fn remove_stale_builds(dir: &Path) -> Result<usize, SnapshotError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(SnapshotError::io(dir, e)),
    };
    let have_proc = Path::new("/proc/self").exists();
    let own = std::process::id();
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| SnapshotError::io(dir, e))?;
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".build-"))
            .and_then(|n| n.strip_suffix(".tmp"))
        else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let dead = pid.is_some_and(|pid| {
            pid == own || (have_proc && !Path::new("/proc").join(pid.to_string()).exists())
        });
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= STALE_BUILD_AGE);
        if !(dead || old) {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SnapshotError::io(&entry.path(), e)),
        }
    }
    Ok(removed)
}

fn unique() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn write_tmp_and_link(
    dir: &Path,
    tmp: &Path,
    body: &Body,
    meta: &SnapshotMeta,
) -> Result<Written, SnapshotError> {
    let io_err = |e| SnapshotError::io(tmp, e);
    // Owner read-write, group read: the file holds names and birth dates.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(SNAPSHOT_MODE)
        .open(tmp)
        .map_err(io_err)?;
    file.write_all(&[0u8; HEADER_LEN]).map_err(io_err)?;
    // rkyv writes field by field; the buffer turns that into large writes,
    // and the checksum is computed over those.
    let mut out = BufWriter::with_capacity(
        4 << 20,
        HashingWriter {
            inner: &mut file,
            hasher: Xxh3::new(),
            len: 0,
            failed: None,
        },
    );
    if let Err(e) = rkyv::api::high::to_bytes_in::<_, rancor::Error>(body, IoWriter::new(&mut out))
    {
        // A write that failed (no space left on the device, a file size
        // limit) is an I/O error on the file, not a bad archive.
        return Err(match out.get_mut().failed.take() {
            Some(io) => io_err(io),
            None => SnapshotError::Invalid(format!("serialising the archive: {e}")),
        });
    }
    let hashing = out.into_inner().map_err(|e| io_err(e.into_error()))?;
    let (archive_len, checksum) = (hashing.len, hashing.hasher.digest128());

    let mut header = header_for(body, meta, archive_len, checksum);
    // Take the next free generation; retry if another builder wins a race.
    let mut generation = newest_generation(dir)?.unwrap_or(0) + 1;
    loop {
        header.generation = generation;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        file.write_all(&header.encode()).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        let path = snapshot_path(dir, generation);
        match fs::hard_link(tmp, &path) {
            Ok(()) => {
                sync_dir(dir)?;
                return Ok(Written {
                    path,
                    generation,
                    records: header.records,
                    persons: header.persons,
                    bytes: HEADER_LEN as u64 + archive_len,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => generation += 1,
            Err(e) => return Err(SnapshotError::io(&path, e)),
        }
    }
}

/// The header of a snapshot of `body` (generation 0: the caller sets it).
fn header_for(body: &Body, meta: &SnapshotMeta, archive_len: u64, checksum: u128) -> Header {
    Header {
        format_version: FORMAT_VERSION,
        schema_version: SCHEMA_VERSION,
        pointer_width: POINTER_WIDTH,
        endianness: "little",
        aligned: true,
        generation: 0,
        created_at_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        records: body.quals.len() as u64,
        persons: body.persons.len() as u64,
        archive_offset: HEADER_LEN as u64,
        archive_len,
        checksum_algorithm: "xxh3-128",
        checksum,
        card_key_id: meta.card_key_id,
        source_version: meta.source_version,
        source: meta.source.clone(),
    }
}

/// The bytes of a snapshot file of `body` as `generation`, made in
/// memory (the daemon's overlay of changed persons is one, never
/// written to disk).
pub fn snapshot_bytes(
    body: &Body,
    meta: &SnapshotMeta,
    generation: u64,
) -> Result<Vec<u8>, SnapshotError> {
    let archive = rkyv::to_bytes::<rancor::Error>(body)
        .map_err(|e| SnapshotError::Invalid(format!("serialising the archive: {e}")))?;
    let checksum = xxhash_rust::xxh3::xxh3_128(&archive);
    let mut header = header_for(body, meta, archive.len() as u64, checksum);
    header.generation = generation;
    let mut bytes = Vec::with_capacity(HEADER_LEN + archive.len());
    bytes.extend_from_slice(&header.encode());
    bytes.extend_from_slice(&archive);
    Ok(bytes)
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotError::io(dir, e))
}

/// Counts and checksums the archive bytes on their way to the file.
struct HashingWriter<W> {
    inner: W,
    hasher: Xxh3,
    len: u64,
    /// The first write error (the disk full, say), for the error message.
    failed: Option<io::Error>,
}

/// A copy of `e` (the OS error, else its kind and message).
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self.inner.write(buf) {
            Ok(n) => n,
            Err(e) => {
                // rkyv's serialiser keeps no cause: keep it here.
                self.failed = Some(copy_error(&e));
                return Err(e);
            }
        };
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
