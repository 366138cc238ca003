#!/usr/bin/env bash
# Validates the Compose file (CI runs this from the repository root):
#   1. `<compose> config` parses it and checks its syntax and semantics;
#   2. scripts/check_compose_env.py checks the resolved file against payvault's sources: every
#      variable set on a payvault service is one payvault reads, every *_FILE variable points at
#      a mounted Docker secret, and every secret file exists.
#
#   scripts/check-compose.sh [COMPOSE_FILE]        (default: docker-compose.yml)
#
# Needs a Compose implementation (the `docker compose` plugin, or `docker-compose`; installs
# Debian's docker-compose package when neither is there) and Python 3 with PyYAML. No Docker
# daemon is needed: `config` only reads files.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
compose_file=${1:-docker-compose.yml}
[ -f "$compose_file" ] || { echo "FATAL: compose file not found: $compose_file" >&2; exit 1; }

log() { printf '== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- a Compose parser ------------------------------------------------------------------------
compose=()
find_compose() {
  if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
  else
    return 1
  fi
}

if ! find_compose; then
  log "no Compose implementation found: installing Debian's docker-compose"
  command -v apt-get >/dev/null 2>&1 \
    || { echo "FATAL: neither 'docker compose' nor 'docker-compose' is installed, and there is no apt-get to install it" >&2; exit 1; }
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "FATAL: neither 'docker compose' nor 'docker-compose' is installed, and installing it needs root (no sudo)" >&2
    exit 1
  fi
  # `env` inside as_root: sudo's env_reset would drop a DEBIAN_FRONTEND set in front of it.
  if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
         && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }; then
    echo "FATAL: could not install Debian's docker-compose package" >&2
    exit 1
  fi
  find_compose \
    || { echo "FATAL: docker-compose was installed but is still not on PATH" >&2; exit 1; }
fi
log "compose parser: ${compose[*]} ($("${compose[@]}" version --short 2>/dev/null || echo 'version unknown'))"

# --- a Python with PyYAML ---------------------------------------------------------------------
# Debian's python3 first: it gets python3-yaml together with the docker-compose package.
python=
for candidate in /usr/bin/python3 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' >/dev/null 2>&1; then
    python=$candidate
    break
  fi
done
[ -n "$python" ] || {
  echo "FATAL: no Python 3 with the yaml module (tried /usr/bin/python3 and python3 on PATH): apt-get install python3-yaml" >&2
  exit 1
}

# --- 1. syntax and semantics -------------------------------------------------------------------
resolved=$(mktemp "${TMPDIR:-/tmp}/payvault-compose.XXXXXX")
trap 'rm -f "$resolved"' EXIT

log "${compose[*]} -f $compose_file config"
if ! "${compose[@]}" -f "$compose_file" config >"$resolved"; then
  echo "FATAL: $compose_file is not a valid Compose file (see the errors above)" >&2
  exit 1
fi

# --- 2. variables and secrets against payvault's sources --------------------------------------
log "checking variables and secrets against $root/src"
"$python" "$root/scripts/check_compose_env.py" "$resolved" \
  --src "$root/src" --base-dir "$(cd "$(dirname "$compose_file")" && pwd)"
