#!/usr/bin/env bash
# The payvault benchmark. Builds payvault in release mode and measures, on this machine, each
# workload against its own database ceiling, in short interleaved rounds so that storage that
# changes speed within minutes moves both sides of a ratio together:
#   - tokenize through payvault (wrk, unique Twilio requests, every answer checked) against
#     pgbench running the one statement a tokenize commits (scripts/bench/ceiling.sql);
#   - charge-by-token through payvault (zero-latency sandbox processor) against pgbench running
#     the statements a charge runs: read the entry, claim (commit 1), outcome (commit 2)
#     (scripts/bench/charge_ceiling.sql);
#   - p99 latency of each side at the same concurrency (wrk; pgbench --log), and how many
#     PostgreSQL checkpoints and sealing batches fell inside each run (to explain p99 jumps);
#   - a last round with synchronous_commit=off on the benchmark database (both sides), which
#     shows payvault's CPU cost per request without the storage's fsync noise;
#   - peak RSS of payvault, its startup time to ready, and audit events left unsealed.
# Reports every round, then the median ratio of each workload to its ceiling and its spread.
# Needs PostgreSQL (ADMIN_URL), wrk and pgbench. Traffic stays on loopback.
#   scripts/bench.sh                           # 3 rounds + 1 synchronous_commit=off round, 10 s each
#   ROUNDS=5 DURATION=15 CONNECTIONS=64 scripts/bench.sh
#   SYNC_OFF_ROUND=0 SEALING_PAUSED=1 scripts/bench.sh   # no sync-off round; add sealing paused
#   DB_POOL=32 scripts/bench.sh                # payvault's database pool (default: its own default, 16)
#   scripts/bench.sh --scale                   # at scale (1M entries, 10M events): scripts/scale-bench.sh
set -euo pipefail
if [ "${1:-}" = --scale ]; then
  shift
  exec "$(dirname "$0")/scale-bench.sh" "$@"
fi
cd "$(dirname "$0")/.."
ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
SYNC_OFF_ROUND=${SYNC_OFF_ROUND:-1}
SEALING_PAUSED=${SEALING_PAUSED:-0}
CHARGE_TOKENS=${CHARGE_TOKENS:-200}
# payvault's database connections (PAYVAULT_DB_MAX_CONNECTIONS); pgbench opens CONNECTIONS.
DB_POOL=${DB_POOL:-16}
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

# A fresh benchmark database, migrated, with one connector credential. $1=off sets
# synchronous_commit=off on it (every later session, pgbench's and payvault's alike).
fresh_db() {
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
  if [ "${1:-on}" = off ]; then psql "$ADMIN_URL" -qc "ALTER DATABASE $DB SET synchronous_commit = off" >/dev/null; fi
  DATABASE_URL=$URL $BIN migrate >/dev/null
  DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" $BIN credentials create --name bench --kind connector --scopes connector,tokens:charge --format json > "$work/cred.json"
  user=$(sed -E 's/.*"username":"([^"]+)".*/\1/' "$work/cred.json")
  secret=$(sed -E 's/.*"secret":"([^"]+)".*/\1/' "$work/cred.json")
  cred_id=$(sed -E 's/.*"id":"([^"]+)".*/\1/' "$work/cred.json")
  auth="Basic $(printf '%s:%s' "$user" "$secret" | base64 -w0)"
}

# Starts payvault; sets startup_ms, the milliseconds from spawn to a ready /healthz.
start_server() {
  # Another server still on the port (a run that did not clean up) would answer the health
  # check below, and the figures would be its own.
  if curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
    echo "bench: something already answers on 127.0.0.1:$PORT; stop it or set PORT" >&2
    exit 1
  fi
  local start=$(date +%s%N)
  DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" PAYVAULT_LISTEN=127.0.0.1:$PORT PAYVAULT_PROCESSOR=sandbox \
    PAYVAULT_ENV=development PAYVAULT_LOG=warn PAYVAULT_NO_MIGRATE=true \
    PAYVAULT_DB_MAX_CONNECTIONS=$DB_POOL "$@" $BIN serve >/dev/null 2>"$work/server.log" &
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

# PostgreSQL checkpoints so far (timed + requested) and seals so far: read before and after a
# run, their difference says whether a checkpoint or how many sealing batches fell inside it.
checkpoints() { psql "$ADMIN_URL" -Atc "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"; }

run_wrk() { # script, extra args...
  local script=$1; shift
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s "scripts/bench/$script" "http://127.0.0.1:$PORT" -- "$@" \
    | grep '^RESULT' | sed 's/^RESULT //'
}

# pgbench with a per-transaction log; prints "tps=... p99=..." (p99 in ms, from the log).
run_pgbench() { # script, -D args...
  local script=$1; shift
  rm -f "$work"/pglog*
  local tps
  tps=$(pgbench -n -M prepared -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION" --log --log-prefix="$work/pglog" \
    "$@" -f "scripts/bench/$script" "$URL" 2>&1 | sed -nE 's/^tps = ([0-9.]+).*/\1/p' | head -1)
  local p99
  p99=$(cat "$work"/pglog* | awk '{print $3}' | sort -n | awk '{v[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.2f", v[i]/1000}')
  printf 'tps=%.1f p99=%s\n' "${tps:-0}" "$p99"
}

field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }
# Median and spread (min-max) of the numbers on stdin.
median_spread() { sort -g | awk '{v[NR]=$1} END { m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2; printf "%.2f (%.2f-%.2f)", m, v[1], v[NR] }'; }

key=$($BIN keys generate | tail -1)

rows="$work/rows"      # round mode workload rps p99 ceiling ceiling_p99 checkpoints
: > "$rows"
rss=""; first_startup_ms=""; unsealed_max=0

one_round() { # round number, synchronous_commit (on|off)
  local round=$1 sync=$2 c0 c1 res

  # tokenize: ceiling, then payvault
  fresh_db "$sync"
  c0=$(checkpoints)
  res=$(run_pgbench ceiling.sql -D cred="$cred_id")
  c1=$(checkpoints)
  local tok_ceiling=$res tok_ceiling_cp=$((c1 - c0))
  fresh_db "$sync"
  start_server
  [ -z "$first_startup_ms" ] && first_startup_ms=$startup_ms
  c0=$(checkpoints)
  local tok; tok=$(run_wrk tokenize.lua "$auth")
  c1=$(checkpoints)
  echo "$round $sync tokenize $(field "$tok" rps) $(field "$tok" p99) $(field "$tok_ceiling" tps) $(field "$tok_ceiling" p99) $tok_ceiling_cp/$((c1 - c0)) $(field "$tok" errors)" >> "$rows"

  # charge-by-token: payvault (on the same server and database), then its ceiling
  : > "$work/tokens"
  for i in $(seq 1 "$CHARGE_TOKENS"); do
    answer=$(curl -fs -H "Authorization: $auth" "http://127.0.0.1:$PORT/" \
      -d "{\"method\":\"tokenize\",\"transaction_id\":\"seed-$round-$i\",\"cardnumber\":\"4111111111111111\",\"expiry_month\":\"08\",\"expiry_year\":\"35\"}")
    printf '%s\n' "$answer" | sed -E 's/.*"token_id":"([^"]+)".*/\1/' >> "$work/tokens"
  done
  c0=$(checkpoints)
  local chg; chg=$(run_wrk charge_token.lua "$auth" "$work/tokens")
  c1=$(checkpoints)
  local chg_cp=$((c1 - c0))
  rss=$(peak_rss_mb)
  local unsealed; unsealed=$(psql "$URL" -Atc "SELECT count(*) FROM audit_unsealed")
  [ "$unsealed" -gt "$unsealed_max" ] && unsealed_max=$unsealed
  stop_server
  fresh_db "$sync"
  psql "$URL" -q -v cred="$cred_id" -v tokens="$CHARGE_TOKENS" -f scripts/bench/charge_seed.sql >/dev/null
  c0=$(checkpoints)
  res=$(run_pgbench charge_ceiling.sql -D cred="$cred_id" -D tokens="$CHARGE_TOKENS")
  c1=$(checkpoints)
  echo "$round $sync charge-by-token $(field "$chg" rps) $(field "$chg" p99) $(field "$res" tps) $(field "$res" p99) $((c1 - c0))/$chg_cp $(field "$chg" errors)" >> "$rows"

  if [ "$SEALING_PAUSED" = 1 ]; then
    fresh_db "$sync"
    start_server env PAYVAULT_AUDIT_SEAL_INTERVAL_MS=3600000
    local nos; nos=$(run_wrk tokenize.lua "$auth")
    stop_server
    echo "$round $sync tokenize-sealing-paused $(field "$nos" rps) $(field "$nos" p99) $(field "$tok_ceiling" tps) $(field "$tok_ceiling" p99) - $(field "$nos" errors)" >> "$rows"
  fi
  echo "round $round (synchronous_commit=$sync) done"
}

for r in $(seq 1 "$ROUNDS"); do one_round "$r" on; done
[ "$SYNC_OFF_ROUND" = 1 ] && one_round "$((ROUNDS + 1))" off

echo
echo "== payvault benchmark: $(nproc) cores, $CONNECTIONS connections (payvault's database pool: $DB_POOL), ${DURATION}s per run, $ROUNDS rounds"
echo "| round | synchronous_commit | workload | payvault req/s | p99 ms | ceiling/s | ceiling p99 ms | x ceiling | p99 / ceiling p99 | checkpoints (ceiling/payvault) | errors |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
while read -r round sync wl rps p99 ceil cp99 cps errs; do
  echo "| $round | $sync | $wl | $rps | $p99 | $ceil | $cp99 | $(ratio "$rps" "$ceil") | $(ratio "$p99" "$cp99") | $cps | $errs |"
done < "$rows"
echo
echo "| workload (synchronous_commit=on rounds) | median x ceiling (min-max) | median p99 / ceiling p99 (min-max) |"
echo "|---|---|---|"
for wl in tokenize charge-by-token tokenize-sealing-paused; do
  grep -q " on $wl " "$rows" || continue
  x=$(awk -v w="$wl" '$2 == "on" && $3 == w && $6 > 0 { printf "%.4f\n", $4 / $6 }' "$rows" | median_spread)
  p=$(awk -v w="$wl" '$2 == "on" && $3 == w && $7 > 0 { printf "%.4f\n", $5 / $7 }' "$rows" | median_spread)
  echo "| $wl | $x | $p |"
done
echo
echo "peak RSS of payvault under load: ${rss} MB; startup to ready: ${first_startup_ms} ms (database up, migrations applied)"
echo "audit events still unsealed right after a load (worst round): $unsealed_max"
