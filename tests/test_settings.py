"""Settings are validated at startup (server/config.py): a value the server could start
with but not serve by is refused with a message naming the variable, before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from server.config import Settings

BASE = {"FIELDSYNC_JWT_SECRET": "s" * 32, "FIELDSYNC_DATA_DIR": "/tmp/fieldsync-unused"}


def test_the_defaults_are_valid():
    settings = Settings.from_env(BASE)
    assert (settings.min_protocol, settings.pull_limit, settings.require_device_tokens, settings.metrics) == \
        (1, 2000, False, True)


@pytest.mark.parametrize("name, value, words", [
    ("MIN_PROTOCOL", "2", "outside [1, 1]"),  # the server speaks 1 only: every client would be refused
    ("MIN_PROTOCOL", "0", "outside [1, 1]"),
    ("JWT_SECRET", "short", "5 bytes; HS256 needs 32"),
    ("PULL_LIMIT", "20000", "above FIELDSYNC_PULL_MAX_LIMIT"),
    ("PULL_LIMIT", "0", "outside"),
    ("MAX_MUTATIONS", "lots", "not an integer"),
    ("MAX_BODY_BYTES", "12", "outside"),
    ("TOKEN_TTL", "-5", "outside"),
    ("WS_IDLE_TIMEOUT", "inf", "outside"),
    ("POLL_INTERVAL", "0", "outside"),
    ("REQUIRE_DEVICE_TOKENS", "maybe", "not on or off"),
    ("METRICS", "nope", "not on or off"),
    ("DATABASE_URL", "mysql://db/x", "neither sqlite"),
    ("REDIS_URL", "localhost:6379", "redis://"),
    ("WS_IMPL", "websocket", "not one of"),
    ("DEVICE_RATE", "0", "outside"),  # no request would ever be admitted again
    ("USER_BURST", "0", "outside"),
    ("MAX_SNAPSHOTS", "0", "outside"),  # every fresh device refused for good
    ("SNAPSHOT_RETRY_AFTER", "soon", "not an integer"),
    ("RATE_LIMITS", "sometimes", "not on or off"),
])
def test_a_setting_the_server_cannot_serve_by_is_refused(name, value, words):
    with pytest.raises(ValueError, match=f"FIELDSYNC_{name}") as refused:
        Settings.from_env({**BASE, f"FIELDSYNC_{name}": value})
    assert words in str(refused.value)


@pytest.mark.parametrize("value, on", [("1", True), ("YES", True), (" on ", True), ("0", False), ("off", False),
                                       ("", False)])
def test_switches_read_the_usual_words(value, on):
    assert Settings.from_env({**BASE, "FIELDSYNC_REQUIRE_DEVICE_TOKENS": value}).require_device_tokens is on


def test_an_rs256_setup_needs_no_hs256_secret(tmp_path):
    pem = "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n"
    assert Settings.from_env({**BASE, "FIELDSYNC_JWT_SECRET": "", "FIELDSYNC_JWT_PUBLIC_KEY": pem,
                              "FIELDSYNC_DATA_DIR": str(tmp_path)}).jwt_public_key == pem


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["token", "sales1"]])
def test_the_cli_refuses_to_start_with_one_line(command, tmp_path):
    env = {**os.environ, "FIELDSYNC_DATA_DIR": str(tmp_path), "FIELDSYNC_MIN_PROTOCOL": "2"}
    env.pop("FIELDSYNC_DATABASE_URL", None)
    done = subprocess.run([sys.executable, "-m", "server.cli", *command], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done
    assert done.stderr.strip().count("\n") == 0 and "FIELDSYNC_MIN_PROTOCOL=2 is outside [1, 1]" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "fieldsync.db").exists(), "nothing ran"
