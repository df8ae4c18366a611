"""The report job's core: ``customer_statement`` and ``daily_sales`` PDFs for a
``documents`` row asked for with ``report.request``."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from server.domain.invoices import format_money
from server.domain.job_tables import documents
from server.domain.tables import customers, orders, payments, sales, tenants, users
from sync.changes import now_ms
from sync.schema import Registry
from sync.storage import Database

from . import files
from .invoices import company, customer_block, day, one
from .pdf import Sheet, render


def _clock(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


async def _currency(conn: AsyncConnection, tenant_id: int) -> str:
    return await conn.scalar(sa.select(tenants.c.currency).where(tenants.c.id == tenant_id)) or "EUR"


async def statement_sheet(conn: AsyncConnection, tenant_id: int, doc: dict[str, Any]) -> Sheet:
    params = doc["params"]
    customer = await one(conn, customers, tenant_id, params["customer_id"])
    start, end = params["from"], params["to"]
    order_rows = (await conn.execute(sa.select(orders.c.number, orders.c.taken_at, orders.c.total).where(
        orders.c.tenant_id == tenant_id, orders.c.customer_id == params["customer_id"],
        orders.c.status != "cancelled", orders.c.taken_at >= start, orders.c.taken_at < end))).all()
    payment_rows = (await conn.execute(sa.select(
        payments.c.method, payments.c.reference, payments.c.paid_at, payments.c.amount).where(
        payments.c.tenant_id == tenant_id, payments.c.customer_id == params["customer_id"],
        payments.c.paid_at >= start, payments.c.paid_at < end))).all()
    currency = customer["currency"] if customer else await _currency(conn, tenant_id)
    entries = [(o.taken_at, "Order", o.number, o.total, 0) for o in order_rows]
    entries += [(p.paid_at, "Payment", f"{p.method} {p.reference or ''}".strip(), 0, p.amount) for p in payment_rows]
    entries.sort(key=lambda e: e[0])
    rows = [[day(at), kind, ref, format_money(debit, currency) if debit else "",
             format_money(credit, currency) if credit else ""] for at, kind, ref, debit, credit in entries]
    ordered, paid = sum(e[3] for e in entries), sum(e[4] for e in entries)
    balance = customer["balance"] if customer else 0
    return Sheet(
        company=await company(conn, tenant_id), title="Customer statement", created_at=doc["requested_at"],
        meta=[("Statement", doc["title"]), ("Period", f"{day(start)} to {day(end)}"), ("Currency", currency)],
        party=customer_block(customer), columns=["Date", "Type", "Reference", "Charged", "Paid"],
        widths=[28, 24, 66, 36, 36], numeric_from=3, rows=rows,
        totals=[("Orders in period", format_money(ordered, currency)),
                ("Payments in period", format_money(paid, currency)),
                ("Balance today", format_money(balance, currency))],
    )


async def daily_sales_sheet(conn: AsyncConnection, tenant_id: int, doc: dict[str, Any]) -> Sheet:
    params, currency = doc["params"], await _currency(conn, tenant_id)
    start, end = params["from"], params["to"]
    user = await one(conn, users, tenant_id, doc["user_id"])
    if user is not None and user["role"] == "pos":
        found = (await conn.execute(sa.select(sales.c.sold_at, sales.c.number, sales.c.payment_method, sales.c.total)
                                    .where(sales.c.tenant_id == tenant_id, sales.c.branch_id == user["branch_id"],
                                           sales.c.sold_at >= start, sales.c.sold_at < end)
                                    .order_by(sales.c.sold_at))).all()
        rows = [[_clock(s.sold_at), s.number, s.payment_method, format_money(s.total, currency)] for s in found]
        columns, who = ["Time", "Sale", "Payment", "Total"], f"Shop of {user['name']}"
    else:
        found = (await conn.execute(
            sa.select(orders.c.taken_at, orders.c.number, customers.c.name, orders.c.total)
            .join(customers, sa.and_(customers.c.tenant_id == orders.c.tenant_id,
                                     customers.c.id == orders.c.customer_id))
            .where(orders.c.tenant_id == tenant_id, orders.c.salesperson_id == doc["user_id"],
                   orders.c.status != "cancelled", orders.c.taken_at >= start, orders.c.taken_at < end)
            .order_by(orders.c.taken_at))).all()
        rows = [[_clock(o.taken_at), o.number, o.name, format_money(o.total, currency)] for o in found]
        columns, who = ["Time", "Order", "Customer", "Total"], user["name"] if user else "?"
    return Sheet(
        company=await company(conn, tenant_id), title="Sales report", created_at=doc["requested_at"],
        meta=[("Report", doc["title"]), ("For", who), ("Period", f"{_clock(start)} to {_clock(end)} UTC")],
        columns=columns, widths=[34, 34, 76, 46], numeric_from=3, rows=rows,
        totals=[("Count", str(len(found))), (f"Total {currency}", format_money(sum(r[3] for r in found), currency))],
    )


async def render_report(db: Database, registry: Registry, tenant_id: int, document_id: str) -> str:
    """Make and store the report's PDF; safe to run any number of times."""
    async with db.read() as conn:
        doc = await one(conn, documents, tenant_id, document_id)
        if doc is None or doc["status"] == "ready":
            return "missing" if doc is None else "already"
        build = statement_sheet if doc["kind"] == "customer_statement" else daily_sales_sheet
        sheet = await build(conn, tenant_id, doc)
    made = files.Made(documents, document_id, f"{doc['kind']}-{day(doc['params']['from'])}.pdf", render(sheet),
                      ready={"ready_at": now_ms()})
    return "made" if await files.store(db, registry, tenant_id, made) else "already"
