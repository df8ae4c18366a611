"""Bearer tokens (JWT, HS256 or RS256) and the principal they name."""

from __future__ import annotations

import re
import time

import jwt

from sync.errors import AuthError, ErrorCode
from sync.schema import MAX_ID
from sync.devices import Credential, owners
from sync.storage import Database

from .config import Settings
from .plugin import InactiveUsers


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
    if not isinstance(claims["role"], str) or not 1 <= len(claims["role"]) <= 32:
        return "`role` must be a role name"  # which roles exist is the domain's (its principal resolver)
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


async def switched_off(db: Database, inactive_users: InactiveUsers, tenant_id: int,
                       pairs: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Of these ``(client_id, user_id)`` pairs of one tenant, those whose device was revoked
    or moved to another user, or whose user the domain says is switched off: what a
    revocation notice says, re-read from the database."""
    devices = await owners(db, tenant_id, sorted({client for client, _ in pairs}))
    inactive = await inactive_users(db, tenant_id, sorted({user for _, user in pairs}))
    return {(client, user) for client, user in pairs
            if user in inactive or (client in devices and devices[client] != (user, False))}
