"""A device belongs to the user who registered it; revoking it refuses its token.

Each attack here is the one a user of a real deployment could mount with their own valid
token: push or pull under another user's ``client_id`` (to read their stored results, or to
poison their outbox with a huge mutation id), keep syncing from a revoked phone under a
new ``client_id``, register thousands of devices, or present loosely typed claims.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from typing import Any

import httpx
import jwt
import msgpack
import pytest
import sqlalchemy as sa

from server.app import build_services, create_app
from sync.storage import devices, mutation_ledger

from .support import seed, token
from .test_bad_input import assert_error, dump, now_ms, post
from .test_ws import launch  # noqa: F401  (fixture: real server processes)

MAX_SAFE = 2**53 - 1


@pytest.fixture
async def world(services):
    return await seed(services)


def payment(mid: int, customer_id: int, amount: int = 500) -> dict[str, Any]:
    args = {"id": str(uuid.uuid4()), "customer_id": customer_id, "amount": amount, "currency": "EUR",
            "method": "cash"}
    return {"id": mid, "name": "payment.record", "args": args, "at": now_ms()}


async def push(client, bearer: str, client_id: str, mutations: list[dict]) -> httpx.Response:
    return await post(client, "/sync/push", msgpack.packb({"v": 1, "client_id": client_id, "mutations": mutations}),
                      bearer)


async def pull(client, bearer: str, client_id: str, cursor: bytes | None = None) -> httpx.Response:
    return await post(client, "/sync/pull", msgpack.packb({"v": 1, "client_id": client_id, "cursor": cursor},
                                                          use_bin_type=True), bearer)


def results(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.content[:300]
    return msgpack.unpackb(response.content)["results"]


async def engine_rows(services) -> dict[str, list]:
    everything = await dump(services)
    return {name: everything[name] for name in ("devices", "mutation_ledger", "log_head", "revoked_tokens")}


async def admin(client, services, world, path: str, body: dict | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token(services, world.admin, 'admin')}"}
    return await client.post(path, json=body, headers=headers) if body else await client.post(path, headers=headers)


# -- 1. a client_id belongs to its first user -----------------------------------------------------------


async def test_another_users_push_under_my_client_id_is_refused_and_changes_nothing(client, services, world):
    sales1, sales2 = token(services, world.sales1, "salesperson"), token(services, world.sales2, "salesperson")
    first = results(await push(client, sales2, "phone-of-sales2", [payment(1, customer_id=5)]))
    assert first[0]["status"] == "applied", first
    before = await engine_rows(services)

    # the same id (to read sales2's stored result) and the highest id (to poison the outbox)
    for attack in ([payment(1, customer_id=1)], [payment(MAX_SAFE, customer_id=1)]):
        error = assert_error(await push(client, sales1, "phone-of-sales2", attack), 403, "FORBIDDEN")
        assert "belongs to another user" in error["message"], error
        assert "payment_id" not in str(error) and "balance" not in str(error)
    assert await engine_rows(services) == before, "the owner's device row and ledger must not change"

    # the owner's phone goes on: replay gets its own result, the next id applies
    assert results(await push(client, sales2, "phone-of-sales2", [payment(1, customer_id=5)])) == first
    assert results(await push(client, sales2, "phone-of-sales2", [payment(2, customer_id=5)]))[0]["status"] == "applied"


async def test_another_users_pull_under_my_client_id_is_refused(client, services, world):
    sales1, sales2 = token(services, world.sales1, "salesperson"), token(services, world.sales2, "salesperson")
    assert (await pull(client, sales2, "phone-of-sales2")).status_code == 200
    before = await engine_rows(services)
    error = assert_error(await pull(client, sales1, "phone-of-sales2"), 403, "FORBIDDEN")
    assert "belongs to another user" in error["message"]
    assert await engine_rows(services) == before


async def test_two_users_registering_one_new_client_id_at_once_leave_one_owner(client, services, world):
    sales1, sales2 = token(services, world.sales1, "salesperson"), token(services, world.sales2, "salesperson")
    for round_ in range(5):
        client_id = f"contested-{round_}"
        answers = await asyncio.gather(pull(client, sales1, client_id), pull(client, sales2, client_id))
        assert sorted(r.status_code for r in answers) == [200, 403], [r.status_code for r in answers]
        winner = world.sales1 if answers[0].status_code == 200 else world.sales2
        async with services.db.read() as conn:
            owner = await conn.scalar(sa.select(devices.c.user_id).where(devices.c.client_id == client_id))
        assert owner == winner


async def test_moving_a_device_starts_a_fresh_ledger_and_a_reset(client, services, world):
    sales1, sales2 = token(services, world.sales1, "salesperson"), token(services, world.sales2, "salesperson")
    old = results(await push(client, sales2, "shared-phone", [payment(1, customer_id=5)]))
    cursor = msgpack.unpackb((await pull(client, sales2, "shared-phone")).content)["cursor"]

    moved = await admin(client, services, world, "/admin/devices/shared-phone/enrol", {"user_id": world.sales1})
    assert moved.status_code == 200, moved.text
    # the new owner's mutation 1 is applied afresh, not answered with sales2's stored result
    fresh = results(await push(client, sales1, "shared-phone", [payment(1, customer_id=1)]))
    assert fresh[0]["status"] == "applied" and fresh[0]["result"] != old[0]["result"], (fresh, old)
    # the old owner is now the stranger; the new owner's old cursor gets a full reset
    assert_error(await pull(client, sales2, "shared-phone", cursor), 403, "FORBIDDEN")
    batch = msgpack.unpackb((await pull(client, sales1, "shared-phone", cursor)).content)
    assert "customers" in batch["reset"], batch["reset"]
    async with services.db.read() as conn:
        ledger = (await conn.execute(sa.select(mutation_ledger.c.user_id, mutation_ledger.c.epoch).where(
            mutation_ledger.c.client_id == "shared-phone").order_by(mutation_ledger.c.epoch))).all()
    assert [tuple(r) for r in ledger] == [(world.sales2, 0), (world.sales1, 1)]


async def test_a_device_moves_only_to_an_active_user_of_the_tenant(client, services, world):
    sales2 = token(services, world.sales2, "salesperson")
    assert (await pull(client, sales2, "phone-x")).status_code == 200
    before = await engine_rows(services)
    for body in ({"user_id": world.intruder}, {"user_id": 999}, {"user_id": "11"}, {"user": 11}):
        response = await admin(client, services, world, "/admin/devices/phone-x/enrol", body)
        assert response.status_code == 400, (body, response.text)
    assert await engine_rows(services) == before


# -- 2. device-bound credentials ----------------------------------------------------------------------


async def test_a_revoked_devices_token_is_refused_with_any_client_id(client, services, world):
    lost, spare = token(services, world.sales1, "salesperson"), token(services, world.sales1, "salesperson", ttl=3600)
    assert (await pull(client, lost, "lost-phone")).status_code == 200
    assert (await pull(client, spare, "old-tablet")).status_code == 200  # a device of theirs, not revoked
    assert (await admin(client, services, world, "/admin/devices/lost-phone/revoke")).status_code == 200

    for client_id in ("lost-phone", "brand-new-phone", "old-tablet"):
        assert_error(await pull(client, lost, client_id), 403, "REVOKED")
        assert_error(await push(client, lost, client_id, [payment(1, customer_id=1)]), 403, "REVOKED")
    # the user's other token (another device of theirs) still syncs
    assert (await pull(client, spare, "tablet")).status_code == 200
    # re-enrolled: the device and its token work again
    assert (await admin(client, services, world, "/admin/devices/lost-phone/enrol")).status_code == 200
    assert (await pull(client, lost, "lost-phone")).status_code == 200


async def test_a_device_bound_token_syncs_only_as_its_device(client, services, world):
    bound = services.tokens.issue(user_id=world.sales1, tenant_id=1, role="salesperson", device="phone-1")
    assert (await pull(client, bound, "phone-1")).status_code == 200
    error = assert_error(await pull(client, bound, "phone-2"), 403, "FORBIDDEN")
    assert "bound to device phone-1" in error["message"]
    assert (await admin(client, services, world, "/admin/devices/phone-1/revoke")).status_code == 200
    assert_error(await pull(client, bound, "phone-1"), 403, "REVOKED")


@pytest.fixture
async def strict_client(services):
    """The same database, served with device-bound tokens required and a cap of 2 devices."""
    settings = replace(services.settings, require_device_tokens=True, max_devices_per_user=2)
    strict = build_services(settings)
    app = create_app(settings, services=strict)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fieldsync") as http:
        yield http
    await strict.db.dispose()


async def test_required_device_tokens_refuse_unbound_tokens(strict_client, services, world):
    unbound = token(services, world.sales1, "salesperson")
    error = assert_error(await pull(strict_client, unbound, "phone-1"), 403, "FORBIDDEN")
    assert "device-bound" in error["message"]
    bound = services.tokens.issue(user_id=world.sales1, tenant_id=1, role="salesperson", device="phone-1")
    assert (await pull(strict_client, bound, "phone-1")).status_code == 200


async def test_devices_per_user_are_capped(strict_client, services, world):
    def bound(device: str) -> str:
        return services.tokens.issue(user_id=world.sales1, tenant_id=1, role="salesperson", device=device)

    assert (await pull(strict_client, bound("d1"), "d1")).status_code == 200
    assert (await pull(strict_client, bound("d2"), "d2")).status_code == 200
    error = assert_error(await pull(strict_client, bound("d3"), "d3"), 403, "FORBIDDEN")
    assert "limit" in error["message"]
    other = services.tokens.issue(user_id=world.sales2, tenant_id=1, role="salesperson", device="d4")
    assert (await pull(strict_client, other, "d4")).status_code == 200, "the cap is per user"
    # a revoked device frees its place
    headers = {"Authorization": f"Bearer {token(services, world.admin, 'admin')}"}
    assert (await strict_client.post("/admin/devices/d1/revoke", headers=headers)).status_code == 200
    assert (await pull(strict_client, bound("d3"), "d3")).status_code == 200


# -- claims: exactly the documented types, one leeway --------------------------------------------------


def signed(services, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "11", "tid": 1, "role": "salesperson", "iat": now, "exp": now + 600, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, services.settings.jwt_secret, algorithm="HS256")


@pytest.mark.parametrize("claims", [
    {"tid": True}, {"tid": "1"}, {"tid": 1.0}, {"sub": "\u0661\u0661"}, {"sub": "\u00b2"}, {"sub": 11},
    {"sub": "011"}, {"sub": " 11"}, {"exp": str(int(time.time()) + 600)}, {"exp": time.time() + 600.5},
    {"iat": float(int(time.time()))}, {"did": 7}, {"did": ""},
], ids=repr)
async def test_loosely_typed_claims_are_refused(client, services, world, claims):
    before = await engine_rows(services)
    assert_error(await pull(client, signed(services, **claims), "phone-1"), 401, "AUTH_INVALID")
    assert await engine_rows(services) == before


@pytest.mark.parametrize("skew, ok", [(3, True), (25, True), (120, False)])
async def test_one_leeway_for_iat_nbf_and_exp(client, services, world, skew, ok):
    """A token from a clock ``skew`` seconds fast (iat, nbf ahead) or expired ``skew`` ago."""
    now = int(time.time())
    for claims in ({"iat": now + skew}, {"nbf": now + skew}, {"exp": now - skew, "iat": now - 3600}):
        response = await pull(client, signed(services, **claims), f"phone-{skew}")
        assert (response.status_code == 200) is ok, (claims, response.content[:200])


# -- the WebSocket hello, against a real server process ------------------------------------------------


@pytest.mark.slow
async def test_hello_under_another_users_client_id_is_refused_and_a_move_closes_the_owner(services, world, launch):  # noqa: F811
    from fieldsync_client import Replica

    from .live_support import WsClient, connect_device

    server = await launch()
    sales1, sales2 = token(services, world.sales1, "salesperson"), token(services, world.sales2, "salesperson")
    owner = await connect_device(server.ws_url, sales2, "phone-of-sales2", Replica())
    async with services.db.read() as conn:
        before = (await conn.execute(sa.select(devices))).all()

    stranger = await WsClient.open(server.ws_url, sales1)
    await stranger.hello("phone-of-sales2")
    closed = await stranger.closed()
    assert closed.code == 4403, closed
    assert [f["message"] for f in closed.frames if f["t"] == "error"][0].startswith("device phone-of-sales2 belongs")
    async with services.db.read() as conn:
        assert (await conn.execute(sa.select(devices))).all() == before

    # the owner's session was not disturbed; moving the device to sales1 closes it
    await owner.send({"t": "ping"})
    await owner.recv_until(lambda f: f["t"] == "pong", 2.0)
    async with httpx.AsyncClient(timeout=10) as http:
        moved = await http.post(f"{server.base}/admin/devices/phone-of-sales2/enrol", json={"user_id": world.sales1},
                                headers={"Authorization": f"Bearer {token(services, world.admin, 'admin')}"})
    assert moved.status_code == 200, moved.text
    assert (await owner.closed(timeout=5)).code == 4410
    await connect_device(server.ws_url, sales1, "phone-of-sales2", Replica())
