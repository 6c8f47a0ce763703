//! Bench data: generated once per size under `target/bench-data/<n>` and
//! reused by later runs (delete the folder to regenerate).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use qualcache::build::{build_from_csv, BuildOptions, BuildSummary};
use qualcache::gen::{generate, GenOptions};
use qualcache::model::CardKey;

/// Record counts to run at: `$QUALCACHE_BENCH_SIZES` (comma-separated),
/// else 1 M and 10 M.
pub fn sizes() -> Vec<u64> {
    std::env::var("QUALCACHE_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 10_000_000])
}

/// A record count as a benchmark name: `10M`, `250k`, `1500`.
pub fn label(records: u64) -> String {
    if records >= 1_000_000 && records.is_multiple_of(1_000_000) {
        format!("{}M", records / 1_000_000)
    } else if records >= 1_000 && records.is_multiple_of(1_000) {
        format!("{}k", records / 1_000)
    } else {
        records.to_string()
    }
}

/// The folder for `records` records, with `enrollees.csv`, `probes.jsonl`
/// and `snap/` (one snapshot) inside.
pub fn data(records: u64) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(Path::new("target"))
        .join("bench-data")
        .join(records.to_string());
    if !dir.join("enrollees.csv").exists() {
        eprintln!("generating {records} records into {}", dir.display());
        generate(&GenOptions {
            progress: Default::default(),
            records,
            seed: 42,
            out: dir.clone(),
            probes: 20_000,
            as_of: "20261101".parse().unwrap(),
            card_key: CardKey::demo(),
        })
        .unwrap();
    }
    let usable = qualcache::snapshot::newest_generation(&dir.join("snap"))
        .unwrap()
        .is_some_and(|_| qualcache::snapshot::Snapshot::open(&snapshot_file(&dir)).is_ok());
    if !usable {
        // None yet, or one written by an older schema: build afresh.
        let _ = std::fs::remove_dir_all(dir.join("snap"));
        build(&dir);
    }
    dir
}

/// Builds a snapshot of `dir/enrollees.csv` into `dir/snap`.
pub fn build(dir: &Path) -> BuildSummary {
    let opts = BuildOptions {
        progress: Default::default(),
        skip_invalid: false,
        card_key_id: CardKey::demo().id(),
    };
    build_from_csv(&dir.join("enrollees.csv"), &dir.join("snap"), &opts, |_| {}).unwrap()
}

/// The newest snapshot file in `dir/snap`.
pub fn snapshot_file(dir: &Path) -> PathBuf {
    let snap = dir.join("snap");
    let gen = qualcache::snapshot::newest_generation(&snap)
        .unwrap()
        .unwrap();
    qualcache::snapshot::write::snapshot_path(&snap, gen)
}

/// A fixed-seed xorshift generator: the same keys in the same order on
/// every run.
pub fn xorshift() -> impl FnMut() -> u64 {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}

/// Fisher-Yates with `next`.
pub fn shuffle<T>(v: &mut [T], next: &mut impl FnMut() -> u64) {
    for i in (1..v.len()).rev() {
        v.swap(i, (next() % (i as u64 + 1)) as usize);
    }
}
