#!/usr/bin/env bash
# Install everything `make test` and `make demo` need on a fresh Debian machine, running as root:
# the system servers (PostgreSQL, Redis, Prometheus with promtool, Alertmanager with amtool, nginx,
# the two exporters, wrk, valgrind)
# and a virtualenv with the pinned Python dependencies. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# binary -> the Debian package that provides it
declare -A PROVIDER=(
  [redis-server]=redis-server [prometheus]=prometheus [promtool]=prometheus [nginx]=nginx-light
  [wrk]=wrk [prometheus-postgres-exporter]=prometheus-postgres-exporter
  [prometheus-redis-exporter]=prometheus-redis-exporter
  [prometheus-pushgateway]=prometheus-pushgateway [psql]=postgresql-client
  [prometheus-alertmanager]=prometheus-alertmanager [amtool]=prometheus-alertmanager
  [valgrind]=valgrind [callgrind_control]=valgrind
)

missing=()
for bin in "${!PROVIDER[@]}"; do
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    missing+=("${PROVIDER[$bin]}")
  fi
done
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then missing+=(postgresql); fi
# de-duplicate (prometheus and prometheus-alertmanager provide two binaries each)
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
if ! ls /usr/share/postgresql/*/extension/pg_stat_statements.control >/dev/null 2>&1; then
  missing+=(postgresql-contrib)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing system packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: installing system packages needs root (run as root, or install: ${missing[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Debian starts services on install where an init system exists; the project starts its own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  rm -f /usr/sbin/policy-rc.d
fi

# The virtualenv, rebuilt only when the lock file or the project metadata changes.
PY=${PYTHON:-python3}
# pip's warnings about this machine's unused local wheel folders are noise; errors still show.
quiet() { "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; return "${PIPESTATUS[0]}"; }
stamp=".venv/.stamp-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: building .venv from requirements.lock"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  quiet .venv/bin/python -m pip install --quiet --upgrade pip
  quiet .venv/bin/python -m pip install --quiet -r requirements.lock
  quiet .venv/bin/python -m pip install --quiet --no-deps -e .
  rm -f .venv/.stamp-*
  touch "$stamp"
fi

# The scanner (checkov) in a virtualenv of its own: its pins (boto3==1.35.49) exclude ours.
scanner_stamp=".venv-scanner/.stamp-$(sha256sum < requirements-scanner.lock | cut -c1-16)"
if [ ! -f "$scanner_stamp" ]; then
  echo "bootstrap: building .venv-scanner from requirements-scanner.lock"
  [ -x .venv-scanner/bin/python ] || "$PY" -m venv .venv-scanner
  quiet .venv-scanner/bin/python -m pip install --quiet --upgrade pip
  quiet .venv-scanner/bin/python -m pip install --quiet -r requirements-scanner.lock
  rm -f .venv-scanner/.stamp-*
  touch "$scanner_stamp"
fi
