#!/usr/bin/env bash
# payvault at scale (issue 17, item 4); `scripts/bench.sh --scale` runs this script.
#
# Loads a benchmark database with SCALE_ENTRIES vault entries and SCALE_EVENTS audit events,
# all through payvault itself, then measures what the issue asks of a loaded vault:
#   1. load: a generated CSV of SCALE_ENTRIES Luhn-valid test cards (written to a file and
#      streamed by the importer) is imported with `payvault import --audit-each-row` under
#      source s1 (one vault entry and one MAC'd `import_row` event per card), then imported
#      again under sources s2, s3, ... with PAYVAULT_DEDUP=on: every card is then a duplicate
#      of its entry, no new entry is made, and each row writes one more `import_row` event for
#      the existing token (the last pass imports only the rows still needed). So each token has
#      about SCALE_EVENTS/SCALE_ENTRIES events, written, MAC'd and sealed by payvault's own
#      writer; nothing is written by hand. Sealing is paused during the imports (PAUSE_SEALING=1,
#      the default: a psql session holds the sealing advisory lock, so each import's seal before
#      it exits finds the lock taken and leaves its events queued), then `payvault audit seal`
#      seals everything queued in one drain, timed (events/s). PAUSE_SEALING=0: each import seals
#      before it exits, as before. LOAD_JOBS (default 2) deduplicating passes run at once.
#      Waits (with a deadline) until nothing is left unsealed, then VACUUM ANALYZE (what
#      autovacuum does on its own some time after a bulk load; done here so the plans are
#      those of a settled table);
#   2. database size per vault entry and per audit event (pg_total_relation_size: heap, TOAST
#      and indexes; events counted with their seals);
#   3. `audit list` plans and timings: EXPLAIN ANALYZE of the query the CLI and the API send
#      (src/store/audit.rs, unnamed statement so planned for its values), by token and by time
#      range (time order: a later page adds its cursor's lookup), first and later pages,
#      AUDIT_SAMPLES random queries each; and the statement the
#      query was before this change, as a prepared statement on a generic plan;
#   4. `GET /v1/audit/events` p50/p99 with wrk (LIST_CONNECTIONS connections, DURATION s each):
#      random tokens (first page; a later page with a cursor), random time windows holding
#      about 1,000 and about 100,000 events (first page; a later page from the middle);
#   5. tokenize throughput (wrk, scripts/bench/tokenize.lua as in bench.sh) on the loaded
#      database against a fresh empty one, interleaved over ROUNDS rounds (empty, loaded, ...);
#   6. `payvault audit verify` over the whole chain: events/s;
#   7. `payvault keys rotate` of every entry to a new master key version 2: entries/s.
# Then drops its databases (KEEP_DB=1 keeps the loaded one, payvault_scale; its master key is
# not kept, so only key-less measurements, such as the plans of step 3, can be repeated on it).
# Load and sealing rates on the 2-core development machine: docs/benchmarks.md, "at scale" and
# "sealing throughput".
#
#   scripts/bench.sh --scale                                   # 1,000,000 entries, 10,000,000 events
#   SCALE_ENTRIES=50000 SCALE_EVENTS=500000 scripts/scale-bench.sh   # a small run to try it out
#   BIN=/path/to/payvault ROUNDS=3 DURATION=10 scripts/scale-bench.sh
# QUIET_FILE=/path: while measuring (steps 3 to 7, not the load), waits until no other file
# named like it (same directory, same prefix up to the first dash) exists, then creates it, and
# removes it at the end of the measurements or on exit.
# Needs PostgreSQL (ADMIN_URL), wrk, psql, python3, curl. Traffic stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export PGOPTIONS='--client-min-messages=warning'
SCALE_ENTRIES=${SCALE_ENTRIES:-1000000}
SCALE_EVENTS=${SCALE_EVENTS:-10000000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
LIST_CONNECTIONS=${LIST_CONNECTIONS:-2}
AUDIT_SAMPLES=${AUDIT_SAMPLES:-200}
SEAL_DEADLINE=${SEAL_DEADLINE:-3600}
PORT=${PORT:-18081}
DB=payvault_scale
EMPTY=payvault_scale_empty
URL="${ADMIN_URL%/*}/$DB"
EMPTY_URL="${ADMIN_URL%/*}/$EMPTY"
for tool in wrk psql curl python3; do
  command -v "$tool" >/dev/null || { echo "scale-bench: $tool is required" >&2; exit 1; }
done
if [ "$SCALE_EVENTS" -lt "$SCALE_ENTRIES" ]; then
  echo "scale-bench: SCALE_EVENTS must be at least SCALE_ENTRIES (one event per imported entry)" >&2
  exit 1
fi

if [ -z "${BIN:-}" ]; then
  echo "== building payvault (release)"
  cargo build --release --quiet
  BIN=${CARGO_TARGET_DIR:-target}/release/payvault
fi
work=$(mktemp -d)
server_pid=""
quiet_held=""
pause_pid=""
cleanup() {
  rm -f "$work/pause"
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  wait 2>/dev/null
  [ -n "$quiet_held" ] && rm -f "$quiet_held"
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $EMPTY WITH (FORCE)" >/dev/null 2>&1 || true
  if [ "${KEEP_DB:-0}" != 1 ]; then
    psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
since_s() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
per_s() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):,.0f}')" "$1" "$2"; }
q() { psql "$1" -XAtqc "$2"; }
report() { echo "$*" | tee -a "$work/report"; }

key=$($BIN keys generate | tail -1)
export PAYVAULT_OPERATOR=scale-bench
unset PAYVAULT_MASTER_KEY_FILE PAYVAULT_TOKEN_TTL_DAYS

# A migrated database with a connector credential "bench" (sets auth) and an API credential
# "auditor" with audit:read (sets audit_auth).
setup_db() { # name
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null
  local url="${ADMIN_URL%/*}/$1"
  DATABASE_URL=$url $BIN migrate >/dev/null
  local cred
  cred=$(DATABASE_URL=$url PAYVAULT_MASTER_KEY="$key" $BIN credentials create --name bench --kind connector --scopes connector,tokens:charge --format json)
  auth="Basic $(printf '%s:%s' "$(echo "$cred" | sed -E 's/.*"username":"([^"]+)".*/\1/')" "$(echo "$cred" | sed -E 's/.*"secret":"([^"]+)".*/\1/')" | base64 -w0)"
  cred=$(DATABASE_URL=$url PAYVAULT_MASTER_KEY="$key" $BIN credentials create --name auditor --kind api --scopes audit:read --format json)
  audit_auth="Basic $(printf '%s:%s' "$(echo "$cred" | sed -E 's/.*"username":"([^"]+)".*/\1/')" "$(echo "$cred" | sed -E 's/.*"secret":"([^"]+)".*/\1/')" | base64 -w0)"
}

start_server() { # database url
  if curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
    echo "bench: something already answers on 127.0.0.1:$PORT; stop it or set PORT" >&2
    exit 1
  fi
  DATABASE_URL=$1 PAYVAULT_MASTER_KEY="$key" PAYVAULT_LISTEN=127.0.0.1:$PORT PAYVAULT_PROCESSOR=sandbox \
    PAYVAULT_ENV=development PAYVAULT_LOG=warn PAYVAULT_NO_MIGRATE=true $BIN serve >/dev/null 2>"$work/server.log" &
  server_pid=$!
  local deadline=$(( $(date +%s) + 60 ))
  until curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.05
  done
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }

wait_sealed() { # database url
  local deadline=$(( $(date +%s) + SEAL_DEADLINE )) n
  while n=$(q "$1" "SELECT count(*) FROM audit_unsealed"); [ "$n" != 0 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "scale-bench: $n events still unsealed after ${SEAL_DEADLINE}s" >&2; exit 1; }
    sleep 1
  done
}

# The sealing advisory lock (src/store/seals.rs SEAL_LOCK), held by a psql session while
# $work/pause exists: every payvault sealer (each import's, before it exits) then finds it taken
# and seals nothing; the events stay queued, in the same tables, until `payvault audit seal`.
SEAL_LOCK=8097887154337049716
pause_sealing() { # database url
  touch "$work/pause"
  { echo "SELECT pg_advisory_lock($SEAL_LOCK);"; while [ -e "$work/pause" ]; do sleep 0.2; done; } \
    | psql "$1" -XAtq >/dev/null &
  pause_pid=$!
  local deadline=$(( $(date +%s) + 60 ))
  until [ "$(q "$1" "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $SEAL_LOCK")" = 1 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "scale-bench: could not take the sealing lock" >&2; exit 1; }
    sleep 0.1
  done
}
resume_sealing() {
  rm -f "$work/pause"
  wait "$pause_pid" 2>/dev/null || true
  pause_pid=""
}

# ---------------------------------------------------------------------------------------------
echo "== 1. load: $SCALE_ENTRIES entries, $SCALE_EVENTS events ($(date -u +%FT%TZ))"
setup_db "$DB"
python3 - "$SCALE_ENTRIES" "$work/cards.csv" <<'EOF'
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
load_start=$(now)
[ "${PAUSE_SEALING:-1}" = 1 ] && pause_sealing "$URL"
# One import pass: $1 = pass number, $2 = rows. Pass 1 makes the entries (deduplication off:
# two batches in flight); later passes deduplicate, LOAD_JOBS of them at once.
import_pass() {
  local pass=$1 rows=$2 input=$work/cards.csv dedup=on t0 s
  [ "$pass" = 1 ] && dedup=off
  if [ "$rows" -lt "$SCALE_ENTRIES" ]; then
    head -n $((rows + 1)) "$work/cards.csv" > "$work/part$pass.csv"
    input=$work/part$pass.csv
  fi
  t0=$(now)
  DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" PAYVAULT_DEDUP=$dedup $BIN import "$input" --source "s$pass" \
    --credential bench --audit-each-row --result "$work/result$pass.jsonl" >"$work/import$pass.out" 2>"$work/import$pass.log" \
    || { echo "import pass $pass failed:" >&2; tail -5 "$work/import$pass.log" >&2; return 1; }
  s=$(since_s "$t0")
  local what="events written and sealed"
  [ -n "$pause_pid" ] && what="events written, sealing paused"
  report "import pass $pass: $rows rows in ${s} s = $(per_s "$rows" "$s") rows/s ($what; $(tail -1 "$work/import$pass.out" | cut -d';' -f1))"
  rm -f "$work/result$pass.jsonl" "$work/part$pass.csv"
}
import_pass 1 "$SCALE_ENTRIES"
left=$((SCALE_EVENTS - SCALE_ENTRIES))
pass=1
pids=()
while [ "$left" -gt 0 ]; do
  pass=$((pass + 1))
  rows=$(( left < SCALE_ENTRIES ? left : SCALE_ENTRIES ))
  while [ "$(jobs -rp | wc -l)" -ge "${LOAD_JOBS:-2}" ]; do sleep 1; done
  import_pass "$pass" "$rows" &
  pids+=($!)
  left=$((left - rows))
done
for p in "${pids[@]}"; do wait "$p"; done
rm -f "$work/cards.csv"
report "imports: $(since_s "$load_start") s"
if [ -n "$pause_pid" ]; then
  resume_sealing
  report "queued for sealing: $(q "$URL" "SELECT count(*) FROM audit_unsealed") events"
  out=$(DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" $BIN audit seal)
  report "seal after the load: $out"
fi
wait_sealed "$URL"
report "load: $(since_s "$load_start") s in all"
t0=$(now)
# The sealing queue too: the drain left one dead row per event in it, which every sealing pass
# would walk over (autovacuum takes it after every 10,000 dead rows, migration 20261228000001,
# where autovacuum is on; the development machine's PostgreSQL runs with autovacuum = off).
psql "$URL" -qc "VACUUM (ANALYZE) audit_events" -c "VACUUM (ANALYZE) audit_seals" -c "VACUUM (ANALYZE) vault_entries" -c "VACUUM (ANALYZE) import_sources" -c "VACUUM (ANALYZE) audit_unsealed"
report "VACUUM ANALYZE after the load: $(since_s "$t0") s"
entries=$(q "$URL" "SELECT count(*) FROM vault_entries")
events=$(q "$URL" "SELECT count(*) FROM audit_events")
report "loaded: $entries vault entries, $events audit events, $(q "$URL" "SELECT count(*) FROM audit_seals") seals, 0 unsealed"

# ---------------------------------------------------------------------------------------------
echo "== 2. sizes"
q "$URL" "
SELECT format('%s: %s (heap %s, indexes %s)', c, pg_size_pretty(pg_total_relation_size(c)),
              pg_size_pretty(pg_relation_size(c)), pg_size_pretty(pg_indexes_size(c)))
FROM unnest(ARRAY['vault_entries', 'audit_events', 'audit_seals', 'import_sources']::regclass[]) c" | tee -a "$work/report"
q "$URL" "
SELECT format('index %s: %s', indexrelid::regclass, pg_size_pretty(pg_relation_size(indexrelid)))
FROM pg_index WHERE indrelid = 'audit_events'::regclass ORDER BY indexrelid" | tee -a "$work/report"
report "per vault entry: $(q "$URL" "SELECT round(pg_total_relation_size('vault_entries') / count(*)::numeric) FROM vault_entries") bytes (vault_entries with its indexes and TOAST)"
report "per audit event: $(q "$URL" "SELECT round((pg_total_relation_size('audit_events') + pg_total_relation_size('audit_seals')) / count(*)::numeric) FROM audit_events") bytes (audit_events and audit_seals with their indexes)"
report "per import record: $(q "$URL" "SELECT round(pg_total_relation_size('import_sources') / count(*)::numeric) FROM import_sources") bytes (import_sources, $(q "$URL" "SELECT count(*) FROM import_sources") rows: one per imported row and source)"
report "database: $(q "$URL" "SELECT pg_size_pretty(pg_database_size(current_database()))")"

# ---------------------------------------------------------------------------------------------
# Measurements: under the quiet protocol when asked.
if [ -n "${QUIET_FILE:-}" ]; then
  prefix="${QUIET_FILE%%-*}"
  while others=$(ls "$prefix"* 2>/dev/null | grep -vx "$QUIET_FILE" || true); [ -n "$others" ]; do
    echo "waiting for $others to go"
    sleep 30
  done
  touch "$QUIET_FILE"
  quiet_held=$QUIET_FILE
fi
echo "== measuring from $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
report "measurements started $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# Query samples: tokens with the id of their 3rd event (a later-page cursor), and time windows
# of about 1,000 and 100,000 events (widths from the load's average event rate), each with a
# cursor in its middle.
q "$URL" "
SELECT t.token, (SELECT id FROM audit_events a WHERE a.token = t.token ORDER BY id OFFSET 2 LIMIT 1)
FROM (SELECT token FROM vault_entries TABLESAMPLE SYSTEM (5) ORDER BY random() LIMIT $AUDIT_SAMPLES) t" \
  | tr '|' ' ' > "$work/tokens"
rate=$(q "$URL" "SELECT count(*) / greatest(extract(epoch FROM max(occurred_at) - min(occurred_at)), 1) FROM audit_events WHERE action = 'import_row'")
report "load's event rate: $(printf '%.0f' "$rate") events/s of occurred_at (window widths below derive from it)"
# Each window: since, until, and a cursor in its middle (the first event from id + w/2 on: an
# event that exists, as a time range's cursor must) with that event's occurred_at.
ts="'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'"
for w in 1000 100000; do
  q "$URL" "
  SELECT to_char(s.occurred_at AT TIME ZONE 'UTC', $ts),
         to_char((s.occurred_at + make_interval(secs => $w / $rate)) AT TIME ZONE 'UTC', $ts),
         c.id, to_char(c.occurred_at AT TIME ZONE 'UTC', $ts)
  FROM (SELECT id, occurred_at FROM audit_events TABLESAMPLE SYSTEM (1) WHERE action = 'import_row'
        ORDER BY random() LIMIT $AUDIT_SAMPLES) s
  CROSS JOIN LATERAL (SELECT id, occurred_at FROM audit_events WHERE id >= s.id + $w / 2 ORDER BY id LIMIT 1) c" \
    | tr '|' ' ' > "$work/windows$w"
done

# The statement list_audit_events sends for each shape (only the filters given, ORDER BY id LIMIT).
select_list="id, occurred_at, request_id, actor_id, actor_kind, action, outcome, error_code, client_addr, forwarded_for, token, transaction_id, masked_data, amount_minor, currency, details::text AS details, writer_id, writer_seq, mac_key_version, mac, tenant_id"
explain_timings() { # label, file of statements, pairs (1: pairs of step1, step2, the second
  # counted only when the first returned under 100 rows; 2: pairs whose times are both counted)
  local out=$work/explain.out
  psql "$URL" -XAtq -f "$2" > "$out"
  # Each plan: its first line (the top node, with the rows it returned) and its execution time.
  awk -v two="${3:-0}" '
    /actual time=/ && !top { top = 1; match($0, /rows=[0-9]+ loops/); rows = substr($0, RSTART + 5, RLENGTH - 11) + 0 }
    /Execution Time/ { t = $(NF - 1); top = 0
      if (two != 1 && two != 2) { print t; next }
      if (!half) { half = 1; first = t; firstrows = rows; next }
      half = 0; print ((two == 2 || firstrows < 100) ? first + t : first) }' "$out" | sort -g \
    | awk -v l="$1" '{v[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%s: %d queries, median %.2f ms, p99 %.2f ms, max %.2f ms\n", l, NR, v[int((NR+1)/2)], v[i], v[NR]}' \
    | tee -a "$work/report"
}
plan_of() { # label, statement
  echo "-- plan: $1"
  psql "$URL" -XAtqc "EXPLAIN (ANALYZE, BUFFERS) $2" | sed 's/^/   /'
}
: > "$work/q_tok1"; : > "$work/q_tok2"; : > "$work/q_w1"; : > "$work/q_w2"; : > "$work/q_W1"; : > "$work/q_W2"
while read -r tok cur; do
  echo "EXPLAIN ANALYZE SELECT $select_list FROM audit_events WHERE id > 0 AND token = '$tok' ORDER BY id LIMIT 100;" >> "$work/q_tok1"
  echo "EXPLAIN ANALYZE SELECT $select_list FROM audit_events WHERE id > ${cur:-0} AND token = '$tok' ORDER BY id LIMIT 3;" >> "$work/q_tok2"
done < "$work/tokens"
# A time range pages in time order (src/store/audit.rs, list_audit_events): a first page is one
# statement, the window read in (occurred_at, id) order from audit_events_occurred_at_id_idx; a
# later page first looks up its cursor's occurred_at (with the tenant filter; none here: the
# CLI's query) and then reads on from (occurred_at, id) of the cursor (or from since, when the
# cursor's time is before it). explain_timings adds the two statements' times.
first_page() { echo "SELECT $select_list FROM audit_events WHERE TRUE AND occurred_at >= '$1' AND occurred_at < '$2' ORDER BY occurred_at, id LIMIT 100"; }
cursor_lookup() { echo "SELECT occurred_at FROM audit_events WHERE id = $1"; }
later_page() { # since, until, cursor id, cursor occurred_at
  local from="(occurred_at, id) > ('$4', $3)"
  if [[ "$4" < "$1" ]]; then from="occurred_at >= '$1'"; fi
  echo "SELECT $select_list FROM audit_events WHERE TRUE AND $from AND occurred_at < '$2' ORDER BY occurred_at, id LIMIT 100"
}
while read -r a b c tc; do
  echo "EXPLAIN ANALYZE $(first_page "$a" "$b");" >> "$work/q_w1"
  echo "EXPLAIN ANALYZE $(cursor_lookup "$c"); EXPLAIN ANALYZE $(later_page "$a" "$b" "$c" "$tc");" >> "$work/q_w2"
done < "$work/windows1000"
while read -r a b c tc; do
  echo "EXPLAIN ANALYZE $(first_page "$a" "$b");" >> "$work/q_W1"
  echo "EXPLAIN ANALYZE $(cursor_lookup "$c"); EXPLAIN ANALYZE $(later_page "$a" "$b" "$c" "$tc");" >> "$work/q_W2"
done < "$work/windows100000"
echo "== 3. audit list: the query's plans (psql EXPLAIN ANALYZE, execution time inside PostgreSQL)"
read -r tok cur < "$work/tokens"
read -r a b c tc < "$work/windows1000"
read -r A B C TC < "$work/windows100000"
plan_of "by token, first page" "SELECT $select_list FROM audit_events WHERE id > 0 AND token = '$tok' ORDER BY id LIMIT 100"
plan_of "by time range (~1,000 events), first page" "$(first_page "$a" "$b")"
plan_of "by time range (~100,000 events), first page" "$(first_page "$A" "$B")"
plan_of "by time range (~100,000 events), later page: the cursor's time" "$(cursor_lookup "$C")"
plan_of "by time range (~100,000 events), later page" "$(later_page "$A" "$B" "$C" "$TC")"
plan_of "by time range (~100,000 events), first page in id order (before session 7): what PostgreSQL picks" "SELECT $select_list FROM audit_events WHERE id > 0 AND occurred_at >= '$A' AND occurred_at < '$B' ORDER BY id LIMIT 100"
old="SELECT $select_list FROM audit_events WHERE id > \$1 AND (\$2::timestamptz IS NULL OR occurred_at >= \$2) AND (\$3::timestamptz IS NULL OR occurred_at < \$3) AND (\$4::text IS NULL OR action = \$4) AND (\$5::text IS NULL OR actor_id::text = \$5 OR actor_id IN (SELECT id FROM credentials WHERE username = \$5 OR name = \$5)) AND (\$6::text IS NULL OR token = \$6) AND (\$7::text IS NULL OR transaction_id = \$7) AND (\$8::text IS NULL OR outcome = \$8) AND (\$10::uuid IS NULL OR tenant_id = \$10) ORDER BY id LIMIT \$9"
echo "-- plan: the statement before this change, by token, as a prepared statement on its generic plan (what a pooled connection ran after 5 calls)"
psql "$URL" -XAtq -c "SET plan_cache_mode = force_generic_plan" -c "PREPARE old(bigint, timestamptz, timestamptz, text, text, text, text, text, bigint, uuid) AS $old" \
  -c "EXPLAIN (ANALYZE, BUFFERS) EXECUTE old(0, NULL, NULL, NULL, NULL, '$tok', NULL, NULL, 100, NULL)" | sed 's/^/   /' | tee "$work/old_plan"
report "old statement, generic plan, by token: $(grep 'Execution Time' "$work/old_plan" | sed 's/^ *//')"
explain_timings "plan timing, by token, first page" "$work/q_tok1"
explain_timings "plan timing, by token, later page (cursor, limit 3)" "$work/q_tok2"
explain_timings "plan timing, by time range ~1,000 events, first page" "$work/q_w1"
explain_timings "plan timing, by time range ~1,000 events, later page (lookup + page)" "$work/q_w2" 2
explain_timings "plan timing, by time range ~100,000 events, first page" "$work/q_W1"
explain_timings "plan timing, by time range ~100,000 events, later page (lookup + page)" "$work/q_W2" 2

# ---------------------------------------------------------------------------------------------
echo "== 4. GET /v1/audit/events (wrk, $LIST_CONNECTIONS connections, ${DURATION}s each; every read also writes its audit_read event)"
awk '{print "token=" $1}' "$work/tokens" > "$work/u_tok1"
awk '$2 != "" {print "token=" $1 "&limit=3&cursor=" $2}' "$work/tokens" > "$work/u_tok2"
awk '{print "since=" $1 "&until=" $2}' "$work/windows1000" > "$work/u_w1"
awk '{print "since=" $1 "&until=" $2 "&cursor=" $3}' "$work/windows1000" > "$work/u_w2"
awk '{print "since=" $1 "&until=" $2}' "$work/windows100000" > "$work/u_W1"
awk '{print "since=" $1 "&until=" $2 "&cursor=" $3}' "$work/windows100000" > "$work/u_W2"
# PostgreSQL's checkpoints so far and the milliseconds they spent writing and syncing files:
# the difference over a shape says whether a checkpoint fell inside it (each API read commits
# its audit_read event, and a commit's WAL flush can wait behind a checkpoint's file syncs).
checkpoint_state() { q "$ADMIN_URL" "SELECT checkpoints_timed + checkpoints_req, round(checkpoint_write_time), round(checkpoint_sync_time) FROM pg_stat_bgwriter"; }
checkpoint_delta() { # before, after ("n|write ms|sync ms")
  awk -F'|' -v a="$1" -v b="$2" 'BEGIN { split(a, x, "|"); split(b, y, "|");
    printf "checkpoints %d (write %d ms, sync %d ms)", y[1] - x[1], y[2] - x[2], y[3] - x[3] }'
}
start_server "$URL"
for spec in "u_tok1:by token, first page" "u_tok2:by token, later page" "u_w1:by time range ~1,000 events, first page" \
            "u_w2:by time range ~1,000 events, later page" "u_W1:by time range ~100,000 events, first page" \
            "u_W2:by time range ~100,000 events, later page"; do
  file=${spec%%:*}
  cp0=$(checkpoint_state)
  res=$(wrk -t"$LIST_CONNECTIONS" -c"$LIST_CONNECTIONS" -d"${DURATION}s" --timeout 10s -s scripts/bench/audit_list.lua \
    "http://127.0.0.1:$PORT" -- "$audit_auth" "$work/$file" | grep '^RESULT' | sed 's/^RESULT //')
  report "API ${spec#*:}: $res; $(checkpoint_delta "$cp0" "$(checkpoint_state)")"
done
wait_sealed "$URL"
stop_server

# ---------------------------------------------------------------------------------------------
echo "== 5. tokenize: loaded vs empty, interleaved ($ROUNDS rounds, $CONNECTIONS connections, ${DURATION}s each)"
loaded_auth=$auth
for r in $(seq 1 "$ROUNDS"); do
  setup_db "$EMPTY"
  start_server "$EMPTY_URL"
  e=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s scripts/bench/tokenize.lua "http://127.0.0.1:$PORT" -- "$auth" | grep '^RESULT' | sed 's/^RESULT //')
  stop_server
  start_server "$URL"
  l=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s scripts/bench/tokenize.lua "http://127.0.0.1:$PORT" -- "$loaded_auth" | grep '^RESULT' | sed 's/^RESULT //')
  wait_sealed "$URL"
  stop_server
  er=$(echo "$e" | sed -E 's/.*rps=([0-9.]+).*/\1/'); lr=$(echo "$l" | sed -E 's/.*rps=([0-9.]+).*/\1/')
  echo "$er $lr" >> "$work/tok_rounds"
  report "tokenize round $r: empty $e | loaded $l | loaded/empty $(python3 -c "print(f'{$lr / $er:.3f}')")"
done
report "tokenize loaded/empty: median of rounds $(python3 -c "
import statistics, sys
r = [float(l.split()[1]) / float(l.split()[0]) for l in open(sys.argv[1])]
print(f'{statistics.median(r):.3f} (min {min(r):.3f}, max {max(r):.3f})')" "$work/tok_rounds")"

# ---------------------------------------------------------------------------------------------
echo "== 6. audit verify"
t0=$(now)
out=$(DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" $BIN audit verify)
s=$(since_s "$t0")
echo "$out"
n=$(echo "$out" | sed -nE 's/^([0-9]+) events verified.*/\1/p')
report "audit verify: ${n:-?} events in ${s} s = $(per_s "${n:-0}" "$s") events/s ($(echo "$out" | head -1 | cut -c1-60)...)"

# ---------------------------------------------------------------------------------------------
echo "== 7. keys rotate"
key2=$($BIN keys generate --version 2 | tail -1)
t0=$(now)
out=$(DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key2,$key" $BIN keys rotate 2>"$work/rotate.log")
s=$(since_s "$t0")
n=$(echo "$out" | sed -nE 's/^rotated ([0-9]+) entries.*/\1/p')
report "keys rotate: ${n:-?} entries in ${s} s = $(per_s "${n:-0}" "$s") entries/s"
report "measurements ended $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "$quiet_held" ] && rm -f "$quiet_held" && quiet_held=""

echo
echo "== payvault at scale: $(nproc) cores, $SCALE_ENTRIES entries, $SCALE_EVENTS events"
cat "$work/report"
