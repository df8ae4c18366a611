"""A push's mutations share a transaction (sync/push.py): what that must not change. A
refusal in the middle undoes its own writes only and is recorded; the log stays gapless;
concurrent pushes over the same stock lose no update and show no deadlock; a push longer
than a group commits group by group and replays exactly once. And the two passes: a group
nothing refuses takes no savepoint, writes each appended table once and its counters
twice; a refusal, or an id made twice, has its group applied again a savepoint per
mutation, with the results the careful pass alone would give."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator

import sqlalchemy as sa
from prometheus_client import REGISTRY

from fieldsync_client import HttpSync
from server.domain.tables import counters, customers, invoices, orders, stock
from sync.storage import change_log, log_head, mutation_ledger

from .support import seed, token


def order(customer_id: int, *lines: tuple[int, int], note: str | None = None) -> dict:
    args = {"id": str(uuid.uuid4()), "customer_id": customer_id,
            "lines": [{"product_id": p, "qty": q} for p, q in lines]}
    return {**args, "note": note} if note is not None else args


async def scalar(services, query):
    async with services.db.read() as conn:
        return await conn.scalar(query)


async def reserved(services, product_id: int) -> int:
    return await scalar(services, sa.select(stock.c.reserved).where(
        stock.c.tenant_id == 1, stock.c.branch_id == 1, stock.c.product_id == product_id))


async def assert_log_gapless(services) -> None:
    """Positions 1..head each hold entries: none skipped, none taken by a rolled-back savepoint."""
    head = await scalar(services, sa.select(log_head.c.seq).where(log_head.c.tenant_id == 1))
    async with services.db.read() as conn:
        seqs = (await conn.execute(sa.select(change_log.c.seq).where(change_log.c.tenant_id == 1)
                                   .distinct().order_by(change_log.c.seq))).scalars().all()
    assert seqs == list(range(seqs[0], head + 1)), "the change log has a gap"


async def test_refusals_mid_push_undo_only_their_own_writes(services, client):
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    # The fourth reserves stock, raises the balance, takes an order number and writes its
    # order before its invoice collides with a row already there (the database refuses it,
    # after the handler wrote). The sixth is refused by the handler before it writes.
    clash = order(1, (2, 1))
    async with services.db.write() as conn:
        await conn.execute(sa.insert(invoices).values(
            id=f"inv-{clash['id']}", tenant_id=1, number="INV-X", branch_id=1, total=0, currency="EUR",
            status="ready", created_at=0))
    head = await scalar(services, sa.select(log_head.c.seq).where(log_head.c.tenant_id == 1))
    pushed = [device.mutation("order.create", order(1, (2, 1))) for _ in range(3)]
    pushed.append(device.mutation("order.create", clash))
    pushed.append(device.mutation("order.create", order(2, (2, 1))))
    pushed.append(device.mutation("order.create", order(2, (2, 1), (1, 99))))
    pushed.append(device.mutation("order.create", order(3, (2, 1))))
    results = await device.push(pushed)

    expected = ["applied"] * 3 + ["rejected", "applied", "rejected", "applied"]
    assert [r["status"] for r in results] == expected, results
    assert [r["id"] for r in results] == [m["id"] for m in pushed]
    assert (results[3]["code"], results[5]["code"]) == ("CONFLICT", "INSUFFICIENT_STOCK")
    applied = expected.count("applied")
    assert await reserved(services, 2) == applied  # the refused ones reserved nothing
    assert await reserved(services, 1) == 0
    numbers = sorted(r["result"]["number"] for r in results if r["status"] == "applied")
    assert numbers == [f"SO-{n:06d}" for n in range(1, applied + 1)], "a refused order's number was not rolled back"
    assert await scalar(services, sa.select(counters.c.value).where(counters.c.name == "invoice")) == applied
    assert await scalar(services, sa.select(sa.func.count()).select_from(invoices)) == applied + 1
    assert await scalar(services, sa.select(sa.func.count()).select_from(orders)) == applied
    balance = await scalar(services, sa.select(sa.func.sum(orders.c.total)).where(orders.c.customer_id == 1))
    assert await scalar(services, sa.select(customers.c.balance).where(customers.c.tenant_id == 1,
                                                                       customers.c.id == 1)) == balance
    ledger = await scalar(services, sa.select(sa.func.count()).select_from(mutation_ledger).where(
        mutation_ledger.c.status == "rejected"))
    assert ledger == len(pushed) - applied  # each refusal recorded
    await assert_log_gapless(services)
    # one push of fewer than GROUP mutations: one transaction, one log position
    assert await scalar(services, sa.select(log_head.c.seq).where(log_head.c.tenant_id == 1)) == head + 1
    assert await device.push(pushed) == results  # replayed: the first results, nothing applied again
    assert await reserved(services, 2) == applied


SMALL_GROUP = 10  # the tests' pushes hold at most 50 mutations: groups this size make several


async def test_concurrent_pushes_on_the_same_stock_lose_no_update(services, client, monkeypatch):
    """Two salespeople of the warehouse order the same products in opposite orders, in
    pushes of several groups: their groups lock the stock rows crosswise, so PostgreSQL
    may find a deadlock; the group retried, the devices see only results."""
    w = await seed(services)
    ana = HttpSync(client, token(services, w.sales1, "salesperson"), "ana")
    ben = HttpSync(client, token(services, w.sales2, "salesperson"), "ben")
    monkeypatch.setattr(services.pusher, "group", SMALL_GROUP)
    count = 50  # 2 x 50 orders of one unit, half for product 4, half for 5: all the 50 in stock of each
    ana_push = [ana.mutation("order.create", order(1 + n % 4, (4 if n % 2 else 5, 1))) for n in range(count)]
    ben_push = [ben.mutation("order.create", order(5 + n % 2, (5 if n % 2 else 4, 1))) for n in range(count)]
    ana_results, ben_results = await asyncio.gather(ana.push(ana_push), ben.push(ben_push))
    results = ana_results + ben_results
    assert {r["status"] for r in results} <= {"applied", "rejected"}
    assert {r.get("code") for r in results if r["status"] == "rejected"} <= {"INSUFFICIENT_STOCK"}
    assert [r["id"] for r in ana_results] == [m["id"] for m in ana_push]
    applied = {4: 0, 5: 0}
    for m, r in zip(ana_push + ben_push, results):
        if r["status"] == "applied":
            applied[m["args"]["lines"][0]["product_id"]] += 1
    assert applied == {4: 50, 5: 50}, applied  # all the stock there is, and not one unit more
    assert await reserved(services, 4) == 50 and await reserved(services, 5) == 50
    assert await scalar(services, sa.select(sa.func.count()).select_from(orders)) == 100
    await assert_log_gapless(services)
    [more] = await ana.push([ana.mutation("order.create", order(1, (4, 1)))])
    assert more["code"] == "INSUFFICIENT_STOCK"


async def test_a_push_of_several_groups_commits_each_and_replays_exactly_once(services, client, monkeypatch):
    w = await seed(services, products_count=20)
    monkeypatch.setattr(services.pusher, "group", SMALL_GROUP)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    head = await scalar(services, sa.select(log_head.c.seq).where(log_head.c.tenant_id == 1))
    pushed = [device.mutation("order.create", order(1 + n % 4, (1 + n % 20, 1))) for n in range(2 * SMALL_GROUP + 5)]
    first = await device.push(pushed)
    assert [r["status"] for r in first] == ["applied"] * len(pushed)
    assert await scalar(services, sa.select(log_head.c.seq).where(log_head.c.tenant_id == 1)) == head + 3
    again = await device.push(pushed)
    assert again == first
    assert await scalar(services, sa.select(sa.func.count()).select_from(orders)) == len(pushed)
    await assert_log_gapless(services)


@contextlib.contextmanager
def statements(services) -> Iterator[list[str]]:
    """The SQL the server sends meanwhile, one entry per execute (an executemany is one)."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ARG001
        seen.append(" ".join(statement.split()).upper())

    engine = services.db.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def inserts_into(seen: list[str], table: str) -> int:
    return sum(s.startswith(f'INSERT INTO {table.upper()} ') for s in seen)


def redone() -> float:
    return REGISTRY.get_sample_value("fieldsync_push_groups_redone_total") or 0.0


async def test_a_group_nothing_refuses_takes_no_savepoint_and_appends_once_per_table(services, client):
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    await device.push([device.mutation("order.create", order(1, (1, 1)))])  # the counters exist now
    pushed = [device.mutation("order.create", order(1 + n % 4, (1 + n % 3, 1))) for n in range(6)]
    before = redone()
    with statements(services) as seen:
        results = await device.push(pushed)
    assert [r["status"] for r in results] == ["applied"] * 6
    assert [r["result"]["number"] for r in results] == [f"SO-{n:06d}" for n in range(2, 8)]
    assert not [s for s in seen if "SAVEPOINT" in s]
    for table in ("orders", "invoices", "notices", "mutation_ledger"):
        assert inserts_into(seen, table) == 1, table  # six rows each, one statement
    # numbers: the counters bumped (and locked) by the first order, stored once at the end
    assert sum(s.startswith("UPDATE COUNTERS") for s in seen) == 2
    assert redone() == before
    assert await scalar(services, sa.select(sa.func.count()).select_from(orders)) == 7
    assert await scalar(services, sa.select(sa.func.count()).select_from(invoices)) == 7
    assert await scalar(services, sa.select(counters.c.value).where(counters.c.name == "order")) == 7
    assert await scalar(services, sa.select(counters.c.value).where(counters.c.name == "invoice")) == 7


async def test_a_refusal_has_its_group_applied_again_a_savepoint_per_mutation(services, client):
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    pushed = [device.mutation("order.create", order(1, (2, 1))),
              device.mutation("order.create", order(2, (2, 1), (1, 99))),  # more than in stock
              device.mutation("order.create", order(3, (2, 1)))]
    before = redone()
    with statements(services) as seen:
        results = await device.push(pushed)
    assert [r["status"] for r in results] == ["applied", "rejected", "applied"]
    assert results[1]["code"] == "INSUFFICIENT_STOCK"
    assert redone() == before + 1
    # the first pass wrote nothing it kept; the careful one a savepoint each
    assert sum(s.startswith("SAVEPOINT") for s in seen) == 3
    assert inserts_into(seen, "orders") == 2  # the careful pass's applied two, one at a time
    assert await reserved(services, 2) == 2 and await reserved(services, 1) == 0
    numbers = sorted(r["result"]["number"] for r in results if r["status"] == "applied")
    assert numbers == ["SO-000001", "SO-000002"]
    await assert_log_gapless(services)
    assert await device.push(pushed) == results


async def test_an_id_made_twice_in_one_group_is_refused_the_second_time(services, client):
    """Appended rows are written at the group's end, where no check of the handler sees
    the first: the key the database refuses there sends the group the careful way."""
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    twice = order(1, (2, 1))
    pushed = [device.mutation("order.create", twice), device.mutation("order.create", order(2, (3, 1))),
              device.mutation("order.create", {**twice, "customer_id": 2})]
    results = await device.push(pushed)
    assert [r["status"] for r in results] == ["applied", "applied", "rejected"]
    assert results[2]["code"] == "CONFLICT" and twice["id"] in results[2]["message"]
    assert await reserved(services, 2) == 1
    assert await scalar(services, sa.select(sa.func.count()).select_from(orders)) == 2
    assert await scalar(services, sa.select(customers.c.balance).where(
        customers.c.tenant_id == 1, customers.c.id == 2)) == results[1]["result"]["total"]
    await assert_log_gapless(services)
