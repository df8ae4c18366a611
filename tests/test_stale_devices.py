"""Stale-device cleanup (sync/devices.py ``retire_stale``, the daily ``retire_stale_devices``
task): a device unseen for ``FIELDSYNC_STALE_DEVICE_DAYS`` is retired, its ledger entries
go, it stops counting toward its user's cap; should it come back it counts again, starts
over from a snapshot, and a replay of what it pushed before is never applied twice."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import pytest
import sqlalchemy as sa

from fieldsync_client import HttpSync, SyncHttpError
from server.domain.tables import orders
from sync import devices as device_registry
from sync.changes import now_ms
from sync.storage import devices, mutation_ledger

from .support import seed, token

DAY_MS = 86_400_000


async def age(services, client_id: str, days: float) -> None:
    """Pretend the device was last seen ``days`` ago."""
    async with services.db.write() as conn:
        await conn.execute(sa.update(devices).where(devices.c.client_id == client_id)
                           .values(last_seen=now_ms() - int(days * DAY_MS)))


async def device_row(services, client_id: str):
    async with services.db.read() as conn:
        return (await conn.execute(sa.select(devices).where(devices.c.client_id == client_id))).mappings().one()


async def ledger_of(services, client_id: str) -> int:
    async with services.db.read() as conn:
        return await conn.scalar(sa.select(sa.func.count()).select_from(mutation_ledger).where(
            mutation_ledger.c.client_id == client_id))


def order_of(device: HttpSync) -> dict:
    return device.mutation("order.create", {"id": str(uuid.uuid4()), "customer_id": 1,
                                            "lines": [{"product_id": 2, "qty": 1}]})


async def test_a_device_unseen_that_long_is_retired_and_its_ledger_goes(services, client):
    w = await seed(services)
    old = HttpSync(client, token(services, w.sales1, "salesperson"), "old-phone")
    new = HttpSync(client, token(services, w.sales1, "salesperson"), "new-phone")
    pushed = [order_of(old), order_of(old)]
    assert [r["status"] for r in await old.push(pushed)] == ["applied", "applied"]
    await new.push([order_of(new)])
    await age(services, "old-phone", 181)
    await age(services, "new-phone", 179)

    retired = await asyncio.to_thread(services.jobs.named["retire_stale_devices"].call_local)
    assert retired == 1
    row = await device_row(services, "old-phone")
    assert row["retired_at"] is not None and row["forgot_through"] == row["last_mutation_id"] == 2
    assert await ledger_of(services, "old-phone") == 0
    assert (await device_row(services, "new-phone"))["retired_at"] is None
    assert await ledger_of(services, "new-phone") == 1
    async with services.db.read() as conn:  # what the mutations made stays
        assert await conn.scalar(sa.select(sa.func.count()).select_from(orders)) == 3
    # run again: nothing more to do
    assert await device_registry.retire_stale(services.db, services.registry, 180 * DAY_MS) == 0


async def test_a_retired_device_comes_back_counted_reset_and_applying_nothing_twice(services, client):
    w = await seed(services)
    bearer = token(services, w.sales1, "salesperson")
    old = HttpSync(client, bearer, "old-phone")
    await old.sync()
    first = [order_of(old)]
    [applied] = await old.push(first)
    await age(services, "old-phone", 200)
    assert await device_registry.retire_stale(services.db, services.registry, 180 * DAY_MS) == 1

    # It no longer counts toward the cap: two more devices fit under a cap of two.
    services.settings = replace(services.settings, max_devices_per_user=2)
    for name in ("phone-b", "phone-c"):
        await HttpSync(client, bearer, name).sync()
    with pytest.raises(SyncHttpError) as refused:  # coming back, it counts again: the cap is full
        await old.pull_once()
    assert refused.value.code == "FORBIDDEN" and "limit" in refused.value.message
    assert (await device_row(services, "old-phone"))["retired_at"] is not None

    services.settings = replace(services.settings, max_devices_per_user=20)
    batch = await old.pull_once()
    assert "customers" in batch["reset"], batch["reset"]  # its data is as old as its retirement
    row = await device_row(services, "old-phone")
    assert row["retired_at"] is None and row["enrolled_at"] is not None
    # The outbox replayed (the reply of its last push lost long ago): refused as forgotten,
    # not applied again; what it makes now applies.
    [replayed] = await old.push(first)
    assert replayed["status"] == "rejected" and replayed["code"] == "CONFLICT"
    assert "retired as stale" in replayed["message"]
    [fresh] = await old.push([order_of(old)])
    assert fresh["status"] == "applied" and applied["status"] == "applied"
    async with services.db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(orders)) == 2
    await old.sync()
    assert len(old.replica.rows("orders")) == 2
