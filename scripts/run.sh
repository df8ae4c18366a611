#!/usr/bin/env bash
# The embedded default: SQLite under ./var, in-process fan-out, demo data, port 8000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/fieldsync serve --demo --port "${PORT:-8000}" "$@"
