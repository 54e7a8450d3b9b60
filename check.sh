#!/usr/bin/env bash
# The whole check, as root: installs what the tests need, then lint, types and every test
# (unit, real-kernel tests in throwaway namespaces, Pilot tests of the TUI).
set -uo pipefail
cd "$(dirname "$0")"
./install.sh --dev || exit 1

status=0
echo "== ruff";  .venv/bin/ruff check fwtop tests benchmarks scripts || status=1
echo "== mypy";  .venv/bin/mypy || status=1
echo "== pytest"
.venv/bin/python -m pytest -q -rs "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "check.sh: pytest collected no tests: that is a failure, not a pass" >&2
  rc=1
fi
[ "$rc" -ne 0 ] && status=$rc
exit "$status"
