"""Order statuses from the office (``POST /admin/orders``, server/domain/order_status.py):
each move settles what the order held and reaches the salesperson's device; a move the
order cannot make, an order of another tenant or a delete is refused and changes nothing;
a batch sent twice settles once."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from fieldsync_client import HttpSync
from server.domain.tables import customers, stock

from .support import seed, token
from .test_admin_api import OTHER_ADMIN, add_tenant2_admin_and_product, admin_post, admin_token, assert_error, dump


async def level(services, product_id: int) -> tuple[int, int]:
    async with services.db.read() as conn:
        row = (await conn.execute(sa.select(stock.c.on_hand, stock.c.reserved).where(
            stock.c.tenant_id == 1, stock.c.branch_id == 1, stock.c.product_id == product_id))).one()
    return row.on_hand, row.reserved


async def balance(services, customer_id: int) -> int:
    async with services.db.read() as conn:
        return await conn.scalar(sa.select(customers.c.balance).where(
            customers.c.tenant_id == 1, customers.c.id == customer_id))


async def take_order(device: HttpSync, customer_id: int, *lines: tuple[int, int]) -> dict:
    [result] = await device.push([device.mutation("order.create", {
        "id": str(uuid.uuid4()), "customer_id": customer_id,
        "lines": [{"product_id": p, "qty": q} for p, q in lines]})])
    assert result["status"] == "applied", result
    return result["result"]


async def test_shipping_takes_the_stock_and_the_device_sees_it(services, client):
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    taken = await take_order(device, 1, (2, 3), (4, 1))
    assert await level(services, 2) == (50, 3)
    await device.sync()
    assert device.replica.rows("orders")[taken["order_id"]]["status"] == "confirmed"

    office = admin_token(services, w)
    response, body = await admin_post(client, "orders", {"upsert": [{"id": taken["order_id"], "status": "shipped"}]},
                                      office)
    assert response.status_code == 200 and body == {"upserted": 1, "deleted": 0}, body
    assert await level(services, 2) == (47, 0) and await level(services, 4) == (49, 0)
    assert await balance(services, 1) == taken["total"]  # shipped, still owed
    await device.sync()
    assert device.replica.rows("orders")[taken["order_id"]]["status"] == "shipped"
    assert device.replica.rows("stock")[1002]["on_hand"] == 47  # stock row id: branch * 1000 + product

    # sent again (an integration retrying), then delivered: nothing settles twice
    for status in ("shipped", "delivered", "delivered"):
        response, body = await admin_post(client, "orders", {"upsert": [{"id": taken["order_id"], "status": status}]},
                                          office)
        assert response.status_code == 200, body
    assert await level(services, 2) == (47, 0)
    await device.sync()
    assert device.replica.rows("orders")[taken["order_id"]]["status"] == "delivered"


async def test_cancelling_releases_the_stock_and_the_balance(services, client):
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    first = await take_order(device, 1, (2, 3))
    second = await take_order(device, 1, (2, 2), (3, 5))
    assert await balance(services, 1) == first["total"] + second["total"]
    response, body = await admin_post(client, "orders", {"upsert": [
        {"id": first["order_id"], "status": "cancelled"}, {"id": second["order_id"], "status": "shipped"}]},
        admin_token(services, w), "msgpack")
    assert response.status_code == 200, body
    assert await level(services, 2) == (48, 0) and await level(services, 3) == (45, 0)
    assert await balance(services, 1) == second["total"]
    await device.sync()
    statuses = {o["number"]: o["status"] for o in device.replica.rows("orders").values()}
    assert statuses == {first["number"]: "cancelled", second["number"]: "shipped"}


async def test_one_order_moves_twice_in_one_batch(services, client):
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    taken = await take_order(device, 2, (5, 4))
    response, body = await admin_post(client, "orders", {"upsert": [
        {"id": taken["order_id"], "status": "shipped"}, {"id": taken["order_id"], "status": "delivered"}]},
        admin_token(services, w))
    assert response.status_code == 200, body
    assert await level(services, 5) == (46, 0)


@pytest.mark.parametrize(("first", "then", "says"), [
    ("confirmed", "delivered", "an order confirmed cannot become delivered"),
    ("shipped", "cancelled", "an order shipped cannot become cancelled"),
    ("shipped", "confirmed", "an order shipped cannot become confirmed"),
    ("cancelled", "shipped", "an order cancelled cannot become shipped"),
])
async def test_a_move_the_order_cannot_make_is_refused_with_the_batch(services, client, first, then, says):
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    taken = await take_order(device, 1, (2, 3))
    other = await take_order(device, 1, (3, 1))
    office = admin_token(services, w)
    if first != "confirmed":
        response, _ = await admin_post(client, "orders", {"upsert": [{"id": taken["order_id"], "status": first}]},
                                       office)
        assert response.status_code == 200
    before = await dump(services)
    response, body = await admin_post(client, "orders", {"upsert": [
        {"id": other["order_id"], "status": "shipped"}, {"id": taken["order_id"], "status": then}]}, office)
    assert assert_error(response, body, 400, "BAD_REQUEST") == f"row 1: {says}"
    assert await dump(services) == before  # the first row's move went with the batch


async def test_unknown_orders_other_tenants_deletes_and_other_columns_are_refused(services, client):
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    taken = await take_order(device, 1, (2, 3))
    office = admin_token(services, w)
    await add_tenant2_admin_and_product(services)
    tenant2 = token(services, OTHER_ADMIN, "admin", tenant_id=2)
    before = await dump(services)
    cases = [
        (office, {"upsert": [{"id": str(uuid.uuid4()), "status": "shipped"}]}, "row 0: no order"),
        (tenant2, {"upsert": [{"id": taken["order_id"], "status": "shipped"}]}, "row 0: no order"),  # not "not yours"
        (office, {"upsert": [{"id": taken["order_id"], "status": "lost"}]}, "row 0: `status` is one of"),
        (office, {"upsert": [{"id": taken["order_id"]}]}, "row 0: `status` is one of"),
        (office, {"upsert": [{"id": taken["order_id"], "status": "shipped", "total": 1}]},
         "row 0: unknown or read-only column(s) total"),
        (office, {"delete": [taken["order_id"]]}, "rows of orders are not deleted through the back office"),
    ]
    for bearer, batch, says in cases:
        response, body = await admin_post(client, "orders", batch, bearer)
        assert assert_error(response, body, 400, "BAD_REQUEST").startswith(says), (batch, body)
    assert await dump(services) == before
