"""The README's snippets run as written (issue 14): its "Using it" commands and its Python
pull, in a fresh directory holding only the checkout's ``.venv``, against a server started
as ``scripts/run.sh`` starts it. Only the port differs (a free one, not 8000), and the two
commands that run until stopped (``serve``, ``worker``) are started by the test itself or
left out (``worker`` is for production with Redis)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .live_support import free_port

README = Path(__file__).resolve().parents[1] / "README.md"
LONG_RUNNING = (" serve", " worker")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def using_it() -> list[str]:
    """The command lines of the block that shows each ``fieldsync`` command."""
    block = next(b for b in blocks("sh") if ".venv/bin/fieldsync demo" in b)
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not any(word in line for word in LONG_RUNNING)]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A directory as a new user has it after ``scripts/run.sh``: ``.venv`` and nothing else,
    with the server of ``scripts/run.sh`` running (on a free port)."""
    where = tmp_path_factory.mktemp("first-run")
    (where / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDSYNC_")}
    port = free_port()
    server = subprocess.Popen([".venv/bin/fieldsync", "serve", "--demo", "--port", str(port)], cwd=where, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [server.stdout.readline() for _ in range(3)][1:]  # after the demo's line
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield where, env, port, lines
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)


def run(command: str, where: Path, env: dict, port: int, timeout: float = 120) -> subprocess.CompletedProcess:
    command = command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    if " simulate" in command:
        command += f" --url http://127.0.0.1:{port}"
    return subprocess.run(command, shell=True, cwd=where, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_startup_lines_name_a_command_that_works_and_the_health_url(checkout):
    where, env, port, lines = checkout
    assert f"listening on http://127.0.0.1:{port}" in lines[0], lines
    assert f"http://127.0.0.1:{port}/healthz" in lines[1] and "`.venv/bin/fieldsync token sales1`" in lines[1], lines
    said = re.search(r"`(.+?)`", lines[1]).group(1)
    assert run(said, where, env, port).stdout.count(".") == 2, "the command it names prints a token"


def test_the_root_url_says_what_the_server_is(checkout):
    _, _, port, _ = checkout
    answer = httpx.get(f"http://127.0.0.1:{port}/")
    assert answer.status_code == 200 and answer.json()["name"] == "fieldsync"
    assert answer.json()["protocol"] == 1 and answer.json()["links"]["health"] == "/healthz"


@pytest.mark.parametrize("command", using_it())
def test_each_command_of_the_readme_runs_as_written(checkout, command):
    where, env, port, _ = checkout
    done = run(command, where, env, port)
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    assert not [line for line in done.stderr.splitlines() if '"logger": "alembic' in line or '"logger": "httpx' in line], \
        "library chatter is for --verbose"


def test_the_python_pull_runs_as_written(checkout):
    where, env, port, _ = checkout
    (snippet,) = blocks("python")
    done = subprocess.run(
        [str(where / ".venv/bin/python"), "-"], input=snippet.replace("127.0.0.1:8000", f"127.0.0.1:{port}"),
        cwd=where, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    status, datasets, _ = done.stdout.split(" ", 2)
    assert status == "200" and "customers" in datasets, done.stdout
