//! Lookups over an archived body: pure functions, no I/O, no allocation, no
//! lock. They read the archive in place and return views into it.

use std::fmt;

use super::body::{
    card_hash, home_slot, key_hash_text, key_tag, lookup_hash, split_key, tag_of, ArchivedBody,
    ArchivedQualRec, ArchivedSlot, FLAG_AID_UNREGISTERED, FLAG_PRESCHOOL, INLINE_KEY, NONE,
    NO_BYTE, NO_DATE, TAG_ALL, TAG_ANY_BRANCH,
};
use crate::model::{
    Branch, CardClass, CardDigest, CardStatus, Certificate, Date, DiseaseKind, ElderlyCertificate,
    InsuranceKey, InsurerNumber, KeyText, LimitCategory, Loss, LossReason, PayerNumber, Percent,
    PublicExpense, Qualification, RecipientNumber, Relation, Sex, SpecificDisease, Status,
};

/// The answer to one lookup.
#[derive(Clone, Copy, Debug)]
pub enum Answer<'a> {
    /// A qualification was found; `status` is 1, 2, 3 or 6. With status 3,
    /// `newer` is the newer qualification of the same person.
    Found {
        /// 1 valid, 2 lost, 3 lost with newer, 6 valid unregistered.
        status: Status,
        /// The qualification the key or card resolved to.
        qualification: QualView<'a>,
        /// The newer qualification (status 3 only).
        newer: Option<QualView<'a>>,
    },
    /// Status 5: several persons match (insurance path without branch).
    Multiple(Matches<'a>),
    /// Status 4.
    NotFound,
    /// Status 7: the card is not registered, or was withdrawn.
    CardNotRegistered,
    /// Status 8: the card's use is restricted; no qualification is given.
    CardRestricted,
}

impl Answer<'_> {
    /// The store ids of the persons whose records the answer carries (the
    /// audit trail's "whom"): the person of a found qualification, each
    /// person of a multiple hit; none for the other answers. Allocation
    /// free.
    pub fn persons(&self) -> impl Iterator<Item = u64> + '_ {
        let found = match self {
            Answer::Found { qualification, .. } => Some(qualification.person_id()),
            _ => None,
        };
        let matches = match self {
            Answer::Multiple(m) => Some(m.iter().map(|v| v.person_id())),
            _ => None,
        };
        let mut last = None;
        found
            .into_iter()
            .chain(matches.into_iter().flatten())
            // A person matching twice (one key held twice) counts once.
            .filter(move |&id| last.replace(id) != Some(id))
    }

    /// The store rows (CSV lines, or the database's `qualification_id`s)
    /// of the qualifications the answer carries: the found one and the
    /// newer one, or each match. For the audit trail; allocation free.
    pub fn rows(&self) -> impl Iterator<Item = u64> + '_ {
        let found = match self {
            Answer::Found {
                qualification,
                newer,
                ..
            } => Some([Some(*qualification), *newer].into_iter().flatten()),
            _ => None,
        };
        let matches = match self {
            Answer::Multiple(m) => Some(m.iter()),
            _ => None,
        };
        found
            .into_iter()
            .flatten()
            .chain(matches.into_iter().flatten())
            .map(|v| v.store_row())
    }

    /// The status code of this answer.
    pub fn status(&self) -> Status {
        match self {
            Answer::Found { status, .. } => *status,
            Answer::Multiple(_) => Status::MultipleHits,
            Answer::NotFound => Status::NotFound,
            Answer::CardNotRegistered => Status::CardNotRegistered,
            Answer::CardRestricted => Status::CardRestricted,
        }
    }
}

/// A qualification inside the archive, as seen on an as-of day.
#[derive(Clone, Copy)]
pub struct QualView<'a> {
    body: &'a ArchivedBody,
    index: u32,
    rec: &'a ArchivedQualRec,
    /// The day number the answer is for: a loss after it has not happened
    /// yet on that day and is not shown.
    as_of: i32,
}

impl fmt::Debug for QualView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No personal data in debug output.
        write!(f, "QualView(#{})", self.index)
    }
}

/// The matches of a multiple-hit answer, produced on demand (no allocation).
#[derive(Clone, Copy)]
pub struct Matches<'a> {
    body: &'a ArchivedBody,
    /// Persons of `body` whose matches do not count (an overlay replaces
    /// them).
    except: Option<Except<'a>>,
    /// The overlay's bodies, whose matches follow.
    newer: Newer<'a>,
    key: InsuranceKey,
    birth: Date,
    as_of: Date,
}

impl fmt::Debug for Matches<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Matches")
    }
}

impl<'a> Matches<'a> {
    /// Each matching qualification.
    pub fn iter(&self) -> impl Iterator<Item = QualView<'a>> + 'a {
        let (key, birth, as_of) = (self.key, self.birth, self.as_of);
        [
            Some((self.body, self.except)),
            self.newer.under.map(|(b, e)| (b, Some(e))),
            self.newer.top.map(|b| (b, None)),
        ]
        .into_iter()
        .flatten()
        .flat_map(move |(body, except)| {
            key_candidates(body, &key, birth).filter_map(move |row| {
                let rec = body.quals.get(row as usize)?;
                (KeyQuery::new(&key, birth, as_of).matches(body, rec)
                    && !superseded(body, except, rec.person.to_native()))
                .then_some(QualView {
                    body,
                    index: row,
                    rec,
                    as_of: as_of.day_number(),
                })
            })
        })
    }
}

/// An overlay's bodies of changed persons' current records, searched
/// after the snapshot's: `top` (the newest changes) counts whole; `under`
/// (older changes, folded together less often) counts but for the
/// persons `top`'s layer speaks for, its `Except`.
#[derive(Clone, Copy, Default)]
pub struct Newer<'a> {
    /// The newest layer's body.
    pub top: Option<&'a ArchivedBody>,
    /// The older layer's body, without the persons of the newer layer.
    pub under: Option<(&'a ArchivedBody, Except<'a>)>,
}

impl fmt::Debug for Newer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Newer")
            .field("top", &self.top.is_some())
            .field("under", &self.under.map(|(_, e)| e))
            .finish()
    }
}

impl Newer<'_> {
    /// No body (the overlay cannot hold what is looked up).
    pub const NONE: Newer<'static> = Newer {
        top: None,
        under: None,
    };
}

/// Store ids of persons whose records in a body no longer count: an
/// overlay holds their current records (or knows they have none). A hash
/// set of ids; a lookup asks it only about the persons it hits.
#[derive(Debug, Clone, Default)]
pub struct PersonSet(std::collections::HashSet<u64, super::builder::IntHash>);

impl PersonSet {
    /// An empty set.
    pub fn new() -> PersonSet {
        PersonSet::default()
    }

    /// Adds a person's store id.
    pub fn insert(&mut self, id: u64) {
        self.0.insert(id);
    }

    /// Removes a person's store id.
    pub fn remove(&mut self, id: u64) {
        self.0.remove(&id);
    }

    /// Whether the set holds `id`.
    #[inline]
    pub fn contains(&self, id: u64) -> bool {
        self.0.contains(&id)
    }

    /// How many persons.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ids, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().copied()
    }
}

/// A Bloom filter (two bits per entry, 16 bits per entry: about 1.5 %
/// false positives) over 32-bit hash values; small enough to stay in the
/// CPU cache. Blocked: both of an entry's bits lie in one 64-bit word, so
/// a probe reads one cache line, not two (a lookup through an overlay
/// probes two filters after the snapshot's own reads).
#[derive(Debug, Clone)]
pub struct Filter {
    words: Vec<u64>,
    /// 64 minus log2 of the word count.
    shift: u32,
}

impl Default for Filter {
    /// A filter of nothing (two words, so that a probe needs no check
    /// for an empty one).
    fn default() -> Filter {
        Filter::with_entries(0)
    }
}

impl Filter {
    /// An empty filter sized for `n` entries.
    pub fn with_entries(n: usize) -> Filter {
        let words = ((n.max(1) * 16).next_power_of_two() / 64).max(2);
        Filter {
            words: vec![0; words],
            shift: 64 - words.trailing_zeros(),
        }
    }

    /// The word of `v` and its two bits there, from one multiply: the
    /// word from the product's top bits, the bits from two runs of six
    /// below the 32nd (which every bit of `v` reaches).
    #[inline(always)]
    fn spot(&self, v: u32) -> (usize, u64) {
        let h = u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let word = (h >> self.shift) as usize;
        (word, (1 << ((h >> 20) & 63)) | (1 << ((h >> 26) & 63)))
    }

    /// Adds a value.
    pub fn insert(&mut self, v: u32) {
        let (word, bits) = self.spot(v);
        self.words[word] |= bits;
    }

    /// Whether `v` may have been added (never false for one that was).
    #[inline(always)]
    pub fn may_contain(&self, v: u32) -> bool {
        let (word, bits) = self.spot(v);
        self.words[word] & bits == bits
    }
}

/// The persons of one body a [`PersonSet`] names, as a bitmap over the
/// body's person indexes, in front of it a [`Filter`] of the same
/// indexes: a lookup of a person not named usually stops at the filter
/// (a few KiB to a few hundred KiB, which stay in the CPU cache, where a
/// bitmap of 10 M persons, 1.25 MiB, would not) and never reads the
/// person's store id.
#[derive(Debug, Clone, Default)]
pub struct PersonBits {
    quick: Filter,
    bits: Vec<u64>,
    /// The body's persons are in ascending store-id order (checked once:
    /// a pass over all of them).
    sorted: bool,
}

impl PersonBits {
    /// No person of `body` marked yet, with room for `n` persons in the
    /// filter before its false positives grow past its design.
    pub fn room(body: &ArchivedBody, n: usize) -> PersonBits {
        let ids = &body.person_ids;
        PersonBits {
            quick: Filter::with_entries(n),
            bits: vec![0u64; ids.len().div_ceil(64)],
            sorted: ids.windows(2).all(|w| w[0] < w[1]),
        }
    }

    /// Marks the persons of `body` (the one the bits were made for) whose
    /// store ids `set` holds. Found by binary search when the body's
    /// persons are in ascending store-id order (a PostgreSQL build always
    /// is), else by one pass over all of them.
    pub fn mark(&mut self, body: &ArchivedBody, set: &PersonSet) {
        let ids = &body.person_ids;
        let mut mark = |i: usize| {
            if let Some(w) = self.bits.get_mut(i / 64) {
                *w |= 1 << (i % 64);
                self.quick.insert(i as u32);
            }
        };
        if self.sorted {
            for id in set.iter() {
                if let Ok(i) = ids.binary_search_by_key(&id, |v| v.to_native()) {
                    mark(i);
                }
            }
        } else {
            for (i, id) in ids.iter().enumerate() {
                if set.contains(id.to_native()) {
                    mark(i);
                }
            }
        }
    }

    /// Whether person `index` is marked.
    #[inline(always)]
    pub fn contains(&self, index: u32) -> bool {
        self.quick.may_contain(index)
            && self
                .bits
                .get(index as usize / 64)
                .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }
}

/// Persons of a body whose records do not count: by store id (any body),
/// or by person index (for the body the bits were made for).
#[derive(Debug, Clone, Copy)]
pub enum Except<'a> {
    /// Store ids: the person's id is read and looked up.
    Ids(&'a PersonSet),
    /// Store ids in either set (an overlay's two layers).
    Either(&'a PersonSet, &'a PersonSet),
    /// Person indexes of this body.
    Indexes(&'a PersonBits),
}

impl Except<'_> {
    /// Whether person `index` of `body` is one of these.
    #[inline]
    pub fn holds(&self, body: &ArchivedBody, index: u32) -> bool {
        superseded(body, Some(*self), index)
    }
}

/// Whether person `index` of `body` is one of `except`'s.
#[inline(always)]
fn superseded(body: &ArchivedBody, except: Option<Except<'_>>, index: u32) -> bool {
    match except {
        None => false,
        Some(Except::Indexes(bits)) => bits.contains(index),
        Some(Except::Ids(set)) => body
            .person_ids
            .get(index as usize)
            .is_some_and(|id| set.contains(id.to_native())),
        Some(Except::Either(a, b)) => body.person_ids.get(index as usize).is_some_and(|id| {
            let id = id.to_native();
            a.contains(id) || b.contains(id)
        }),
    }
}

/// Looks a card digest up as of a day.
#[inline]
pub fn by_card<'a>(body: &'a ArchivedBody, digest: &CardDigest, as_of: Date) -> Answer<'a> {
    by_card_in(body, None, digest, as_of).0
}

/// [`by_card`], not counting the persons in `except`; also says which
/// person of `except` held the card, if one did.
#[inline(always)]
fn by_card_in<'a>(
    body: &'a ArchivedBody,
    except: Option<Except<'_>>,
    digest: &CardDigest,
    as_of: Date,
) -> (Answer<'a>, Option<u32>) {
    let hash = card_hash(digest.as_bytes());
    for row in probe(&body.card_slots, hash, tag_of(hash), TAG_ALL) {
        let Some(person) = body.persons.get(row as usize) else {
            continue;
        };
        if person.card != *digest.as_bytes() {
            continue;
        }
        if superseded(body, except, row) {
            return (Answer::CardNotRegistered, Some(row));
        }
        let answer = match CardStatus::from_byte(person.card_status) {
            Some(CardStatus::Registered) => current_of_person(
                body,
                person.first_qual.to_native(),
                person.qual_count.to_native(),
                as_of,
            ),
            Some(CardStatus::Restricted) => Answer::CardRestricted,
            _ => Answer::CardNotRegistered,
        };
        return (answer, None);
    }
    (Answer::CardNotRegistered, None)
}

/// The store id of person `index` of `body` (a replaced person a lookup
/// reached), for the overlay's unreadable check.
#[inline]
fn id_of(body: &ArchivedBody, index: Option<u32>) -> Option<u64> {
    index
        .and_then(|i| body.person_ids.get(i as usize))
        .map(|id| id.to_native())
}

/// Looks a card up in `newer` (an overlay's bodies, newest first) and
/// then in `base` (the snapshot's) without the persons in `replaced`
/// (those the overlay holds as they are now, present in `newer` or
/// not). A card found in a newer body answers from it (unless it is not
/// registered there: a card is unique across persons, so an older body
/// cannot then hold it for a current person). Also says which replaced
/// person (its store id) held the card in an older body, if one did.
#[inline]
pub fn by_card_over<'a>(
    base: &'a ArchivedBody,
    replaced: Except<'_>,
    newer: Newer<'a>,
    digest: &CardDigest,
    as_of: Date,
) -> (Answer<'a>, Option<u64>) {
    if let Some(top) = newer.top {
        let a = by_card(top, digest, as_of);
        if !matches!(a, Answer::CardNotRegistered) {
            return (a, None);
        }
    }
    let mut skipped = None;
    if let Some((under, except)) = newer.under {
        let (a, s) = by_card_in(under, Some(except), digest, as_of);
        if s.is_none() && !matches!(a, Answer::CardNotRegistered) {
            return (a, None);
        }
        skipped = id_of(under, s);
    }
    let (a, s) = by_card_in(base, Some(replaced), digest, as_of);
    (a, id_of(base, s).or(skipped))
}

/// Looks an insurance key up in `base` without the persons in `replaced`
/// and in `newer` (an overlay's bodies, holding those persons as they
/// are now), and answers as if one body held them all: without a
/// branch, matches of two persons are a multiple hit; with one, the
/// qualification holding on the as-of day, else the most recently
/// acquired. Also says which replaced person (its store id) matched in
/// an older body, if one did. `hash` is [`insurance_hash`] of the key
/// and birth date.
#[inline]
pub fn by_insurance_over<'a>(
    base: &'a ArchivedBody,
    replaced: Except<'a>,
    newer: Newer<'a>,
    key: &InsuranceKey,
    birth: Date,
    as_of: Date,
    hash: u64,
) -> (Answer<'a>, Option<u64>) {
    let (mut answer, s) = by_insurance_in(base, Some(replaced), key, birth, as_of, hash);
    let mut skipped = id_of(base, s);
    let layers = [
        newer.under.map(|(b, e)| (b, Some(e))),
        newer.top.map(|b| (b, None)),
    ];
    for (body, except) in layers.into_iter().flatten() {
        let (new, s) = by_insurance_in(body, except, key, birth, as_of, hash);
        skipped = skipped.or(id_of(body, s));
        answer = match (answer, new) {
            (a, Answer::NotFound) | (Answer::NotFound, a) => a,
            // Two persons (each person counts in one body only).
            _ if key.branch.is_none() => {
                let all = Matches {
                    body: base,
                    except: Some(replaced),
                    newer,
                    key: *key,
                    birth,
                    as_of,
                };
                return (Answer::Multiple(all), skipped);
            }
            (
                Answer::Found {
                    qualification: a, ..
                },
                Answer::Found {
                    qualification: b, ..
                },
            ) => {
                let day = as_of.day_number();
                if rank(a.rec, day) > rank(b.rec, day) {
                    answer
                } else {
                    new
                }
            }
            // With a branch, both answers are `Found`.
            (_, new) => new,
        };
    }
    (answer, skipped)
}

/// Looks an insurance key and birth date up as of a day. A wrong birth date
/// answers exactly like an unknown key.
///
/// A key may belong to several qualifications whose periods do not overlap
/// (a person who rejoined under the same numbers, a number given again):
/// of those acquired by the as-of day, the one holding on it is answered,
/// else the most recently acquired (lost) one. Without a branch, matches
/// of two different persons (twins in one family) answer `Multiple`.
#[inline]
pub fn by_insurance<'a>(
    body: &'a ArchivedBody,
    key: &InsuranceKey,
    birth: Date,
    as_of: Date,
) -> Answer<'a> {
    by_insurance_in(body, None, key, birth, as_of, insurance_hash(key, birth)).0
}

/// [`by_insurance`] with the key's [`insurance_hash`] computed by the
/// caller (an overlay probes its filter with the same hash).
#[inline]
pub fn by_insurance_at<'a>(
    body: &'a ArchivedBody,
    key: &InsuranceKey,
    birth: Date,
    as_of: Date,
    hash: u64,
) -> Answer<'a> {
    by_insurance_in(body, None, key, birth, as_of, hash).0
}

/// [`by_insurance`], not counting the persons in `except`; also says
/// which person of `except` matched, if one did.
#[inline(always)]
fn by_insurance_in<'a>(
    body: &'a ArchivedBody,
    except: Option<Except<'a>>,
    key: &InsuranceKey,
    birth: Date,
    as_of: Date,
    hash: u64,
) -> (Answer<'a>, Option<u32>) {
    let mut skipped = None;
    let query = KeyQuery::new(key, birth, as_of);
    let day = as_of.day_number();
    let mut best: Option<(u32, &ArchivedQualRec)> = None;
    for row in key_candidates_at(body, key, hash) {
        let Some(rec) = body.quals.get(row as usize) else {
            continue;
        };
        if !query.matches(body, rec) {
            continue;
        }
        if superseded(body, except, rec.person.to_native()) {
            skipped = Some(rec.person.to_native());
            continue;
        }
        if key.branch.is_some() && holds_on(rec, day) {
            // The builder refuses overlapping periods for one key, so on
            // any day at most one qualification of a full key holds.
            return (evaluate(body, row, rec, as_of), skipped);
        }
        match best {
            Some((_, b)) if key.branch.is_none() && b.person != rec.person => {
                let matches = Matches {
                    body,
                    except,
                    newer: Newer::NONE,
                    key: *key,
                    birth,
                    as_of,
                };
                return (Answer::Multiple(matches), skipped);
            }
            Some((_, b)) if rank(b, day) >= rank(rec, day) => {}
            _ => best = Some((row, rec)),
        }
    }
    let answer = match best {
        Some((index, rec)) => evaluate(body, index, rec, as_of),
        None => Answer::NotFound,
    };
    (answer, skipped)
}

/// Whether a qualification holds on day number `day` (acquired by then is
/// checked by the caller): not lost, or lost after it. The loss date is
/// the first day not covered.
#[inline]
fn holds_on(q: &ArchivedQualRec, day: i32) -> bool {
    let lost = q.lost.to_native();
    lost == NO_DATE || lost > day
}

/// Which of a person's qualifications acquired by `day` an answer prefers:
/// one holding on the day, then the most recently acquired.
#[inline]
fn rank(q: &ArchivedQualRec, day: i32) -> (bool, i32) {
    (holds_on(q, day), q.acquired.to_native())
}

/// Rows of the insurance index whose tag matches the key and birth date.
fn key_candidates<'a>(
    body: &'a ArchivedBody,
    key: &InsuranceKey,
    birth: Date,
) -> impl Iterator<Item = u32> + 'a {
    key_candidates_at(body, key, insurance_hash(key, birth))
}

/// The insurance index's hash of a key (its branch aside) and birth date:
/// computed once when a lookup searches two bodies.
#[inline]
pub fn insurance_hash(key: &InsuranceKey, birth: Date) -> u64 {
    lookup_hash(
        key_hash_text(key.insurer.to_raw(), key.symbol.as_ref(), &key.number),
        birth.day_number(),
    )
}

/// [`key_candidates`] with the hash computed.
#[inline(always)]
fn key_candidates_at<'a>(
    body: &'a ArchivedBody,
    key: &InsuranceKey,
    hash: u64,
) -> impl Iterator<Item = u32> + 'a {
    let (branch, mask) = match key.branch {
        Some(b) => (b.value() + 1, TAG_ALL),
        None => (NO_BYTE, TAG_ANY_BRANCH),
    };
    probe(&body.key_slots, hash, key_tag(hash, branch), mask)
}

/// Linear probing from the home slot until a free slot; yields the rows of
/// slots whose tag matches `tag` in the bits of `mask`.
pub(super) fn probe(
    slots: &[ArchivedSlot],
    hash: u64,
    tag: u32,
    mask: u32,
) -> impl Iterator<Item = u32> + '_ {
    let len = slots.len();
    let start = if len == 0 { 0 } else { home_slot(hash, len) };
    slots[start..]
        .iter()
        .chain(&slots[..start])
        .take_while(|s| s.row != NONE)
        .filter(move |s| (s.tag.to_native() ^ tag) & mask == 0)
        .map(|s| s.row.to_native())
}

/// An insurance lookup prepared once: the key in the form `QualRec`
/// stores it, so that checking a candidate is a few fixed-size compares
/// (no data-dependent loops, which would stall the pipeline on a miss).
struct KeyQuery<'k> {
    insurer: u32,
    symbol: &'k [u8],
    number: &'k [u8],
    /// The inline form (`QualRec::key`), when the key fits inline.
    inline: Option<[u8; INLINE_KEY]>,
    /// `QualRec::branch` to match, if a branch was given.
    branch: Option<u8>,
    birth: i32,
    as_of: i32,
}

impl<'k> KeyQuery<'k> {
    fn new(key: &'k InsuranceKey, birth: Date, as_of: Date) -> KeyQuery<'k> {
        let symbol = key.symbol.as_ref().map_or(&[][..], KeyText::as_bytes);
        let number = key.number.as_bytes();
        // symbol ++ number, zero-padded, built with shifts of the padded
        // buffers' first 16 bytes (no variable-length copies).
        let inline = (symbol.len() + number.len() <= INLINE_KEY).then(|| {
            let head = |t: Option<&KeyText>| {
                t.map_or(0, |t| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&t.padded()[..16]);
                    u128::from_le_bytes(b)
                })
            };
            let s = head(key.symbol.as_ref());
            let n = head(Some(&key.number)) << (8 * symbol.len());
            (s | n).to_le_bytes()
        });
        KeyQuery {
            insurer: key.insurer.to_raw(),
            symbol,
            number,
            inline,
            branch: key.branch.map(|b| b.value() + 1),
            birth: birth.day_number(),
            as_of: as_of.day_number(),
        }
    }

    /// Whether `rec` is this key's qualification, with this birth date,
    /// visible (acquired) on the as-of day.
    #[inline]
    fn matches(&self, body: &ArchivedBody, rec: &ArchivedQualRec) -> bool {
        let fixed = (rec.birth == self.birth)
            & (rec.acquired.to_native() <= self.as_of)
            & (usize::from(rec.symbol_len) == self.symbol.len())
            & (usize::from(rec.number_len) == self.number.len())
            & self.branch.is_none_or(|b| rec.branch == b);
        if !fixed {
            return false;
        }
        let insurer = body
            .insurers
            .get(usize::from(rec.insurer.to_native()))
            .is_some_and(|i| i.number == self.insurer);
        match &self.inline {
            Some(k) => insurer & (rec.key == *k),
            None => insurer && key_texts(body, rec) == (self.symbol, self.number),
        }
    }
}

/// The symbol and number bytes of a qualification.
fn key_texts<'a>(body: &'a ArchivedBody, rec: &'a ArchivedQualRec) -> (&'a [u8], &'a [u8]) {
    split_key(&rec.key, rec.symbol_len, rec.number_len, &body.keytext).unwrap_or_default()
}

/// The status of one qualification on `as_of`, with the newer one of the
/// same person if it was lost.
///
/// A lost qualification answers `LostWithNewer` when the person has a
/// qualification acquired after it and by the as-of day, even if that one
/// is lost too; `newer` is then the one holding on the day if any, else the
/// most recently acquired. Otherwise it answers `Lost`.
fn evaluate<'a>(
    body: &'a ArchivedBody,
    index: u32,
    rec: &'a ArchivedQualRec,
    as_of: Date,
) -> Answer<'a> {
    let day = as_of.day_number();
    let qualification = QualView {
        body,
        index,
        rec,
        as_of: day,
    };
    if holds_on(rec, day) {
        return Answer::Found {
            status: holding_status(rec),
            qualification,
            newer: None,
        };
    }
    lost_answer(qualification)
}

/// The answer for a qualification lost on its view's as-of day: with the
/// newer one of the same person, if any. Out of line: most lookups find a
/// holding qualification, and keeping this off their path keeps the hot
/// loop small enough for consecutive lookups to overlap their misses
/// (measured: 1.4x the insurance-hit time when it was inline).
#[cold]
#[inline(never)]
fn lost_answer(qualification: QualView<'_>) -> Answer<'_> {
    let QualView {
        body,
        rec,
        as_of: day,
        ..
    } = qualification;
    let newer = body
        .persons
        .get(rec.person.to_native() as usize)
        .and_then(|p| {
            quals_of(body, p.first_qual.to_native(), p.qual_count.to_native())
                .filter(|(_, q)| q.acquired > rec.acquired && q.acquired.to_native() <= day)
                .max_by_key(|(_, q)| rank(q, day))
        })
        .map(|(index, rec)| QualView {
            body,
            index,
            rec,
            as_of: day,
        });
    Answer::Found {
        status: if newer.is_some() {
            Status::LostWithNewer
        } else {
            Status::Lost
        },
        qualification,
        newer,
    }
}

/// The qualification a card resolves to: of the person's qualifications
/// acquired by `as_of`, the one holding on it (the most recently acquired
/// if several hold; on equal dates, the first in store order), else the
/// most recently acquired (lost) one, else none.
fn current_of_person(body: &ArchivedBody, first: u32, count: u16, as_of: Date) -> Answer<'_> {
    let day = as_of.day_number();
    let mut best: Option<(u32, &ArchivedQualRec)> = None;
    for (i, q) in quals_of(body, first, count) {
        if q.acquired.to_native() > day {
            continue;
        }
        if best.is_none_or(|(_, b)| rank(q, day) > rank(b, day)) {
            best = Some((i, q));
        }
    }
    match best {
        Some((index, rec)) => evaluate(body, index, rec, as_of),
        None => Answer::NotFound,
    }
}

fn quals_of(
    body: &ArchivedBody,
    first: u32,
    count: u16,
) -> impl Iterator<Item = (u32, &ArchivedQualRec)> {
    let start = first as usize;
    let end = start + usize::from(count);
    body.quals
        .get(start..end)
        .unwrap_or(&[])
        .iter()
        .zip(first..)
        .map(|(q, i)| (i, q))
}

/// 1, or 6 for a medical-aid qualification whose ticket is not registered.
fn holding_status(rec: &ArchivedQualRec) -> Status {
    if rec.flags & FLAG_AID_UNREGISTERED != 0 {
        Status::ValidUnregistered
    } else {
        Status::Valid
    }
}

/// A record field that does not decode: the archive is corrupt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("qualification #{index}: {field} does not decode")]
pub struct CorruptRecord {
    /// Which qualification.
    pub index: u32,
    /// Which field.
    pub field: &'static str,
}

impl<'a> QualView<'a> {
    /// The qualification at row `index`, if there is one, with nothing
    /// hidden (as seen after its loss, if it was lost).
    pub fn at(body: &'a ArchivedBody, index: u32) -> Option<QualView<'a>> {
        let rec = body.quals.get(index as usize)?;
        Some(QualView {
            body,
            index,
            rec,
            as_of: i32::MAX,
        })
    }

    /// The qualification's row in the snapshot.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The qualification's row in its store: the CSV line, or the
    /// database's `qualification_id` (see `Body::row_marks`).
    pub fn store_row(&self) -> u64 {
        let marks = &self.body.row_marks;
        let i = marks.partition_point(|m| m.qual.to_native() <= self.index);
        match i.checked_sub(1).and_then(|i| marks.get(i)) {
            Some(m) => m.row.to_native() + u64::from(self.index - m.qual.to_native()),
            None => u64::from(self.index) + 1,
        }
    }

    /// The index of the qualification's person in its body.
    pub fn person_index(&self) -> u32 {
        self.rec.person.to_native()
    }

    /// The store's id of the qualification's person (`u64::MAX` if the
    /// archive's person link is broken, which `snapshot verify` reports).
    pub fn person_id(&self) -> u64 {
        self.body
            .person_ids
            .get(self.rec.person.to_native() as usize)
            .map_or(u64::MAX, |id| id.to_native())
    }

    /// Decodes every field into an owned [`Qualification`] (allocates; for
    /// answers being sent or printed, not for the lookup itself). A loss
    /// after the as-of day is left out: on that day the qualification
    /// holds, and its coming loss is not part of the answer.
    pub fn to_qualification(&self) -> Result<Qualification, CorruptRecord> {
        let body = self.body;
        let rec = self.rec;
        let bad = |field| CorruptRecord {
            index: self.index,
            field,
        };
        let person = body
            .persons
            .get(rec.person.to_native() as usize)
            .ok_or(bad("person"))?;
        let insurer = body
            .insurers
            .get(rec.insurer.to_native() as usize)
            .ok_or(bad("insurer"))?;
        let date = |d: i32, field| Date::from_day_number(d).ok_or(bad(field));
        let opt_date = |d: i32, field| {
            if d == NO_DATE {
                Ok(None)
            } else {
                date(d, field).map(Some)
            }
        };
        let (symbol, number) = key_texts(body, rec);
        let key_text = |b: &[u8], field| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<KeyText>().ok())
                .ok_or(bad(field))
        };
        let extra = body.extras.get(rec.extra.to_native() as usize);
        let lost = match rec.lost.to_native() {
            future if future > self.as_of => NO_DATE,
            lost => lost,
        };
        let loss = opt_date(lost, "lost")?
            .map(|date| {
                LossReason::from_byte(rec.loss_reason)
                    .map(|reason| Loss { date, reason })
                    .ok_or(bad("loss_reason"))
            })
            .transpose()?;
        let stored = InsurerNumber::from_raw(insurer.number.to_native());
        let mut q = Qualification {
            insurer_number: InsurerNumber::from_parts(stored.value(), stored.is_six_digit())
                .ok_or(bad("insurer_number"))?,
            insurer_name: string(body, insurer.name.to_native())
                .ok_or(bad("insurer_name"))?
                .to_string(),
            card_class: CardClass::from_byte(rec.card_class).ok_or(bad("card_class"))?,
            symbol: if symbol.is_empty() {
                None
            } else {
                Some(key_text(symbol, "symbol")?)
            },
            number: key_text(number, "number")?,
            branch: match rec.branch {
                NO_BYTE => None,
                b => Some(Branch::new(b - 1).ok_or(bad("branch"))?),
            },
            relation: Relation::from_byte(rec.relation).ok_or(bad("relation"))?,
            name: joined(
                body,
                [person.name[0].to_native(), person.name[1].to_native()],
            )
            .ok_or(bad("name"))?,
            name_kana: joined(
                body,
                [person.kana[0].to_native(), person.kana[1].to_native()],
            )
            .ok_or(bad("name_kana"))?,
            sex: Sex::from_byte(person.sex).ok_or(bad("sex"))?,
            birth_date: date(rec.birth.to_native(), "birth_date")?,
            acquired_date: date(rec.acquired.to_native(), "acquired_date")?,
            loss,
            certificate: None,
            copay_percent: Percent::from_byte(rec.copay).ok_or(bad("copay_percent"))?,
            preschool: rec.flags & FLAG_PRESCHOOL != 0,
            elderly: None,
            limit_category: match rec.limit {
                NO_BYTE => None,
                b => Some(LimitCategory::from_byte(b).ok_or(bad("limit_category"))?),
            },
            specific_disease: None,
            public_expense: None,
        };
        if rec.extra != NONE {
            let e = extra.ok_or(bad("extra"))?;
            if e.cert[0] != NO_DATE {
                q.certificate = Some(Certificate {
                    issued: date(e.cert[0].to_native(), "cert_issued")?,
                    valid_from: date(e.cert[1].to_native(), "cert_valid_from")?,
                    valid_until: date(e.cert[2].to_native(), "cert_valid_until")?,
                });
            }
            if e.elderly_percent != NO_BYTE {
                q.elderly = Some(ElderlyCertificate {
                    valid_from: date(e.elderly[0].to_native(), "elderly_valid_from")?,
                    valid_until: date(e.elderly[1].to_native(), "elderly_valid_until")?,
                    percent: Percent::from_byte(e.elderly_percent).ok_or(bad("elderly_percent"))?,
                });
            }
            if e.disease != NO_BYTE {
                q.specific_disease = Some(SpecificDisease {
                    kind: DiseaseKind::from_byte(e.disease).ok_or(bad("disease"))?,
                    monthly_cap_yen: e.disease_cap.to_native(),
                });
            }
            if e.payer != NONE {
                q.public_expense = Some(PublicExpense {
                    payer: PayerNumber::from_value(e.payer.to_native())
                        .ok_or(bad("public_payer"))?,
                    recipient: RecipientNumber::from_value(e.recipient.to_native())
                        .ok_or(bad("public_recipient"))?,
                    welfare_office: string(body, e.welfare_office.to_native())
                        .ok_or(bad("welfare_office"))?
                        .to_string(),
                    registered: e.aid_registered != 0,
                });
            }
        }
        Ok(q)
    }
}

/// Interned string `id`.
pub(crate) fn string(body: &ArchivedBody, id: u32) -> Option<&str> {
    let i = id as usize;
    let end = body.string_ends.get(i)?.to_native() as usize;
    let start = match i {
        0 => 0,
        _ => body.string_ends.get(i - 1)?.to_native() as usize,
    };
    std::str::from_utf8(body.strings.get(start..end)?).ok()
}

/// A name stored as two interned parts, joined by U+3000.
fn joined(body: &ArchivedBody, parts: [u32; 2]) -> Option<String> {
    let first = string(body, parts[0])?;
    if parts[1] == NONE {
        return Some(first.to_string());
    }
    Some([first, string(body, parts[1])?].join("\u{3000}"))
}

#[cfg(test)]
mod tests {
    use super::Filter;

    #[test]
    fn the_filter_has_no_false_negatives_and_few_false_positives() {
        for n in [0usize, 1, 7, 1_000, 100_000] {
            // Values spread as hash bits are, and consecutive ones (the
            // person indexes the replaced-person filter holds).
            let spread = |i: usize| (i as u32).wrapping_mul(0x9E37_79B1) ^ (i as u32 >> 3);
            let consecutive = |i: usize| i as u32;
            for value in [&spread as &dyn Fn(usize) -> u32, &consecutive] {
                let mut f = Filter::with_entries(n);
                for i in 0..n {
                    f.insert(value(i));
                }
                assert!((0..n).all(|i| f.may_contain(value(i))), "n = {n}");
                let trials = 200_000;
                let false_positives = (n..n + trials).filter(|&i| f.may_contain(value(i))).count();
                let rate = false_positives as f64 / trials as f64;
                assert!(rate < 0.03, "n = {n}: {rate}");
            }
        }
        assert!(!Filter::default().may_contain(0));
    }
}
