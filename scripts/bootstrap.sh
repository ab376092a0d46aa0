#!/usr/bin/env bash
# Sets up a fresh machine: the virtualenv in .venv with coldcopy installed, and (with --dev)
# the test tools: Debian packages (PostgreSQL client/server are in the base image), the
# deployer library for project.yml checks, and .venv-system: coldcopy on Debian's own
# /usr/bin/python3 (what the postgres user runs) when .venv uses another Python.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

need_apt=()
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
PY=${PYTHON:-python3}
SYSTEM_PY=/usr/bin/python3
real_py() { "$1" -c 'import os, sys; print(os.path.realpath(sys.executable))'; }
can_venv() { "$1" -c 'import ensurepip, venv' >/dev/null 2>&1; }  # Debian: python3-venv
main_py=$PY
[ -x .venv/bin/python ] && main_py=.venv/bin/python
system=0  # the same rule as scripts/test.sh
if [ "$dev" = 1 ] && [ -x "$SYSTEM_PY" ] && [ "$(real_py "$SYSTEM_PY")" != "$(real_py "$main_py")" ]; then
  system=1
fi
[ -x .venv/bin/python ] || can_venv "$PY" || need_apt+=(python3-venv)
if [ "$system" = 1 ] && [ ! -x .venv-system/bin/pip ] && ! can_venv "$SYSTEM_PY"; then
  need_apt+=(python3-venv)
fi
if [ "$dev" = 1 ]; then
  # Debian's prometheus: promtool (tests/test_metrics.py) and the server (tests/test_prometheus.py)
  { command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need_apt+=(prometheus)
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  # the change archive's output plugin (coldcopy changes; hosted Supabase has it installed)
  for pgdir in /usr/lib/postgresql/*/lib; do
    [ -d "$pgdir" ] || continue
    major=$(basename "$(dirname "$pgdir")")
    [ -f "$pgdir/wal2json.so" ] || need_apt+=("postgresql-$major-wal2json")
  done
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${need_apt[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "please install: ${need_apt[*]} (sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi

# The Supabase stand-in projects of the tests (tests/fixtures/supabase): pg_cron, pgaudit, pgjwt and
# supautils for PostgreSQL 15.  Root only, as make-project.sh itself.
if [ "$dev" = 1 ] && [ "$(id -u)" = 0 ] && [ -d /usr/lib/postgresql/15 ]; then
  tests/fixtures/supabase/setup.sh
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "$dev" = 1 ]; then
  .venv/bin/pip install -q -e '.[dev]'
  if [ -x scripts/setup_node_tools.sh ]; then scripts/setup_node_tools.sh; fi
else
  .venv/bin/pip install -q -e '.[local]'
fi
if [ "$system" = 1 ]; then
  [ -x .venv-system/bin/pip ] || "$SYSTEM_PY" -m venv .venv-system
  .venv-system/bin/pip install -q -e '.[dev]'
  echo "bootstrap done: .venv and .venv-system ($("$SYSTEM_PY" --version)) ready"
else
  echo "bootstrap done: .venv ready"
fi
