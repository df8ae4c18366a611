"""What is not the server's fault is never answered or counted as one (issue 10, item 5).

A device that goes away mid-upload is a client disconnect (its own outcome code and status
499, one log line, no traceback); bad input that used to reach a driver or the standard
library unchecked is a 400 naming what is wrong.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import msgpack
import pytest
from prometheus_client import REGISTRY

from server.app import create_app

from .support import seed, token

MSGPACK = "application/msgpack"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- a device that goes away mid-upload ------------------------------------------------------


async def call_then_disconnect(app, path: str, bearer: str, body: bytes) -> list[dict]:
    """One ASGI request whose body stops halfway and then the connection drops."""
    events = [{"type": "http.request", "body": body[: len(body) // 2], "more_body": True},
              {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive() -> dict:
        return events.pop(0) if events else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"fieldsync"), (b"content-type", MSGPACK.encode()),
                         (b"content-length", str(len(body)).encode()),
                         (b"authorization", f"Bearer {bearer}".encode())],
             "client": ("127.0.0.1", 5000), "server": ("fieldsync", 80)}
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("route,counter", [("/sync/push", "fieldsync_pushes_total"),
                                           ("/sync/pull", "fieldsync_pulls_total")])
async def test_a_disconnect_mid_upload_is_counted_as_the_clients_and_logged_once(
        services, caplog, route, counter):
    w = await seed(services)
    app = create_app(services.settings, services=services)
    body = pack({"v": 1, "client_id": "dev-1", "cursor": None, "mutations": [], "pad": "x" * 4000})
    before = {code: sample(f"{counter}", code=code) for code in ("CLIENT_DISCONNECT", "INTERNAL")}
    seconds = "fieldsync_http_request_duration_seconds_count"
    before_5xx = sample(seconds, route=route, method="POST", status="500")
    before_499 = sample(seconds, route=route, method="POST", status="499")

    with caplog.at_level(logging.INFO):
        sent = await call_then_disconnect(app, route, token(services, w.sales1, "salesperson"), body)

    assert sent[0]["status"] == 499
    assert sample(counter, code="CLIENT_DISCONNECT") == before["CLIENT_DISCONNECT"] + 1
    assert sample(counter, code="INTERNAL") == before["INTERNAL"]
    assert sample(seconds, route=route, method="POST", status="499") == before_499 + 1
    assert sample(seconds, route=route, method="POST", status="500") == before_5xx
    lines = [r for r in caplog.records if r.name.startswith("fieldsync")]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, [r.getMessage() for r in lines]
    assert lines[0].exc_info is None and "499" in lines[0].getMessage()
    assert lines[0].fields["code"] == "CLIENT_DISCONNECT"


# -- bad input that must be a 400, not a 500 ---------------------------------------------------


def admin_headers(services, w) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(services, w.admin, 'admin')}", "Content-Type": "application/json"}


def assert_400(response, *words: str) -> str:
    """A 400 whose JSON body names the problem; never a traceback."""
    assert b"Traceback" not in response.content
    assert response.status_code == 400, (response.status_code, response.content[:300])
    message = response.json()["error"]["message"]
    for word in words:
        assert word in message, message
    return message


def nested(depth: int) -> bytes:
    return b'{"upsert": ' + b"[" * depth + b"]" * depth + b"}"


PRODUCT = {"id": 900, "sku": "SKU-900", "name": "New", "category": "Hardware", "unit": "pcs", "active": True}

BAD_ADMIN_BODIES = {
    "JSON nested 1000 deep": (nested(1000), "nested"),
    "JSON nested 100000 deep": (nested(100_000), "nested"),
    "lone surrogate in a string": (json.dumps({"upsert": [{**PRODUCT, "name": "\ud800"}]}).encode(), "`name`"),
    "lone surrogate as an escape": (b'{"upsert": [{"id": 900, "sku": "S", "name": "\\udfff"}]}', "`name`"),
    "NUL in a string": (json.dumps({"upsert": [{**PRODUCT, "name": "a\u0000b"}]}).encode(), "`name`"),
    "delete id 10**30": (json.dumps({"delete": [10**30]}).encode(), "delete"),
    "delete id 2**63": (json.dumps({"delete": [2**63]}).encode(), "delete"),
    "delete id -2**63-1": (json.dumps({"delete": [-2**63 - 1]}).encode(), "delete"),
}


@pytest.mark.parametrize("case", list(BAD_ADMIN_BODIES))
async def test_bad_admin_write_is_a_400(services, client, case):
    w = await seed(services)
    raw, word = BAD_ADMIN_BODIES[case]
    response = await client.post("/admin/products", content=raw, headers=admin_headers(services, w))
    assert_400(response, word)
    listed = await client.post("/admin/products", json={"upsert": [PRODUCT]}, headers=admin_headers(services, w))
    assert listed.status_code == 200, listed.content  # the server is fine afterwards


async def test_a_huge_behind_duration_is_a_400(services, client):
    w = await seed(services)
    for behind in ("9" * 400 + "w", "9" * 400, "1e999h"):
        response = await client.get("/admin/devices", params={"behind": behind}, headers=admin_headers(services, w))
        assert_400(response, "duration")
    response = await client.get("/admin/devices", params={"behind": "1h"}, headers=admin_headers(services, w))
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/admin/devices/%00/revoke", "/admin/devices/a%00b/enrol"])
async def test_a_nul_in_a_device_path_is_a_400(services, client, path):
    w = await seed(services)
    assert_400(await client.post(path, headers=admin_headers(services, w)), "client_id")


async def test_a_nul_in_a_document_id_is_a_400(services, client):
    w = await seed(services)
    headers = {"Authorization": f"Bearer {token(services, w.sales1, 'salesperson')}", "Accept": "application/json"}
    assert_400(await client.get("/documents/%00", headers=headers), "document id")
    assert (await client.get("/documents/no-such-file", headers=headers)).status_code == 404


async def test_a_nul_in_a_client_id_is_a_400(services, client):
    w = await seed(services)
    headers = {"Authorization": f"Bearer {token(services, w.sales1, 'salesperson')}",
               "Content-Type": MSGPACK, "Accept": "application/json"}
    body = pack({"v": 1, "client_id": "dev\u00001", "cursor": None})
    assert_400(await client.post("/sync/pull", content=body, headers=headers), "U+0000")  # by wire.unpack


async def test_a_sub_in_other_digits_is_a_401(services, client):
    await seed(services)
    forged = services.tokens.issue(user_id=11, tenant_id=1, role="salesperson")
    import jwt  # the same secret, a `sub` that int() would read: "²"
    claims = jwt.decode(forged, options={"verify_signature": False})
    bad = jwt.encode({**claims, "sub": "²"}, services.settings.jwt_secret, algorithm="HS256")
    response = await client.post("/sync/pull", content=pack({"v": 1, "client_id": "d", "cursor": None}),
                                 headers={"Authorization": f"Bearer {bad}", "Content-Type": MSGPACK,
                                          "Accept": "application/json"})
    assert response.status_code == 401 and b"Traceback" not in response.content
    assert response.json()["error"]["code"] == "AUTH_INVALID"


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/no/such/endpoint", 404), ("GET", "/admin/devices//revoke", 404),
    ("GET", "/sync/pull", 405), ("DELETE", "/admin/products", 405),
])
async def test_paths_and_methods_without_a_route_get_an_error_body(services, client, method, path, status):
    response = await client.request(method, path, headers={"Accept": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == ("NOT_FOUND" if status == 404 else "BAD_REQUEST") and error["message"]
