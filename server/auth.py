"""Bearer tokens (JWT, HS256 or RS256) and the principal they name."""

from __future__ import annotations

import time

import jwt
import sqlalchemy as sa

from sync.errors import AuthError, ErrorCode, RevokedError
from sync.schema import MAX_ID, Principal
from sync.storage import Database, devices

from .config import Settings
from .domain.tables import branches, tenants, users

ROLES = ("salesperson", "pos", "admin")


class TokenService:
    """Issues and verifies tokens with the configured key."""

    def __init__(self, settings: Settings) -> None:
        self.ttl = settings.token_ttl_s
        if settings.jwt_public_key:
            self.algorithm, self.verify_key = "RS256", settings.jwt_public_key
            self.sign_key = settings.jwt_private_key
        else:
            self.algorithm, self.verify_key = "HS256", settings.jwt_secret
            self.sign_key = settings.jwt_secret

    def issue(self, *, user_id: int, tenant_id: int, role: str, ttl: int | None = None) -> str:
        if self.sign_key is None:
            raise RuntimeError("RS256 is configured without FIELDSYNC_JWT_PRIVATE_KEY: tokens are issued elsewhere")
        now = int(time.time())
        claims = {"sub": str(user_id), "tid": tenant_id, "role": role, "iat": now, "exp": now + (self.ttl if ttl is None else ttl)}
        return jwt.encode(claims, self.sign_key, algorithm=self.algorithm)

    def verify(self, token: str) -> dict:
        try:
            claims = jwt.decode(token, self.verify_key, algorithms=[self.algorithm],
                                options={"require": ["exp", "sub", "tid", "role"]})
        except jwt.ExpiredSignatureError:
            raise AuthError(ErrorCode.AUTH_INVALID, "the token has expired; sign in again") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(ErrorCode.AUTH_INVALID, f"the token is not valid: {exc}") from None
        if (claims["role"] not in ROLES or not isinstance(claims["tid"], int) or not 0 < claims["tid"] <= MAX_ID
                or not str(claims["sub"]).isdigit() or not 0 < int(claims["sub"]) <= MAX_ID):
            raise AuthError(ErrorCode.AUTH_INVALID, "the token's claims are malformed")
        return claims


def bearer(header: str | None) -> str:
    if not header:
        raise AuthError(ErrorCode.AUTH_REQUIRED, "send `Authorization: Bearer <token>`")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(ErrorCode.AUTH_INVALID, "the Authorization header must be `Bearer <token>`")
    return token.strip()


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


async def switched_off(db: Database, tenant_id: int, pairs: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Of these ``(client_id, user_id)`` pairs of one tenant, those whose device was revoked or
    whose user was deactivated: what a revocation notice says, re-read from the database."""
    clients = sorted({client for client, _ in pairs})
    people = sorted({user for _, user in pairs})
    async with db.read() as conn:
        revoked = set((await conn.execute(sa.select(devices.c.client_id).where(
            devices.c.tenant_id == tenant_id, devices.c.client_id.in_(clients), devices.c.revoked_at.is_not(None),
        ))).scalars())
        inactive = set((await conn.execute(sa.select(users.c.id).where(
            users.c.tenant_id == tenant_id, users.c.id.in_(people), users.c.active.is_(False),
        ))).scalars())
    return {(client, user) for client, user in pairs if client in revoked or user in inactive}
