"""Mutation handlers of the field-sales / POS domain.

A handler runs inside the push pipeline's transaction: it reads with
row locks, writes through ``ctx.changes`` so every write reaches the change log, and
refuses with :class:`MutationRejected`, which rolls its writes back. Locks are taken customer first, then stock rows
in product order, then counters, so concurrent handlers cannot deadlock.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from sync.errors import ErrorCode, MutationRejected
from sync.push import MutationContext
from sync.schema import MAX_ID, Registry

from . import invoices  # module import: invoices uses this module too
from .tables import counters, customers, orders, payments, prices, products, sales, stock, visits

CLOCK_SKEW_MS = 5 * 60_000
MAX_LINES = 200
MAX_QTY = 1_000_000
MAX_PRICE = 10**12  # minor units; keeps qty * price within 2^53
EDITABLE_CUSTOMER_FIELDS = ("contact_name", "phone", "email", "address", "city")


def reject(code: ErrorCode, message: str) -> MutationRejected:
    return MutationRejected(code, message)


def check_uuid(value: str, what: str = "id") -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise reject(ErrorCode.INVALID_ARGS, f"`{what}` must be a UUID made on the device") from None


def check_at(ctx: MutationContext) -> None:
    if ctx.at > ctx.now + CLOCK_SKEW_MS:
        raise reject(ErrorCode.INVALID_ARGS, "`at` is in the future; check the device clock")


def parse_lines(raw: list[Any], *, need_price: bool) -> list[dict[str, int]]:
    """Validate ``[{product_id, qty, price?}]``; one line per product."""
    if not raw or len(raw) > MAX_LINES:
        raise reject(ErrorCode.INVALID_ARGS, f"an order needs 1 to {MAX_LINES} lines")
    lines, seen = [], set()
    for line in raw:
        if not isinstance(line, dict):
            raise reject(ErrorCode.INVALID_ARGS, "each line must be a map")
        product_id, qty, price = line.get("product_id"), line.get("qty"), line.get("price")
        if not _is_int(product_id) or not _is_int(qty) or not 0 < qty <= MAX_QTY or not 0 < product_id <= MAX_ID:
            raise reject(ErrorCode.INVALID_ARGS,
                         f"a line needs a `product_id` and a `qty` between 1 and {MAX_QTY}")
        if (price is not None or need_price) and (not _is_int(price) or not 0 <= price <= MAX_PRICE):
            raise reject(ErrorCode.INVALID_ARGS, "a line's `price` must be a non-negative integer (minor units)")
        if product_id in seen:
            raise reject(ErrorCode.INVALID_ARGS, f"product {product_id} appears on two lines")
        seen.add(product_id)
        lines.append({"product_id": product_id, "qty": qty, **({"price": price} if price is not None else {})})
    return lines


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def load_customer(ctx: MutationContext, customer_id: int, *, lock: bool = True) -> dict[str, Any]:
    """The customer, if this salesperson may act on it (locked for the transaction)."""
    query = sa.select(customers).where(customers.c.tenant_id == ctx.principal.tenant_id, customers.c.id == customer_id)
    row = (await ctx.conn.execute(query.with_for_update() if lock else query)).mappings().first()
    if row is None:
        raise reject(ErrorCode.NOT_FOUND, f"customer {customer_id} does not exist")
    if ctx.principal.role == "salesperson" and row["salesperson_id"] != ctx.principal.user_id:
        raise reject(ErrorCode.FORBIDDEN, f"customer {customer_id} is not assigned to you")
    return dict(row)


async def next_number(ctx: MutationContext, name: str, prefix: str) -> str:
    """The next number of a per-tenant series (SO-000123); gapless within committed rows."""
    tenant = ctx.principal.tenant_id
    bump = (
        sa.update(counters)
        .where(counters.c.tenant_id == tenant, counters.c.name == name)
        .values(value=counters.c.value + 1)
        .returning(counters.c.value)
    )
    value = (await ctx.conn.execute(bump)).scalar()
    if value is None:
        await ctx.conn.execute(
            ctx.changes.db.insert(counters).values(tenant_id=tenant, name=name, value=0).on_conflict_do_nothing()
        )
        value = (await ctx.conn.execute(bump)).scalar_one()
    return f"{prefix}-{value:06d}"


async def ensure_new(ctx: MutationContext, table: sa.Table, row_id: str) -> None:
    """Refuse a device-made id the tenant holds already; other tenants' ids are no concern
    (keys are ``(tenant_id, id)``), and must not be: a refusal would say that they exist."""
    exists = await ctx.conn.scalar(sa.select(table.c.id).where(
        table.c.tenant_id == ctx.principal.tenant_id, table.c.id == row_id))
    if exists is not None:
        raise reject(ErrorCode.CONFLICT, f"{table.name[:-1]} {row_id} already exists")


async def valid_prices(ctx: MutationContext, pricelist_id: int, product_ids: list[int], at: int) -> dict[int, dict]:
    """Per product, the price row of the pricelist valid at ``at``."""
    query = sa.select(prices.c.product_id, prices.c.amount, prices.c.currency).where(
        prices.c.tenant_id == ctx.principal.tenant_id,
        prices.c.pricelist_id == pricelist_id,
        prices.c.product_id.in_(product_ids),
        prices.c.valid_from <= at,
        sa.or_(prices.c.valid_to.is_(None), prices.c.valid_to > at),
    ).order_by(prices.c.valid_from)
    return {row.product_id: dict(row._mapping) for row in await ctx.conn.execute(query)}


async def active_products(ctx: MutationContext, product_ids: list[int]) -> dict[int, str]:
    query = sa.select(products.c.id, products.c.name).where(
        products.c.tenant_id == ctx.principal.tenant_id, products.c.id.in_(product_ids), products.c.active
    )
    found = {row.id: row.name for row in await ctx.conn.execute(query)}
    missing = sorted(set(product_ids) - set(found))
    if missing:
        raise reject(ErrorCode.NOT_FOUND, f"unknown or inactive product(s): {', '.join(map(str, missing))}")
    return found


async def lock_stock(ctx: MutationContext, branch_id: int, product_ids: list[int]) -> dict[int, dict]:
    query = (
        sa.select(stock)
        .where(stock.c.tenant_id == ctx.principal.tenant_id, stock.c.branch_id == branch_id,
               stock.c.product_id.in_(product_ids))
        .order_by(stock.c.product_id)
    )
    query = ctx.changes.db.locking(query)
    return {row["product_id"]: dict(row) for row in (await ctx.conn.execute(query)).mappings()}


def register(registry: Registry) -> None:
    registry.mutation("order.create", roles=["salesperson"],
                      args={"id": "str", "customer_id": "id", "lines": "list", "note": "str?"})(order_create)
    registry.mutation("payment.record", roles=["salesperson"],
                      args={"id": "str", "customer_id": "id", "amount": "int", "currency": "str",
                            "method": "str", "reference": "str?"})(payment_record)
    registry.mutation("visit.checkin", roles=["salesperson"],
                      args={"id": "str", "customer_id": "id", "lat": "float?", "lon": "float?",
                            "note": "str?"})(visit_checkin)
    registry.mutation("customer.update", roles=["salesperson"],
                      args={"customer_id": "id", "base_version": "int", "fields": "map"})(customer_update)


async def order_create(ctx: MutationContext, args: dict[str, Any]) -> dict[str, Any]:
    """Request an order: checks scope, the price valid when it was taken, stock and
    credit; reserves stock and assigns the order number."""
    order_id = check_uuid(args["id"])
    check_at(ctx)
    lines = parse_lines(args["lines"], need_price=False)
    await ensure_new(ctx, orders, order_id)
    customer = await load_customer(ctx, args["customer_id"])
    ids = [line["product_id"] for line in lines]
    await active_products(ctx, ids)
    valid = await valid_prices(ctx, customer["pricelist_id"], ids, ctx.at)
    for line in lines:
        price = valid.get(line["product_id"])
        if price is None:
            raise reject(ErrorCode.NOT_FOUND, f"product {line['product_id']} has no price valid at {ctx.at}")
        if "price" in line and line["price"] != price["amount"]:
            raise reject(ErrorCode.PRICE_CHANGED,
                         f"product {line['product_id']} cost {price['amount']} when the order was taken, not {line['price']}")
        line["price"] = price["amount"]
        line["amount"] = price["amount"] * line["qty"]
    total = sum(line["amount"] for line in lines)
    if customer["balance"] + total > customer["credit_limit"]:
        raise reject(ErrorCode.CREDIT_LIMIT_EXCEEDED,
                     f"order total {total} would take the balance {customer['balance']} over the credit limit "
                     f"{customer['credit_limit']} {customer['currency']}")
    branch_id = ctx.principal.attrs.get("branch_id")
    levels = await lock_stock(ctx, branch_id, sorted(ids))
    for line in sorted(lines, key=lambda item: item["product_id"]):
        level = levels.get(line["product_id"])
        available = 0 if level is None else level["on_hand"] - level["reserved"]
        if available < line["qty"]:
            raise reject(ErrorCode.INSUFFICIENT_STOCK,
                         f"product {line['product_id']}: {available} available, {line['qty']} ordered")
    await ctx.changes.update_rows(stock, [
        (levels[line["product_id"]], {"reserved": levels[line["product_id"]]["reserved"] + line["qty"]})
        for line in sorted(lines, key=lambda item: item["product_id"])])
    await ctx.changes.update_rows(customers, [(customer, {"balance": customer["balance"] + total})])
    number = await next_number(ctx, "order", "SO")
    await ctx.changes.insert(orders, [{
        "id": order_id, "number": number, "customer_id": customer["id"],
        "salesperson_id": ctx.principal.user_id, "branch_id": branch_id, "status": "confirmed",
        "lines": lines, "total": total, "currency": customer["currency"], "note": args.get("note"),
        "taken_at": ctx.at, "created_at": ctx.now,
    }])
    await invoices.order_created(ctx, order_id)  # pending invoice, confirmation notice, jobs after commit
    return {"order_id": order_id, "number": number, "total": total, "currency": customer["currency"]}


async def payment_record(ctx: MutationContext, args: dict[str, Any]) -> dict[str, Any]:
    """Record a payment collected from a customer; lowers their balance."""
    payment_id = check_uuid(args["id"])
    check_at(ctx)
    if not 0 < args["amount"] <= MAX_PRICE:
        raise reject(ErrorCode.INVALID_ARGS, "`amount` must be positive (minor units)")
    await ensure_new(ctx, payments, payment_id)
    customer = await load_customer(ctx, args["customer_id"])
    if args["currency"] != customer["currency"]:
        raise reject(ErrorCode.INVALID_ARGS, f"the customer is billed in {customer['currency']}")
    balance = customer["balance"] - args["amount"]
    await ctx.changes.update_rows(customers, [(customer, {"balance": balance})])
    await ctx.changes.insert(payments, [{
        "id": payment_id, "customer_id": customer["id"], "salesperson_id": ctx.principal.user_id,
        "amount": args["amount"], "currency": args["currency"], "method": args["method"][:16],
        "reference": args.get("reference"), "paid_at": ctx.at,
    }])
    invoices.payment_recorded(ctx)  # the dashboard refresh after commit
    return {"payment_id": payment_id, "balance": balance}


async def visit_checkin(ctx: MutationContext, args: dict[str, Any]) -> dict[str, Any]:
    """Check in at a customer's premises."""
    visit_id = check_uuid(args["id"])
    check_at(ctx)
    await ensure_new(ctx, visits, visit_id)
    customer = await load_customer(ctx, args["customer_id"], lock=False)
    await ctx.changes.insert(visits, [{
        "id": visit_id, "customer_id": customer["id"], "salesperson_id": ctx.principal.user_id,
        "checked_in_at": ctx.at, "lat": args.get("lat"), "lon": args.get("lon"), "note": args.get("note"),
    }])
    return {"visit_id": visit_id}


async def customer_update(ctx: MutationContext, args: dict[str, Any]) -> dict[str, Any]:
    """Field-level edit: a field changed on the server since ``base_version`` is a
    conflict (kept at the server's value), the others apply."""
    fields = args["fields"]
    unknown = sorted(set(fields) - set(EDITABLE_CUSTOMER_FIELDS))
    if not fields or unknown:
        raise reject(ErrorCode.INVALID_ARGS, f"editable fields are {', '.join(EDITABLE_CUSTOMER_FIELDS)}")
    if any(v is not None and not isinstance(v, str) for v in fields.values()):
        raise reject(ErrorCode.INVALID_ARGS, "customer fields are strings or nil")
    customer = await load_customer(ctx, args["customer_id"])
    versions = customer["field_versions"] or {}
    conflicts = {f: customer[f] for f in fields
                 if versions.get(f, 0) > args["base_version"] and fields[f] != customer[f]}
    apply = {f: v for f, v in fields.items() if f not in conflicts}
    if not apply:
        raise reject(ErrorCode.CONFLICT, "every field changed on the server since version "
                     f"{args['base_version']}: " + ", ".join(sorted(conflicts)))
    await ctx.changes.update_rows(customers, [(customer, apply)])
    version = customer["version"] + (1 if any(customer[f] != v for f, v in apply.items()) else 0)
    return {"version": version, "applied": sorted(apply), "conflicts": conflicts}
