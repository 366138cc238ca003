#!/usr/bin/env bash
# Sealing throughput, and what `payvault import --audit-each-row` costs (issue 17, item 4).
#
# For each binary of BINS (default: a release build of this tree):
#   1. a fresh database; EVENTS generated test cards imported with `payvault import` WITHOUT
#      --audit-each-row into it (rows/s: the import alone), unless IMPORT_PLAIN=0;
#   2. another fresh database; the same cards imported WITH --audit-each-row while sealing is
#      paused (a psql session holds the sealing advisory lock, so the import's seal before it
#      exits finds the lock taken): rows/s of writing the entries and their MAC'd events, and
#      the events stay queued;
#   3. for each size of SEAL_BATCHES, a copy of that database (CREATE DATABASE ... TEMPLATE)
#      and one timed drain of its queue: `payvault audit seal --batch N`, which prints events/s
#      (a binary without `audit seal`: `payvault audit checkpoint`, timed here, which seals
#      everything queued before it exits; its own work is one read and one event).
# All through payvault itself, with one throwaway master key. Drops its databases at the end.
#
#   scripts/seal-bench.sh                                     # 200,000 events
#   EVENTS=1000000 SEAL_BATCHES="1000 10000" BINS="/tmp/old/payvault target/release/payvault" scripts/seal-bench.sh
# Needs PostgreSQL (ADMIN_URL), psql, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export PGOPTIONS='--client-min-messages=warning'
EVENTS=${EVENTS:-200000}
SEAL_BATCHES=${SEAL_BATCHES:-default}
DB_PREFIX=${DB_PREFIX:-payvault_sealbench}
if [ -z "${BINS:-}" ]; then
  cargo build --release --quiet
  BINS=${CARGO_TARGET_DIR:-target}/release/payvault
fi
SEAL_LOCK=8097887154337049716 # src/store/seals.rs SEAL_LOCK
work=$(mktemp -d)
dbs=()
cleanup() {
  rm -f "$work/pause"
  wait 2>/dev/null
  for d in "${dbs[@]}"; do psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
since_s() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
per_s() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):,.0f}')" "$1" "$2"; }
q() { psql "$1" -XAtqc "$2"; }
url_of() { echo "${ADMIN_URL%/*}/$1"; }
fresh_db() { # name
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null
  dbs+=("$1")
  DATABASE_URL=$(url_of "$1") $BIN migrate >/dev/null
  DATABASE_URL=$(url_of "$1") PAYVAULT_MASTER_KEY="$key" $BIN credentials create --name bench --kind connector \
    --scopes connector,tokens:charge --format json >/dev/null
}
import() { # database, label, extra args...
  local db=$1 label=$2 t0 s
  shift 2
  t0=$(now)
  DATABASE_URL=$(url_of "$db") PAYVAULT_MASTER_KEY="$key" PAYVAULT_DEDUP=off $BIN import "$work/cards.csv" --source s1 \
    --credential bench --result "$work/result.jsonl" "$@" >"$work/import.out" 2>"$work/import.log" \
    || { tail -5 "$work/import.log" >&2; exit 1; }
  s=$(since_s "$t0")
  echo "  import $label: $EVENTS rows in $s s = $(per_s "$EVENTS" "$s") rows/s"
}

python3 - "$EVENTS" "$work/cards.csv" <<'EOF'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
def luhn(body):
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return body + str((10 - total % 10) % 10)
with open(path, "w") as f:
    f.write("source_id,number,exp_month,exp_year,postal_code\n")
    for i in range(n):
        f.write(f"c{i},{luhn('4%014d' % i)},{i % 12 + 1},{2030 + i % 5},94111\n")
EOF

echo "seal-bench: $EVENTS events, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
n=0
for BIN in $BINS; do
  n=$((n + 1))
  key=$($BIN keys generate | tail -1)
  export PAYVAULT_OPERATOR=seal-bench
  unset PAYVAULT_MASTER_KEY_FILE PAYVAULT_TOKEN_TTL_DAYS
  echo "== $BIN"
  if [ "${IMPORT_PLAIN:-1}" = 1 ]; then
    fresh_db "${DB_PREFIX}_${n}_plain"
    import "${DB_PREFIX}_${n}_plain" "without --audit-each-row"
  fi
  loaded=${DB_PREFIX}_${n}_loaded
  fresh_db "$loaded"
  url=$(url_of "$loaded")
  touch "$work/pause"
  { echo "SELECT pg_advisory_lock($SEAL_LOCK);"; while [ -e "$work/pause" ]; do sleep 0.2; done; } | psql "$url" -XAtq >/dev/null &
  deadline=$(( $(date +%s) + 60 ))
  until [ "$(q "$url" "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $SEAL_LOCK")" = 1 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "seal-bench: could not take the sealing lock" >&2; exit 1; }
    sleep 0.1
  done
  import "$loaded" "with --audit-each-row, sealing paused" --audit-each-row
  rm -f "$work/pause"
  wait
  queued=$(q "$url" "SELECT count(*) FROM audit_unsealed")
  echo "  queued: $queued events"
  q "$url" "CHECKPOINT" >/dev/null
  for batch in $SEAL_BATCHES; do
    trial=${DB_PREFIX}_${n}_trial
    psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $trial WITH (FORCE)" -c "CREATE DATABASE $trial TEMPLATE $loaded" >/dev/null
    dbs+=("$trial")
    t0=$(now)
    if $BIN audit seal --help >/dev/null 2>&1; then
      args=(audit seal)
      [ "$batch" != default ] && args+=(--batch "$batch")
      out=$(DATABASE_URL=$(url_of "$trial") PAYVAULT_MASTER_KEY="$key" $BIN "${args[@]}")
      echo "  seal, batch $batch: $out"
    else
      DATABASE_URL=$(url_of "$trial") PAYVAULT_MASTER_KEY="$key" $BIN audit checkpoint >/dev/null
      s=$(since_s "$t0")
      echo "  seal (audit checkpoint, its built-in batch): $queued events in $s s = $(per_s "$queued" "$s") events/s"
    fi
    left=$(q "$(url_of "$trial")" "SELECT count(*) FROM audit_unsealed")
    [ "$left" = 0 ] || echo "  WARNING: $left events still queued after the seal"
    psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $trial WITH (FORCE)" >/dev/null
  done
done
echo "seal-bench: done $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
