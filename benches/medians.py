#!/usr/bin/env python3
"""Print the median of every criterion benchmark under target/criterion,
with throughput where the benchmark declared one. Used for BENCHMARKS.md.

    python3 benches/medians.py [target/criterion]
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
for est in sorted(root.glob("**/new/estimates.json")):
    bench = json.loads((est.parent / "benchmark.json").read_text())
    median_ns = json.loads(est.read_text())["median"]["point_estimate"]
    line = f"{bench['full_id']:<50} median {median_ns:>14.1f} ns"
    tp = bench.get("throughput") or {}
    if "Elements" in tp:
        line += f"  {tp['Elements'] / median_ns * 1e9:>14,.0f} elements/s"
    if "Bytes" in tp:
        line += f"  {tp['Bytes'] / median_ns * 1e9 / 2**30:>8.2f} GiB/s"
    print(line)
