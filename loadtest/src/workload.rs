//! What the simulated terminals ask: requests drawn from `probes.jsonl`
//! with a configurable mix, each with the answer it must get.

use anyhow::{bail, Result};
use qualcache::model::Status;
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

/// One request ready to send, and what must come back.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Its kind.
    pub kind: Kind,
    /// The encoded `Request`.
    pub bytes: Vec<u8>,
    /// Expected status of each lookup (one for single requests).
    pub expect: Vec<Status>,
    /// The lookups themselves (the Redis peer sends them as keys).
    pub lookups: Vec<ProbeLookup>,
    /// The as-of day, `YYYYMMDD`.
    pub as_of: u32,
}

/// Probes sorted into pools by path and class.
#[derive(Debug)]
pub struct Workload {
    pools: [[Vec<Probe>; 3]; 2],
    mix: Mix,
}

const HIT: usize = 0;
const MISS: usize = 1;
const LOST: usize = 2;

fn class(p: &Probe) -> usize {
    match p.expect {
        Status::NotFound | Status::CardNotRegistered => MISS,
        Status::Lost | Status::LostWithNewer => LOST,
        _ => HIT,
    }
}

impl Workload {
    /// Sorts `probes` into pools; every pool the mix draws from must have
    /// probes.
    pub fn new(probes: Vec<Probe>, mix: Mix) -> Result<Workload> {
        let mut pools: [[Vec<Probe>; 3]; 2] = Default::default();
        for p in probes {
            let path = usize::from(matches!(p.lookup, ProbeLookup::Insurance { .. }));
            pools[path][class(&p)].push(p);
        }
        for (path, name) in [(0, "card"), (1, "insurance")] {
            let wanted = (path == 0 && mix.card > 0.0) || (path == 1 && mix.card < 1.0);
            if wanted && pools[path][HIT].is_empty() {
                bail!("the probes file has no {name} hits");
            }
        }
        Ok(Workload { pools, mix })
    }

    fn draw(&self, rng: &mut Rng) -> &Probe {
        let path = usize::from(rng.unit() >= self.mix.card);
        let r = rng.unit();
        let mut class = if r < self.mix.miss {
            MISS
        } else if r < self.mix.miss + self.mix.lost {
            LOST
        } else {
            HIT
        };
        if self.pools[path][class].is_empty() {
            class = HIT;
        }
        let pool = &self.pools[path][class];
        &pool[rng.below(pool.len())]
    }

    /// The next request of a terminal.
    pub fn next(&self, rng: &mut Rng) -> Planned {
        if rng.unit() < self.mix.batch {
            // A batch is made as of one day: take the first probe's.
            let first = self.draw(rng).clone();
            let mut probes = vec![first];
            while probes.len() < self.mix.batch_size {
                let p = self.draw(rng);
                if p.as_of == probes[0].as_of {
                    probes.push(p.clone());
                }
            }
            let as_of = protocol::day(probes[0].as_of);
            let req = pb::Request {
                as_of,
                kind: Some(pb::request::Kind::Batch(pb::BatchLookup {
                    items: probes
                        .iter()
                        .map(|p| protocol::batch_item(&p.lookup))
                        .collect(),
                })),
            };
            return Planned {
                kind: Kind::Batch,
                bytes: prost::Message::encode_to_vec(&req),
                expect: probes.iter().map(|p| p.expect).collect(),
                lookups: probes.into_iter().map(|p| p.lookup).collect(),
                as_of,
            };
        }
        let p = self.draw(rng);
        let as_of = protocol::day(p.as_of);
        let req = pb::Request {
            as_of,
            kind: Some(protocol::request_kind(&p.lookup)),
        };
        Planned {
            kind: match p.lookup {
                ProbeLookup::Card { .. } => Kind::Card,
                ProbeLookup::Insurance { .. } => Kind::Insurance,
            },
            bytes: prost::Message::encode_to_vec(&req),
            expect: vec![p.expect],
            lookups: vec![p.lookup.clone()],
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
