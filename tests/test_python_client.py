"""The reference Python client (``clients/python/fieldsync_client``) against real servers.

Every server here is ``fieldsync serve`` in its own process on the test's database (SQLite
and PostgreSQL through the ``services`` fixture), as in test_kill.py and test_ws.py: the
client syncs to live, receives live changes, pushes its outbox, survives a server killed
mid-push and restarted, falls back to HTTP when the WebSocket is refused, and converges
under random disconnects (hypothesis). The stores' atomicity and the outbox's ids are
checked without a server. Last, ``fieldsync simulate`` runs for a few seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, event, given, settings as hsettings, strategies as st

from fieldsync_client import (
    Backoff, IllegalTransition, MemoryOutbox, MemoryStore, SqliteOutbox, SqliteStore, State, StateMachine,
    SyncClient,
)
from server.config import Settings
from server.domain.tables import orders
from sync.push import GROUP
from sync.storage import mutation_ledger

from .live_support import ROOT, Server, admin_write, fresh_pull
from .support import seed, token

SERVER_ENV = {"FIELDSYNC_PULL_LIMIT": "25",  # catch-up takes several frames
              "FIELDSYNC_DASHBOARD_DEBOUNCE": "0.2"}


@pytest.fixture
async def world(services):
    return await seed(services)


@pytest.fixture
async def server(services, world, tmp_path):
    srv = Server(services.settings, tmp_path / "server", env=SERVER_ENV)
    await asyncio.to_thread(srv.start)
    yield srv
    await asyncio.to_thread(srv.stop)


def fast_client(srv: Server, bearer: str, client_id: str, store=None, outbox=None, **options) -> SyncClient:
    options.setdefault("backoff", Backoff(base=0.05, cap=0.5))
    options.setdefault("poll_interval", 0.2)
    return SyncClient(srv.base, bearer, client_id, store, outbox, **options)


def order(customer: int = 1, product: int = 1, qty: int = 1) -> dict:
    return {"id": str(uuid.uuid4()), "customer_id": customer, "lines": [{"product_id": product, "qty": qty}]}


async def converged(client: SyncClient, base: str, bearer: str, timeout: float = 10.0) -> None:
    """Wait until the client, synced, holds exactly what a fresh HTTP pull gets (live frames,
    and the rows background jobs write after a push, may trail the push by a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        await client.wait_synced(timeout=max(0.1, deadline - time.monotonic()))
        expected = (await fresh_pull(base, bearer)).dump()
        mine = client.store.dump()
        if mine == expected:
            return
        if time.monotonic() > deadline:
            diff = {n for n in set(mine) | set(expected) if mine.get(n) != expected.get(n)}
            raise AssertionError(f"store differs from a fresh pull in {sorted(diff)}: {client.status}")
        await asyncio.sleep(0.1)


async def order_ids(services) -> list[str]:
    async with services.db.read() as conn:
        return list((await conn.execute(sa.select(orders.c.id))).scalars().all())


# -- live over WebSocket ---------------------------------------------------------------------------


async def test_syncs_to_live_then_receives_a_live_change(services, world, server, tmp_path):
    sales, admin = token(services, world.sales1, "salesperson"), token(services, world.admin, "admin")
    states: list[State] = []
    store = SqliteStore(tmp_path / "ana.db")
    client = fast_client(server, sales, "ana-phone", store, SqliteOutbox(store.conn))
    client.on_status(lambda status: states.append(status.state))
    async with client:
        status = await client.wait_state(State.LIVE, timeout=15)
        assert status.state is State.LIVE and status.transport == "ws"
        assert status.catchup_batches > 1 and status.catchup_rows >= 20 + 20 + 20 + 4
        assert states[:3] == [State.CONNECTING, State.CATCHING_UP, State.LIVE]
        assert store.dump() == (await fresh_pull(server.base, sales)).dump()
        assert store.count("catalog") == 20 and store.cursor is not None

        seen = store.cursor
        await admin_write(server.base, admin, "products", [{"id": 3, "name": "Renamed live"}])
        await client.wait_until(lambda s: (store.get("catalog", 3) or {}).get("name") == "Renamed live", 5)
        assert store.cursor != seen and client.state is State.LIVE
        await converged(client, server.base, sales)
    assert client.state is State.CLOSED and states[-1] is State.CLOSED
    store.close()
    reopened = SqliteStore(tmp_path / "ana.db")  # the copy and its cursor are on disk
    assert reopened.get("catalog", 3)["name"] == "Renamed live" and reopened.cursor == client.store.cursor
    reopened.close()


async def test_pushes_the_outbox_and_keeps_the_rejection_visible(services, world, server, tmp_path):
    sales = token(services, world.sales1, "salesperson")
    path = tmp_path / "ana.db"
    outbox = SqliteOutbox(path)
    queued = [outbox.enqueue("order.create", order(1, 2)),  # taken offline, before the app started syncing
              outbox.enqueue("order.create", order(5, 2)),  # customer 5 is sales2's: FORBIDDEN
              outbox.enqueue("order.create", order(2, 3, qty=2))]
    assert [e.id for e in queued] == [1, 2, 3] and outbox.pending_count() == 3
    results = []
    async with fast_client(server, sales, "ana-phone", SqliteStore(path), outbox) as client:
        client.on_results(results.extend)
        await client.wait_synced(timeout=15)
        assert [e.status for e in outbox.entries()] == ["applied", "rejected", "applied"]
        assert [e.id for e in results] == [1, 2, 3]
        (rejected,) = outbox.rejected()
        assert rejected.id == 2 and rejected.code == "FORBIDDEN" and "not assigned" in rejected.message
        assert client.status.rejected == 1 and client.status.pending == 0
        # read your writes: the applied orders arrive with their server numbers, the refusal in `rejections`
        applied = {e.args["id"]: e.result["number"] for e in outbox.entries() if e.status == "applied"}
        await client.wait_until(lambda s: set(applied) <= set(client.store.rows("orders"))
                                and client.store.count("rejections") == 1, 5)
        assert {k: client.store.get("orders", k)["number"] for k in applied} == applied
        (refusal,) = client.store.rows("rejections").values()
        assert (refusal["mutation_id"], refusal["code"]) == (2, "FORBIDDEN")
        await converged(client, server.base, sales)
        later = client.enqueue("visit.checkin", {"id": str(uuid.uuid4()), "customer_id": 1, "lat": 52.1, "lon": 4.3})
        await client.wait_synced(timeout=10)
        assert later.id == 4 and outbox.entries()[-1].status == "applied"
    assert sorted(await order_ids(services)) == sorted(applied)
    outbox.dismiss(2)
    assert outbox.rejected() == []
    outbox.close()
    again = SqliteOutbox(path)  # durable: results, dismissal and the id counter
    assert [e.status for e in again.entries()] == ["applied", "rejected", "applied", "applied"]
    assert again.enqueue("visit.checkin", {}).id == 5
    again.close()


@pytest.mark.slow
async def test_survives_a_server_killed_mid_push_without_duplicates(services, world, server, tmp_path):
    sales = token(services, world.sales1, "salesperson")
    async with fast_client(server, sales, "ana-phone", SqliteStore(tmp_path / "a.db"),
                           SqliteOutbox(tmp_path / "a.db")) as client:
        await client.wait_state(State.LIVE, timeout=15)
        total = 3 * GROUP  # the server commits a push in groups of GROUP: several, to kill between
        taken = [client.enqueue("order.create", order(1 + n % 4, 1 + n % 20)).args["id"] for n in range(total)]

        async def ledger() -> int:
            async with services.db.read() as conn:
                return await conn.scalar(sa.select(sa.func.count()).select_from(mutation_ledger))

        deadline = time.monotonic() + 20
        while await ledger() < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        os.kill(server.pid, signal.SIGKILL)  # part-way through the push frame
        await asyncio.to_thread(server.proc.wait)
        partial = await ledger()
        await client.wait_until(lambda s: s.state is not State.LIVE, 10)
        assert client.status.pending > 0, f"the kill must land mid-push ({partial} applied)"
        server.proc = None
        await asyncio.to_thread(server.start)  # same port: the client reconnects by itself
        await client.wait_synced(timeout=30)
        assert client.status.connects >= 2
        statuses = [e.status for e in client.outbox.entries()]
        assert statuses == ["applied"] * total, client.status
        numbers = [e.result["number"] for e in client.outbox.entries()]
        assert len(set(numbers)) == total
        await converged(client, server.base, sales)
    made = await order_ids(services)
    assert len(made) == total and set(made) == set(taken), "no order lost, none applied twice"
    assert 1 <= partial < total


async def test_falls_back_to_http_when_the_websocket_is_refused(services, world, server, tmp_path):
    sales, admin = token(services, world.sales1, "salesperson"), token(services, world.admin, "admin")
    # the upgrade is answered 403 (no such route), as a proxy that blocks WebSockets does
    async with fast_client(server, sales, "ana-http", SqliteStore(tmp_path / "h.db"), MemoryOutbox(),
                           ws_path="/sync/ws-blocked", ws_retry_interval=0.5) as client:
        status = await client.wait_state(State.LIVE, timeout=15)
        assert status.transport == "http" and "WebSocket unavailable" in (status.last_error or "")
        entry = client.enqueue("order.create", order(1, 4))
        await client.wait_synced(timeout=10)
        assert entry.status == "applied" or client.outbox.entries()[0].status == "applied"
        await admin_write(server.base, admin, "products", [{"id": 4, "name": "Polled"}])
        await client.wait_until(lambda s: (client.store.get("catalog", 4) or {}).get("name") == "Polled", 5)
        await asyncio.sleep(0.7)  # past ws_retry_interval: the probe fails again, HTTP goes on
        assert client.state is State.LIVE and client.status.transport == "http"
        await converged(client, server.base, sales)
    assert len(await order_ids(services)) == 1
    # transport="http" forces it; a wrong token is final over HTTP too
    async with fast_client(server, "not-a-token", "ana-bad", transport="http") as bad:
        status = await bad.wait_state(State.CLOSED, timeout=10)
        assert status.fatal == "AUTH_INVALID"


async def test_revoked_device_stops_over_websocket(services, world, server):
    sales, admin = token(services, world.sales1, "salesperson"), token(services, world.admin, "admin")
    async with fast_client(server, sales, "ana-rev") as client:
        await client.wait_state(State.LIVE, timeout=15)
        from .live_support import admin_post
        assert (await admin_post(server.base, admin, "/admin/devices/ana-rev/revoke")).status_code == 200
        status = await client.wait_state(State.CLOSED, timeout=10)
        assert status.fatal == "REVOKED"


# -- the stores, without a server ----------------------------------------------------------------------


def batch(cursor: bytes, data: dict, reset=(), more=False) -> dict:
    return {"cursor": cursor, "more": more, "reset": list(reset), "data": data}


def part(rows, deletes=(), cols=("id", "name")) -> dict:
    return {"cols": list(cols), "rows": [list(r) for r in rows], "deletes": list(deletes)}


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_store_apply_is_all_or_nothing(kind, tmp_path):
    make = (lambda: SqliteStore(tmp_path / "s.db")) if kind == "sqlite" else MemoryStore
    store = make()
    store.apply(batch(b"c1", {"customers": part([(1, "a"), (2, "b")]), "catalog": part([(10, "x"), ("k", "str key")])}))
    before = (store.dump(), store.cursor)
    assert before[0]["catalog"]["k"]["name"] == "str key" and before[1] == b"c1"
    failing = [
        # a key twice in the second dataset, after the reset and the first dataset's upserts
        batch(b"c2", {"customers": part([(3, "c")], deletes=[1]), "catalog": part([(11, "y"), (11, "y2")])},
              reset=["customers"]),
        # upsert and delete of one key
        batch(b"c2", {"customers": part([(4, "d")]), "catalog": part([(12, "z")], deletes=[12])}),
        # a row that does not match its cols; a batch without a bin cursor
        batch(b"c2", {"customers": part([(5, "e")]), "catalog": part([(13,)])}, reset=["catalog"]),
        batch("c2", {"customers": part([(6, "f")])}),
    ]
    if kind == "sqlite":  # a value msgpack cannot pack fails inside the SQLite transaction
        failing.append(batch(b"c2", {"customers": part([(7, "g")]), "fresh": part([(1, object())])},
                             reset=["catalog"]))
    for bad in failing:
        with pytest.raises((ValueError, TypeError)):
            store.apply(bad)
        assert (store.dump(), store.cursor) == before
    store.apply(batch(b"c3", {"catalog": part([(10, "x2")], deletes=["k", 999])}, reset=["customers"]))
    assert store.dump() == {"catalog": {10: {"id": 10, "name": "x2"}}} and store.cursor == b"c3"
    if kind == "sqlite":
        store.close()
        reopened = SqliteStore(tmp_path / "s.db")
        assert reopened.dump() == {"catalog": {10: {"id": 10, "name": "x2"}}} and reopened.cursor == b"c3"
        assert "fresh" not in reopened.datasets()  # the table made by the rolled-back batch is gone
        reopened.close()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_outbox_ids_results_and_refused_args(kind, tmp_path):
    outbox = SqliteOutbox(tmp_path / "o.db") if kind == "sqlite" else MemoryOutbox()
    first, second, third = (outbox.enqueue("visit.checkin", {"n": n}, at=1000 + n) for n in range(3))
    assert (first.id, second.id, third.id) == (1, 2, 3)
    assert [e.wire() for e in outbox.pending(2)] == [{"id": 1, "name": "visit.checkin", "args": {"n": 0}, "at": 1000},
                                                      {"id": 2, "name": "visit.checkin", "args": {"n": 1}, "at": 1001}]
    deep: list = []
    for _ in range(40):
        deep = [deep]
    for bad in ({"big": 2**53}, {"nan": float("nan")}, {"bin": b"x"}, {"nul": "a\x00b"}, {"deep": deep}, {1: "key"}):
        with pytest.raises(ValueError):
            outbox.enqueue("x", bad)
    marked = outbox.mark([{"id": 1, "status": "applied", "result": {"n": 1}},
                          {"id": 2, "status": "rejected", "code": "NOT_FOUND", "message": "gone"},
                          {"id": 1, "status": "rejected", "code": "late"}])  # a result is final
    assert [(e.id, e.status) for e in marked] == [(1, "applied"), (2, "rejected")]
    assert [e.id for e in outbox.pending()] == [3] and outbox.pending_count() == 1
    assert [(e.id, e.code) for e in outbox.rejected()] == [(2, "NOT_FOUND")]
    if kind == "sqlite":
        assert outbox.forget_applied() == 1
        outbox.close()
        outbox = SqliteOutbox(tmp_path / "o.db")
    assert outbox.enqueue("visit.checkin", {}).id == 4, "ids are never reused"


def test_state_machine_refuses_illegal_steps():
    machine = StateMachine()
    for illegal in (State.LIVE, State.CATCHING_UP, State.OFFLINE):
        with pytest.raises(IllegalTransition):
            machine.step(illegal)
    for step in (State.CONNECTING, State.CATCHING_UP, State.LIVE, State.OFFLINE, State.CONNECTING, State.OFFLINE):
        machine.step(step)
    with pytest.raises(IllegalTransition):
        machine.step(State.LIVE)
    machine.step(State.CLOSED)
    with pytest.raises(IllegalTransition):
        machine.step(State.OFFLINE)
    delays = [Backoff(base=1, cap=8).next() for _ in range(3)]
    assert all(0.5 <= d <= 1 for d in delays)
    backoff = Backoff(base=1, cap=8)
    assert [round(backoff.next() / 2 ** n, 3) <= 1 for n in range(5)] == [True] * 5
    assert backoff.next() <= 8 and backoff.next(at_least=20) == 20


# -- convergence under random disconnects (hypothesis) ----------------------------------------------


ACTIONS = st.one_of(
    st.tuples(st.just("rename"), st.integers(1, 20), st.text("abcxyzé ", min_size=1, max_size=8)),
    st.tuples(st.just("toggle"), st.integers(1, 20), st.booleans()),
    st.tuples(st.just("stock"), st.integers(1, 20), st.integers(0, 80)),
    st.tuples(st.just("reassign"), st.integers(1, 6), st.sampled_from([11, 12])),
    st.tuples(st.just("order"), st.integers(1, 6), st.integers(1, 20)),
    st.tuples(st.just("drop"), st.none(), st.none()),
    st.tuples(st.just("offline"), st.none(), st.none()),
    st.tuples(st.just("online"), st.none(), st.none()),
    st.tuples(st.just("pause"), st.integers(0, 150), st.none()),
)


@pytest.mark.slow
@hsettings(max_examples=10, deadline=None, database=None,  # no shrinking: each example runs against a real server
           phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(actions=st.lists(ACTIONS, min_size=3, max_size=14))
async def test_converges_under_random_disconnects(services, world, server, actions):
    """Office writes while the device connects, drops and goes offline, with orders queued at
    random moments: at the end its SqliteStore equals a fresh HTTP pull and no order is doubled."""
    sales, admin = token(services, world.sales1, "salesperson"), token(services, world.admin, "admin")
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "d.db")
        client = fast_client(server, sales, f"hyp-{uuid.uuid4().hex[:8]}", store, SqliteOutbox(store.conn))
        async with client:
            for action, a, b in actions:
                if action == "rename":
                    await admin_write(server.base, admin, "products", [{"id": a, "name": b}])
                elif action == "toggle":
                    await admin_write(server.base, admin, "products", [{"id": a, "active": b}])
                elif action == "stock":
                    await admin_write(server.base, admin, "stock", [{"id": 1000 + a, "on_hand": b}])
                elif action == "reassign":
                    await admin_write(server.base, admin, "customers", [{"id": a, "salesperson_id": b}])
                elif action == "order":
                    client.enqueue("order.create", order(a, b))
                elif action == "drop":
                    client.drop()
                elif action == "offline":
                    client.set_online(False)
                elif action == "online":
                    client.set_online(True)
                else:
                    await asyncio.sleep(a / 1000)
            client.set_online(True)
            await converged(client, server.base, sales, timeout=15)
            entries = client.outbox.entries()
            event(f"sessions: {min(client.status.connects, 3)}+")
        store.close()
    event(f"orders applied: {sum(e.status == 'applied' for e in entries)}")
    assert all(e.status in ("applied", "rejected") for e in entries)
    made = await order_ids(services)
    assert len(made) == len(set(made)), "an order was applied twice"
    assert {e.args["id"] for e in entries if e.status == "applied"} <= set(made)
    assert not {e.args["id"] for e in entries if e.status == "rejected"} & set(made)


# -- the simulator ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_simulate_smoke(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sim.db'}", redis_url=None,
                        jwt_secret=b"fieldsync-sim-secret-0123456789abcdef", data_dir=tmp_path)
    srv = Server(settings, tmp_path)
    env = srv.env()
    demo = subprocess.run([sys.executable, "-m", "server.cli", "demo", "--products", "300", "--customers", "40",
                           "--days", "2"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stderr
    with srv:
        sim = subprocess.run([sys.executable, "-m", "server.cli", "simulate", "--devices", "4", "--seconds", "3",
                              "--url", srv.base], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert sim.returncode == 0, sim.stdout + sim.stderr
    lines = [line for line in sim.stdout.splitlines() if line.startswith("[") and "in sync" in line]
    assert len(lines) >= 3 and all("devices 4:" in line for line in lines), sim.stdout
    assert "done: 4/4 devices in sync" in sim.stdout, sim.stdout


async def test_a_snapshot_says_how_many_rows_it_holds(services, client):
    """``expected`` comes with each dataset's reset: a progress bar's denominator."""
    from fieldsync_client import HttpSync

    from .support import seed, token

    w = await seed(services, products_count=30)
    till = HttpSync(client, token(services, w.pos1, "pos"), "till-progress")
    first = await till.pull_once(limit=10)
    assert first["reset"] and set(first["expected"]) == set(first["reset"])
    assert all(isinstance(n, int) and n >= 0 for n in first["expected"].values())
    await till.sync(limit=10)
    progress = till.replica.progress()
    assert progress and all(done == expected for done, expected in progress.values()), progress
    assert progress["catalog"] == (30, 30)
    later = await till.pull_once()
    assert "expected" not in later, "only with a reset"


async def test_the_schema_names_the_columns_scopes_filter_on(services, client):
    from .support import seed, token

    w = await seed(services)
    answer = await client.get("/sync/schema", headers={"Authorization": f"Bearer {token(services, w.pos1, 'pos')}",
                                                       "Accept": "application/json"})
    datasets = {d["name"]: d for d in answer.json()["datasets"]}
    assert datasets["prices"]["scope_cols"] == ["pricelist_id"], "a salesperson holds several pricelists"
    assert datasets["customers"]["scope_cols"] == [], "its scope columns are not sent to devices"
    assert all(set(d["scope_cols"]) <= set(d["cols"]) - {d["key"]} for d in datasets.values())
