"""Who a token names in the bundled domain: its ``users`` row (role, branch, pricelist,
currency), and which users are switched off."""

from __future__ import annotations

import sqlalchemy as sa

from sync.errors import AuthError, ErrorCode, RevokedError
from sync.schema import Principal
from sync.storage import Database

from .tables import branches, tenants, users

ROLES = ("salesperson", "pos", "admin")


async def principal_for(db: Database, claims: dict) -> Principal:
    """Resolve the token's user from the database: role, branch, pricelist, currency."""
    query = (
        sa.select(users.c.id, users.c.tenant_id, users.c.role, users.c.active, users.c.username,
                  users.c.branch_id, branches.c.pricelist_id, tenants.c.currency)
        .join(tenants, tenants.c.id == users.c.tenant_id)
        .outerjoin(branches, branches.c.id == users.c.branch_id)
        .where(users.c.id == int(claims["sub"]), users.c.tenant_id == claims["tid"])
    )
    async with db.read() as conn:
        row = (await conn.execute(query)).first()
    if row is None or row.role != claims["role"]:
        raise AuthError(ErrorCode.AUTH_INVALID, "the token names an unknown user")
    if not row.active:
        raise RevokedError("this user was deactivated")
    return Principal(
        tenant_id=row.tenant_id, user_id=row.id, role=row.role,
        attrs={"branch_id": row.branch_id, "pricelist_id": row.pricelist_id, "currency": row.currency,
               "username": row.username},
    )


async def inactive_users(db: Database, tenant_id: int, user_ids: list[int]) -> set[int]:
    async with db.read() as conn:
        return set((await conn.execute(sa.select(users.c.id).where(
            users.c.tenant_id == tenant_id, users.c.id.in_(user_ids), users.c.active.is_(False),
        ))).scalars())
