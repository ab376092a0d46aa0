#!/usr/bin/env bash
# The test command (README): ruff, mypy --strict, then the whole suite against real PostgreSQL, a
# real S3 server, …; then, when .venv uses another Python than Debian's /usr/bin/python3 (which the
# postgres user runs for archive and restore commands), the commands again under it in
# .venv-system: every module and command starts, tar extraction, pitr end to end.
# With arguments: pytest on those, in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
SYSTEM_PY=/usr/bin/python3
SYSTEM_TESTS=(
  tests/test_commands_smoke.py
  tests/test_safe_tar.py
  tests/test_pitr.py::test_pitr_to_a_time_between_markers
  tests/test_pitr.py::test_target_before_the_oldest_backup_is_refused_before_writing
)
real_py() { "$1" -c 'import os, sys; print(os.path.realpath(sys.executable))'; }

[ -x .venv/bin/pytest ] || scripts/bootstrap.sh --dev
if [ $# -gt 0 ]; then
  exec .venv/bin/pytest -q "$@"
fi
system=0 # the same rule as scripts/bootstrap.sh
if [ -x "$SYSTEM_PY" ] && [ "$(real_py "$SYSTEM_PY")" != "$(real_py .venv/bin/python)" ]; then
  system=1
  [ -x .venv-system/bin/pytest ] || scripts/bootstrap.sh --dev
fi
rc=0
# The code's own checks first (seconds): lint, formatting, strict types.  The layer contracts
# (lint-imports) run inside the suite, in tests/test_architecture.py.
.venv/bin/ruff check lib tests scripts packages || rc=$?
.venv/bin/ruff format --check --quiet lib tests scripts packages || rc=$?
.venv/bin/mypy || rc=$?
# Two workers, a test file each at a time: most tests wait on PostgreSQL, the S3 server or a child
# process, so the 2 cores overlap them (about 4.5 min instead of 8 here).  Tests of one file share
# its worker (the drill tests look at the drill folders they leave, for one).
.venv/bin/pytest -q -n 2 --dist loadfile || rc=$?
if [ "$system" = 1 ]; then
  echo "== again under $SYSTEM_PY ($("$SYSTEM_PY" --version)), in .venv-system"
  COLDCOPY_TEST_PYTHON=$SYSTEM_PY .venv-system/bin/pytest -q "${SYSTEM_TESTS[@]}" || rc=$?
fi
exit "$rc"
