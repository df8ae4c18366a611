"""Invariant 1: a cursor never moves past a change that commits later.

Many writers hold their transactions open for random times (so they commit in a
different order than they started), while a reader pulls continuously. Any change the
reader's cursor stepped over is never delivered, so the reader's final copy would differ
from the database.
"""

from __future__ import annotations

import asyncio
import random

import pytest
import sqlalchemy as sa

from fieldsync_client import Replica
from server.domain.tables import products
from sync.changes import write_changes

from .support import seed
from .test_invariants import server_view

WRITERS, WRITES = 20, 12


async def _writer(services, tenant_id: int, n: int, rng: random.Random) -> None:
    for i in range(WRITES):
        async with write_changes(services.db, services.registry, tenant_id) as changes:
            # Each product is written once: a later write to the same row would re-deliver
            # its current state and hide a skipped change.
            product_id = n * WRITES + i + 1
            await changes.update(products, product_id, {"name": f"w{n}-{i}"})
            await asyncio.sleep(rng.random() * 0.01)  # hold the transaction open


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_concurrent_writers_and_reader_skip_nothing(services, client):
    w = await seed(services, products_count=WRITERS * WRITES)
    from .test_invariants import device

    reader = device(services, client, w.pos1, "pos")
    await reader.sync()
    stop = asyncio.Event()
    seen = 0

    async def read_continuously() -> None:
        nonlocal seen
        while not stop.is_set():
            response = await reader.pull_once(limit=50)
            seen += len(response["data"].get("catalog", {}).get("rows", []))

    rng = random.Random(1)
    reading = asyncio.create_task(read_continuously())
    await asyncio.gather(*(_writer(services, w.tenant_id, n, random.Random(rng.random())) for n in range(WRITERS)))
    stop.set()
    await reading
    await reader.sync()
    assert seen > 0  # the reader really ran during the writes
    assert reader.replica.rows("catalog") == (await server_view(services, client, w.pos1, "pos"))["catalog"]
    async with services.db.read() as conn:
        names = dict((await conn.execute(sa.select(products.c.id, products.c.name))).all())
    assert {k: r["name"] for k, r in reader.replica.rows("catalog").items()} == names
