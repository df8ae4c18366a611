"""Dashboard rows: one per salesperson (``user:<id>``) and one per shop (``branch:<id>``).

Counted in UTC days and months, in the tenant's currency (rows in another currency are
left out). A row is only written when a figure changed, so the periodic refresh of a
quiet tenant adds nothing to the change log.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from server.domain.reports import day_start, month_start
from server.domain.tables import branches, dashboards, orders, products, sales, stock, tenants, users
from sync.changes import now_ms, write_changes
from sync.schema import Registry
from sync.storage import Database

TOP = 5
_FIGURES = ("today_total", "month_total", "month_target", "currency", "top_products", "pending_approvals")


async def _top(conn: AsyncConnection, tenant_id: int, line_lists: list[list[dict]]) -> list[dict[str, Any]]:
    qty: dict[int, int] = defaultdict(int)
    total: dict[int, int] = defaultdict(int)
    for lines in line_lists:
        for line in lines:
            qty[line["product_id"]] += line["qty"]
            total[line["product_id"]] += line.get("amount", 0)
    best = sorted(total, key=lambda p: (-total[p], p))[:TOP]
    names = {}
    if best:
        found = await conn.execute(sa.select(products.c.id, products.c.name).where(
            products.c.tenant_id == tenant_id, products.c.id.in_(best)))
        names = {row.id: row.name for row in found}
    return [{"product_id": p, "name": names.get(p, ""), "qty": qty[p], "total": total[p]} for p in best]


async def user_figures(conn: AsyncConnection, tenant_id: int, user_id: int, currency: str,
                       now: int) -> dict[str, Any] | None:
    user = (await conn.execute(sa.select(users.c.role, users.c.month_target).where(
        users.c.tenant_id == tenant_id, users.c.id == user_id))).first()
    if user is None or user.role != "salesperson":
        return None
    found = (await conn.execute(sa.select(orders.c.taken_at, orders.c.total, orders.c.lines).where(
        orders.c.tenant_id == tenant_id, orders.c.salesperson_id == user_id, orders.c.currency == currency,
        orders.c.status != "cancelled", orders.c.taken_at >= month_start(now)))).all()
    today = day_start(now)
    waiting = await conn.scalar(sa.select(sa.func.count()).select_from(orders).where(
        orders.c.tenant_id == tenant_id, orders.c.salesperson_id == user_id, orders.c.status == "confirmed"))
    return {"kind": "user", "user_id": user_id, "branch_id": None, "currency": currency,
            "today_total": sum(o.total for o in found if o.taken_at >= today),
            "month_total": sum(o.total for o in found), "month_target": user.month_target,
            "top_products": await _top(conn, tenant_id, [o.lines for o in found]),
            "pending_approvals": int(waiting or 0)}


async def branch_figures(conn: AsyncConnection, tenant_id: int, branch_id: int, currency: str,
                         now: int) -> dict[str, Any] | None:
    found = (await conn.execute(sa.select(sales.c.sold_at, sales.c.total, sales.c.lines).where(
        sales.c.tenant_id == tenant_id, sales.c.branch_id == branch_id, sales.c.currency == currency,
        sales.c.sold_at >= month_start(now)))).all()
    today = day_start(now)
    flagged = await conn.scalar(sa.select(sa.func.count()).select_from(stock).where(
        stock.c.tenant_id == tenant_id, stock.c.branch_id == branch_id, stock.c.negative))
    return {"kind": "branch", "user_id": None, "branch_id": branch_id, "currency": currency,
            "today_total": sum(s.total for s in found if s.sold_at >= today),
            "month_total": sum(s.total for s in found), "month_target": None,
            "top_products": await _top(conn, tenant_id, [s.lines for s in found]),
            "pending_approvals": int(flagged or 0)}  # stock rows awaiting a count


async def refresh(db: Database, registry: Registry, tenant_id: int, dashboard_id: str,
                  now: int | None = None) -> bool:
    """Recompute one dashboard row; True when it changed."""
    now = now_ms() if now is None else now
    kind, _, raw = dashboard_id.partition(":")
    if kind not in ("user", "branch") or not raw.isdigit():
        raise ValueError(f"not a dashboard id: {dashboard_id!r}")
    async with db.read() as conn:
        currency = await conn.scalar(sa.select(tenants.c.currency).where(tenants.c.id == tenant_id))
        figures = (user_figures if kind == "user" else branch_figures)
        row = await figures(conn, tenant_id, int(raw), currency or "EUR", now)
    if row is None:
        return False
    async with write_changes(db, registry, tenant_id) as changes:
        old = (await changes.conn.execute(sa.select(dashboards).where(
            dashboards.c.tenant_id == tenant_id, dashboards.c.id == dashboard_id))).mappings().first()
        if old is not None and all(old[c] == row[c] for c in _FIGURES):
            return False
        await changes.upsert(dashboards, [{"id": dashboard_id, **row, "updated_at": now}])
    return True


async def every_dashboard(db: Database) -> list[tuple[int, str]]:
    """``(tenant, dashboard id)`` of every active salesperson and every shop."""
    async with db.read() as conn:
        people = await conn.execute(sa.select(users.c.tenant_id, users.c.id).where(
            users.c.role == "salesperson", users.c.active))
        shops = await conn.execute(sa.select(branches.c.tenant_id, branches.c.id).where(branches.c.kind == "shop"))
        return [(t, f"user:{i}") for t, i in people] + [(t, f"branch:{i}") for t, i in shops]


async def refresh_all(db: Database, registry: Registry, now: int | None = None) -> int:
    """The periodic pass (day and month roll-overs need no landing); returns rows changed."""
    changed = 0
    for tenant_id, dashboard_id in await every_dashboard(db):
        changed += await refresh(db, registry, tenant_id, dashboard_id, now)
    return changed
