//! Lookup cost through the overlay of changed persons, against the
//! snapshot alone (today's path), in the same run: with an empty overlay
//! (the request path's check that skips it) and with 100,000 changed
//! persons (their current records in an in-memory snapshot, their records
//! in the mapped snapshot no longer counting).
//!
//! Keys are drawn at random from the whole data set, as in `lookup`, so
//! some lookups reach a changed person (answered from the overlay) and
//! the rest pay the overlay's miss and the replaced-person check.
//!
//! `QUALCACHE_BENCH_SIZES=1000000` limits the sizes (default 1 M, 10 M).
//! `QUALCACHE_BENCH_ROUNDS=N` runs every group N times over (variants
//! named `name#round`, a 1 s warm-up), so that each variant is measured
//! next to its baseline several times: this machine drifts by more than
//! the differences measured within one pass; `python3 benches/medians.py`
//! then prints the median of the per-round ratios.

#[path = "common.rs"]
mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use qualcache::model::{CardDigest, CardKey, Date, EnrolleeRecord, InsuranceKey, Status};
use qualcache::overlay::{Changes, Looked, Overlay, PersonChange};
use qualcache::snapshot::{Answer, Snapshot};
use qualcache::store::csv::CsvReader;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keys per benchmark (a power of two).
const KEYS: usize = 1 << 20;

/// Changed persons in the full overlay.
const CHANGED: usize = 100_000;

/// What the request path does (`protocol`): the overlay only when it
/// speaks for someone; the answer is used whole ([`essence`]: status and
/// the records it names), as the server renders it, so the compiler cannot
/// drop the part of a lookup that only the rendering would read. Every variant, the snapshot alone included
/// (`overlay` = `None`), runs this one out-of-line function with the
/// overlay passed through `black_box`, so all of them run the same
/// machine code and differ only in the work their data asks for (separate
/// closures per variant measured code placement as much as work: up to
/// 1.5× for a wrapper that did nothing).
#[inline(never)]
fn card(snap: &Snapshot, overlay: Option<&Overlay>, d: &CardDigest, as_of: Date) -> u64 {
    match overlay {
        Some(o) if !o.is_empty() => match o.lookup_card(snap, d, as_of) {
            Looked::Answer(a) => essence(&a),
            Looked::Unreadable => Status::NotFound.code() as u64,
        },
        _ => essence(&snap.lookup_card(d, as_of)),
    }
}

/// What an answer carries, as the server renders it: the status and the
/// records it names (so no part of the lookup is left unused).
fn essence(a: &Answer<'_>) -> u64 {
    let status = a.status().code() as u64;
    match a {
        Answer::Found {
            qualification,
            newer,
            ..
        } => {
            status
                ^ (u64::from(qualification.person_index()) << 8)
                ^ newer
                    .as_ref()
                    .map_or(0, |n| u64::from(n.person_index()) << 32)
        }
        _ => status,
    }
}

#[inline(never)]
fn insurance(
    snap: &Snapshot,
    overlay: Option<&Overlay>,
    k: &(InsuranceKey, Date),
    as_of: Date,
) -> u64 {
    match overlay {
        Some(o) if !o.is_empty() => match o.lookup_insurance(snap, &k.0, k.1, as_of) {
            Looked::Answer(a) => essence(&a),
            Looked::Unreadable => Status::NotFound.code() as u64,
        },
        _ => essence(&snap.lookup_insurance(&k.0, k.1, as_of)),
    }
}

/// The snapshot, an overlay of `CHANGED` persons spread over the data
/// (every n-th person, records as read), and shuffled sample keys.
fn load(
    records: u64,
) -> (
    Snapshot,
    Overlay,
    Vec<CardDigest>,
    Vec<(InsuranceKey, Date)>,
) {
    let dir = common::data(records);
    let snap = Snapshot::open(&common::snapshot_file(&dir)).unwrap();
    let persons = snap.header().persons as usize;
    let every = (persons / CHANGED).max(1);
    let mut reader = CsvReader::open(&dir.join("enrollees.csv")).unwrap();
    let mut next = common::xorshift();
    let sample_every = (records / KEYS as u64).max(1);
    let (mut cards, mut keys) = (Vec::new(), Vec::new());
    let mut changed: Vec<PersonChange> = Vec::with_capacity(CHANGED);
    let mut person_index = 0usize;
    let mut last_person = None;
    while let Some(row) = reader.next_record() {
        let (line, rec): (u64, EnrolleeRecord) = row.unwrap();
        if last_person != Some(rec.person_id) {
            last_person = Some(rec.person_id);
            person_index += 1;
            if person_index.is_multiple_of(every) && changed.len() < CHANGED {
                changed.push(PersonChange {
                    person_id: rec.person_id,
                    version: 2,
                    records: Ok(Vec::new()),
                });
            }
        }
        if let Some(c) = changed.last_mut().filter(|c| c.person_id == rec.person_id) {
            if let Ok(r) = c.records.as_mut() {
                r.push((line, rec.clone()));
            }
        }
        let q = &rec.qualification;
        if let Some(c) = rec.card {
            if next().is_multiple_of(sample_every) {
                cards.push(c.digest);
            }
        }
        if next().is_multiple_of(sample_every) {
            keys.push((
                InsuranceKey {
                    insurer: q.insurer_number,
                    symbol: q.symbol,
                    number: q.number,
                    branch: q.branch,
                },
                q.birth_date,
            ));
        }
    }
    common::shuffle(&mut cards, &mut next);
    common::shuffle(&mut keys, &mut next);
    let pow2 = |n: usize| if n == 0 { 0 } else { 1 << n.ilog2() };
    cards.truncate(pow2(cards.len()).min(KEYS));
    keys.truncate(pow2(keys.len()).min(KEYS));
    let mut changes = Changes::new(1);
    changes.apply(changed, 2);
    let overlay = changes.overlay(CardKey::demo().id(), Some(&snap)).unwrap();
    eprintln!(
        "overlay: {} persons, {} records",
        overlay.persons(),
        overlay.records()
    );
    (snap, overlay, cards, keys)
}

fn lookups(c: &mut Criterion) {
    let as_of: Date = "20261101".parse().unwrap();
    let rounds: usize = std::env::var("QUALCACHE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    for n in common::sizes() {
        let (snap, full, cards, keys) = load(n);
        let empty = Overlay::empty(1);
        let one = {
            let mut c = Changes::new(1);
            c.apply(
                [PersonChange {
                    person_id: u64::MAX - 1,
                    version: 2,
                    records: Ok(Vec::new()),
                }],
                2,
            );
            c.overlay(CardKey::demo().id(), Some(&snap)).unwrap()
        };
        let mut g = c.benchmark_group(format!("overlay/{}", common::label(n)));
        if rounds > 1 {
            g.warm_up_time(std::time::Duration::from_secs(1));
        }
        macro_rules! bench {
            ($what:literal, $name:expr, $keys:expr, |$k:ident| $body:expr) => {{
                let keys = &$keys;
                let mut i = 0usize;
                g.bench_function(BenchmarkId::new($what, $name), |b| {
                    b.iter(|| {
                        i = (i + 1) & (keys.len() - 1);
                        let $k = &keys[i];
                        black_box($body)
                    })
                });
            }};
        }
        // Latency: the next key depends on the previous answer, so lookups
        // cannot overlap their cache misses (a server's requests do not
        // either: each is parsed, answered and encoded on its own).
        macro_rules! latency {
            ($what:literal, $name:expr, $keys:expr, |$k:ident| $body:expr) => {{
                let keys = &$keys;
                let mut i = 0usize;
                g.bench_function(BenchmarkId::new($what, $name), |b| {
                    b.iter(|| {
                        let $k = &keys[i];
                        let r = black_box($body) as usize;
                        i = (i + 1 + (r >> 63)) & (keys.len() - 1);
                    })
                });
            }};
        }
        let none: Option<&Overlay> = None;
        for round in 1..=rounds {
            let id = |n: &str| {
                if rounds > 1 {
                    format!("{n}#{round}")
                } else {
                    n.to_string()
                }
            };
            for (name, o) in [("snapshot", none), ("overlay_100k", Some(&full))] {
                latency!("card_hit_latency", id(name), cards, |d| card(
                    &snap,
                    black_box(o),
                    d,
                    as_of
                ));
            }
            for (name, o) in [
                ("snapshot", none),
                ("overlay_1", Some(&one)),
                ("overlay_100k", Some(&full)),
            ] {
                latency!("insurance_hit_latency", id(name), keys, |k| insurance(
                    &snap,
                    black_box(o),
                    k,
                    as_of
                ));
            }
            for (name, o) in [
                ("snapshot", none),
                ("empty_overlay", Some(&empty)),
                ("overlay_100k", Some(&full)),
            ] {
                bench!("card_hit", id(name), cards, |d| card(
                    &snap,
                    black_box(o),
                    d,
                    as_of
                ));
            }
            for (name, o) in [
                ("snapshot", none),
                ("empty_overlay", Some(&empty)),
                ("overlay_1", Some(&one)),
                ("overlay_100k", Some(&full)),
            ] {
                bench!("insurance_hit", id(name), keys, |k| insurance(
                    &snap,
                    black_box(o),
                    k,
                    as_of
                ));
            }
        }
        g.finish();
    }
}

criterion_group!(benches, lookups);
criterion_main!(benches);
