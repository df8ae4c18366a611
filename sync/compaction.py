"""Change-log compaction: keep per row only its latest entry, and drop history beyond a
retention horizon.

Two steps, both safe while devices pull and writers commit:

1. **Horizon.** ``log_head.horizon`` moves up to the last position committed before
   ``now - retention``; then every entry at or below it is deleted. The horizon is
   committed *first*: from then on the reader answers a cursor below it with a full
   snapshot (``reset``), so no device ever reads the log with a hole in it.
2. **Superseded entries.** An entry with a later entry for the same ``(bucket, key)`` is
   deleted. The reader re-reads the current row for every key it finds after a cursor,
   so the later entry alone brings any device past the earlier one to the same state.

Deletes run in windows of positions so no transaction holds many rows. No Huey, no
Redis: ``jobs/`` calls :func:`compact` on a schedule; ``fieldsync compact`` runs it now.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from .changes import now_ms
from .storage import Database, change_log, log_head

DAY_MS = 86_400_000
DEFAULT_RETENTION_MS = 30 * DAY_MS
WINDOW = 20_000  # entries per delete transaction


@dataclass
class CompactionStats:
    """What one run did to one tenant's log."""

    tenant_id: int
    entries_before: int = 0
    entries_after: int = 0
    below_horizon: int = 0  # deleted because at or below the horizon
    superseded: int = 0  # deleted because a later entry names the same row
    horizon: int = 0
    head: int = 0
    seconds: float = 0.0


async def compact(db: Database, *, retention_ms: int = DEFAULT_RETENTION_MS, now: int | None = None,
                  tenant_id: int | None = None, window: int = WINDOW) -> list[CompactionStats]:
    """Compact every tenant's log (or one tenant's); returns what was done per tenant."""
    now = now_ms() if now is None else now
    async with db.read() as conn:
        query = sa.select(log_head.c.tenant_id).order_by(log_head.c.tenant_id)
        if tenant_id is not None:
            query = query.where(log_head.c.tenant_id == tenant_id)
        tenants = list((await conn.execute(query)).scalars())
    return [await compact_tenant(db, t, cutoff=now - retention_ms, window=window) for t in tenants]


async def compact_tenant(db: Database, tenant_id: int, *, cutoff: int, window: int = WINDOW) -> CompactionStats:
    started = time.perf_counter()
    stats = CompactionStats(tenant_id, entries_before=await log_size(db, tenant_id))
    async with db.read() as conn:
        head, horizon = (await conn.execute(
            sa.select(log_head.c.seq, log_head.c.horizon).where(log_head.c.tenant_id == tenant_id)
        )).one()
        target = await _last_before(conn, tenant_id, cutoff, head)
    stats.head = head
    if target > horizon:
        await _raise_horizon(db, tenant_id, target)
        horizon = target
    stats.horizon = horizon
    stats.below_horizon = await _delete_windows(db, tenant_id, 0, horizon, window, superseded_only=False)
    stats.superseded = await _delete_windows(db, tenant_id, horizon, head, window, superseded_only=True)
    stats.entries_after = await log_size(db, tenant_id)
    stats.seconds = time.perf_counter() - started
    return stats


async def log_size(db: Database, tenant_id: int | None = None) -> int:
    """Entries in the change log (of one tenant, or all)."""
    query = sa.select(sa.func.count()).select_from(change_log)
    if tenant_id is not None:
        query = query.where(change_log.c.tenant_id == tenant_id)
    async with db.read() as conn:
        return int(await conn.scalar(query) or 0)


async def _last_before(conn: AsyncConnection, tenant_id: int, cutoff: int, head: int) -> int:
    """The last position whose entries were committed before ``cutoff``: a binary search
    over positions (commit times grow with positions), each probe one index lookup."""
    log = change_log.c

    async def first_at_or_after(seq: int) -> tuple[int, int] | None:
        row = (await conn.execute(
            sa.select(log.seq, log.at).where(log.tenant_id == tenant_id, log.seq >= seq).order_by(log.seq).limit(1)
        )).first()
        return (row[0], row[1]) if row else None

    low, high, found = 1, head, 0
    while low <= high:
        mid = (low + high) // 2
        probe = await first_at_or_after(mid)
        if probe is None or probe[0] > high:
            high = mid - 1
        elif probe[1] < cutoff:
            found, low = probe[0], probe[0] + 1
        else:
            high = mid - 1
    return found


async def _raise_horizon(db: Database, tenant_id: int, horizon: int) -> None:
    async with db.write() as conn:
        await conn.execute(
            sa.update(log_head)
            .where(log_head.c.tenant_id == tenant_id, log_head.c.horizon < horizon)
            .values(horizon=horizon)
        )


async def _delete_windows(db: Database, tenant_id: int, low: int, high: int, window: int, *,
                          superseded_only: bool) -> int:
    """Delete entries in positions ``(low, high]``, ``window`` entries per transaction;
    all of them, or only those a later entry of the same row supersedes."""
    deleted = 0
    while low < high:
        async with db.read() as conn:
            upto = await conn.scalar(
                sa.select(change_log.c.seq)
                .where(change_log.c.tenant_id == tenant_id, change_log.c.seq > low, change_log.c.seq <= high)
                .order_by(change_log.c.seq).offset(window).limit(1)
            )
        upto = high if upto is None else upto
        async with db.write() as conn:
            result = await conn.execute(_delete(tenant_id, low, upto, superseded_only))
        deleted += max(result.rowcount or 0, 0)
        low = upto
    return deleted


def _delete(tenant_id: int, low: int, high: int, superseded_only: bool) -> sa.Delete:
    log = change_log.c
    statement = sa.delete(change_log).where(log.tenant_id == tenant_id, log.seq > low, log.seq <= high)
    if superseded_only:
        later = change_log.alias("later")
        statement = statement.where(sa.exists().where(
            later.c.tenant_id == log.tenant_id, later.c.bucket == log.bucket,
            later.c.key == log.key, later.c.seq > log.seq,
        ))
    return statement
