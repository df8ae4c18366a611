"""End-to-end over in-process HTTP: pull, push, replay, read-your-writes."""

from __future__ import annotations

import uuid

from fieldsync_client import HttpSync

from .support import seed, token


async def test_pull_push_replay(services, client):
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    await device.sync()
    assert set(device.replica.rows("customers")) == {1, 2, 3, 4}
    assert len(device.replica.rows("catalog")) == 20
    order = device.mutation("order.create", {"id": str(uuid.uuid4()), "customer_id": 1,
                                             "lines": [{"product_id": 3, "qty": 2}]})
    first = await device.push([order])
    again = await device.push([order])
    assert first == again and first[0]["status"] == "applied"
    await device.sync()
    orders = device.replica.rows("orders")
    assert [o["number"] for o in orders.values()] == [first[0]["result"]["number"]]
    assert device.replica.rows("stock")[1003]["reserved"] == 2
