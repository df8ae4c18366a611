"""One test (at least) per invariant of the brief that would catch its violation."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import sqlalchemy as sa

from fieldsync_client import HttpSync
from server.domain.tables import customers, orders, stock
from sync.changes import now_ms, write_changes
from sync.storage import log_head

from .support import DAY, admin_write, seed, token


def device(services, client, user_id: int, role: str = "salesperson", name: str | None = None) -> HttpSync:
    return HttpSync(client, token(services, user_id, role), name or f"dev-{user_id}-{uuid.uuid4().hex[:6]}")


async def server_view(services, client, user_id: int, role: str = "salesperson") -> dict:
    """What a brand-new device of this user gets: the server's view of its datasets."""
    fresh = device(services, client, user_id, role)
    await fresh.sync()
    return fresh.replica.data


# -- invariant 2: scope --------------------------------------------------------------


async def test_scope_never_crosses_salespeople_or_tenants(services, client):
    w = await seed(services)
    s1, s2 = device(services, client, w.sales1), device(services, client, w.sales2)
    await s1.sync()
    await s2.sync()
    assert set(s1.replica.rows("customers")) == {1, 2, 3, 4}
    assert set(s2.replica.rows("customers")) == {5, 6}
    pos = device(services, client, w.pos1, "pos")
    await pos.sync()
    assert set(pos.replica.rows("customers")) == {1, 2, 3, 4, 5, 6}  # the branch's customers
    assert "orders" not in pos.replica.data and "sales" in pos.replica.data
    assert {r["pricelist_id"] for r in pos.replica.rows("prices").values()} == {w.retail}
    assert {r["pricelist_id"] for r in s1.replica.rows("prices").values()} == {w.wholesale}


async def test_reassigned_customer_reaches_old_owner_as_delete(services, client):
    w = await seed(services)
    s1, s2 = device(services, client, w.sales1), device(services, client, w.sales2)
    await s1.sync()
    await s2.sync()
    await admin_write(services.db, services.registry, w.tenant_id, "customers",
                      [{"id": 1, "salesperson_id": w.sales2}], [])
    response = await s1.pull_once()
    assert response["data"]["customers"]["deletes"] == [1]
    await s1.sync()
    await s2.sync()
    assert set(s1.replica.rows("customers")) == {2, 3, 4}
    assert set(s2.replica.rows("customers")) == {1, 5, 6}


async def test_new_pricelist_in_scope_resets_only_prices(services, client):
    w = await seed(services)
    s1 = device(services, client, w.sales1)
    await s1.sync()
    await admin_write(services.db, services.registry, w.tenant_id, "customers",
                      [{"id": 2, "pricelist_id": w.retail}], [])
    response = await s1.pull_once()
    assert response["reset"] == ["prices"]
    await s1.sync()
    assert {r["pricelist_id"] for r in s1.replica.rows("prices").values()} == {w.wholesale, w.retail}
    assert s1.replica.data == await server_view(services, client, w.sales1)


async def test_deactivated_product_is_deleted_from_catalog(services, client):
    w = await seed(services)
    pos = device(services, client, w.pos1, "pos")
    await pos.sync()
    await admin_write(services.db, services.registry, w.tenant_id, "products", [{"id": 7, "active": False}], [])
    await pos.sync()
    assert 7 not in pos.replica.rows("catalog") and 8 in pos.replica.rows("catalog")


async def test_orders_age_out_of_the_window_with_no_write(services, client):
    w = await seed(services)
    clock = [now_ms()]
    services.reader.clock = lambda: clock[0]
    taken = clock[0] - 90 * DAY + 60_000  # leaves the 90-day window in one minute
    async with write_changes(services.db, services.registry, w.tenant_id) as ch:
        await ch.insert(orders, [{"id": str(uuid.uuid4()), "number": "SO-9", "customer_id": 1,
                                  "salesperson_id": w.sales1, "branch_id": w.warehouse, "status": "delivered",
                                  "lines": [], "total": 0, "currency": "EUR", "taken_at": taken,
                                  "created_at": taken}])
    s1 = device(services, client, w.sales1)
    await s1.sync()
    assert len(s1.replica.rows("orders")) == 1
    async with services.db.read() as conn:
        head = await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == w.tenant_id))
    clock[0] += 120_000
    response = await s1.pull_once()
    assert len(response["data"]["orders"]["deletes"]) == 1
    assert s1.replica.rows("orders") == {}
    async with services.db.read() as conn:  # time alone did it: nothing was written
        assert await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == w.tenant_id)) == head


# -- invariant 3: exactly-once -------------------------------------------------------


def new_order(dev: HttpSync, customer_id: int = 1, qty: int = 1, product_id: int = 3) -> dict:
    return dev.mutation("order.create", {"id": str(uuid.uuid4()), "customer_id": customer_id,
                                         "lines": [{"product_id": product_id, "qty": qty}]})


async def count(services, table: sa.Table) -> int:
    async with services.db.read() as conn:
        return await conn.scalar(sa.select(sa.func.count()).select_from(table))


async def test_replay_returns_the_first_result_and_applies_once(services, client):
    w = await seed(services)
    s1 = device(services, client, w.sales1)
    batch = [new_order(s1), new_order(s1, customer_id=5), new_order(s1, qty=2)]  # the middle one is refused
    first = await s1.push(batch)
    assert [r["status"] for r in first] == ["applied", "rejected", "applied"]
    assert await s1.push(batch) == first
    assert await s1.push(batch[1:]) == first[1:]
    assert await count(services, orders) == 2


async def test_concurrent_duplicate_pushes_apply_once(services, client):
    w = await seed(services)
    s1 = device(services, client, w.sales1)
    await s1.sync()  # registers the device
    batch = [new_order(s1, qty=1, product_id=p) for p in range(1, 11)]
    results = await asyncio.gather(*(s1.push(batch) for _ in range(4)))
    assert all(r == results[0] for r in results)
    assert await count(services, orders) == 10
    async with services.db.read() as conn:
        reserved = (await conn.execute(sa.select(sa.func.sum(stock.c.reserved)))).scalar()
    assert reserved == 10


async def test_old_id_never_applied_is_refused_not_applied(services, client):
    w = await seed(services)
    s1 = device(services, client, w.sales1)
    [later] = await s1.push([{**new_order(s1), "id": 10}])
    [earlier] = await s1.push([{**new_order(s1), "id": 5}])
    assert later["status"] == "applied"
    assert earlier["status"] == "rejected" and earlier["code"] == "CONFLICT"
    assert await count(services, orders) == 1


# -- invariant 4 and 6: atomic batches, read your writes -------------------------------


async def test_a_key_appears_once_per_batch(services, client):
    w = await seed(services)
    s1 = device(services, client, w.sales1)
    await s1.sync()
    for n in range(5):
        await admin_write(services.db, services.registry, w.tenant_id, "customers",
                          [{"id": 1, "phone": f"+31 6 {n}"}], [])
    response = await s1.pull_once()  # Replica.apply refuses a key twice in a batch
    assert [r[0] for r in response["data"]["customers"]["rows"]] == [1]
    assert s1.replica.rows("customers")[1]["phone"] == "+31 6 4"


async def test_read_your_writes(services, client):
    w = await seed(services)
    s1 = device(services, client, w.sales1)
    await s1.sync()
    [result] = await s1.push([new_order(s1, qty=4, product_id=2)])
    response = await s1.pull_once()
    assert response["more"] is False
    order = next(iter(s1.replica.rows("orders").values()))
    assert order["number"] == result["result"]["number"] and order["total"] == 4 * 200
    assert s1.replica.rows("stock")[1002]["reserved"] == 4
    assert s1.replica.rows("customers")[1]["balance"] == 800


async def test_sale_is_never_refused_for_stock(services, client):
    w = await seed(services)
    t1, t2 = device(services, client, w.pos1, "pos"), device(services, client, w.pos1, "pos")
    sale = {"lines": [{"product_id": 1, "qty": 40, "price": 200}], "payment_method": "cash"}
    r1 = await t1.push([t1.mutation("sale.complete", {"id": str(uuid.uuid4()), **sale})])
    r2 = await t2.push([t2.mutation("sale.complete", {"id": str(uuid.uuid4()), **sale})])
    assert r1[0]["status"] == r2[0]["status"] == "applied"
    assert r2[0]["result"]["negative_stock"] == [1]
    await t1.sync()
    assert t1.replica.rows("stock")[2001]["on_hand"] == -30
    assert t1.replica.rows("stock")[2001]["negative"] is True


async def test_customer_update_is_field_level(services, client):
    w = await seed(services)
    s1 = device(services, client, w.sales1)
    await s1.sync()
    base = s1.replica.rows("customers")[1]["version"]
    await admin_write(services.db, services.registry, w.tenant_id, "customers", [{"id": 1, "phone": "office"}], [])
    [result] = await s1.push([s1.mutation("customer.update", {
        "customer_id": 1, "base_version": base, "fields": {"phone": "mine", "email": "a@b.c"}})])
    assert result["status"] == "applied"
    assert result["result"]["applied"] == ["email"] and result["result"]["conflicts"] == {"phone": "office"}
    [refused] = await s1.push([s1.mutation("customer.update", {
        "customer_id": 1, "base_version": base, "fields": {"phone": "mine again"}})])
    assert refused["status"] == "rejected" and refused["code"] == "CONFLICT"
    await s1.sync()
    row = s1.replica.rows("customers")[1]
    assert (row["phone"], row["email"]) == ("office", "a@b.c")
    assert len(s1.replica.rows("rejections")) == 1


# -- invariant 5: snapshot paging is resumable and converges under writes --------------


async def test_paged_snapshot_with_concurrent_writes_converges(services, client):
    w = await seed(services, products_count=120)
    pos = device(services, client, w.pos1, "pos")
    rounds = 0
    while True:
        response = await pos.pull_once(limit=25)
        rounds += 1
        if rounds % 3 == 0:  # the office keeps writing while the device pages
            await admin_write(services.db, services.registry, w.tenant_id, "products",
                              [{"id": rounds, "name": f"renamed {rounds}"}, {"id": 121 - rounds, "active": False}], [])
        if not response["more"]:
            break
    assert rounds > 10
    assert pos.replica.data == await server_view(services, client, w.pos1, "pos")


async def test_fresh_device_gets_small_datasets_before_the_catalog(services, client):
    w = await seed(services, products_count=100)
    pos = device(services, client, w.pos1, "pos")
    first = await pos.pull_once(limit=30)
    assert first["reset"][:2] == ["dashboard", "customers"]
    assert "catalog" not in first["reset"]
