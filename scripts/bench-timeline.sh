#!/usr/bin/env bash
# Why does p99 jump? A second-by-second timeline of one long load (issue 17, item 6): tokenize
# (or charge-by-token) through payvault, then the same workload's database ceiling (pgbench), each
# for DURATION seconds, sampling once a second:
#   - payvault: requests finished and the p99 bucket of that second (from /metrics, the
#     payvault_http_request_duration_seconds histogram; buckets 1, 2.5, 5, 10, 25, 50, 100 ms ...);
#   - pgbench: transactions and p99 of that second (from its per-transaction --log);
#   - PostgreSQL: checkpoints started, buffers a checkpoint wrote, WAL bytes, backends waiting on
#     WAL (WALWrite/WALSync/WalSync/WALInsert), on a lock, or on the client (idle in transaction),
#     and autovacuum workers at work;
#   - payvault's sealer: events sealed that second and events waiting (audit_unsealed);
#   - payvault's pool: idle connections.
# Then the seconds whose p99 is at least twice the run's median are listed with what they share.
#   scripts/bench-timeline.sh                      # tokenize, 60 s each side
#   WORKLOAD=charge DURATION=90 BIN=/tmp/payvault scripts/bench-timeline.sh
# Needs PostgreSQL (ADMIN_URL), wrk, pgbench, psql and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DURATION=${DURATION:-60}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
WORKLOAD=${WORKLOAD:-tokenize}
CHARGE_TOKENS=${CHARGE_TOKENS:-200}
PORT=${PORT:-18082}
DB=payvault_bench_timeline
URL="${ADMIN_URL%/*}/$DB"
case "$WORKLOAD" in tokenize|charge) ;; *) echo "WORKLOAD must be tokenize or charge" >&2; exit 2 ;; esac
for tool in wrk pgbench psql curl; do
  command -v "$tool" >/dev/null || { echo "bench-timeline: $tool is required" >&2; exit 1; }
done
if [ -z "${BIN:-}" ]; then cargo build --release --quiet; BIN=target/release/payvault; fi
work=$(mktemp -d)
server_pid=""
sampler_pid=""
cleanup() {
  [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  wait 2>/dev/null
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
key=$($BIN keys generate | tail -1)

fresh_db() {
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
  DATABASE_URL=$URL $BIN migrate >/dev/null
  DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" $BIN credentials create --name bench --kind connector \
    --scopes connector,tokens:charge --format json > "$work/cred.json" 2>/dev/null
  cred_id=$(sed -E 's/.*"id":"([^"]+)".*/\1/' "$work/cred.json")
  auth="Basic $(printf '%s:%s' "$(sed -E 's/.*"username":"([^"]+)".*/\1/' "$work/cred.json")" \
    "$(sed -E 's/.*"secret":"([^"]+)".*/\1/' "$work/cred.json")" | base64 -w0)"
}

# One sample line a second until killed: epoch checkpoints buffers_checkpoint wal_bytes
# wal_waiters lock_waiters client_waiters sealed_total unsealed autovacuum_workers [metrics file
# written aside].
sampler() { # with_metrics (1|0)
  local i=0
  while :; do
    local t; t=$(date +%s)
    psql "$URL" -AtF' ' -c "
      SELECT (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter),
             (SELECT buffers_checkpoint FROM pg_stat_bgwriter),
             pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
             (SELECT count(*) FROM pg_stat_activity WHERE wait_event IN ('WALWrite', 'WALSync', 'WalSync', 'WALInsert', 'WALBufMapping')),
             (SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'),
             (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'),
             coalesce((SELECT max(seq) FROM audit_seals), 0),
             (SELECT count(*) FROM audit_unsealed),
             (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker')" | sed "s/^/$t /"
    if [ "$1" = 1 ]; then
      curl -fs "http://127.0.0.1:$PORT/metrics" > "$work/metrics.$i" 2>/dev/null || true
      echo "$t" > "$work/metrics.$i.t"
    fi
    i=$((i + 1))
    # Wake on the next whole second, so that samples are one second apart.
    sleep "$(awk -v n="$(date +%N)" 'BEGIN { printf "%.3f", 1 - n / 1e9 }')"
  done
}

# Per-second requests and p99 bucket (ms) of the connector route, from two /metrics snapshots.
metrics_second() { # earlier file, later file
  local route='route="/",method="POST"'
  paste <(grep "^payvault_http_request_duration_seconds_bucket{.*$route" "$1" 2>/dev/null | sed -E 's/.*le="([^"]+)"\} ([0-9.e+]+)/\1 \2/') \
        <(grep "^payvault_http_request_duration_seconds_bucket{.*$route" "$2" 2>/dev/null | sed -E 's/.*le="([^"]+)"\} ([0-9.e+]+)/\2/') \
    | awk '{ le[NR] = $1; d[NR] = $3 - $2 } END {
        n = d[NR]; if (n <= 0) { print "0 -"; exit }
        for (i = 1; i <= NR; i++) if (d[i] >= 0.99 * n) { v = (le[i] == "+Inf") ? "inf" : le[i] * 1000; print n, v; exit } }'
}

start_server() {
  if curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
    echo "bench: something already answers on 127.0.0.1:$PORT; stop it or set PORT" >&2
    exit 1
  fi
  DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" PAYVAULT_LISTEN=127.0.0.1:$PORT PAYVAULT_PROCESSOR=sandbox \
    PAYVAULT_ENV=development PAYVAULT_LOG=warn PAYVAULT_NO_MIGRATE=true $BIN serve >/dev/null 2>"$work/server.log" &
  server_pid=$!
  local deadline=$((SECONDS + 10))
  until curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.01
  done
}

# --- payvault side ----------------------------------------------------------------------------
fresh_db
start_server
wrk_args=(tokenize.lua "$auth")
if [ "$WORKLOAD" = charge ]; then
  : > "$work/tokens"
  for i in $(seq 1 "$CHARGE_TOKENS"); do
    curl -fs -H "Authorization: $auth" "http://127.0.0.1:$PORT/" \
      -d "{\"method\":\"tokenize\",\"transaction_id\":\"seed-$i\",\"cardnumber\":\"4111111111111111\",\"expiry_month\":\"08\",\"expiry_year\":\"35\"}" \
      | sed -E 's/.*"token_id":"([^"]+)".*/\1/' >> "$work/tokens"
    echo >> "$work/tokens"
  done
  sed -i '/^$/d' "$work/tokens"
  wrk_args=(charge_token.lua "$auth" "$work/tokens")
fi
sampler 1 > "$work/pv.samples" &
sampler_pid=$!
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s "scripts/bench/${wrk_args[0]}" \
  "http://127.0.0.1:$PORT" -- "${wrk_args[@]:1}" | sed -n 's/^RESULT //p' > "$work/pv.result"
kill "$sampler_pid"; wait "$sampler_pid" 2>/dev/null || true; sampler_pid=""
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""

# --- ceiling side -----------------------------------------------------------------------------
fresh_db
script=ceiling.sql; dargs=(-D cred="$cred_id")
if [ "$WORKLOAD" = charge ]; then
  psql "$URL" -q -v cred="$cred_id" -v tokens="$CHARGE_TOKENS" -f scripts/bench/charge_seed.sql >/dev/null
  script=charge_ceiling.sql; dargs+=(-D tokens="$CHARGE_TOKENS")
fi
sampler 0 > "$work/pg.samples" &
sampler_pid=$!
pgbench -n -M prepared -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION" --log --log-prefix="$work/pglog" \
  "${dargs[@]}" -f "scripts/bench/$script" "$URL" > "$work/pg.out" 2>&1
kill "$sampler_pid"; wait "$sampler_pid" 2>/dev/null || true; sampler_pid=""

# --- report -----------------------------------------------------------------------------------
# Ceiling per second: transactions and p99 (ms) from the per-transaction log (epoch in field 5).
cat "$work"/pglog* | awk '{ print $5, $3 / 1000 }' | sort -k1,1n -k2,2g \
  | awk '{ n[$1]++; v[$1, n[$1]] = $2 } END { for (s in n) { i = int(n[s] * 0.99); if (i < 1) i = 1; printf "%d %d %.2f\n", s, n[s], v[s, i] } }' \
  | sort -n > "$work/pg.seconds"

# payvault per second: pair each metrics snapshot with the previous one.
: > "$work/pv.seconds"
i=1
while [ -e "$work/metrics.$i" ]; do
  echo "$(cat "$work/metrics.$i.t") $(metrics_second "$work/metrics.$((i - 1))" "$work/metrics.$i")" >> "$work/pv.seconds"
  i=$((i + 1))
done

# Deltas of the cumulative PostgreSQL counters, joined to each side's per-second figures.
deltas() { awk 'NR > 1 { printf "%s %d %d %.1f %d %d %d %d %d %d\n", $1, $2 - c, $3 - b, ($4 - w) / 1048576, $5, $6, $7, $8 - s, $9, $10 }
                { c = $2; b = $3; w = $4; s = $8 }' "$1"; }
deltas "$work/pv.samples" > "$work/pv.deltas"
deltas "$work/pg.samples" > "$work/pg.deltas"

report() { # side name, per-second file (epoch n p99), deltas file
  echo
  echo "### $1: second by second"
  echo "| s | done | p99 ms | checkpoints | ckpt buffers | WAL MiB | WAL waiters | lock waiters | idle in tx | sealed | unsealed | autovacuum |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  join <(sort -k1,1 "$2") <(sort -k1,1 "$3") | sort -n \
    | awk 'NR == 1 { t0 = $1 } { printf "| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1 - t0, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 }' \
    | tee "$work/table"
  local med
  med=$(awk -F'|' '$4 + 0 > 0 { print $4 + 0 }' "$work/table" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  echo
  echo "median per-second p99: ${med:-n/a} ms; seconds at >= 2x that:"
  awk -F'|' -v m="${med:-0}" 'm > 0 && ($4 == " inf " || $4 + 0 >= 2 * m) {
      printf "  s=%d p99=%s ms checkpoints=%d ckpt_buffers=%d WAL_waiters=%d sealed=%d unsealed=%d autovacuum=%d\n", $2, $4 + 0, $5, $6, $8, $11, $12, $13 }' "$work/table"
}
report "payvault ($WORKLOAD)" "$work/pv.seconds" "$work/pv.deltas"
report "ceiling (pgbench)" "$work/pg.seconds" "$work/pg.deltas"
echo
echo "payvault: $(cat "$work/pv.result")"
echo "ceiling: $(grep -E '^tps' "$work/pg.out" | head -1)"
