"""Who a token names in the bundled domain: its ``users`` row (role, branch, pricelist,
currency); which users are switched off; the directory the admin endpoints read."""

from __future__ import annotations

import sqlalchemy as sa

from sync.errors import AuthError, ErrorCode, RevokedError
from sync.schema import Principal
from sync.storage import Database

from ..plugin import Directory, User
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
    async with db.peek() as conn:
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


async def directory_users(db: Database, tenant_id: int, user_ids: list[int]) -> dict[int, User]:
    """The tenant's users among ``user_ids``: what the device list shows, and whom a device
    may be moved to."""
    async with db.read() as conn:
        rows = (await conn.execute(sa.select(users.c.id, users.c.username, users.c.role, users.c.active).where(
            users.c.tenant_id == tenant_id, users.c.id.in_(user_ids)))).all()
    return {row.id: User(row.username, row.role, row.active) for row in rows}


async def tenant_of(db: Database, slug: str) -> int | None:
    async with db.read() as conn:
        return await conn.scalar(sa.select(tenants.c.id).where(tenants.c.slug == slug))


async def login(db: Database, tenant_slug: str, username: str) -> tuple[int, int, str] | None:
    async with db.read() as conn:
        found = (await conn.execute(sa.select(users.c.id, users.c.tenant_id, users.c.role).join(
            tenants, tenants.c.id == users.c.tenant_id,
        ).where(tenants.c.slug == tenant_slug, users.c.username == username))).first()
    return None if found is None else (found.id, found.tenant_id, found.role)


DIRECTORY = Directory(directory_users, tenant_of, login)
