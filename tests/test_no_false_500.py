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
