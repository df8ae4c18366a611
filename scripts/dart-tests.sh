#!/usr/bin/env bash
# Runs every clients/dart_protocol/test/*_test.dart on the Dart VM that
# scripts/install-dart.sh provides (installing it on first use).
# Each file prints `N passed, N failed`; the last line here is the total,
# and the exit status is non-zero if any file failed or crashed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dart="$("$root/scripts/install-dart.sh" | tail -n 1)"
cd "$root/clients/dart_protocol"

shopt -s nullglob
tests=(test/*_test.dart)
if [ ${#tests[@]} -eq 0 ]; then
  echo "no test/*_test.dart found" >&2
  exit 1
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
passed=0 failed=0 status=0
for t in "${tests[@]}"; do
  echo "== $t"
  if ! "$dart" "$t" 2>&1 | tee "$log"; then
    status=1
  fi
  # A file that crashed before its summary still counts as one failure.
  if line="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)"; then
    read -r p _ f _ <<<"$line"
    passed=$((passed + p)) failed=$((failed + f))
  else
    failed=$((failed + 1)) status=1
  fi
done

[ "$failed" -eq 0 ] || status=1
echo "dart: $passed passed, $failed failed"
exit "$status"
