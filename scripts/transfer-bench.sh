#!/usr/bin/env bash
# Throughput of `payvault import` and `payvault export` (issue 17, item 3), figures for
# docs/benchmarks.md. Generates N Luhn-valid test cards (CSV, generic layout), then in throwaway
# databases on the local PostgreSQL:
#   1. imports them (plain CSV);
#   2. exports them all, encrypted to an X25519 key made by GnuPG;
#   3. imports that export into a second database, decrypting it with the GnuPG secret key;
# printing rows/s and peak RSS of each step. Run it with a release build:
#   cargo build --release && scripts/transfer-bench.sh
#   BIN=/path/to/payvault N=50000 scripts/transfer-bench.sh
# Needs psql, gpg, python3 and /usr/bin/time. Everything it makes is removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."

admin=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/payvault}
n=${N:-200000}
work=$(mktemp -d)
db1=payvault_xfer_bench_$$_a
db2=payvault_xfer_bench_$$_b
cleanup() {
  for d in "$db1" "$db2"; do psql "$admin" -qc "DROP DATABASE IF EXISTS $d" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

python3 - "$n" "$work/cards.csv" <<'EOF'
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
        f.write(f"bench_{i},{luhn('4%014d' % i)},{i % 12 + 1},{2030 + i % 5},94111\n")
EOF

export GNUPGHOME=$work/gnupg
mkdir -m 700 "$GNUPGHOME"
gpg -q --batch --passphrase '' --pinentry-mode loopback --quick-gen-key 'Bench <bench@example.com>' ed25519 cert never
fpr=$(gpg --list-keys --with-colons | awk -F: '/^fpr/ {print $10; exit}')
gpg -q --batch --passphrase '' --pinentry-mode loopback --quick-add-key "$fpr" cv25519 encr never
gpg -q --armor --export "$fpr" > "$work/recipient.asc"
gpg -q --batch --passphrase '' --pinentry-mode loopback --armor --export-secret-keys "$fpr" > "$work/operator.asc"

export PAYVAULT_MASTER_KEY
PAYVAULT_MASTER_KEY=$("$bin" keys generate | tail -1)
unset PAYVAULT_MASTER_KEY_FILE PAYVAULT_DEDUP PAYVAULT_TOKEN_TTL_DAYS
export PAYVAULT_OPERATOR=bench

setup() {
  psql "$admin" -qc "CREATE DATABASE $1"
  DATABASE_URL="${admin%/*}/$1" "$bin" migrate >/dev/null
  DATABASE_URL="${admin%/*}/$1" "$bin" credentials create --name bench --kind connector >/dev/null
}

# Runs a step, printing rows/s and peak RSS.
step() {
  local name=$1 rows=$2
  shift 2
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$work/rss" "$@" >/dev/null
  end=$(date +%s.%N)
  python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'$name: $rows rows in {s:.2f} s = {int($rows/s)} rows/s, peak RSS {int(sys.argv[3])/1024:.1f} MB')" "$start" "$end" "$(cat "$work/rss")"
}

setup "$db1"
setup "$db2"
export DATABASE_URL="${admin%/*}/$db1"
step "import (plain CSV)" "$n" "$bin" import --source bench --credential bench "$work/cards.csv" --result "$work/r1.jsonl"
step "export (PGP)" "$n" "$bin" export --all --recipient-key "$work/recipient.asc" --out "$work/export.pgp" --i-understand-this-exports-card-data
export DATABASE_URL="${admin%/*}/$db2"
step "import (PGP JSON lines, two passes)" "$n" "$bin" import --source bench --credential bench --format jsonl --decrypt-key "$work/operator.asc" "$work/export.pgp" --result "$work/r2.jsonl"
imported=$(psql "${admin%/*}/$db2" -tAc "SELECT count(*) FROM vault_entries")
echo "entries in the second database: $imported (expected $n)"
