"""``GET /sync/ws`` end to end against a real ``fieldsync serve`` process.

A device's copy is compared with a fresh pull through :func:`converge`, never once right
after catch-up: the server's periodic jobs (dashboards every 15 minutes) may commit in
between, and the live device then gets that commit as a frame.

Each test seeds the run's database (SQLite file or PostgreSQL) with :func:`support.seed`,
starts one server process on a free port pointing at it, and talks to it with a msgpack
WebSocket client: hello (header or frame token), catch-up to ``more = false``, live frames,
push and replay, ping, bad frames, token expiry, idle timeout, revocation and re-enrolment,
user deactivation, a minimum protocol version, coalescing and a client that stops reading.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from fieldsync_client import Replica
from sync.errors import ErrorCode
from sync.messages import PROTOCOL_VERSION
from sync.storage import devices

from .live_support import (
    Server, WsClient, WsClosed, admin_post, admin_write, assert_same, connect_device, converge, fresh_pull, launching,
    pack,
)
from .support import seed, token

pytestmark = pytest.mark.slow

#: every server of this file: small frames/bodies, a short slow-client timeout, paged catch-up
BASE_ENV = {"FIELDSYNC_MAX_BODY_BYTES": "65536", "FIELDSYNC_WS_SLOW_TIMEOUT": "2", "FIELDSYNC_PULL_LIMIT": "25"}


@pytest.fixture
async def world(services):
    return await seed(services)


@pytest.fixture
async def launch(services, tmp_path):
    """Start ``fieldsync serve`` processes on the test's database (stopped at teardown)."""
    async with launching(services.settings, tmp_path, BASE_ENV) as start:
        yield start


def changes_with(frame: dict, dataset: str, key: int) -> bool:
    part = frame.get("data", {}).get(dataset)
    if frame["t"] != "changes" or part is None:
        return False
    index = part["cols"].index("id")
    return any(row[index] == key for row in part["rows"]) or key in part["deletes"]


def order_create(mid: int, customer: int = 1, product: int = 1, qty: int = 1) -> dict:
    return {"id": mid, "name": "order.create", "at": int(time.time() * 1000),
            "args": {"id": str(uuid.uuid4()), "customer_id": customer, "lines": [{"product_id": product, "qty": qty}]}}


# -- the happy path, on both databases ------------------------------------------------------------


async def test_hello_catch_up_live_push_ping(services, world, launch):
    server = await launch()
    w = world
    pos, sales, admin = (token(services, w.pos1, "pos"), token(services, w.sales1, "salesperson"),
                         token(services, w.admin, "admin"))

    # token in the Authorization header
    till = await WsClient.open(server.ws_url, pos)
    await till.hello("till-1")
    till_copy = Replica()
    frames = await till.catch_up(till_copy)
    assert len(frames) > 1, "PULL_LIMIT=25 pages the snapshot: several catch-up frames"
    assert all(f["more"] for f in frames[:-1]) and not frames[-1]["more"]
    assert set(frames[0]) == {"t", "cursor", "more", "reset", "expected", "data"}, "a first batch begins snapshots"
    await converge(till, till_copy, lambda: fresh_pull(server.base, pos))

    # token in the hello frame, no header
    phone = await WsClient.open(server.ws_url)
    await phone.hello("phone-1", token=sales)
    phone_copy = Replica()
    await phone.catch_up(phone_copy)
    await converge(phone, phone_copy, lambda: fresh_pull(server.base, sales))

    # an office write reaches both live devices within about a second
    started = time.monotonic()
    await admin_write(server.base, admin, "products", [{"id": 3, "name": "Renamed live"}])
    await till.recv_until(lambda f: changes_with(f, "catalog", 3), 2.0, till_copy)
    await phone.recv_until(lambda f: changes_with(f, "catalog", 3), 2.0, phone_copy)
    assert time.monotonic() - started < 1.5
    assert till_copy.rows("catalog")[3]["name"] == "Renamed live"
    await converge(till, till_copy, lambda: fresh_pull(server.base, pos))

    # push over the socket: results, then the replay gets the very same results
    outbox = [order_create(1, customer=1, product=2), order_create(2, customer=2, product=3, qty=2)]
    await phone.send({"t": "push", "mutations": outbox})
    first = await phone.recv_until(lambda f: f["t"] == "results", 10.0, phone_copy)
    assert [r["status"] for r in first["results"]] == ["applied", "applied"], first
    await phone.send({"t": "push", "mutations": outbox})
    again = await phone.recv_until(lambda f: f["t"] == "results", 10.0, phone_copy)
    assert again["results"] == first["results"]
    # read your writes, live: the orders arrive as changes frames, as the server has them
    # (what background jobs make later is test_job_results_reach_live_devices)
    mine = {m["args"]["id"] for m in outbox}
    if not mine <= set(phone_copy.rows("orders")):
        await phone.recv_until(lambda f: mine <= set(phone_copy.rows("orders")), 3.0, phone_copy)
    server_view = (await fresh_pull(server.base, sales)).rows("orders")
    assert {k: phone_copy.rows("orders")[k] for k in mine} == {k: server_view[k] for k in mine}

    # ping -> pong
    await till.send({"t": "ping"})
    await till.recv_until(lambda f: f["t"] == "pong", 2.0, till_copy)

    # ack: the device's persisted cursor is kept per device
    stored = phone_copy.cursor
    await phone.send({"t": "ack", "cursor": stored})
    await phone.send({"t": "ping"})
    await phone.recv_until(lambda f: f["t"] == "pong", 2.0, phone_copy)
    async with services.db.read() as conn:
        acked = await conn.scalar(sa.select(devices.c.acked_seq).where(devices.c.client_id == "phone-1"))
    assert acked == services.reader.cursors.decode(stored).seq, "ack was not recorded"

    for client in (till, phone):
        await client.close()


async def test_job_results_reach_live_devices(services, world, launch):
    """An order makes background jobs write too (the invoice turns ``ready``, the dashboard
    row is refreshed). Those commits are changes like any other: a live device gets them
    without any further write."""
    server = await launch(FIELDSYNC_DASHBOARD_DEBOUNCE="0.2")
    sales = token(services, world.sales1, "salesperson")
    copy = Replica()
    phone = await connect_device(server.ws_url, sales, "phone-jobs", copy)
    await phone.send({"t": "push", "mutations": [order_create(1, customer=1, product=4)]})
    result = await phone.recv_until(lambda f: f["t"] == "results", 10.0, copy)
    assert result["results"][0]["status"] == "applied", result

    # wait (over HTTP) until the jobs are done: the invoice is ready, the dashboard row exists
    deadline = time.monotonic() + 15
    while True:
        expected = await fresh_pull(server.base, sales)
        invoices = list(expected.rows("invoices").values())
        if invoices and all(i["status"] == "ready" for i in invoices) and expected.rows("dashboard"):
            break
        assert time.monotonic() < deadline, f"jobs did not finish: {invoices} {expected.rows('dashboard')}"
        await asyncio.sleep(0.2)
    # the live device must hold the same within a couple of seconds, with nothing else written
    await converge(phone, copy, lambda: fresh_pull(server.base, sales), timeout=3)
    await phone.close()


# -- bad frames: an error frame or a close code, and everyone else keeps being served ------------


async def test_bad_frames_and_the_server_keeps_serving(services, world, launch):
    server = await launch()
    w = world
    pos, sales, admin = (token(services, w.pos1, "pos"), token(services, w.sales1, "salesperson"),
                         token(services, w.admin, "admin"))
    bystander_copy = Replica()
    bystander = await connect_device(server.ws_url, pos, "till-bystander", bystander_copy)

    def is_error(code: ErrorCode):
        return lambda f: f["t"] == "error" and f["code"] == code.value

    # before hello: garbage, text, a non-map and a lying array header are refused frame by frame ...
    rogue = await WsClient.open(server.ws_url, sales)
    await rogue.send_raw(b"\xc1\xc1 not msgpack")
    await rogue.recv_until(is_error(ErrorCode.BAD_REQUEST))
    await rogue.send_raw("a text frame")
    await rogue.recv_until(is_error(ErrorCode.BAD_REQUEST))
    await rogue.send_raw(pack([1, 2, 3]))
    await rogue.recv_until(is_error(ErrorCode.BAD_REQUEST))
    await rogue.send_raw(b"\xdd\xff\xff\xff\xff")  # "an array of 4 billion items"
    await rogue.recv_until(is_error(ErrorCode.BAD_REQUEST))
    # ... and push before hello closes the session with BAD_REQUEST's close code
    await rogue.send({"t": "push", "mutations": [order_create(1)]})
    closed = await rogue.closed()
    assert closed.code == ErrorCode.BAD_REQUEST.close, closed
    assert any(f["t"] == "error" and f["code"] == "BAD_REQUEST" for f in closed.frames)

    # after hello: unknown t, a second hello, a forged ack cursor: error frames, the session stays
    rogue = await WsClient.open(server.ws_url, sales)
    await rogue.hello("rogue-phone")
    rogue_copy = Replica()
    await rogue.catch_up(rogue_copy)
    for frame in ({"t": "subscribe"}, {"no": "t"}, {"t": "hello", "v": 1, "client_id": "x", "cursor": None},
                  {"t": "ack", "cursor": b"forged"}, {"t": "push", "mutations": "nope"}):
        await rogue.send(frame)
        await rogue.recv_until(is_error(ErrorCode.BAD_REQUEST))
    await rogue.send({"t": "ping"})
    await rogue.recv_until(lambda f: f["t"] == "pong")
    # a frame over FIELDSYNC_MAX_BODY_BYTES (64 KiB here): PAYLOAD_TOO_LARGE (close 1009 or an error frame)
    await rogue.send({"t": "push", "mutations": [order_create(1)], "pad": b"x" * 70_000})
    try:
        frame = await rogue.recv_until(lambda f: f["t"] == "error", 5.0)
        assert frame["code"] == ErrorCode.PAYLOAD_TOO_LARGE.value, frame
    except WsClosed as closed:
        assert closed.code == ErrorCode.PAYLOAD_TOO_LARGE.close, closed
    await rogue.close()

    # a bad token in the frame, no token at all, a client_id of the wrong type
    for hello, code in (
        ({"t": "hello", "v": 1, "client_id": "x", "cursor": None, "token": "not-a-jwt"}, ErrorCode.AUTH_INVALID),
        ({"t": "hello", "v": 1, "client_id": "x", "cursor": None}, ErrorCode.AUTH_REQUIRED),
        ({"t": "hello", "v": 1, "client_id": 7, "cursor": None, "token": sales}, ErrorCode.BAD_REQUEST),
        ({"t": "hello", "v": 1, "client_id": "x", "cursor": "text", "token": sales}, ErrorCode.BAD_REQUEST),
    ):
        rogue = await WsClient.open(server.ws_url)
        await rogue.send(hello)
        closed = await rogue.closed()
        assert closed.code == code.close, (hello, closed)
        assert [f["code"] for f in closed.frames if f["t"] == "error"] == [code.value], closed.frames

    # the same process still serves the device that behaved
    assert server.alive()
    await admin_write(server.base, admin, "products", [{"id": 5, "name": "Still live"}])
    await bystander.recv_until(lambda f: changes_with(f, "catalog", 5), 2.0, bystander_copy)
    await converge(bystander, bystander_copy, lambda: fresh_pull(server.base, pos))
    await bystander.close()


# -- token expiry, idle timeout ------------------------------------------------------------------


async def test_expired_token_closes_the_session(services, world, launch):
    """Every session whose token expires is closed with AUTH_INVALID (4401), not another
    code: a client reconnects after IDLE_TIMEOUT with the same (dead) token, but gets a new
    token first after 4401. Thirty sessions, so a close that races the deadline shows."""
    server = await launch()
    sessions = []
    for n in range(30):
        short = token(services, world.pos1, "pos", ttl=3)
        sessions.append(await connect_device(server.ws_url, short, f"till-short-{n}", Replica()))
        await asyncio.sleep(0.02)
    opened = time.monotonic()
    codes = [(await client.closed(timeout=6)).code for client in sessions]
    assert time.monotonic() - opened < 5
    assert codes == [ErrorCode.AUTH_INVALID.close] * len(codes), f"close codes at token expiry: {codes}"
    # an already expired token is refused at hello
    stale = await WsClient.open(server.ws_url, token(services, world.pos1, "pos", ttl=-10))
    await stale.hello("till-short")
    closed = await stale.closed()
    assert closed.code == 4401 and closed.frames[-1]["code"] == "AUTH_INVALID", closed


async def test_idle_timeout(services, world, launch):
    server = await launch(FIELDSYNC_WS_IDLE_TIMEOUT="1")
    pos = token(services, world.pos1, "pos")
    silent = await connect_device(server.ws_url, pos, "till-silent", Replica())
    chatty = await connect_device(server.ws_url, pos, "till-chatty", Replica())
    started = time.monotonic()
    while time.monotonic() - started < 2.5:  # pings keep a session alive
        await chatty.send({"t": "ping"})
        await chatty.recv_until(lambda f: f["t"] == "pong", 1.0)
        await asyncio.sleep(0.3)
    closed = await silent.closed(timeout=1)
    assert closed.code == ErrorCode.IDLE_TIMEOUT.close == 4408, closed
    await chatty.send({"t": "ping"})
    await chatty.recv_until(lambda f: f["t"] == "pong", 1.0)
    await chatty.close()


# -- revocation, deactivation, minimum protocol -------------------------------------------------------


async def test_revoke_then_enrol_gets_a_full_reset(services, world, launch):
    server = await launch(FIELDSYNC_PULL_LIMIT="2000")  # the whole snapshot in one frame
    pos, admin = token(services, world.pos1, "pos"), token(services, world.admin, "admin")
    old = Replica()
    till = await connect_device(server.ws_url, pos, "till-rev", old)
    other = await connect_device(server.ws_url, pos, "till-other", Replica())  # same user, other device
    old_cursor = old.cursor

    started = time.monotonic()
    response = await admin_post(server.base, admin, "/admin/devices/till-rev/revoke")
    assert response.status_code == 200, response.text
    closed = await till.closed(timeout=2)
    assert closed.code == ErrorCode.REVOKED.close == 4410, closed
    assert time.monotonic() - started < 1.0, "revocation must close the live session at once"

    # the next connect is refused, over WebSocket and HTTP alike
    again = await WsClient.open(server.ws_url, pos)
    await again.hello("till-rev", old_cursor)
    closed = await again.closed()
    assert closed.code == 4410 and [f["code"] for f in closed.frames if f["t"] == "error"] == ["REVOKED"], closed
    async with httpx.AsyncClient(base_url=server.base) as http:
        refused = await http.post("/sync/pull", content=pack({"v": 1, "client_id": "till-rev", "cursor": old_cursor}),
                                  headers={"Authorization": f"Bearer {pos}", "Content-Type": "application/msgpack"})
    assert refused.status_code == 403, refused.content

    # the other device of that user was not touched
    await other.send({"t": "ping"})
    await other.recv_until(lambda f: f["t"] == "pong", 2.0)

    # unknown devices cannot be revoked; non-admins cannot revoke
    assert (await admin_post(server.base, admin, "/admin/devices/nope/revoke")).status_code == 400
    assert (await admin_post(server.base, pos, "/admin/devices/till-other/revoke")).status_code == 403

    # re-enrolled: the OLD cursor gets a full reset of every dataset of the role, then goes live
    assert (await admin_post(server.base, admin, "/admin/devices/till-rev/enrol")).status_code == 200
    till = await WsClient.open(server.ws_url, pos)
    await till.hello("till-rev", old_cursor)
    copy = Replica()
    frames = await till.catch_up(copy)
    assert sorted(frames[0]["reset"]) == sorted(ds.name for ds in services.registry.for_role("pos")), frames[0]
    await converge(till, copy, lambda: fresh_pull(server.base, pos))
    await admin_write(server.base, admin, "products", [{"id": 7, "name": "After enrol"}])
    await till.recv_until(lambda f: changes_with(f, "catalog", 7), 2.0, copy)
    for client in (till, other):
        await client.close()


async def test_deactivated_user_is_closed_and_refused(services, world, launch):
    server = await launch()
    sales2, sales1, admin = (token(services, world.sales2, "salesperson"),
                             token(services, world.sales1, "salesperson"), token(services, world.admin, "admin"))
    ben = await connect_device(server.ws_url, sales2, "ben-phone", Replica())
    ana_copy = Replica()
    ana = await connect_device(server.ws_url, sales1, "ana-phone", ana_copy)

    started = time.monotonic()
    await admin_write(server.base, admin, "users", [{"id": world.sales2, "active": False}])
    closed = await ben.closed(timeout=2)
    assert closed.code == ErrorCode.REVOKED.close == 4410, closed
    assert time.monotonic() - started < 1.0

    again = await WsClient.open(server.ws_url, sales2)
    await again.hello("ben-phone")
    closed = await again.closed()
    assert closed.code == 4410, closed

    # another user's session is untouched and still live
    await admin_write(server.base, admin, "products", [{"id": 9, "name": "Ana still hears this"}])
    await ana.recv_until(lambda f: changes_with(f, "catalog", 9), 2.0, ana_copy)

    # reactivated: Ben connects again
    await admin_write(server.base, admin, "users", [{"id": world.sales2, "active": True}])
    ben = await connect_device(server.ws_url, sales2, "ben-phone", Replica())
    for client in (ben, ana):
        await client.close()


async def test_a_protocol_version_the_server_does_not_speak_is_refused(services, world, launch):
    server = await launch()
    client = await WsClient.open(server.ws_url, token(services, world.pos1, "pos"))
    await client.hello("till-new-app", v=PROTOCOL_VERSION + 1)
    closed = await client.closed()
    assert closed.code == ErrorCode.UNSUPPORTED_VERSION.close == 4426, closed
    errors = [f for f in closed.frames if f["t"] == "error"]
    assert [f["code"] for f in errors] == ["UNSUPPORTED_VERSION"] and errors[0]["message"], errors


# -- coalescing ------------------------------------------------------------------------------------


async def test_a_burst_of_writes_coalesces(services, world, launch):
    """One import of 100 rows is one frame; 100 concurrent single-row writes give far fewer than 100."""
    server = await launch(FIELDSYNC_PULL_LIMIT="2000")
    pos, admin = token(services, world.pos1, "pos"), token(services, world.admin, "admin")
    copy = Replica()
    till = await connect_device(server.ws_url, pos, "till-burst", copy)

    before = len(till.received)
    await admin_write(server.base, admin, "products", [
        {"id": 1000 + n, "sku": f"IMP-{n}", "name": f"Imported {n}", "category": "Import", "unit": "pcs",
         "active": True} for n in range(100)])
    await converge(till, copy, lambda: fresh_pull(server.base, pos))
    frames = [f for f in till.received[before:] if f["t"] == "changes" and "catalog" in f["data"]]
    assert [len(f["data"]["catalog"]["rows"]) for f in frames] == [100], "one commit, one frame"

    before = len(till.received)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as http:
        await asyncio.gather(*(
            admin_write(server.base, admin, "products", [{"id": 1000 + n, "name": f"burst {n}"}], client=http)
            for n in range(100)))
    await converge(till, copy, lambda: fresh_pull(server.base, pos))
    frames = [f for f in till.received[before:] if f["t"] == "changes"]
    assert len(frames) <= 50, f"100 commits in a burst gave {len(frames)} frames"
    await till.close()


async def test_a_reconnect_storm_shares_catch_up_batches(services, world, launch):
    """Terminals of one user, offline together at one cursor, reconnect at once while the
    office keeps writing: each ends with the server's view, and catch-up batches were
    computed once and shared (the metric says so) rather than once per terminal."""
    server = await launch()
    pos, admin = token(services, world.pos1, "pos"), token(services, world.admin, "admin")
    seed_copy = Replica()
    first = await connect_device(server.ws_url, pos, "till-storm-seed", seed_copy)
    await first.close()
    for n in range(6):  # behind by several PULL_LIMIT=25 pages of renames
        await admin_write(server.base, admin, "products", [{"id": 1 + k, "name": f"storm {n}-{k}"} for k in range(20)])
    copies = [Replica() for _ in range(12)]
    for copy in copies:
        copy.cursor = seed_copy.cursor
        copy.data = {name: dict(rows) for name, rows in seed_copy.data.items()}

    async def reconnect(n: int) -> WsClient:
        return await connect_device(server.ws_url, pos, f"till-storm-{n}", copies[n])

    writing = asyncio.create_task(admin_write(server.base, admin, "products", [{"id": 2, "name": "during the storm"}]))
    tills = await asyncio.gather(*(reconnect(n) for n in range(len(copies))))
    await writing
    for till, copy in zip(tills, copies):
        await converge(till, copy, lambda: fresh_pull(server.base, pos))
        await till.close()
    text = await metrics_of(server)
    shared = metric(text, "fieldsync_shared_pulls_total", 'outcome="shared"')
    computed = metric(text, "fieldsync_shared_pulls_total", 'outcome="computed"')
    assert shared > computed, f"catch-up batches: {computed} computed, {shared} shared"

    # A late-comer is served batches read before it joined, and a commit came in between:
    # the commit's notice woke no one for it, so it must still get that change live.
    early, late = Replica(), Replica()
    for copy in (early, late):
        copy.cursor = seed_copy.cursor
        copy.data = {name: dict(rows) for name, rows in seed_copy.data.items()}
    await (await connect_device(server.ws_url, pos, "till-early", early)).close()
    await admin_write(server.base, admin, "products", [{"id": 4, "name": "between the two"}])
    straggler = await connect_device(server.ws_url, pos, "till-late", late)
    await converge(straggler, late, lambda: fresh_pull(server.base, pos), timeout=3)
    assert late.rows("catalog")[4]["name"] == "between the two"
    await straggler.close()


async def test_a_new_product_reaches_live_devices(services, world, launch):
    """A product created by the office without naming ``active`` (the column has a server
    default, true) is in the catalog of a fresh pull, so it must reach live devices too.
    (Today the insert is logged in no bucket at all: the change log records the row as sent,
    without its defaults, so no incremental pull or live frame ever carries it.)"""
    server = await launch()
    pos, admin = token(services, world.pos1, "pos"), token(services, world.admin, "admin")
    copy = Replica()
    till = await connect_device(server.ws_url, pos, "till-new-product", copy)
    await admin_write(server.base, admin, "products", [
        {"id": 500, "sku": "NEW-500", "name": "Brand new", "category": "New", "unit": "pcs"}])
    assert 500 in (await fresh_pull(server.base, pos)).rows("catalog")
    await converge(till, copy, lambda: fresh_pull(server.base, pos), timeout=3)
    await till.close()


# -- back-pressure: a client that stops reading ------------------------------------------------------


async def open_stalled(server: Server, bearer: str, client_id: str) -> tuple[WsClient, Replica]:
    """A caught-up device with a tiny socket receive buffer, whose WebSocket library stops
    reading from the socket as soon as one frame waits unread (``max_queue=1``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    client = await WsClient.open(server.ws_url, bearer, sock=sock, max_queue=1)
    await client.hello(client_id)
    copy = Replica()
    await client.catch_up(copy)
    return client, copy


async def flood(server: Server, admin: str, batches: int, rows: int = 1000) -> None:
    """Office batches rewriting ``rows`` catalog rows with random (incompressible: frames are
    deflated) names: ~200 bytes a row on the wire, each batch one frame per live device."""
    async with httpx.AsyncClient(timeout=60) as http:
        for batch in range(batches):
            await admin_write(server.base, admin, "products", [
                {"id": 2000 + i, "sku": f"BIG-{i}", "name": f"{batch:04d}-" + base64.b64encode(os.urandom(105)).decode(),
                 "category": "Bulk", "unit": "pcs", "active": True} for i in range(rows)], client=http)


async def drain(client: WsClient, replica: Replica) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        while True:
            frame = await client.recv(0.01)
            if frame["t"] == "changes":
                replica.apply(frame)


def metric(text: str, name: str, label: str) -> float:
    """The sum of the samples of ``name`` that carry ``label`` (e.g. ``code="4409"``)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and label in line)


async def metrics_of(server: Server) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{server.base}/metrics")).text


#: the heavy back-pressure tests are about server memory, not the database: PostgreSQL only
ONLY_POSTGRES = pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)],
                                        indirect=True)
BIG = {"FIELDSYNC_PULL_LIMIT": "2000", "FIELDSYNC_MAX_BODY_BYTES": str(1 << 20)}


async def test_a_terminal_moved_to_another_branch_is_rescoped_live(services, world, launch):
    """The office moves a POS user to the warehouse branch while its terminal is connected:
    the terminal's stock and customers switch to the new branch's live (a reset), without a
    reconnect, and its copy equals what a fresh device of that user pulls."""
    server = await launch()
    pos, admin = token(services, world.pos1, "pos"), token(services, world.admin, "admin")
    copy = Replica()
    till = await connect_device(server.ws_url, pos, "till-moved", copy)
    before = await fresh_pull(server.base, pos)
    await admin_write(server.base, admin, "users", [{"id": world.pos1, "branch_id": world.warehouse}])
    after = await fresh_pull(server.base, pos)
    assert (before.rows("stock"), before.rows("customers")) != (after.rows("stock"), after.rows("customers")), \
        "the seed gives the two branches different stock or customers"
    await converge(till, copy, lambda: fresh_pull(server.base, pos), timeout=5)
    assert till.conn.state.name == "OPEN", "rescoped without a reconnect"



async def test_writes_of_another_process_reach_live_devices_by_the_log_poll(services, world, launch):
    """No notice comes from a write made by another process on the same database
    (``fieldsync import``, a worker with no Redis): the server's slow poll of the log heads
    finds it, and a user deactivated that way loses its session."""
    from .support import admin_write

    server = await launch(FIELDSYNC_POLL_INTERVAL="0.1")  # the poll runs every 15 intervals: 1.5 s
    pos = token(services, world.pos1, "pos")
    copy = Replica()
    till = await connect_device(server.ws_url, pos, "till-polled", copy)
    await admin_write(services.db, services.registry, world.tenant_id, "products", [{"id": 1, "name": "Imported"}], [])
    await till.recv_until(lambda f: changes_with(f, "catalog", 1) and copy.rows("catalog")[1]["name"] == "Imported",
                          5.0, copy)
    await admin_write(services.db, services.registry, world.tenant_id, "users", [{"id": world.pos1, "active": False}], [])
    closed = await till.closed(timeout=5)
    assert closed.code == ErrorCode.REVOKED.close, closed



@ONLY_POSTGRES
async def test_clients_that_stop_reading_keep_server_memory_bounded(services, world, launch):
    server = await launch(**BIG)
    pos, admin = token(services, world.pos1, "pos"), token(services, world.admin, "admin")
    reader_copy = Replica()
    reader = await connect_device(server.ws_url, pos, "till-reader", reader_copy)
    stalled = [await open_stalled(server, pos, f"till-stalled-{n}") for n in range(20)]
    baseline = server.rss_kb()

    # 80 batches of ~100 KB frames, ~8 MB for each device: the kernel's socket buffers take
    # up to ~4 MB of it, so unbounded buffering would keep ~4 MB for each of 20 devices
    for _ in range(16):
        await flood(server, admin, 5, rows=500)
        await drain(reader, reader_copy)  # the reading device keeps reading meanwhile
    grown_mb = (server.rss_kb() - baseline) / 1024
    # bounded: a few frames per device (measured ~14 MB in all); a queue without bound: ~50 MB
    assert grown_mb < 30, f"server RSS grew {grown_mb:.0f} MB while 20 clients did not read"

    # the reading device was served throughout and is current
    await converge(reader, reader_copy, lambda: fresh_pull(server.base, pos))

    # past the slow-client timeout (2 s) the stalled devices read again: each is either closed
    # with SLOW_CLIENT (and reconnects from its cursor) or catches up; either way it converges
    await asyncio.sleep(3)
    expected = await fresh_pull(server.base, pos)

    async def resume(n: int, client: WsClient, copy: Replica) -> str:
        try:
            await converge(client, copy, lambda: asyncio.sleep(0, expected), timeout=15)
            outcome = "caught up"
        except WsClosed as closed:
            # SLOW_CLIENT, or no close frame at all (a server that gave up on a full pipe can
            # only drop the connection): never any other code
            assert closed.code in (ErrorCode.SLOW_CLIENT.close, 1006, None), closed
            outcome = f"closed {closed.code}"
            client = await connect_device(server.ws_url, pos, f"till-stalled-{n}", copy)
            assert_same(copy, expected)
        await client.close()
        return outcome

    outcomes = await asyncio.gather(*(resume(n, client, copy) for n, (client, copy) in enumerate(stalled)))
    print("stalled devices:", {o: outcomes.count(o) for o in set(outcomes)}, f"RSS growth {grown_mb:.1f} MB")
    await reader.close()


@ONLY_POSTGRES
async def test_a_device_that_reads_nothing_is_let_go_after_the_slow_timeout(services, world, launch):
    """docs/protocol.md 8.6: "If the queue stays full for FIELDSYNC_WS_SLOW_TIMEOUT, the server
    closes the session with SLOW_CLIENT". The device here never reads again."""
    server = await launch(**BIG)
    pos, admin = token(services, world.pos1, "pos"), token(services, world.admin, "admin")
    client, copy = await open_stalled(server, pos, "till-gone-quiet")
    await flood(server, admin, 40)  # ~8 MB: more than the socket buffers hold, the queue fills
    deadline = time.monotonic() + 2 + 4  # the slow timeout, and some slack
    closed = 0.0
    while time.monotonic() < deadline and not closed:
        await asyncio.sleep(0.5)
        closed = metric(await metrics_of(server), "fieldsync_ws_sessions_closed_total", 'code="4409"')
    assert closed == 1, "the session of a device that reads nothing is still held past FIELDSYNC_WS_SLOW_TIMEOUT"
    # when it reads again it finds its connection gone (however it was closed) and catches up
    await client.closed(timeout=10)
    client = await connect_device(server.ws_url, pos, "till-gone-quiet", copy)
    await converge(client, copy, lambda: fresh_pull(server.base, pos))
    await client.close()
