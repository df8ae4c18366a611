"""Invariant 3 under failure: the server process is killed (SIGKILL) in the middle of a
push; the device replays the same outbox to a restarted server. No order is lost, none is
duplicated, and every result the device gets is the result of the first application. A push
is applied in groups of mutations, one transaction each: the kill loses the open group whole,
never part of it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import msgpack
import pytest
import sqlalchemy as sa

from server.domain.tables import orders
from sync.push import GROUP
from sync.storage import mutation_ledger

from .support import seed, token

ROOT = Path(__file__).resolve().parent.parent


def start_server(settings, port: int) -> subprocess.Popen:
    env = {**os.environ, "FIELDSYNC_DATABASE_URL": settings.database_url,
           "FIELDSYNC_JWT_SECRET": settings.jwt_secret.decode(), "FIELDSYNC_DATA_DIR": str(settings.data_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
async def test_killed_mid_push_then_replayed(services):
    w = await seed(services)
    bearer = token(services, w.sales1, "salesperson")
    now = int(time.time() * 1000)
    outbox = [{"id": n, "name": "order.create", "at": now, "args": {
        "id": str(uuid.uuid4()), "customer_id": 1 + n % 4, "lines": [{"product_id": 1 + n % 20, "qty": 1}]}}
        for n in range(1, 3 * GROUP + 1)]
    body = msgpack.packb({"v": 1, "client_id": "phone", "mutations": outbox})
    headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/msgpack"}
    port = free_port()
    proc = start_server(services.settings, port)

    def push_and_lose_the_reply() -> None:
        try:
            httpx.post(f"http://127.0.0.1:{port}/sync/push", content=body, headers=headers, timeout=30)
        except httpx.HTTPError:
            pass  # the connection died with the server: the device keeps its outbox

    pushing = threading.Thread(target=push_and_lose_the_reply)
    pushing.start()
    async def applied() -> int:
        async with services.db.read() as conn:
            return await conn.scalar(sa.select(sa.func.count()).select_from(mutation_ledger))

    while await applied() < GROUP:  # kill it part-way through the outbox, once a group committed
        await asyncio.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    pushing.join()
    partial = await applied()
    assert GROUP <= partial < len(outbox), "the kill must land in the middle of the push"
    assert partial % GROUP == 0, "a group commits whole or not at all"

    proc = start_server(services.settings, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            first = msgpack.unpackb(http.post("/sync/push", content=body, headers=headers).content)["results"]
            again = msgpack.unpackb(http.post("/sync/push", content=body, headers=headers).content)["results"]
    finally:
        proc.terminate()
        proc.wait()
    assert first == again
    assert [r["status"] for r in first] == ["applied"] * len(outbox)
    async with services.db.read() as conn:
        made = (await conn.execute(sa.select(orders.c.id))).scalars().all()
    assert sorted(made) == sorted(m["args"]["id"] for m in outbox)
    numbers = [r["result"]["number"] for r in first]
    assert len(set(numbers)) == len(numbers)
