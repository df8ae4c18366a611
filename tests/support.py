"""A small, exact world for tests: one tenant (plus an intruder tenant), known ids."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from server.admin import apply
from server.app import Services
from server.domain.backoffice import WRITABLE
from server.domain.tables import (
    branches, customers, pricelists, prices, products, stock, tenants, users,
)
from sync.changes import now_ms, write_changes

DAY = 86_400_000


@dataclass
class World:
    tenant_id: int = 1
    other_tenant_id: int = 2
    warehouse: int = 1
    shop: int = 2
    sales1: int = 11
    sales2: int = 12
    pos1: int = 21
    admin: int = 31
    intruder: int = 41  # a salesperson of the other tenant
    wholesale: int = 1
    retail: int = 2


async def seed(services: Services, *, products_count: int = 20) -> World:
    """Tenant 1 with two salespeople (customers 1-4 are sales1's, 5-6 sales2's), a POS
    terminal, an admin, ``products_count`` products priced and stocked; tenant 2 with one user."""
    w, now = World(), now_ms()
    db, registry = services.db, services.registry
    async with db.write() as conn:
        await conn.execute(sa.insert(tenants), [
            {"id": 1, "slug": "acme", "name": "Acme Trading", "currency": "EUR"},
            {"id": 2, "slug": "other", "name": "Other Co", "currency": "EUR"},
        ])
        await conn.execute(sa.insert(pricelists), [
            {"id": 1, "tenant_id": 1, "name": "Wholesale", "currency": "EUR"},
            {"id": 2, "tenant_id": 1, "name": "Retail", "currency": "EUR"},
        ])
    async with write_changes(db, registry, 1) as ch:
        await ch.insert(branches, [
            {"id": w.warehouse, "name": "Central", "kind": "warehouse"},
            {"id": w.shop, "name": "Shop", "kind": "shop", "pricelist_id": w.retail},
        ])
        await ch.insert(users, [
            {"id": w.sales1, "username": "sales1", "name": "Ana", "role": "salesperson", "branch_id": w.warehouse},
            {"id": w.sales2, "username": "sales2", "name": "Ben", "role": "salesperson", "branch_id": w.warehouse},
            {"id": w.pos1, "username": "pos1", "name": "Till 1", "role": "pos", "branch_id": w.shop},
            {"id": w.admin, "username": "admin", "name": "Office", "role": "admin"},
        ])
        await ch.insert(products, [
            {"id": i, "sku": f"SKU-{i:04d}", "name": f"Product {i}", "category": "Hardware", "unit": "pcs",
             "barcode": f"{4000000000000 + i}", "active": True}
            for i in range(1, products_count + 1)
        ])
        await ch.insert(prices, [
            {"id": pl * 1000 + i, "pricelist_id": pl, "product_id": i, "amount": 100 * i * (2 if pl == 2 else 1),
             "currency": "EUR", "valid_from": now - 30 * DAY, "valid_to": None}
            for pl in (1, 2) for i in range(1, products_count + 1)
        ])
        await ch.insert(stock, [
            {"id": b * 1000 + i, "branch_id": b, "product_id": i, "on_hand": 50, "reserved": 0, "negative": False}
            for b in (w.warehouse, w.shop) for i in range(1, products_count + 1)
        ])
        await ch.insert(customers, [
            {"id": c, "name": f"Customer {c}", "salesperson_id": w.sales1 if c <= 4 else w.sales2,
             "branch_id": w.shop, "pricelist_id": w.wholesale, "credit_limit": 1_000_000, "balance": 0,
             "currency": "EUR", "version": 0, "field_versions": {}}
            for c in range(1, 7)
        ])
    async with write_changes(db, registry, 2) as ch:
        await ch.insert(users, [{"id": w.intruder, "username": "sales1", "name": "Eve", "role": "salesperson"}])
    return w


def token(services: Services, user_id: int, role: str, tenant_id: int = 1, ttl: int | None = None) -> str:
    return services.tokens.issue(user_id=user_id, tenant_id=tenant_id, role=role, ttl=ttl)


async def admin_write(db, registry, tenant_id: int, table: str, upsert: list, delete: list) -> dict[str, int]:
    """A back-office batch to the bundled domain's ``table``, as ``POST /admin/{table}`` applies it."""
    return await apply(db, registry, tenant_id, WRITABLE[table], upsert, delete)
