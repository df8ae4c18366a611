"""Bearer tokens (JWT, HS256 or RS256) and the principal they name."""

from __future__ import annotations

import re
import time

import jwt
import sqlalchemy as sa

from sync.errors import AuthError, ErrorCode, RevokedError
from sync.schema import MAX_ID, Principal
from sync.devices import Credential, owners
from sync.storage import Database

from .config import Settings
from .domain.tables import branches, tenants, users

ROLES = ("salesperson", "pos", "admin")


_DIGITS = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)


class TokenService:
    """Issues and verifies tokens with the configured key."""

    def __init__(self, settings: Settings) -> None:
        self.ttl = settings.token_ttl_s
        self.leeway = settings.token_leeway_s
        if settings.jwt_public_key:
            self.algorithm, self.verify_key = "RS256", settings.jwt_public_key
            self.sign_key = settings.jwt_private_key
        else:
            self.algorithm, self.verify_key = "HS256", settings.jwt_secret
            self.sign_key = settings.jwt_secret

    def issue(self, *, user_id: int, tenant_id: int, role: str, ttl: int | None = None,
              device: str | None = None) -> str:
        """A token for the user; with ``device``, one that syncs only as that client_id."""
        if self.sign_key is None:
            raise RuntimeError("RS256 is configured without FIELDSYNC_JWT_PRIVATE_KEY: tokens are issued elsewhere")
        now = int(time.time())
        claims = {"sub": str(user_id), "tid": tenant_id, "role": role, "iat": now, "exp": now + (self.ttl if ttl is None else ttl)}
        if device is not None:
            claims["did"] = device
        return jwt.encode(claims, self.sign_key, algorithm=self.algorithm)

    def verify(self, token: str) -> dict:
        """The token's claims, checked for signature, time (``exp``, ``nbf``, ``iat``, each
        with the one configured leeway) and exactly the documented types."""
        try:
            claims = jwt.decode(token, self.verify_key, algorithms=[self.algorithm], leeway=self.leeway,
                                options={"require": ["exp", "sub", "tid", "role"]})
        except jwt.ExpiredSignatureError:
            raise AuthError(ErrorCode.AUTH_INVALID, "the token has expired; sign in again") from None
        except jwt.ImmatureSignatureError:
            raise AuthError(ErrorCode.AUTH_INVALID, "the token is not valid yet (`nbf` or `iat` is in the future)") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(ErrorCode.AUTH_INVALID, f"the token is not valid: {exc}") from None
        problem = _claims_problem(claims)
        if problem:
            raise AuthError(ErrorCode.AUTH_INVALID, f"the token's claims are malformed: {problem}")
        return claims


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _claims_problem(claims: dict) -> str | None:
    """What is wrong with the claims' types (docs/protocol.md section 3), or None."""
    sub, tid, did = claims["sub"], claims["tid"], claims.get("did")
    if not isinstance(sub, str) or not _DIGITS.fullmatch(sub) or int(sub) > MAX_ID:
        return f"`sub` must be a string of decimal digits, 1 to {MAX_ID}"
    if not _is_int(tid) or not 0 < tid <= MAX_ID:
        return f"`tid` must be an integer, 1 to {MAX_ID}"
    if claims["role"] not in ROLES:
        return f"`role` must be one of {', '.join(ROLES)}"
    for name in ("exp", "iat", "nbf"):
        if name in claims and not _is_int(claims[name]):
            return f"`{name}` must be an integer (seconds)"
    if did is not None and (not isinstance(did, str) or not 1 <= len(did) <= 128):
        return "`did` must be a client_id, 1 to 128 characters"
    return None


def credential_of(token: str, claims: dict) -> Credential:
    return Credential.of(token, claims["exp"], claims.get("did"))


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
    """Of these ``(client_id, user_id)`` pairs of one tenant, those whose device was revoked
    or moved to another user, or whose user was deactivated: what a revocation notice says,
    re-read from the database."""
    devices = await owners(db, tenant_id, sorted({client for client, _ in pairs}))
    people = sorted({user for _, user in pairs})
    async with db.read() as conn:
        inactive = set((await conn.execute(sa.select(users.c.id).where(
            users.c.tenant_id == tenant_id, users.c.id.in_(people), users.c.active.is_(False),
        ))).scalars())
    return {(client, user) for client, user in pairs
            if user in inactive or (client in devices and devices[client] != (user, False))}
