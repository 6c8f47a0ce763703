//! Snapshot files: writing, opening, verifying, and lookups over them.
//!
//! A snapshot is `<generation>.qcs` in a snapshot directory: a 512-byte
//! [`Header`] followed by an rkyv archive of a [`body::Body`]. Files are
//! written to a temporary name, fsynced and linked into place, so a reader
//! never sees a partial file and an existing snapshot is never replaced.
//! [`Snapshot::open`] maps the file, checks the header and the archive
//! checksum once, validates the archive with bytecheck, and from then on
//! answers lookups from the mapping without copying.

pub mod body;
pub mod builder;
pub mod header;
pub mod lookup;
mod map;
mod verify;
pub mod write;

use std::fs::File;
use std::path::{Path, PathBuf};

pub use builder::{BuildError, Builder, WarningCount};
pub use header::Header;
pub use lookup::{
    Answer, CorruptRecord, Except, Filter, Matches, Newer, PersonBits, PersonSet, QualView,
};
pub use verify::VerifyReport;
pub use write::{list_generations, newest_generation, write_snapshot, SnapshotMeta, Written};

use crate::model::{CardDigest, Date, InsuranceKey};
use crate::progress::Progress;
use body::ArchivedBody;
use map::{Backing, MappedArchive};

/// Why a snapshot file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading, writing or mapping failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause (in the message, not repeated as a source).
        error: std::io::Error,
    },
    /// Not a qualcache snapshot at all.
    #[error("not a qualcache snapshot (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error("{what} version {found} is not supported (this build reads version {supported})")]
    Version {
        /// `"format"` or `"schema"`.
        what: &'static str,
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// Pointer width, endianness, alignment or checksum algorithm differ.
    #[error("incompatible layout: {0}")]
    Layout(String),
    /// The header's own checksum does not match.
    #[error("header checksum mismatch (corrupt header)")]
    HeaderChecksum,
    /// Shorter than the header says.
    #[error("truncated {what}: expected {expected} bytes, found {found}")]
    Truncated {
        /// What is cut short.
        what: &'static str,
        /// Expected length.
        expected: u64,
        /// Actual length.
        found: u64,
    },
    /// Longer than the header says.
    #[error("trailing data: file is {found} bytes, header says {expected}")]
    Trailing {
        /// Length from the header.
        expected: u64,
        /// Actual length.
        found: u64,
    },
    /// The archive's checksum does not match the header.
    #[error("archive checksum mismatch (corrupt data)")]
    Checksum,
    /// The archive fails validation.
    #[error("invalid archive: {0}")]
    Invalid(String),
    /// No read lease could be taken on the file.
    #[error("{path}: no read lease on the file: {source}")]
    Lease {
        /// The file.
        path: PathBuf,
        /// Why (`EAGAIN`: open for writing elsewhere; `EACCES`: another
        /// user's file; `EINVAL`: no leases on this file system).
        source: std::io::Error,
    },
}

impl SnapshotError {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> SnapshotError {
        SnapshotError::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// An open, verified snapshot. Lookups borrow from it; it is `Send + Sync`
/// and is shared behind an `Arc` by the daemon.
#[derive(Debug)]
pub struct Snapshot {
    header: Header,
    path: PathBuf,
    /// The mapping and its validated archive.
    archive: MappedArchive,
}

impl Snapshot {
    /// Opens a snapshot: header, file length, archive checksum, bytecheck.
    /// Its bytes are a mapping of the file, which shows whatever another
    /// process writes into it: for short-lived readers (the command line).
    /// A server uses [`open_leased`](Self::open_leased).
    pub fn open(path: &Path) -> Result<Snapshot, SnapshotError> {
        let file = File::open(path).map_err(|e| SnapshotError::io(path, e))?;
        let map = map::map_file(&file).map_err(|e| SnapshotError::io(path, e))?;
        Snapshot::checked(path, Backing::Map { map, file })
    }

    /// Opens a snapshot under a read lease on its file, taken before the
    /// bytes are mapped and checked: from then on, another process cannot
    /// open the file for writing or truncate it before the kernel has told
    /// this process (SIGIO, whose handler must be installed first) and
    /// waited for it to let the file go (see `map::take_read_lease`).
    /// [`SnapshotError::Lease`] when no lease can be had (the file is open
    /// for writing somewhere, belongs to another user, or lies on a file
    /// system without leases): [`read`](Self::read) it instead.
    pub fn open_leased(path: &Path) -> Result<Snapshot, SnapshotError> {
        let file = File::open(path).map_err(|e| SnapshotError::io(path, e))?;
        map::take_read_lease(&file).map_err(|source| SnapshotError::Lease {
            path: path.to_path_buf(),
            source,
        })?;
        let map = map::map_file(&file).map_err(|e| SnapshotError::io(path, e))?;
        Snapshot::checked(path, Backing::Map { map, file })
    }

    /// Reads a snapshot into a private heap copy and checks it as
    /// [`open`](Self::open) does: nothing another process does to the file
    /// afterwards reaches it. Costs memory for the whole file.
    pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
        let mut file = File::open(path).map_err(|e| SnapshotError::io(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| SnapshotError::io(path, e))?
            .len();
        let backing = Backing::read_from(&mut file, len).map_err(|e| SnapshotError::io(path, e))?;
        Snapshot::checked(path, backing)
    }

    /// A snapshot held in `bytes` (a private copy of them), checked as
    /// [`open`](Self::open) checks a file; `name` stands for the path in
    /// errors.
    pub fn from_bytes(name: &Path, bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        Snapshot::checked(name, Backing::copy_of(bytes))
    }

    /// A private heap copy of this snapshot, checked again as if opened:
    /// what the daemon serves once a writer waits for the file's lease.
    pub fn private_copy(&self) -> Result<Snapshot, SnapshotError> {
        Snapshot::checked(&self.path, Backing::copy_of(self.archive.file_bytes()))
    }

    /// Whether the bytes are a private copy rather than a mapping.
    pub fn is_private(&self) -> bool {
        self.archive.file().is_none()
    }

    /// Whether another process waits to open this snapshot's mapped file
    /// for writing or to truncate it (its read lease is being broken).
    pub fn lease_breaking(&self) -> bool {
        self.archive.file().is_some_and(map::lease_breaking)
    }

    /// The checks of [`open`](Self::open) over `backing`'s bytes.
    fn checked(path: &Path, backing: Backing) -> Result<Snapshot, SnapshotError> {
        let map = backing.bytes();
        let header = Header::decode(map)?;
        let start = header.archive_offset;
        let expected = start.saturating_add(header.archive_len);
        let found = map.len() as u64;
        if found < expected {
            return Err(SnapshotError::Truncated {
                what: "archive",
                expected,
                found,
            });
        }
        if found > expected {
            return Err(SnapshotError::Trailing { expected, found });
        }
        let range = start as usize..expected as usize;
        if xxhash_rust::xxh3::xxh3_128(&map[range.clone()]) != header.checksum {
            return Err(SnapshotError::Checksum);
        }
        let archive = MappedArchive::new(backing, range).map_err(SnapshotError::Invalid)?;
        let snapshot = Snapshot {
            header,
            path: path.to_path_buf(),
            archive,
        };
        snapshot.check_counts()?;
        Ok(snapshot)
    }

    /// Cheap consistency checks of the archive against the header.
    fn check_counts(&self) -> Result<(), SnapshotError> {
        let b = self.body();
        if b.quals.len() as u64 != self.header.records
            || b.persons.len() as u64 != self.header.persons
            || b.person_ids.len() != b.persons.len()
        {
            return Err(SnapshotError::Invalid(
                "record or person count differs from the header".into(),
            ));
        }
        if b.key_slots.len() <= b.quals.len() {
            return Err(SnapshotError::Invalid(
                "insurance index has no free slot".into(),
            ));
        }
        if b.card_slots.is_empty() {
            return Err(SnapshotError::Invalid("card index has no free slot".into()));
        }
        Ok(())
    }

    /// The whole file's bytes (header and archive), as checked.
    pub fn file_bytes(&self) -> &[u8] {
        self.archive.file_bytes()
    }

    /// The decoded header.
    #[inline]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file this snapshot was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The archived body.
    #[inline]
    pub fn body(&self) -> &ArchivedBody {
        self.archive.body()
    }

    /// Lookup by card digest (see [`lookup::by_card`]).
    #[inline]
    pub fn lookup_card(&self, digest: &CardDigest, as_of: Date) -> Answer<'_> {
        lookup::by_card(self.body(), digest, as_of)
    }

    /// Lookup by insurance key and birth date (see [`lookup::by_insurance`]).
    #[inline]
    pub fn lookup_insurance(&self, key: &InsuranceKey, birth: Date, as_of: Date) -> Answer<'_> {
        lookup::by_insurance(self.body(), key, birth, as_of)
    }

    /// Full validation: everything `open` checks, then every record decoded
    /// and every index entry checked.
    pub fn verify(&self) -> Result<VerifyReport, SnapshotError> {
        self.verify_reporting(&Progress::none())
    }

    /// [`verify`](Snapshot::verify), telling `progress` how far it is.
    pub fn verify_reporting(&self, progress: &Progress) -> Result<VerifyReport, SnapshotError> {
        verify::verify(
            self.body(),
            self.archive.file_bytes().len() as u64,
            progress,
        )
    }
}

/// Interned string lookup over an owned body (used by the builder).
pub(crate) fn lookup_string(body: &body::Body, id: u32) -> Option<&str> {
    let i = id as usize;
    let end = *body.string_ends.get(i)? as usize;
    let start = if i == 0 {
        0
    } else {
        *body.string_ends.get(i - 1)? as usize
    };
    std::str::from_utf8(body.strings.get(start..end)?).ok()
}
