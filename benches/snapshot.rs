//! Snapshot build throughput (records/s from CSV) and open + checksum +
//! validation throughput (GiB/s), at 1 M and 10 M records.
//!
//! The build is measured against a baseline in the same run: the CSV reader
//! alone (parse every row, build nothing), which bounds what any builder on
//! this input can reach. `QUALCACHE_BENCH_SIZES=1000000` limits the sizes.

#[path = "common.rs"]
mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qualcache::snapshot::Snapshot;
use qualcache::store::csv::CsvReader;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn sizes() -> Vec<u64> {
    std::env::var("QUALCACHE_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 10_000_000])
}

fn snapshot(c: &mut Criterion) {
    for n in sizes() {
        let dir = common::data(n);
        let mut g = c.benchmark_group(format!("snapshot/{}M", n / 1_000_000));
        g.sample_size(10);
        g.throughput(Throughput::Elements(n));
        g.bench_function("build_from_csv", |b| {
            b.iter(|| {
                let summary = common::build(&dir);
                // Keep only the newest two snapshots on disk.
                let _ = std::fs::remove_file(
                    summary
                        .path
                        .with_file_name(format!("{}.qcs", summary.generation - 1)),
                );
                black_box(summary.records)
            })
        });
        g.bench_function("csv_parse_only", |b| {
            b.iter(|| {
                let mut r = CsvReader::open(&dir.join("enrollees.csv")).unwrap();
                let mut rows = 0u64;
                while let Some(row) = r.next_record() {
                    rows += u64::from(row.is_ok());
                }
                black_box(rows)
            })
        });
        let file = common::snapshot_file(&dir);
        let len = std::fs::metadata(&file).unwrap().len();
        g.throughput(Throughput::Bytes(len));
        g.bench_function("open_checksum_validate", |b| {
            b.iter(|| black_box(Snapshot::open(&file).unwrap().header().records))
        });
        g.bench_function("read_file_baseline", |b| {
            // Baseline: read the same bytes into memory with no checking.
            b.iter(|| black_box(std::fs::read(&file).unwrap().len()))
        });
        g.finish();
    }
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
