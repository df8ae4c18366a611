"""``fieldsync migrate``: fieldsync's own chain, then the served domain's (issue 11).

On a company's existing database (the domain brings no migrations) it creates only
fieldsync's tables and the capture triggers: a company table that happens to be called
``products``, or the company's own ``alembic_version``, is left exactly as it was. A
database migrated by the single chain of earlier releases is recognised and stamped.
On PostgreSQL and SQLite.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from server.domain.tables import dashboards, invoices, orders, tenants
from alembic import command

from server.config import DEFAULT_DOMAIN
from server.migrations import FIELDSYNC, chains, pending, upgrade
from server.plugin import load
from sync import capture
from sync.changes import now_ms
from sync.storage import Database
from sync.storage import metadata as fieldsync_tables

from . import field_notes
from .conftest import _reset_pg
from .test_capture import PlainSql

COMPANY = [
    # A table of the company's that shares a name with one of the bundled domain's.
    "CREATE TABLE products (code varchar(20) PRIMARY KEY, label varchar(80) NOT NULL)",
    "INSERT INTO products VALUES ('P-1', 'Hammer'), ('P-2', 'Saw')",
    # The company's backend keeps its own Alembic history.
    "CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)",
    "INSERT INTO alembic_version VALUES ('erp_0042')",
    "INSERT INTO field_notes VALUES ('n-1', 7, 'call back', true)",
]


@pytest.fixture
async def db(settings):
    if not settings.embedded:
        await _reset_pg(settings.database_url)
    database = Database(settings.database_url)
    yield database
    await database.dispose()


async def _shapes(db: Database) -> dict[str, tuple]:
    """Every table's columns, key, indexes and rows: what "left as it was" compares."""
    def read(conn) -> dict[str, tuple]:
        inspector = sa.inspect(conn)
        return {name: ([(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)],
                       inspector.get_pk_constraint(name)["constrained_columns"],
                       sorted(str(i["column_names"]) for i in inspector.get_indexes(name)),
                       sorted(conn.execute(sa.text(f"SELECT * FROM {name}")).all()))
                for name in inspector.get_table_names()}

    async with db.read() as conn:
        return await conn.run_sync(read)


async def test_migrate_on_a_company_database_adds_only_fieldsync_tables_and_triggers(settings, db):
    sql = PlainSql(settings)
    await sql.run([field_notes.CREATE["sqlite" if sql.sqlite else "postgresql"], field_notes.CREATE_LINES, *COMPANY])
    company = await _shapes(db)

    await upgrade(db, field_notes.domain)
    after = await _shapes(db)
    assert set(after) == set(company) | set(fieldsync_tables.tables) | {"fieldsync_version"}
    assert {name: after[name] for name in company} == company, "the company's tables are untouched"
    assert not await pending(db, field_notes.domain)
    assert await capture.installed(db, field_notes.build_registry())

    await upgrade(db, field_notes.domain)  # idempotent
    assert await _shapes(db) == after
    await capture.uninstall(db)
    assert {name: (await _shapes(db))[name] for name in company} == company


async def _make_unsplit(db: Database, revision: str) -> None:
    """Turn a database at both chains' heads into what the single chain left at ``revision``."""
    async with db.write() as conn:
        await conn.execute(sa.text("DROP TABLE fieldsync_version"))
        await conn.execute(sa.text("DROP TABLE field_sales_version"))
        await conn.execute(sa.text("CREATE TABLE alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)"))
        await conn.execute(sa.text("INSERT INTO alembic_version VALUES (:r)"), {"r": revision})


async def _at_the_squashes(db: Database) -> None:
    """Both chains at their first revision: the tables the single chain's 0006 left."""
    def run(connection) -> None:
        for chain in chains(load(DEFAULT_DOMAIN)):
            command.upgrade(chain.config(connection), chain.base())

    async with db.engine.begin() as conn:
        await conn.run_sync(run)
    await capture.install(db, load(DEFAULT_DOMAIN).registry(None))


async def test_a_database_of_the_unsplit_chain_is_stamped_and_keeps_its_rows(db):
    await _at_the_squashes(db)
    shared, now = str(uuid.uuid4()), now_ms()
    old = {
        tenants: [{"id": t, "slug": f"t{t}", "name": f"T{t}", "currency": "EUR"} for t in (1, 2)],
        orders: [{"id": shared, "tenant_id": 1, "number": "SO-000001", "customer_id": 1, "salesperson_id": 11,
                  "branch_id": 1, "status": "confirmed", "lines": [], "total": 0, "currency": "EUR",
                  "taken_at": now, "created_at": now}],
        invoices: [{"id": f"inv-{shared}", "tenant_id": 1, "number": "INV-000001", "order_id": shared,
                    "branch_id": 1, "total": 0, "currency": "EUR", "status": "ready", "created_at": now}],
        dashboards: [{"id": "branch:2", "tenant_id": 2, "kind": "branch", "branch_id": 2, "today_total": 5,
                      "month_total": 5, "currency": "EUR", "top_products": [], "updated_at": now}],
    }
    async with db.write() as conn:
        for table, values in old.items():
            await conn.execute(sa.insert(table), values)
    await _make_unsplit(db, "0006")
    before = await _shapes(db)

    await upgrade(db)
    after = await _shapes(db)
    assert "alembic_version" not in after
    assert after["fieldsync_version"][3] == [(FIELDSYNC.head(),)]  # stamped at the squash, then upgraded
    assert after["field_sales_version"][3] == [("field_sales_0001",)]
    grown = {"devices"}  # fieldsync_0002 added its columns
    assert {n: s for n, s in after.items() if "version" not in n and n not in grown} == {
        n: s for n, s in before.items() if n != "alembic_version" and n not in grown}
    assert {"retired_at", "forgot_through"} <= {column[0] for column in after["devices"][0]}
    # Ids are unique per tenant (what 0005 of the single chain made them): the same id in
    # another tenant is a different row, the same id twice in one tenant is refused.
    async with db.write() as conn:
        await conn.execute(sa.insert(orders), [{**old[orders][0], "tenant_id": 2}])
        await conn.execute(sa.insert(dashboards), [{**old[dashboards][0], "tenant_id": 1}])
    with pytest.raises(sa.exc.IntegrityError):
        async with db.write() as conn:
            await conn.execute(sa.insert(orders), [old[orders][0]])


async def test_an_upgrade_from_the_first_revision_keeps_the_devices(db):
    """fieldsync_0002 adds the stale-device columns to a database that has devices."""
    await _at_the_squashes(db)
    async with db.write() as conn:
        await conn.execute(sa.text(
            "INSERT INTO devices (tenant_id, client_id, user_id, last_mutation_id, first_seen, last_seen, epoch) "
            "VALUES (1, 'phone', 11, 7, 1, 2, 0)"))
    await upgrade(db)
    async with db.read() as conn:
        row = (await conn.execute(sa.text(
            "SELECT client_id, last_mutation_id, retired_at, forgot_through FROM devices"))).one()
    assert tuple(row) == ("phone", 7, None, 0)
    assert not await pending(db)


async def test_an_older_revision_of_the_unsplit_chain_is_refused_with_what_to_do(db):
    await upgrade(db)
    await _make_unsplit(db, "0004")
    with pytest.raises(RuntimeError, match="revision 0004 of an earlier release.*to 0006 first"):
        await upgrade(db)
