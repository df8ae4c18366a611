"""Hot snapshots: pre-built snapshot pages of datasets many devices share.

A reconnect storm of fresh devices would otherwise run the same big query (a 100k-row
catalog, a branch's stock) once per device. A job builds the pages of each shared scope
here, read in one snapshot at log position ``seq``; a snapshot pull then serves whole
pages from them and moves the device's cursor back to ``seq``, so every change committed
since the build follows as an ordinary change. That is why a page never has to be
current to be correct, only not older than the compaction horizon.

Only datasets declared ``hot`` with no time window qualify: their rows at ``seq`` are the
same for every device of the scope.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import msgpack
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from .changes import now_ms
from .schema import Dataset, Registry, Scope, tenant_clause
from .storage import Database, hot_pages, log_head

PAGE_ROWS = 1000


def scope_key(ds: Dataset, scope: Scope, values: list[Any]) -> str:
    """What makes two devices' snapshots of a dataset equal: its shape, scope and values."""
    text = repr((ds.shape_hash, scope.partition, sorted(scope.where.items()), list(values)))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def eligible(ds: Dataset, scope: Scope) -> bool:
    return ds.hot and scope.window is None


@dataclasses.dataclass
class Page:
    seq: int
    rows: list[list[Any]]
    last: bool


async def read_page(conn: AsyncConnection, tenant_id: int, ds: Dataset, key: str, page: int) -> Page | None:
    row = (await conn.execute(sa.select(hot_pages.c.seq, hot_pages.c.rows, hot_pages.c.pages).where(
        hot_pages.c.tenant_id == tenant_id, hot_pages.c.dataset == ds.name, hot_pages.c.scope == key,
        hot_pages.c.page == page,
    ))).first()
    return None if row is None else Page(row.seq, msgpack.unpackb(row.rows, raw=False), page + 1 >= row.pages)


async def rows_in(conn: AsyncConnection, tenant_id: int, ds: Dataset, key: str) -> int:
    """The rows of a scope's pages (one build's: they are replaced whole)."""
    return await conn.scalar(sa.select(sa.func.coalesce(sa.func.sum(hot_pages.c.count), 0)).where(
        hot_pages.c.tenant_id == tenant_id, hot_pages.c.dataset == ds.name, hot_pages.c.scope == key)) or 0


async def build(db: Database, registry: Registry, tenant_id: int, *, page_rows: int = PAGE_ROWS) -> int:
    """(Re)build the pages of every hot dataset's scope whose pages are older than the log
    head; returns the pages written."""
    written = 0
    for ds in registry.datasets.values():
        seen: set[str] = set()
        for scope in ds.scopes.values():
            if not eligible(ds, scope):
                continue
            for values in await _partitions(db, tenant_id, ds, scope):
                key = scope_key(ds, scope, values)
                if key not in seen:
                    seen.add(key)
                    written += await _build_scope(db, tenant_id, ds, scope, values, key, page_rows)
    return written


async def _partitions(db: Database, tenant_id: int, ds: Dataset, scope: Scope) -> list[list[Any]]:
    """Every value list a device can have for this scope: one partition value each."""
    if scope.partition is None:
        return [[]]
    column = ds.table.c[scope.partition]
    async with db.read() as conn:
        found = (await conn.execute(sa.select(column).distinct().where(
            tenant_clause(ds.table, tenant_id), column.is_not(None)))).scalars().all()
    return [[value] for value in found]


async def _build_scope(db: Database, tenant_id: int, ds: Dataset, scope: Scope, values: list[Any], key: str,
                       page_rows: int) -> int:
    where = (hot_pages.c.tenant_id == tenant_id, hot_pages.c.dataset == ds.name, hot_pages.c.scope == key)
    async with db.read() as conn:  # rows and position from one snapshot
        seq = await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == tenant_id)) or 0
        built = await conn.scalar(sa.select(hot_pages.c.seq).where(*where, hot_pages.c.page == 0))
        if built == seq:  # nothing was committed since the last build: its pages stand
            return 0
        rows = [list(r) for r in await conn.execute(
            sa.select(*(ds.sql(c) for c in ds.columns))
            .where(tenant_clause(ds.table, tenant_id), scope.clause(ds.table, values, now_ms()))
            .order_by(*ds.order()))]
    pages = [rows[start:start + page_rows] for start in range(0, len(rows), page_rows)] or [[]]
    now = now_ms()
    async with db.write() as conn:
        # Two builds at once (two workers, or a leftover task beside a fresh one) would both
        # delete nothing and insert the same keys. Under the lock the second sees the first's
        # pages, and keeps them when they are as new as its own.
        await db.lock(conn, "hot_pages", tenant_id, ds.name, key)
        stored = await conn.scalar(sa.select(hot_pages.c.seq).where(*where, hot_pages.c.page == 0))
        if stored is not None and stored >= seq:
            return 0
        await conn.execute(sa.delete(hot_pages).where(*where))
        await conn.execute(sa.insert(hot_pages), [
            {"tenant_id": tenant_id, "dataset": ds.name, "scope": key, "page": n, "seq": seq, "count": len(page),
             "pages": len(pages), "rows": msgpack.packb(page, use_bin_type=True), "built_at": now}
            for n, page in enumerate(pages)])
    return len(pages)
