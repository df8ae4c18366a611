"""The tables the bundled domain's back office writes (``POST /admin/{table}``,
``fieldsync import``), the columns it may set, and the domain's rules over them."""

from __future__ import annotations

from typing import Any

from ..plugin import Writable
from .order_status import check_status, write_statuses
from .principals import ROLES
from .tables import branches, customers, orders, prices, products, stock, users


def _known_role(row: dict[str, Any]) -> str | None:
    return None if row.get("role") in (None, *ROLES) else f"`role` is one of {', '.join(ROLES)}"


WRITABLE = {
    "products": Writable(products, ("id", "sku", "name", "category", "unit", "barcode", "active")),
    "prices": Writable(prices, ("id", "pricelist_id", "product_id", "amount", "currency", "valid_from", "valid_to")),
    "stock": Writable(stock, ("id", "branch_id", "product_id", "on_hand", "reserved", "negative")),
    "customers": Writable(customers, ("id", "name", "contact_name", "phone", "email", "address", "city",
                                      "salesperson_id", "branch_id", "pricelist_id", "credit_limit", "balance",
                                      "currency")),
    # A user's branch, role or switch decides what their sessions see.
    "users": Writable(users, ("id", "username", "name", "role", "branch_id", "month_target", "active"),
                      check=_known_role, rescope=True),
    "branches": Writable(branches, ("id", "name", "kind", "pricelist_id", "address"), rescope=True),
    # Statuses only, each move settling the order's stock and balance (order_status.py).
    "orders": Writable(orders, ("id", "status"), check=check_status, write=write_statuses),
}
