"""The push's first pass (no savepoints, appended rows written at the group's end) commits
exactly what the careful pass alone would (sync/push.py, docs/architecture.md "Push").

Hypothesis draws outboxes of orders, payments and visits, applied and refused: stock run
out, another salesperson's customer, an id made twice, an unknown name, bad arguments, a
changed price, and a test mutation that writes before it refuses (the bundled handlers
all refuse before their first write). Each is pushed to two copies of one seeded database, once by the server's
pusher and once by one that applies every group carefully, in groups of four so that a
push holds several and refusals fall anywhere in them. The results, the rows left and
the change log must be the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from fieldsync_client import HttpSync
from server.app import build_services, create_app
from server.config import Settings
from server.domain.mutations import load_customer
from server.domain.job_tables import notices
from server.domain.tables import counters, customers, invoices, orders, payments, stock, visits
from server.migrations import upgrade
from sync.errors import ErrorCode, MutationRejected
from sync.push import Pusher
from sync.storage import change_log, log_head, mutation_ledger

from .conftest import PG_ADMIN_URL, _pg_admin
from .support import seed, token

PRODUCTS = 5
GROUP = 4  # the push's 3-12 mutations make one to three groups

PRODUCT = st.integers(1, PRODUCTS)
LINES = st.lists(st.tuples(PRODUCT, st.integers(1, 30)), min_size=1, max_size=3, unique_by=lambda line: line[0])
STEP = st.one_of(
    st.tuples(st.just("order"), st.integers(1, 6), LINES),  # customers 5 and 6 are sales2's: FORBIDDEN
    st.tuples(st.just("order again"), st.integers(0, 11), st.integers(1, 4)),  # an earlier order's id
    st.tuples(st.just("order at a stale price"), st.integers(1, 4), PRODUCT),
    st.tuples(st.just("payment"), st.integers(1, 6), st.integers(1, 5_000)),
    st.tuples(st.just("visit"), st.integers(1, 6)),
    st.tuples(st.just("unknown")),
    st.tuples(st.just("bad lines"), st.integers(1, 4)),
    st.tuples(st.just("write, then maybe refuse"), st.integers(1, 4), st.booleans()),
)


class CarefulOnly(Pusher):
    """Every group the careful way: a savepoint per mutation, appended rows at once."""

    async def _apply_group(self, principal, client_id, group, *, careful):  # noqa: ARG002
        return await super()._apply_group(principal, client_id, group, careful=True)


def outbox(steps: list[tuple]) -> list[tuple[str, dict]]:
    """(name, args) per step; ids are fixed by position, so both copies see the same."""
    made: list[str] = []  # the ids of the orders so far
    mutations = []
    for n, step in enumerate(steps):
        kind, new_id = step[0], str(uuid.UUID(int=n + 1))
        if kind == "order":
            made.append(new_id)
            args = {"id": new_id, "customer_id": step[1], "lines": [{"product_id": p, "qty": q} for p, q in step[2]]}
            mutations.append(("order.create", args))
        elif kind == "order again":
            taken = made[step[1] % len(made)] if made else new_id
            mutations.append(("order.create", {"id": taken, "customer_id": step[2],
                                               "lines": [{"product_id": 1, "qty": 1}]}))
        elif kind == "order at a stale price":
            mutations.append(("order.create", {"id": new_id, "customer_id": step[1],
                                               "lines": [{"product_id": step[2], "qty": 1, "price": 1}]}))
        elif kind == "payment":
            mutations.append(("payment.record", {"id": new_id, "customer_id": step[1], "amount": step[2],
                                                 "currency": "EUR", "method": "cash"}))
        elif kind == "visit":
            mutations.append(("visit.checkin", {"id": new_id, "customer_id": step[1]}))
        elif kind == "write, then maybe refuse":
            mutations.append(("test.half", {"customer_id": step[1], "refuse": step[2]}))
        elif kind == "unknown":
            mutations.append(("order.delete", {"id": new_id}))
        else:
            mutations.append(("order.create", {"id": new_id, "customer_id": step[1], "lines": "none"}))
    return mutations


# What a push leaves, without the clocks (created_at and such differ between the copies).
_LEFT = {
    "orders": sa.select(orders.c.id, orders.c.number, orders.c.customer_id, orders.c.lines, orders.c.total),
    "invoices": sa.select(invoices.c.id, invoices.c.number, invoices.c.order_id, invoices.c.total),
    "notices": sa.select(notices.c.id, notices.c.status),
    "payments": sa.select(payments.c.id, payments.c.customer_id, payments.c.amount),
    "visits": sa.select(visits.c.id, visits.c.customer_id),
    "stock": sa.select(stock.c.branch_id, stock.c.product_id, stock.c.on_hand, stock.c.reserved),
    "customers": sa.select(customers.c.id, customers.c.balance, customers.c.version),
    "counters": sa.select(counters.c.name, counters.c.value),
    "ledger": sa.select(mutation_ledger.c.mutation_id, mutation_ledger.c.status, mutation_ledger.c.code,
                        mutation_ledger.c.result),
    "log": sa.select(change_log.c.seq, change_log.c.bucket, change_log.c.key, change_log.c.op),
    "head": sa.select(log_head.c.seq),
}


async def half(ctx, args):
    """Raise the customer's balance by 1, then refuse if asked: only a rollback undoes it."""
    customer = await load_customer(ctx, args["customer_id"])
    await ctx.changes.update_rows(customers, [(customer, {"balance": customer["balance"] + 1})])
    if args["refuse"]:
        raise MutationRejected(ErrorCode.CONFLICT, "refused after writing")


async def left(services) -> dict[str, list]:
    async with services.db.read() as conn:
        return {name: sorted(map(tuple, (await conn.execute(query)).all()), key=repr) for name, query in _LEFT.items()}


async def push_to_a_copy(settings: Settings, copy: str, mutations: list[tuple[str, dict]],
                         careful: bool) -> tuple[list[dict], dict[str, list]]:
    services = build_services(replace(settings, database_url=copy))
    services.registry.mutation("test.half", roles=["salesperson"], args={"customer_id": "id", "refuse": "bool"})(half)
    services.pusher = (CarefulOnly if careful else Pusher)(services.db, services.registry, group=GROUP)
    app = create_app(services.settings, services=services)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fs") as http:
            device = HttpSync(http, token(services, 11, "salesperson"), "ana-phone")
            results = await device.push([device.mutation(name, args) for name, args in mutations])
        return results, await left(services)
    finally:
        await services.db.dispose()


class Copies:
    """Copies of one seeded database: files for SQLite, ``CREATE DATABASE … TEMPLATE`` for
    PostgreSQL (a file copy on the server's side, far quicker than seeding again)."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings, self.workdir, self.made = settings, workdir, 0
        self.sqlite = settings.database_url.startswith("sqlite")
        self.template = (f"sqlite:///{workdir}/template.sqlite" if self.sqlite
                         else f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/fs_passes_{uuid.uuid4().hex[:8]}")

    async def make_template(self) -> None:
        if not self.sqlite:
            await _pg_admin(f'CREATE DATABASE "{self._name(self.template)}"')
        services = build_services(replace(self.settings, database_url=self.template))
        try:
            await upgrade(services.db)
            await seed(services, products_count=PRODUCTS)
        finally:
            await services.db.dispose()

    @contextlib.asynccontextmanager
    async def copy(self) -> AsyncIterator[str]:
        self.made += 1
        if self.sqlite:
            path = self.workdir / f"copy-{self.made}.sqlite"
            shutil.copyfile(self.workdir / "template.sqlite", path)
            yield f"sqlite:///{path}"
            path.unlink()
            return
        name = f"{self._name(self.template)}_{self.made}"
        await _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{self._name(self.template)}"')
        try:
            yield f"{self.template.rsplit('/', 1)[0]}/{name}"
        finally:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def drop(self) -> None:
        if not self.sqlite:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{self._name(self.template)}" WITH (FORCE)')

    @staticmethod
    def _name(url: str) -> str:
        return url.rsplit("/", 1)[1]


def test_the_first_pass_commits_what_the_careful_pass_would(settings, tmp_path):
    copies = Copies(settings, tmp_path)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(copies.make_template())
    @hypothesis_settings(max_examples=30, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(steps=st.lists(STEP, min_size=3, max_size=12))
    def pushed_twice(steps):
        mutations = outbox(steps)

        async def both():
            outcomes = []
            for careful in (False, True):
                async with copies.copy() as url:
                    outcomes.append(await push_to_a_copy(settings, url, mutations, careful))
            return outcomes

        (results, rows), (careful_results, careful_rows) = loop.run_until_complete(both())
        assert results == careful_results
        assert rows == careful_rows

    try:
        pushed_twice()
    finally:
        loop.run_until_complete(copies.drop())
        loop.close()
