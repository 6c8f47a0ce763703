#!/usr/bin/env bash
# Fleet figures for BENCHMARKS.md, over loopback with a real S3 server
# (s3s-fs): publish time of a RECORDS-record snapshot beside a plain cp of
# the same file (same run), pull time of one replica alone and of the
# others pulling at once, and the spread of the replicas' switch times
# after one activation.
#
#   RECORDS=10000000 REPLICAS=3 loadtest/fleet.sh      (needs s3s-fs; ~10 min)
#
# Builds nothing: run `cargo build --release` first. Everything lives in
# $WORK (default target/fleet-bench) and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-10000000}
REPLICAS=${REPLICAS:-3}
WORK=${WORK:-target/fleet-bench}
bin=target/release
S3S=${QUALCACHE_S3S_FS:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK/s3/fleet"
WORK=$(cd "$WORK" && pwd)

echo "== data: $RECORDS records"
"$bin/qualcache" gen --records "$RECORDS" --probes 100 --out "$WORK/data" -q >/dev/null
"$bin/qualcache" snapshot build --source "$WORK/data/enrollees.csv" --out "$WORK/built" -q >/dev/null
rm -rf "$WORK/data"
file="$WORK/built/1.qcs"
size=$(stat -c %s "$file")
echo "snapshot: $size bytes"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$S3S" --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$WORK/s3" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true
url=s3://fleet/bench

echo "== publish beside cp (the file is in the page cache for both)"
cat "$file" >/dev/null
start=$(date +%s.%N); cp "$file" "$WORK/copy.qcs"; end=$(date +%s.%N)
cp_s=$(echo "$end - $start" | bc -l); rm -f "$WORK/copy.qcs"
printf 'cp:      %.2f s, %.0f MB/s\n' "$cp_s" "$(echo "$size / 1000000 / $cp_s" | bc -l)"
"$bin/qualcache" snapshot publish --to "$url" "$file" > "$WORK/published.json"
python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); print("publish: %.2f s, %.0f MB/s" % (p["seconds"], p["mb_per_s"]))' "$WORK/published.json"

"$bin/qualcache" certs --out "$WORK/certs" --terminals 1 >/dev/null
start_replica() {
  local id=$1 dir="$WORK/$1"
  mkdir -p "$dir"
  cat > "$dir/q.toml" <<EOF
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[audit]
mode = "off"
[tls]
cert = "$WORK/certs/server.pem"
key = "$WORK/certs/server.key"
client_ca = "$WORK/certs/ca.pem"
[snapshots]
dir = "$dir/snapshots"
[fleet]
url = "$url"
replica_id = "$id"
poll_interval_secs = 1
EOF
  QUALCACHE_LOG=info "$bin/qualcached" --config "$dir/q.toml" 2> "$dir/log" &
  pids+=($!)
}
pulled() { grep -h "generation downloaded and verified" "$WORK/$1/log" 2>/dev/null | grep -o 'seconds=[0-9.]*\|mb_per_s=[0-9.]*' | tr '\n' ' '; }
wait_pulled() {
  for _ in $(seq 1 1200); do [ -n "$(pulled "$1")" ] && return; sleep 0.5; done
  echo "$1 did not pull"; exit 1
}

echo "== pull: one replica alone, then $((REPLICAS - 1)) at once"
start_replica r1; wait_pulled r1
echo "r1 (alone): $(pulled r1)"
for i in $(seq 2 "$REPLICAS"); do start_replica "r$i"; done
for i in $(seq 2 "$REPLICAS"); do wait_pulled "r$i"; echo "r$i (together): $(pulled "r$i")"; done

echo "== switch spread: activate at now + 5 s"
at=$(date -u -d '+5 seconds' +%Y-%m-%dT%H:%M:%S.000Z)
"$bin/qualcache" fleet activate 1 --at "$at" --url "$url" >/dev/null
sleep 8
"$bin/qualcache" fleet status --url "$url" > "$WORK/status.json"
python3 - "$WORK/status.json" "$at" <<'EOF'
import json, sys
from datetime import datetime
s = json.load(open(sys.argv[1]))
at = datetime.fromisoformat(sys.argv[2].replace("Z", "+00:00"))
late = []
for r in s["replicas"]:
    t = datetime.fromisoformat(r["serving_since"].replace("Z", "+00:00"))
    late.append(((t - at).total_seconds() * 1000, r["replica_id"]))
for ms, rid in sorted(late):
    print(f"{rid}: switched {ms:.0f} ms after activate_at")
print(f"spread: {max(l for l, _ in late) - min(l for l, _ in late):.0f} ms")
EOF
grep -h "switched to the fleet" "$WORK"/r*/log | grep -o 'late_ms=[0-9-]*' | tr '\n' ' '; echo
