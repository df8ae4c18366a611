#!/usr/bin/env bash
# Dart end-to-end test: a REAL fieldsync server (the embedded default: SQLite
# in a fresh temp data dir, in-process fan-out and jobs) with a small demo
# tenant, and clients/dart_protocol/test/e2e_test.dart syncing against it as
# sales1 over WebSocket and HTTP. Prints `N passed, N failed`; non-zero exit
# on failure. The server is stopped and the data dir removed at the end.
#
#   scripts/dart-e2e.sh          (needs .venv: scripts/bootstrap.sh)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fieldsync="$root/.venv/bin/fieldsync"
python="$root/.venv/bin/python"
if [ ! -x "$fieldsync" ]; then
  echo "dart-e2e: $fieldsync not found; run scripts/bootstrap.sh first" >&2
  exit 1
fi
dart="${FIELDSYNC_DART:-}"
if [ -z "$dart" ]; then
  dart="$("$root/scripts/install-dart.sh" | tail -n 1)"
fi

# The embedded default, whatever the calling environment points at.
unset FIELDSYNC_DATABASE_URL FIELDSYNC_REDIS_URL
data="$(mktemp -d "${TMPDIR:-/tmp}/fieldsync-dart-e2e.XXXXXX")"
export FIELDSYNC_DATA_DIR="$data"

server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$data"
}
trap cleanup EXIT

port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"

"$fieldsync" demo --products 300 --customers 30 --days 2 >"$data/demo.log" 2>&1 || {
  cat "$data/demo.log" >&2
  exit 1
}
token="$("$fieldsync" token sales1 2>>"$data/demo.log" | tail -n 1)"

"$fieldsync" serve --port "$port" >"$data/server.log" 2>&1 &
server_pid=$!

ready=""
for _ in $(seq 1 150); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "dart-e2e: the server exited during start-up:" >&2
    tail -n 40 "$data/server.log" >&2
    exit 1
  fi
  if "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
    "$base/healthz" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.2
done
if [ -z "$ready" ]; then
  echo "dart-e2e: the server did not answer $base/healthz within 30 s" >&2
  tail -n 40 "$data/server.log" >&2
  exit 1
fi

cd "$root/clients/dart_protocol"
status=0
"$dart" test/e2e_test.dart "$base" "$token" || status=$?
if [ "$status" -ne 0 ]; then
  echo "dart-e2e: failed; the server's log ends with:" >&2
  tail -n 40 "$data/server.log" >&2
fi
exit "$status"
