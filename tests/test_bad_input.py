"""Bad input of every kind gets its error code and HTTP status, and changes nothing.

Request-level refusals (bad body, bad token) must leave the whole database byte for byte
as it was: no device registered, no ledger entry, no log position taken. Mutation-level
refusals are recorded (ledger + ``rejections`` dataset) but change no domain row.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt
import msgpack
import pytest
import sqlalchemy as sa

from fieldsync_client import HttpSync
from server.domain import tables  # noqa: F401  (domain tables join the metadata)
from sync.storage import log_head, metadata, mutation_ledger

from .support import World, seed, token

MSGPACK = "application/msgpack"
ENGINE_TABLES = {"log_head", "change_log", "mutation_ledger", "devices"}


# -- helpers ------------------------------------------------------------------------


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


async def dump(services, *, domain_only: bool = False) -> dict[str, list]:
    """Every row of every table (or of the domain tables only), in a stable order."""
    out: dict[str, list] = {}
    async with services.db.read() as conn:
        for table in metadata.sorted_tables:
            if domain_only and table.name in ENGINE_TABLES:
                continue
            rows = (await conn.execute(sa.select(table))).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


async def head_seq(services, tenant_id: int = 1) -> int:
    async with services.db.read() as conn:
        value = await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == tenant_id))
    return value or 0


async def count(services, table: sa.Table) -> int:
    async with services.db.read() as conn:
        return await conn.scalar(sa.select(sa.func.count()).select_from(table))


async def post(client: httpx.AsyncClient, path: str, content: Any, bearer: str | None,
               headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {"Content-Type": MSGPACK, "Accept": MSGPACK, **(headers or {})}
    if bearer is not None:
        sent["Authorization"] = bearer if bearer.startswith(("Bearer", "Basic", "bearer")) else f"Bearer {bearer}"
    return await client.post(path, content=content, headers=sent)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert b"Traceback" not in response.content
    assert response.headers["content-type"].startswith(MSGPACK), response.headers
    body = msgpack.unpackb(response.content, raw=False)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str) and error["message"], error
    return error


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:300])
    error = error_of(response)
    assert error["code"] == code, error
    return error


def order_args(**over: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "customer_id": 1, "lines": [{"product_id": 3, "qty": 2}], **over}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def mutation(mid: int = 1, name: str = "order.create", args: dict | None = None, at: int | None = None) -> dict:
    return {"id": mid, "name": name, "args": order_args() if args is None else args, "at": at or now_ms()}


def pull_body(**over: Any) -> dict[str, Any]:
    return {"v": 1, "client_id": "dev-1", "cursor": None, **over}


def push_body(mutations: list[dict] | None = None, **over: Any) -> dict[str, Any]:
    return {"v": 1, "client_id": "dev-1", "mutations": [mutation()] if mutations is None else mutations, **over}


def without(body: dict, key: str) -> dict:
    return {k: v for k, v in body.items() if k != key}


# -- request-level: the body ---------------------------------------------------------

BAD_PULLS = {
    "malformed msgpack": (b"\xc1", 400, "BAD_REQUEST"),
    "empty body": (b"", 400, "BAD_REQUEST"),
    "truncated map": (pack(pull_body())[:-3], 400, "BAD_REQUEST"),
    "trailing bytes": (pack(pull_body()) + b"\xc0", 400, "BAD_REQUEST"),
    "array not map": (pack([1, "dev-1", None]), 400, "BAD_REQUEST"),
    "string not map": (pack("hello"), 400, "BAD_REQUEST"),
    "v missing": (pack(without(pull_body(), "v")), 400, "BAD_REQUEST"),
    "v as string": (pack(pull_body(v="1")), 400, "BAD_REQUEST"),
    "v as bool": (pack(pull_body(v=True)), 400, "BAD_REQUEST"),
    "v 2": (pack(pull_body(v=2)), 400, "UNSUPPORTED_VERSION"),
    "v 0": (pack(pull_body(v=0)), 400, "UNSUPPORTED_VERSION"),
    "client_id missing": (pack(without(pull_body(), "client_id")), 400, "BAD_REQUEST"),
    "client_id int": (pack(pull_body(client_id=123)), 400, "BAD_REQUEST"),
    "client_id bytes": (pack(pull_body(client_id=b"dev-1")), 400, "BAD_REQUEST"),
    "client_id empty": (pack(pull_body(client_id="")), 400, "BAD_REQUEST"),
    "client_id too long": (pack(pull_body(client_id="d" * 129)), 400, "BAD_REQUEST"),
    "cursor as str": (pack(pull_body(cursor="abc")), 400, "BAD_REQUEST"),
    "cursor as int": (pack(pull_body(cursor=7)), 400, "BAD_REQUEST"),
    "limit 0": (pack(pull_body(limit=0)), 400, "BAD_REQUEST"),
    "limit negative": (pack(pull_body(limit=-5)), 400, "BAD_REQUEST"),
    "limit str": (pack(pull_body(limit="x")), 400, "BAD_REQUEST"),
    "limit bool": (pack(pull_body(limit=True)), 400, "BAD_REQUEST"),
    "limit float": (pack(pull_body(limit=10.0)), 400, "BAD_REQUEST"),
    "int map key": (pack({1: 1, "v": 1, "client_id": "dev-1", "cursor": None}), 400, "BAD_REQUEST"),
}


@pytest.mark.parametrize("case", list(BAD_PULLS))
async def test_bad_pull_body_is_refused_and_changes_nothing(services, client, case):
    w = await seed(services)
    content, status, code = BAD_PULLS[case]
    before = await dump(services)
    response = await post(client, "/sync/pull", content, token(services, w.sales1, "salesperson"))
    assert_error(response, status, code)
    assert await dump(services) == before  # not even the device was registered


BAD_PUSHES = {
    "malformed msgpack": (b"\x81\xa1v", 400, "BAD_REQUEST"),
    "array not map": (pack([1, "dev-1", [mutation()]]), 400, "BAD_REQUEST"),
    "v missing": (pack(without(push_body(), "v")), 400, "BAD_REQUEST"),
    "v 2": (pack(push_body(v=2)), 400, "UNSUPPORTED_VERSION"),
    "client_id int": (pack(push_body(client_id=5)), 400, "BAD_REQUEST"),
    "client_id missing": (pack(without(push_body(), "client_id")), 400, "BAD_REQUEST"),
    "mutations missing": (pack(without(push_body(), "mutations")), 400, "BAD_REQUEST"),
    "mutations a map": (pack(push_body(mutations={"1": mutation()})), 400, "BAD_REQUEST"),
    "mutation not a map": (pack(push_body(mutations=[[1, "order.create", {}, now_ms()]])), 400, "BAD_REQUEST"),
    "too many mutations": (pack(push_body(mutations=[mutation(i) for i in range(1, 52)])), 413,
                           "PAYLOAD_TOO_LARGE"),
    "ids decreasing": (pack(push_body(mutations=[mutation(2), mutation(1)])), 400, "BAD_REQUEST"),
    "ids repeated": (pack(push_body(mutations=[mutation(1), mutation(1)])), 400, "BAD_REQUEST"),
    "good then non-increasing": (pack(push_body(mutations=[mutation(1), mutation(3), mutation(2)])), 400,
                                 "BAD_REQUEST"),
    "id zero": (pack(push_body(mutations=[mutation(0)])), 400, "BAD_REQUEST"),
    "id negative": (pack(push_body(mutations=[mutation(-1)])), 400, "BAD_REQUEST"),
    "id 2^53": (pack(push_body(mutations=[mutation(2**53)])), 400, "BAD_REQUEST"),
    "id as str": (pack(push_body(mutations=[{**mutation(), "id": "1"}])), 400, "BAD_REQUEST"),
    "name missing": (pack(push_body(mutations=[without(mutation(), "name")])), 400, "BAD_REQUEST"),
    "args a list": (pack(push_body(mutations=[{**mutation(), "args": [1, 2]}])), 400, "BAD_REQUEST"),
    "args a str": (pack(push_body(mutations=[{**mutation(), "args": "{}"}])), 400, "BAD_REQUEST"),
    "args missing": (pack(push_body(mutations=[without(mutation(), "args")])), 400, "BAD_REQUEST"),
    "at missing": (pack(push_body(mutations=[without(mutation(), "at")])), 400, "BAD_REQUEST"),
    "at as str": (pack(push_body(mutations=[{**mutation(), "at": "now"}])), 400, "BAD_REQUEST"),
    "good then args not a map": (pack(push_body(mutations=[mutation(1), {**mutation(2), "args": None}])), 400,
                                 "BAD_REQUEST"),
}


@pytest.mark.parametrize("case", list(BAD_PUSHES))
async def test_bad_push_body_is_refused_and_applies_nothing(services, client, case):
    w = await seed(services)
    content, status, code = BAD_PUSHES[case]
    seq = await head_seq(services)
    before = await dump(services)
    response = await post(client, "/sync/push", content, token(services, w.sales1, "salesperson"))
    assert_error(response, status, code)
    assert await head_seq(services) == seq
    assert await count(services, tables.orders) == 0
    assert await count(services, mutation_ledger) == 0
    assert await dump(services) == before  # ledger, devices, stock, customers: all as they were


async def test_a_good_push_is_applied(services, client):
    """The control for the cases above: the very bodies they spoil are otherwise accepted."""
    w = await seed(services)
    seq = await head_seq(services)
    response = await post(client, "/sync/push", pack(push_body(mutations=[mutation(1), mutation(3)])),
                          token(services, w.sales1, "salesperson"))
    assert response.status_code == 200, response.content
    results = msgpack.unpackb(response.content, raw=False)["results"]
    assert [(r["id"], r["status"]) for r in results] == [(1, "applied"), (3, "applied")]
    assert await count(services, tables.orders) == 2
    assert await head_seq(services) > seq


# -- request-level: size -------------------------------------------------------------


def _oversized(services) -> bytes:
    limit = services.settings.max_body_bytes
    assert limit == 256 * 1024
    # A well-formed push whose only fault is its size.
    body = pack(push_body(mutations=[mutation(1, args=order_args(note="x" * (limit + 10)))]))
    assert len(body) > limit
    return body


@pytest.mark.parametrize("path", ["/sync/pull", "/sync/push"])
async def test_body_over_limit_with_content_length(services, client, path):
    w = await seed(services)
    before = await dump(services)
    content = _oversized(services)
    response = await post(client, path, content, token(services, w.sales1, "salesperson"))
    assert "content-length" in {k.lower() for k in response.request.headers}
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert await dump(services) == before


@pytest.mark.parametrize("path", ["/sync/pull", "/sync/push"])
async def test_body_over_limit_streamed_without_content_length(services, client, path):
    w = await seed(services)
    before = await dump(services)
    content = _oversized(services) + b"\x00" * (1024 * 1024)  # 1.25 MiB in all
    chunk = 64 * 1024
    sent: list[int] = []

    async def stream():
        for start in range(0, len(content), chunk):
            sent.append(start)
            yield content[start:start + chunk]

    response = await post(client, path, stream(), token(services, w.sales1, "salesperson"))
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    # refused as soon as the limit was passed, not after buffering the whole body
    assert len(sent) <= services.settings.max_body_bytes // chunk + 2, len(sent)
    assert await dump(services) == before


async def test_body_just_under_limit_is_not_refused_for_size(services, client):
    w = await seed(services)
    limit = services.settings.max_body_bytes
    body = pull_body()
    body["pad"] = ""
    body["pad"] = "x" * (limit - len(pack(body)) - 10)
    content = pack(body)
    assert limit - 20 < len(content) <= limit
    response = await post(client, "/sync/pull", content, token(services, w.sales1, "salesperson"))
    assert response.status_code == 200, response.content[:300]


# -- request-level: authentication ---------------------------------------------------

OTHER_SECRET = "an-entirely-different-secret-0123456789"


def _claims(w: World, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": str(w.sales1), "tid": 1, "role": "salesperson", "iat": now, "exp": now + 3600, **over}


def _auth_cases(services, w: World) -> dict[str, tuple[str | None, str]]:
    secret = services.settings.jwt_secret
    return {
        "no header": (None, "AUTH_REQUIRED"),
        "bearer garbage": ("Bearer garbage", "AUTH_INVALID"),
        "bearer empty": ("Bearer ", "AUTH_INVALID"),
        "basic scheme": ("Basic c2FsZXMxOnB3", "AUTH_INVALID"),
        "forged with another secret": (jwt.encode(_claims(w), OTHER_SECRET, algorithm="HS256"), "AUTH_INVALID"),
        "alg none": (jwt.encode(_claims(w), None, algorithm="none"), "AUTH_INVALID"),
        "expired": (token(services, w.sales1, "salesperson", ttl=-120), "AUTH_INVALID"),  # past the 30 s leeway
        "other tenant's user under tid 1": (token(services, w.intruder, "salesperson", tenant_id=1), "AUTH_INVALID"),
        "role differs from the db": (token(services, w.sales1, "admin"), "AUTH_INVALID"),
        "pos user claiming salesperson": (token(services, w.pos1, "salesperson"), "AUTH_INVALID"),
        "unknown user": (token(services, 999, "salesperson"), "AUTH_INVALID"),
        "unknown tenant": (token(services, w.sales1, "salesperson", tenant_id=77), "AUTH_INVALID"),
        "exp missing": (jwt.encode(without(_claims(w), "exp"), secret, algorithm="HS256"), "AUTH_INVALID"),
        "tid as str": (jwt.encode(_claims(w, tid="1"), secret, algorithm="HS256"), "AUTH_INVALID"),
        "sub not a number": (jwt.encode(_claims(w, sub="sales1"), secret, algorithm="HS256"), "AUTH_INVALID"),
        "unknown role": (jwt.encode(_claims(w, role="root"), secret, algorithm="HS256"), "AUTH_INVALID"),
        "sub out of range": (jwt.encode(_claims(w, sub="9" * 30), secret, algorithm="HS256"), "AUTH_INVALID"),
    }


AUTH_CASES = [
    "no header", "bearer garbage", "bearer empty", "basic scheme", "forged with another secret", "alg none",
    "expired", "other tenant's user under tid 1", "role differs from the db", "pos user claiming salesperson",
    "unknown user", "unknown tenant", "exp missing", "tid as str", "sub not a number", "unknown role",
    "sub out of range",
]


@pytest.mark.parametrize("case", AUTH_CASES)
async def test_bad_token_is_refused_and_changes_nothing(services, client, case):
    w = await seed(services)
    bearer, code = _auth_cases(services, w)[case]
    before = await dump(services)
    for path, body in (("/sync/push", push_body()), ("/sync/pull", pull_body())):  # otherwise perfectly good
        response = await post(client, path, pack(body), bearer)
        error = assert_error(response, 401, code)
        if case == "expired":
            assert "expired" in error["message"].lower(), error
        assert await dump(services) == before, path


async def test_the_auth_cases_would_pass_with_the_right_token(services, client):
    """Control: the bodies used above are accepted with a good token on both endpoints."""
    w = await seed(services)
    good = token(services, w.sales1, "salesperson")
    assert (await post(client, "/sync/pull", pack(pull_body()), good)).status_code == 200
    assert (await post(client, "/sync/push", pack(push_body()), good)).status_code == 200
    assert await count(services, tables.orders) == 1


async def test_auth_is_checked_before_the_body(services, client):
    await seed(services)
    response = await post(client, "/sync/pull", b"\xc1", None)
    assert_error(response, 401, "AUTH_REQUIRED")


# -- mutation level ----------------------------------------------------------------


def _customer_balance(balance: int):
    async def setup(services, client, w: World) -> None:
        response = await client.post("/admin/customers", json={"upsert": [{"id": 1, "balance": balance}]},
                                     headers={"Authorization": f"Bearer {token(services, w.admin, 'admin')}"})
        assert response.status_code == 200, response.text
    return setup


# name -> (role, mutation name, args, at offset from now, setup, code)
REJECTIONS: dict[str, tuple] = {
    "unknown mutation": ("salesperson", "order.destroy", order_args(), 0, None, "UNKNOWN_MUTATION"),
    "customer_id as str": ("salesperson", "order.create", order_args(customer_id="1"), 0, None, "INVALID_ARGS"),
    "lines as map": ("salesperson", "order.create", order_args(lines={"product_id": 3, "qty": 2}), 0, None,
                     "INVALID_ARGS"),
    "qty as str": ("salesperson", "order.create", order_args(lines=[{"product_id": 3, "qty": "2"}]), 0, None,
                   "INVALID_ARGS"),
    "qty zero": ("salesperson", "order.create", order_args(lines=[{"product_id": 3, "qty": 0}]), 0, None,
                 "INVALID_ARGS"),
    "no lines": ("salesperson", "order.create", order_args(lines=[]), 0, None, "INVALID_ARGS"),
    "id missing": ("salesperson", "order.create", without(order_args(), "id"), 0, None, "INVALID_ARGS"),
    "unknown argument": ("salesperson", "order.create", order_args(discount=10), 0, None, "INVALID_ARGS"),
    "other salesperson's customer": ("salesperson", "order.create", order_args(customer_id=5), 0, None,
                                     "FORBIDDEN"),
    "nobody's customer": ("salesperson", "order.create", order_args(customer_id=999), 0, None, "NOT_FOUND"),
    "unknown product": ("salesperson", "order.create", order_args(lines=[{"product_id": 999, "qty": 1}]), 0, None,
                        "NOT_FOUND"),
    "pos sends order.create": ("pos", "order.create", order_args(), 0, None, "FORBIDDEN"),
    "over credit limit": ("salesperson", "order.create", order_args(lines=[{"product_id": 20, "qty": 10}]), 0,
                          _customer_balance(990_000), "CREDIT_LIMIT_EXCEEDED"),
    "more than available": ("salesperson", "order.create", order_args(lines=[{"product_id": 1, "qty": 51}]), 0,
                            None, "INSUFFICIENT_STOCK"),
    "stale price": ("salesperson", "order.create", order_args(lines=[{"product_id": 3, "qty": 2, "price": 299}]), 0,
                    None, "PRICE_CHANGED"),
    "at in the future": ("salesperson", "order.create", order_args(), 3_600_000, None, "INVALID_ARGS"),
    "at far in the future": ("salesperson", "order.create", order_args(), 2**52, None, "INVALID_ARGS"),
    "order id not a uuid": ("salesperson", "order.create", order_args(id="order-1"), 0, None, "INVALID_ARGS"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
async def test_rejected_mutation_is_recorded_and_changes_no_domain_row(services, client, case):
    role, name, args, at_offset, setup, code = REJECTIONS[case]
    w = await seed(services)
    if setup is not None:
        await setup(services, client, w)
    user = w.sales1 if role == "salesperson" else w.pos1
    device = HttpSync(client, token(services, user, role), "dev-1")
    await device.sync()
    assert device.replica.rows("rejections") == {}
    domain = await dump(services, domain_only=True)
    ledger = await count(services, mutation_ledger)
    m = device.mutation(name, args, at=now_ms() + at_offset)

    [result] = await device.push([m])
    assert result["id"] == m["id"] and result["status"] == "rejected", result
    assert result["code"] == code, result
    assert isinstance(result["message"], str) and result["message"] and "Traceback" not in result["message"]
    assert "result" not in result
    assert await dump(services, domain_only=True) == domain  # no order, stock.reserved, balance untouched
    assert await count(services, mutation_ledger) == ledger + 1

    # the refusal is final: a replay returns the very same result and records nothing more
    assert await device.push([m]) == [result]
    assert await count(services, mutation_ledger) == ledger + 1
    assert await dump(services, domain_only=True) == domain

    await device.sync()
    rejections = device.replica.rows("rejections")
    assert list(rejections) == [f"1:dev-1:{m['id']}"]
    row = rejections[f"1:dev-1:{m['id']}"]
    assert row["client_id"] == "dev-1" and row["mutation_id"] == m["id"]
    assert (row["name"], row["code"], row["message"], row["args"]) == (name, code, result["message"], args)
    assert row["at"] == m["at"]
    if role == "salesperson":
        assert device.replica.rows("orders") == {}


async def test_the_boundaries_of_the_rejection_cases_are_applied(services, client):
    """Controls: an order exactly at the credit limit, for exactly the available stock,
    at the valid price, is applied, and reserves stock."""
    w = await seed(services)
    await _customer_balance(990_000)(services, client, w)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    at_limit = device.mutation("order.create", order_args(lines=[{"product_id": 20, "qty": 5, "price": 2000}]))
    all_stock = device.mutation("order.create", order_args(customer_id=2, lines=[{"product_id": 1, "qty": 50}]))
    results = await device.push([at_limit, all_stock])
    assert [r["status"] for r in results] == ["applied", "applied"], results
    await device.sync()
    assert device.replica.rows("customers")[1]["balance"] == 1_000_000
    assert device.replica.rows("stock")[1001]["reserved"] == 50
    assert device.replica.rows("stock")[1020]["reserved"] == 5
    assert device.replica.rows("rejections") == {}
    # and now the next unit of product 1 is one too many
    [more] = await device.push([device.mutation("order.create",
                                                order_args(customer_id=2, lines=[{"product_id": 1, "qty": 1}]))])
    assert more["code"] == "INSUFFICIENT_STOCK"


async def test_a_rejection_between_applied_mutations_only_affects_itself(services, client):
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    ok1 = device.mutation("order.create", order_args(lines=[{"product_id": 2, "qty": 1}]))
    bad = device.mutation("order.create", order_args(lines=[{"product_id": 2, "qty": 1}, {"product_id": 1, "qty": 99}]))
    ok2 = device.mutation("order.create", order_args(lines=[{"product_id": 2, "qty": 1}]))
    results = await device.push([ok1, bad, ok2])
    assert [(r["status"], r.get("code")) for r in results] == [
        ("applied", None), ("rejected", "INSUFFICIENT_STOCK"), ("applied", None)]
    await device.sync()
    assert device.replica.rows("stock")[1002]["reserved"] == 2  # not 3: the refused line reserved nothing
    assert device.replica.rows("stock")[1001]["reserved"] == 0
    assert len(device.replica.rows("orders")) == 2
    assert list(device.replica.rows("rejections")) == [f"1:dev-1:{bad['id']}"]


# -- values the database cannot hold must still be clean refusals --------------------

WIRE_MAX = 2**53  # the brief: integers on the wire stay within +-2^53

# name -> (mutation, args, at, acceptable rejection codes; None: applied or rejected)
ODD_VALUES: dict[str, tuple[str, dict, int | None, set[str] | None]] = {
    # inside the wire range, but wider than the 32-bit id columns
    "customer_id beyond 32 bits": ("order.create", order_args(customer_id=2**40), None, {"NOT_FOUND", "INVALID_ARGS"}),
    "product_id beyond 32 bits": ("order.create", order_args(lines=[{"product_id": 2**40, "qty": 1}]), None,
                                  {"NOT_FOUND", "INVALID_ARGS"}),
    # outside the wire range: a per-mutation INVALID_ARGS/NOT_FOUND or a request-level BAD_REQUEST
    "customer_id beyond 64 bits": ("order.create", order_args(customer_id=2**64 - 1), None,
                                   {"NOT_FOUND", "INVALID_ARGS"}),
    "product_id beyond 64 bits": ("order.create", order_args(lines=[{"product_id": 2**64 - 1, "qty": 1}]), None,
                                  {"NOT_FOUND", "INVALID_ARGS"}),
    "at beyond 64 bits": ("order.create", order_args(), 2**64 - 1, {"INVALID_ARGS"}),
    # legal msgpack values some databases cannot store as they are
    "note with a NUL": ("order.create", order_args(note="a\x00b"), None, None),
    "NaN in args": ("visit.checkin", {"id": str(uuid.uuid4()), "customer_id": 1, "lat": float("nan")}, None, None),
}


def _outside_wire_range(value: Any) -> bool:
    """Values protocol v1 rules out (docs/protocol.md): ints beyond 2^53, NaN, U+0000."""
    if isinstance(value, dict):
        return any(_outside_wire_range(v) for v in value.values())
    if isinstance(value, list):
        return any(_outside_wire_range(v) for v in value)
    if isinstance(value, float):
        return value != value
    if isinstance(value, str):
        return "\x00" in value
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > WIRE_MAX


@pytest.mark.parametrize("case", list(ODD_VALUES))
async def test_odd_values_never_give_a_server_error(services, client, case):
    """Whatever a device sends inside well-formed msgpack is answered cleanly, never with a
    500: a transport failure is retried by the device with the same ids, so a 500 here
    blocks that device's outbox for good."""
    name, args, at, codes = ODD_VALUES[case]
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    domain = await dump(services, domain_only=True)
    before = await dump(services)
    body = push_body(mutations=[mutation(1, name, args, at)])
    response = await post(client, "/sync/push", pack(body), token(services, w.sales1, "salesperson"))
    assert b"Traceback" not in response.content
    if response.status_code == 400 and _outside_wire_range(body):
        assert error_of(response)["code"] == "BAD_REQUEST"
        assert await dump(services) == before
        return
    assert response.status_code == 200, (response.status_code, response.content[:300])
    [result] = msgpack.unpackb(response.content, raw=False)["results"]
    if codes is not None:
        assert result["status"] == "rejected" and result["code"] in codes, result
        assert await dump(services, domain_only=True) == domain
        assert await device.push([body["mutations"][0]]) == [result]  # recorded, replayable
    else:
        assert result["status"] in ("applied", "rejected"), result
    await device.sync()  # and the device can still sync afterwards


async def test_no_response_body_carries_a_traceback(services, client):
    """A sweep over odd requests on every route: whatever the status, no traceback leaks."""
    w = await seed(services)
    good = token(services, w.sales1, "salesperson")
    admin = token(services, w.admin, "admin")
    requests = [
        ("POST", "/sync/pull", b"\xc1", good),
        ("POST", "/sync/push", pack({"v": 1, "client_id": "x", "mutations": [{"id": 1}]}), good),
        ("POST", "/sync/push", pack(push_body(mutations=[mutation(1, args={"id": None, "customer_id": None})])), good),
        ("GET", "/sync/schema", b"", "Bearer garbage"),
        ("POST", "/admin/products", b"{not json", admin),
        ("POST", "/admin/products", pack({"upsert": "x"}), admin),
        ("POST", "/admin/nope", b"{}", admin),
    ]
    for method, path, content, bearer in requests:
        headers = {"Authorization": bearer if bearer.startswith("Bearer") else f"Bearer {bearer}"}
        response = await client.request(method, path, content=content, headers=headers)
        assert b"Traceback" not in response.content, (path, response.content[:300])
        assert b'File "' not in response.content, (path, response.content[:300])
        assert response.status_code < 500, (path, response.status_code, response.content[:300])


@pytest.mark.parametrize("path", ["/sync/pull", "/sync/push"])
async def test_client_id_with_a_nul_is_answered_cleanly(services, client, path):
    """A client_id the database cannot store is a clean BAD_REQUEST (or is served), never a 500."""
    w = await seed(services)
    body = pull_body(client_id="dev\x00nul") if path == "/sync/pull" else push_body(client_id="dev\x00nul")
    before = await dump(services)
    response = await post(client, path, pack(body), token(services, w.sales1, "salesperson"))
    assert b"Traceback" not in response.content
    assert response.status_code in (200, 400), (response.status_code, response.content[:300])
    if response.status_code == 400:
        assert error_of(response)["code"] == "BAD_REQUEST"
        assert await dump(services) == before
