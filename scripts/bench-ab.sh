#!/usr/bin/env bash
# Before/after benchmark of two payvault builds on this machine, interleaved: every
# round runs BEFORE then AFTER (the order swaps each round, so neither always runs first), each
# against a fresh database that its own binary migrated, with the same wrk load as
# scripts/bench.sh. Storage that changes speed within minutes then moves both sides together,
# and the per-round ratio AFTER/BEFORE is what to read: its median and spread are printed.
#   BEFORE=/tmp/payvault-old AFTER=target/release/payvault scripts/bench-ab.sh
#   ROUNDS=8 DURATION=10 SYNC=off BEFORE=... AFTER=... scripts/bench-ab.sh
#   WORKLOAD=charge BEFORE=... AFTER=... scripts/bench-ab.sh   # charge-by-token (sandbox processor)
# WORKLOAD=tokenize (the default) or charge: charge-by-token first tokenizes CHARGE_TOKENS cards
# through the same server, then charges them in turn, as scripts/bench.sh does.
# SYNC=off sets synchronous_commit=off on the benchmark database (both sides), which takes the
# storage's fsync noise out and leaves each build's CPU cost per request.
# Needs PostgreSQL (ADMIN_URL), wrk, psql and curl. Traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-6}
SYNC=${SYNC:-on}
WORKLOAD=${WORKLOAD:-tokenize}
CHARGE_TOKENS=${CHARGE_TOKENS:-200}
case "$WORKLOAD" in tokenize|charge) ;; *) echo "bench-ab: WORKLOAD must be tokenize or charge" >&2; exit 2 ;; esac
PORT=${PORT:-18081}
DB=payvault_bench_ab
URL="${ADMIN_URL%/*}/$DB"
: "${BEFORE:?set BEFORE to the payvault binary to compare against}"
: "${AFTER:?set AFTER to the payvault binary to measure}"
for tool in wrk psql curl; do
  command -v "$tool" >/dev/null || { echo "bench-ab: $tool is required" >&2; exit 1; }
done
work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  wait 2>/dev/null
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# One run of binary $1: fresh database, migrated and given a connector credential by that
# binary, the service started, wrk for DURATION seconds. Prints wrk's RESULT fields.
run_one() {
  local bin=$1 key auth
  key=$("$bin" keys generate | tail -1)
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
  [ "$SYNC" = off ] && psql "$ADMIN_URL" -qc "ALTER DATABASE $DB SET synchronous_commit = off" >/dev/null
  DATABASE_URL=$URL "$bin" migrate >/dev/null
  DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" "$bin" credentials create --name bench --kind connector \
    --scopes connector,tokens:charge --format json > "$work/cred.json" 2>/dev/null
  auth="Basic $(printf '%s:%s' "$(sed -E 's/.*"username":"([^"]+)".*/\1/' "$work/cred.json")" \
    "$(sed -E 's/.*"secret":"([^"]+)".*/\1/' "$work/cred.json")" | base64 -w0)"
  if curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
    echo "bench: something already answers on 127.0.0.1:$PORT; stop it or set PORT" >&2
    exit 1
  fi
  DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" PAYVAULT_LISTEN=127.0.0.1:$PORT PAYVAULT_PROCESSOR=sandbox \
    PAYVAULT_ENV=development PAYVAULT_LOG=warn PAYVAULT_NO_MIGRATE=true "$bin" serve >/dev/null 2>"$work/server.log" &
  server_pid=$!
  local deadline=$((SECONDS + 10))
  until curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.01
  done
  local script=tokenize.lua
  if [ "$WORKLOAD" = charge ]; then
    script=charge_token.lua
    : > "$work/tokens"
    for i in $(seq 1 "$CHARGE_TOKENS"); do
      answer=$(curl -fs -H "Authorization: $auth" "http://127.0.0.1:$PORT/" \
        -d "{\"method\":\"tokenize\",\"transaction_id\":\"seed-$i\",\"cardnumber\":\"4111111111111111\",\"expiry_month\":\"08\",\"expiry_year\":\"35\"}")
      printf '%s\n' "$answer" | sed -E 's/.*"token_id":"([^"]+)".*/\1/' >> "$work/tokens"
    done
  fi
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s "scripts/bench/$script" \
    "http://127.0.0.1:$PORT" -- "$auth" "$work/tokens" | sed -n 's/^RESULT //p'
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
median_spread() { sort -g | awk '{v[NR]=$1} END { m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2; printf "%.2f (%.2f-%.2f)", m, v[1], v[NR] }'; }

echo "| round | before req/s | before p99 ms | after req/s | after p99 ms | after / before | errors (b/a) |"
echo "|---|---|---|---|---|---|---|"
: > "$work/rows"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then b=$(run_one "$BEFORE"); a=$(run_one "$AFTER")
  else a=$(run_one "$AFTER"); b=$(run_one "$BEFORE"); fi
  echo "$(field "$b" rps) $(field "$b" p99) $(field "$a" rps) $(field "$a" p99)" >> "$work/rows"
  echo "| $r | $(field "$b" rps) | $(field "$b" p99) | $(field "$a" rps) | $(field "$a" p99) | $(awk -v a="$(field "$a" rps)" -v b="$(field "$b" rps)" 'BEGIN { printf "%.2f", a / b }') | $(field "$b" errors)/$(field "$a" errors) |"
done
echo
echo "$WORKLOAD, synchronous_commit=$SYNC, $ROUNDS rounds of ${DURATION}s, $CONNECTIONS connections, $(nproc) cores"
echo "median after/before req/s (min-max): $(awk '{ printf "%.4f\n", $3 / $1 }' "$work/rows" | median_spread)"
echo "median before req/s: $(awk '{ print $1 }' "$work/rows" | median_spread); after: $(awk '{ print $3 }' "$work/rows" | median_spread)"
echo "median p99 after/before (min-max): $(awk '{ printf "%.4f\n", $4 / $2 }' "$work/rows" | median_spread)"
