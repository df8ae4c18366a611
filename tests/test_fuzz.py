"""Fuzzing every input of the server (issue 10): no 5xx, no traceback, refusals change nothing.

Pull, push, the admin writes and paths over the in-process app (SQLite and PostgreSQL), and
WebSocket frames against a real ``fieldsync serve``. Most examples are *structured but
wrong*: a valid message with some fields dropped or replaced by arbitrary msgpack values,
so that they get past decoding and reach the validation and domain code; the rest are
arbitrary msgpack values and raw bytes.

Every answer must be under 500, carry no traceback, and be an error body with a known code
when it is 400 or more. A refused request (status 400 or more) leaves the database as it
was; a push whose mutations were all rejected leaves the domain tables as they were (the
ledger records the refusals, section 6.3).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import msgpack
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, event, given, settings, strategies as st

from server.domain.backoffice import WRITABLE
from server.domain import tables
from server.domain.mutations import EDITABLE_CUSTOMER_FIELDS
from server.domain.reports import KINDS
from sync.errors import ErrorCode
from sync.storage import metadata as fieldsync_tables

from .live_support import Server, WsClient, WsClosed, close_all
from .support import seed, token

MSGPACK = "application/msgpack"
SCALE = float(os.environ.get("FIELDSYNC_FUZZ_SCALE", "1"))
CODES = {code.value for code in ErrorCode}
ENGINE_TABLES = {"log_head", "change_log", "mutation_ledger", "devices", "hot_pages", "revoked_tokens"}
#: small tables compared row by row; the others by their row count (their writes pass the log head)
WHOLE_TABLES = ("log_head", "devices", "revoked_tokens", "counters")


def fuzz_settings(examples: int) -> settings:
    """``examples`` per test and database (times ``FIELDSYNC_FUZZ_SCALE``, for a longer run)."""
    return settings(max_examples=int(examples * SCALE), deadline=None, database=None, phases=[Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.filter_too_much, HealthCheck.data_too_large])


# -- strategies: arbitrary msgpack values ------------------------------------------------------

EDGE_INTS = [0, -1, 1, 2**31 - 1, 2**31, -(2**31) - 1, 2**53 - 1, 2**53, -(2**53 - 1), -(2**53),
             2**63 - 1, 2**63, 2**64 - 1, -(2**63)]
ODD_TEXT = ["", "\x00", "a\x00b", "\ufeff", "\u202e", "\U0001d518", "\uffff", "١١", "²", "x" * 300, " ", "\n"]

ints = st.integers(-(2**63), 2**64 - 1) | st.sampled_from(EDGE_INTS)
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12) | st.sampled_from(ODD_TEXT)
scalars = (st.none() | st.booleans() | ints | st.floats() | texts | st.binary(max_size=24)
           | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)))


def _containers(children: st.SearchStrategy) -> st.SearchStrategy:
    lists, maps = st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)
    odd_keys = st.dictionaries(st.integers(-3, 3) | st.binary(max_size=2), children, min_size=1, max_size=2)
    return st.one_of(lists, lists, maps, maps, maps, odd_keys)


def nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


_tree = st.recursive(scalars, _containers, max_leaves=5)
values = st.integers(0, 99).flatmap(lambda i: st.integers(30, 40).map(nested) if i >= 95 else _tree)


@dataclass(frozen=True)
class Missing:
    """A field left out of the message."""


MISSING = Missing()


@dataclass(frozen=True)
class Field:
    """A field's right kind of value, and what may replace it (anything, or nothing)."""

    good: st.SearchStrategy
    bad: st.SearchStrategy


def field(good: st.SearchStrategy, bad: st.SearchStrategy | None = None) -> Field:
    return Field(good, st.one_of(values if bad is None else bad, st.just(MISSING)))


def sometimes(p: float, strategy: st.SearchStrategy, otherwise: Any) -> st.SearchStrategy:
    """``strategy`` with probability about ``p``, else ``otherwise`` (hypothesis favours small
    integers, so the rare branch is the high end)."""
    return st.integers(0, 99).flatmap(lambda i: strategy if i >= 100 - p * 100 else st.just(otherwise))


def optional(good: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(good, st.just(MISSING), st.none())


def message(extra_values: st.SearchStrategy | None = None,
            **fields: Field | st.SearchStrategy) -> st.SearchStrategy[dict]:
    """A valid map of these fields, often with one or two of them replaced or left out, now and
    then with an unknown field: mostly valid input gets past the first checks, to deeper code."""
    goods = {k: f.good if isinstance(f, Field) else f for k, f in fields.items()}
    spoilable = sorted(k for k, f in fields.items() if isinstance(f, Field))
    spoils = st.just({})
    if spoilable:
        spoil = st.sampled_from(spoilable).flatmap(lambda k: st.tuples(st.just(k), fields[k].bad))
        spoils = sometimes(0.15, st.lists(spoil, min_size=1, max_size=2).map(dict), {})
    bad = values if extra_values is None else extra_values
    extra = sometimes(0.1, st.dictionaries(st.sampled_from(["x", "pad", "t", "v2", "\x00"]), bad, max_size=1), {})

    def build(known: dict, spoiled: dict, more: dict) -> dict:
        merged = {**more, **known, **spoiled}
        return {k: v for k, v in merged.items() if v is not MISSING}
    return st.builds(build, st.fixed_dictionaries(goods), spoils, extra)


# -- markers resolved when the request is made ---------------------------------------------------


@dataclass(frozen=True)
class NextId:
    """The device's next mutation id (or, with ``back``, one it already sent: a replay)."""

    back: int = 0


@dataclass(frozen=True)
class Now:
    offset_ms: int = 0


@dataclass(frozen=True)
class CursorEdit:
    """A cursor the server issued, maybe with one byte changed or cut short."""

    flip: int | None = None
    cut: int | None = None


class Resolver:
    """Turns markers into values: ids that keep increasing, the time, a real cursor."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.last = 0
        self.cursor = b""
        self.user = "sales"

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, NextId):
            if value.back:
                return max(1, self.last - value.back)
            self.last = next(self.ids)
            return self.last
        if isinstance(value, OwnDevice):
            return f"{self.user}-{value.n}"
        if isinstance(value, Now):
            return time.time_ns() // 1_000_000 + value.offset_ms
        if isinstance(value, CursorEdit):
            raw = bytearray(self.cursor)
            if value.flip is not None and raw:
                raw[value.flip % len(raw)] ^= 0x41
            return bytes(raw[:value.cut] if value.cut is not None else raw)
        return value


# -- strategies: structured but wrong ----------------------------------------------------------

CLIENT_IDS = ["fuzz-1", "fuzz-2", "fuzz-3"]  # shared by the users: the first to sync owns each


@dataclass(frozen=True)
class OwnDevice:
    """A client id of the requesting user's own."""

    n: int
clean_text = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
client_ids = field(st.builds(OwnDevice, st.integers(1, 3)) | st.sampled_from(CLIENT_IDS)
                   | st.text(clean_text, min_size=1, max_size=20),
                   st.text(min_size=1, max_size=130) | st.sampled_from(["", "d" * 129]) | values)
versions = field(st.just(1), st.sampled_from([0, 2, -1, 2**53]) | values)
cursors = (st.none() | st.builds(CursorEdit) | st.builds(CursorEdit, st.integers(0, 200), st.none())
           | st.builds(CursorEdit, st.none(), st.integers(0, 200)) | st.binary(max_size=140))

pull_bodies = message(v=versions, client_id=client_ids, cursor=field(cursors),
                      limit=optional(st.integers(-3, 20_000) | st.sampled_from(EDGE_INTS)))

uuids = st.uuids().map(str) | st.sampled_from(["order-1", "", str(uuid.UUID(int=0)).upper()])
row_ids = st.integers(1, 4) | st.integers(0, 8) | st.sampled_from([999, 2**31, -1])  # 1-4: sales1's
lines = st.lists(message(product_id=field(st.integers(1, 20) | st.integers(0, 22)),
                         qty=field(st.integers(1, 3) | st.integers(-1, 60)),
                         price=optional(st.integers(-1, 5000) | st.sampled_from([10**12, 10**13]))), max_size=3)
money = st.integers(-5, 10_000) | st.sampled_from([10**12, 10**12 + 1, 2**53 - 1])
small_text = st.text(clean_text, max_size=20)

MUTATION_ARGS: dict[str, dict[str, st.SearchStrategy]] = {
    "order.create": {"id": uuids, "customer_id": row_ids, "lines": lines, "note": small_text},
    "payment.record": {"id": uuids, "customer_id": row_ids, "amount": money,
                       "currency": st.sampled_from(["EUR", "USD", ""]),
                       "method": st.sampled_from(["cash", "card", "m" * 40]), "reference": small_text},
    "visit.checkin": {"id": uuids, "customer_id": row_ids, "lat": st.floats(), "lon": st.floats(allow_nan=False),
                      "note": small_text},
    "customer.update": {"customer_id": row_ids, "base_version": st.integers(-1, 5),
                        "fields": st.dictionaries(st.sampled_from([*EDITABLE_CUSTOMER_FIELDS, "name", "balance"]),
                                                  st.none() | small_text | ints, max_size=3)},
    "sale.complete": {"id": uuids, "lines": lines, "payment_method": st.sampled_from(["cash", "card", ""]),
                      "customer_id": row_ids},
    "report.request": {"id": uuids, "kind": st.sampled_from([*KINDS, "x"]), "customer_id": row_ids,
                       "from": st.integers(-1, 2**45), "to": st.integers(-1, 2**45)},
}


def mutation_of(name: str) -> st.SearchStrategy[dict]:
    args = message(**{arg: field(good) for arg, good in MUTATION_ARGS[name].items()})
    return message(id=field(st.builds(NextId) | st.builds(NextId, st.integers(0, 3))),
                   name=field(st.just(name), st.sampled_from(["order.destroy", "", name.upper()]) | values),
                   args=field(args),
                   at=field(st.builds(Now, st.integers(-10**9, 10**6) | st.sampled_from([3_600_000, 2**52]))))


mutations = st.one_of(*(mutation_of(name) for name in MUTATION_ARGS))
push_bodies = message(v=versions, client_id=client_ids,
                      mutations=field(st.lists(mutations, min_size=1, max_size=4), st.just([]) | values))


def packed(bodies: st.SearchStrategy[dict]) -> st.SearchStrategy[Any]:
    """Structured bodies (most), arbitrary values, or raw bytes (a whole body, or a valid one cut)."""
    other = st.one_of(values, st.binary(max_size=64), st.builds(Cut, bodies, st.integers(1, 40)))
    return sometimes(0.2, other, None).flatmap(lambda o: bodies if o is None else st.just(o))


@dataclass(frozen=True)
class Cut:
    """A body whose last bytes are missing."""

    body: Any
    missing: int


def encode(body: Any, resolve: Resolver) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, Cut):
        data = msgpack.packb(resolve(body.body), use_bin_type=True)
        return data[: max(0, len(data) - body.missing)]
    return msgpack.packb(resolve(body), use_bin_type=True)


# -- checking answers --------------------------------------------------------------------------


def assert_answer(response: httpx.Response) -> None:
    """Under 500, no traceback, and a proper error body when refused."""
    content, status = response.content, response.status_code
    assert status < 500, (status, content[:500])
    assert b"Traceback" not in content and b'File "' not in content, content[:500]
    if status < 400:
        return
    ctype = response.headers.get("content-type", "")
    assert ctype.startswith((MSGPACK, "application/json")), (status, ctype, content[:200])
    body = msgpack.unpackb(content, raw=False) if ctype.startswith(MSGPACK) else json.loads(content)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] in CODES and isinstance(error["message"], str) and error["message"], error


def outcome_of(response: httpx.Response) -> str:
    """A label for ``--hypothesis-show-statistics``: the status and code(s) of an answer."""
    if response.status_code == 200 and response.url.path == "/sync/push":
        results = msgpack.unpackb(response.content, raw=False)["results"]
        return f"200 {sorted({r.get('code', 'applied') for r in results})}"
    ctype = response.headers.get("content-type", "")
    if response.status_code < 400 or not ctype.startswith((MSGPACK, "application/json")):
        return str(response.status_code)
    body = msgpack.unpackb(response.content, raw=False) if ctype.startswith(MSGPACK) else response.json()
    return f"{response.status_code} {body['error']['code']}"


#: fieldsync's tables and the bundled domain's, by name.
TABLES = {**fieldsync_tables.tables, **tables.metadata.tables}


async def fingerprint(services) -> tuple:
    """Row counts of every table, and the small tables whole (log head, devices, tokens, counters)."""
    names = sorted(TABLES)
    counts = sa.select(*(sa.select(sa.func.count()).select_from(TABLES[n]).scalar_subquery()
                         for n in names))
    async with services.db.read() as conn:
        row = (await conn.execute(counts)).one()
        small = [sorted(map(tuple, (await conn.execute(sa.select(TABLES[n]))).all()), key=repr)
                 for n in WHOLE_TABLES]
    return tuple(zip(names, row)), small


async def domain_rows(services) -> dict[str, list]:
    out = {}
    async with services.db.read() as conn:
        for table in tables.metadata.sorted_tables:
            if table.name not in ENGINE_TABLES:
                rows = (await conn.execute(sa.select(table))).all()
                out[table.name] = sorted(map(tuple, rows), key=repr)
    return out


@dataclass
class Fuzz:
    """One seeded world, tokens for its users, and a real cursor to spoil."""

    services: Any
    client: httpx.AsyncClient
    bearers: dict[str, str]
    resolve: Resolver
    #: the database as the last refused request left it (None: something was accepted since)
    state: tuple | None = None
    domain: dict | None = None

    async def send(self, method: str, path: str, content: bytes | None, who: str,
                   headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {"Content-Type": MSGPACK, "Accept": MSGPACK, **(headers or {})}
        if self.bearers[who]:
            sent["Authorization"] = self.bearers[who]
        return await self.client.request(method, path, content=content, headers=sent)

    async def checked(self, method: str, path: str, content: bytes | None, who: str,
                      headers: dict[str, str] | None = None) -> httpx.Response:
        """The request, its answer checked, and the database unchanged when it was refused.

        A refused request leaves the database as it found it, so the state it is compared with
        is the one the previous refusal was checked against: read again only after an accepted one."""
        push = path == "/sync/push"
        if self.state is None:
            self.state = await fingerprint(self.services)
        if push and self.domain is None:
            self.domain = await domain_rows(self.services)
        response = await self.send(method, path, content, who, headers)
        assert_answer(response)
        event(outcome_of(response))
        if response.status_code >= 400:
            assert await fingerprint(self.services) == self.state, (response.status_code, response.content[:300])
            return response
        self.state = None
        if push and all(r["status"] == "rejected" for r in msgpack.unpackb(response.content, raw=False)["results"]):
            assert await domain_rows(self.services) == self.domain, response.content[:300]
        else:
            self.domain = None
        return response


@pytest.fixture
async def fuzz(services, client) -> Fuzz:
    w = await seed(services)
    bearers = {"sales": f"Bearer {token(services, w.sales1, 'salesperson')}",
               "pos": f"Bearer {token(services, w.pos1, 'pos')}",
               "admin": f"Bearer {token(services, w.admin, 'admin')}",
               "garbage": "Bearer not.a.token", "none": ""}
    f = Fuzz(services, client, bearers, Resolver())
    first = await f.send("POST", "/sync/pull", msgpack.packb({"v": 1, "client_id": "fuzz-1", "limit": 5}), "sales")
    f.resolve.cursor = msgpack.unpackb(first.content)["cursor"]
    return f


who = st.sampled_from(["sales"] * 6 + ["pos"] * 3 + ["admin", "garbage", "none"])


# -- sync routes -------------------------------------------------------------------------------


@fuzz_settings(250)
@given(body=packed(pull_bodies), user=who, json_errors=st.booleans())
async def test_pull_fuzz(fuzz, body, user, json_errors):
    fuzz.resolve.user = user
    headers = {"Accept": "application/json"} if json_errors else None
    response = await fuzz.checked("POST", "/sync/pull", encode(body, fuzz.resolve), user, headers)
    if response.status_code == 200:
        assert isinstance(msgpack.unpackb(response.content, raw=False)["cursor"], bytes)


@fuzz_settings(250)
@given(body=packed(push_bodies), user=who)
async def test_push_fuzz(fuzz, body, user):
    fuzz.resolve.user = user
    response = await fuzz.checked("POST", "/sync/push", encode(body, fuzz.resolve), user)
    if response.status_code == 200:
        for result in msgpack.unpackb(response.content, raw=False)["results"]:
            assert result["status"] in ("applied", "rejected"), result
            if result["status"] == "rejected":
                assert result["code"] in CODES and "Traceback" not in result["message"], result


# -- admin -------------------------------------------------------------------------------------

#: the fuzz's own principals stay as they are, so that later examples still reach deep code
KEEP_USERS = {11, 21, 31}
json_ints = st.integers() | st.sampled_from([*EDGE_INTS, 10**30, -(10**30)])
json_text = st.text(max_size=12) | st.sampled_from([*ODD_TEXT, "\ud800", "a\udfffb", "\udbff\udc00"])
json_scalars = st.none() | st.booleans() | json_ints | st.floats() | json_text
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(json_text, kids, max_size=3), max_leaves=6)

COLUMN_VALUES = {
    "int": st.integers(-1, 30) | json_ints, "money": st.integers(-1, 10**6) | json_ints,
    "time": st.integers(0, 2**41) | json_ints, "str": st.text(max_size=8) | json_text, "bool": st.booleans(),
    "float": st.floats(), "json": json_values,
}
ROW_IDS = {"users": st.sampled_from([12, 41, 100, 101]) | st.integers(200, 210),
           "stock": st.sampled_from([1001, 1002, 2001, 9999]), "prices": st.sampled_from([1001, 2003, 9999])}


def admin_rows(table: str) -> st.SearchStrategy[list]:
    from sync.schema import wire_type

    sa_table, allowed = WRITABLE[table].table, WRITABLE[table].columns
    columns = {c: field(COLUMN_VALUES[wire_type(sa_table.c[c])], json_values) for c in allowed if c != "id"}
    columns["id"] = field(ROW_IDS.get(table, st.integers(0, 25) | json_ints), json_values)
    unknown = st.sampled_from(["tenant_id", "version", "nope", "\x00"])
    row = message(st.just(None), **columns).flatmap(lambda full: st.builds(
        lambda pick, more: {k: v for k, v in full.items() if k == "id" or k in pick} | more,
        st.sets(st.sampled_from(allowed), max_size=5),
        st.one_of(st.just({}), st.just({}), st.dictionaries(unknown, json_scalars, max_size=1))))
    return st.lists(row, max_size=3)


def deletes_for(table: str) -> st.SearchStrategy:
    ids = ROW_IDS.get(table, st.integers(0, 25)) if table != "users" else st.integers(40, 45)
    return st.lists(ids | json_ints.filter(lambda i: i not in KEEP_USERS), max_size=3)


admin_bodies = st.sampled_from(sorted(WRITABLE)).flatmap(lambda table: st.tuples(
    st.just(table), message(json_values, upsert=field(admin_rows(table), json_values),
                            delete=optional(deletes_for(table)))))
admin_tables = st.sampled_from([*WRITABLE]) | st.sampled_from(["devices", "log_head", "x", "%00"])


@fuzz_settings(200)
@given(case=st.one_of(admin_bodies, admin_bodies, admin_bodies, st.tuples(admin_tables, json_values)),
       as_json=st.sampled_from([True, True, True, False]), user=st.sampled_from(["admin"] * 8 + ["sales", "none"]),
       raw=st.none() | st.none() | st.binary(max_size=40))
async def test_admin_fuzz(fuzz, case, as_json, user, raw):
    table, body = case
    if raw is not None:
        content = raw
    elif as_json:
        content = json.dumps(body).encode()  # lone surrogates travel as \ud800 escapes, floats as NaN
    else:
        try:
            content = msgpack.packb(body, use_bin_type=True)
        except (OverflowError, UnicodeEncodeError, ValueError):
            content = json.dumps(body).encode()
    ctype = "application/json" if as_json else MSGPACK
    await fuzz.checked("POST", f"/admin/{table}", content, user, {"Content-Type": ctype, "Accept": ctype})


segments = (st.text(max_size=20) | st.sampled_from(["fuzz-1", "..", ".", "%00", "%ff", "%2F", "a%00b", "\x00",
                                                    "\ud800", " ", "x" * 300, "%E2%80%AE"]))


RAW_SEGMENT = re.compile(r"(?=.*%)[A-Za-z0-9%._~-]+")  # sent as written: its escapes are the test
ROUTED = re.compile(r"^/documents/[^/]+$|^/admin/devices/[^/]+/(revoke|enrol)$|^/admin/[^/]+$")


def path_of(route: str, part: str) -> str:
    if route == "document":
        return f"/documents/{part}"
    return f"/admin/devices/{part}/{'revoke' if route == 'revoke' else 'enrol'}"


@fuzz_settings(150)
@given(segment=segments, route=st.sampled_from(["revoke", "enrol", "enrol-body", "document", "devices"]),
       user=st.sampled_from(["admin", "admin", "sales", "pos", "garbage"]), body=json_values)
async def test_admin_paths_and_documents_fuzz(fuzz, segment, route, user, body):
    # Raw escapes stay as written; anything else is one path segment, percent-encoded.
    part = segment if RAW_SEGMENT.fullmatch(segment) else quote(segment, safe="", errors="surrogatepass")
    if route != "devices" and not ROUTED.match(httpx.URL("http://fieldsync" + path_of(route, part)).path):
        # ``/admin/devices//revoke``, ``/documents/..``: another route or none (the router's plain 404).
        response = await fuzz.send("GET" if route == "document" else "POST", path_of(route, part), None, user)
        assert response.status_code < 500 and b"Traceback" not in response.content, response.content[:300]
        return
    if segment == "fuzz-1" and route == "revoke":
        route = "enrol"  # the fuzz's own device stays enrolled: later examples still reach deep code
    if route == "document":
        response = await fuzz.checked("GET", path_of(route, part), None, user)
        assert response.status_code in (200, 400, 401, 403, 404), response.status_code
        return
    if route == "devices":
        await fuzz.checked("GET", "/admin/devices", None, user, {"Accept": "application/json"})
        return
    content = json.dumps(body).encode() if route == "enrol-body" else None
    await fuzz.checked("POST", path_of(route, part), content, user,
                       {"Content-Type": "application/json", "Accept": "application/json"})


# -- WebSocket frames, against a real server process -------------------------------------------

hello_frames = message(t=field(st.just("hello")), v=versions, client_id=client_ids,
                       cursor=field(st.none() | st.binary(max_size=140)),
                       token=field(st.just(MISSING) | st.none(), st.text(max_size=40) | values))  # good: the header's
ws_pushes = message(t=st.just("push"), mutations=field(st.lists(mutations, min_size=1, max_size=3)))
later_frames = st.one_of(
    ws_pushes, ws_pushes, ws_pushes,
    message(t=st.just("ack"), cursor=field(st.binary(max_size=140) | st.builds(CursorEdit))),
    message(t=st.just("ping")),
    hello_frames,
    message(t=field(values)),
    values,
    st.binary(max_size=40),
    st.text(max_size=20),  # a text frame
)
WS_CLOSE_CODES = {1000, 1001, 1008, 1009, 1013} | {code.close for code in ErrorCode if code.close >= 4000}


@pytest.fixture
async def live_server(services, tmp_path):
    await seed(services)
    server = Server(services.settings, tmp_path / "server", env={"FIELDSYNC_MAX_BODY_BYTES": "65536"})
    await asyncio.to_thread(server.start)
    yield server
    await close_all()
    await asyncio.to_thread(server.stop)
    assert "Traceback" not in server.log_tail(10**7), server.log_tail()


def assert_frame(frame: dict) -> None:
    assert frame["t"] in ("changes", "results", "error", "pong"), frame
    if frame["t"] == "error":
        assert frame["code"] in CODES and isinstance(frame["message"], str), frame
        assert "Traceback" not in frame["message"], frame


@pytest.mark.slow
@fuzz_settings(200)
@given(first=st.one_of(hello_frames, hello_frames, st.builds(lambda f: {**f, "t": "hello", "v": 1},
                                                             hello_frames), values, st.binary(max_size=30)),
       later=st.lists(later_frames, max_size=4), header=sometimes(0.15, st.just(False), True))
async def test_ws_frames_fuzz(services, live_server, first, later, header):
    resolve = Resolver()
    resolve.cursor = b"\x00" * 16
    bearer = token(services, 11, "salesperson")
    client = await WsClient.open(live_server.ws_url, bearer if header else None)
    log_from = live_server.log_path.stat().st_size
    try:
        for frame in [first, *later]:
            if isinstance(frame, str):
                await client.send_raw(frame)
            else:
                await client.send_raw(encode(frame, resolve))
        await client.send({"t": "ping"})  # ends the handshake of a session not past it (not hello: 4400)
        while True:
            try:
                frame = await client.recv(10)
            except WsClosed as closed:
                assert closed.code in WS_CLOSE_CODES, (closed.code, closed.reason, closed.frames[-3:])
                event(f"closed {closed.code}")
                break
            assert_frame(frame)
            event(frame["t"] if frame["t"] != "error" else f"error {frame['code']}")
            if frame["t"] == "pong":
                break
    finally:
        await client.close()
    log = live_server.log_path.read_text(errors="replace")[log_from:]
    assert "Traceback" not in log, log[-3000:]
