//! Turns a stream of [`EnrolleeRecord`]s into a snapshot [`Body`].
//!
//! Rows are folded into compact fixed-size records as they arrive; nothing
//! keeps the rows themselves. A person's rows must be adjacent (the CSV
//! export and the database export both order by person). Person-level
//! fields must agree across a person's rows. An insurance key may repeat
//! across qualifications whose periods do not overlap; overlapping ones,
//! and one card linked to two persons, are found while the indexes are
//! filled. Rows that break a warning rule of [`rules`] are counted.

use std::collections::HashMap;

use super::body::{
    card_hash, fmix64, home_slot, key_hash, key_tag, lookup_hash, split_key, table_len, tag_of,
    Body, ExtraRec, InsurerRec, PersonRec, QualRec, RowMark, Slot, FLAG_AID_UNREGISTERED,
    FLAG_PRESCHOOL, INLINE_KEY, MEDICAL_AID_SCHEME, NONE, NO_BYTE, NO_DATE, TAG_ALL,
};
use crate::model::row::{RowError, RowUnit};
use crate::model::rules::{self, Warning};
use crate::model::{CardLink, Date, EnrolleeRecord, KeyText, Qualification};

/// The most errors of one kind collected before giving up on listing them.
const MAX_REPORTED: usize = 100;

/// Why a build failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Rows that must not go into a snapshot (see the listed errors).
    #[error("{count} invalid rows; nothing written")]
    Rows {
        /// The first errors, in input order (at most 100).
        errors: Vec<RowError>,
        /// How many in all.
        count: u64,
    },
    /// A capacity limit of the snapshot format.
    #[error("{0}")]
    Capacity(String),
}

/// Accumulates records into a snapshot body.
#[derive(Debug)]
pub struct Builder {
    body: Body,
    /// Interned strings: text -> id. Names repeat a lot (family and given
    /// names are drawn from small vocabularies), so this keeps `strings` small.
    /// Keyed by the XXH3 of the text, checked against the pool on a hit.
    interned: HashMap<u64, u32, IntHash>,
    /// Texts whose hash another text took first (almost never used).
    collided: HashMap<Box<str>, u32>,
    /// Insurer number (raw) -> index in `body.insurers`.
    insurers: HashMap<u32, u16, IntHash>,
    /// The store's id of each person, in person order; checked for
    /// non-adjacent repeats at `finish`, where it becomes the body's
    /// `person_ids`.
    person_ids: Vec<u64>,
    /// The current person's first row, to check its other rows against.
    current: Option<(u64, EnrolleeRecord)>,
    /// (first qualification, its line) wherever line numbers stop running
    /// on from the previous row; maps a qualification back to its line.
    line_marks: Vec<(u32, u64)>,
    last_line: u64,
    /// What row positions ("lines") count.
    unit: RowUnit,
    /// The last day of qualifications not lost, for the warning rules.
    today: Date,
    /// Per [`Warning`] (in `Warning::ALL` order): how many rows, and the
    /// first one's position.
    warnings: [(u64, u64); Warning::ALL.len()],
}

/// How many rows broke one warning rule ([`rules`]); they are in the
/// snapshot as they were read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WarningCount {
    /// The rule's stable name.
    pub rule: &'static str,
    /// What the rule says.
    pub message: &'static str,
    /// The column concerned.
    pub column: &'static str,
    /// Rows that broke it.
    pub count: u64,
    /// Where the first one is, e.g. "line 17".
    pub first: String,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// An empty builder.
    pub fn new() -> Builder {
        Builder {
            body: Body::default(),
            interned: HashMap::default(),
            collided: HashMap::new(),
            insurers: HashMap::default(),
            person_ids: Vec::new(),
            current: None,
            line_marks: Vec::new(),
            last_line: 0,
            unit: RowUnit::Line,
            today: Date::today_jst(),
            warnings: [(0, 0); Warning::ALL.len()],
        }
    }

    /// Sets the day the warning rules take as the last day of a
    /// qualification not lost (today in Japan time by default).
    pub fn judging_on(mut self, today: Date) -> Builder {
        self.today = today;
        self
    }

    /// The warning rules broken so far, with counts (rules nobody broke
    /// are left out).
    pub fn warnings(&self) -> Vec<WarningCount> {
        Warning::ALL
            .iter()
            .zip(self.warnings)
            .filter(|(_, (count, _))| *count > 0)
            .map(|(w, (count, first))| WarningCount {
                rule: w.name(),
                message: w.message(),
                column: w.column(),
                count,
                first: format!("{} {first}", self.unit),
            })
            .collect()
    }

    /// An empty builder with room reserved for the rows of a CSV export of
    /// `source_bytes` bytes (about 190 bytes a row), so the big arrays are
    /// not copied as they grow. Reserved but untouched memory costs nothing.
    pub fn with_capacity_for(source_bytes: u64) -> Builder {
        Builder::with_capacity((source_bytes / 150) as usize)
    }

    /// An empty builder with room reserved for about `rows` rows.
    pub fn with_capacity(rows: usize) -> Builder {
        let mut b = Builder::new();
        b.body.quals.reserve(rows);
        b.body.persons.reserve(rows);
        b.body.extras.reserve(rows / 2);
        b.person_ids.reserve(rows);
        b
    }

    /// Says what the positions passed to [`push`](Self::push) count
    /// (CSV lines by default), for error messages.
    pub fn counting(mut self, unit: RowUnit) -> Builder {
        self.unit = unit;
        self
    }

    /// Qualifications added so far.
    pub fn records(&self) -> u64 {
        self.body.quals.len() as u64
    }

    /// Adds one row, read at `line`. A row that contradicts its person's
    /// earlier rows or an earlier row's insurer, or that would exceed a
    /// capacity limit, is refused and leaves the builder unchanged: every
    /// check runs before anything is added (so `--skip-invalid` can go on
    /// with the next row).
    pub fn push(&mut self, line: u64, rec: EnrolleeRecord) -> Result<(), RowError> {
        let same_person =
            matches!(&self.current, Some((_, first)) if first.person_id == rec.person_id);
        if same_person {
            self.check_same_person(line, &rec)?;
        }
        let q = &rec.qualification;
        let quals = self.body.quals.len();
        if quals >= NONE as usize {
            return Err(capacity_row(line, "more than 4,294,967,294 qualifications"));
        }
        let symbol = q.symbol.as_ref().map_or(&[][..], KeyText::as_bytes);
        let number = q.number.as_bytes();
        let key_len = symbol.len() + number.len();
        let spill = self.body.keytext.len();
        if key_len > INLINE_KEY && spill + key_len > u32::MAX as usize {
            return Err(capacity_row(line, "long key texts exceed 4 GiB"));
        }
        let known_insurer = self.check_insurer(line, q)?;
        // Nothing below fails.
        if !same_person {
            self.start_person(&rec);
        }
        let person = (self.body.persons.len() - 1) as u32;
        let insurer = match known_insurer {
            Some(i) => i,
            None => self.add_insurer(q),
        };
        let mut key = [0u8; INLINE_KEY];
        if key_len <= INLINE_KEY {
            key[..symbol.len()].copy_from_slice(symbol);
            key[symbol.len()..key_len].copy_from_slice(number);
        } else {
            key[..4].copy_from_slice(&(spill as u32).to_le_bytes());
            self.body.keytext.extend_from_slice(symbol);
            self.body.keytext.extend_from_slice(number);
        }
        let aid_unregistered = q
            .public_expense
            .as_ref()
            .is_some_and(|p| p.payer.scheme() == MEDICAL_AID_SCHEME && !p.registered);
        let extra = self.extra(q);
        let p = self
            .body
            .persons
            .last_mut()
            .expect("start_person pushed a person");
        p.qual_count += 1;
        self.body.quals.push(QualRec {
            key,
            person,
            insurer,
            birth: q.birth_date.day_number(),
            acquired: q.acquired_date.day_number(),
            lost: q.loss.map_or(NO_DATE, |l| l.date.day_number()),
            extra,
            symbol_len: symbol.len() as u8,
            number_len: q.number.as_bytes().len() as u8,
            branch: q.branch.map_or(NO_BYTE, |b| b.value() + 1),
            relation: q.relation.to_byte(),
            card_class: q.card_class.to_byte(),
            copay: q.copay_percent.to_byte(),
            flags: if q.preschool { FLAG_PRESCHOOL } else { 0 }
                | if aid_unregistered {
                    FLAG_AID_UNREGISTERED
                } else {
                    0
                },
            loss_reason: q.loss.map_or(NO_BYTE, |l| l.reason.to_byte()),
            limit: q.limit_category.map_or(NO_BYTE, |l| l.to_byte()),
        });
        if line != self.last_line + 1 {
            self.line_marks.push((quals as u32, line));
        }
        self.last_line = line;
        if let Some(w) = rules::warning(q, self.today) {
            let i = Warning::ALL.iter().position(|x| *x == w).unwrap_or(0);
            let (count, first) = &mut self.warnings[i];
            if *count == 0 {
                *first = line;
            }
            *count += 1;
        }
        if !same_person {
            self.current = Some((line, rec));
        }
        Ok(())
    }

    fn check_same_person(&self, line: u64, rec: &EnrolleeRecord) -> Result<(), RowError> {
        let Some((first_line, first)) = &self.current else {
            return Ok(());
        };
        let (a, b) = (&first.qualification, &rec.qualification);
        let unit = self.unit;
        let differs = |column| RowError {
            line,
            column: Some(column),
            reason: format!("differs from {unit} {first_line} for the same person_id"),
            unit,
        };
        let (ca, cb) = (first.card, rec.card);
        if ca.map(|c| c.digest) != cb.map(|c| c.digest) {
            return Err(differs("card_digest"));
        }
        if ca.map(|c| c.status) != cb.map(|c| c.status) {
            return Err(differs("card_status"));
        }
        if a.name != b.name {
            return Err(differs("name"));
        }
        if a.name_kana != b.name_kana {
            return Err(differs("name_kana"));
        }
        if a.sex != b.sex {
            return Err(differs("sex"));
        }
        if a.birth_date != b.birth_date {
            return Err(differs("birth_date"));
        }
        if self
            .body
            .persons
            .last()
            .is_some_and(|p| p.qual_count == u16::MAX)
        {
            return Err(capacity_row(
                line,
                "more than 65,535 qualifications for one person",
            ));
        }
        Ok(())
    }

    fn start_person(&mut self, rec: &EnrolleeRecord) {
        let q = &rec.qualification;
        let name = self.intern_name(&q.name);
        let kana = self.intern_name(&q.name_kana);
        let (card, card_status) = match rec.card {
            Some(CardLink { digest, status }) => (*digest.as_bytes(), status.to_byte()),
            None => ([0; 16], NO_BYTE),
        };
        self.body.persons.push(PersonRec {
            card,
            name,
            kana,
            first_qual: self.body.quals.len() as u32,
            qual_count: 0,
            sex: q.sex.to_byte(),
            card_status,
        });
        self.person_ids.push(rec.person_id);
    }

    /// The index of `q`'s insurer if it is known (and its name agrees),
    /// `None` if it is new and there is room for it; changes nothing.
    fn check_insurer(&self, line: u64, q: &Qualification) -> Result<Option<u16>, RowError> {
        let raw = q.insurer_number.to_raw();
        if let Some(&i) = self.insurers.get(&raw) {
            let name = self.body.insurers[i as usize].name;
            if super::lookup_string(&self.body, name) != Some(q.insurer_name.as_str()) {
                return Err(RowError {
                    line,
                    column: Some("insurer_name"),
                    reason: "differs from an earlier row with the same insurer_number".into(),
                    unit: self.unit,
                });
            }
            return Ok(Some(i));
        }
        if u16::try_from(self.body.insurers.len()).is_err() {
            return Err(capacity_row(line, "more than 65,535 insurers"));
        }
        Ok(None)
    }

    /// Adds `q`'s insurer, which [`check_insurer`](Self::check_insurer)
    /// found new and with room.
    fn add_insurer(&mut self, q: &Qualification) -> u16 {
        let raw = q.insurer_number.to_raw();
        let i = self.body.insurers.len() as u16;
        let name = self.intern(&q.insurer_name);
        self.body.insurers.push(InsurerRec { number: raw, name });
        self.insurers.insert(raw, i);
        i
    }

    fn extra(&mut self, q: &Qualification) -> u32 {
        if q.certificate.is_none()
            && q.elderly.is_none()
            && q.specific_disease.is_none()
            && q.public_expense.is_none()
        {
            return NONE;
        }
        let mut e = ExtraRec::default();
        if let Some(c) = q.certificate {
            e.cert = [c.issued, c.valid_from, c.valid_until].map(|d| d.day_number());
        }
        if let Some(el) = q.elderly {
            e.elderly = [el.valid_from.day_number(), el.valid_until.day_number()];
            e.elderly_percent = el.percent.to_byte();
        }
        if let Some(d) = q.specific_disease {
            e.disease = d.kind.to_byte();
            e.disease_cap = d.monthly_cap_yen;
        }
        if let Some(p) = &q.public_expense {
            e.payer = p.payer.value();
            e.recipient = p.recipient.value();
            e.welfare_office = self.intern(&p.welfare_office);
            e.aid_registered = u8::from(p.registered);
        }
        self.body.extras.push(e);
        (self.body.extras.len() - 1) as u32
    }

    fn intern(&mut self, s: &str) -> u32 {
        let hash = xxhash_rust::xxh3::xxh3_64(s.as_bytes());
        match self.interned.get(&hash) {
            Some(&id) if super::lookup_string(&self.body, id) == Some(s) => return id,
            Some(_) => {
                if let Some(&id) = self.collided.get(s) {
                    return id;
                }
                let id = self.push_string(s);
                self.collided.insert(s.into(), id);
                return id;
            }
            None => {}
        }
        let id = self.push_string(s);
        self.interned.insert(hash, id);
        id
    }

    fn push_string(&mut self, s: &str) -> u32 {
        let id = self.body.string_ends.len() as u32;
        self.body.strings.extend_from_slice(s.as_bytes());
        self.body.string_ends.push(self.body.strings.len() as u32);
        id
    }

    fn intern_name(&mut self, name: &str) -> [u32; 2] {
        match name.split_once('\u{3000}') {
            Some((family, given)) => [self.intern(family), self.intern(given)],
            None => [self.intern(name), NONE],
        }
    }

    /// The line a qualification was read from.
    fn line_of(&self, qual: u32) -> u64 {
        let i = self.line_marks.partition_point(|&(q, _)| q <= qual);
        match i.checked_sub(1).map(|i| self.line_marks[i]) {
            Some((q, line)) => line + u64::from(qual - q),
            None => u64::from(qual) + 1,
        }
    }

    /// Checks person adjacency and builds both indexes.
    pub fn finish(mut self) -> Result<Body, BuildError> {
        self.body.person_ids = std::mem::take(&mut self.person_ids);
        self.check_adjacent_persons()?;
        if self.body.strings.len() > u32::MAX as usize {
            return Err(BuildError::Capacity("interned strings exceed 4 GiB".into()));
        }
        // On two threads: the card index, and the overlapping-key check then
        // the insurance index (the check's hashes are freed before the
        // index is allocated, which keeps the peak memory down).
        let ((card_slots, mut errors), (key_slots, key_errors)) = std::thread::scope(|s| {
            let card = s.spawn(|| self.card_index());
            let key_errors = self.overlapping_keys();
            let key_slots = if key_errors.count == 0 {
                self.key_index()
            } else {
                Vec::new()
            };
            let card = card.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            (card, (key_slots, key_errors))
        });
        let count = errors.count + key_errors.count;
        if count > 0 {
            errors.first.extend(key_errors.first);
            errors.first.sort_by_key(|e| e.line);
            errors.first.truncate(MAX_REPORTED);
            return Err(BuildError::Rows {
                errors: errors.first,
                count,
            });
        }
        self.body.card_slots = card_slots;
        self.body.key_slots = key_slots;
        self.body.row_marks = self
            .line_marks
            .iter()
            .map(|&(qual, row)| RowMark { qual, row })
            .collect();
        Ok(self.body)
    }

    fn check_adjacent_persons(&self) -> Result<(), BuildError> {
        let ids = &self.body.person_ids;
        // The usual export is ordered by person_id: nothing can repeat, and
        // no sorted copy (8 bytes a person) is needed.
        if ids.windows(2).all(|w| w[0] < w[1]) {
            return Ok(());
        }
        let mut sorted = ids.to_vec();
        sorted.sort_unstable();
        let repeated: std::collections::HashSet<u64> = sorted
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        drop(sorted);
        if repeated.is_empty() {
            return Ok(());
        }
        // Only on failure: name the rows where a person_id comes back.
        let mut first_seen: HashMap<u64, u64> = HashMap::new();
        let mut errors = Vec::new();
        let mut count = 0;
        for (p, id) in ids.iter().enumerate() {
            if !repeated.contains(id) {
                continue;
            }
            let line = self.line_of(self.body.persons[p].first_qual);
            match first_seen.get(id) {
                None => {
                    first_seen.insert(*id, line);
                }
                Some(first) => {
                    count += 1;
                    if errors.len() < MAX_REPORTED {
                        errors.push(RowError {
                            line,
                            column: Some("person_id"),
                            reason: format!(
                                "rows of this person are not adjacent (also at {unit} {first}); \
                                 the export must be ordered by person_id",
                                unit = self.unit
                            ),
                            unit: self.unit,
                        });
                    }
                }
            }
        }
        Err(BuildError::Rows { errors, count })
    }

    /// The card index, and a row error for each card linked to two persons.
    fn card_index(&self) -> (Vec<Slot>, Errors) {
        let mut errors = Errors::default();
        let persons = &self.body.persons;
        let carded = persons.iter().filter(|p| p.card_status != NO_BYTE).count();
        let mut slots = vec![Slot::EMPTY; table_len(carded)];
        for (row, p) in persons.iter().enumerate() {
            if p.card_status == NO_BYTE {
                continue;
            }
            let hash = card_hash(&p.card);
            let dup = insert(
                &mut slots,
                hash,
                tag_of(hash),
                TAG_ALL,
                row as u32,
                |other| persons[other as usize].card == p.card,
            );
            if let Some(other) = dup {
                let first = self.line_of(persons[other as usize].first_qual);
                errors.push(RowError {
                    line: self.line_of(p.first_qual),
                    column: Some("card_digest"),
                    reason: format!(
                        "same card as the person at {unit} {first}",
                        unit = self.unit
                    ),
                    unit: self.unit,
                });
            }
        }
        (slots, errors)
    }

    /// The insurance index.
    fn key_index(&self) -> Vec<Slot> {
        let body = &self.body;
        let mut slots = vec![Slot::EMPTY; table_len(body.quals.len())];
        for (row, q) in body.quals.iter().enumerate() {
            let hash = lookup_hash(self.key_hash_of(q), q.birth);
            // Overlaps are found by `overlapping_keys`; nothing to compare.
            insert(
                &mut slots,
                hash,
                key_tag(hash, q.branch),
                0,
                row as u32,
                |_| false,
            );
        }
        slots
    }

    /// A row error for each qualification whose insurance key (insurer,
    /// symbol, number, branch) another qualification holds in an
    /// overlapping period, whatever the birth dates. A key may repeat: a
    /// person who left and rejoined an insurer under the same numbers, or
    /// a number given again after its holder lost it, as long as the
    /// periods `[acquired, lost)` do not overlap (the loss date is the
    /// first day not covered, so one may end the day the next begins).
    ///
    /// Sorts one 64-bit hash per qualification; only the qualifications
    /// whose hash repeats are then grouped and compared key by key, so the
    /// common case holds 8 bytes a record.
    fn overlapping_keys(&self) -> Errors {
        let quals = &self.body.quals;
        let full = |q: &QualRec| fmix64(self.key_hash_of(q) ^ u64::from(q.branch));
        let mut hashes: Vec<u64> = quals.iter().map(full).collect();
        hashes.sort_unstable();
        let repeated: std::collections::HashSet<u64> = hashes
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        drop(hashes);
        let mut errors = Errors::default();
        if repeated.is_empty() {
            return errors;
        }
        // Ordered by hash, so the errors kept are the same on every build.
        let mut groups: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
        for (row, q) in quals.iter().enumerate() {
            let h = full(q);
            if repeated.contains(&h) {
                groups.entry(h).or_default().push(row as u32);
            }
        }
        let end = |q: &QualRec| if q.lost == NO_DATE { i32::MAX } else { q.lost };
        for rows in groups.values_mut() {
            // Same key together (a hash may be shared by different keys),
            // each key's periods by start.
            rows.sort_by(|&a, &b| {
                let (qa, qb) = (&quals[a as usize], &quals[b as usize]);
                (qa.insurer, qa.branch, self.key_of(qa), qa.acquired, a).cmp(&(
                    qb.insurer,
                    qb.branch,
                    self.key_of(qb),
                    qb.acquired,
                    b,
                ))
            });
            // The period reaching furthest so far among the key's rows.
            let mut open: Option<u32> = None;
            for &row in rows.iter() {
                let q = &quals[row as usize];
                let same_key = |o: &QualRec| {
                    o.insurer == q.insurer
                        && o.branch == q.branch
                        && self.key_of(o) == self.key_of(q)
                };
                match open {
                    Some(o) if same_key(&quals[o as usize]) => {
                        let o_rec = &quals[o as usize];
                        if q.acquired < end(o_rec) {
                            let (a, b) = (self.line_of(o), self.line_of(row));
                            errors.push(RowError {
                                line: a.max(b),
                                column: Some("number"),
                                reason: format!(
                                    "the same insurance key (insurer, symbol, number, branch) as \
                                     {} {} in an overlapping period",
                                    self.unit,
                                    a.min(b)
                                ),
                                unit: self.unit,
                            });
                        }
                        if end(q) > end(o_rec) {
                            open = Some(row);
                        }
                    }
                    _ => open = Some(row),
                }
            }
        }
        errors
    }

    fn key_of<'a>(&'a self, q: &'a QualRec) -> (&'a [u8], &'a [u8]) {
        split_key(&q.key, q.symbol_len, q.number_len, &self.body.keytext).unwrap_or_default()
    }

    fn key_hash_of(&self, q: &QualRec) -> u64 {
        let (symbol, number) = self.key_of(q);
        key_hash(
            self.body.insurers[usize::from(q.insurer)].number,
            symbol,
            number,
        )
    }
}

/// Inserts `row` with `tag` at the first free slot from `hash`'s home slot;
/// if a row whose tag agrees in the bits of `dup_mask` is one `same` calls
/// the same key, returns it instead of inserting.
fn insert(
    slots: &mut [Slot],
    hash: u64,
    tag: u32,
    dup_mask: u32,
    row: u32,
    same: impl Fn(u32) -> bool,
) -> Option<u32> {
    let len = slots.len();
    let mut i = home_slot(hash, len);
    loop {
        let s = slots[i];
        if s.row == NONE {
            slots[i] = Slot { tag, row };
            return None;
        }
        if (s.tag ^ tag) & dup_mask == 0 && same(s.row) {
            return Some(s.row);
        }
        i += 1;
        if i == len {
            i = 0;
        }
    }
}

/// Hasher for integer keys (insurer numbers, and text hashes that are
/// already uniform): one multiply, whose high bits hashbrown uses.
pub(crate) type IntHash = std::hash::BuildHasherDefault<IntHasher>;

#[derive(Debug, Default)]
pub(crate) struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Keeps the first `MAX_REPORTED` errors and counts the rest.
#[derive(Debug, Default)]
struct Errors {
    first: Vec<RowError>,
    count: u64,
}

impl Errors {
    fn push(&mut self, e: RowError) {
        self.count += 1;
        if self.first.len() < MAX_REPORTED {
            self.first.push(e);
        }
    }
}

fn capacity_row(line: u64, what: &str) -> RowError {
    RowError {
        line,
        column: None,
        reason: format!("snapshot capacity exceeded: {what}"),
        unit: RowUnit::Line,
    }
}
