#!/usr/bin/env bash
# Run every test: the import contracts, strict typing of the operator and the serving package, unit tests and cluster tests (pytest, against a real local
# environment the session starts and stops itself), then the end-to-end scenarios through the Helm
# chart (e2e/run.sh local). Arguments go to pytest and select a subset; the e2e stage runs with the
# full suite (no arguments) or when E2E=1.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/lint-imports --no-cache || exit 1
# Both product packages are typed strictly.
.venv/bin/mypy --strict serving-image/modelpilot_serve operator/modelpilot || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests — that is a failure, not a pass" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
if [ $# -eq 0 ] || [ "${E2E:-0}" = "1" ]; then
  echo "==> end-to-end scenarios (e2e/run.sh local)"
  e2e/run.sh local || exit $?
fi
