#!/usr/bin/env bash
# One command on a fresh machine: bootstrap .venv, then run the whole thing on the local stack.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/coldcopy ] || scripts/bootstrap.sh
exec .venv/bin/coldcopy demo "$@"
