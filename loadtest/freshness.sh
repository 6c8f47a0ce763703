#!/usr/bin/env bash
# Freshness: how soon qualcached answers a change committed in PostgreSQL.
# A data set is loaded into a schema of its own and a daemon follows it;
# then `qualcache-loadtest freshness` commits single-person changes one
# after another (a card flipped between registered and restricted) and
# times each from the commit's acknowledgement to the first answer that
# shows it, polling every millisecond: first idle, then while the load
# generator runs at half the daemon's maximum rate; then one transaction
# changing BATCH persons (persons per second applied). The baseline, in
# the same run: a full snapshot build from the database, which is what a
# change waited for before the change feed (plus up to
# rebuild_interval_secs). Prints the figures; not part of CI.
#
#   loadtest/freshness.sh
#
# Environment: RECORDS (default 1000000), CHANGES (1000), BATCH (100000),
# TERMINALS (200), PG_URL (postgres://postgres@127.0.0.1:5432/test),
# SCHEMA (qc_freshness: emptied and loaded anew), MAX (the daemon's maximum
# rate measured before; else --find-max), PORT (4473), ADMIN_PORT (9494),
# KEEP=1 keeps the working folder.
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-1000000}
CHANGES=${CHANGES:-1000}
BATCH=${BATCH:-100000}
TERMINALS=${TERMINALS:-200}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/test}
SCHEMA=${SCHEMA:-qc_freshness}
PORT=${PORT:-4473}
ADMIN_PORT=${ADMIN_PORT:-9494}
W=$(mktemp -d)
DAEMON=
LOAD=
cleanup() {
  [ -n "$LOAD" ] && kill "$LOAD" 2>/dev/null && wait "$LOAD" 2>/dev/null
  [ -n "$DAEMON" ] && kill -TERM "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then echo "freshness: kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT

cargo build -q --release --workspace
BIN=target/release
. loadtest/daemon.sh
$BIN/qualcache -q gen --records "$RECORDS" --seed 7 --out "$W/data" > /dev/null
$BIN/qualcache certs --out "$W/certs" --terminals "$((TERMINALS + 1))" > /dev/null
$BIN/qualcache -q db migrate --url "$PG_URL" --schema "$SCHEMA" > /dev/null
$BIN/qualcache -q db load --replace --url "$PG_URL" --schema "$SCHEMA" --csv "$W/data/enrollees.csv" > /dev/null
start=$(date +%s.%N)
$BIN/qualcache -q snapshot build --source "$PG_URL" --schema "$SCHEMA" --out "$W/baseline" > /dev/null
rebuild=$(echo "$(date +%s.%N) - $start" | bc)

write_config "" "[source]
kind = \"postgres\"
url = \"$PG_URL\"
schema = \"$SCHEMA\"
rebuild_interval_secs = 3600"
start_daemon qualcached.log
LT=(target/release/qualcache-loadtest)
FRESH=("${LT[@]}" freshness --target "qualcache://127.0.0.1:$PORT" --certs "$W/certs"
       --pg-url "$PG_URL" --schema "$SCHEMA" --probes "$W/data/probes.jsonl")
echo "baseline: a full snapshot build from the database took ${rebuild} s"
echo "idle:"
"${FRESH[@]}" --changes "$CHANGES" --batch 0 --json "$W/idle.json"

RUN=("${LT[@]}" run --target "qualcache://127.0.0.1:$PORT" --certs "$W/certs"
     --probes "$W/data/probes.jsonl" --terminals "$TERMINALS" --quiet)
if [ -n "${MAX:-}" ]; then
  max=$MAX
else
  "${RUN[@]}" --find-max --rate 4000 --seconds 10 --tries 2 --json "$W/max.json" > /dev/null || true
  max=$(python3 -c "import json; print(int(json.load(open('$W/max.json'))['profile']['rate']))")
fi
half=$((max / 2))
echo "under load: $half requests/s (half of the maximum, $max/s), $TERMINALS terminals:"
"${RUN[@]}" --profile constant --rate "$half" --seconds 3600 --json "$W/load.json" > /dev/null &
LOAD=$!
sleep 3
"${FRESH[@]}" --changes "$CHANGES" --batch "$BATCH" --json "$W/loaded.json"
kill "$LOAD" 2>/dev/null; wait "$LOAD" 2>/dev/null || true
LOAD=
echo "daemon log errors: $(grep -c "reload failed\|ERROR" "$W/qualcached.log" || true)"
