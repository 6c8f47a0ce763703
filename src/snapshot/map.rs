//! The one module with `unsafe` code: mapping a snapshot file and reading
//! the rkyv archive in it without copying.
//!
//! A [`MappedArchive`] can only be made by [`MappedArchive::open`], which
//! runs rkyv's validation (bytecheck) over the archive bytes first. After
//! that, [`MappedArchive::body`] reads the validated archive in place.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::ops::Range;

use memmap2::{Mmap, MmapOptions};

use super::body::ArchivedBody;

/// A read-only mapping of a whole snapshot file, plus the byte range of its
/// validated archive.
#[derive(Debug)]
pub struct MappedArchive {
    /// The mapping; lookups borrow from it, and it is unmapped on drop.
    map: Mmap,
    /// Where the archive lies in `map`, validated by `open`.
    archive: Range<usize>,
}

/// Maps `file` read-only, asks for huge pages (the page cache holds large
/// folios; mapping them with 2 MiB entries spares most TLB misses on random
/// lookups), and faults the pages in up front so that the first lookups do
/// not pay for page faults.
pub fn map_file(file: &File) -> io::Result<Mmap> {
    // SAFETY: the mapping is read-only and private. Snapshot files are
    // written once to a temporary name, fsynced and renamed into place, and
    // never modified afterwards (ARCHITECTURE.md, "Architecture invariant");
    // so the bytes cannot change under the mapping while we hold it. A file
    // truncated by an outside actor would raise SIGBUS, as for any mapped
    // file; that is the documented operational contract of the snapshot
    // directory.
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

impl MappedArchive {
    /// Validates the archive at `archive` within `map` with rkyv's bytecheck
    /// and keeps both.
    pub fn open(map: Mmap, archive: Range<usize>) -> Result<MappedArchive, String> {
        let bytes = map
            .get(archive.clone())
            .ok_or_else(|| "archive range lies outside the file".to_string())?;
        rkyv::access::<ArchivedBody, rancor::Error>(bytes).map_err(|e| e.to_string())?;
        Ok(MappedArchive { map, archive })
    }

    /// The whole mapped file.
    pub fn file_bytes(&self) -> &[u8] {
        &self.map
    }

    /// The archive root, read in place.
    #[inline]
    pub fn body(&self) -> &ArchivedBody {
        let bytes = &self.map[self.archive.clone()];
        // SAFETY: `open` is the only constructor, and it validated exactly
        // these bytes as an `ArchivedBody` with `rkyv::access`. The mapping
        // is immutable (see `map_file`), so they are still valid.
        unsafe { rkyv::access_unchecked::<ArchivedBody>(bytes) }
    }
}
