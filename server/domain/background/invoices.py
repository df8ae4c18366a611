"""The invoice job's core: read an invoice's order or sale, lay it out, store the PDF."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from server.domain.invoices import format_money
from server.domain.tables import branches, customers, invoices, orders, products, sales, tenants
from sync.schema import Registry
from sync.storage import Database

from . import files
from .pdf import Sheet, render

log = logging.getLogger("fieldsync.jobs")


def day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d")


async def one(conn: AsyncConnection, table: sa.Table, tenant_id: int, key: Any) -> dict[str, Any] | None:
    row = (await conn.execute(
        sa.select(table).where(table.c.tenant_id == tenant_id, table.c.id == key)
    )).mappings().first()
    return dict(row) if row is not None else None


async def company(conn: AsyncConnection, tenant_id: int) -> str:
    return await conn.scalar(sa.select(tenants.c.name).where(tenants.c.id == tenant_id)) or "?"


async def product_names(conn: AsyncConnection, tenant_id: int, ids: Iterable[int]) -> dict[int, str]:
    ids = sorted(set(ids))
    if not ids:
        return {}
    query = sa.select(products.c.id, products.c.sku, products.c.name).where(
        products.c.tenant_id == tenant_id, products.c.id.in_(ids))
    return {row.id: f"{row.sku} {row.name}" for row in await conn.execute(query)}


def customer_block(customer: dict[str, Any] | None) -> list[str]:
    if customer is None:
        return ["Walk-in customer"]
    block = [customer["name"]]
    block += [v for v in (customer.get("contact_name"), customer.get("address"), customer.get("city")) if v]
    return block


async def invoice_sheet(conn: AsyncConnection, tenant_id: int, invoice: dict[str, Any]) -> Sheet | None:
    """The invoice's layout, or None when its order or sale is gone."""
    is_order = invoice["order_id"] is not None
    source = await one(conn, orders if is_order else sales, tenant_id, invoice["order_id"] or invoice["sale_id"])
    if source is None:
        return None
    customer = await one(conn, customers, tenant_id, source["customer_id"]) if source["customer_id"] else None
    names = await product_names(conn, tenant_id, (line["product_id"] for line in source["lines"]))
    currency = source["currency"]
    when = source["taken_at"] if is_order else source["sold_at"]
    meta = [("Invoice no.", invoice["number"]), ("Order" if is_order else "Sale", source["number"]),
            ("Date", day(when)), ("Currency", currency)]
    if not is_order:
        shop = await conn.scalar(sa.select(branches.c.name).where(
            branches.c.tenant_id == tenant_id, branches.c.id == source["branch_id"]))
        meta.append(("Shop", shop or str(source["branch_id"])))
    rows = [[str(n), names.get(line["product_id"], f"product {line['product_id']}"), str(line["qty"]),
             format_money(line["price"], currency), format_money(line["amount"], currency)]
            for n, line in enumerate(source["lines"], start=1)]
    total = format_money(source["total"], currency)
    return Sheet(
        company=await company(conn, tenant_id), title="Invoice" if is_order else "Sales receipt",
        created_at=invoice["created_at"], meta=meta, party=customer_block(customer),
        columns=["#", "Item", "Qty", "Unit price", "Amount"], widths=[8, 92, 18, 36, 36], rows=rows,
        totals=[("Subtotal", total), (f"Total {currency}", total)],
        notes=[f"Thank you for your business. Reference {source['number']}."],
    )


async def render_invoice(db: Database, registry: Registry, tenant_id: int, invoice_id: str,
                         *, pause_ms: int = 0) -> str:
    """Make and store the invoice's PDF; safe to run any number of times.

    Returns what happened: ``made``, ``already`` (ready before), ``missing``.
    """
    async with db.read() as conn:
        invoice = await one(conn, invoices, tenant_id, invoice_id)
        if invoice is None or invoice["status"] == "ready":
            return "missing" if invoice is None else "already"
        sheet = await invoice_sheet(conn, tenant_id, invoice)
    if sheet is None:
        log.warning("invoice %s: its order or sale is gone; nothing to render", invoice_id)
        return "missing"
    if pause_ms:
        await asyncio.sleep(pause_ms / 1000)  # fault injection: a window to kill the worker in
    body = render(sheet)
    made = files.Made(invoices, invoice_id, f"{invoice['number']}.pdf", body)
    return "made" if await files.store(db, registry, tenant_id, made) else "already"
