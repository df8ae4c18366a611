"""The datasets devices hold, declared once each and served generically.

These replace the per-screen BFF endpoints: a salesperson's app reads its customers,
prices, stock and orders from its own local copy.
"""

from __future__ import annotations

import sqlalchemy as sa

from sync.schema import Dataset, Principal, Registry, Scope
from sync.storage import mutation_ledger

from .job_tables import documents
from .tables import (
    branches, customers, dashboards, invoices, orders, payments, prices, products, sales, stock, users, visits,
)

DAY_MS = 86_400_000


def me(p: Principal) -> list[int]:
    return [p.user_id]


def my_branch(p: Principal) -> list[int]:
    return [p.attrs["branch_id"]] if p.attrs.get("branch_id") is not None else []


def my_customers_pricelists(p: Principal) -> sa.Select:
    return (
        sa.select(customers.c.pricelist_id)
        .where(customers.c.tenant_id == p.tenant_id, customers.c.salesperson_id == p.user_id)
        .distinct()
    )


def my_branch_pricelist(p: Principal) -> list[int]:
    return [p.attrs["pricelist_id"]] if p.attrs.get("pricelist_id") is not None else []


OWN = Scope(partition="salesperson_id", values=me)
BRANCH = Scope(partition="branch_id", values=my_branch)


def register(registry: Registry) -> None:
    for table in (branches, users, customers, products, prices, stock, orders, sales, payments, visits,
                  invoices, dashboards, mutation_ledger, documents):
        registry.table(table, versioned=("contact_name", "phone", "email", "address", "city")
                       if table is customers else ())
    for dataset in DATASETS:
        registry.dataset(dataset)


DATASETS = [
    Dataset(
        "dashboard", dashboards,
        ("id", "kind", "today_total", "month_total", "month_target", "currency", "top_products",
         "pending_approvals", "updated_at"),
        {"salesperson": Scope(partition="user_id", values=me, where={"kind": "user"}),
         "pos": Scope(partition="branch_id", values=my_branch, where={"kind": "branch"})},
        priority=5,
    ),
    Dataset(
        "customers", customers,
        ("id", "name", "contact_name", "phone", "email", "address", "city", "pricelist_id",
         "credit_limit", "balance", "currency", "version"),
        {"salesperson": OWN, "pos": BRANCH},
        priority=10,
    ),
    Dataset(
        "rejections", mutation_ledger,
        ("id", "client_id", "mutation_id", "name", "args", "code", "message", "at", "applied_at"),
        {role: Scope(partition="user_id", values=me, where={"status": "rejected"}) for role in ("salesperson", "pos")}
        | {"admin": Scope(where={"status": "rejected"})},
        priority=15,
    ),
    Dataset(
        "prices", prices,
        ("id", "pricelist_id", "product_id", "amount", "currency", "valid_from", "valid_to"),
        {"salesperson": Scope(partition="pricelist_id", values=my_customers_pricelists),
         "pos": Scope(partition="pricelist_id", values=my_branch_pricelist)},
        priority=20,
    ),
    Dataset(
        "stock", stock,
        ("id", "product_id", "on_hand", "reserved", "negative"),
        {"salesperson": BRANCH, "pos": BRANCH},
        priority=30, hot=True,
    ),
    Dataset(
        "orders", orders,
        ("id", "number", "customer_id", "status", "lines", "total", "currency", "note", "taken_at"),
        {"salesperson": Scope(partition="salesperson_id", values=me, window=("taken_at", 90 * DAY_MS))},
        priority=40,
    ),
    Dataset(
        "sales", sales,
        ("id", "number", "customer_id", "lines", "total", "currency", "payment_method", "sold_at"),
        {"pos": Scope(partition="terminal_id", values=me, window=("sold_at", 7 * DAY_MS))},
        priority=40,
    ),
    Dataset(
        "payments", payments,
        ("id", "customer_id", "amount", "currency", "method", "reference", "paid_at"),
        {"salesperson": OWN},
        priority=50,
    ),
    Dataset(
        "visits", visits,
        ("id", "customer_id", "checked_in_at", "lat", "lon", "note"),
        {"salesperson": OWN},
        priority=50,
    ),
    Dataset(
        "invoices", invoices,
        ("id", "number", "order_id", "sale_id", "total", "currency", "status", "url", "created_at"),
        {"salesperson": OWN, "pos": BRANCH},
        priority=60,
    ),
    Dataset(
        "documents", documents,  # reports asked for with report.request, made by a job
        ("id", "kind", "params", "title", "status", "url", "requested_at", "ready_at"),
        {role: Scope(partition="user_id", values=me) for role in ("salesperson", "pos")},
        priority=70,
    ),
    Dataset(
        "catalog", products,
        ("id", "sku", "name", "category", "unit", "barcode"),
        {role: Scope(where={"active": True}) for role in ("salesperson", "pos")},
        priority=90, hot=True,
    ),
]
