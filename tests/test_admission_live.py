"""Admission control against a real ``fieldsync serve`` process: how the WebSocket framing
refuses (an error frame with ``retry_after`` on an open socket for a push frame; error
frame and close 4429 for a hello), and the Python client waiting ``retry_after`` plus
jitter and retrying until it has converged, with no mutation lost or applied twice."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from fieldsync_client import Backoff, Replica, SyncClient
from server.domain.tables import orders
from sync.storage import mutation_ledger

from .live_support import Server, WsClient, connect_device, fresh_pull, launching
from .support import seed, token

pytestmark = pytest.mark.slow

LIMITED = {"FIELDSYNC_RATE_LIMITS": "1", "FIELDSYNC_DEVICE_BURST": "3", "FIELDSYNC_DEVICE_RATE": "1",
           "FIELDSYNC_USER_BURST": "1000", "FIELDSYNC_USER_RATE": "1000"}  # a fresh sync is one pull


@pytest.fixture
async def world(services):
    return await seed(services)


@pytest.fixture
async def launch(services, tmp_path):
    async with launching(services.settings, tmp_path, None) as start:
        yield start


def order_create(mid: int) -> dict:
    return {"id": mid, "name": "order.create", "at": int(time.time() * 1000),
            "args": {"id": str(uuid.uuid4()), "customer_id": 1, "lines": [{"product_id": 1, "qty": 1}]}}


async def refusals(server: Server, limit: str, framing: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{server.base}/metrics")).text
    line = f'fieldsync_admission_refused_total{{framing="{framing}",limit="{limit}"}}'
    return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))


async def test_a_push_frame_past_the_rate_gets_an_error_frame_and_the_socket_stays_open(services, world, launch):
    server = await launch(**LIMITED)
    sales = token(services, world.sales1, "salesperson")
    phone = await connect_device(server.ws_url, sales, "phone", Replica())  # hello: token 1 of 3
    for mid in (1, 2):
        await phone.send({"t": "push", "mutations": [order_create(mid)]})
        assert (await phone.recv_until(lambda f: f["t"] in ("results", "error")))["t"] == "results"
    refused_push = order_create(3)
    await phone.send({"t": "push", "mutations": [refused_push]})
    error = await phone.recv_until(lambda f: f["t"] in ("results", "error"))
    assert error["t"] == "error" and error["code"] == "RATE_LIMITED" and error["retry_after"] == 1
    await phone.send({"t": "ping"})
    assert (await phone.recv_until(lambda f: f["t"] == "pong"))["t"] == "pong", "the socket stays open"
    await asyncio.sleep(error["retry_after"])
    await phone.send({"t": "push", "mutations": [refused_push]})
    results = await phone.recv_until(lambda f: f["t"] == "results")
    assert results["results"][0]["status"] == "applied"
    assert await refusals(server, "device", "ws") == 1


async def test_a_hello_past_the_rate_is_closed_with_4429(services, world, launch):
    server = await launch(**LIMITED)
    sales = token(services, world.sales1, "salesperson")
    for _ in range(3):
        client = await connect_device(server.ws_url, sales, "looping", Replica())
        await client.close()
    client = await WsClient.open(server.ws_url, sales)
    await client.hello("looping")
    closed = await client.closed()
    assert closed.code == 4429
    assert [(f["t"], f["code"], f["retry_after"]) for f in closed.frames] == [("error", "RATE_LIMITED", 1)]
    other = await connect_device(server.ws_url, sales, "another", Replica())  # another device is served
    await other.close()


async def count_orders(services, ids: list[str]) -> list[int]:
    async with services.db.read() as conn:
        return [await conn.scalar(sa.select(sa.func.count()).select_from(orders).where(orders.c.id == i)) for i in ids]


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_the_python_client_waits_retry_after_and_converges_without_duplicates(services, world, launch,
                                                                                      transport):
    server = await launch(**LIMITED)
    sales = token(services, world.sales1, "salesperson")
    client = SyncClient(server.base, sales, f"phone-{transport}", transport=transport, push_batch=1,
                        backoff=Backoff(base=0.05, cap=0.5), poll_interval=0.2)
    ids = [str(uuid.uuid4()) for _ in range(6)]
    for order_id in ids:  # six pushes of one: twice the burst
        client.enqueue("order.create", {"id": order_id, "customer_id": 1, "lines": [{"product_id": 2, "qty": 1}]})
    started = time.monotonic()
    async with client:
        await client.wait_until(lambda s: s.in_sync and not s.in_flight and s.pending == 0, timeout=60)
        assert [e.status for e in client.outbox.entries()] == ["applied"] * 6
        assert await count_orders(services, ids) == [1] * 6, "no order lost, none applied twice"
        async with services.db.read() as conn:
            ledger = await conn.scalar(sa.select(sa.func.count()).select_from(mutation_ledger).where(
                mutation_ledger.c.client_id == f"phone-{transport}"))
        assert ledger == 6
        assert await refusals(server, "device", transport) >= 1, "the client was refused on the way"
        assert time.monotonic() - started >= 1, "and waited at least retry_after (1 s) before retrying"
        expected = (await fresh_pull(server.base, sales)).dump()
        deadline = time.monotonic() + 15
        while client.store.dump() != expected and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            expected = (await fresh_pull(server.base, sales)).dump()
        assert client.store.dump() == expected


async def test_python_clients_refused_a_snapshot_come_back_and_all_converge(services, world, launch):
    server = await launch(FIELDSYNC_MAX_SNAPSHOTS="1", FIELDSYNC_SNAPSHOT_RETRY_AFTER="1", FIELDSYNC_PULL_LIMIT="10")
    pos = token(services, world.pos1, "pos")
    clients = [SyncClient(server.base, pos, f"till-{n}", transport="http", backoff=Backoff(base=0.05, cap=0.5),
                          poll_interval=0.5) for n in range(6)]
    try:
        for client in clients:
            client.start()
        await asyncio.gather(*(c.wait_until(lambda s: s.in_sync, timeout=60) for c in clients))
        expected = (await fresh_pull(server.base, pos)).dump()
        assert all(c.store.dump() == expected for c in clients)
        assert await refusals(server, "snapshots", "http") >= 1
    finally:
        await asyncio.gather(*(c.close() for c in clients))
