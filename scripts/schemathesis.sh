#!/usr/bin/env bash
# Fuzzes a running payvault from its own OpenAPI document with schemathesis (PyPI), every check
# on: the server must answer every generated request as the document says (status, content type,
# headers, body schema), never 5xx, refuse what the schema forbids, accept what it allows, and
# follow the document's links (a created token to GET/PATCH/DELETE/charge).
#
# Also validates the served document against the OpenAPI 3.1 schema (openapi-spec-validator).
# Starts `payvault serve` (PAYVAULT_ENV=development, the in-process sandbox processor with short
# slow/timeout cases, a generated development key) against a fresh database with one credential holding every scope, runs
# schemathesis against it, then stops the server and drops the database. Traffic stays on
# loopback.
#   scripts/schemathesis.sh                       # builds target/debug/payvault
#   BIN=target/release/payvault MAX_TIME=300 scripts/schemathesis.sh
# ADMIN_URL: a PostgreSQL URL allowed to create databases (default: local, trust auth).
# MAX_EXAMPLES (per operation) and MAX_TIME (seconds, whole run) bound the run. One worker:
# CPython 3.11.7 can fail ast.parse in hypothesis when two threads run it at once.
set -euo pipefail
cd "$(dirname "$0")/.."
ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
MAX_EXAMPLES=${MAX_EXAMPLES:-60}
MAX_TIME=${MAX_TIME:-150}
SEED=${SEED:-}
# Pinned: checks and their names change between releases.
ST_VERSION=4.32.5
OSV_VERSION=0.9.0
VENV=${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/payvault-ci/schemathesis-$ST_VERSION}
DB=payvault_schemathesis_$$
URL="${ADMIN_URL%/*}/$DB"

for tool in psql curl python3; do
  command -v "$tool" >/dev/null || { echo "schemathesis.sh: $tool is required" >&2; exit 1; }
done

if [ ! -x "$VENV/bin/schemathesis" ] || [ ! -x "$VENV/bin/openapi-spec-validator" ] \
  || ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  echo "== installing schemathesis $ST_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==$ST_VERSION" "openapi-spec-validator==$OSV_VERSION"
fi

if [ -z "${BIN:-}" ]; then
  cargo build --quiet --locked
  BIN=${CARGO_TARGET_DIR:-target}/debug/payvault
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

psql "$ADMIN_URL" -qc "CREATE DATABASE $DB" >/dev/null
export DATABASE_URL=$URL PAYVAULT_ENV=development
"$BIN" migrate >/dev/null
umask 077
"$BIN" keys generate --development | tail -1 >"$work/master.key"
PAYVAULT_MASTER_KEY_FILE="$work/master.key" "$BIN" credentials create --name schemathesis --kind connector \
  --scopes connector,tokens:read,tokens:charge,tokens:delete,audit:read --format json >"$work/cred.json"
user=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["username"])' "$work/cred.json")
secret=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret"])' "$work/cred.json")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
PAYVAULT_MASTER_KEY_FILE="$work/master.key" PAYVAULT_LISTEN="127.0.0.1:$port" \
  PAYVAULT_PROCESSOR=sandbox PAYVAULT_LOG=warn PAYVAULT_NO_MIGRATE=true \
  PAYVAULT_SANDBOX_SLOW_MS=200 PAYVAULT_PROCESSOR_TIMEOUT_MS=1000 PAYVAULT_IDEMPOTENCY_WAIT_MS=1500 \
  "$BIN" serve 2>"$work/server.log" >/dev/null &
server_pid=$!
# Ready when /readyz answers 200, within 30 s.
deadline=$((SECONDS + 30))
until curl -fs "$base/readyz" >/dev/null 2>&1; do
  if ! kill -0 "$server_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
    echo "schemathesis.sh: payvault did not become ready" >&2
    cat "$work/server.log" >&2
    exit 1
  fi
  sleep 0.1
done

echo "== /openapi.json against the OpenAPI 3.1 schema (openapi-spec-validator $OSV_VERSION)"
curl -fs "$base/openapi.json" >"$work/openapi.json"
"$VENV/bin/openapi-spec-validator" "$work/openapi.json"

echo "== schemathesis $ST_VERSION: --checks all, at most $MAX_EXAMPLES examples per operation, $MAX_TIME s"
status=0
"$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run "$base/openapi.json" \
  --checks all \
  --auth "$user:$secret" \
  --max-examples "$MAX_EXAMPLES" \
  --max-time "$MAX_TIME" \
  --request-timeout 20 \
  --workers 1 \
  --generation-database none \
  --generation-with-security-parameters false \
  ${SEED:+--seed "$SEED"} \
  --no-color || status=$?

# payvault's own errors (an internal_error's cause) and panics; tower_http's line for a
# documented 502/504 is not one.
if grep -qE "panicked|ERROR payvault" "$work/server.log"; then
  echo "schemathesis.sh: payvault logged errors during the run:" >&2
  grep -E "panicked|ERROR payvault" "$work/server.log" | head -20 >&2
  status=1
fi
exit "$status"
