//! What the simulated terminals ask: requests drawn from `probes.jsonl`
//! with a configurable mix, each with the answer it must get.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Result};
use qualcache::model::{Date, Status};
use qualcache::probe::{Probe, ProbeLookup};
use qualcache::protocol::{self, pb};

/// The kind of a request, for per-kind latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One lookup by card.
    Card,
    /// One lookup by insurance numbers.
    Insurance,
    /// A batch of lookups.
    Batch,
}

impl Kind {
    /// Its name in reports: `card`, `insurance`, `batch`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Card => "card",
            Kind::Insurance => "insurance",
            Kind::Batch => "batch",
        }
    }
}

/// The request mix.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    /// Share of single lookups that go by card (the rest by numbers).
    pub card: f64,
    /// Share of requests that are batches.
    pub batch: f64,
    /// Lookups in a batch.
    pub batch_size: usize,
    /// Share of lookups whose key exists nowhere.
    pub miss: f64,
    /// Share of lookups of lost qualifications.
    pub lost: f64,
}

/// One request ready to send, and what must come back. Planning a single
/// lookup allocates nothing: its request was encoded once, up front.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Its kind.
    pub kind: Kind,
    /// The encoded `Request`.
    pub bytes: Arc<[u8]>,
    /// The probes asked, in order (one for single requests).
    items: Items,
    /// The as-of day, `YYYYMMDD`.
    pub as_of: u32,
}

#[derive(Debug, Clone)]
enum Items {
    One(u32),
    Many(Vec<u32>),
}

impl Planned {
    /// Indices of the probes asked (see [`Workload::probe`]), in order.
    pub fn items(&self) -> &[u32] {
        match &self.items {
            Items::One(i) => std::slice::from_ref(i),
            Items::Many(v) => v,
        }
    }
}

/// Indices into the probes, by path (card, insurance) and class (hit,
/// miss, lost).
type Pools = [[Vec<u32>; 3]; 2];

/// Probes sorted into pools by path and class, overall and per as-of day
/// (the lookups of a batch share one day).
#[derive(Debug)]
pub struct Workload {
    probes: Vec<Probe>,
    /// Each probe's single-lookup request, encoded.
    encoded: Vec<Arc<[u8]>>,
    pools: Pools,
    by_day: HashMap<Date, Pools>,
    mix: Mix,
}

const HIT: usize = 0;
const MISS: usize = 1;
const LOST: usize = 2;

fn path_of(p: &Probe) -> usize {
    usize::from(matches!(p.lookup, ProbeLookup::Insurance { .. }))
}

fn class(p: &Probe) -> usize {
    match p.expect {
        Status::NotFound | Status::CardNotRegistered => MISS,
        Status::Lost | Status::LostWithNewer => LOST,
        _ => HIT,
    }
}

impl Workload {
    /// Sorts `probes` into pools. Every pool the mix draws from must have
    /// probes: a share of misses the file cannot supply is an error, not
    /// quietly turned into hits.
    pub fn new(probes: Vec<Probe>, mix: Mix) -> Result<Workload> {
        let shares = [
            ("card", mix.card),
            ("batch", mix.batch),
            ("miss", mix.miss),
            ("lost", mix.lost),
        ];
        for (name, share) in shares {
            if !(0.0..=1.0).contains(&share) {
                bail!("the {name} share is {share}; it must be from 0 to 1");
            }
        }
        if mix.miss + mix.lost > 1.0 {
            bail!("the miss and lost shares add up to more than 1");
        }
        if mix.batch_size == 0 {
            bail!("a batch needs at least one lookup");
        }
        let Ok(count) = u32::try_from(probes.len()) else {
            bail!("{} probes are more than this generator takes", probes.len());
        };
        let mut pools = Pools::default();
        let mut by_day: HashMap<Date, Pools> = HashMap::new();
        for (i, p) in (0..count).zip(&probes) {
            let path = path_of(p);
            pools[path][class(p)].push(i);
            by_day.entry(p.as_of).or_default()[path][class(p)].push(i);
        }
        for (path, name) in [(0, "card"), (1, "insurance")] {
            let wanted = (path == 0 && mix.card > 0.0) || (path == 1 && mix.card < 1.0);
            let classes = [
                (HIT, "hits", 1.0),
                (MISS, "misses", mix.miss),
                (LOST, "lost qualifications", mix.lost),
            ];
            for (class, what, share) in classes {
                if wanted && share > 0.0 && pools[path][class].is_empty() {
                    bail!("the probes file has no {name} {what}, which the mix asks for");
                }
            }
        }
        let encoded = probes
            .iter()
            .map(|p| {
                let req = pb::Request {
                    as_of: protocol::day(p.as_of),
                    kind: Some(protocol::request_kind(&p.lookup)),
                };
                Arc::from(prost::Message::encode_to_vec(&req))
            })
            .collect();
        Ok(Workload {
            probes,
            encoded,
            pools,
            by_day,
            mix,
        })
    }

    /// A path and class as the mix draws them.
    fn draw_class(&self, rng: &mut Rng) -> (usize, usize) {
        let path = usize::from(rng.unit() >= self.mix.card);
        let r = rng.unit();
        let class = if r < self.mix.miss {
            MISS
        } else if r < self.mix.miss + self.mix.lost {
            LOST
        } else {
            HIT
        };
        (path, class)
    }

    /// Probe `i` of the file (an index from [`Planned::items`]).
    pub fn probe(&self, i: u32) -> &Probe {
        &self.probes[i as usize]
    }

    fn draw(&self, rng: &mut Rng) -> u32 {
        let (path, class) = self.draw_class(rng);
        // `new` checked that every pool the mix can draw is non-empty.
        let pool = &self.pools[path][class];
        pool[rng.below(pool.len())]
    }

    /// A probe of `day` drawn by the mix. Where the day has no probe of
    /// the drawn path and class, the same class by the other path, then a
    /// hit, then anything of that day stands in (the day has at least the
    /// batch's first probe).
    fn draw_on(&self, day: &Pools, rng: &mut Rng) -> u32 {
        let (path, class) = self.draw_class(rng);
        let candidates = [
            (path, class),
            (1 - path, class),
            (path, HIT),
            (1 - path, HIT),
            (path, MISS),
            (1 - path, MISS),
            (path, LOST),
            (1 - path, LOST),
        ];
        let Some(pool) = candidates
            .iter()
            .map(|&(p, c)| &day[p][c])
            .find(|pool| !pool.is_empty())
        else {
            return self.draw(rng);
        };
        pool[rng.below(pool.len())]
    }

    /// The next request of a terminal.
    pub fn next(&self, rng: &mut Rng) -> Planned {
        let first = self.draw(rng);
        let day = self.probe(first).as_of;
        let as_of = protocol::day(day);
        if rng.unit() >= self.mix.batch {
            return Planned {
                kind: match self.probe(first).lookup {
                    ProbeLookup::Card { .. } => Kind::Card,
                    ProbeLookup::Insurance { .. } => Kind::Insurance,
                },
                bytes: self.encoded[first as usize].clone(),
                items: Items::One(first),
                as_of,
            };
        }
        // A batch is made as of one day: the first probe's.
        let mut items = Vec::with_capacity(self.mix.batch_size);
        items.push(first);
        match self.by_day.get(&day) {
            Some(pools) => {
                while items.len() < self.mix.batch_size {
                    items.push(self.draw_on(pools, rng));
                }
            }
            None => items.resize(self.mix.batch_size, first),
        }
        let req = pb::Request {
            as_of,
            kind: Some(pb::request::Kind::Batch(pb::BatchLookup {
                items: items
                    .iter()
                    .map(|&i| protocol::batch_item(&self.probe(i).lookup))
                    .collect(),
            })),
        };
        Planned {
            kind: Kind::Batch,
            bytes: Arc::from(prost::Message::encode_to_vec(&req)),
            items: Items::Many(items),
            as_of,
        }
    }
}

/// SplitMix64, seeded per scheduler so a run is reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Generator number `i` of a run seeded `seed`.
    pub fn new(seed: u64, i: u64) -> Rng {
        Rng(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Exponentially distributed with mean `1 / rate` (Poisson arrivals).
    pub fn exp(&mut self, rate: f64) -> f64 {
        -(1.0 - self.unit()).ln() / rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(serial: &str, day: u32, expect: Status) -> Probe {
        Probe {
            case: "test".into(),
            lookup: ProbeLookup::Card {
                serial: serial.into(),
            },
            as_of: Date::from_ymd(2026, 11, day).unwrap(),
            expect,
            expect_key: None,
            expect_newer_key: None,
            expect_matches: None,
        }
    }

    fn mix(batch: f64, miss: f64, lost: f64) -> Mix {
        Mix {
            card: 1.0,
            batch,
            batch_size: 50,
            miss,
            lost,
        }
    }

    #[test]
    fn a_batch_is_of_one_day_even_when_that_day_has_one_probe() {
        // Day 2 has a single hit; day 1 has many probes of every class.
        let mut probes = vec![probe("LONE", 2, Status::Valid)];
        for i in 0..30 {
            probes.push(probe(&format!("H{i}"), 1, Status::Valid));
            probes.push(probe(&format!("M{i}"), 1, Status::CardNotRegistered));
            probes.push(probe(&format!("L{i}"), 1, Status::Lost));
        }
        let w = Workload::new(probes, mix(1.0, 0.2, 0.2)).unwrap();
        let mut rng = Rng::new(7, 0);
        let mut lone_batches = 0;
        let mut classes = [0usize; 3];
        for _ in 0..400 {
            let p = w.next(&mut rng);
            assert_eq!(p.kind, Kind::Batch);
            assert_eq!(p.items().len(), 50);
            let serials: Vec<&str> = p
                .items()
                .iter()
                .map(|&i| match &w.probe(i).lookup {
                    ProbeLookup::Card { serial } => serial.as_str(),
                    ProbeLookup::Insurance { .. } => unreachable!("card-only mix"),
                })
                .collect();
            if serials[0] == "LONE" {
                lone_batches += 1;
                assert!(serials.iter().all(|s| *s == "LONE"), "{serials:?}");
            } else {
                assert!(
                    !serials.contains(&"LONE"),
                    "a day-1 batch took the day-2 probe"
                );
                for &i in p.items() {
                    classes[match w.probe(i).expect {
                        Status::CardNotRegistered => MISS,
                        Status::Lost => LOST,
                        _ => HIT,
                    }] += 1;
                }
            }
        }
        assert!(lone_batches > 0, "the day-2 probe was never first");
        // Within day 1 the mix holds: about 60 % hits, 20 % misses, 20 % lost.
        let total: usize = classes.iter().sum();
        for (class, want) in [(HIT, 0.6), (MISS, 0.2), (LOST, 0.2)] {
            let got = classes[class] as f64 / total as f64;
            assert!(
                (got - want).abs() < 0.03,
                "class {class}: {got:.3}, want {want}"
            );
        }
    }

    #[test]
    fn a_share_the_probes_cannot_supply_is_an_error() {
        let probes = vec![probe("A", 1, Status::Valid), probe("B", 1, Status::Lost)];
        let err = Workload::new(probes.clone(), mix(0.0, 0.05, 0.0)).unwrap_err();
        assert!(err.to_string().contains("no card misses"), "{err}");
        assert!(Workload::new(probes.clone(), mix(0.0, 0.0, 0.5)).is_ok());
        let err = Workload::new(probes.clone(), mix(0.0, 0.6, 0.6)).unwrap_err();
        assert!(err.to_string().contains("more than 1"), "{err}");
        let err = Workload::new(probes, mix(f64::NAN, 0.0, 0.0)).unwrap_err();
        assert!(err.to_string().contains("batch share"), "{err}");
    }

    #[test]
    fn single_lookups_follow_the_mix() {
        let mut probes = Vec::new();
        for i in 0..20 {
            probes.push(probe(&format!("H{i}"), 1 + i % 5, Status::Valid));
            probes.push(probe(
                &format!("M{i}"),
                1 + i % 7,
                Status::CardNotRegistered,
            ));
        }
        let w = Workload::new(probes, mix(0.0, 0.25, 0.0)).unwrap();
        let mut rng = Rng::new(1, 3);
        let misses = (0..4000)
            .map(|_| w.next(&mut rng))
            .inspect(|p| assert_eq!(p.kind, Kind::Card))
            .filter(|p| w.probe(p.items()[0]).expect == Status::CardNotRegistered)
            .count();
        assert!((900..1100).contains(&misses), "{misses} misses of 4000");
    }
}
