"""Storing a made PDF and flipping its synced row to ``ready`` (or ``failed``), once.

The file and the row change commit together, so a device never sees a ``ready`` row whose
link does not open; a second run (a retry, a sweep, a restarted worker) finds the row
``ready`` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from server.domain.job_tables import document_files
from sync.changes import now_ms, write_changes
from sync.schema import Registry
from sync.storage import Database


@dataclass(frozen=True)
class Made:
    """A rendered file for the synced row ``table[key]``."""

    table: sa.Table
    key: str
    filename: str
    body: bytes
    content_type: str = "application/pdf"
    ready: Mapping[str, Any] | None = None  # extra columns set with status and url


def url_of(file_id: str) -> str:
    return f"/documents/{file_id}"


async def locked_row(changes, table: sa.Table, key: str) -> dict[str, Any] | None:
    query = changes.db.locking(sa.select(table).where(table.c.tenant_id == changes.tenant_id, table.c.id == key))
    row = (await changes.conn.execute(query)).mappings().first()
    return dict(row) if row is not None else None


async def store(db: Database, registry: Registry, tenant_id: int, made: Made) -> bool:
    """Keep the file and mark its row ready; False when the row was already ready or is gone."""
    async with write_changes(db, registry, tenant_id) as changes:
        row = await locked_row(changes, made.table, made.key)
        if row is None or row["status"] == "ready":
            return False
        await changes.conn.execute(db.insert(document_files).values(
            id=made.key, tenant_id=tenant_id, source_table=made.table.name, source_key=made.key,
            filename=made.filename, content_type=made.content_type, body=made.body, size=len(made.body),
            created_at=now_ms(),
        ).on_conflict_do_nothing())
        values = {"status": "ready", "url": url_of(made.key), **(made.ready or {})}
        await changes.update_rows(made.table, [(row, values)])
    return True


async def mark_failed(db: Database, registry: Registry, tenant_id: int, table: sa.Table, key: str) -> None:
    """The job ran out of retries: the device sees ``failed`` instead of ``pending`` forever."""
    async with write_changes(db, registry, tenant_id) as changes:
        row = await locked_row(changes, table, key)
        if row is not None and row["status"] == "pending":
            await changes.update_rows(table, [(row, {"status": "failed"})])
