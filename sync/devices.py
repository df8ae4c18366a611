"""The devices a tenant's users sync from: registration, liveness, revocation."""

from __future__ import annotations

import sqlalchemy as sa

from .changes import now_ms
from .errors import RevokedError
from .schema import Principal
from .storage import Database, devices, log_head

_TOUCH_EVERY_MS = 30_000  # last_seen is for humans; do not write on every pull


async def touch(db: Database, principal: Principal, client_id: str, *, force: bool = False) -> int | None:
    """Register the device or refresh ``last_seen``; returns when it was last re-enrolled
    (cursors older than that must start over), or None.

    Raises:
        RevokedError: the device was revoked by an admin.
    """
    now = now_ms()
    async with db.read() as conn:
        row = (await conn.execute(
            sa.select(devices.c.user_id, devices.c.last_seen, devices.c.revoked_at, devices.c.enrolled_at).where(
                devices.c.tenant_id == principal.tenant_id, devices.c.client_id == client_id
            )
        )).first()
    if row is not None and row.revoked_at is not None:
        raise RevokedError(f"device {client_id} was revoked; re-enrol it to sync again")
    enrolled = row.enrolled_at if row is not None else None
    if row is not None and not force and row.user_id == principal.user_id and now - row.last_seen < _TOUCH_EVERY_MS:
        return enrolled
    async with db.write() as conn:
        insert = db.insert(devices).values(
            tenant_id=principal.tenant_id, client_id=client_id, user_id=principal.user_id,
            first_seen=now, last_seen=now,
        )
        await conn.execute(insert.on_conflict_do_update(
            index_elements=[devices.c.tenant_id, devices.c.client_id],
            set_={"last_seen": now, "user_id": principal.user_id},
        ))
    return enrolled


async def acknowledge(db: Database, principal: Principal, client_id: str, seq: int) -> int:
    """The device says its data is stored up to ``seq`` (for lag monitoring); returns the
    tenant's log head, read in the same transaction, so the caller can tell the lag."""
    async with db.write() as conn:
        await conn.execute(sa.update(devices).where(
            devices.c.tenant_id == principal.tenant_id, devices.c.client_id == client_id,
        ).values(acked_seq=seq, last_seen=now_ms()))
        return await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == principal.tenant_id)) or 0


async def set_revoked(db: Database, tenant_id: int, client_id: str, revoked: bool) -> bool:
    """Revoke a device, or re-enrol it (its next sync starts from a full reset).
    Returns False when the tenant has no such device."""
    now = now_ms()
    values = {"revoked_at": now} if revoked else {"revoked_at": None, "enrolled_at": now}
    async with db.write() as conn:
        result = await conn.execute(sa.update(devices).where(
            devices.c.tenant_id == tenant_id, devices.c.client_id == client_id).values(values))
    return result.rowcount > 0
