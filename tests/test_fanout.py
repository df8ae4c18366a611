"""Fan-out across server processes: two ``fieldsync serve`` processes on one PostgreSQL
database and one Redis.

* a change written through one process reaches a device live on the other (both ways),
  and so does a revocation;
* hypothesis: office writes through either process interleaved with a device connecting to
  either process and dropping off (keeping its last cursor): after a final catch-up its copy
  equals a fresh pull, no batch ever holds a key twice and its cursor never goes back;
* Redis killed (SIGKILL) and restarted under two processes (a private ``redis-server``):
  delivery falls back to polling the log, then returns to pub/sub; nothing is lost.

Normal tests use the Redis at 127.0.0.1:6379 (``FIELDSYNC_TEST_REDIS``) with a unique key and
channel prefix per test; they skip when it is absent, and fail when ``CI=true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from fieldsync_client import Replica

from .live_support import (
    RedisServer, Server, WsClient, admin_post, admin_write, assert_same, close_all, connect_device,
    converge, forget_prefix, fresh_pull, redis_ping, redis_prefix, require_redis, same,
)
from .support import seed, token

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres,
              pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)],
                                      indirect=True)]


@pytest.fixture
async def world(services):
    return await seed(services)


@pytest.fixture
async def pair(services, world, tmp_path):
    """Servers A and B on the test's PostgreSQL database and the shared Redis."""
    url = require_redis()
    prefix = redis_prefix()
    env = {"FIELDSYNC_REDIS_URL": url, "FIELDSYNC_REDIS_PREFIX": prefix}
    servers = [Server(services.settings, tmp_path / name, env=env, name=name) for name in ("a", "b")]
    try:
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        yield servers
    finally:
        await close_all()
        await asyncio.gather(*(asyncio.to_thread(server.stop) for server in servers))
        forget_prefix(url, prefix)


def changes_with(frame: dict, dataset: str, key: int) -> bool:
    part = frame.get("data", {}).get(dataset)
    if frame["t"] != "changes" or part is None:
        return False
    index = part["cols"].index("id")
    return any(row[index] == key for row in part["rows"]) or key in part["deletes"]


async def test_a_change_through_one_process_reaches_a_device_on_the_other(services, world, pair):
    a, b = pair
    pos, admin = token(services, world.pos1, "pos"), token(services, world.admin, "admin")
    on_a, on_b = Replica(), Replica()
    till_a = await connect_device(a.ws_url, pos, "till-on-a", on_a)
    till_b = await connect_device(b.ws_url, pos, "till-on-b", on_b)

    for via, name, product in ((a, "written on A", 3), (b, "written on B", 4)):
        started = time.monotonic()
        await admin_write(via.base, admin, "products", [{"id": product, "name": name}])
        await till_a.recv_until(lambda f: changes_with(f, "catalog", product), 2.0, on_a)
        await till_b.recv_until(lambda f: changes_with(f, "catalog", product), 2.0, on_b)
        assert time.monotonic() - started < 1.0, "pub/sub delivery across processes took over a second"
        assert on_a.rows("catalog")[product]["name"] == on_b.rows("catalog")[product]["name"] == name
    # with converge: a periodic job (dashboards) may commit meanwhile and reach them live
    await converge(till_a, on_a, lambda: fresh_pull(a.base, pos))
    await converge(till_b, on_b, lambda: fresh_pull(a.base, pos))

    # a revocation through A closes the device's session on B at once
    started = time.monotonic()
    assert (await admin_post(a.base, admin, "/admin/devices/till-on-b/revoke")).status_code == 200
    closed = await till_b.closed(timeout=2)
    assert closed.code == 4410, closed
    assert time.monotonic() - started < 1.0
    await till_a.send({"t": "ping"})
    await till_a.recv_until(lambda f: f["t"] == "pong", 2.0)


# -- hypothesis: writes through either process, a device hopping between them -----------------------

PRODUCTS = 20

write_op = st.one_of(
    st.tuples(st.just("rename"), st.integers(1, PRODUCTS), st.text("abcdefgh ", min_size=1, max_size=10)),
    st.tuples(st.just("active"), st.integers(1, PRODUCTS), st.booleans()),
    st.tuples(st.just("price"), st.integers(1, PRODUCTS), st.integers(1, 100_000)),
    st.tuples(st.just("stock"), st.integers(1, PRODUCTS), st.integers(0, 99)),
    st.tuples(st.just("assign"), st.integers(1, 6), st.sampled_from([11, 12])),
    st.tuples(st.just("many"), st.integers(1, PRODUCTS), st.integers(2, 15)),
)
op = st.one_of(
    st.tuples(st.just("write"), st.sampled_from("ab"), write_op),
    st.tuples(st.just("connect"), st.sampled_from("ab")),
    st.tuples(st.just("disconnect")),
    st.tuples(st.just("read")),
)


def office_write(kind: str, x: int, y) -> tuple[str, list[dict]]:
    if kind == "rename":
        return "products", [{"id": x, "name": y}]
    if kind == "active":
        return "products", [{"id": x, "active": y}]
    if kind == "price":  # pricelist 1: the pricelist of sales1's customers
        return "prices", [{"id": 1000 + x, "amount": y}]
    if kind == "stock":  # branch 1: sales1's warehouse
        return "stock", [{"id": 1000 + x, "on_hand": y}]
    if kind == "assign":  # customers enter and leave sales1's scope
        return "customers", [{"id": x, "salesperson_id": y}]
    # several products in one commit
    return "products", [{"id": 1 + (x + n) % PRODUCTS, "name": f"batch {x}/{n}"} for n in range(y)]


class Device:
    """sales1's phone: a replica, maybe a live connection, and the cursors it went through."""

    def __init__(self, services, bearer: str) -> None:
        self.services = services
        self.bearer = bearer
        self.client_id = f"phone-{uuid.uuid4().hex[:8]}"
        self.replica = Replica()
        self.client: WsClient | None = None
        self.seq = 0
        self.frames = 0

    def apply(self, frame: dict) -> None:
        self.replica.apply(frame)  # raises on a key twice in one batch
        seq = self.services.reader.cursors.decode(frame["cursor"]).seq
        assert seq >= self.seq, f"the cursor went back from {self.seq} to {seq}"
        self.seq = seq
        self.frames += 1

    async def read(self, quiet: float = 0.05) -> None:
        """Apply what has arrived (until the socket is quiet for ``quiet`` seconds)."""
        if self.client is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            while True:
                frame = await self.client.recv(quiet)
                if frame["t"] == "changes":
                    self.apply(frame)
                else:
                    assert frame["t"] == "pong", frame

    async def connect(self, server: Server) -> None:
        await self.disconnect()
        self.client = await WsClient.open(server.ws_url, self.bearer)
        await self.client.hello(self.client_id, self.replica.cursor)
        deadline = time.monotonic() + 15
        while True:
            frame = await self.client.recv(max(0.1, deadline - time.monotonic()))
            self.apply(frame)
            if not frame["more"]:
                return

    async def disconnect(self) -> None:
        if self.client is not None:
            await self.read(0.01)  # frames not applied are simply not stored: the cursor says so
            await self.client.close()
            self.client = None


@settings(max_examples=8, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=4, max_size=14))
async def test_random_writes_and_hops_between_processes_converge(services, world, pair, ops):
    servers = dict(zip("ab", pair))
    sales, admin = token(services, world.sales1, "salesperson"), token(services, world.admin, "admin")
    device = Device(services, sales)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for step in ops:
                if step[0] == "write":
                    table, rows = office_write(*step[2])
                    await admin_write(servers[step[1]].base, admin, table, rows, client=http)
                    await device.read(0.0 if len(ops) > 8 else 0.02)
                elif step[0] == "connect":
                    await device.connect(servers[step[1]])
                elif step[0] == "disconnect":
                    await device.disconnect()
                else:
                    await device.read()
        # a final catch-up, then live frames until it matches the server's view (asked of the other process)
        if device.client is None:
            await device.connect(servers["a"])
        deadline = time.monotonic() + 10
        expected = await fresh_pull(servers["b"].base, sales)
        while True:
            await device.read(0.2)
            if same(device.replica, expected) or time.monotonic() > deadline:
                break
            expected = await fresh_pull(servers["b"].base, sales)
        assert_same(device.replica, expected)
    finally:
        await device.disconnect()


# -- Redis away and back ------------------------------------------------------------------------


async def fallback_of(server: Server) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{server.base}/metrics")).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("fieldsync_fanout_fallback")]
    return max(values) if values else -1.0


async def in_mode(server: Server, fallback: int) -> bool:
    return await fallback_of(server) == fallback


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def private_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
async def pair_on_private_redis(services, world, tmp_path, private_redis):
    env = {"FIELDSYNC_REDIS_URL": private_redis.url, "FIELDSYNC_REDIS_PREFIX": redis_prefix()}
    servers = [Server(services.settings, tmp_path / name, env=env, name=name) for name in ("a", "b")]
    try:
        await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))
        yield servers
    finally:
        await close_all()
        await asyncio.gather(*(asyncio.to_thread(server.stop) for server in servers))


async def test_redis_killed_and_restarted_nothing_is_lost(services, world, pair_on_private_redis, private_redis):
    a, b = pair_on_private_redis
    pos, admin = token(services, world.pos1, "pos"), token(services, world.admin, "admin")
    copy = Replica()
    till = await connect_device(b.ws_url, pos, "till-on-b", copy)

    async def write_on_a_and_see_on_b(product: int, name: str, within: float) -> float:
        started = time.monotonic()
        await admin_write(a.base, admin, "products", [{"id": product, "name": name}])
        try:
            await till.recv_until(lambda f: changes_with(f, "catalog", product)
                                  and copy.rows("catalog")[product]["name"] == name, within, copy)
        except TimeoutError:
            raise AssertionError(f"a write through A ({name!r}) did not reach the device on B "
                                 f"within {within}s\n--- A:\n{a.log_tail()}\n--- B:\n{b.log_tail()}") from None
        return time.monotonic() - started

    assert await write_on_a_and_see_on_b(1, "redis up", 1.0) < 1.0

    private_redis.kill()
    assert not redis_ping(private_redis.url)
    # both processes keep serving; the device on B gets A's writes by polling the log
    for n in range(3):
        await write_on_a_and_see_on_b(2 + n, f"redis down {n}", 6.0)
    await wait_for(lambda: in_mode(b, 1), 5, "B reports the polling fallback")
    await wait_for(lambda: in_mode(a, 1), 5, "A reports the polling fallback")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{a.base}/readyz")).status_code == 503

    private_redis.start()  # the same port
    await wait_for(lambda: in_mode(a, 0), 10, "A is back on pub/sub")
    await wait_for(lambda: in_mode(b, 0), 10, "B is back on pub/sub")
    # the first write after Redis returned is delivered (no other write comes to wake B) ...
    await write_on_a_and_see_on_b(6, "redis back", 4.0)
    # ... and live delivery is by pub/sub again: fast
    assert await write_on_a_and_see_on_b(7, "redis back again", 1.0) < 1.0
    await converge(till, copy, lambda: fresh_pull(a.base, pos))
    assert b.alive() and a.alive()


async def test_revocation_while_redis_is_down_still_closes_the_session(services, world, pair_on_private_redis,
                                                                       private_redis):
    """The log is the truth, pub/sub only a wake-up: a device revoked through A while Redis
    is away must still lose its live session on B (at the latest when B polls, or when
    Redis returns), not keep receiving the tenant's changes."""
    a, b = pair_on_private_redis
    pos, admin = token(services, world.pos1, "pos"), token(services, world.admin, "admin")
    till = await connect_device(b.ws_url, pos, "till-revoked-in-outage", Replica())
    private_redis.kill()
    await wait_for(lambda: in_mode(a, 1), 5, "A reports the polling fallback")
    assert (await admin_post(a.base, admin, "/admin/devices/till-revoked-in-outage/revoke")).status_code == 200
    private_redis.start()
    await wait_for(lambda: in_mode(b, 0), 10, "B is back on pub/sub")
    try:
        closed = await till.closed(timeout=5)
    except TimeoutError:
        raise AssertionError("the revoked device is still connected to B after the Redis outage") from None
    assert closed.code == 4410, closed

