#!/usr/bin/env bash
# Regenerates .sqlx/ (the offline query metadata that lets payvault build without a database)
# after a change to a query or a migration. Needs a PostgreSQL server; no sqlx-cli required.
#   ADMIN_URL=postgres://postgres@127.0.0.1:5432/postgres scripts/sqlx-prepare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
admin=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=payvault_sqlx_prepare
url="${admin%/*}/$db"
psql "$admin" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
for f in migrations/*.sql; do psql "$url" -q -v ON_ERROR_STOP=1 -f "$f"; done
rm -rf .sqlx && mkdir .sqlx
# The query macros write their metadata into SQLX_OFFLINE_DIR while compiling.
touch src/lib.rs
SQLX_OFFLINE=false DATABASE_URL="$url" SQLX_OFFLINE_DIR="$PWD/.sqlx" cargo check --all-targets --quiet
psql "$admin" -qc "DROP DATABASE $db"
echo "wrote $(ls .sqlx | wc -l) query files to .sqlx/"
