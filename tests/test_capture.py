"""Change capture by triggers (sync/capture.py): writes by programs that are not fieldsync,
plain SQL on their own connections, reach devices like fieldsync's own writes.

Invariant 1 with such writers: many concurrent transactions (some held open, some rolled
back, some bulk) while a device pulls continuously; its copy equals the database at the
end, with nothing skipped. On PostgreSQL and SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
import sqlalchemy as sa

from server.domain.registry import build_registry
from server.domain.tables import products
from sync import capture
from sync.schema import Dataset, Scope
from sync.storage import change_log, change_stage, log_head

from .support import seed
from .test_invariants import device, server_view

WRITERS, WRITES = 8, 6


class PlainSql:
    """Another program's connection: asyncpg or sqlite3, no fieldsync code on the path."""

    def __init__(self, settings) -> None:
        self.url = settings.database_url
        self.sqlite = self.url.startswith("sqlite")

    async def run(self, statements: list[str], *, hold: float = 0.0, rollback: bool = False) -> None:
        if self.sqlite:
            await asyncio.to_thread(self._sqlite, statements, hold, rollback)
            return
        conn = await asyncpg.connect(self.url.replace("postgresql+asyncpg://", "postgresql://"),
                                     server_settings={"application_name": "erp-backend"})
        try:
            transaction = conn.transaction()
            await transaction.start()
            for statement in statements:
                await conn.execute(statement)
            await asyncio.sleep(hold)  # a long ERP transaction
            await (transaction.rollback() if rollback else transaction.commit())
        finally:
            await conn.close()

    def _sqlite(self, statements: list[str], hold: float, rollback: bool) -> None:
        conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in statements:
                conn.execute(statement)
            time.sleep(hold)
            conn.execute("ROLLBACK" if rollback else "COMMIT")
        finally:
            conn.close()


@contextlib.asynccontextmanager
async def watching(services, heard: Callable[[int, int, frozenset | None], None] = lambda *a: None
                   ) -> AsyncIterator[None]:
    """What a server process runs: hear (PostgreSQL) or position (SQLite) other programs' commits."""
    task = asyncio.create_task(capture.watch(services.db, heard, interval=0.02))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settled(services) -> None:
    """Wait until nothing staged is left unpositioned (SQLite's watcher runs every 20 ms)."""
    for _ in range(500):
        async with services.db.read() as conn:
            if not await conn.scalar(sa.select(sa.func.count()).select_from(change_stage)):
                return
        await asyncio.sleep(0.01)
    raise AssertionError("staged entries were never positioned")


async def names_in_db(services) -> dict[int, str]:
    async with services.db.read() as conn:
        rows = await conn.execute(sa.select(products.c.id, products.c.name).where(products.c.active.is_(True)))
        return dict(rows.all())


async def test_plain_sql_writers_and_a_pulling_device_skip_nothing(services, client):
    w = await seed(services, products_count=WRITERS * WRITES + 40)
    sql = PlainSql(services.settings)
    reader = device(services, client, w.pos1, "pos")
    await reader.sync()
    rng = random.Random(7)
    true = "TRUE" if not sql.sqlite else "1"
    false = "FALSE" if not sql.sqlite else "0"

    async def writer(n: int) -> None:
        for i in range(WRITES):
            product = n * WRITES + i + 1  # each row written once: a rewrite would hide a skip
            rolled_back = rng.random() < 0.2
            await sql.run([f"UPDATE products SET name = 'w{n}-{i}{'-rolled-back' if rolled_back else ''}' "
                           f"WHERE id = {product}"], hold=rng.random() * 0.02, rollback=rolled_back)

    async def bulk() -> None:  # a multi-row UPDATE, a deactivation (out of every catalog) and new rows
        first = WRITERS * WRITES + 1
        await sql.run([f"UPDATE products SET name = name || ' (bulk)' WHERE id BETWEEN {first} AND {first + 29}",
                       f"UPDATE products SET active = {false} WHERE id BETWEEN {first + 30} AND {first + 34}"])
        await sql.run(["INSERT INTO products (id, tenant_id, sku, name, category, unit, active) VALUES "
                       + ", ".join(f"({9000 + k}, {w.tenant_id}, 'ERP-{k}', 'From the ERP {k}', 'Imported', 'pcs', "
                                   f"{true})" for k in range(20))])

    stop, pulled = asyncio.Event(), 0

    async def pull_continuously() -> None:
        nonlocal pulled
        while not stop.is_set():
            pulled += len((await reader.pull_once(limit=7))["data"].get("catalog", {}).get("rows", []))

    async with watching(services):
        reading = asyncio.create_task(pull_continuously())
        await asyncio.gather(*(writer(n) for n in range(WRITERS)), bulk())
        await settled(services)
        stop.set()
        await reading
    await reader.sync()
    assert pulled > 0, "the device pulled while the writers wrote"
    names = {key: row["name"] for key, row in reader.replica.rows("catalog").items()}
    assert names == await names_in_db(services)
    assert not any("rolled-back" in name for name in names.values())
    assert reader.replica.rows("catalog") == (await server_view(services, client, w.pos1, "pos"))["catalog"]


async def test_positions_stay_gapless_and_one_per_transaction(services):
    w = await seed(services, products_count=10)
    sql = PlainSql(services.settings)
    async with services.db.read() as conn:
        head = await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == w.tenant_id))
    async with watching(services):
        # SQLite positions what is staged when its watcher looks: settled after each, as if
        # the writes came slowly (two quick ones would share a position, never split one).
        for statements, rollback in (([f"UPDATE products SET name = 'a' WHERE id = {n}" for n in (1, 2, 3)], False),
                                     (["UPDATE products SET name = 'b' WHERE id = 4"], True),
                                     (["UPDATE products SET name = 'c' WHERE id = 999"], False),  # no row
                                     (["UPDATE products SET name = 'd' WHERE id = 5"], False)):
            await sql.run(statements, rollback=rollback)
            await settled(services)
    async with services.db.read() as conn:
        entries = (await conn.execute(sa.select(change_log.c.seq, change_log.c.key).where(
            change_log.c.tenant_id == w.tenant_id, change_log.c.seq > head))).all()
    by_seq: dict[int, set[str]] = {}
    for seq, key in entries:
        by_seq.setdefault(seq, set()).add(key)
    assert list(by_seq) == sorted(by_seq) and sorted(by_seq) == [head + 1, head + 2], by_seq
    assert by_seq == {head + 1: {"1", "2", "3"}, head + 2: {"5"}}


async def test_a_row_moved_out_of_scope_by_plain_sql_reaches_the_device_as_a_delete(services, client):
    w = await seed(services)
    sql = PlainSql(services.settings)
    phone = device(services, client, w.sales1)
    await phone.sync()
    mine = sorted(phone.replica.rows("customers"))
    assert mine, "sales1 has customers"
    async with watching(services):
        await sql.run([f"UPDATE customers SET salesperson_id = {w.sales2} WHERE id = {mine[0]}"])
        await settled(services)
    await phone.sync()
    assert mine[0] not in phone.replica.rows("customers")
    other = device(services, client, w.sales2)
    await other.sync()
    assert mine[0] in other.replica.rows("customers")


async def test_live_devices_hear_of_plain_sql_writes_without_the_safety_poll(services):
    """PostgreSQL NOTIFYs from the commit trigger; SQLite's watcher positions and tells."""
    w = await seed(services, products_count=5)
    heard: asyncio.Queue = asyncio.Queue()
    async with watching(services, lambda tenant, seq, buckets: heard.put_nowait((tenant, seq, buckets))):
        await asyncio.sleep(0.2)  # LISTEN is in place
        await PlainSql(services.settings).run(["UPDATE products SET name = 'live' WHERE id = 1"])
        tenant, seq, buckets = await asyncio.wait_for(heard.get(), 5)
    assert tenant == w.tenant_id and seq > 0
    assert buckets is None or any(b.startswith("products:") for b in buckets)


async def test_fieldsync_writes_are_not_announced_twice(services):
    """Its own commits reach the fan-out from the code (with position and buckets); the
    trigger's NOTIFY is for other programs only."""
    from .support import admin_write

    w = await seed(services, products_count=5)
    heard: list = []
    async with watching(services, lambda *notice: heard.append(notice)):
        await asyncio.sleep(0.2)
        await admin_write(services.db, services.registry, w.tenant_id, "products", [{"id": 1, "name": "ours"}], [])
        await asyncio.sleep(0.3)
    assert heard == []


async def test_install_is_idempotent_follows_the_declarations_and_uninstalls(services):
    db, registry = services.db, build_registry()
    assert await capture.installed(db, registry)
    assert await capture.install(db, registry) is False, "already in place: nothing to do"

    # A new dataset over products, scoped by category: the triggers now file rows there too.
    registry.dataset(Dataset("by_category", products, ("id", "name", "category"),
                             {"pos": Scope(partition="category", values=lambda p: ["Tools"])}))
    assert not await capture.installed(db, registry)
    assert await capture.install(db, registry) is True
    w = await seed(services, products_count=5)
    sql = PlainSql(services.settings)
    async with watching(services):
        await sql.run(["UPDATE products SET category = 'Tools' WHERE id = 1"])
        await settled(services)
    async with db.read() as conn:
        buckets = set((await conn.execute(sa.select(change_log.c.bucket).where(
            change_log.c.tenant_id == w.tenant_id, change_log.c.key == "1"))).scalars())
    assert "products:category:#Tools" in buckets

    before = await _table_shapes(services)
    await capture.uninstall(db)
    assert await _table_shapes(services) == before, "the tables are as they were"
    await sql.run(["UPDATE products SET name = 'uncaptured' WHERE id = 2"])
    async with db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(change_stage)) == 0
    assert await _trigger_count(services) == 0
    await capture.install(db, registry)
    assert await _trigger_count(services) > 0


async def _table_shapes(services) -> dict[str, list]:
    async with services.db.read() as conn:
        return await conn.run_sync(lambda c: {name: [(col["name"], str(col["type"])) for col in
                                                     sa.inspect(c).get_columns(name)]
                                              for name in sa.inspect(c).get_table_names()})


async def _trigger_count(services) -> int:
    query = ("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'fieldsync_%'"
             if services.db.is_sqlite else "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'fieldsync_%'")
    async with services.db.read() as conn:
        return await conn.scalar(sa.text(query))


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_copy_into_a_synced_table_is_captured(services, client):
    w = await seed(services, products_count=5)
    reader = device(services, client, w.pos1, "pos")
    await reader.sync()
    conn = await asyncpg.connect(services.settings.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.copy_records_to_table(
            "products", columns=["id", "tenant_id", "sku", "name", "category", "unit", "active"],
            records=[(7000 + k, w.tenant_id, f"COPY-{k}", f"Copied {k}", "Imported", "pcs", True) for k in range(500)])
    finally:
        await conn.close()
    await reader.sync()
    assert {7000, 7499} <= set(reader.replica.rows("catalog"))
    assert reader.replica.rows("catalog") == (await server_view(services, client, w.pos1, "pos"))["catalog"]



async def test_another_fieldsync_process_such_as_an_import_is_heard_at_once(services):
    """`fieldsync import` commits from its own process, which has no fan-out: its commits
    are announced by the capture (PostgreSQL NOTIFY) or seen in the log head (SQLite)."""
    from .support import admin_write
    from sync.storage import Database

    w = await seed(services, products_count=5)
    heard: asyncio.Queue = asyncio.Queue()
    importer = Database(services.settings.database_url, application="fieldsync-cli")
    try:
        async with watching(services, lambda tenant, seq, buckets: heard.put_nowait((tenant, seq))):
            await asyncio.sleep(0.2)
            await admin_write(importer, services.registry, w.tenant_id, "products", [{"id": 2, "name": "imported"}], [])
            tenant, seq = await asyncio.wait_for(heard.get(), 5)
    finally:
        await importer.dispose()
    async with services.db.read() as conn:
        head = await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == w.tenant_id))
    assert (tenant, seq) == (w.tenant_id, head)
