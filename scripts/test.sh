#!/usr/bin/env bash
# Run every test: unit tests, the import contracts, and the cluster tests against a real
# local environment that the test session starts and stops itself.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/lint-imports --no-cache || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests — that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
