#!/usr/bin/env bash
# The test command (README): the whole suite against real PostgreSQL, a real S3 server, …
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || scripts/bootstrap.sh --dev
exec .venv/bin/pytest -q "$@"
