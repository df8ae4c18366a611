"""Shared plumbing for the benchmarks: a scratch PostgreSQL database and a real server process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("FIELDSYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "fieldsync-bench-secret-0123456789abcdef"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN.replace("postgresql://", "postgres://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    name = f"fieldsync_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server_process(database_url: str, *, extra_env: dict[str, str] | None = None,
                   with_pid: bool = False) -> Iterator[str]:
    """`fieldsync serve` in its own process; yields its base URL (and pid if asked)."""
    port = free_port()
    env = {**os.environ, "FIELDSYNC_DATABASE_URL": database_url, "FIELDSYNC_JWT_SECRET": SECRET,
           "FIELDSYNC_PULL_MAX_LIMIT": "20000",
           # simulated fleets share users, and one load generator polls as fast as it can
           "FIELDSYNC_MAX_DEVICES_PER_USER": "1000000", "FIELDSYNC_RATE_LIMITS": "0", **(extra_env or {})}
    # The log goes to a file: a pipe nobody reads fills after ~150 access-log lines and
    # then blocks the server in the middle of a benchmark.
    log = tempfile.NamedTemporaryFile(prefix="fieldsync-bench-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, Path(log.name))
        yield (base, proc.pid) if with_pid else base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)


def wait_ready(base: str, proc: subprocess.Popen, log: Path | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:] if log else proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
