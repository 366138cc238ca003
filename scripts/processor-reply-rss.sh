#!/usr/bin/env bash
# Memory of payvault when its processor floods it (issue 13, "Processor reply size"): a local
# gateway (the `generic` profile's format) answers every charge with an approval followed by
# 40 MiB of spaces, chunked, without Content-Length. payvault must stop reading at its 64 KiB
# limit while the answer streams, not buffer it. Prints payvault's RSS (VmRSS) before the first
# flood and after ROUNDS of them, and its peak (VmHWM). Traffic stays on loopback.
#   scripts/processor-reply-rss.sh                 # release build, 5 floods of 40 MiB
#   BIN=target/debug/payvault ROUNDS=10 scripts/processor-reply-rss.sh
# Needs PostgreSQL (ADMIN_URL), python3 and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PORT=${PORT:-18090}
FLOOD_PORT=${FLOOD_PORT:-18091}
FLOOD_MIB=${FLOOD_MIB:-40}
ROUNDS=${ROUNDS:-5}
DB=payvault_reply_rss
URL="${ADMIN_URL%/*}/$DB"
for tool in psql python3 curl; do
  command -v "$tool" >/dev/null || { echo "$0: $tool is required" >&2; exit 1; }
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
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  [ -n "$flood_pid" ] && kill "$flood_pid" 2>/dev/null
  wait 2>/dev/null
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The flooding gateway: reads the request, answers 200 with an approval then spaces, chunked.
# It writes how many bytes each answer got out before payvault hung up.
cat > "$work/flood.py" <<'PY'
import http.server, json, sys
total = int(sys.argv[2]) * 1024 * 1024
class Flood(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b" " * 65536
        body = json.dumps({"charge_id": "ch_flood", "error_code": None, "error_message": None}).encode()
        sent = 0
        try:
            for piece in [body] + [chunk] * (total // len(chunk)):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        print(f"flood answer: {sent} of {total} bytes written before the reader hung up", flush=True)
        self.close_connection = True
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Flood).serve_forever()
PY
python3 "$work/flood.py" "$FLOOD_PORT" "$FLOOD_MIB" > "$work/flood.log" 2>&1 &
flood_pid=$!

PGOPTIONS=--client-min-messages=warning psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB" >/dev/null
DATABASE_URL=$URL $BIN migrate >/dev/null
key=$($BIN keys generate | tail -1)
DATABASE_URL=$URL PAYVAULT_MASTER_KEY="$key" $BIN credentials create --name rss --kind connector --format json > "$work/cred.json"
user=$(sed -E 's/.*"username":"([^"]+)".*/\1/' "$work/cred.json")
secret=$(sed -E 's/.*"secret":"([^"]+)".*/\1/' "$work/cred.json")

DATABASE_URL=$URL PAYVAULT_ENV=development PAYVAULT_MASTER_KEY="$key" PAYVAULT_LISTEN=127.0.0.1:$PORT \
  PAYVAULT_PROCESSOR=generic PAYVAULT_PROCESSOR_URL=http://127.0.0.1:$FLOOD_PORT/charge \
  PAYVAULT_ENV=development PAYVAULT_LOG=warn PAYVAULT_NO_MIGRATE=true $BIN serve >/dev/null 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 1 500); do
  curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.01
done
curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null || { cat "$work/server.log" >&2; exit 1; }

rss_mb() { awk -v k="$1" '$1 == k":" {printf "%.1f", $2/1024}' "/proc/$server_pid/status"; }
charge() {
  curl -s -u "$user:$secret" "http://127.0.0.1:$PORT/" -d "{\"method\":\"charge\",\"transaction_id\":\"$(cat /proc/sys/kernel/random/uuid)\",\"cardnumber\":\"4111111111111111\",\"cvv\":\"123\",\"expiry_month\":\"08\",\"expiry_year\":\"35\",\"amount\":\"10.00\",\"currency_code\":\"USD\"}"
}
# One ordinary request first, so that the baseline includes a warmed credential cache.
curl -s -u "$user:$secret" "http://127.0.0.1:$PORT/" \
  -d "{\"method\":\"tokenize\",\"transaction_id\":\"$(cat /proc/sys/kernel/random/uuid)\",\"cardnumber\":\"4111111111111111\",\"expiry_month\":\"08\",\"expiry_year\":\"35\"}" >/dev/null
before=$(rss_mb VmRSS)
for i in $(seq 1 "$ROUNDS"); do
  answer=$(charge)
  echo "charge $i: $answer"
done
after=$(rss_mb VmRSS)
peak=$(rss_mb VmHWM)
cat "$work/flood.log"
echo "RESULT flood_mib=$FLOOD_MIB rounds=$ROUNDS rss_before_mb=$before rss_after_mb=$after peak_rss_mb=$peak"
