#!/usr/bin/env bash
# Regenerates .sqlx/ (the offline query metadata that lets payvault build without a database)
# after a change to a query or a migration. Needs a PostgreSQL server; no sqlx-cli required.
#   ADMIN_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/sqlx-prepare.sh
# With --check (CI), regenerates into a temporary directory instead and fails, naming the files,
# unless .sqlx/ is exactly what the current queries and migrations produce.
set -euo pipefail
cd "$(dirname "$0")/.."

check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

admin=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
# Named per run: two worktrees preparing at once must not share (and drop) one database.
db=payvault_sqlx_prepare_$$
url="${admin%/*}/$db"
if $check; then
  out=$(mktemp -d)
else
  out=$PWD/.sqlx
fi
cleanup() {
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  if $check; then rm -rf "$out"; fi
}
trap cleanup EXIT

psql "$admin" -q -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
for f in migrations/*.sql; do psql "$url" -q -v ON_ERROR_STOP=1 -f "$f"; done
if ! $check; then rm -rf .sqlx && mkdir .sqlx; fi
# The query macros write their metadata into SQLX_OFFLINE_DIR while compiling; touching the
# crate root makes every query macro run again.
touch src/lib.rs
SQLX_OFFLINE=false DATABASE_URL="$url" SQLX_OFFLINE_DIR="$out" cargo check --all-targets --quiet

if ! $check; then
  echo "wrote $(ls .sqlx | wc -l) query files to .sqlx/"
  exit 0
fi

missing=() stale=() unused=()
for f in "$out"/*.json; do
  name=${f##*/}
  if [ ! -f ".sqlx/$name" ]; then
    missing+=("$name")
  elif ! cmp -s "$f" ".sqlx/$name"; then
    stale+=("$name")
  fi
done
for f in .sqlx/*.json; do
  [ -f "$out/${f##*/}" ] || unused+=("${f##*/}")
done
if [ $((${#missing[@]} + ${#stale[@]} + ${#unused[@]})) -eq 0 ]; then
  echo ".sqlx/ matches the queries and migrations ($(ls "$out" | wc -l) query files)"
  exit 0
fi
{
  echo "FATAL: .sqlx/ does not match the queries and migrations:"
  for n in "${missing[@]}"; do echo "  missing (a new or changed query): .sqlx/$n"; done
  for n in "${stale[@]}"; do echo "  stale (the database now describes it differently): .sqlx/$n"; done
  for n in "${unused[@]}"; do echo "  unused (no query produces it any more): .sqlx/$n"; done
  echo "Run scripts/sqlx-prepare.sh against a PostgreSQL server and commit .sqlx/."
} >&2
exit 1
