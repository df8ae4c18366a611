#!/usr/bin/env bash
# The whole suite: Python (SQLite + PostgreSQL + Redis) and the Dart client's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/python -m pytest "$@"
if [ -z "${FIELDSYNC_SKIP_DART:-}" ] && [ -x scripts/dart-tests.sh ]; then
  scripts/dart-tests.sh
fi
