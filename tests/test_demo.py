"""The demo loader: a small demo tenant, checked for the invariants the app relies on."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from server.domain.principals import principal_for
from server.domain.demo import DemoSummary, ean13, load_demo
from server.domain.registry import build_registry
from server.domain.tables import (
    branches, counters, customers, orders, pricelists, prices, products, sales, stock, tenants, users,
)
from server.migrations import upgrade
from sync.changes import now_ms, write_changes
from sync.devices import touch
from sync.messages import Mutation
from sync.push import Pusher
from sync.schema import Registry
from sync.storage import Database, change_log, log_head

DAY, HOUR = 86_400_000, 3_600_000
NOW = (now_ms() // DAY - 1) * DAY + 12 * HOUR  # yesterday noon UTC: a full business day of history, in the past
SMALL = {"products": 200, "customers": 50, "days": 3, "now_ms": NOW}


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    if not db.is_sqlite:  # the run's PostgreSQL database is shared by its tests
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            await conn.exec_driver_sql("CREATE SCHEMA public")
    await upgrade(db)
    yield db
    await db.dispose()


@pytest.fixture
def registry() -> Registry:
    return build_registry()


@pytest.fixture
async def demo(db: Database, registry: Registry) -> DemoSummary:
    return await load_demo(db, registry, **SMALL)


async def rows(db: Database, table: sa.Table, tenant_id: int) -> list[dict]:
    async with db.read() as conn:
        result = await conn.execute(sa.select(table).where(table.c.tenant_id == tenant_id))
        return [dict(row) for row in result.mappings()]


async def scalar(db: Database, query: sa.Select):
    async with db.read() as conn:
        return await conn.scalar(query)


async def test_summary_counts_what_was_written(db: Database, demo: DemoSummary) -> None:
    assert demo.created
    assert demo.counts["products"] == 200 and demo.counts["customers"] == 50
    assert demo.counts["branches"] == 3 and demo.counts["pricelists"] == 2 and demo.counts["stock"] == 600
    for name in ("orders", "sales", "payments", "visits"):
        assert demo.counts[name] > 0, name
    slug = await scalar(db, sa.select(tenants.c.slug).where(tenants.c.id == demo.tenant_id))
    assert slug == "demo"


async def test_users_branches_and_pricelists(db: Database, demo: DemoSummary) -> None:
    branch = {b["name"]: b for b in await rows(db, branches, demo.tenant_id)}
    lists = {p["name"]: p["id"] for p in await rows(db, pricelists, demo.tenant_id)}
    assert branch["Central Warehouse"]["kind"] == "warehouse"
    assert {branch["Shop North"]["pricelist_id"], branch["Shop South"]["pricelist_id"]} == {lists["Retail"]}
    by_login = {u["username"]: u for u in await rows(db, users, demo.tenant_id)}
    assert set(by_login) == {"admin", *(f"sales{i}" for i in range(1, 6)), *(f"pos{i}" for i in range(1, 5))}
    assert by_login["admin"]["role"] == "admin"
    for i in range(1, 6):
        rep = by_login[f"sales{i}"]
        assert rep["role"] == "salesperson" and rep["branch_id"] == branch["Central Warehouse"]["id"]
        assert 2_500_000 <= rep["month_target"] <= 6_000_000
    shops = {"pos1": "Shop North", "pos2": "Shop North", "pos3": "Shop South", "pos4": "Shop South"}
    for login, shop in shops.items():
        assert by_login[login]["role"] == "pos" and by_login[login]["branch_id"] == branch[shop]["id"]
    assert all(" " in u["name"] for u in by_login.values())  # people, not logins


async def test_salespeople_have_disjoint_customers_within_credit(db: Database, demo: DemoSummary) -> None:
    reps = {u["id"] for u in await rows(db, users, demo.tenant_id) if u["role"] == "salesperson"}
    shops = {b["id"] for b in await rows(db, branches, demo.tenant_id) if b["kind"] == "shop"}
    book = defaultdict(set)
    clients = await rows(db, customers, demo.tenant_id)
    for c in clients:
        book[c["salesperson_id"]].add(c["id"])
        assert c["branch_id"] in shops and c["currency"] == "EUR" and c["version"] == 0
        assert 0 <= c["balance"] <= c["credit_limit"] * 0.6, c  # headroom left for new orders
    assert set(book) == reps and all(book.values())
    assert sum(len(ids) for ids in book.values()) == len(set().union(*book.values())) == len(clients)


async def test_every_product_is_stocked_everywhere_and_priced_in_both_lists(db: Database, demo: DemoSummary) -> None:
    catalog = await rows(db, products, demo.tenant_id)
    branch_ids = {b["id"] for b in await rows(db, branches, demo.tenant_id)}
    list_ids = {p["id"] for p in await rows(db, pricelists, demo.tenant_id)}
    stocked = defaultdict(set)
    for level in await rows(db, stock, demo.tenant_id):
        stocked[level["product_id"]].add(level["branch_id"])
        assert 0 <= level["reserved"] <= level["on_hand"] and not level["negative"]
    valid_now = defaultdict(dict)
    for price in await rows(db, prices, demo.tenant_id):
        if price["valid_from"] <= NOW and (price["valid_to"] is None or NOW < price["valid_to"]):
            assert price["pricelist_id"] not in valid_now[price["product_id"]], "two prices valid at once"
            valid_now[price["product_id"]][price["pricelist_id"]] = price["amount"]
    for p in catalog:
        assert stocked[p["id"]] == branch_ids, p
        assert set(valid_now[p["id"]]) == list_ids, p
        assert p["barcode"] == ean13(p["barcode"][:12]) and len(p["barcode"]) == 13
    assert sum(len(p["name"]) for p in catalog) / len(catalog) < 24
    assert len({p["name"] for p in catalog}) == len(catalog)


async def test_history_is_numbered_priced_and_reserved(db: Database, demo: DemoSummary) -> None:
    tid = demo.tenant_id
    order_rows = sorted(await rows(db, orders, tid), key=lambda o: o["number"])
    sale_rows = await rows(db, sales, tid)
    assert [o["number"] for o in order_rows] == [f"SO-{n:06d}" for n in range(1, len(order_rows) + 1)]
    assert sorted(s["number"] for s in sale_rows) == [f"POS-{n:06d}" for n in range(1, len(sale_rows) + 1)]
    async with db.read() as conn:
        numbers = dict((await conn.execute(sa.select(counters.c.name, counters.c.value)
                                           .where(counters.c.tenant_id == tid))).all())
    assert numbers == {"order": len(order_rows), "sale": len(sale_rows)}
    clients = {c["id"]: c for c in await rows(db, customers, tid)}
    price_rows = await rows(db, prices, tid)
    held = Counter()
    for order in order_rows:
        client = clients[order["customer_id"]]
        assert order["salesperson_id"] == client["salesperson_id"] and order["taken_at"] < NOW
        assert order["total"] == sum(line["amount"] for line in order["lines"])
        for line in order["lines"]:
            valid = [p["amount"] for p in price_rows if p["product_id"] == line["product_id"]
                     and p["pricelist_id"] == client["pricelist_id"] and p["valid_from"] <= order["taken_at"]
                     and (p["valid_to"] is None or order["taken_at"] < p["valid_to"])]
            assert valid == [line["price"]] and line["amount"] == line["price"] * line["qty"]
        if order["status"] == "confirmed":
            held.update({line["product_id"]: line["qty"] for line in order["lines"]})
    warehouse = next(u["branch_id"] for u in await rows(db, users, tid) if u["role"] == "salesperson")
    reserved = {s["product_id"]: s["reserved"] for s in await rows(db, stock, tid) if s["branch_id"] == warehouse}
    assert {pid: qty for pid, qty in reserved.items() if qty} == dict(held)


async def test_rows_reach_the_change_log(db: Database, demo: DemoSummary) -> None:
    active = sum(p["active"] for p in await rows(db, products, demo.tenant_id))
    entries = await scalar(db, sa.select(sa.func.count()).select_from(change_log)
                           .where(change_log.c.tenant_id == demo.tenant_id))
    catalog = await scalar(db, sa.select(sa.func.count()).select_from(change_log).where(
        change_log.c.tenant_id == demo.tenant_id, change_log.c.bucket.like("products:%")))
    assert entries > demo.counts["products"] and catalog == active  # the catalog bucket holds active products


async def test_second_load_writes_nothing(db: Database, registry: Registry, demo: DemoSummary) -> None:
    def log_state():
        return sa.select(sa.func.count(), sa.func.max(change_log.c.seq)).where(
            change_log.c.tenant_id == demo.tenant_id)

    async with db.read() as conn:
        before = (await conn.execute(log_state())).one()
        head = await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == demo.tenant_id))
    again = await load_demo(db, registry, **SMALL)
    assert (again.tenant_id, again.created, again.counts) == (demo.tenant_id, False, demo.counts)
    async with db.read() as conn:
        assert (await conn.execute(log_state())).one() == before
        assert await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == demo.tenant_id)) == head


async def test_ids_start_after_other_tenants(db: Database, registry: Registry) -> None:
    acme = 40  # an explicit id, as tests/support.py gives: PostgreSQL's tenant sequence has not moved
    async with db.write() as conn:
        await conn.execute(sa.insert(tenants).values(id=acme, slug="acme", name="Acme", currency="EUR"))
    async with write_changes(db, registry, acme) as changes:
        await changes.insert(products, [{"id": 500, "sku": "A-1", "name": "Widget", "category": "Misc", "unit": "pcs"}])
        await changes.insert(stock, [{"id": 70, "branch_id": 1, "product_id": 500, "on_hand": 1}])
    demo = await load_demo(db, registry, **SMALL)
    assert demo.tenant_id == acme + 1
    assert min(p["id"] for p in await rows(db, products, demo.tenant_id)) == 501
    assert min(s["id"] for s in await rows(db, stock, demo.tenant_id)) == 71


async def test_the_demo_takes_new_orders_and_sales(db: Database, registry: Registry, demo: DemoSummary) -> None:
    tid = demo.tenant_id
    by_login = {u["username"]: u for u in await rows(db, users, tid)}
    rep, till = by_login["sales1"], by_login["pos1"]
    client = next(c for c in await rows(db, customers, tid) if c["salesperson_id"] == rep["id"])
    levels = {s["product_id"]: s for s in await rows(db, stock, tid) if s["branch_id"] == rep["branch_id"]}
    product = next(p for p in await rows(db, products, tid)
                   if p["active"] and levels[p["id"]]["on_hand"] > levels[p["id"]]["reserved"])
    pusher, at = Pusher(db, registry), now_ms()
    results = {}
    for user, name, args in (
        (rep, "order.create", {"customer_id": client["id"], "lines": [{"product_id": product["id"], "qty": 1}]}),
        (till, "sale.complete", {"payment_method": "cash", "lines": [{"product_id": product["id"], "qty": 1,
                                                                      "price": 199}]}),
    ):
        principal = await principal_for(db, {"sub": user["id"], "tid": tid, "role": user["role"]})
        await touch(db, principal, f"device-{user['username']}")
        [results[name]] = await pusher.push(principal, f"device-{user['username']}",
                                            [Mutation(1, name, {"id": str(uuid.uuid4()), **args}, at)])
    assert results["order.create"]["status"] == "applied", results
    assert results["order.create"]["result"]["number"] == f"SO-{demo.counts['orders'] + 1:06d}"
    assert results["sale.complete"]["result"]["number"] == f"POS-{demo.counts['sales'] + 1:06d}"
    async with write_changes(db, registry, tid) as changes:  # keyless insert, as a sale of an unstocked item does
        await changes.insert(stock, [{"branch_id": till["branch_id"], "product_id": 10**6, "on_hand": -1}])


async def test_same_seed_same_data(tmp_path, registry: Registry) -> None:
    async def load(name: str) -> tuple[list, list]:
        db = Database(f"sqlite:///{tmp_path / name}")
        try:
            await upgrade(db)
            demo = await load_demo(db, registry, **SMALL)
            return await rows(db, orders, demo.tenant_id), await rows(db, products, demo.tenant_id)
        finally:
            await db.dispose()

    assert await load("a.db") == await load("b.db")
