"""Invariants 3, 4, 5 under random interleavings (hypothesis stateful).

Office writes (renames, deactivations, price and stock changes, customer reassignment and
pricelist moves), device pulls with random limits, offline orders and sales pushed with
dropped replies and replays. After every full sync a device must hold exactly the
server's view; every mutation is applied at most once and a replay returns the very
first result.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from fieldsync_client import HttpSync
from server.app import build_services, create_app
from server.config import Settings
from server.domain.tables import orders, sales
from server.migrations import upgrade

from .conftest import _reset_pg
from .support import admin_write, seed, token

PRODUCTS = 12
DEVICES = [("sales1", 11, "salesperson"), ("sales2", 12, "salesperson"), ("pos1", 21, "pos")]


class SyncMachine(RuleBasedStateMachine):
    database_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.mkdtemp()
        self.services, self.http = self.run(self._start())
        self.devices = {name: HttpSync(self.http, token(self.services, uid, role), f"{name}-phone")
                        for name, uid, role in DEVICES}
        self.outbox: dict[str, list[dict]] = {name: [] for name, _, _ in DEVICES}
        self.first_results: dict[tuple[str, int], dict] = {}
        self.applied: set[str] = set()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    async def _start(self):
        url = self.database_url or f"sqlite:///{self.tmp}/db.sqlite"
        if not url.startswith("sqlite"):
            await _reset_pg(url)
        services = build_services(Settings(database_url=url, redis_url=None,
                                           jwt_secret=b"fieldsync-test-secret-0123456789abcdef",
                                           # a fresh device per check, pulling flat out
                                           max_devices_per_user=100_000, rate_limits=False))
        await upgrade(services.db)
        await seed(services, products_count=PRODUCTS)
        app = create_app(services.settings, services=services)
        return services, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fs")

    def teardown(self) -> None:
        for name in self.devices:
            self.sync_and_compare(name)
        self.run(self.http.aclose())
        self.run(self.services.db.dispose())
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def admin(self, table: str, rows: list[dict]) -> None:
        self.run(admin_write(self.services.db, self.services.registry, 1, table, rows, []))

    # -- the office --------------------------------------------------------------------

    # The HTTP edge refuses U+0000 (tests/test_bad_input.py); this calls the admin core directly.
    @rule(product=st.integers(1, PRODUCTS),
          name=st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12))
    def rename_product(self, product, name):
        self.admin("products", [{"id": product, "name": name}])

    @rule(product=st.integers(1, PRODUCTS), active=st.booleans())
    def toggle_product(self, product, active):
        self.admin("products", [{"id": product, "active": active}])

    @rule(product=st.integers(1, PRODUCTS), pricelist=st.sampled_from([1, 2]), amount=st.integers(1, 10_000))
    def change_price(self, product, pricelist, amount):
        self.admin("prices", [{"id": pricelist * 1000 + product, "amount": amount}])

    @rule(product=st.integers(1, PRODUCTS), branch=st.sampled_from([1, 2]), on_hand=st.integers(0, 60))
    def count_stock(self, product, branch, on_hand):
        self.admin("stock", [{"id": branch * 1000 + product, "on_hand": on_hand}])

    @rule(customer=st.integers(1, 6), owner=st.sampled_from([11, 12, None]))
    def reassign_customer(self, customer, owner):
        self.admin("customers", [{"id": customer, "salesperson_id": owner}])

    @rule(customer=st.integers(1, 6), pricelist=st.sampled_from([1, 2]))
    def move_pricelist(self, customer, pricelist):
        self.admin("customers", [{"id": customer, "pricelist_id": pricelist}])

    # -- the devices -------------------------------------------------------------------

    @rule(device=st.sampled_from([d[0] for d in DEVICES]), limit=st.integers(1, 40))
    def pull_some(self, device, limit):
        self.run(self.devices[device].pull_once(limit))

    @rule(device=st.sampled_from(["sales1", "sales2"]), customer=st.integers(1, 6),
          product=st.integers(1, PRODUCTS), qty=st.integers(1, 30))
    def take_order(self, device, customer, product, qty):
        dev = self.devices[device]
        self.outbox[device].append(dev.mutation("order.create", {
            "id": str(uuid.uuid4()), "customer_id": customer, "lines": [{"product_id": product, "qty": qty}]}))

    @rule(product=st.integers(1, PRODUCTS), qty=st.integers(1, 30))
    def ring_up_sale(self, product, qty):
        dev = self.devices["pos1"]
        self.outbox["pos1"].append(dev.mutation("sale.complete", {
            "id": str(uuid.uuid4()), "lines": [{"product_id": product, "qty": qty, "price": 100}],
            "payment_method": "card"}))

    @rule(device=st.sampled_from([d[0] for d in DEVICES]), reply_lost=st.booleans())
    def push(self, device, reply_lost):
        if not self.outbox[device]:
            return
        results = self.run(self.devices[device].push(self.outbox[device]))
        for mutation, result in zip(self.outbox[device], results):
            first = self.first_results.setdefault((device, mutation["id"]), result)
            assert result == first, "a replay must return the first result"
            if result["status"] == "applied":
                self.applied.add(mutation["args"]["id"])
        if not reply_lost:  # a lost reply keeps the outbox: the next push replays it
            self.outbox[device] = []

    @rule(device=st.sampled_from([d[0] for d in DEVICES]))
    def sync_and_compare(self, device):
        dev = self.devices[device]
        self.run(dev.sync(limit=25))
        _, uid, role = next(d for d in DEVICES if d[0] == device)
        fresh = HttpSync(self.http, token(self.services, uid, role), f"fresh-{uuid.uuid4().hex[:8]}")
        self.run(fresh.sync())
        assert dev.replica.data == fresh.replica.data

    @invariant()
    def applied_exactly_once(self):
        async def ids():
            async with self.services.db.read() as conn:
                made = (await conn.execute(sa.select(orders.c.id))).scalars().all()
                made += (await conn.execute(sa.select(sales.c.id))).scalars().all()
            return made

        made = self.run(ids())
        assert len(made) == len(set(made))
        assert set(made) == self.applied


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_convergence_and_exactly_once(backend, request):
    SyncMachine.database_url = request.getfixturevalue("pg_database") if backend == "postgres" else ""
    run_state_machine_as_test(SyncMachine, settings=settings(
        max_examples=15, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
