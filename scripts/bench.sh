#!/usr/bin/env bash
# The payvault benchmark. Builds payvault in release mode, starts it against a fresh database
# with the in-process sandbox processor, and measures on this machine, in this run:
#   - the database ceiling: pgbench running the statement a tokenize commits, same concurrency;
#   - tokenize through payvault (wrk, unique Twilio requests, every answer checked);
#   - the same with audit sealing paused, to show what sealing costs;
#   - charge-by-token through payvault against the zero-latency sandbox;
#   - peak RSS of payvault and its startup time to ready.
# Needs PostgreSQL (ADMIN_URL), wrk and pgbench. Traffic stays on loopback.
#   scripts/bench.sh            # 15 s per workload, 32 connections
#   DURATION=30 CONNECTIONS=64 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DURATION=${DURATION:-15}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
PORT=${PORT:-18080}
DB=payvault_bench
URL="${ADMIN_URL%/*}/$DB"
for tool in wrk pgbench psql curl; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required (apt-get install wrk postgresql-client curl)" >&2; exit 1; }
done

# BIN=path/to/payvault benchmarks that binary instead (to compare two builds on one machine).
if [ -z "${BIN:-}" ]; then
  echo "== building payvault (release)"
  cargo build --release --quiet
  BIN=target/release/payvault
fi
work=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

fresh_db() {
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
  DATABASE_URL=$URL $BIN migrate >/dev/null
  DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" $BIN credentials create --name bench --kind connector --scopes connector,tokens:charge --format json > "$work/cred.json"
  user=$(sed -E 's/.*"username":"([^"]+)".*/\1/' "$work/cred.json")
  secret=$(sed -E 's/.*"secret":"([^"]+)".*/\1/' "$work/cred.json")
  cred_id=$(sed -E 's/.*"id":"([^"]+)".*/\1/' "$work/cred.json")
  auth="Basic $(printf '%s:%s' "$user" "$secret" | base64 -w0)"
}

# Starts payvault; sets startup_ms, the milliseconds from spawn to a ready /healthz.
start_server() {
  local start=$(date +%s%N)
  DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" PAYVAULT_LISTEN=127.0.0.1:$PORT PAYVAULT_PROCESSOR=sandbox \
    PAYVAULT_ENV=development PAYVAULT_LOG=warn PAYVAULT_NO_MIGRATE=true "$@" $BIN serve >/dev/null 2>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 1 500); do
    curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.01
  done
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null || { cat "$work/server.log" >&2; exit 1; }
  startup_ms=$(( ($(date +%s%N) - start) / 1000000 ))
}

stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }

peak_rss_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$server_pid/status"; }

run_wrk() { # script, extra args...
  local script=$1; shift
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s "scripts/bench/$script" "http://127.0.0.1:$PORT" -- "$@" \
    | grep '^RESULT' | sed 's/^RESULT //'
}

field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

key=$($BIN keys generate | tail -1)

echo "== database ceiling (pgbench, $CONNECTIONS clients, ${DURATION}s)"
fresh_db
ceiling=$(pgbench -n -M prepared -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION" -D cred="$cred_id" -f scripts/bench/ceiling.sql "$URL" 2>&1 \
  | sed -nE 's/^tps = ([0-9.]+).*/\1/p' | head -1)
echo "ceiling: $ceiling tx/s"

echo "== tokenize through payvault"
fresh_db
start_server
first_startup_ms=$startup_ms
tok=$(run_wrk tokenize.lua "$auth")
echo "tokenize: $tok"

echo "== charge-by-token through payvault (sandbox, zero latency)"
: > "$work/tokens"
for i in $(seq 1 200); do
  answer=$(curl -fs -H "Authorization: $auth" "http://127.0.0.1:$PORT/" \
    -d "{\"method\":\"tokenize\",\"transaction_id\":\"seed-$i-$RANDOM\",\"cardnumber\":\"4111111111111111\",\"expiry_month\":\"08\",\"expiry_year\":\"35\"}")
  printf '%s\n' "$answer" | sed -E 's/.*"token_id":"([^"]+)".*/\1/' >> "$work/tokens"
done
chg=$(run_wrk charge_token.lua "$auth" "$work/tokens")
echo "charge-by-token: $chg"
rss=$(peak_rss_mb)
unsealed=$(psql "$URL" -Atc "SELECT count(*) FROM audit_unsealed")
stop_server

echo "== tokenize with audit sealing paused (the cost of sealing)"
fresh_db
start_server env PAYVAULT_AUDIT_SEAL_INTERVAL_MS=3600000
nos=$(run_wrk tokenize.lua "$auth")
echo "tokenize, sealing paused: $nos"
stop_server

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
cat <<REPORT

== payvault benchmark: $(nproc) cores, $CONNECTIONS connections, ${DURATION}s per workload
| workload | requests/s | p50 ms | p95 ms | p99 ms | errors | vs. ceiling |
|---|---|---|---|---|---|---|
| database ceiling (pgbench) | $ceiling | | | | | 1.00 |
| tokenize | $(field "$tok" rps) | $(field "$tok" p50) | $(field "$tok" p95) | $(field "$tok" p99) | $(field "$tok" errors) | $(ratio "$(field "$tok" rps)" "$ceiling") |
| tokenize, sealing paused | $(field "$nos" rps) | $(field "$nos" p50) | $(field "$nos" p95) | $(field "$nos" p99) | $(field "$nos" errors) | $(ratio "$(field "$nos" rps)" "$ceiling") |
| charge-by-token (sandbox) | $(field "$chg" rps) | $(field "$chg" p50) | $(field "$chg" p95) | $(field "$chg" p99) | $(field "$chg" errors) | $(ratio "$(field "$chg" rps)" "$ceiling") |

peak RSS of payvault under load: ${rss} MB; startup to ready: ${first_startup_ms} ms (database up, migrations applied)
audit events still unsealed right after the load: $unsealed
sealing cost: tokenize runs at $(ratio "$(field "$tok" rps)" "$(field "$nos" rps)")x of its speed with sealing paused
REPORT
