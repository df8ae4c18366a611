"""Tenants cannot reach each other through ids (issue 10, item 3).

An admin write may only name rows of the writer's tenant; derived ids (dashboards,
invoices, files, notices) and device-made UUIDs are unique per tenant, so two tenants
never collide on a key, and a tenant learns nothing of another's ids. Jobs run at once
where they are enqueued, as in ``test_jobs.py``, so the rows jobs derive are there to
collide.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from server.app import Services
from server.domain.background import dashboards as dashboard_jobs
from server.domain.job_tables import document_files, documents, notices
from server.domain.tables import (
    branches, customers, dashboards, invoices, orders, payments, pricelists, prices, products, sales, stock,
    tenants, users, visits,
)
from sync.changes import now_ms, write_changes
from sync.storage import jobs_failed

from .jobs_support import device, fetch, pdf_text, rows
from .support import DAY, World, seed, token
from .test_admin_api import admin_post, assert_error, dump
from .test_jobs import services  # noqa: F401 (the fixture: jobs run where they are enqueued)

# Tenant 2's world (tenant 1's is tests/support.py's): ids are global integers, so its own.
ADMIN2, SALES2, POS2, PLANTED = 42, 43, 44, 47
WAREHOUSE2, SHOP2, PRICELIST2, CUSTOMER2 = 3, 4, 3, 50
PRODUCTS2 = range(500, 700)
EXISTING = {"users": SALES2, "customers": CUSTOMER2, "branches": SHOP2, "prices": 9000, "stock": 9000}
DB_WORDS = re.compile(r"constraint|violat|tenant_id|sqlite|psycopg|asyncpg|\bkey\b", re.I)




async def seed_two(services: Services) -> World:
    """Tenant 1 as usual; tenant 2 with a warehouse, a shop, a pricelist, 200 priced
    products stocked in the warehouse, a salesperson, a till, an admin and a customer."""
    w, now = await seed(services), now_ms()
    async with services.db.write() as conn:
        await conn.execute(sa.insert(pricelists).values(id=PRICELIST2, tenant_id=2, name="List", currency="EUR"))
    async with write_changes(services.db, services.registry, 2) as ch:
        await ch.insert(branches, [{"id": WAREHOUSE2, "name": "Depot", "kind": "warehouse"},
                                   {"id": SHOP2, "name": "Kiosk", "kind": "shop", "pricelist_id": PRICELIST2}])
        await ch.insert(users, [
            {"id": ADMIN2, "username": "admin", "name": "Other office", "role": "admin"},
            {"id": SALES2, "username": "rep", "name": "Rita", "role": "salesperson", "branch_id": WAREHOUSE2},
            {"id": POS2, "username": "till", "name": "Kiosk till", "role": "pos", "branch_id": SHOP2},
        ])
        await ch.insert(products, [{"id": p, "sku": f"O-{p}", "name": f"Theirs {p}", "category": "Misc",
                                    "unit": "pcs", "active": True} for p in PRODUCTS2])
        await ch.insert(prices, [{"id": 9000 + n, "pricelist_id": PRICELIST2, "product_id": p, "amount": 300,
                                  "currency": "EUR", "valid_from": now - 30 * DAY} for n, p in enumerate(PRODUCTS2)])
        await ch.insert(stock, [{"id": 9000, "branch_id": WAREHOUSE2, "product_id": 500, "on_hand": 50}])
        await ch.insert(customers, [{"id": CUSTOMER2, "name": "Their customer", "salesperson_id": SALES2,
                                     "branch_id": SHOP2, "pricelist_id": PRICELIST2, "credit_limit": 1_000_000,
                                     "currency": "EUR", "email": "them@example.com"}])
    return w


def admin2(services: Services) -> str:
    return token(services, ADMIN2, "admin", tenant_id=2)


def _dev(services, client, user_id: int, role: str, tenant_id: int):
    dev = device(services, client, user_id, role)
    dev.token = token(services, user_id, role, tenant_id)
    return dev


# -- admin writes name rows of the writer's tenant only ------------------------------------


async def test_a_till_planted_in_another_tenants_shop_is_refused(services, client):
    """The issue's scenario: tenant 2's admin gives a new till tenant 1's shop."""
    w = await seed_two(services)
    before = await dump(services)
    planted = {"id": PLANTED, "username": "till9", "name": "Planted", "role": "pos", "branch_id": w.shop}
    response, decoded = await admin_post(client, "users", {"upsert": [planted]}, admin2(services))
    message = assert_error(response, decoded, 400, "INVALID_ARGS")
    assert message == f"row 0: `branch_id` {w.shop} is not a branch of this tenant"
    assert await dump(services) == before
    response, decoded = await admin_post(client, "users", {"upsert": [{**planted, "branch_id": SHOP2}]},
                                         admin2(services))
    assert response.status_code == 200, decoded


def _new_row(table: str) -> dict[str, Any]:
    """A valid new row of tenant 2, every reference its own."""
    return {
        "users": {"id": 45, "username": "u45", "name": "New", "role": "salesperson", "branch_id": WAREHOUSE2},
        "customers": {"id": 51, "name": "C51", "salesperson_id": SALES2, "branch_id": SHOP2,
                      "pricelist_id": PRICELIST2, "credit_limit": 1000, "currency": "EUR"},
        "branches": {"id": 5, "name": "B5", "kind": "shop", "pricelist_id": PRICELIST2},
        "prices": {"id": 9500, "pricelist_id": PRICELIST2, "product_id": 501, "amount": 100, "currency": "EUR",
                   "valid_from": 0},
        "stock": {"id": 9500, "branch_id": WAREHOUSE2, "product_id": 501, "on_hand": 5},
    }[table]


REFERENCES = [  # (table, column, tenant 1's row it is pointed at, what the message calls it)
    ("users", "branch_id", World.shop, "branch"),
    ("customers", "salesperson_id", World.sales1, "user"),
    ("customers", "branch_id", World.shop, "branch"),
    ("customers", "pricelist_id", World.wholesale, "pricelist"),
    ("branches", "pricelist_id", World.retail, "pricelist"),
    ("prices", "pricelist_id", World.wholesale, "pricelist"),
    ("prices", "product_id", 3, "product"),
    ("stock", "branch_id", World.shop, "branch"),
    ("stock", "product_id", 3, "product"),
]


@pytest.mark.parametrize("table,column,theirs,noun", REFERENCES, ids=[f"{t}.{c}" for t, c, _, _ in REFERENCES])
async def test_every_reference_must_name_a_row_of_the_tenant(services, client, table, column, theirs, noun):
    await seed_two(services)
    before = await dump(services)
    cases = [  # a new row, an update of an existing one, a reference to no row at all
        ([_new_row(table), {**_new_row(table), "id": _new_row(table)["id"] + 1, column: theirs}], 1, theirs),
        ([{"id": EXISTING[table], column: theirs}], 0, theirs),
        ([{**_new_row(table), column: 99_999}], 0, 99_999),
    ]
    for batch, index, value in cases:
        response, decoded = await admin_post(client, table, {"upsert": batch}, admin2(services))
        message = assert_error(response, decoded, 400, "INVALID_ARGS")
        assert message == f"row {index}: `{column}` {value} is not a {noun} of this tenant"
        assert await dump(services) == before
    response, decoded = await admin_post(client, table, {"upsert": [_new_row(table)]}, admin2(services))
    assert response.status_code == 200, decoded


async def test_references_are_checked_with_one_query_per_referenced_table(services, client):
    await seed_two(services)
    batch = [{"id": 9100 + n, "branch_id": SHOP2, "product_id": p, "on_hand": 1} for n, p in enumerate(PRODUCTS2)]
    lookups: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:
        lookups.extend(re.findall(r"FROM (branches|products)\b", statement))

    event.listen(services.db.engine.sync_engine, "before_cursor_execute", count)
    try:
        response, decoded = await admin_post(client, "stock", {"upsert": batch}, admin2(services))
    finally:
        event.remove(services.db.engine.sync_engine, "before_cursor_execute", count)
    assert response.status_code == 200, decoded
    assert sorted(lookups) == ["branches", "products"]
    before = await dump(services)
    batch = [{**row, "id": row["id"] + 1000, "branch_id": WAREHOUSE2} for row in batch]
    batch[150]["product_id"] = 3  # tenant 1's
    response, decoded = await admin_post(client, "stock", {"upsert": batch}, admin2(services))
    message = assert_error(response, decoded, 400, "INVALID_ARGS")
    assert message == "row 150: `product_id` 3 is not a product of this tenant"
    assert await dump(services) == before


async def test_refusals_speak_of_the_request_not_the_database(services, client):
    w = await seed_two(services)
    before = await dump(services)
    cases = [  # (table, batch, what the message must name)
        ("products", [{"id": 3, "sku": "X", "name": "Mine", "category": "C", "unit": "pcs"}], "row 0: `id` 3"),
        ("users", [{"id": 46, "username": "rep", "name": "Twin", "role": "salesperson"}], "`username`"),
        ("stock", [{"id": 9501, "branch_id": WAREHOUSE2, "product_id": 500, "on_hand": 1}],
         "`branch_id`, `product_id`"),
    ]
    for table, batch, named in cases:
        response, decoded = await admin_post(client, table, {"upsert": batch}, admin2(services))
        message = assert_error(response, decoded, 400, "BAD_REQUEST")
        assert named in message and not DB_WORDS.search(message), message
        assert await dump(services) == before
    assert (await rows(services, products, products.c.id == 3))[0]["name"] == "Product 3"
    assert w.tenant_id == 1


# -- derived ids are per tenant ---------------------------------------------------------------


async def test_a_planted_till_no_longer_breaks_the_other_tenants_shop_dashboard(services, client):
    """A till of tenant 2 in tenant 1's shop (made before references were checked) sells:
    both tenants' jobs write a ``branch:<shop>`` dashboard, each its own."""
    w = await seed_two(services)
    async with write_changes(services.db, services.registry, 2) as ch:
        await ch.insert(users, [{"id": PLANTED, "username": "till9", "name": "Planted", "role": "pos",
                                 "branch_id": w.shop}])
    planted, pos1 = _dev(services, client, PLANTED, "pos", 2), _dev(services, client, w.pos1, "pos", 1)
    for dev, price in ((planted, 700), (pos1, 200)):
        [done] = await dev.push([dev.mutation("sale.complete", {
            "id": str(uuid.uuid4()), "payment_method": "cash",
            "lines": [{"product_id": 500 if dev is planted else 1, "qty": 1, "price": price}]})])
        assert done["status"] == "applied", done
    assert await rows(services, jobs_failed) == []
    for dev, total in ((planted, 700), (pos1, 200)):
        await dev.sync()
        assert dev.replica.rows("dashboard")[f"branch:{w.shop}"]["today_total"] == total
    await dashboard_jobs.refresh_all(services.db, services.registry)
    assert {(d["tenant_id"], d["id"]) for d in await rows(services, dashboards, dashboards.c.kind == "branch")} \
        >= {(1, f"branch:{w.shop}"), (2, f"branch:{w.shop}")}


MUTATIONS = {  # name: (dataset, args for tenant 1, args for tenant 2, the column telling them apart)
    "order.create": ("orders", {"customer_id": 1, "lines": [{"product_id": 3, "qty": 1}]},
                     {"customer_id": CUSTOMER2, "lines": [{"product_id": 500, "qty": 1}]}, "customer_id"),
    "payment.record": ("payments", {"customer_id": 1, "amount": 100, "currency": "EUR", "method": "cash"},
                       {"customer_id": CUSTOMER2, "amount": 200, "currency": "EUR", "method": "cash"}, "amount"),
    "visit.checkin": ("visits", {"customer_id": 1, "note": "ours"}, {"customer_id": CUSTOMER2, "note": "theirs"},
                      "note"),
    "sale.complete": ("sales", {"payment_method": "cash", "lines": [{"product_id": 1, "qty": 1, "price": 200}]},
                      {"payment_method": "card", "lines": [{"product_id": 500, "qty": 1, "price": 300}]},
                      "total"),
    "report.request": ("documents", {"kind": "daily_sales"}, {"kind": "customer_statement",
                                                              "customer_id": CUSTOMER2}, "title"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
async def test_two_tenants_may_use_the_same_device_made_uuid(services, client, name):
    w = await seed_two(services)
    dataset, ours, theirs, column = MUTATIONS[name]
    pos = name == "sale.complete"
    mine = _dev(services, client, w.pos1 if pos else w.sales1, "pos" if pos else "salesperson", 1)
    other = _dev(services, client, POS2 if pos else SALES2, "pos" if pos else "salesperson", 2)
    shared = str(uuid.uuid4())
    [first] = await mine.push([mine.mutation(name, {"id": shared, **ours})])
    [second] = await other.push([other.mutation(name, {"id": shared, **theirs})])
    assert first["status"] == second["status"] == "applied", (first, second)
    [again] = await other.push([other.mutation(name, {"id": shared, **theirs})])
    assert (again["status"], again["code"]) == ("rejected", "CONFLICT")  # still unique within a tenant
    await mine.sync()
    await other.sync()
    a, b = mine.replica.rows(dataset)[shared], other.replica.rows(dataset)[shared]
    assert a[column] != b[column]
    if name == "order.create":
        assert (a["number"], b["number"]) == ("SO-000001", "SO-000001")  # each tenant's own series
    for dev in (mine, other):  # each sees only its own, and its derived rows (invoice, file) too
        assert len(dev.replica.rows(dataset)) == 1
        for invoice in dev.replica.rows("invoices").values():
            assert invoice["status"] == "ready" and invoice["id"] == f"inv-{shared}"
    table = {"orders": orders, "payments": payments, "visits": visits, "sales": sales, "documents": documents}[dataset]
    assert sorted(r["tenant_id"] for r in await rows(services, table, table.c.id == shared)) == [1, 2]


async def test_same_uuid_orders_get_each_tenant_its_own_invoice_file_and_notice(services, client, tmp_path):
    w = await seed_two(services)
    async with write_changes(services.db, services.registry, 1) as ch:
        await ch.update(customers, 1, {"email": "us@example.com"})
    shared = str(uuid.uuid4())
    for user, tenant, customer, product in ((w.sales1, 1, 1, 3), (SALES2, 2, CUSTOMER2, 500)):
        dev = _dev(services, client, user, "salesperson", tenant)
        [done] = await dev.push([dev.mutation("order.create", {
            "id": shared, "customer_id": customer, "lines": [{"product_id": product, "qty": 1}]})])
        assert done["status"] == "applied", done
    for user, tenant, company in ((w.sales1, 1, "Acme Trading"), (SALES2, 2, "Other Co")):
        response = await fetch(client, services, f"/documents/inv-{shared}", user, "salesperson", tenant)
        assert response.status_code == 200 and company in pdf_text(response.content)
    for table in (invoices, document_files, notices):
        found = await rows(services, table)
        assert sorted((r["tenant_id"], r["id"]) for r in found) == [(1, found[0]["id"]), (2, found[0]["id"])]
        assert all(r["status"] == "sent" for r in found if table is notices)
    mails = sorted(p.read_text() for p in (tmp_path / "outbox").glob("*.eml"))
    assert len(mails) == 2 and "Acme Trading" in mails[0] + mails[1] and "Other Co" in mails[0] + mails[1]
