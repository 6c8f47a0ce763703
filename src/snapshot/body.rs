//! The rkyv archive inside a snapshot file.
//!
//! Every record is a fixed-size struct of integers and byte arrays, so the
//! archive is a handful of flat arrays: bytecheck validation of it is cheap,
//! and a lookup touches three or four cache lines. Variable-length text
//! lives in two byte pools; code-table values are stored as their
//! `to_byte()` form and decoded (and checked) when read.
//!
//! Layout choices, all recorded by `SCHEMA_VERSION`:
//! - `persons` and `quals` are in input order; a person's qualifications are
//!   the contiguous run `first_qual .. first_qual + qual_count`.
//! - Both indexes are open-addressing tables with linear probing at load
//!   factor <= 3/4, slot = fastrange(64-bit hash, table length). A slot holds
//!   a 32-bit tag and the target row; `EMPTY` marks a free slot.

use rkyv::{Archive, Serialize};

use crate::model::text::{KeyText, KEY_TEXT_BUF};

/// Version of the types in this file; bump on any change to them.
pub const SCHEMA_VERSION: u32 = 9;

/// Marks an absent row index, date or string.
pub const NONE: u32 = u32::MAX;
/// Marks an absent date.
pub const NO_DATE: i32 = i32::MIN;
/// Marks an absent branch or code byte.
pub const NO_BYTE: u8 = 0;
/// Scheme code of medical-aid (生活保護) payer numbers.
pub const MEDICAL_AID_SCHEME: u8 = 12;
/// Bytes of key text stored inline in a `QualRec`.
pub const INLINE_KEY: usize = 16;
/// `QualRec::flags`: preschool.
pub const FLAG_PRESCHOOL: u8 = 1;
/// `QualRec::flags`: medical aid, ticket not registered (status 6).
pub const FLAG_AID_UNREGISTERED: u8 = 2;

/// The archive root.
#[derive(Archive, Serialize, Debug, Default)]
pub struct Body {
    /// Insurers referenced by `QualRec::insurer`.
    pub insurers: Vec<InsurerRec>,
    /// Interned strings (names, kana, insurer and welfare office names):
    /// string `i` is `strings[string_ends[i-1]..string_ends[i]]`.
    pub strings: Vec<u8>,
    /// End offsets of the interned strings in `strings`.
    pub string_ends: Vec<u32>,
    /// Key texts too long to fit in `QualRec::key`: symbol then number.
    pub keytext: Vec<u8>,
    /// Persons, in input order.
    pub persons: Vec<PersonRec>,
    /// The store's id (`person_id`) of each person, parallel to
    /// `persons`: what the audit trail records as "whom", never part of an
    /// answer. Apart from `PersonRec` so lookups do not carry it through
    /// their cache lines.
    pub person_ids: Vec<u64>,
    /// Qualifications, grouped by person.
    pub quals: Vec<QualRec>,
    /// Where each qualification came from in its store (the CSV line, or
    /// the database's `qualification_id`), run-length encoded: the row of
    /// qualification `q` is `row + (q - qual)` for the last mark with
    /// `qual <= q`, else `q + 1`. A mark is kept only where the numbering
    /// does not run on, so an export in order costs one mark. Only the
    /// audit trail reads it.
    pub row_marks: Vec<RowMark>,
    /// Optional certificate and public-expense data.
    pub extras: Vec<ExtraRec>,
    /// Card index: slots over `persons` keyed by the card digest.
    pub card_slots: Vec<Slot>,
    /// Insurance index: slots over `quals` keyed by (insurer, symbol, number).
    pub key_slots: Vec<Slot>,
}

/// Where the store's row numbering of the qualifications jumps (see
/// `Body::row_marks`).
#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowMark {
    /// The first qualification of the run.
    pub qual: u32,
    /// Its store row (CSV line or `qualification_id`).
    pub row: u64,
}

/// One insurer.
#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsurerRec {
    /// `InsurerNumber::to_raw`.
    pub number: u32,
    /// Interned name.
    pub name: u32,
}

/// One person.
#[derive(Archive, Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersonRec {
    /// Keyed card digest; all zero when `card_status` is `NO_BYTE`.
    pub card: [u8; 16],
    /// Interned name: family part, given part (`NONE` if the name has no
    /// U+3000 separator).
    pub name: [u32; 2],
    /// Interned kana name, split the same way.
    pub kana: [u32; 2],
    /// First qualification of this person.
    pub first_qual: u32,
    /// Number of qualifications.
    pub qual_count: u16,
    /// `Sex::to_byte`.
    pub sex: u8,
    /// `CardStatus::to_byte`, or `NO_BYTE` when no card is linked.
    pub card_status: u8,
}

/// One qualification.
#[derive(Archive, Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QualRec {
    /// Symbol then number, inline when together at most `INLINE_KEY`
    /// bytes (most keys, so verifying a key costs no extra cache miss);
    /// otherwise the first four bytes are the little-endian offset of
    /// symbol+number in `keytext`.
    pub key: [u8; INLINE_KEY],
    /// The person.
    pub person: u32,
    /// Birth date (a person-level field, kept here because the insurance
    /// path needs it and already reads this record).
    pub birth: i32,
    /// Acquisition date.
    pub acquired: i32,
    /// Loss date or `NO_DATE`.
    pub lost: i32,
    /// Index into `extras`, or `NONE`.
    pub extra: u32,
    /// Index into `insurers` (there are about 3,400 insurers in Japan; the
    /// builder refuses more than 65,535).
    pub insurer: u16,
    /// Symbol length in bytes (0: no symbol).
    pub symbol_len: u8,
    /// Number length in bytes.
    pub number_len: u8,
    /// Branch + 1, or `NO_BYTE` when absent.
    pub branch: u8,
    /// `Relation::to_byte`.
    pub relation: u8,
    /// `CardClass::to_byte`.
    pub card_class: u8,
    /// `Percent::to_byte` of the co-payment.
    pub copay: u8,
    /// Bit 0 (`FLAG_PRESCHOOL`): preschool. Bit 1 (`FLAG_AID_UNREGISTERED`):
    /// medical aid whose ticket is not registered online (a copy of the
    /// extra record's state, so status 6 needs no extra cache miss).
    pub flags: u8,
    /// `LossReason::to_byte`, or `NO_BYTE`.
    pub loss_reason: u8,
    /// `LimitCategory::to_byte`, or `NO_BYTE`.
    pub limit: u8,
}

/// Optional parts of a qualification.
#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtraRec {
    /// Certificate issue, valid-from, valid-until (`NO_DATE` if none).
    pub cert: [i32; 3],
    /// Elderly certificate valid-from, valid-until (`NO_DATE` if none).
    pub elderly: [i32; 2],
    /// Specific-disease monthly cap, yen.
    pub disease_cap: u32,
    /// Public-expense payer number value, or `NONE`.
    pub payer: u32,
    /// Public-expense recipient number value.
    pub recipient: u32,
    /// Interned welfare office name, or `NONE`.
    pub welfare_office: u32,
    /// `Percent::to_byte` of the elderly ratio, or `NO_BYTE`.
    pub elderly_percent: u8,
    /// `DiseaseKind::to_byte`, or `NO_BYTE`.
    pub disease: u8,
    /// 1 when the medical-aid ticket is registered online.
    pub aid_registered: u8,
}

impl Default for ExtraRec {
    fn default() -> ExtraRec {
        ExtraRec {
            cert: [NO_DATE; 3],
            elderly: [NO_DATE; 2],
            disease_cap: 0,
            payer: NONE,
            recipient: 0,
            welfare_office: NONE,
            elderly_percent: NO_BYTE,
            disease: NO_BYTE,
            aid_registered: 0,
        }
    }
}

/// One index slot.
#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// 32 bits of the key's hash not used to choose the slot.
    pub tag: u32,
    /// The row the key names, or `NONE` for a free slot.
    pub row: u32,
}

impl Slot {
    /// A free slot.
    pub const EMPTY: Slot = Slot { tag: 0, row: NONE };
}

/// The slot a 64-bit hash starts probing at, in a table of `len` slots.
#[inline]
pub fn home_slot(hash: u64, len: usize) -> usize {
    ((u128::from(hash) * len as u128) >> 64) as usize
}

/// The tag stored in a card index slot.
#[inline]
pub fn tag_of(hash: u64) -> u32 {
    hash as u32
}

/// Where an insurance lookup starts probing: the key hash mixed with the
/// birth date, which every lookup by numbers carries. Family members share
/// a key but not (twins aside) a birth date, so they land apart and most
/// lookups find their key in the first slot.
#[inline]
pub fn lookup_hash(key_hash: u64, birth: i32) -> u64 {
    fmix64(key_hash ^ u64::from(birth as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The tag stored in an insurance index slot: 24 bits of the lookup hash
/// and the branch byte (`QualRec::branch`). A lookup with a branch compares
/// all 32 bits, one without a branch ignores the branch byte.
#[inline]
pub fn key_tag(lookup_hash: u64, branch: u8) -> u32 {
    ((lookup_hash as u32) & 0xFFFF_FF00) | u32::from(branch)
}

/// Compare every bit of a tag.
pub const TAG_ALL: u32 = u32::MAX;
/// Compare a tag but its branch byte.
pub const TAG_ANY_BRANCH: u32 = 0xFFFF_FF00;

/// MurmurHash3's 64-bit finaliser.
#[inline]
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// Hash of a card digest for the card index.
#[inline]
pub fn card_hash(digest: &[u8; 16]) -> u64 {
    // The digest is already uniformly distributed: use its bytes directly.
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(b)
}

/// Hash of an insurance key without its branch (see [`lookup_hash`] for
/// where the index puts it).
///
/// Keys are short (a symbol and a number of a few bytes each), and every
/// candidate is verified byte for byte, so this is a small multiply-rotate
/// hash over 8-byte words with a MurmurHash3 finaliser: a handful of
/// instructions, which lets consecutive lookups overlap their cache misses.
#[inline]
pub fn key_hash(insurer_raw: u32, symbol: &[u8], number: &[u8]) -> u64 {
    #[inline]
    fn absorb(mut h: u64, bytes: &[u8]) -> u64 {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            h = hash_round(
                h,
                u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
            );
        }
        let rest = chunks.remainder();
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        hash_round(h, u64::from_le_bytes(w) ^ ((bytes.len() as u64) << 56))
    }
    fmix64(absorb(absorb(hash_start(insurer_raw), symbol), number))
}

/// [`key_hash`] of parsed key texts, reading whole words of their
/// zero-padded buffers (no copying of the tail): the lookup path's form.
#[inline]
pub fn key_hash_text(insurer_raw: u32, symbol: Option<&KeyText>, number: &KeyText) -> u64 {
    #[inline]
    fn absorb(mut h: u64, text: Option<&KeyText>) -> u64 {
        let (buf, len) = match text {
            Some(t) => (t.padded(), t.as_bytes().len()),
            None => (&[0u8; KEY_TEXT_BUF], 0),
        };
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&buf[8 * i..8 * i + 8]);
            u64::from_le_bytes(w)
        };
        for i in 0..len / 8 {
            h = hash_round(h, word(i));
        }
        hash_round(h, word(len / 8) ^ ((len as u64) << 56))
    }
    fmix64(absorb(
        absorb(hash_start(insurer_raw), symbol),
        Some(number),
    ))
}

const HASH_K: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn hash_start(insurer_raw: u32) -> u64 {
    (u64::from(insurer_raw) ^ HASH_K).wrapping_mul(HASH_K)
}

#[inline]
fn hash_round(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(HASH_K).rotate_left(29)
}

/// The symbol and number of a qualification, from its inline key or the
/// spill pool; `None` if a spilled key lies outside the pool.
#[inline]
pub fn split_key<'a>(
    key: &'a [u8; INLINE_KEY],
    symbol_len: u8,
    number_len: u8,
    keytext: &'a [u8],
) -> Option<(&'a [u8], &'a [u8])> {
    let (s, n) = (usize::from(symbol_len), usize::from(number_len));
    let bytes = if s + n <= INLINE_KEY {
        &key[..s + n]
    } else {
        let off = u32::from_le_bytes([key[0], key[1], key[2], key[3]]) as usize;
        keytext.get(off..off + s + n)?
    };
    Some(bytes.split_at(s))
}

/// Number of slots for `n` keys: load factor at most 3/4, at least one free.
pub fn table_len(n: usize) -> usize {
    n + n.div_ceil(3) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_key_hashes_agree() {
        let texts = [
            "1",
            "12",
            "1234567",
            "12345678",
            "123456789",
            "記号",
            "市12",
            "ABCDEFGHIJKLMNOP",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789AB",
        ];
        for sym in [None].into_iter().chain(texts.iter().map(|t| Some(*t))) {
            for num in texts {
                let s: Option<KeyText> = sym.map(|t| t.parse().unwrap());
                let n: KeyText = num.parse().unwrap();
                let bytes = s.as_ref().map_or(&[][..], KeyText::as_bytes);
                assert_eq!(
                    key_hash(6130488, bytes, n.as_bytes()),
                    key_hash_text(6130488, s.as_ref(), &n),
                    "{sym:?} {num:?}"
                );
            }
        }
        // The symbol/number boundary matters.
        assert_ne!(key_hash(1, b"12", b"3"), key_hash(1, b"1", b"23"));
    }
}
