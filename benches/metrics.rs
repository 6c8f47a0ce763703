//! The cost a request pays for being counted: `RequestMetrics::record`
//! (three relaxed adds on the thread's own shard) with the two clock
//! reads around a request, beside a plain atomic add on one shared
//! counter and a bare clock read, in the same run. Compare with the
//! server CPU per request of the load test (BENCHMARKS.md, tens of
//! microseconds).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use qualcache::metrics::{RequestKind, RequestMetrics};

fn record(c: &mut Criterion) {
    let m = RequestMetrics::new();
    let mut g = c.benchmark_group("metrics");
    g.bench_function("record", |b| {
        b.iter(|| {
            m.record(
                black_box(RequestKind::Card),
                black_box(1),
                black_box(Duration::from_micros(80)),
            )
        })
    });
    g.bench_function("clock_and_record", |b| {
        b.iter(|| {
            let started = Instant::now();
            m.record(black_box(RequestKind::Insurance), 1, started.elapsed());
        })
    });
    let shared = AtomicU64::new(0);
    g.bench_function("baseline_one_atomic_add", |b| {
        b.iter(|| shared.fetch_add(black_box(1), Ordering::Relaxed))
    });
    g.bench_function("baseline_clock_read", |b| b.iter(Instant::now));
    g.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
