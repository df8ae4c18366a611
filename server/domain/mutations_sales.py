"""The POS mutation: a completed sale is a fact, never refused for stock."""

from __future__ import annotations

from typing import Any

from sync.errors import ErrorCode
from sync.push import MutationContext
from sync.schema import Registry

from .mutations import check_at, check_uuid, ensure_new, lock_lines, next_numbers, parse_lines, reject
from . import invoices
from .tables import sales, stock

PAYMENT_METHODS = ("cash", "card", "voucher", "account")


async def sale_complete(ctx: MutationContext, args: dict[str, Any]) -> dict[str, Any]:
    """Record a sale the shop already made: stock drops by the sold quantities and may go
    negative, which flags the stock row for a count instead of refusing the sale."""
    sale_id = check_uuid(args["id"])
    check_at(ctx)
    lines = parse_lines(args["lines"], need_price=True)
    if args["payment_method"] not in PAYMENT_METHODS:
        raise reject(ErrorCode.INVALID_ARGS, f"`payment_method` is one of {', '.join(PAYMENT_METHODS)}")
    await ensure_new(ctx, sales, sale_id)
    branch_id = ctx.principal.attrs.get("branch_id")
    if branch_id is None:
        raise reject(ErrorCode.FORBIDDEN, "this terminal is not assigned to a branch")
    ids = sorted(line["product_id"] for line in lines)
    levels, _ = await lock_lines(ctx, branch_id, ids, None)  # NOT_FOUND for an unknown or inactive product
    flagged, fresh, changed = [], [], []
    for line in sorted(lines, key=lambda item: item["product_id"]):
        line["amount"] = line["price"] * line["qty"]
        level = levels.get(line["product_id"])
        if level is None:  # never stocked here: the sale still happened
            on_hand = -line["qty"]
            fresh.append({"branch_id": branch_id, "product_id": line["product_id"],
                          "on_hand": on_hand, "reserved": 0, "negative": True})
        else:
            on_hand = level["on_hand"] - line["qty"]
            changed.append((level, {"on_hand": on_hand, "negative": on_hand < 0}))
        if on_hand < 0:
            flagged.append(line["product_id"])
    if fresh:
        await ctx.changes.insert(stock, fresh)
    await ctx.changes.update_rows(stock, changed)
    number, invoice_number = await next_numbers(ctx, ("sale", "POS"), invoices.SERIES)
    sale = {
        "id": sale_id, "number": number, "terminal_id": ctx.principal.user_id,
        "branch_id": branch_id, "customer_id": args.get("customer_id"), "lines": lines,
        "total": sum(line["amount"] for line in lines), "currency": ctx.principal.attrs.get("currency", "EUR"),
        "payment_method": args["payment_method"], "sold_at": ctx.at,
    }
    await ctx.changes.append(sales, [sale])
    await invoices.sale_completed(ctx, sale, invoice_number)  # pending invoice (receipt), jobs after commit
    return {"sale_id": sale_id, "number": sale["number"], "total": sale["total"], "negative_stock": flagged}


def register(registry: Registry) -> None:
    registry.mutation("sale.complete", roles=["pos"],
                      args={"id": "str", "lines": "list", "payment_method": "str",
                            "customer_id": "id?"})(sale_complete)
