"""Change-log compaction (invariant 5 with compaction): superseded entries go, history
beyond the horizon goes, and every device still converges; one offline past the horizon
through a snapshot, deletes included."""

from __future__ import annotations

import argparse
import asyncio

import sqlalchemy as sa

from server import jobs_cli
from server.domain.tables import products
from sync import compaction
from sync.changes import now_ms, write_changes
from sync.storage import change_log, log_head

from .jobs_support import device
from .support import admin_write, seed


async def server_view(services, client, user_id: int, role: str = "salesperson") -> dict:
    fresh = device(services, client, user_id, role)
    await fresh.sync()
    return fresh.replica.data


async def head_of(services, tenant_id: int = 1) -> tuple[int, int]:
    async with services.db.read() as conn:
        return tuple((await conn.execute(sa.select(log_head.c.seq, log_head.c.horizon)
                                         .where(log_head.c.tenant_id == tenant_id))).one())


async def entries(services) -> list[tuple]:
    async with services.db.read() as conn:
        return [tuple(r) for r in await conn.execute(
            sa.select(change_log.c.bucket, change_log.c.key, change_log.c.seq).where(change_log.c.tenant_id == 1))]


async def write(services, table: str, upsert: list[dict], delete: list[int] = ()) -> None:
    await admin_write(services.db, services.registry, 1, table, upsert, list(delete))


async def test_superseded_entries_go_and_devices_still_converge(services, client):
    w = await seed(services)
    s1 = device(services, client, w.sales1)
    await s1.sync()
    for n in range(5):
        await write(services, "customers", [{"id": 1, "phone": f"+31 6 {n}"}])
    await write(services, "products", [], delete=[7])
    before = await entries(services)
    [stats] = await compaction.compact(services.db)
    after = await entries(services)
    assert stats.horizon == 0 and stats.below_horizon == 0  # nothing is 30 days old
    assert stats.superseded == len(before) - len(after) == 2 * 5 + 1  # customer 1 in 2 buckets x 5, product 7
    assert len({(bucket, key) for bucket, key, _ in after}) == len(after)  # one entry per row and bucket
    await s1.sync()
    assert s1.replica.rows("customers")[1]["phone"] == "+31 6 4" and 7 not in s1.replica.rows("catalog")
    assert s1.replica.data == await server_view(services, client, w.sales1)


async def test_a_device_offline_past_the_horizon_gets_a_snapshot_with_deletes(services, client):
    w = await seed(services)
    offline, pos = device(services, client, w.sales1), device(services, client, w.pos1, "pos")
    await offline.sync()
    await pos.sync()
    # History that ages past the horizon: a customer leaves the device's scope, a product is deleted.
    await write(services, "customers", [{"id": 1, "salesperson_id": w.sales2}, {"id": 2, "phone": "old"}])
    await write(services, "products", [{"id": 21, "sku": "SKU-0021", "name": "New", "category": "Hardware",
                                        "unit": "pcs", "active": True}], delete=[7])
    recent = device(services, client, w.sales1)
    await recent.sync()
    await asyncio.sleep(0.01)
    cutoff = now_ms()
    await asyncio.sleep(0.01)
    # Within the retention window: a change and a delete (a product switched off).
    await write(services, "customers", [{"id": 3, "phone": "new"}])
    await write(services, "products", [{"id": 8, "active": False}])
    boundary, _ = await head_of(services)
    [stats] = await compaction.compact(services.db, now=cutoff + compaction.DEFAULT_RETENTION_MS)
    head, horizon = await head_of(services)
    assert horizon == stats.horizon == boundary - 2 and stats.below_horizon > 0
    assert all(seq > horizon for _, _, seq in await entries(services))

    caught_up = await recent.pull_once()  # its cursor is at the horizon: plain changes, no reset
    assert caught_up["reset"] == [] and caught_up["data"]["catalog"]["deletes"] == [8]
    snapshot = await offline.pull_once()  # its cursor is below the horizon: start over
    assert "customers" in snapshot["reset"] and "catalog" in snapshot["reset"]
    await offline.sync()
    await recent.sync()
    view = await server_view(services, client, w.sales1)
    assert offline.replica.data == recent.replica.data == view
    assert 1 not in view["customers"] and 7 not in view["catalog"] and 8 not in view["catalog"]
    assert view["customers"][3]["phone"] == "new" and 21 in view["catalog"]
    await pos.sync()
    assert pos.replica.data == await server_view(services, client, w.pos1, "pos")


async def test_compaction_keeps_up_with_writes_between_windows(services, client):
    """Small delete windows interleaved with commits: no device misses a row."""
    w = await seed(services, products_count=60)
    s1 = device(services, client, w.sales1)
    await s1.sync()

    async def churn() -> None:
        for n in range(20):
            async with write_changes(services.db, services.registry, 1) as changes:
                await changes.update(products, 1 + n % 60, {"name": f"name {n}"})
            await asyncio.sleep(0)

    await asyncio.gather(churn(), compaction.compact(services.db, window=5))
    await compaction.compact(services.db, window=5)
    await s1.sync()
    assert s1.replica.data == await server_view(services, client, w.sales1)


async def test_the_periodic_task_and_the_cli_compact(services, client, capsys):
    await seed(services)
    for n in range(3):
        await write(services, "products", [{"id": 2, "name": f"renamed {n}"}])
    removed = await asyncio.to_thread(services.jobs.named["compact_log"].call_local)
    assert removed == 3  # the seed's entry and two renames of product 2
    code = await asyncio.to_thread(jobs_cli.cmd_compact, services.settings, argparse.Namespace(retention_days=0))
    assert code == 0
    out = capsys.readouterr().out
    assert "tenant 1:" in out and "beyond the horizon" in out
    assert await compaction.log_size(services.db, 1) == 0  # retention 0: everything is history
    head, horizon = await head_of(services)
    assert horizon == head
