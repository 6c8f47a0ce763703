//! Snapshot build throughput (records/s from CSV) and open + checksum +
//! validation throughput (GiB/s), at 1 M and 10 M records.
//!
//! The build is measured against a baseline in the same run: the build's
//! own CSV reading and parsing threads alone (parse every row, fold
//! nothing), which bounds what any builder on this input can reach. `QUALCACHE_BENCH_SIZES=1000000` limits the sizes.

#[path = "common.rs"]
mod common;

use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qualcache::build::PARSE_THREADS;
use qualcache::snapshot::Snapshot;
use qualcache::store::chunks::read_parallel;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn snapshot(c: &mut Criterion) {
    for n in common::sizes() {
        let dir = common::data(n);
        let mut g = c.benchmark_group(format!("snapshot/{}", common::label(n)));
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
            // The same reading and parsing threads as the build, folding
            // nothing.
            b.iter(|| {
                let mut rows = 0u64;
                read_parallel(
                    &dir.join("enrollees.csv"),
                    PARSE_THREADS,
                    &qualcache::progress::Progress::none(),
                    |batch| {
                        rows += batch.iter().filter(|r| r.is_ok()).count() as u64;
                        ControlFlow::Continue(())
                    },
                )
                .unwrap();
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
