//! Lookup latency: the mapped snapshot against a `std::collections::HashMap`
//! of the same records, in the same run, at 1 M and 10 M records.
//!
//! Keys are drawn at random from the data set (hits) or altered so that
//! they exist nowhere (misses), and visited in random order, so most
//! lookups miss the CPU caches as they would in production. The plain
//! benchmarks let consecutive lookups overlap (throughput per lookup, the
//! criterion convention); the `_latency` ones chain each lookup to the
//! previous answer, so they measure one lookup's full latency.
//!
//! `*_private_copy` read the same snapshot from a private heap copy (what
//! the daemon serves when it cannot hold a read lease on the file).
//!
//! `QUALCACHE_BENCH_SIZES=1000000` limits the sizes.

#[path = "common.rs"]
mod common;

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use qualcache::model::{CardDigest, Date, EnrolleeRecord, InsuranceKey, Qualification};
use qualcache::snapshot::Snapshot;
use qualcache::store::csv::CsvReader;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keys per benchmark: enough that their records do not fit in the CPU
/// caches (32 MiB L3 here), so lookups pay real memory latency.
const KEYS: usize = 1 << 20;

/// The baseline: owned records in a Vec (a person's rows adjacent, as in
/// the snapshot), found through std HashMaps.
struct Baseline {
    records: Vec<Qualification>,
    /// A card's person: the range of their rows in `records`.
    by_card: HashMap<CardDigest, std::ops::Range<u32>>,
    by_key: HashMap<
        (
            u32,
            Option<qualcache::model::KeyText>,
            qualcache::model::KeyText,
            Option<qualcache::model::Branch>,
        ),
        u32,
    >,
}

impl Baseline {
    fn card(&self, d: &CardDigest, as_of: Date) -> Option<&Qualification> {
        let rows = self.by_card.get(d)?;
        self.records[rows.start as usize..rows.end as usize]
            .iter()
            .filter(|q| q.acquired_date <= as_of)
            .max_by_key(|q| (q.holds_on(as_of), q.acquired_date))
    }

    fn insurance(&self, k: &InsuranceKey, birth: Date, as_of: Date) -> Option<&Qualification> {
        let r = *self
            .by_key
            .get(&(k.insurer.to_raw(), k.symbol, k.number, k.branch))?;
        let q = &self.records[r as usize];
        (q.birth_date == birth && q.acquired_date <= as_of).then_some(q)
    }
}

struct Sample {
    cards: Vec<CardDigest>,
    card_misses: Vec<CardDigest>,
    keys: Vec<(InsuranceKey, Date)>,
    key_misses: Vec<(InsuranceKey, Date)>,
}

fn load(records: u64) -> (Snapshot, Snapshot, Baseline, Sample) {
    let dir = common::data(records);
    let snap = Snapshot::open(&common::snapshot_file(&dir)).unwrap();
    // What the daemon serves when it holds no lease on the file.
    let private = Snapshot::read(&common::snapshot_file(&dir)).unwrap();
    let mut reader = CsvReader::open(&dir.join("enrollees.csv")).unwrap();
    let mut base = Baseline {
        records: Vec::with_capacity(records as usize),
        by_card: HashMap::new(),
        by_key: HashMap::new(),
    };
    let mut next = common::xorshift();
    let mut cards = Vec::new();
    let mut keys = Vec::new();
    let every = (records / KEYS as u64).max(1);
    while let Some(row) = reader.next_record() {
        let (
            _,
            EnrolleeRecord {
                card,
                qualification: q,
                ..
            },
        ) = row.unwrap();
        let i = base.records.len() as u32;
        let key = InsuranceKey {
            insurer: q.insurer_number,
            symbol: q.symbol,
            number: q.number,
            branch: q.branch,
        };
        base.by_key.insert(
            (key.insurer.to_raw(), key.symbol, key.number, key.branch),
            i,
        );
        if let Some(c) = card {
            // The CSV holds a person's rows adjacent (the build checks it).
            base.by_card.entry(c.digest).or_insert(i..i).end = i + 1;
            if next().is_multiple_of(every) {
                cards.push(c.digest);
            }
        }
        if next().is_multiple_of(every) {
            keys.push((key, q.birth_date));
        }
        base.records.push(q);
    }
    common::shuffle(&mut cards, &mut next);
    common::shuffle(&mut keys, &mut next);
    // A power of two, so the benchmark loop can wrap with a mask.
    let pow2 = |n: usize| if n == 0 { 0 } else { 1 << n.ilog2() };
    cards.truncate(pow2(cards.len()).min(KEYS));
    keys.truncate(pow2(keys.len()).min(KEYS));
    let card_misses = cards
        .iter()
        .map(|d| {
            let mut m = *d;
            m.0[15] ^= 0x5a;
            m.0[3] ^= 0xa5;
            m
        })
        .collect();
    let key_misses = keys
        .iter()
        .map(|(k, b)| {
            let mut k = *k;
            k.number = format!("9{}", k.number).parse().unwrap();
            (k, *b)
        })
        .collect();
    (
        snap,
        private,
        base,
        Sample {
            cards,
            card_misses,
            keys,
            key_misses,
        },
    )
}

fn lookups(c: &mut Criterion) {
    let as_of: Date = "20261101".parse().unwrap();
    for n in common::sizes() {
        let (snap, private, base, s) = load(n);
        let mut g = c.benchmark_group(format!("lookup/{}", common::label(n)));
        macro_rules! bench {
            ($name:literal, $keys:expr, |$k:ident| $body:expr) => {{
                let keys = &$keys;
                let mut i = 0usize;
                g.bench_function(BenchmarkId::from_parameter($name), |b| {
                    b.iter(|| {
                        i = (i + 1) & (keys.len() - 1);
                        let $k = &keys[i];
                        black_box($body)
                    })
                });
            }};
        }
        // Latency: the next key depends on the previous answer, so lookups
        // cannot overlap their cache misses; this is one lookup's latency.
        macro_rules! latency {
            ($name:literal, $keys:expr, |$k:ident| $body:expr) => {{
                let keys = &$keys;
                let mut i = 0usize;
                g.bench_function(BenchmarkId::from_parameter($name), |b| {
                    b.iter(|| {
                        let $k = &keys[i];
                        let r = black_box($body) as usize;
                        i = (i + 1 + (r & 0x1000)) & (keys.len() - 1);
                    })
                });
            }};
        }
        latency!("card_hit_latency/qualcache", s.cards, |d| snap
            .lookup_card(d, as_of)
            .status()
            .code());
        latency!("card_hit_latency/hashmap", s.cards, |d| base
            .card(d, as_of)
            .map_or(0, |q| q.sex as u8));
        latency!("insurance_hit_latency/qualcache", s.keys, |k| snap
            .lookup_insurance(&k.0, k.1, as_of)
            .status()
            .code());
        latency!("insurance_hit_latency/hashmap", s.keys, |k| base
            .insurance(&k.0, k.1, as_of)
            .map_or(0, |q| q.sex as u8));
        bench!("card_hit/qualcache", s.cards, |d| snap
            .lookup_card(d, as_of)
            .status());
        bench!("card_hit/qualcache_private_copy", s.cards, |d| private
            .lookup_card(d, as_of)
            .status());
        bench!("card_hit/hashmap", s.cards, |d| base
            .card(d, as_of)
            .map(|q| q.acquired_date));
        bench!("card_miss/qualcache", s.card_misses, |d| snap
            .lookup_card(d, as_of)
            .status());
        bench!("card_miss/hashmap", s.card_misses, |d| base
            .card(d, as_of)
            .map(|q| q.acquired_date));
        bench!("insurance_hit/qualcache", s.keys, |k| snap
            .lookup_insurance(&k.0, k.1, as_of)
            .status());
        bench!("insurance_hit/qualcache_private_copy", s.keys, |k| private
            .lookup_insurance(&k.0, k.1, as_of)
            .status());
        bench!("insurance_hit/hashmap", s.keys, |k| base
            .insurance(&k.0, k.1, as_of)
            .map(|q| q.acquired_date));
        bench!("insurance_miss/qualcache", s.key_misses, |k| snap
            .lookup_insurance(&k.0, k.1, as_of)
            .status());
        bench!("insurance_miss/hashmap", s.key_misses, |k| base
            .insurance(&k.0, k.1, as_of)
            .map(|q| q.acquired_date));
        g.finish();
    }
}

criterion_group!(benches, lookups);
criterion_main!(benches);
