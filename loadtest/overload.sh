#!/usr/bin/env bash
# Overload: qualcached offered 3x its maximum rate for 20 s, with and
# without adaptive stream credit (server.adaptive_stream_credit), the
# issue's max_in_flight = 256 both times. For each: the maximum rate
# (--find-max), then 10 s of one well-behaved terminal alone at 50
# requests/s (its normal latency), then 20 s of 200 terminals at 3x the
# maximum while that terminal goes on beside them, then 10 s of it alone
# again (recovery); the daemon's RSS before, at the end of the overload
# and after. Prints one table; not part of CI.
#
#   loadtest/overload.sh
#
# Environment: RECORDS (default 1000000), TERMINALS (200), FACTOR (3),
# SLO_ERRORS (0.001: the error rate --find-max allows, since a server that
# sheds may refuse a few requests near its maximum),
# PORT (4463), ADMIN_PORT (9484), SETTINGS ("true false": the values of
# adaptive_stream_credit to run), MAX (a maximum rate measured before:
# no --find-max, whose steps a noisy machine can break early; it gives
# each step two tries), KEEP=1 keeps the working folder.
# SERVER_EXTRA: more [server] lines (shed_lag_ms = 2, say).
# PIN=1 separates the parties on a 2-core machine: the daemon alone on
# CPU 0, the generators on CPU 1, the well-behaved terminal's at a higher
# priority than the flood's (nice -10 against 10), so its latency is the
# server's, not its own generator's wait for a CPU. On a larger machine,
# DAEMON_CPUS and GEN_CPUS (taskset lists) do the same.
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-1000000}
TERMINALS=${TERMINALS:-200}
FACTOR=${FACTOR:-3}
PORT=${PORT:-4463}
ADMIN_PORT=${ADMIN_PORT:-9484}
SETTINGS=${SETTINGS:-true false}
GEN=()
CALM_NICE=()
FLOOD_NICE=()
if [ "${PIN:-0}" = 1 ]; then
  DAEMON_CPUS=${DAEMON_CPUS:-0}
  GEN_CPUS=${GEN_CPUS:-1}
fi
if [ -n "${GEN_CPUS:-}" ]; then
  GEN=(taskset -c "$GEN_CPUS")
  FLOOD_NICE=(nice -n 10)
  CALM_NICE=(nice -n -10)
fi
W=$(mktemp -d)
DAEMON=
cleanup() {
  [ -n "$DAEMON" ] && kill -TERM "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then echo "overload: kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT

cargo build -q --release --workspace
BIN=target/release
. loadtest/daemon.sh
$BIN/qualcache gen --records "$RECORDS" --seed 7 --out "$W/data" > /dev/null
$BIN/qualcache certs --out "$W/certs" --terminals "$((TERMINALS + 1))" > /dev/null
$BIN/qualcache snapshot build --source "$W/data/enrollees.csv" --out "$W/snap" > /dev/null
rss() { awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/$DAEMON/status"; }
LT=(target/release/qualcache-loadtest run --target "qualcache://127.0.0.1:$PORT" --certs "$W/certs"
    --probes "$W/data/probes.jsonl" --quiet)

for adaptive in $SETTINGS; do
  write_config "max_in_flight = 256
adaptive_stream_credit = $adaptive
${SERVER_EXTRA:-}"
  start_daemon "qualcached-$adaptive.log"
  if [ -n "${MAX:-}" ]; then
    max=$MAX
  else
    "${GEN[@]}" "${LT[@]}" --terminals "$TERMINALS" --find-max --rate 4000 --seconds 10 --tries 2 \
      --slo-error-rate "${SLO_ERRORS:-0.001}" --json "$W/max-$adaptive.json" > /dev/null || true
    max=$(python3 -c "import json; print(int(json.load(open('$W/max-$adaptive.json'))['profile']['rate']))")
  fi
  # The well-behaved terminal alone: its normal latency.
  "${GEN[@]}" "${CALM_NICE[@]}" "${LT[@]}" --terminals 1 --profile constant --rate 50 --seconds 10 --seed 4 \
    --json "$W/before-$adaptive.json" > /dev/null || true
  before=$(rss)
  # The flood and, beside it, one well-behaved terminal (the last certificate).
  "${GEN[@]}" "${FLOOD_NICE[@]}" "${LT[@]}" --terminals "$TERMINALS" --profile constant --rate "$((max * FACTOR))" --seconds 20 \
    --json "$W/flood-$adaptive.json" > /dev/null &
  FLOOD=$!
  "${GEN[@]}" "${CALM_NICE[@]}" "${LT[@]}" --terminals 1 --profile constant --rate 50 --seconds 20 --seed 2 \
    --json "$W/calm-$adaptive.json" > /dev/null &
  CALM=$!
  sleep 19
  during=$(rss)
  wait "$FLOOD" || true
  wait "$CALM" || true
  "${GEN[@]}" "${CALM_NICE[@]}" "${LT[@]}" --terminals 1 --profile constant --rate 50 --seconds 10 --seed 3 \
    --json "$W/after-$adaptive.json" > /dev/null || true
  after=$(rss)
  echo "$adaptive $max $before $during $after" >> "$W/rss.txt"
  kill -TERM "$DAEMON"; wait "$DAEMON" || true; DAEMON=
done

python3 - "$W" "$FACTOR" <<'PY'
import json, sys
w, factor = sys.argv[1], int(sys.argv[2])
rss = {l.split()[0]: l.split()[1:] for l in open(f"{w}/rss.txt")}
settings = list(rss)
print(f"{'adaptive credit':<16} {'max/s':>7} {'offered/s':>9} {'goodput/s':>9} {'goodput/max':>11} "
      f"{'refused fast':>12} {'timeouts':>8} {'calm p99 ms':>11} {'calm lag p99':>12} {'before p99 ms':>13} {'after p99 ms':>12} {'RSS MiB before/during/after':>28}")
for a in settings:
    f = json.load(open(f"{w}/flood-{a}.json"))
    calm = json.load(open(f"{w}/calm-{a}.json"))
    after = json.load(open(f"{w}/after-{a}.json"))
    before = json.load(open(f"{w}/before-{a}.json"))
    mx = int(rss[a][0])
    errors = f["errors"]
    good = (f["sent"] - sum(errors.values()) - f["mismatches"]) / f["seconds"]
    fast = errors.get("no_credit", 0) + errors.get("overloaded", 0)
    print(f"{a:<16} {mx:>7} {mx * factor:>9} {good:>9.0f} {good / mx:>11.2f} {fast:>12} {errors.get('timeout', 0):>8} "
          f"{calm['latency']['p99_ms']:>11.3f} {calm['send_lag']['p99_ms']:>12.3f} {before['latency']['p99_ms']:>13.3f} "
          f"{after['latency']['p99_ms']:>12.3f} {'/'.join(rss[a][1:]):>28}")
    print(f"  flood errors by kind: {dict(errors)}; calm terminal errors: {dict(calm['errors'])}")
    print("  calm terminal p99 by second, during: "
          + " ".join(f"{s['p99_ms']:.1f}" for s in calm["timeline"])
          + "; after: " + " ".join(f"{s['p99_ms']:.1f}" for s in after["timeline"]))
PY
