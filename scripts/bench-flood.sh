#!/usr/bin/env bash
# Abuse benchmark (issue 13). Builds payvault in release mode (or takes BIN), starts it against a
# fresh database, and measures on this machine, in this run:
#   1. a legitimate request with a cold credential cache (each probe uses a credential this
#      instance has never verified), alone and then under a bad-credential flood: wrk holds
#      CONNECTIONS connections sending failing Basic credentials (half random unknown usernames,
#      half the probes' own usernames with wrong secrets) from 127.0.0.1, while the probes come
#      from 127.0.0.2 with curl, one every 200 ms; also a warm-cache probe (a credential verified
#      before the flood);
#   2. RSS and the size of /metrics before and after METHODS requests with random HTTP methods,
#      twice (the first round may add the bounded `other` series; the second must add nothing).
# Needs PostgreSQL (ADMIN_URL), wrk, psql, curl and python3. Traffic stays on loopback.
#   scripts/bench-flood.sh
#   BIN=path/to/old/payvault scripts/bench-flood.sh     # the same measurements of another build
set -euo pipefail
cd "$(dirname "$0")/.."
ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
CONNECTIONS=${CONNECTIONS:-300}
PROBES=${PROBES:-40}
METHODS=${METHODS:-3000}
PROBE_TIMEOUT=${PROBE_TIMEOUT:-15}   # seconds; Twilio gives up at 10
PORT=${PORT:-18081}
DB=payvault_bench_flood
URL="${ADMIN_URL%/*}/$DB"
for tool in wrk psql curl python3; do
  command -v "$tool" >/dev/null || { echo "bench-flood: $tool is required" >&2; exit 1; }
done
if [ -z "${BIN:-}" ]; then
  echo "== building payvault (release)"
  cargo build --release --quiet
  BIN=target/release/payvault
fi
work=$(mktemp -d)
server_pid=""
flood_pid=""
cleanup() {
  [ -n "$flood_pid" ] && kill "$flood_pid" 2>/dev/null
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  wait 2>/dev/null; rm -rf "$work"
}
trap cleanup EXIT

psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
DATABASE_URL=$URL $BIN migrate >/dev/null
key=$($BIN keys generate | tail -1)
# Credentials: one warm (verified before the flood) and 2 x PROBES cold ones, each used once.
create() { DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" $BIN credentials create --name "$1" --kind connector --format json; }
cred_auth() { local u s; u=$(sed -E 's/.*"username":"([^"]+)".*/\1/' "$1"); s=$(sed -E 's/.*"secret":"([^"]+)".*/\1/' "$1"); printf '%s:%s' "$u" "$s"; }
create warm > "$work/warm.json"
: > "$work/usernames"
for i in $(seq 1 $((2 * PROBES))); do
  create "probe-$i" > "$work/probe-$i.json"
  sed -E 's/.*"username":"([^"]+)".*/\1/' "$work/probe-$i.json" >> "$work/usernames"
done

DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" PAYVAULT_LISTEN=127.0.0.1:$PORT PAYVAULT_PROCESSOR=sandbox \
  PAYVAULT_ENV=development PAYVAULT_LOG=warn PAYVAULT_NO_MIGRATE=true $BIN serve >/dev/null 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 500); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.01; done
curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null || { cat "$work/server.log" >&2; exit 1; }

# One probe: a tokenize from 127.0.0.2 as credential file $1; prints "status seconds".
probe() {
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time "$PROBE_TIMEOUT" --interface 127.0.0.2 \
    -u "$(cred_auth "$1")" "http://127.0.0.1:$PORT/" \
    -d "{\"method\":\"tokenize\",\"transaction_id\":\"p-$RANDOM-$RANDOM\",\"cardnumber\":\"4111111111111111\",\"expiry_month\":\"08\",\"expiry_year\":\"35\"}" \
    || true   # a timeout prints status 000 and counts as non-200
}
# Percentiles (ms) of the seconds in column 2 of file $1, and the non-200 count.
summary() {
  python3 - "$1" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
t = sorted(float(r[1]) * 1000 for r in rows)
bad = sum(1 for r in rows if r[0] != "200")
pct = lambda p: t[min(len(t) - 1, int(round(p / 100 * (len(t) - 1))))]
print(f"n={len(t)} p50={pct(50):.1f} p99={pct(99):.1f} max={t[-1]:.1f} non200={bad}")
PY
}

echo "== cold-cache probes, no flood"
: > "$work/quiet"
for i in $(seq 1 "$PROBES"); do probe "$work/probe-$i.json" >> "$work/quiet"; sleep 0.2; done
quiet=$(summary "$work/quiet"); echo "$quiet"
probe "$work/warm.json" >/dev/null   # the warm credential is now cached

echo "== cold-cache probes under a $CONNECTIONS-connection bad-credential flood"
wrk -t2 -c"$CONNECTIONS" -d600s --timeout 30s -s scripts/bench/flood.lua "http://127.0.0.1:$PORT" -- "$work/usernames" \
  > "$work/flood.out" 2>&1 &
flood_pid=$!
sleep 3   # let the flood reach full strength before probing
: > "$work/flooded"; : > "$work/warm"
for i in $(seq $((PROBES + 1)) $((2 * PROBES))); do
  probe "$work/probe-$i.json" >> "$work/flooded"
  probe "$work/warm.json" >> "$work/warm"
  sleep 0.2
done
rss_flood=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$server_pid/status")
kill -INT "$flood_pid"; wait "$flood_pid" 2>/dev/null || true; flood_pid=""
flooded=$(summary "$work/flooded"); echo "$flooded"
warm=$(summary "$work/warm"); echo "warm: $warm"
flood=$(grep '^RESULT' "$work/flood.out" | sed 's/^RESULT //' || true)
echo "flood: ${flood:-(wrk printed no summary)}"

echo "== $METHODS random HTTP methods"
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$server_pid/status"; }
metrics_size() { curl -s "http://127.0.0.1:$PORT/metrics" | wc -c; }
random_methods() {
  python3 - "$PORT" "$METHODS" <<'PY'
import http.client, random, string, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    method = "".join(random.choice(string.ascii_uppercase) for _ in range(12))
    try:
        conn.request(method, random.choice(["/", "/v1/tokens/tok_x", "/healthz", "/nowhere"]))
        conn.getresponse().read()
    except (http.client.HTTPException, OSError):
        conn.close(); conn = http.client.HTTPConnection("127.0.0.1", port)
PY
}
rss_before=$(rss); metrics_before=$(metrics_size)
random_methods
rss_once=$(rss); metrics_once=$(metrics_size)
random_methods
rss_after=$(rss); metrics_after=$(metrics_size)
echo "RSS ${rss_before} -> ${rss_once} -> ${rss_after} MB; /metrics ${metrics_before} -> ${metrics_once} -> ${metrics_after} bytes"

field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
cat <<REPORT

== payvault abuse benchmark: $(nproc) cores, $CONNECTIONS flood connections, $PROBES probes each
| legitimate request | p50 ms | p99 ms | max ms | non-200 |
|---|---|---|---|---|
| cold cache, no flood | $(field "$quiet" p50) | $(field "$quiet" p99) | $(field "$quiet" max) | $(field "$quiet" non200) |
| cold cache, under the flood | $(field "$flooded" p50) | $(field "$flooded" p99) | $(field "$flooded" max) | $(field "$flooded" non200) |
| warm cache, under the flood | $(field "$warm" p50) | $(field "$warm" p99) | $(field "$warm" max) | $(field "$warm" non200) |

flood answers: ${flood:-n/a}; peak RSS during the flood: ${rss_flood} MB
$METHODS random methods, twice: RSS ${rss_before} -> ${rss_once} -> ${rss_after} MB, /metrics ${metrics_before} -> ${metrics_once} -> ${metrics_after} bytes
REPORT
