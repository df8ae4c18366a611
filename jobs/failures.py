"""Jobs that ran out of retries: recorded in ``jobs_failed``, the row they were making
marked ``failed`` by the domain's plug-in, listed by ``fieldsync jobs failed`` and run
again by ``fieldsync jobs retry``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from sync.changes import now_ms
from sync.schema import Registry
from sync.storage import Database, jobs_failed

if TYPE_CHECKING:
    from .runner import JobPlugin


@dataclass(frozen=True)
class Failure:
    id: int
    task: str
    task_id: str
    tenant_id: int | None
    args: list[Any]
    error: str
    attempts: int
    failed_at: int
    retried_at: int | None


async def record(db: Database, registry: Registry, plugin: JobPlugin | None, task: str, task_id: str,
                 args: list[Any], error: str, attempts: int) -> None:
    """Keep the failure, and have the domain show ``failed`` on the row the job was making."""
    tenant_id = args[0] if args and isinstance(args[0], int) else None
    async with db.write() as conn:
        await conn.execute(sa.insert(jobs_failed).values(
            task=task, task_id=task_id[:40], tenant_id=tenant_id, args=list(args), error=error[:4000],
            attempts=attempts, failed_at=now_ms()))
    if plugin is not None:
        await plugin.gave_up(db, registry, task, list(args))


async def listing(db: Database, *, limit: int = 50, include_retried: bool = False) -> list[Failure]:
    query = sa.select(jobs_failed).order_by(jobs_failed.c.id.desc()).limit(limit)
    if not include_retried:
        query = query.where(jobs_failed.c.retried_at.is_(None))
    async with db.read() as conn:
        return [Failure(**row) for row in (await conn.execute(query)).mappings()]


async def take_for_retry(db: Database, failure_id: int) -> Failure | None:
    """Mark a failure retried; the caller has the domain reopen its row, then enqueues it."""
    async with db.write() as conn:
        row = (await conn.execute(sa.select(jobs_failed).where(jobs_failed.c.id == failure_id))).mappings().first()
        if row is None:
            return None
        await conn.execute(sa.update(jobs_failed).where(jobs_failed.c.id == failure_id).values(retried_at=now_ms()))
    return Failure(**row)
