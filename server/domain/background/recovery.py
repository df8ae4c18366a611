"""What the field-sales jobs make, as the generic runner's failure record and sweep see it:
the row a job that gave up leaves ``failed`` (and ``fieldsync jobs retry`` puts back to
``pending``), and the rows still ``pending`` whose job was lost (a worker killed mid-task,
Redis flushed), which the sweep enqueues again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from sync.changes import now_ms, write_changes
from sync.schema import Registry
from sync.storage import Database

from ..job_tables import documents, notices
from ..tables import invoices
from . import files
from . import notices as outbox

#: The synced table each file-making task fills (a row with a ``status``).
_MADE_BY = {"invoice_render": invoices, "report_render": documents}


async def gave_up(db: Database, registry: Registry, task: str, args: list[Any]) -> None:
    """Show ``failed`` on the row the task was making: ``args`` are ``(tenant, key)``."""
    if len(args) < 2 or not isinstance(args[0], int):
        return
    tenant_id, key = args[0], args[1]
    if task in _MADE_BY:
        await files.mark_failed(db, registry, tenant_id, _MADE_BY[task], key)
    elif task == "notice_deliver":
        await outbox.mark_failed(db, tenant_id, key)


async def reopen(db: Database, registry: Registry, task: str, args: list[Any]) -> None:
    """A failed row goes back to ``pending`` before its job runs again."""
    if len(args) < 2 or not isinstance(args[0], int):
        return
    tenant_id, key = args[0], args[1]
    if task == "notice_deliver":
        async with db.write() as conn:
            await conn.execute(sa.update(notices).where(
                notices.c.tenant_id == tenant_id, notices.c.id == key, notices.c.status == "failed",
            ).values(status="pending"))
        return
    table = _MADE_BY.get(task)
    if table is None:
        return
    async with write_changes(db, registry, tenant_id) as changes:
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
