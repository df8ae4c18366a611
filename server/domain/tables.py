"""Tables of the field-sales / POS domain. Every row carries its tenant.

Money is integer minor units with an ISO currency code; times are ms since the epoch.
Rows made on devices (orders, sales, payments, visits) have device-made UUID keys.

Keys are unique per tenant: device-made UUIDs and the ids derived from them or from
integer ids (invoices ``inv-<order id>``, dashboards ``user:<id>``) are keyed by
``(tenant_id, id)``, so one tenant can neither collide with nor learn of another's. The
integer ids of the back-office tables are still global (the database assigns them).
A column naming a row of another table says so with :func:`ref`; the admin API checks
that such a value names a row of the writer's tenant.
"""

from __future__ import annotations

import sqlalchemy as sa

#: The domain's own tables, migrated by its own chain (server/domain/migrations), apart
#: from fieldsync's (sync.storage.metadata, server/migrations).
metadata = sa.MetaData()

TIME = {"wire": "time"}
MONEY = {"wire": "money"}


def _tenant() -> sa.Column:
    return sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False)


def tenant_key(table: str) -> sa.PrimaryKeyConstraint:
    """The key of a table whose ids are unique per tenant (named as PostgreSQL names it)."""
    return sa.PrimaryKeyConstraint("tenant_id", "id", name=f"{table}_pkey")


def ref(table: str) -> dict[str, str]:
    """``info`` of a column naming a row of ``table`` in the same tenant. Not a database
    foreign key: integer ids are global, and such a key could not say "of this tenant"."""
    return {"ref": table}


tenants = sa.Table(
    "tenants", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("slug", sa.String(40), nullable=False, unique=True),
    sa.Column("name", sa.String(120), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
)

branches = sa.Table(
    "branches", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _tenant(),
    sa.Column("name", sa.String(120), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # warehouse | shop
    sa.Column("pricelist_id", sa.Integer, info=ref("pricelists")),  # what a POS terminal of this branch sells at
    sa.Column("address", sa.String(200)),
)

users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _tenant(),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("name", sa.String(120), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # salesperson | pos | admin
    sa.Column("branch_id", sa.Integer, info=ref("branches")),  # salesperson: their warehouse; pos: their shop
    sa.Column("month_target", sa.BigInteger, info=MONEY),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.UniqueConstraint("tenant_id", "username", name="uq_users_username"),
)

pricelists = sa.Table(
    "pricelists", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _tenant(),
    sa.Column("name", sa.String(80), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
)

customers = sa.Table(
    "customers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _tenant(),
    sa.Column("name", sa.String(160), nullable=False),
    sa.Column("contact_name", sa.String(120)),
    sa.Column("phone", sa.String(40)),
    sa.Column("email", sa.String(120)),
    sa.Column("address", sa.String(200)),
    sa.Column("city", sa.String(80)),
    sa.Column("salesperson_id", sa.Integer, info=ref("users")),
    sa.Column("branch_id", sa.Integer, info=ref("branches")),
    sa.Column("pricelist_id", sa.Integer, nullable=False, info=ref("pricelists")),
    sa.Column("credit_limit", sa.BigInteger, nullable=False, info=MONEY),
    sa.Column("balance", sa.BigInteger, nullable=False, server_default="0", info=MONEY),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("field_versions", sa.JSON),
    sa.Index("ix_customers_salesperson", "tenant_id", "salesperson_id"),
    sa.Index("ix_customers_branch", "tenant_id", "branch_id"),
)

products = sa.Table(
    "products", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _tenant(),
    sa.Column("sku", sa.String(40), nullable=False),
    sa.Column("name", sa.String(160), nullable=False),
    sa.Column("category", sa.String(60), nullable=False),
    sa.Column("unit", sa.String(12), nullable=False),
    sa.Column("barcode", sa.String(20)),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Index("ix_products_tenant", "tenant_id", "id"),
)

prices = sa.Table(
    "prices", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _tenant(),
    sa.Column("pricelist_id", sa.Integer, nullable=False, info=ref("pricelists")),
    sa.Column("product_id", sa.Integer, nullable=False, info=ref("products")),
    sa.Column("amount", sa.BigInteger, nullable=False, info=MONEY),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("valid_from", sa.BigInteger, nullable=False, info=TIME),
    sa.Column("valid_to", sa.BigInteger, info=TIME),  # exclusive; null = open-ended
    sa.Index("ix_prices_pricelist", "tenant_id", "pricelist_id", "product_id"),
)

stock = sa.Table(
    "stock", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    _tenant(),
    sa.Column("branch_id", sa.Integer, nullable=False, info=ref("branches")),
    sa.Column("product_id", sa.Integer, nullable=False, info=ref("products")),
    sa.Column("on_hand", sa.Integer, nullable=False),
    sa.Column("reserved", sa.Integer, nullable=False, server_default="0"),
    sa.Column("negative", sa.Boolean, nullable=False, server_default=sa.false()),  # flagged for a stock count
    sa.UniqueConstraint("tenant_id", "branch_id", "product_id", name="uq_stock_branch_product"),
)

orders = sa.Table(
    "orders", metadata,
    sa.Column("id", sa.String(36)),
    _tenant(),
    sa.Column("number", sa.String(20), nullable=False),
    sa.Column("customer_id", sa.Integer, nullable=False, info=ref("customers")),
    sa.Column("salesperson_id", sa.Integer, nullable=False, info=ref("users")),
    sa.Column("branch_id", sa.Integer, nullable=False, info=ref("branches")),
    sa.Column("status", sa.String(16), nullable=False),  # confirmed | shipped | delivered | cancelled
    sa.Column("lines", sa.JSON, nullable=False),  # [{product_id, qty, price, amount}]
    sa.Column("total", sa.BigInteger, nullable=False, info=MONEY),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("taken_at", sa.BigInteger, nullable=False, info=TIME),
    sa.Column("created_at", sa.BigInteger, nullable=False, info=TIME),
    sa.Index("ix_orders_salesperson", "tenant_id", "salesperson_id", "taken_at"),
    tenant_key("orders"),
)

sales = sa.Table(
    "sales", metadata,
    sa.Column("id", sa.String(36)),
    _tenant(),
    sa.Column("number", sa.String(20), nullable=False),
    sa.Column("terminal_id", sa.Integer, nullable=False, info=ref("users")),
    sa.Column("branch_id", sa.Integer, nullable=False, info=ref("branches")),
    sa.Column("customer_id", sa.Integer, info=ref("customers")),
    sa.Column("lines", sa.JSON, nullable=False),
    sa.Column("total", sa.BigInteger, nullable=False, info=MONEY),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("payment_method", sa.String(16), nullable=False),
    sa.Column("sold_at", sa.BigInteger, nullable=False, info=TIME),
    sa.Index("ix_sales_terminal", "tenant_id", "terminal_id", "sold_at"),
    tenant_key("sales"),
)

payments = sa.Table(
    "payments", metadata,
    sa.Column("id", sa.String(36)),
    _tenant(),
    sa.Column("customer_id", sa.Integer, nullable=False, info=ref("customers")),
    sa.Column("salesperson_id", sa.Integer, nullable=False, info=ref("users")),
    sa.Column("amount", sa.BigInteger, nullable=False, info=MONEY),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("reference", sa.String(80)),
    sa.Column("paid_at", sa.BigInteger, nullable=False, info=TIME),
    sa.Index("ix_payments_salesperson", "tenant_id", "salesperson_id"),
    tenant_key("payments"),
)

visits = sa.Table(
    "visits", metadata,
    sa.Column("id", sa.String(36)),
    _tenant(),
    sa.Column("customer_id", sa.Integer, nullable=False, info=ref("customers")),
    sa.Column("salesperson_id", sa.Integer, nullable=False, info=ref("users")),
    sa.Column("checked_in_at", sa.BigInteger, nullable=False, info=TIME),
    sa.Column("lat", sa.Float),
    sa.Column("lon", sa.Float),
    sa.Column("note", sa.Text),
    sa.Index("ix_visits_salesperson", "tenant_id", "salesperson_id"),
    tenant_key("visits"),
)

invoices = sa.Table(
    "invoices", metadata,
    sa.Column("id", sa.String(40)),  # "inv-<order or sale id>"
    _tenant(),
    sa.Column("number", sa.String(20), nullable=False),
    sa.Column("order_id", sa.String(36), info=ref("orders")),
    sa.Column("sale_id", sa.String(36), info=ref("sales")),
    sa.Column("salesperson_id", sa.Integer, info=ref("users")),
    sa.Column("branch_id", sa.Integer, nullable=False, info=ref("branches")),
    sa.Column("total", sa.BigInteger, nullable=False, info=MONEY),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),  # pending | ready | failed
    sa.Column("url", sa.String(200)),
    sa.Column("created_at", sa.BigInteger, nullable=False, info=TIME),
    sa.Index("ix_invoices_salesperson", "tenant_id", "salesperson_id"),
    sa.Index("ix_invoices_branch", "tenant_id", "branch_id"),
    tenant_key("invoices"),
)

dashboards = sa.Table(
    "dashboards", metadata,
    sa.Column("id", sa.String(40)),  # "user:<id>" | "branch:<id>"
    _tenant(),
    sa.Column("kind", sa.String(8), nullable=False),  # user | branch
    sa.Column("user_id", sa.Integer, info=ref("users")),
    sa.Column("branch_id", sa.Integer, info=ref("branches")),
    sa.Column("today_total", sa.BigInteger, nullable=False, info=MONEY),
    sa.Column("month_total", sa.BigInteger, nullable=False, info=MONEY),
    sa.Column("month_target", sa.BigInteger, info=MONEY),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("top_products", sa.JSON, nullable=False),  # [{product_id, name, qty, total}]
    sa.Column("pending_approvals", sa.Integer, nullable=False, server_default="0"),
    sa.Column("updated_at", sa.BigInteger, nullable=False, info=TIME),
    tenant_key("dashboards"),
)

# Per-tenant number series (SO-000123): keyed by tenant already.
counters = sa.Table(
    "counters", metadata,
    sa.Column("tenant_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(20), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

from . import job_tables  # noqa: E402,F401  (the background jobs' tables join the same metadata)
