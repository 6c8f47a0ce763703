#!/usr/bin/env bash
# Runs the same load against qualcached, Redis and the plain-quinn echo,
# back to back at the same terminals and rate, prints the ratios and plots
# the three on the same axes (SVG: latency by percentile, answers/s and
# p99 second by second).
#
#   loadtest/compare.sh [TERMINALS] [RATE] [SECONDS]
#   PLOT=FILE.svg (default compare.svg) names the plot.
#
# Needs: a running qualcached (README quick start) whose certificate
# folder holds at least TERMINALS terminal certificates, and Redis on
# 127.0.0.1:6379. Starts and stops the echo server itself.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-1000}
RATE=${2:-5000}
SECS=${3:-15}
CERTS=${CERTS:-data/demo-daemon/certs}
SNAP=${SNAP:-data/demo-daemon/snapshots}
PROBES=${PROBES:-$SNAP/.synthetic/probes.jsonl}
PLOT=${PLOT:-compare.svg}
OUT=$(mktemp -d)
ECHO=
trap '[ -n "$ECHO" ] && kill "$ECHO" 2>/dev/null; rm -rf "$OUT"' EXIT
LT="cargo run -q --release -p qualcache-loadtest --"

$LT redis-load --snapshot "$SNAP" --probes "$PROBES"
$LT echo-server --certs "$CERTS" --listen 127.0.0.1:4434 &
ECHO=$!
sleep 2
if ! kill -0 "$ECHO" 2>/dev/null; then
  echo "compare.sh: the echo server did not start (is 127.0.0.1:4434 in use?)" >&2
  exit 1
fi

for target in qualcache://127.0.0.1:4433 redis://127.0.0.1:6379 echo://127.0.0.1:4434; do
  name=${target%%:*}
  echo "== $name"
  $LT run --target "$target" --certs "$CERTS" --probes "$PROBES" --terminals "$T" \
    --profile constant --rate "$RATE" --seconds "$SECS" --quiet --json "$OUT/$name.json" || rc=$?
  # Exit status 3 is a missed SLO, which is a result; anything else is a
  # failed run, and there is nothing to compare.
  if [ "${rc:-0}" -ne 0 ] && [ "${rc:-0}" -ne 3 ]; then
    echo "compare.sh: the run against $target failed (exit status $rc)" >&2
    exit 1
  fi
  unset rc
done

$LT plot --out "$PLOT" \
  --title "$T terminals, $RATE requests/s offered, $SECS s each ($(nproc) cores, $(date +%F))" \
  qualcached="$OUT/qualcache.json" redis="$OUT/redis.json" echo="$OUT/echo.json"

python3 - "$OUT" <<'PY'
import json, sys, os
d = sys.argv[1]
r = {n: json.load(open(os.path.join(d, n + ".json"))) for n in ("qualcache", "redis", "echo")}
print(f"{'target':<10} {'answers/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p999 ms':>8} {'errors':>7} {'mismatch':>8}")
for n, x in r.items():
    l = x["latency"]
    print(f"{n:<10} {x['throughput_rps']:>10.0f} {l['p50_ms']:>8.3f} {l['p99_ms']:>8.3f} {l['p999_ms']:>8.3f} {sum(x['errors'].values()):>7} {x['mismatches']:>8}")
def ratio(metric, peer):
    ours, theirs = r["qualcache"]["latency"][metric], r[peer]["latency"][metric]
    return f"{ours / theirs:.2f}" if theirs > 0 else "n/a (no answers)"
for metric in ("p50_ms", "p99_ms"):
    for peer in ("redis", "echo"):
        print(f"{metric[:-3]} qualcached / {peer}: {ratio(metric, peer)}")
PY
