"""Helpers shared by the job tests: services with jobs in immediate mode, PDF text, rows."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pypdf
import pytest
import redis
import sqlalchemy as sa

from fieldsync_client import HttpSync

from .support import token


def pdf_text(body: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(body)).pages)


def device(services, client, user_id: int, role: str = "salesperson") -> HttpSync:
    return HttpSync(client, token(services, user_id, role), f"dev-{user_id}-{uuid.uuid4().hex[:6]}")


def order(dev: HttpSync, customer_id: int = 1, product_id: int = 3, qty: int = 2) -> dict[str, Any]:
    return dev.mutation("order.create", {"id": str(uuid.uuid4()), "customer_id": customer_id,
                                         "lines": [{"product_id": product_id, "qty": qty}]})


def sale(dev: HttpSync, product_id: int = 1, qty: int = 1, price: int = 200) -> dict[str, Any]:
    return dev.mutation("sale.complete", {"id": str(uuid.uuid4()), "payment_method": "cash",
                                          "lines": [{"product_id": product_id, "qty": qty, "price": price}]})


async def rows(services, table: sa.Table, *where: Any) -> list[dict[str, Any]]:
    async with services.db.read() as conn:
        return [dict(r) for r in (await conn.execute(sa.select(table).where(*where))).mappings()]


async def fetch(client, services, url: str, user_id: int, role: str, tenant_id: int = 1):
    return await client.get(url, headers={"Authorization": f"Bearer {token(services, user_id, role, tenant_id)}"})


class RefusingSmtp:
    """A local SMTP server that refuses every connection with 554 (counts the attempts)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.attempts = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.attempts += 1
            with conn:
                conn.sendall(b"554 5.3.2 fieldsync test server refuses all mail\r\n")

    def close(self) -> None:
        self.sock.close()


# -- Redis and a real `fieldsync worker` process ---------------------------------------------

REDIS_URL = os.environ.get("FIELDSYNC_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parent.parent


def require_redis(url: str = REDIS_URL) -> str:
    """Skip with a message when Redis is absent; fail instead when CI=true."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis is required in CI but unreachable at {url}: {exc}")
        pytest.skip(f"Redis not reachable at {url} ({exc}); start it (or set FIELDSYNC_TEST_REDIS) to run these cases")
    finally:
        client.close()
    return url


def drop_queue(url: str, name: str) -> None:
    """Delete every key of one Huey queue (its queue, schedule, results and counters)."""
    client = redis.Redis.from_url(url)
    try:
        keys = [k for pattern in (f"huey.*.{name}", f"huey.*.{name}.*") for k in client.scan_iter(match=pattern)]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class WorkerProcess:
    """`fieldsync worker` in its own process, as the Procfile runs it; output kept in a file."""

    def __init__(self, settings, log_path: Path, **env: str) -> None:
        self.env = {**os.environ, "FIELDSYNC_DATABASE_URL": settings.database_url,
                    "FIELDSYNC_REDIS_URL": settings.redis_url, "FIELDSYNC_REDIS_PREFIX": settings.redis_prefix,
                    "FIELDSYNC_DATA_DIR": str(settings.data_dir), "FIELDSYNC_JWT_SECRET": settings.jwt_secret.decode(),
                    "FIELDSYNC_JOBS": "auto", **env}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "worker", "--workers", "2"], cwd=ROOT,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.output()[-3000:]}")
            if "Huey consumer started" in self.output():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"worker did not start: {self.output()[-3000:]}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Huey's graceful stop
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
