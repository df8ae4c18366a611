"""Jobs that ran out of retries: recorded in ``jobs_failed``, their rows marked ``failed``,
listed by ``fieldsync jobs failed`` and re-run by ``fieldsync jobs retry``; and the sweep
that re-enqueues work whose job was lost (a worker killed mid-task, Redis flushed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from server.domain.job_tables import documents, jobs_failed, notices
from server.domain.tables import invoices
from sync.changes import now_ms, write_changes
from sync.schema import Registry
from sync.storage import Database

from . import files
from . import notices as outbox


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


async def record(db: Database, registry: Registry, task: str, task_id: str, args: list[Any], error: str,
                 attempts: int) -> None:
    """Keep the failure, and show ``failed`` on the row the job was making."""
    tenant_id = args[0] if args and isinstance(args[0], int) else None
    async with db.write() as conn:
        await conn.execute(sa.insert(jobs_failed).values(
            task=task, task_id=task_id[:40], tenant_id=tenant_id, args=list(args), error=error[:4000],
            attempts=attempts, failed_at=now_ms()))
    if tenant_id is None or len(args) < 2:
        return
    if task == "invoice_render":
        await files.mark_failed(db, registry, tenant_id, invoices, args[1])
    elif task == "report_render":
        await files.mark_failed(db, registry, tenant_id, documents, args[1])
    elif task == "notice_deliver":
        await outbox.mark_failed(db, tenant_id, args[1])


async def listing(db: Database, *, limit: int = 50, include_retried: bool = False) -> list[Failure]:
    query = sa.select(jobs_failed).order_by(jobs_failed.c.id.desc()).limit(limit)
    if not include_retried:
        query = query.where(jobs_failed.c.retried_at.is_(None))
    async with db.read() as conn:
        return [Failure(**row) for row in (await conn.execute(query)).mappings()]


async def take_for_retry(db: Database, failure_id: int) -> Failure | None:
    """Mark a failure retried and put its row back to ``pending``; the caller enqueues it."""
    async with db.write() as conn:
        row = (await conn.execute(sa.select(jobs_failed).where(jobs_failed.c.id == failure_id))).mappings().first()
        if row is None:
            return None
        await conn.execute(sa.update(jobs_failed).where(jobs_failed.c.id == failure_id).values(retried_at=now_ms()))
    return Failure(**row)


async def reopen(db: Database, registry: Registry, failure: Failure) -> None:
    """A failed row goes back to ``pending`` before its job runs again."""
    if failure.tenant_id is None or len(failure.args) < 2:
        return
    key = failure.args[1]
    if failure.task == "notice_deliver":
        async with db.write() as conn:
            await conn.execute(sa.update(notices).where(
                notices.c.tenant_id == failure.tenant_id, notices.c.id == key, notices.c.status == "failed",
            ).values(status="pending"))
        return
    table = {"invoice_render": invoices, "report_render": documents}.get(failure.task)
    if table is None:
        return
    async with write_changes(db, registry, failure.tenant_id) as changes:
        row = await files.locked_row(changes, table, key)
        if row is not None and row["status"] == "failed":
            await changes.update_rows(table, [(row, {"status": "pending"})])


async def pending_work(db: Database, older_than_ms: int) -> dict[str, list[tuple[int, str]]]:
    """Rows still ``pending`` since before ``now - older_than_ms``, by the task that makes them."""
    cutoff = now_ms() - older_than_ms
    found: dict[str, list[tuple[int, str]]] = {}
    queries: dict[str, Callable[[], sa.Select]] = {
        "invoice_render": lambda: sa.select(invoices.c.tenant_id, invoices.c.id).where(
            invoices.c.status == "pending", invoices.c.created_at <= cutoff),
        "report_render": lambda: sa.select(documents.c.tenant_id, documents.c.id).where(
            documents.c.status == "pending", documents.c.requested_at <= cutoff),
        "notice_deliver": lambda: sa.select(notices.c.tenant_id, notices.c.id).where(
            notices.c.status == "pending", notices.c.created_at <= cutoff),
    }
    async with db.read() as conn:
        for task, query in queries.items():
            found[task] = [(t, k) for t, k in await conn.execute(query().limit(10_000))]
    return found
