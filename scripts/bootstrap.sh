#!/usr/bin/env bash
# Sets up a fresh machine: the virtualenv in .venv with coldcopy installed, and (with --dev)
# the test tools: Debian packages (PostgreSQL client/server are in the base image), the
# deployer library for project.yml checks.  Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1

need_apt=()
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
if [ "$dev" = 1 ]; then
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
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

PY=${PYTHON:-python3}
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
echo "bootstrap done: .venv ready"
