#!/usr/bin/env bash
# Soak: qualcached under half its maximum rate for a long time, with a
# new export of its CSV source renamed into place and a SIGHUP every
# minute (each a full rebuild, swap and release of the old mapping), its
# resident memory sampled every 10 s. Ends with a verdict:
#   - no errors and no mismatches in the load generator's report;
#   - every reload applied (one new generation per minute);
#   - the RSS slope over the second half at most SLOPE_MIB_PER_HOUR.
# Exit status 0 when all hold, 1 otherwise.
#
#   loadtest/soak.sh [MINUTES] [RATE]
#
# MINUTES defaults to 30. RATE (requests/s) defaults to half the maximum
# that `qualcache-loadtest run --find-max` finds against the same daemon
# first. Environment: RECORDS (default 1000000), TERMINALS (200),
# SLOPE_MIB_PER_HOUR (20), PORT (4453), ADMIN_PORT (9474), KEEP=1 keeps
# the working folder. Not part of CI. Needs nothing but this repository.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
RATE=${2:-}
RECORDS=${RECORDS:-1000000}
TERMINALS=${TERMINALS:-200}
SLOPE=${SLOPE_MIB_PER_HOUR:-20}
PORT=${PORT:-4453}
ADMIN_PORT=${ADMIN_PORT:-9474}
W=$(mktemp -d)
DAEMON=
SAMPLER=
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
  [ -n "$DAEMON" ] && kill -TERM "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then echo "soak: kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT

cargo build -q --release --workspace
BIN=target/release
. loadtest/daemon.sh
metric() { # the value of one metric series, from the admin listener
  curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v s="$1" '$1 == s { print $2 }'
}

echo "soak: $RECORDS records, $TERMINALS terminals, $MINUTES min, working in $W" >&2
$BIN/qualcache gen --records "$RECORDS" --seed 7 --out "$W/data" > /dev/null
$BIN/qualcache certs --out "$W/certs" --terminals "$TERMINALS" > /dev/null
write_config ""
start_daemon qualcached.log
LT=(target/release/qualcache-loadtest run --target "qualcache://127.0.0.1:$PORT" --certs "$W/certs"
    --probes "$W/data/probes.jsonl" --terminals "$TERMINALS" --quiet)
if [ -z "$RATE" ]; then
  "${LT[@]}" --find-max --rate 2000 --seconds 10 --tries 2 --json "$W/max.json" > "$W/max.txt" || true
  RATE=$(python3 -c "import json; print(int(json.load(open('$W/max.json'))['profile']['rate'] / 2))")
  echo "soak: maximum rate held $((RATE * 2))/s; soaking at $RATE/s" >&2
fi

# RSS every 10 s: seconds since start, RSS in KiB.
START=$(date +%s)
( while kill -0 "$DAEMON" 2>/dev/null; do
    echo "$(( $(date +%s) - START )) $(awk '/^VmRSS:/ { print $2 }' /proc/$DAEMON/status)"
    sleep 10
  done > "$W/rss.txt" ) &
SAMPLER=$!

"${LT[@]}" --profile constant --rate "$RATE" --seconds $((MINUTES * 60)) --slo-p99-ms 1000 \
  --json "$W/run.json" > "$W/run.txt" &
LOAD=$!
GEN0=$(metric qualcache_snapshot_generation)
EXPECTED=0
for m in $(seq "$MINUTES"); do
  sleep 60
  [ "$m" -eq "$MINUTES" ] && break
  # A new export of the same data (so the probes still hold), written
  # under a temporary name and renamed into place, as exporters should.
  cp "$W/data/enrollees.csv" "$W/data/enrollees.csv.new"
  mv "$W/data/enrollees.csv.new" "$W/data/enrollees.csv"
  kill -HUP "$DAEMON"
  EXPECTED=$((EXPECTED + 1))
done
wait "$LOAD" || true
sleep 20 # the last rebuild and swap
GEN1=$(metric qualcache_snapshot_generation)
kill "$SAMPLER" 2>/dev/null; SAMPLER=

python3 - "$W" "$RATE" "$SLOPE" "$EXPECTED" "$GEN0" "$GEN1" <<'PY'
import json, sys
w, rate, slope_bound, expected, gen0, gen1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(float(sys.argv[5])), int(float(sys.argv[6]))
run = json.load(open(f"{w}/run.json"))
rss = [tuple(map(float, l.split())) for l in open(f"{w}/rss.txt") if len(l.split()) == 2]
half = rss[len(rss) // 2:]
n = len(half)
mx = sum(t for t, _ in half) / n
my = sum(k for _, k in half) / n
var = sum((t - mx) ** 2 for t, _ in half) or 1.0
slope_kib_s = sum((t - mx) * (k - my) for t, k in half) / var
slope = slope_kib_s * 3600 / 1024
errors = sum(run["errors"].values())
applied = gen1 - gen0
lat = run["latency"]
print(f"rate {rate:.0f}/s for {run['seconds']:.0f} s: sent {run['sent']}, answered {run['answered']}, "
      f"errors {errors} {dict(run['errors'])}, mismatches {run['mismatches']}")
print(f"latency p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, p999 {lat['p999_ms']:.3f} ms")
print(f"RSS: first {rss[0][1] / 1024:.0f} MiB, last {rss[-1][1] / 1024:.0f} MiB, max {max(k for _, k in rss) / 1024:.0f} MiB "
      f"({len(rss)} samples); slope over the second half {slope:+.1f} MiB/h (bound {slope_bound:.0f})")
print(f"reloads: {expected} asked, {applied} generations applied (generation {gen0} -> {gen1})")
ok = errors == 0 and run["mismatches"] == 0 and applied == expected and slope <= slope_bound
print("verdict:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
