#!/usr/bin/env python3
"""Print the median of every criterion benchmark under target/criterion,
with throughput where the benchmark declared one. Used for BENCHMARKS.md.

    python3 benches/medians.py [target/criterion]

Benchmarks run in rounds (ids ending in `#<round>`, e.g.
QUALCACHE_BENCH_ROUNDS in benches/overlay.rs) also get, per group and
variant, the median over rounds of its ratio to the `snapshot` variant
of the same round, with the lowest and highest.
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
rounds = {}  # (group, variant) -> {round: median}
for est in sorted(root.glob("**/new/estimates.json")):
    bench = json.loads((est.parent / "benchmark.json").read_text())
    median_ns = json.loads(est.read_text())["median"]["point_estimate"]
    group, _, variant = bench["full_id"].rpartition("/")
    if "#" in variant:
        name, _, r = variant.partition("#")
        rounds.setdefault((group, name), {})[r] = median_ns
    line = f"{bench['full_id']:<50} median {median_ns:>14.1f} ns"
    tp = bench.get("throughput") or {}
    if "Elements" in tp:
        line += f"  {tp['Elements'] / median_ns * 1e9:>14,.0f} elements/s"
    if "Bytes" in tp:
        line += f"  {tp['Bytes'] / median_ns * 1e9 / 2**30:>8.2f} GiB/s"
    print(line)

for (group, name), by_round in sorted(rounds.items()):
    base = rounds.get((group, "snapshot"), {})
    ratios = sorted(by_round[r] / base[r] for r in by_round if r in base)
    if name == "snapshot" or not ratios:
        continue
    mid = ratios[len(ratios) // 2] if len(ratios) % 2 else (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
    print(f"{group}/{name}: median {mid:.3f}x the snapshot over {len(ratios)} rounds ({ratios[0]:.3f}-{ratios[-1]:.3f})")
