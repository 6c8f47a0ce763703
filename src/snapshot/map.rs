//! The one module with `unsafe` code: mapping a snapshot file, reading the
//! rkyv archive in it without copying, and the read lease that keeps other
//! processes from changing the file under the mapping.
//!
//! A [`MappedArchive`] can only be made by [`MappedArchive::new`], which
//! runs rkyv's validation (bytecheck) over the archive bytes first. After
//! that, [`MappedArchive::body`] reads the validated archive in place.
//!
//! Its bytes live either in a shared read-only mapping of the file (kept
//! open, so that a read lease can be held on it) or in a private heap
//! copy. A mapping shows whatever the file holds: another process that
//! truncates, overwrites or writes into the file would make lookups read
//! unverified bytes or fault (SIGBUS). The daemon therefore serves a
//! mapping only while it holds a read lease on the file (`F_SETLEASE`):
//! the kernel then holds back any open for writing or truncation and
//! signals the daemon (SIGIO), which swaps in a verified private copy and
//! drops the mapping, releasing the lease, before the writer proceeds.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::io::AsRawFd;

use memmap2::{Mmap, MmapOptions};
use rkyv::util::AlignedVec;

use super::body::ArchivedBody;

/// Where a snapshot's bytes live.
#[derive(Debug)]
pub enum Backing {
    /// A shared read-only mapping of the file, and the file, kept open for
    /// its lease; unmapped and closed on drop.
    Map {
        /// The mapping.
        map: Mmap,
        /// The open file.
        file: File,
    },
    /// A private copy on the heap (16-byte aligned, as rkyv needs).
    Heap(AlignedVec<16>),
}

impl Backing {
    /// The file's bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map { map, .. } => map,
            Backing::Heap(v) => v,
        }
    }

    /// A private heap copy of the `len` bytes `reader` holds.
    pub fn read_from(reader: &mut impl io::Read, len: u64) -> io::Result<Backing> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let mut v = AlignedVec::<16>::with_capacity(len);
        v.extend_from_reader(&mut io::Read::take(reader, len as u64))?;
        Ok(Backing::Heap(v))
    }

    /// A private heap copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> Backing {
        let mut v = AlignedVec::<16>::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        Backing::Heap(v)
    }
}

/// A whole snapshot file's bytes, plus the byte range of its validated
/// archive.
#[derive(Debug)]
pub struct MappedArchive {
    /// The bytes; lookups borrow from them.
    backing: Backing,
    /// Where the archive lies in `backing`, validated by `new`.
    archive: Range<usize>,
}

/// Maps `file` read-only, asks for huge pages (the page cache holds large
/// folios; mapping them with 2 MiB entries spares most TLB misses on random
/// lookups), and faults the pages in up front so that the first lookups do
/// not pay for page faults.
pub fn map_file(file: &File) -> io::Result<Mmap> {
    // SAFETY: the mapping is read-only and shared: it shows the file's
    // current bytes. Snapshot files are written once to a temporary name,
    // fsynced and renamed into place, and qualcache never modifies them
    // afterwards; another process could. Opening checks the bytes once
    // (header, checksum, bytecheck), so the daemon serves a mapping only
    // while it holds a read lease on the file (`take_read_lease`), which
    // makes the kernel hold back writers until the daemon has let go of
    // the mapping; without a lease it serves a verified heap copy instead.
    // Short-lived readers (the command line) accept that a file changed
    // under them may fault, as for any mapped file.
    let map = unsafe { MmapOptions::new().map(file)? };
    #[cfg(target_os = "linux")]
    {
        // Advice only: a kernel without file huge pages ignores it.
        let _ = map.advise(memmap2::Advice::HugePage);
        let _ = map.advise(memmap2::Advice::Random);
        if map.advise(memmap2::Advice::PopulateRead).is_err() {
            // Before Linux 5.14: fault the pages in by hand.
            let _ = map.advise(memmap2::Advice::WillNeed);
        }
    }
    Ok(map)
}

/// Takes a read lease on `file` (`F_SETLEASE`, `F_RDLCK`): until the
/// lease is released (the file closed) or broken, the kernel holds back any
/// other open of the file for writing and any truncation for up to
/// `/proc/sys/fs/lease-break-time` seconds (45 by default) and signals this
/// process with SIGIO, whose handler must be installed first. Fails when
/// the file is open for writing anywhere, or is not this user's (without
/// CAP_LEASE), or its file system has no leases.
pub fn take_read_lease(file: &File) -> io::Result<()> {
    // SAFETY: fcntl on a file descriptor that `file` owns and keeps open
    // for the call; F_SETLEASE takes an int argument and touches no memory
    // of ours.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a lease on `file` is being broken (a writer waits for it).
pub fn lease_breaking(file: &File) -> bool {
    // SAFETY: as in `take_read_lease`; F_GETLEASE takes no argument.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLEASE) };
    // While a break is pending, the lease reads as the type it must
    // become: F_UNLCK for a writer.
    r == libc::F_UNLCK
}

impl MappedArchive {
    /// Validates the archive at `archive` within `backing` with rkyv's
    /// bytecheck and keeps both.
    pub fn new(backing: Backing, archive: Range<usize>) -> Result<MappedArchive, String> {
        let bytes = backing
            .bytes()
            .get(archive.clone())
            .ok_or_else(|| "archive range lies outside the file".to_string())?;
        rkyv::access::<ArchivedBody, rancor::Error>(bytes).map_err(|e| e.to_string())?;
        Ok(MappedArchive { backing, archive })
    }

    /// The whole file's bytes.
    pub fn file_bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// The open file behind a mapping; `None` for a heap copy.
    pub fn file(&self) -> Option<&File> {
        match &self.backing {
            Backing::Map { file, .. } => Some(file),
            Backing::Heap(_) => None,
        }
    }

    /// The archive root, read in place.
    #[inline]
    pub fn body(&self) -> &ArchivedBody {
        let bytes = &self.backing.bytes()[self.archive.clone()];
        // SAFETY: `new` is the only constructor, and it validated exactly
        // these bytes as an `ArchivedBody` with `rkyv::access`. A heap copy
        // is ours alone; a mapping is served only under a read lease (see
        // `map_file`), so they are still the bytes validated.
        unsafe { rkyv::access_unchecked::<ArchivedBody>(bytes) }
    }
}
