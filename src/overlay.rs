//! The overlay: persons changed in the store since the served snapshot
//! was built, answered as they are now.
//!
//! An [`Overlay`] is immutable: the changed persons' current records in
//! small snapshots made in memory (the same [`Builder`], the same archive
//! and the same lookup functions as a snapshot file, so statuses, as-of
//! rules and answers cannot differ), the set of persons it speaks for,
//! and the change position it reflects. A changed person's records
//! replace that person's records in the snapshot entirely: a lookup that
//! reaches one of them in the snapshot (an old key, a withdrawn or moved
//! card, a deleted person) does not count it. The daemon swaps a new
//! overlay in whole (arc-swap), so the request path takes no lock and
//! allocates nothing for it.
//!
//! Two layers keep a change's cost small however many persons the
//! overlay holds: an older layer of every person changed up to some
//! position, shared by the overlays made over it, and a newer layer of
//! the persons changed since, made again at each change. [`Changes`]
//! (held by the daemon's change follower) accumulates the persons'
//! records by person, makes each new [`Overlay`], folds the newer layer
//! into a new older one when it outgrows its bound, and retires the
//! persons a newer snapshot covers.
//!
//! A person whose latest change could not be read (a row failing the
//! checks) is *unreadable*: lookups that reach that person (its records
//! in the snapshot, or in the older layer) answer UNAVAILABLE until a
//! later change of the person reads cleanly or a snapshot covers it.
//! Serving an older answer instead could answer a card its holder just
//! had restricted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use crate::model::row::{RowError, RowUnit};
use crate::model::{CardDigest, Date, EnrolleeRecord, InsuranceKey};
use crate::snapshot::body::{card_hash, key_tag, tag_of, ArchivedBody, NONE};
use crate::snapshot::lookup::{
    by_card_over, by_insurance_at, by_insurance_over, insurance_hash, Filter,
};
use crate::snapshot::write::{snapshot_bytes, SnapshotMeta};
use crate::snapshot::{
    Answer, BuildError, Builder, Except, Newer, PersonBits, PersonSet, Snapshot, SnapshotError,
};

/// Fewest persons the top layer holds before [`Changes`] folds both
/// layers into one (see [`Changes::folding_at`]). Small, so that a small
/// overlay's filters stay small (they have room for this many more
/// persons); a fold of a small overlay is cheap.
pub const FOLD_MIN: usize = 256;

/// Some changed persons' current records.
#[derive(Debug, Default)]
struct Layer {
    /// Their records; `None` when none has any.
    records: Option<Snapshot>,
    /// Every person the layer speaks for (with records or without).
    replaced: PersonSet,
    /// Persons whose latest change could not be read.
    unreadable: PersonSet,
}

/// The older layer of an overlay: every person changed up to a position,
/// made again only when the newer layer has grown (or the snapshot
/// changed), and what each overlay made over it starts from.
#[derive(Debug)]
struct Under {
    layer: Layer,
    /// The snapshot generation `bits` are for.
    generation: Option<u64>,
    /// The layer's persons as bits of that snapshot, with room for the
    /// newer layer's.
    bits: Option<PersonBits>,
    /// Filters of its keys and cards, with room for the newer layer's.
    keys: Filter,
    cards: Filter,
}

/// Persons changed since the served snapshot, as they are now.
///
/// Two layers: `under` holds every person changed up to some position
/// (shared between overlays, made again rarely), `top` the persons
/// changed since (made again at each change, so that a change costs the
/// recent changes' size, not all of them). A person in `top` counts
/// there only. The filters and bits cover both layers, so a lookup of a
/// person who did not change pays one filter probe and one bit either
/// way.
#[derive(Debug, Default)]
pub struct Overlay {
    /// The persons changed since `under` was made.
    top: Layer,
    /// The persons changed before, but for those in `top`.
    under: Option<Arc<Under>>,
    /// Every replaced person (either layer) as indexes of one snapshot
    /// (its generation and the bits), so lookups over that snapshot test
    /// a bit instead of reading and hashing store ids; over another
    /// snapshot (for the moment between a swap and the next overlay) the
    /// ids are used.
    replaced_in: Option<(u64, PersonBits)>,
    /// Some person of either layer is unreadable.
    any_unreadable: bool,
    persons: usize,
    records: u64,
    unreadable: usize,
    /// The change position (store change counter) it reflects.
    position: u64,
    /// Which insurance keys (with birth date) and cards either layer may
    /// hold, so that most lookups (of persons who did not change) skip
    /// their indexes.
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
        self.persons
    }

    /// Qualification records it holds (the persons' current ones).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Persons answered UNAVAILABLE.
    pub fn unreadable(&self) -> usize {
        self.unreadable
    }

    /// Whether it speaks for nobody (lookups go to the snapshot alone).
    pub fn is_empty(&self) -> bool {
        self.persons == 0
    }

    /// The change position it reflects.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Persons in the newer layer (the rest are in the older one).
    pub fn newest_persons(&self) -> usize {
        self.top.replaced.len()
    }

    /// The replaced persons, in the fastest form valid for `base`.
    #[inline]
    fn except(&self, base: &Snapshot) -> Except<'_> {
        match (&self.replaced_in, &self.under) {
            (Some((generation, bits)), _) if *generation == base.header().generation => {
                Except::Indexes(bits)
            }
            (_, Some(u)) => Except::Either(&u.layer.replaced, &self.top.replaced),
            (_, None) => Except::Ids(&self.top.replaced),
        }
    }

    /// Whether person `index` of `base` is one the overlay replaces: a
    /// bit when the overlay was made for `base` (the fast path's case),
    /// else by store id.
    #[inline]
    fn replaces(&self, base: &Snapshot, index: u32) -> bool {
        match &self.replaced_in {
            Some((generation, bits)) if *generation == base.header().generation => {
                bits.contains(index)
            }
            _ => self.except(base).holds(base.body(), index),
        }
    }

    /// The layers' bodies, newest first.
    fn newer(&self) -> Newer<'_> {
        Newer {
            top: self.top.records.as_ref().map(Snapshot::body),
            under: self
                .under
                .as_ref()
                .and_then(|u| u.layer.records.as_ref())
                .map(|r| (r.body(), Except::Ids(&self.top.replaced))),
        }
    }

    /// A card lookup over `base`: the snapshot's index without the
    /// replaced persons (tested on the person the card leads to, before
    /// the qualification is read) and, when the overlay's filter says it
    /// may hold the card, the overlay's layers first ([`by_card_over`]).
    /// A card leads to one person, so unlike a key it needs no merge: the
    /// common case costs the snapshot's lookup, a filter probe and one
    /// bit.
    #[inline]
    pub fn lookup_card<'a>(
        &'a self,
        base: &'a Snapshot,
        digest: &CardDigest,
        as_of: Date,
    ) -> Looked<'a> {
        let may_hold = self.cards.may_contain(tag_of(card_hash(digest.as_bytes())));
        let newer = if may_hold { self.newer() } else { Newer::NONE };
        let (answer, skipped) = by_card_over(base.body(), self.except(base), newer, digest, as_of);
        self.looked(answer, skipped)
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
        let hash = insurance_hash(key, birth);
        let plain = by_insurance_at(base.body(), key, birth, as_of, hash);
        let may_hold = self.keys.may_contain(key_tag(hash, 0) >> 8);
        if !may_hold {
            match plain {
                Answer::Found { qualification, .. }
                    if !self.replaces(base, qualification.person_index()) =>
                {
                    return Looked::Answer(plain)
                }
                // A key no replaced person held in the snapshot either
                // (else the plain lookup would have found it).
                Answer::NotFound => return Looked::Answer(plain),
                _ => {}
            }
        }
        self.insurance_the_whole_way(base, may_hold, key, birth, as_of, hash)
    }

    /// The merge of [`lookup_insurance`](Self::lookup_insurance), out of
    /// line: most lookups do not need it, and keeping it off their path
    /// keeps that path short.
    #[cold]
    #[inline(never)]
    fn insurance_the_whole_way<'a>(
        &'a self,
        base: &'a Snapshot,
        may_hold: bool,
        key: &InsuranceKey,
        birth: Date,
        as_of: Date,
        hash: u64,
    ) -> Looked<'a> {
        let except = self.except(base);
        let newer = if may_hold { self.newer() } else { Newer::NONE };
        let (answer, skipped) =
            by_insurance_over(base.body(), except, newer, key, birth, as_of, hash);
        self.looked(answer, skipped)
    }

    /// The answer, unless the lookup reached an unreadable person
    /// (`skipped`: the store id of a replaced person it reached).
    #[inline]
    fn looked<'a>(&self, answer: Answer<'a>, skipped: Option<u64>) -> Looked<'a> {
        if self.any_unreadable && skipped.is_some_and(|id| self.is_unreadable(id)) {
            Looked::Unreadable
        } else {
            Looked::Answer(answer)
        }
    }

    /// Whether person `id`'s latest change could not be read.
    fn is_unreadable(&self, id: u64) -> bool {
        self.top.unreadable.contains(id)
            || self
                .under
                .as_ref()
                .is_some_and(|u| u.layer.unreadable.contains(id) && !self.top.replaced.contains(id))
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
///
/// It keeps the older layer of the last overlay and the persons changed
/// since; each overlay is that layer and a newer one of those persons,
/// until they are more than [`FOLD_MIN`] (or a sixteenth of the older
/// layer's persons, if more): then both are folded into a new older
/// layer. A change thus costs the recent changes' size, and a fold (every
/// persons' records built again) comes once per many changes.
#[derive(Debug)]
pub struct Changes {
    persons: BTreeMap<u64, Entry>,
    position: u64,
    /// Persons changed since `under` was made (the newer layer's).
    since: BTreeSet<u64>,
    under: Option<Arc<Under>>,
    /// Records of all entries, and the unreadable ones.
    records: u64,
    unreadable: usize,
    fold_min: usize,
}

impl Default for Changes {
    fn default() -> Changes {
        Changes::new(0)
    }
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
            since: BTreeSet::new(),
            under: None,
            records: 0,
            unreadable: 0,
            fold_min: FOLD_MIN,
        }
    }

    /// Folds the layers when the newer one holds more than `n` persons
    /// (or a sixteenth of the older one's, if more), instead of
    /// [`FOLD_MIN`]; 0 folds at every overlay (one layer).
    pub fn folding_at(mut self, n: usize) -> Changes {
        self.fold_min = n;
        self
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
            self.count(&records, unreadable, true);
            let old = self.persons.insert(
                c.person_id,
                Entry {
                    version: c.version,
                    records,
                    unreadable,
                },
            );
            if let Some(old) = old {
                self.count(&old.records, old.unreadable, false);
            }
            self.since.insert(c.person_id);
        }
        self.position = self.position.max(position);
    }

    /// Adds (or takes away) an entry's records and unreadable mark to
    /// the counts.
    fn count(&mut self, records: &[(u64, EnrolleeRecord)], unreadable: bool, add: bool) {
        let (r, u) = (records.len() as u64, usize::from(unreadable));
        if add {
            self.records += r;
            self.unreadable += u;
        } else {
            self.records -= r;
            self.unreadable -= u;
        }
    }

    /// Drops the persons whose newest change a snapshot at `position`
    /// includes; returns how many. A snapshot older than the changes
    /// (a rollback) drops none, and the caller replays from it instead.
    /// The next overlay is made whole again.
    pub fn retire(&mut self, position: u64) -> usize {
        let before = self.persons.len();
        self.persons.retain(|_, e| e.version > position);
        self.records = self.persons.values().map(|e| e.records.len() as u64).sum();
        self.unreadable = self.persons.values().filter(|e| e.unreadable).count();
        self.under = None;
        self.since.clear();
        before - self.persons.len()
    }

    /// Marks a person unreadable (its records made the overlay's build
    /// fail).
    fn mark_unreadable(&mut self, person_id: u64) {
        if let Some(e) = self.persons.get_mut(&person_id) {
            let (records, unreadable) = (std::mem::take(&mut e.records), e.unreadable);
            e.unreadable = true;
            self.count(&records, unreadable, false);
            self.count(&[], true, true);
        }
    }

    /// The person whose records include store row `row`.
    fn person_of_row(&self, row: u64) -> Option<u64> {
        self.persons
            .iter()
            .find(|(_, e)| e.records.iter().any(|(r, _)| *r == row))
            .map(|(id, _)| *id)
    }

    /// Most persons the newer layer holds over an older one of `under`
    /// persons.
    fn fold_limit(&self, under: usize) -> usize {
        if self.fold_min == 0 {
            0
        } else {
            self.fold_min.max(under / 16)
        }
    }

    /// Makes the overlay of the persons held, for lookups over `base`
    /// (the snapshot serving; it answers over any other snapshot too, a
    /// little slower). A person whose records a snapshot build refuses
    /// (an insurance key held twice in one period among the changed
    /// persons of a layer, say) is marked unreadable, logged by person id
    /// and store row, and the overlay is made without it.
    pub fn overlay(
        &mut self,
        card_key_id: u64,
        base: Option<&Snapshot>,
    ) -> Result<Overlay, SnapshotError> {
        let generation = base.map(|b| b.header().generation);
        let under = match &self.under {
            Some(u)
                if u.generation == generation
                    && self.since.len() <= self.fold_limit(u.layer.replaced.len()) =>
            {
                Arc::clone(u)
            }
            _ => self.fold(card_key_id, base)?,
        };
        let top = if self.since.is_empty() {
            Layer::default()
        } else {
            self.layer(card_key_id, false)?
        };
        let (mut keys, mut cards) = (under.keys.clone(), under.cards.clone());
        fill(&top, &mut keys, &mut cards);
        let replaced_in = under.bits.as_ref().zip(base).map(|(bits, b)| {
            let mut bits = bits.clone();
            bits.mark(b.body(), &top.replaced);
            (b.header().generation, bits)
        });
        Ok(Overlay {
            any_unreadable: !top.unreadable.is_empty() || !under.layer.unreadable.is_empty(),
            top,
            under: Some(under),
            replaced_in,
            persons: self.persons.len(),
            records: self.records,
            unreadable: self.unreadable,
            position: self.position,
            keys,
            cards,
        })
    }

    /// Makes one older layer of every person held, with room in its
    /// filters and bits for the newer layers made over it.
    fn fold(
        &mut self,
        card_key_id: u64,
        base: Option<&Snapshot>,
    ) -> Result<Arc<Under>, SnapshotError> {
        let layer = self.layer(card_key_id, true)?;
        let room = self.fold_limit(layer.replaced.len());
        let (quals, persons) = layer
            .records
            .as_ref()
            .map_or((0, 0), |r| (r.body().quals.len(), r.body().persons.len()));
        // A person holds a qualification or two: room for twice the
        // newer layer's persons in the keys' filter.
        let mut keys = Filter::with_entries(quals + 2 * room);
        let mut cards = Filter::with_entries(persons + room);
        fill(&layer, &mut keys, &mut cards);
        let bits = base.map(|b| {
            let mut bits = PersonBits::room(b.body(), layer.replaced.len() + room);
            bits.mark(b.body(), &layer.replaced);
            bits
        });
        let under = Arc::new(Under {
            layer,
            generation: base.map(|b| b.header().generation),
            bits,
            keys,
            cards,
        });
        self.since.clear();
        self.under = Some(Arc::clone(&under));
        Ok(under)
    }

    /// The layer of every person held (`all`) or of those changed since
    /// the older layer; a person whose rows the build refuses is marked
    /// unreadable and the layer made again without them.
    fn layer(&mut self, card_key_id: u64, all: bool) -> Result<Layer, SnapshotError> {
        loop {
            let ids: Vec<u64> = if all {
                self.persons.keys().copied().collect()
            } else {
                self.since.iter().copied().collect()
            };
            match self.try_layer(&ids, card_key_id) {
                Ok(layer) => return Ok(layer),
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

    fn try_layer(&self, ids: &[u64], card_key_id: u64) -> Result<Layer, Refused> {
        let mut replaced = PersonSet::new();
        let mut unreadable = PersonSet::new();
        let mut builder = Builder::new().counting(RowUnit::Qualification);
        let mut refused = Vec::new();
        for (&id, e) in ids.iter().filter_map(|id| self.persons.get_key_value(id)) {
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
        Ok(Layer {
            records,
            replaced,
            unreadable,
        })
    }
}

/// Adds a layer's keys and cards to the filters. The slots' tags are the
/// hash bits a lookup computes.
fn fill(layer: &Layer, keys: &mut Filter, cards: &mut Filter) {
    let Some(r) = &layer.records else { return };
    let b: &ArchivedBody = r.body();
    for slot in b.key_slots.iter().filter(|s| s.row != NONE) {
        keys.insert(slot.tag.to_native() >> 8);
    }
    for slot in b.card_slots.iter().filter(|s| s.row != NONE) {
        cards.insert(slot.tag.to_native());
    }
}

enum Refused {
    Rows(Vec<RowError>),
    Snapshot(SnapshotError),
}
