#!/usr/bin/env bash
# Freshness with persons already held in the overlay: for each N in HELD,
# a daemon following a PostgreSQL schema takes one transaction that
# changes N persons (so its overlay holds them), then
# `qualcache-loadtest freshness` times CHANGES single-person changes, each
# from the commit's acknowledgement to the first answer showing it (polled
# every millisecond). With OLD_BIN (a qualcached of another build, e.g.
# the commit before a change) each N runs with it too, interleaved, as the
# same-run baseline. Prints one line per run; not part of CI.
#
#   HELD="100000 300000" OLD_BIN=/path/to/qualcached loadtest/freshness-held.sh
#
# Environment: RECORDS (default 1000000), HELD ("100000 300000"), CHANGES
# (200), ROUNDS (1), PG_URL (postgres://postgres@127.0.0.1:5432/test),
# SCHEMA (qc_held: emptied and loaded anew), PORT (4473), ADMIN_PORT
# (9494), KEEP=1 keeps the working folder.
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-1000000}
HELD=${HELD:-"100000 300000"}
CHANGES=${CHANGES:-200}
ROUNDS=${ROUNDS:-1}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
SCHEMA=${SCHEMA:-qc_held}
PORT=${PORT:-4473}
ADMIN_PORT=${ADMIN_PORT:-9494}
W=$(mktemp -d)
DAEMON=
stop() {
  [ -n "$DAEMON" ] && kill -TERM "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  DAEMON=
}
cleanup() {
  stop || true
  if [ "${KEEP:-0}" = 1 ]; then echo "freshness-held: kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT

cargo build -q --release --workspace
BIN=target/release
. loadtest/daemon.sh
$BIN/qualcache -q gen --records "$RECORDS" --seed 7 --out "$W/data" > /dev/null
$BIN/qualcache certs --out "$W/certs" --terminals 2 > /dev/null
$BIN/qualcache -q db migrate --url "$PG_URL" --schema "$SCHEMA" > /dev/null
$BIN/qualcache -q db load --replace --url "$PG_URL" --schema "$SCHEMA" --csv "$W/data/enrollees.csv" > /dev/null
write_config "" "[source]
kind = \"postgres\"
url = \"$PG_URL\"
schema = \"$SCHEMA\"
rebuild_interval_secs = 3600"

builds=("this:target/release/qualcached")
[ -n "${OLD_BIN:-}" ] && builds+=("old:$OLD_BIN")
echo "build held changes p50_ms p90_ms p99_ms max_ms batch_s persons_per_s"
for round in $(seq "$ROUNDS"); do
  for n in $HELD; do
    for b in "${builds[@]}"; do
      name=${b%%:*}
      rm -rf "$W/snap"
      DAEMON_BIN=${b#*:} start_daemon "qualcached-$name-$n-$round.log"
      json="$W/$name-$n-$round.json"
      $BIN/qualcache-loadtest freshness --target "qualcache://127.0.0.1:$PORT" --certs "$W/certs" \
        --pg-url "$PG_URL" --schema "$SCHEMA" --probes "$W/data/probes.jsonl" \
        --changes "$CHANGES" --batch "$n" --batch-first --json "$json" > /dev/null
      stop
      python3 - "$json" "$name" "$n" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["commit_to_answer_ms"]
print(sys.argv[2], sys.argv[3], r["changes"], *(f"{c[k]:.1f}" for k in ("p50", "p90", "p99", "max")),
      f"{r['batch_seconds']:.2f}", f"{r['batch_persons_per_second']:.0f}")
PY
    done
  done
done
echo "daemon log errors: $(cat "$W"/qualcached-*.log | grep -c "ERROR" || true)"
