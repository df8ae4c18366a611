"""Admission control (server/admission.py), in-process over HTTP on SQLite and PostgreSQL:
a device or a user over its rate gets 429 RATE_LIMITED with ``retry_after`` and a
``Retry-After`` header, and nothing of the request is applied; others are not affected; the
bucket refills. Past the snapshot cap a snapshot pull gets 503 UNAVAILABLE with
``retry_after`` while incremental pulls go on, and is served once a slot is free. The token
bucket's bound is a property test. The WebSocket framing and the clients' retries are in
tests/test_admission_live.py."""

from __future__ import annotations

import asyncio
import copy
import uuid
from dataclasses import replace

import msgpack
import pytest
import sqlalchemy as sa
from hypothesis import given, settings as hsettings, strategies as st
from prometheus_client import REGISTRY

from fieldsync_client import HttpSync
from server.admission import Admission, RateLimiter, TokenBucket
from server.domain.tables import orders
from sync.changes import now_ms
from sync.storage import devices, mutation_ledger

from .support import seed, token

MSGPACK = {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}


class Clock:
    """A monotonic clock the test moves by hand: refills are exact, not timing-dependent."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def configure(services, clock=None, **changes) -> None:
    """Admission with these settings from now on (the fixture's settings switch it off)."""
    services.settings = replace(services.settings, rate_limits=True, **changes)
    services.admission = Admission(services.settings, clock or Clock())


def refused(limit: str, framing: str = "http") -> float:
    return REGISTRY.get_sample_value("fieldsync_admission_refused_total", {"limit": limit, "framing": framing}) or 0


async def post(client, bearer: str, path: str, body: dict):
    response = await client.post(path, content=msgpack.packb(body), headers={**MSGPACK, "Authorization": f"Bearer {bearer}"})
    return response, msgpack.unpackb(response.content)


def order_mutation(mid: int, order_id: str) -> dict:
    return {"id": mid, "name": "order.create", "at": now_ms(), "args": {"id": order_id, "customer_id": 1,
                                                                "lines": [{"product_id": 1, "qty": 1}]}}


async def orders_with(services, order_id: str) -> int:
    async with services.db.read() as conn:
        return await conn.scalar(sa.select(sa.func.count()).select_from(orders).where(orders.c.id == order_id))


async def test_a_device_over_its_rate_is_refused_and_nothing_is_applied(services, client):
    w = await seed(services)
    clock = Clock()
    configure(services, clock, device_rate=0.5, device_burst=3, user_rate=100, user_burst=100)
    sales = token(services, w.sales1, "salesperson")
    for mid in (1, 2, 3):  # the burst: three pushes
        response, body = await post(client, sales, "/sync/push", {"v": 1, "client_id": "phone",
                                                                   "mutations": [order_mutation(mid, str(uuid.uuid4()))]})
        assert response.status_code == 200 and body["results"][0]["status"] == "applied"
    before = refused("device")
    extra = str(uuid.uuid4())
    response, body = await post(client, sales, "/sync/push", {"v": 1, "client_id": "phone",
                                                               "mutations": [order_mutation(4, extra)]})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"  # one token at 0.5/s
    assert body == {"error": {"code": "RATE_LIMITED", "message": body["error"]["message"], "retry_after": 2}}
    assert refused("device") == before + 1
    assert await orders_with(services, extra) == 0
    async with services.db.read() as conn:
        ledger = await conn.scalar(sa.select(sa.func.count()).select_from(mutation_ledger).where(
            mutation_ledger.c.client_id == "phone", mutation_ledger.c.mutation_id == 4))
    assert ledger == 0, "a refused push leaves no trace in the ledger"
    pulled, _ = await post(client, sales, "/sync/pull", {"v": 1, "client_id": "phone", "cursor": None})
    assert pulled.status_code == 429, "pulls and pushes share the device's bucket"

    # another device of the same user, and another user, are served meanwhile
    other = HttpSync(client, sales, "tablet")
    await other.sync()
    till = HttpSync(client, token(services, w.pos1, "pos"), "till")
    await till.sync()

    clock.now += 2  # one token back
    response, body = await post(client, sales, "/sync/push", {"v": 1, "client_id": "phone",
                                                               "mutations": [order_mutation(4, extra)]})
    assert response.status_code == 200 and body["results"][0]["status"] == "applied"
    assert await orders_with(services, extra) == 1


async def test_a_user_is_limited_across_fresh_client_ids(services, client):
    w = await seed(services)
    clock = Clock()
    configure(services, clock, device_rate=100, device_burst=100, user_rate=1, user_burst=4)
    sales = token(services, w.sales1, "salesperson")
    for n in range(4):
        await HttpSync(client, sales, f"fresh-{n}").sync()
    before = refused("user")
    response, body = await post(client, sales, "/sync/pull", {"v": 1, "client_id": "fresh-4", "cursor": None})
    assert response.status_code == 429 and body["error"]["code"] == "RATE_LIMITED"
    assert "user" in body["error"]["message"] and body["error"]["retry_after"] == 1
    assert refused("user") == before + 1
    async with services.db.read() as conn:
        registered = await conn.scalar(sa.select(sa.func.count()).select_from(devices).where(
            devices.c.client_id == "fresh-4"))
    assert registered == 0, "a refused pull registers no device"
    await HttpSync(client, token(services, w.sales2, "salesperson"), "ben-1").sync()  # another user is served
    clock.now += 1
    await HttpSync(client, sales, "fresh-4").sync()


async def test_past_the_snapshot_cap_a_snapshot_waits_its_turn_outside(services, client):
    w = await seed(services)
    configure(services, max_snapshots=1, snapshot_retry_after=3)
    pos = token(services, w.pos1, "pos")
    synced = HttpSync(client, pos, "till-synced")
    await synced.sync()
    before = refused("snapshots")
    with services.admission.snapshots.hold("http"):  # one snapshot in flight
        response, body = await post(client, pos, "/sync/pull", {"v": 1, "client_id": "till-new", "cursor": None})
        assert response.status_code == 503 and response.headers["Retry-After"] == "3"
        assert body["error"]["code"] == "UNAVAILABLE" and body["error"]["retry_after"] == 3
        assert refused("snapshots") == before + 1
        await synced.sync()  # an incremental pull needs no slot
    async with services.db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(devices).where(
            devices.c.client_id == "till-new")) == 0
    assert services.admission.snapshots.in_flight == 0
    fresh = HttpSync(client, pos, "till-new")
    await fresh.sync()
    assert fresh.replica.dump() == synced.replica.dump()


async def test_concurrent_snapshots_past_the_cap_are_refused_then_all_served(services, client):
    w = await seed(services, products_count=120)
    configure(services, max_snapshots=1)
    pos = token(services, w.pos1, "pos")
    refusals = 0

    async def device(n: int) -> dict:
        nonlocal refusals
        replica = HttpSync(client, pos, f"till-{n}").replica
        cursor, more = None, True
        while more:
            response, body = await post(client, pos, "/sync/pull", {"v": 1, "client_id": f"till-{n}",
                                                                    "cursor": cursor, "limit": 30})
            if response.status_code == 503:
                assert body["error"]["retry_after"] >= 1
                refusals += 1
                await asyncio.sleep(0.01)  # the server said 2 s: the test need not wait that long
                continue
            assert response.status_code == 200, body
            replica.apply(body)
            cursor, more = body["cursor"], body["more"]
        return replica.dump()

    copies = await asyncio.gather(*(device(n) for n in range(6)))
    assert refusals > 0
    assert all(copy == copies[0] for copy in copies) and len(copies[0]["catalog"]) == 120
    assert services.admission.snapshots.in_flight == 0


@hsettings(max_examples=200, deadline=None)
@given(rate=st.floats(0.1, 1000), burst=st.integers(1, 200),
       steps=st.lists(st.floats(0, 0.5), min_size=1, max_size=300))
def test_a_bucket_never_admits_more_than_its_burst_plus_its_rate(rate, burst, steps):
    now = 0.0
    bucket, admitted = TokenBucket(rate, burst, now), 0
    for step in steps:
        now += step
        if bucket.wait(now) == 0:
            bucket.take()
            admitted += 1
        else:  # the wait it names is enough (probed on a copy: the probe refills it)
            wait = bucket.wait(now)
            assert copy.copy(bucket).wait(now + wait * (1 + 1e-9) + 1e-9) == 0
        assert admitted <= burst + rate * now + 1e-6
    assert 0 <= bucket.tokens <= burst


def test_the_limiter_forgets_the_least_recently_used_past_its_size():
    limiter = RateLimiter(1, 5, max_keys=3)
    for key in "abcd":
        limiter.bucket(key, 0).take()
    assert len(limiter) == 3 and "a" not in limiter._buckets


@pytest.mark.parametrize("switch", [False, True])
async def test_rate_limits_switch_off(services, client, switch):
    w = await seed(services)
    configure(services, device_rate=0.01, device_burst=1)
    services.admission.enabled = switch
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "phone")
    await device.sync()
    response, _ = await post(client, token(services, w.sales1, "salesperson"), "/sync/pull",
                             {"v": 1, "client_id": "phone", "cursor": device.replica.cursor})
    assert response.status_code == (429 if switch else 200)


@pytest.mark.postgres
async def test_a_pool_exhausted_past_its_timeout_is_unavailable_not_a_fault(pg_database):
    """What a storm without the snapshot cap ran into: every pooled connection taken and the
    wait past the pool's timeout. That is UNAVAILABLE with retry_after (nothing ran), not a
    500."""
    from sync.errors import ErrorCode, SyncError
    from sync.storage import Database

    db = Database(pg_database, pool_size=1, pool_timeout=0.2)
    try:
        async with db.read(), db.read():  # the pool's one connection and its one overflow
            with pytest.raises(SyncError) as refused:
                async with db.read():
                    pass
        assert refused.value.code is ErrorCode.UNAVAILABLE and refused.value.retry_after
    finally:
        await db.dispose()
