"""The device list shows what each app says it is and the last refusal it met
(``devices.app_version``, ``devices.last_error``; issue 14). Other users' refusals never
land on a device they do not own."""

from __future__ import annotations

import uuid

import msgpack

from .support import seed, token
from .test_bad_input import post


async def listed(client, admin: str) -> dict[str, dict]:
    answer = await client.get("/admin/devices", headers={"Authorization": f"Bearer {admin}"})
    assert answer.status_code == 200, answer.text
    return {d["client_id"]: d for d in answer.json()["devices"]}


async def pull(client, bearer: str, client_id: str, **extra) -> int:
    body = msgpack.packb({"v": 1, "client_id": client_id, "cursor": None, "limit": 10, **extra})
    return (await post(client, "/sync/pull", body, bearer)).status_code


async def push(client, bearer: str, client_id: str, mutations: list[dict]) -> dict:
    body = msgpack.packb({"v": 1, "client_id": client_id, "mutations": mutations})
    return msgpack.unpackb((await post(client, "/sync/push", body, bearer)).content)


async def test_app_version_and_last_refusal_are_recorded(services, client):
    w = await seed(services)
    sales1, sales2 = token(services, w.sales1, "salesperson"), token(services, w.sales2, "salesperson")
    admin = token(services, w.admin, "admin")
    phone = f"phone-{uuid.uuid4().hex[:8]}"
    assert await pull(client, sales1, phone, app="shop 2.4.1 (android)") == 200
    device = (await listed(client, admin))[phone]
    assert (device["app_version"], device["last_error"]) == ("shop 2.4.1 (android)", None)

    assert await pull(client, sales1, phone, app="shop 2.5.0 (android)") == 200  # updated at once
    assert (await listed(client, admin))[phone]["app_version"] == "shop 2.5.0 (android)"

    answer = await push(client, sales1, phone, [{"id": 1, "name": "order.teleport", "args": {}, "at": 0}])
    assert answer["results"][0]["status"] == "rejected"
    assert (await listed(client, admin))[phone]["last_error"] == f"order.teleport: {answer['results'][0]['code']}"

    assert await pull(client, sales2, phone) == 403  # not sales2's phone: nothing of it changes
    assert (await listed(client, admin))[phone]["last_error"].startswith("order.teleport")

    await client.post(f"/admin/devices/{phone}/revoke", headers={"Authorization": f"Bearer {admin}"})
    assert await pull(client, sales1, phone) == 403  # REVOKED
    assert (await listed(client, admin))[phone]["last_error"] == "REVOKED"


async def test_an_unreadable_app_is_refused_and_changes_nothing(services, client):
    w = await seed(services)
    sales1, admin = token(services, w.sales1, "salesperson"), token(services, w.admin, "admin")
    for app in ("", "x" * 65, 7, "bad\x00app"):
        assert await pull(client, sales1, "phone-app-check", app=app) == 400
    assert "phone-app-check" not in await listed(client, admin)
