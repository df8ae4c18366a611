"""Order statuses from the office (``POST /admin/orders``, ``fieldsync import orders``).

An order is taken ``confirmed`` (``order.create`` reserved its stock and raised the
customer's balance); the office moves it on, and each step settles what the order held:

* ``shipped``: the goods left the branch. Each line's quantity leaves ``on_hand`` and
  ``reserved`` of the branch's stock row.
* ``cancelled`` (from ``confirmed`` only): the reservation is released and the total
  taken off the customer's balance.
* ``delivered`` (from ``shipped``): nothing more to settle.

Setting the status an order already has changes nothing, so a batch sent twice (an
integration retrying) settles once. Any other move is refused, and the batch with it.
Every write goes through the change set: the salesperson's devices see the order's new
status, the stock and the balance in the same change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from sync.changes import ChangeSet
from sync.errors import BadRequest

from .tables import customers, orders, stock

#: What an order may become, from each status.
NEXT: dict[str, tuple[str, ...]] = {"confirmed": ("shipped", "cancelled"), "shipped": ("delivered",)}
STATUSES = ("confirmed", "shipped", "delivered", "cancelled")


def check_status(row: dict[str, Any]) -> str | None:
    """The per-row check of the batch (before any read)."""
    return None if row.get("status") in STATUSES else f"`status` is one of {', '.join(STATUSES)}"


async def write_statuses(changes: ChangeSet, rows: list[dict[str, Any]], where: Callable[[int], str]) -> None:
    """Move the batch's orders to their new statuses, rows in order (one order may move
    twice in a batch: shipped, then delivered), and settle what each move releases."""
    found = await changes.locked_rows(orders, [row["id"] for row in rows])
    now = {order_id: order["status"] for order_id, order in found.items()}  # as the batch goes
    moves: list[tuple[dict[str, Any], str]] = []
    for index, row in enumerate(rows):
        if row["id"] not in found:
            raise BadRequest(f"{where(index)}: no order {row['id']!r} in this tenant")
        status, was = row["status"], now[row["id"]]
        if status == was:
            continue
        if status not in NEXT.get(was, ()):
            raise BadRequest(f"{where(index)}: an order {was} cannot become {status}")
        moves.append((found[row["id"]], status))
        now[row["id"]] = status
    if moves:
        await _settle(changes, moves)
        moved = {order["id"] for order, _ in moves}  # each written once, with its last status
        await changes.update_rows(orders, [(found[i], {"status": now[i]}) for i in sorted(moved)])


async def _settle(changes: ChangeSet, moves: list[tuple[dict[str, Any], str]]) -> None:
    """Stock and balances: each row read (and locked) once, written once."""
    shipped, released, refunds = {}, {}, {}
    for order, status in moves:
        for line in order["lines"]:
            place = (order["branch_id"], line["product_id"])
            if status == "shipped":
                shipped[place] = shipped.get(place, 0) + line["qty"]
            elif status == "cancelled":
                released[place] = released.get(place, 0) + line["qty"]
        if status == "cancelled":
            refunds[order["customer_id"]] = refunds.get(order["customer_id"], 0) + order["total"]
    # Customers, then stock rows by product: the order.create handler's lock order.
    buyers = await changes.locked_rows(customers, refunds)
    levels = await _stock_rows(changes, set(shipped) | set(released))
    await changes.update_rows(customers, [(buyers[c], {"balance": buyers[c]["balance"] - refunds[c]})
                                          for c in sorted(refunds) if c in buyers])
    # A stock row the office deleted since holds no reservation to settle.
    await changes.update_rows(stock, [
        (level, {"on_hand": level["on_hand"] - shipped.get(place, 0),
                 "reserved": max(0, level["reserved"] - shipped.get(place, 0) - released.get(place, 0))})
        for place, level in sorted(levels.items())])


async def _stock_rows(changes: ChangeSet, places: set[tuple[int, int]]) -> dict[tuple[int, int], dict[str, Any]]:
    if not places:
        return {}
    query = changes.db.locking(sa.select(stock).where(
        stock.c.tenant_id == changes.tenant_id,
        sa.tuple_(stock.c.branch_id, stock.c.product_id).in_(sorted(places)),
    ).order_by(stock.c.product_id, stock.c.branch_id))  # the handlers' lock order: by product
    return {(row["branch_id"], row["product_id"]): dict(row) for row in (await changes.conn.execute(query)).mappings()}
