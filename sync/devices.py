"""The devices a tenant's users sync from: registration, ownership, liveness, revocation.

A device (``client_id``) belongs to the user who first registered it. Another user
presenting that ``client_id`` is refused and changes nothing of the owner's device row,
ledger or cursor; only an administrator moves a device to another user (:func:`move`),
which starts a fresh ledger namespace (``epoch``) and a full reset. Revoking a device also
refuses the last token it presented, whatever ``client_id`` that token comes with next.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from .changes import now_ms, write_changes
from .errors import AuthError, ErrorCode, RevokedError
from .schema import Principal, Registry
from .storage import Database, devices, log_head, mutation_ledger, revoked_tokens

_TOUCH_EVERY_MS = 30_000  # last_seen is for humans; do not write on every pull


@dataclass(frozen=True)
class Credential:
    """What the bearer token of a request says about the device it may be used from."""

    token_hash: str  # SHA-256 of the token: what a revocation refuses
    expires_at: int  # ms since the epoch
    device: str | None = None  # the only client_id a device-bound token may sync as

    @classmethod
    def of(cls, token: str, expires_s: int, device: str | None = None) -> Credential:
        return cls(hashlib.sha256(token.encode()).hexdigest(), expires_s * 1000, device)


def _not_owner(client_id: str) -> AuthError:
    return AuthError(ErrorCode.FORBIDDEN, f"device {client_id} belongs to another user; an admin can move it "
                                          f"to you (POST /admin/devices/{client_id}/enrol with user_id)")


async def touch(db: Database, principal: Principal, client_id: str, *, credential: Credential | None = None,
                max_devices: int | None = None, force: bool = False, app: str | None = None) -> int | None:
    """Register the device for ``principal`` or refresh ``last_seen``; returns when it was
    last (re-)enrolled (cursors older than that must start over), or None.

    Raises:
        AuthError: FORBIDDEN when the device belongs to another user, the token is bound
            to another device, or a new device would pass ``max_devices`` for the user.
        RevokedError: the device, or the device the token was last used from, was revoked.
    """
    if credential is not None and credential.device is not None and credential.device != client_id:
        raise AuthError(ErrorCode.FORBIDDEN, f"this token is bound to device {credential.device}, not {client_id}")
    async with db.peek() as conn:
        row = (await conn.execute(_LOOKUP, {"tenant": principal.tenant_id, "client": client_id,
                                            "token_hash": credential.token_hash if credential else ""})).first()
        if credential is not None and row is None:  # a new device: the token's check on its own
            await _check_token(conn, credential)
    if row is not None and row.revoked_on is not None:
        raise _token_revoked(row.revoked_on)
    if row is not None:
        if row.revoked_at is not None:
            raise RevokedError(f"device {client_id} was revoked; re-enrol it to sync again")
        if row.user_id != principal.user_id:
            raise _not_owner(client_id)
        fresh_token = credential is None or credential.token_hash == row.token_hash
        same_app = app is None or app == row.app_version
        fresh = now_ms() - row.last_seen < _TOUCH_EVERY_MS and row.retired_at is None
        if not force and fresh_token and same_app and fresh:
            return row.enrolled_at
    async with db.write() as conn:
        # A retired device coming back counts again, like a new one.
        if (row is None or row.retired_at is not None) and max_devices is not None:
            await _check_room(db, conn, principal, max_devices)
        return await _register(db, conn, principal, client_id, credential, app)


# The device, and whether the request's token was last used by a revoked device: what
# every pull and push asks, in one statement built once.
_LOOKUP = sa.select(
    devices.c.user_id, devices.c.last_seen, devices.c.revoked_at, devices.c.enrolled_at, devices.c.token_hash,
    devices.c.app_version, devices.c.retired_at,
    sa.select(revoked_tokens.c.client_id).where(revoked_tokens.c.token_hash == sa.bindparam("token_hash"))
    .scalar_subquery().label("revoked_on"),
).where(devices.c.tenant_id == sa.bindparam("tenant"), devices.c.client_id == sa.bindparam("client"))


async def _check_token(conn: AsyncConnection, credential: Credential) -> None:
    revoked_on = await conn.scalar(sa.select(revoked_tokens.c.client_id).where(
        revoked_tokens.c.token_hash == credential.token_hash))
    if revoked_on is not None:
        raise _token_revoked(revoked_on)


def _token_revoked(client_id: str) -> RevokedError:
    return RevokedError(f"this token was last used by device {client_id}, which was revoked; sign in again")


async def _check_room(db: Database, conn: AsyncConnection, principal: Principal, max_devices: int) -> None:
    """Refuse a new device past the user's cap. The lock makes two first registrations
    of one user count one after the other (SQLite writes are serialised already)."""
    await db.lock(conn, "devices", principal.tenant_id, principal.user_id)
    count = await conn.scalar(sa.select(sa.func.count()).select_from(devices).where(
        devices.c.tenant_id == principal.tenant_id, devices.c.user_id == principal.user_id,
        devices.c.revoked_at.is_(None), devices.c.retired_at.is_(None)))
    if count >= max_devices:
        raise AuthError(ErrorCode.FORBIDDEN, f"this user already syncs from {count} devices, the limit; "
                                             "an admin must revoke one first")


async def _register(db: Database, conn: AsyncConnection, principal: Principal, client_id: str,
                    credential: Credential | None, app: str | None) -> int | None:
    """Insert the device, or refresh it only while it is the principal's and not revoked: a
    concurrent registration by someone else, or a revocation, since the read wins."""
    now = now_ms()
    token = {} if credential is None else {"token_hash": credential.token_hash, "token_exp": credential.expires_at}
    if app is not None:
        token["app_version"] = app
    insert = db.insert(devices).values(
        tenant_id=principal.tenant_id, client_id=client_id, user_id=principal.user_id,
        first_seen=now, last_seen=now, **token,
    )
    upsert = insert.on_conflict_do_update(
        index_elements=[devices.c.tenant_id, devices.c.client_id],
        # A retired device is back: its data is as old as its retirement, so its cursor
        # starts over (enrolled now), and it is retired no more.
        set_={"last_seen": now, "retired_at": None, **token,
              "enrolled_at": sa.case((devices.c.retired_at.is_not(None), now), else_=devices.c.enrolled_at)},
        where=sa.and_(devices.c.user_id == principal.user_id, devices.c.revoked_at.is_(None)),
    ).returning(devices.c.enrolled_at)
    row = (await conn.execute(upsert)).first()
    if row is None:
        raise _not_owner(client_id)  # or revoked a moment ago: either way, not for this principal
    return row.enrolled_at


async def note_error(db: Database, principal: Principal, client_id: str, error: str) -> None:
    """Remember the last refusal or error a device met (``devices.last_error``: the device
    list shows it), e.g. ``CURSOR_EXPIRED`` or ``order.create: CREDIT_LIMIT``. Written only
    when it changes, and only to the principal's own device."""
    error = error[:40]
    async with db.write() as conn:
        await conn.execute(sa.update(devices).where(
            devices.c.tenant_id == principal.tenant_id, devices.c.client_id == client_id,
            devices.c.user_id == principal.user_id,
            sa.or_(devices.c.last_error.is_(None), devices.c.last_error != error),
        ).values(last_error=error))


async def acknowledge(db: Database, principal: Principal, client_id: str, seq: int) -> int:
    """The device says its data is stored up to ``seq`` (for lag monitoring); returns the
    tenant's log head, read in the same transaction, so the caller can tell the lag."""
    async with db.write() as conn:
        await conn.execute(sa.update(devices).where(
            devices.c.tenant_id == principal.tenant_id, devices.c.client_id == client_id,
            devices.c.user_id == principal.user_id,
        ).values(acked_seq=seq, last_seen=now_ms()))
        return await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == principal.tenant_id)) or 0


async def set_revoked(db: Database, tenant_id: int, client_id: str, revoked: bool) -> bool:
    """Revoke a device (and the last token it presented), or re-enrol it for the same user
    (its token works again; its next sync starts from a full reset).
    Returns False when the tenant has no such device."""
    now = now_ms()
    values = {"revoked_at": now} if revoked else {"revoked_at": None, "enrolled_at": now}
    where = (devices.c.tenant_id == tenant_id, devices.c.client_id == client_id)
    async with db.write() as conn:
        row = (await conn.execute(sa.update(devices).where(*where).values(values)
                                  .returning(devices.c.token_hash, devices.c.token_exp))).first()
        if row is None:
            return False
        if revoked and row.token_hash is not None:
            await conn.execute(db.insert(revoked_tokens).values(
                token_hash=row.token_hash, tenant_id=tenant_id, client_id=client_id, revoked_at=now,
                expires_at=row.token_exp or now,
            ).on_conflict_do_nothing(index_elements=[revoked_tokens.c.token_hash]))
        elif not revoked:
            await conn.execute(sa.delete(revoked_tokens).where(
                revoked_tokens.c.tenant_id == tenant_id, revoked_tokens.c.client_id == client_id))
    return True


async def move(db: Database, tenant_id: int, client_id: str, user_id: int) -> bool:
    """Give a device to another user (an admin's re-enrolment): a new ledger namespace, so
    the new owner's mutation ids start over, and a full reset of its datasets. Tokens the
    device was revoked with stay refused. Returns False when the tenant has no such device."""
    async with db.write() as conn:
        result = await conn.execute(sa.update(devices).where(
            devices.c.tenant_id == tenant_id, devices.c.client_id == client_id,
        ).values(user_id=user_id, epoch=devices.c.epoch + 1, last_mutation_id=0, enrolled_at=now_ms(),
                 revoked_at=None, acked_seq=None, last_error=None, token_hash=None, token_exp=None))
    return result.rowcount > 0


async def forget_expired_tokens(db: Database, now: int | None = None) -> int:
    """Drop revoked tokens past their expiry: they are refused by their ``exp`` anyway."""
    async with db.write() as conn:
        result = await conn.execute(sa.delete(revoked_tokens).where(
            revoked_tokens.c.expires_at < (now_ms() if now is None else now)))
    return result.rowcount


async def retire_stale(db: Database, registry: Registry, stale_ms: int, now: int | None = None) -> int:
    """Retire the devices unseen for ``stale_ms``; returns how many. A retired device stops
    counting toward its user's cap and its ledger entries go (the mutation ledger is the
    one store that grows with a device's life). Its high-water mark stays, and is kept as
    ``forgot_through``: should it come back, a replay of a mutation it pushed before is
    answered as forgotten and never applied again, and its cursor starts over (touch)."""
    now = now_ms() if now is None else now
    async with db.read() as conn:
        stale = (await conn.execute(sa.select(devices.c.tenant_id, devices.c.client_id).where(
            devices.c.retired_at.is_(None), devices.c.last_seen < now - stale_ms))).all()
    by_tenant: dict[int, list[str]] = {}
    for tenant_id, client_id in stale:
        by_tenant.setdefault(tenant_id, []).append(client_id)
    retired = 0
    for tenant_id, client_ids in sorted(by_tenant.items()):
        for start in range(0, len(client_ids), _RETIRE_CHUNK):
            async with write_changes(db, registry, tenant_id) as changes:
                # Seen again since the read: such a device stays (the row lock decides).
                gone = (await changes.conn.execute(sa.update(devices).where(
                    devices.c.tenant_id == tenant_id, devices.c.client_id.in_(client_ids[start:start + _RETIRE_CHUNK]),
                    devices.c.retired_at.is_(None), devices.c.last_seen < now - stale_ms,
                ).values(retired_at=now, forgot_through=devices.c.last_mutation_id)
                 .returning(devices.c.client_id))).scalars().all()
                if gone:
                    await changes.conn.execute(sa.delete(mutation_ledger).where(
                        mutation_ledger.c.tenant_id == tenant_id, mutation_ledger.c.client_id.in_(gone)))
            retired += len(gone)
    return retired


_RETIRE_CHUNK = 500  # devices per transaction


async def owners(db: Database, tenant_id: int, client_ids: list[str]) -> dict[str, tuple[int, bool]]:
    """``client_id -> (owner's user id, revoked)`` for the given devices of a tenant."""
    async with db.read() as conn:
        rows = await conn.execute(sa.select(devices.c.client_id, devices.c.user_id, devices.c.revoked_at).where(
            devices.c.tenant_id == tenant_id, devices.c.client_id.in_(client_ids)))
        return {row.client_id: (row.user_id, row.revoked_at is not None) for row in rows}
