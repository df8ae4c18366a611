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

from sync.changes import ChangeSet
from sync.errors import ErrorCode, MutationRejected
from sync.push import MutationContext
from sync.schema import MAX_ID, Registry

from . import invoices
from .tables import counters, customers, orders, payments, prices, products, stock, tenants, visits

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


async def next_numbers(ctx: MutationContext, *series: tuple[str, str]) -> list[str]:
    """The next number of each per-tenant series, ``(name, prefix)``: ``("order", "SO")``
    gives ``SO-000123``. Gapless within committed rows; one statement for all of them (an
    order takes its own number and its invoice's).

    In a deferring transaction (the push's first pass, all or nothing) a series is bumped
    in the database once, which locks its counter, and then counted on in memory; the
    last number given is written when the transaction flushes: one statement for a
    group's hundred orders instead of a hundred."""
    names = [name for name, _ in series]
    changes = ctx.changes
    if not changes.deferring:
        values = await _bump(ctx, names)
        return [f"{prefix}-{values[name]:06d}" for name, prefix in series]
    if "counters" not in changes.held:
        changes.held["counters"] = {}
        changes.before_flush(lambda: _store_counted(changes, changes.held["counters"]))
    counted: dict[str, list[int]] = changes.held["counters"]  # name -> [stored, last given]
    fresh = await _bump(ctx, [name for name in names if name not in counted])
    for name in names:
        if name in fresh:
            counted[name] = [fresh[name], fresh[name]]
        else:
            counted[name][1] += 1
    return [f"{prefix}-{counted[name][1]:06d}" for name, prefix in series]


async def _bump(ctx: MutationContext, names: list[str]) -> dict[str, int]:
    """Raise the counters by one (a tenant's first of a kind starts at 1): their new values."""
    if not names:
        return {}
    tenant = ctx.principal.tenant_id
    values = dict((await ctx.conn.execute(_BUMP, {"tenant": tenant, "names": names})).all())
    if missing := [name for name in names if name not in values]:
        await ctx.conn.execute(ctx.changes.db.insert(counters).values(
            [{"tenant_id": tenant, "name": name, "value": 0} for name in missing]).on_conflict_do_nothing())
        values.update((await ctx.conn.execute(_BUMP, {"tenant": tenant, "names": missing})).all())
    return values


async def _store_counted(changes: ChangeSet, counted: dict[str, list[int]]) -> None:
    """The last numbers a deferring transaction gave, written to their (locked) counters."""
    moved = [{"tenant": changes.tenant_id, "counter": name, "value": given}
             for name, (stored, given) in sorted(counted.items()) if given > stored]
    if moved:
        await changes.conn.execute(_STORE, moved)


# Statements of every order and sale are built once, with bound parameters: building one
# (and its cache key) per call cost more Python than running it (issue 13's profile).
_BUMP = (
    sa.update(counters)
    .where(counters.c.tenant_id == sa.bindparam("tenant"), counters.c.name.in_(sa.bindparam("names", expanding=True)))
    .values(value=counters.c.value + 1)
    .returning(counters.c.name, counters.c.value)
)
_STORE = (
    sa.update(counters)
    .where(counters.c.tenant_id == sa.bindparam("tenant"), counters.c.name == sa.bindparam("counter"))
    .values(value=sa.bindparam("value"))
)


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


# The branch's stock rows of an order's products with each product's flag and the price of
# a pricelist valid at ``at`` (the latest valid_from wins, as in valid_prices).
_PRICE_AT = (
    sa.select(prices.c.amount)
    .where(prices.c.tenant_id == products.c.tenant_id, prices.c.product_id == products.c.id,
           prices.c.pricelist_id == sa.bindparam("pricelist_id"), prices.c.valid_from <= sa.bindparam("at"),
           sa.or_(prices.c.valid_to.is_(None), prices.c.valid_to > sa.bindparam("at")))
    .order_by(prices.c.valid_from.desc()).limit(1)
    .scalar_subquery()
)
_LINES = (
    sa.select(stock, products.c.active.label("_active"), _PRICE_AT.label("_price"))
    .join_from(stock, products, sa.and_(products.c.tenant_id == stock.c.tenant_id, products.c.id == stock.c.product_id))
    .where(stock.c.tenant_id == sa.bindparam("tenant"), stock.c.branch_id == sa.bindparam("branch_id"),
           stock.c.product_id.in_(sa.bindparam("product_ids", expanding=True)))
    .order_by(stock.c.product_id)  # the lock order: stock rows in product order
)


async def lock_lines(ctx: MutationContext, branch_id: int | None, product_ids: list[int],
                     pricelist_id: int | None) -> tuple[dict[int, dict], dict[int, int]]:
    """The stock rows of the products at the branch, locked in product order, and the price
    of each valid at ``ctx.at``: one statement. A product unknown, inactive or not stocked
    there takes the long way, so that it earns the refusal it always did."""
    query = ctx.changes.db.locking(_LINES, of=stock)
    rows = await ctx.conn.execute(query, {"tenant": ctx.principal.tenant_id, "branch_id": branch_id,
                                          "product_ids": product_ids, "pricelist_id": pricelist_id, "at": ctx.at})
    levels, price_of, all_active = {}, {}, True
    for row in rows.mappings():
        level = dict(row)
        all_active &= bool(level.pop("_active"))
        if (price := level.pop("_price")) is not None:
            price_of[level["product_id"]] = price
        levels[level["product_id"]] = level
    if len(levels) < len(product_ids) or not all_active:
        await active_products(ctx, product_ids)  # NOT_FOUND for the unknown and inactive
        if pricelist_id is not None:
            valid = await valid_prices(ctx, pricelist_id, product_ids, ctx.at)
            price_of = {product_id: price["amount"] for product_id, price in valid.items()}
    return levels, price_of


_ORDER_CUSTOMER = sa.select(
    customers,
    sa.select(tenants.c.name).where(tenants.c.id == customers.c.tenant_id).scalar_subquery().label("_company"),
    sa.exists().where(orders.c.tenant_id == customers.c.tenant_id, orders.c.id == sa.bindparam("order_id"))
    .label("_taken"),
).where(customers.c.tenant_id == sa.bindparam("tenant"), customers.c.id == sa.bindparam("customer_id"))


async def order_customer(ctx: MutationContext, customer_id: int, order_id: str) -> tuple[dict[str, Any], str]:
    """The customer (locked) and the company's name, refusing as ensure_new then
    load_customer would: an order id the tenant holds first. One statement."""
    query = ctx.changes.db.locking(_ORDER_CUSTOMER, of=customers)
    row = (await ctx.conn.execute(query, {"tenant": ctx.principal.tenant_id, "customer_id": customer_id,
                                          "order_id": order_id})).mappings().first()
    if row is None:
        await ensure_new(ctx, orders, order_id)
        raise reject(ErrorCode.NOT_FOUND, f"customer {customer_id} does not exist")
    customer = dict(row)
    company, taken = customer.pop("_company"), customer.pop("_taken")
    if taken:
        raise reject(ErrorCode.CONFLICT, f"order {order_id} already exists")
    if ctx.principal.role == "salesperson" and customer["salesperson_id"] != ctx.principal.user_id:
        raise reject(ErrorCode.FORBIDDEN, f"customer {customer_id} is not assigned to you")
    return customer, company


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
    lines = parse_lines(args["lines"], need_price=False)  # stored in the device's order
    customer, company = await order_customer(ctx, args["customer_id"], order_id)
    ids = sorted(line["product_id"] for line in lines)
    branch_id = ctx.principal.attrs.get("branch_id")
    levels, price_of = await lock_lines(ctx, branch_id, ids, customer["pricelist_id"])
    for line in lines:
        price = price_of.get(line["product_id"])
        if price is None:
            raise reject(ErrorCode.NOT_FOUND, f"product {line['product_id']} has no price valid at {ctx.at}")
        if "price" in line and line["price"] != price:
            raise reject(ErrorCode.PRICE_CHANGED,
                         f"product {line['product_id']} cost {price} when the order was taken, not {line['price']}")
        line["price"] = price
        line["amount"] = price * line["qty"]
    total = sum(line["amount"] for line in lines)
    if customer["balance"] + total > customer["credit_limit"]:
        raise reject(ErrorCode.CREDIT_LIMIT_EXCEEDED,
                     f"order total {total} would take the balance {customer['balance']} over the credit limit "
                     f"{customer['credit_limit']} {customer['currency']}")
    by_product = sorted(lines, key=lambda item: item["product_id"])
    for line in by_product:
        level = levels.get(line["product_id"])
        available = 0 if level is None else level["on_hand"] - level["reserved"]
        if available < line["qty"]:
            raise reject(ErrorCode.INSUFFICIENT_STOCK,
                         f"product {line['product_id']}: {available} available, {line['qty']} ordered")
    await ctx.changes.update_rows(stock, [
        (levels[line["product_id"]], {"reserved": levels[line["product_id"]]["reserved"] + line["qty"]})
        for line in by_product])
    await ctx.changes.update_rows(customers, [(customer, {"balance": customer["balance"] + total})])
    number, invoice_number = await next_numbers(ctx, ("order", "SO"), invoices.SERIES)
    order = {
        "id": order_id, "number": number, "customer_id": customer["id"],
        "salesperson_id": ctx.principal.user_id, "branch_id": branch_id, "status": "confirmed",
        "lines": lines, "total": total, "currency": customer["currency"], "note": args.get("note"),
        "taken_at": ctx.at, "created_at": ctx.now,
    }
    await ctx.changes.append(orders, [order])
    # pending invoice, confirmation notice, jobs after commit
    await invoices.order_created(ctx, order, customer, company, invoice_number)
    return {"order_id": order_id, "number": order["number"], "total": total, "currency": customer["currency"]}


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
    await ctx.changes.append(payments, [{
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
    await ctx.changes.append(visits, [{
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
