//! The fixed 512-byte header at the start of every snapshot file.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `QUALCSNP` |
//! | 8 | 4 | format version (this header layout) |
//! | 12 | 4 | schema version (the archive types, `body::SCHEMA_VERSION`) |
//! | 16 | 1 | rkyv pointer width in bits (64) |
//! | 17 | 1 | endianness (`L` little) |
//! | 18 | 1 | 1 when the archive is aligned (rkyv `aligned`) |
//! | 19 | 1 | checksum algorithm (1 = XXH3-128) |
//! | 20 | 4 | header length (512) |
//! | 24 | 8 | generation |
//! | 32 | 8 | created at, Unix seconds |
//! | 40 | 8 | record (qualification) count |
//! | 48 | 8 | person count |
//! | 56 | 8 | archive offset (512) |
//! | 64 | 8 | archive length |
//! | 72 | 16 | XXH3-128 of the archive, little-endian |
//! | 88 | 8 | card key id (`CardKey::id`) |
//! | 96 | 8 | source version (e.g. the store's change counter; 0 if none) |
//! | 104 | 2 | source description length |
//! | 106 | 398 | source description, UTF-8, zero-padded |
//! | 504 | 8 | XXH3-64 of bytes 0..504 |
//!
//! All integers are little-endian.

use serde::Serialize;

use super::SnapshotError;

/// File magic.
pub const MAGIC: [u8; 8] = *b"QUALCSNP";
/// Version of this header layout.
pub const FORMAT_VERSION: u32 = 1;
/// Header length; the archive starts right after it.
pub const HEADER_LEN: usize = 512;
/// The rkyv pointer width this build writes and reads.
pub const POINTER_WIDTH: u8 = 64;
/// `L`: little-endian archives.
pub const ENDIANNESS: u8 = b'L';
/// XXH3-128 over the archive.
pub const CHECKSUM_XXH3_128: u8 = 1;
const SOURCE_MAX: usize = 398;

/// A snapshot header, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    /// Header layout version.
    pub format_version: u32,
    /// Archive schema version.
    pub schema_version: u32,
    /// rkyv relative-pointer width, bits.
    pub pointer_width: u8,
    /// `"little"` or `"big"`.
    pub endianness: &'static str,
    /// Whether the archive uses rkyv's aligned primitives.
    pub aligned: bool,
    /// Monotonic generation; also the file name.
    pub generation: u64,
    /// Creation time, Unix seconds.
    pub created_at_unix: u64,
    /// Qualification records.
    pub records: u64,
    /// Persons.
    pub persons: u64,
    /// Where the archive starts.
    pub archive_offset: u64,
    /// Archive length in bytes.
    pub archive_len: u64,
    /// `"xxh3-128"`.
    pub checksum_algorithm: &'static str,
    /// The archive checksum, hex.
    #[serde(serialize_with = "hex128")]
    pub checksum: u128,
    /// Fingerprint of the card key the digests were made with, hex.
    #[serde(serialize_with = "hex64")]
    pub card_key_id: u64,
    /// The source's version (change counter) at build time; 0 if none.
    pub source_version: u64,
    /// What the snapshot was built from.
    pub source: String,
}

fn hex128<S: serde::Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:032x}"))
}

fn hex64<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:016x}"))
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.format_version.to_le_bytes());
        b[12..16].copy_from_slice(&self.schema_version.to_le_bytes());
        b[16] = self.pointer_width;
        b[17] = if self.endianness == "big" { b'B' } else { b'L' };
        b[18] = u8::from(self.aligned);
        b[19] = CHECKSUM_XXH3_128;
        b[20..24].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.generation.to_le_bytes());
        b[32..40].copy_from_slice(&self.created_at_unix.to_le_bytes());
        b[40..48].copy_from_slice(&self.records.to_le_bytes());
        b[48..56].copy_from_slice(&self.persons.to_le_bytes());
        b[56..64].copy_from_slice(&self.archive_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.archive_len.to_le_bytes());
        b[72..88].copy_from_slice(&self.checksum.to_le_bytes());
        b[88..96].copy_from_slice(&self.card_key_id.to_le_bytes());
        b[96..104].copy_from_slice(&self.source_version.to_le_bytes());
        let src = truncate_utf8(&self.source, SOURCE_MAX);
        b[104..106].copy_from_slice(&(src.len() as u16).to_le_bytes());
        b[106..106 + src.len()].copy_from_slice(src.as_bytes());
        let sum = xxhash_rust::xxh3::xxh3_64(&b[..504]);
        b[504..512].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Reads and decodes the header of the snapshot file at `path`, without
    /// mapping or checking the archive (cheap, whatever the file's size).
    pub fn read(path: &std::path::Path) -> Result<Header, SnapshotError> {
        use std::io::Read;
        let mut b = Vec::with_capacity(HEADER_LEN);
        std::fs::File::open(path)
            .and_then(|f| f.take(HEADER_LEN as u64).read_to_end(&mut b))
            .map_err(|e| SnapshotError::io(path, e))?;
        Header::decode(&b)
    }

    /// Decodes and checks a header: magic, versions, layout flags and its
    /// own checksum. It does not look at the archive.
    pub fn decode(b: &[u8]) -> Result<Header, SnapshotError> {
        if b.len() < HEADER_LEN {
            return Err(SnapshotError::Truncated {
                what: "header",
                expected: HEADER_LEN as u64,
                found: b.len() as u64,
            });
        }
        if b[0..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let format_version = u32_at(8);
        if format_version != FORMAT_VERSION {
            return Err(SnapshotError::Version {
                what: "format",
                found: format_version,
                supported: FORMAT_VERSION,
            });
        }
        if xxhash_rust::xxh3::xxh3_64(&b[..504]) != u64_at(504) {
            return Err(SnapshotError::HeaderChecksum);
        }
        let schema_version = u32_at(12);
        if schema_version != super::body::SCHEMA_VERSION {
            return Err(SnapshotError::Version {
                what: "schema",
                found: schema_version,
                supported: super::body::SCHEMA_VERSION,
            });
        }
        if b[16] != POINTER_WIDTH || b[17] != ENDIANNESS || b[18] != 1 {
            return Err(SnapshotError::Layout(format!(
                "archive written with {}-bit pointers, {} endian, {}; this build reads {}-bit, little endian, aligned",
                b[16],
                if b[17] == b'B' { "big" } else { "little" },
                if b[18] == 1 { "aligned" } else { "unaligned" },
                POINTER_WIDTH
            )));
        }
        if b[19] != CHECKSUM_XXH3_128 {
            return Err(SnapshotError::Layout(format!(
                "unknown checksum algorithm {}",
                b[19]
            )));
        }
        if u32_at(20) as usize != HEADER_LEN {
            return Err(SnapshotError::Layout("unexpected header length".into()));
        }
        let src_len = usize::from(u16::from_le_bytes([b[104], b[105]]));
        let source = b
            .get(106..106 + src_len.min(SOURCE_MAX))
            .and_then(|s| std::str::from_utf8(s).ok())
            .ok_or_else(|| SnapshotError::Layout("source description is not UTF-8".into()))?
            .to_string();
        Ok(Header {
            format_version,
            schema_version,
            pointer_width: b[16],
            endianness: "little",
            aligned: true,
            generation: u64_at(24),
            created_at_unix: u64_at(32),
            records: u64_at(40),
            persons: u64_at(48),
            archive_offset: u64_at(56),
            archive_len: u64_at(64),
            checksum_algorithm: "xxh3-128",
            checksum: u128::from_le_bytes(b[72..88].try_into().unwrap_or_default()),
            card_key_id: u64_at(88),
            source_version: u64_at(96),
            source,
        })
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
