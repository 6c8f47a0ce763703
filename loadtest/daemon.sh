# Sourced by loadtest/soak.sh, loadtest/overload.sh and loadtest/freshness.sh: a qualcached of
# their own in a working folder $W, on 127.0.0.1:$PORT (admin
# 127.0.0.1:$ADMIN_PORT), serving the CSV $W/data/enrollees.csv with the
# certificates in $W/certs. Sets DAEMON to its process id. DAEMON_CPUS
# (a taskset CPU list, e.g. 0) pins it; DAEMON_BIN (default
# target/release/qualcached) runs another build, for a baseline.

# Writes $W/qualcached.toml; $1: more [server] keys, one per line; $2: a
# [source] section instead of the CSV.
write_config() {
  local source=${2:-"[source]
kind = \"csv\"
path = \"$W/data/enrollees.csv\""}
  cat > "$W/qualcached.toml" <<CONF
[server]
listen = "127.0.0.1:$PORT"
$1
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[audit]
dir = "$W/audit"
[tls]
cert = "$W/certs/server.pem"
key = "$W/certs/server.key"
client_ca = "$W/certs/ca.pem"
[snapshots]
dir = "$W/snap"
keep = 3
reload_interval_secs = 3600
$source
CONF
}

# Starts the daemon (log in $W/$1) and waits until it is ready (at most
# 10 minutes: a first build of many records); fails if it exits.
start_daemon() {
  local pin=()
  [ -n "${DAEMON_CPUS:-}" ] && pin=(taskset -c "$DAEMON_CPUS")
  "${pin[@]}" "${DAEMON_BIN:-target/release/qualcached}" --config "$W/qualcached.toml" 2> "$W/$1" &
  DAEMON=$!
  for _ in $(seq 3000); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN_PORT/readyz")" = 200 ] && return 0
    kill -0 "$DAEMON" 2>/dev/null || { echo "qualcached exited; see its log:" >&2; tail "$W/$1" >&2; return 1; }
    sleep 0.2
  done
  echo "qualcached not ready after 10 minutes" >&2
  return 1
}
