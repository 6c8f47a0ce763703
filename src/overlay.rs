//! The overlay: persons changed in the store since the served snapshot
//! was built, answered as they are now.
//!
//! An [`Overlay`] is immutable: a small snapshot made in memory from the
//! changed persons' current records (the same [`Builder`], the same
//! archive and the same lookup functions as a snapshot file, so statuses,
//! as-of rules and answers cannot differ), the set of persons it speaks
//! for, and the change position it reflects. A changed person's records
//! replace that person's records in the snapshot entirely: a lookup that
//! reaches one of them in the snapshot (an old key, a withdrawn or moved
//! card, a deleted person) does not count it. The daemon swaps a new
//! overlay in whole (arc-swap), so the request path takes no lock and
//! allocates nothing for it.
//!
//! [`Changes`] (held by the daemon's change follower) accumulates the
//! persons' records by person and makes each new [`Overlay`]; it also
//! retires the persons a newer snapshot covers.
//!
//! A person whose latest change could not be read (a row failing the
//! checks) is *unreadable*: lookups that reach that person answer
//! UNAVAILABLE until a later change of the person reads cleanly or a
//! snapshot covers it. Serving the snapshot's older answer instead could
//! answer a card its holder just had restricted.

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::row::{RowError, RowUnit};
use crate::model::{CardDigest, Date, EnrolleeRecord, InsuranceKey};
use crate::snapshot::body::{card_hash, key_tag, tag_of, NONE};
use crate::snapshot::lookup::{by_card_over, by_insurance_over, insurance_hash, Filter};
use crate::snapshot::write::{snapshot_bytes, SnapshotMeta};
use crate::snapshot::{
    Answer, BuildError, Builder, Except, PersonBits, PersonSet, Snapshot, SnapshotError,
};

/// Persons changed since the served snapshot, as they are now.
#[derive(Debug, Default)]
pub struct Overlay {
    /// The changed persons' current records; `None` when none has any.
    records: Option<Snapshot>,
    /// Every person the overlay speaks for (with records or without):
    /// their records in the snapshot no longer count.
    replaced: PersonSet,
    /// The same persons as indexes of one snapshot (its generation and
    /// the bits), so lookups over that snapshot test a bit instead of
    /// reading and hashing store ids; over another snapshot (for the
    /// moment between a swap and the next overlay) the ids are used.
    replaced_in: Option<(u64, PersonBits)>,
    /// Persons whose latest change could not be read.
    unreadable: PersonSet,
    /// The change position (store change counter) it reflects.
    position: u64,
    /// Which insurance keys (with birth date) and cards the overlay may
    /// hold, so that most lookups (of persons who did not change) skip
    /// its index.
    keys: Filter,
    cards: Filter,
}

/// What a lookup through an overlay found.
#[derive(Debug, Clone, Copy)]
pub enum Looked<'a> {
    /// An answer, from the overlay or the snapshot.
    Answer(Answer<'a>),
    /// The lookup reached a person whose latest change could not be read.
    Unreadable,
}

impl Overlay {
    /// An overlay with no persons at `position`.
    pub fn empty(position: u64) -> Overlay {
        Overlay {
            position,
            ..Overlay::default()
        }
    }

    /// Persons the overlay speaks for.
    pub fn persons(&self) -> usize {
        self.replaced.len()
    }

    /// Qualification records it holds.
    pub fn records(&self) -> u64 {
        self.records.as_ref().map_or(0, |s| s.header().records)
    }

    /// Persons answered UNAVAILABLE.
    pub fn unreadable(&self) -> usize {
        self.unreadable.len()
    }

    /// Whether it speaks for nobody (lookups go to the snapshot alone).
    pub fn is_empty(&self) -> bool {
        self.replaced.is_empty()
    }

    /// The change position it reflects.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The replaced persons, in the fastest form valid for `base`.
    #[inline]
    fn except(&self, base: &Snapshot) -> Except<'_> {
        match &self.replaced_in {
            Some((generation, bits)) if *generation == base.header().generation => {
                Except::Indexes(bits)
            }
            _ => Except::Ids(&self.replaced),
        }
    }

    /// A card lookup over `base`.
    ///
    /// The snapshot's answer is taken as it is when the overlay cannot hold
    /// the card (its filter says so) and the answer's person was not
    /// replaced: the common case costs the snapshot's lookup, a filter
    /// probe and one bit. Anything else goes the whole way
    /// ([`by_card_over`]).
    #[inline]
    pub fn lookup_card<'a>(
        &'a self,
        base: &'a Snapshot,
        digest: &CardDigest,
        as_of: Date,
    ) -> Looked<'a> {
        let plain = base.lookup_card(digest, as_of);
        let except = self.except(base);
        let newer = self
            .records
            .as_ref()
            .map(Snapshot::body)
            .filter(|_| self.cards.may_contain(tag_of(card_hash(digest.as_bytes()))));
        if newer.is_none() {
            match plain {
                Answer::Found { qualification, .. }
                    if !except.holds(base.body(), qualification.person_index()) =>
                {
                    return Looked::Answer(plain)
                }
                // Not registered, and the overlay does not have the card:
                // so it answers whether or not its holder was replaced
                // (unless that holder is unreadable). A card whose holder
                // has no qualification yet (not found) or is restricted
                // may be a replaced person's: the whole way.
                Answer::CardNotRegistered if self.unreadable.is_empty() => {
                    return Looked::Answer(plain)
                }
                _ => {}
            }
        }
        let (answer, skipped) = by_card_over(base.body(), except, newer, digest, as_of);
        self.looked(base, answer, skipped)
    }

    /// An insurance lookup over `base`: as [`lookup_card`](Self::lookup_card),
    /// the snapshot's answer as it is when the overlay cannot hold the key
    /// and the answer's person was not replaced, else
    /// [`by_insurance_over`].
    #[inline]
    pub fn lookup_insurance<'a>(
        &'a self,
        base: &'a Snapshot,
        key: &InsuranceKey,
        birth: Date,
        as_of: Date,
    ) -> Looked<'a> {
        let plain = base.lookup_insurance(key, birth, as_of);
        let except = self.except(base);
        let newer = self.records.as_ref().map(Snapshot::body).filter(|_| {
            self.keys
                .may_contain(key_tag(insurance_hash(key, birth), 0) >> 8)
        });
        if newer.is_none() {
            match plain {
                Answer::Found { qualification, .. }
                    if !except.holds(base.body(), qualification.person_index()) =>
                {
                    return Looked::Answer(plain)
                }
                // A key no replaced person held in the snapshot either
                // (else the plain lookup would have found it).
                Answer::NotFound => return Looked::Answer(plain),
                _ => {}
            }
        }
        self.insurance_the_whole_way(base, except, newer, key, birth, as_of)
    }

    /// The merge of [`lookup_insurance`](Self::lookup_insurance), out of
    /// line: most lookups do not need it, and keeping it off their path
    /// keeps that path short.
    #[cold]
    #[inline(never)]
    fn insurance_the_whole_way<'a>(
        &'a self,
        base: &'a Snapshot,
        except: Except<'a>,
        newer: Option<&'a crate::snapshot::body::ArchivedBody>,
        key: &InsuranceKey,
        birth: Date,
        as_of: Date,
    ) -> Looked<'a> {
        let hash = insurance_hash(key, birth);
        let (answer, skipped) =
            by_insurance_over(base.body(), except, newer, key, birth, as_of, hash);
        self.looked(base, answer, skipped)
    }

    /// The answer, unless the lookup reached an unreadable person
    /// (`skipped`: the index in `base` of a replaced person it reached).
    #[inline]
    fn looked<'a>(&self, base: &Snapshot, answer: Answer<'a>, skipped: Option<u32>) -> Looked<'a> {
        let unreadable = skipped
            .filter(|_| !self.unreadable.is_empty())
            .and_then(|i| base.body().person_ids.get(i as usize))
            .is_some_and(|id| self.unreadable.contains(id.to_native()));
        if unreadable {
            Looked::Unreadable
        } else {
            Looked::Answer(answer)
        }
    }
}

/// One changed person's state in [`Changes`].
#[derive(Debug)]
struct Entry {
    /// The newest change applied (store change counter).
    version: u64,
    /// The person's current records with their store rows; empty when
    /// the person has none (deleted, or unreadable).
    records: Vec<(u64, EnrolleeRecord)>,
    /// The latest change could not be read.
    unreadable: bool,
}

/// The changed persons, by store id, from which overlays are made.
#[derive(Debug, Default)]
pub struct Changes {
    persons: BTreeMap<u64, Entry>,
    position: u64,
}

/// A person's change as read from the store.
#[derive(Debug)]
pub struct PersonChange {
    /// The person's store id.
    pub person_id: u64,
    /// The newest change of the person read.
    pub version: u64,
    /// The person's current records (none: deleted), or why they could
    /// not be read.
    pub records: Result<Vec<(u64, EnrolleeRecord)>, RowError>,
}

impl Changes {
    /// No changes, at `position` (the served snapshot's).
    pub fn new(position: u64) -> Changes {
        Changes {
            persons: BTreeMap::new(),
            position,
        }
    }

    /// The position the changes reach.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Changed persons held.
    pub fn len(&self) -> usize {
        self.persons.len()
    }

    /// Whether no person is held.
    pub fn is_empty(&self) -> bool {
        self.persons.is_empty()
    }

    /// Applies a read of changes up to `position`: each person's entry is
    /// replaced by the one read.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = PersonChange>, position: u64) {
        for c in changes {
            let (records, unreadable) = match c.records {
                Ok(r) => (r, false),
                Err(_) => (Vec::new(), true),
            };
            self.persons.insert(
                c.person_id,
                Entry {
                    version: c.version,
                    records,
                    unreadable,
                },
            );
        }
        self.position = self.position.max(position);
    }

    /// Drops the persons whose newest change a snapshot at `position`
    /// includes; returns how many. A snapshot older than the changes
    /// (a rollback) drops none, and the caller replays from it instead.
    pub fn retire(&mut self, position: u64) -> usize {
        let before = self.persons.len();
        self.persons.retain(|_, e| e.version > position);
        before - self.persons.len()
    }

    /// Marks a person unreadable (its records made the overlay's build
    /// fail).
    fn mark_unreadable(&mut self, person_id: u64) {
        if let Some(e) = self.persons.get_mut(&person_id) {
            e.records.clear();
            e.unreadable = true;
        }
    }

    /// The person whose records include store row `row`.
    fn person_of_row(&self, row: u64) -> Option<u64> {
        self.persons
            .iter()
            .find(|(_, e)| e.records.iter().any(|(r, _)| *r == row))
            .map(|(id, _)| *id)
    }

    /// Makes the overlay of the persons held, for lookups over `base`
    /// (the snapshot serving; it answers over any other snapshot too, a
    /// little slower). A person whose records a
    /// snapshot build refuses (an insurance key held twice in one period
    /// among the changed persons, say) is marked unreadable, logged by
    /// person id and store row, and the overlay is made without it.
    pub fn overlay(
        &mut self,
        card_key_id: u64,
        base: Option<&Snapshot>,
    ) -> Result<Overlay, SnapshotError> {
        loop {
            match self.try_overlay(card_key_id) {
                Ok(mut o) => {
                    o.replaced_in = base
                        .map(|b| (b.header().generation, PersonBits::of(b.body(), &o.replaced)));
                    return Ok(o);
                }
                Err(Refused::Rows(rows)) => {
                    let persons: Vec<u64> = rows
                        .iter()
                        .filter_map(|e| self.person_of_row(e.line).map(|p| (p, e)))
                        .map(|(p, e)| {
                            tracing::error!(person_id = p, row = e.line, error = %e, "a changed person's rows are refused; answered UNAVAILABLE until it changes again or a snapshot covers it");
                            p
                        })
                        .collect();
                    if persons.is_empty() {
                        return Err(SnapshotError::Invalid(
                            "the overlay's rows are refused, and no changed person holds them"
                                .into(),
                        ));
                    }
                    for p in persons {
                        self.mark_unreadable(p);
                    }
                }
                Err(Refused::Snapshot(e)) => return Err(e),
            }
        }
    }

    fn try_overlay(&self, card_key_id: u64) -> Result<Overlay, Refused> {
        let mut replaced = PersonSet::new();
        let mut unreadable = PersonSet::new();
        let mut builder = Builder::new().counting(RowUnit::Qualification);
        let mut refused = Vec::new();
        for (&id, e) in &self.persons {
            replaced.insert(id);
            if e.unreadable {
                unreadable.insert(id);
            }
            for (row, rec) in &e.records {
                if let Err(err) = builder.push(*row, rec.clone()) {
                    refused.push(err);
                }
            }
        }
        if !refused.is_empty() {
            return Err(Refused::Rows(refused));
        }
        let records = if builder.records() == 0 {
            None
        } else {
            let body = match builder.finish() {
                Ok(b) => b,
                Err(BuildError::Rows { errors, .. }) => return Err(Refused::Rows(errors)),
                Err(e @ BuildError::Capacity(_)) => {
                    return Err(Refused::Snapshot(SnapshotError::Invalid(e.to_string())))
                }
            };
            let meta = SnapshotMeta {
                source: "overlay".into(),
                source_version: self.position,
                card_key_id,
            };
            let bytes = snapshot_bytes(&body, &meta, 0).map_err(Refused::Snapshot)?;
            Some(Snapshot::from_bytes(Path::new("overlay"), &bytes).map_err(Refused::Snapshot)?)
        };
        let (mut keys, mut cards) = (Filter::default(), Filter::default());
        if let Some(r) = &records {
            let b = r.body();
            keys = Filter::with_entries(b.quals.len());
            cards = Filter::with_entries(b.persons.len());
            // The slots' tags are the hash bits a lookup computes.
            for slot in b.key_slots.iter().filter(|s| s.row != NONE) {
                keys.insert(slot.tag.to_native() >> 8);
            }
            for slot in b.card_slots.iter().filter(|s| s.row != NONE) {
                cards.insert(slot.tag.to_native());
            }
        }
        Ok(Overlay {
            records,
            replaced,
            replaced_in: None,
            unreadable,
            position: self.position,
            keys,
            cards,
        })
    }
}

enum Refused {
    Rows(Vec<RowError>),
    Snapshot(SnapshotError),
}
