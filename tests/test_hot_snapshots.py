"""Hot snapshots (sync/hot.py): pre-built pages of shared datasets serve fresh devices, and a
page older than the data is still correct because the cursor goes back to its position."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import sqlalchemy as sa

from fieldsync_client import HttpSync
from sync import hot
from sync.storage import hot_pages, log_head

from .support import admin_write, seed, token


def device(services, client, user_id: int, role: str) -> HttpSync:
    return HttpSync(client, token(services, user_id, role), f"hot-{uuid.uuid4().hex[:8]}")


async def fresh_view(services, client, user_id: int, role: str) -> dict:
    fresh = device(services, client, user_id, role)
    await fresh.sync()
    return fresh.replica.data


def catalog_names(batch: dict) -> dict[int, str]:
    part = batch["data"].get("catalog", {"cols": ["id", "name"], "rows": []})
    i, n = part["cols"].index("id"), part["cols"].index("name")
    return {row[i]: row[n] for row in part["rows"]}


async def test_fresh_devices_get_prebuilt_pages_then_the_changes_since(services, client):
    w = await seed(services, products_count=25)
    assert await hot.build(services.db, services.registry, w.tenant_id, page_rows=10) >= 3
    async with services.db.read() as conn:
        built = set((await conn.execute(sa.select(hot_pages.c.dataset).distinct())).scalars())
    assert built == {"catalog", "stock"}
    assert await hot.build(services.db, services.registry, w.tenant_id, page_rows=10) == 0, \
        "nothing committed since: the pages stand"

    # written after the build: the pages still say the old name and miss the new product
    await admin_write(services.db, services.registry, w.tenant_id, "products",
                      [{"id": 1, "name": "Renamed after the build"},
                       {"id": 900, "sku": "NEW-900", "name": "New after the build", "category": "New",
                        "unit": "pcs"}], [])
    pos = device(services, client, w.pos1, "pos")
    batches = []
    while True:
        batches.append(await pos.pull_once(limit=50))
        if not batches[-1]["more"]:
            break
    served_from_pages = [b for b in batches if "catalog" in b["reset"]]
    assert catalog_names(served_from_pages[0])[1] != "Renamed after the build", "the page was pre-built"
    async with services.db.read() as conn:
        in_pages = await conn.scalar(sa.select(sa.func.sum(hot_pages.c.count)).where(hot_pages.c.dataset == "catalog"))
    assert served_from_pages[0]["expected"]["catalog"] == in_pages, "counted from the pages, not the table"
    later = {k: v for b in batches[batches.index(served_from_pages[0]) + 1:] for k, v in catalog_names(b).items()}
    assert later[1] == "Renamed after the build" and 900 in later, "changes since the build follow"
    assert pos.replica.data == await fresh_view(services, client, w.pos1, "pos")


async def test_pages_are_skipped_when_compacted_past_or_too_big_for_the_limit(services, client):
    w = await seed(services, products_count=25)
    await hot.build(services.db, services.registry, w.tenant_id, page_rows=10)
    await admin_write(services.db, services.registry, w.tenant_id, "products", [{"id": 2, "name": "Later"}], [])
    small = device(services, client, w.sales1, "salesperson")
    await small.sync(limit=5)  # pages of 10 do not fit: live reads, same result
    assert small.replica.data == await fresh_view(services, client, w.sales1, "salesperson")

    async with services.db.write() as conn:  # compaction moved past the pages' position
        head = await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == w.tenant_id))
        await conn.execute(sa.update(log_head).where(log_head.c.tenant_id == w.tenant_id).values(horizon=head))
    late = device(services, client, w.sales1, "salesperson")
    first = await late.pull_once(limit=1000)
    assert "catalog" not in first["reset"] or catalog_names(first)[2] == "Later", "stale pages were not used"
    await late.sync()
    assert late.replica.data == await fresh_view(services, client, w.sales1, "salesperson")


async def test_builds_at_once_all_succeed_and_leave_one_set_of_pages(services):
    """Workers (or a leftover task beside a fresh one) building at the same time each wrote
    the same pages, and on PostgreSQL one failed on hot_pages_pkey when their writes overlapped."""
    w = await seed(services, products_count=25)
    written = await asyncio.gather(*(hot.build(services.db, services.registry, w.tenant_id, page_rows=10)
                                           for _ in range(4)))
    async with services.db.read() as conn:
        stored = (await conn.execute(sa.select(hot_pages.c.dataset, hot_pages.c.scope, hot_pages.c.page,
                                               hot_pages.c.pages, hot_pages.c.seq))).all()
    assert sum(written) == len(stored) and len(stored) >= 3, "one build wrote, the others kept its pages"
    for (dataset, scope), pages in itertools.groupby(sorted(stored), key=lambda r: (r.dataset, r.scope)):
        pages = list(pages)
        assert [p.page for p in pages] == list(range(pages[0].pages)), f"{dataset}: one whole set of pages"
        assert len({p.seq for p in pages}) == 1
