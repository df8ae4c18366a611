"""Writes to synced tables, each recorded in the change log in the same transaction.

Every write of the domain, the admin API and the importers goes through a
:class:`ChangeSet`; that is what makes "every write appends its change" true.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import Registry, SyncedTable
from .storage import PUT, REMOVE, Database, change_log, log_head

_CHUNK = 500  # keys per IN (...) list: well under SQLite's 32766 bound parameters
_BULK_FROM = 50  # from this many log entries (or updates of one column set), PostgreSQL takes the bulk paths


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ChangeSet:
    """Writes for one tenant in one transaction, collecting the log entries they cause.

    :meth:`commit_position` must be the last statement before COMMIT: it takes the
    tenant's ``log_head`` row lock, so positions are handed out in commit order.
    """

    def __init__(self, db: Database, conn: AsyncConnection, registry: Registry, tenant_id: int) -> None:
        self.db = db
        self.conn = conn
        self.registry = registry
        self.tenant_id = tenant_id
        self._entries: dict[tuple[str, str], int] = {}

    # -- writes -------------------------------------------------------------------

    async def insert(self, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows known to be new."""
        if not rows:
            return
        key = self._synced(table).key
        rows = [{**row, "tenant_id": self.tenant_id} for row in rows]
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:
            if row.get(key) is not None:  # executemany needs one column set per statement
                shapes.setdefault(tuple(sorted(row)), []).append(row)
        for same in shapes.values():
            await self.conn.execute(sa.insert(table), same)
        for row in rows:
            if row.get(key) is None:  # the database assigns the key
                row[key] = (await self.conn.execute(sa.insert(table).values(row).returning(table.c[key]))).scalar_one()
        await self._fill_defaults(table, rows)
        self._record(table, [(None, row) for row in rows])

    async def _fill_defaults(self, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        """Read back the scope columns a row left to the database's defaults: a product
        inserted without ``active`` is active, so it must be logged in the catalog bucket."""
        synced = self._synced(table)
        needed = set().union(*(spec.columns for spec in self.registry.specs_of(table.name)))
        partial = [row for row in rows if not needed <= row.keys()]
        if not partial:
            return
        stored = await self._old_rows(synced, [row[synced.key] for row in partial], full=False)
        for row in partial:
            for col, value in stored.get(_k(row[synced.key]), {}).items():
                row.setdefault(col, value)

    async def upsert(self, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert new rows, update the given columns of existing ones; of a key given
        twice, the later values win (a new key is inserted once, with both merged)."""
        synced = self._synced(table)
        old = await self._old_rows(synced, [row[synced.key] for row in rows], full=True)
        fresh: dict[str, dict[str, Any]] = {}
        for row in rows:
            if (key := _k(row[synced.key])) not in old:
                fresh[key] = {**fresh.get(key, {}), **row}
        await self.insert(table, list(fresh.values()))
        await self._apply_updates(synced, [(old[_k(row[synced.key])], dict(row))
                                           for row in rows if _k(row[synced.key]) in old])

    async def update(self, table: sa.Table, key: Any, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """Update one row; values may be SQL expressions for non-scope columns.

        Returns the row as it was before, or None when there is no such row.
        """
        synced = self._synced(table)
        old = await self._old_rows(synced, [key], full=True)
        before = old.get(_k(key))
        if before is not None:
            await self._apply_updates(synced, [(before, dict(values))])
        return before

    async def update_rows(self, table: sa.Table, pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> None:
        """Update rows the caller already read whole (and locked) in this transaction:
        ``[(row as read, new values), ...]``; saves re-reading them."""
        await self._apply_updates(self._synced(table), [(dict(before), dict(values)) for before, values in pairs])

    async def delete(self, table: sa.Table, keys: Iterable[Any]) -> int:
        synced = self._synced(table)
        old = await self._old_rows(synced, list(keys), full=False)
        key_col = table.c[synced.key]
        for chunk in _chunks(list(old.values()), _CHUNK):
            await self.conn.execute(
                sa.delete(table).where(table.c.tenant_id == self.tenant_id, key_col.in_([r[synced.key] for r in chunk]))
            )
        self._record(table, [(row, None) for row in old.values()])
        return len(old)

    # -- the log ------------------------------------------------------------------

    @property
    def buckets(self) -> frozenset[str]:
        return frozenset(bucket for bucket, _ in self._entries)

    async def commit_position(self) -> int | None:
        """Take the next log position and append the entries; None when nothing changed."""
        if not self._entries:
            return None
        seq = await self._bump_head()
        at = now_ms()
        if len(self._entries) >= _BULK_FROM and not self.db.is_sqlite:
            # A bulk write's entries by COPY: for 500 rows, ~5 ms of building and
            # binding an INSERT's parameters in Python become a fraction of one.
            raw = await self.conn.get_raw_connection()
            records = [(self.tenant_id, bucket, seq, key, op, at) for (bucket, key), op in self._entries.items()]
            await raw.driver_connection.copy_records_to_table(
                change_log.name, records=records, columns=[c.name for c in change_log.c])
            return seq
        rows = [
            {"tenant_id": self.tenant_id, "bucket": bucket, "seq": seq, "key": key, "op": op, "at": at}
            for (bucket, key), op in self._entries.items()
        ]
        for chunk in _chunks(rows, 5000):
            await self.conn.execute(sa.insert(change_log), chunk)
        return seq

    async def _bump_head(self) -> int:
        bump = (
            sa.update(log_head)
            .where(log_head.c.tenant_id == self.tenant_id)
            .values(seq=log_head.c.seq + 1)
            .returning(log_head.c.seq)
        )
        seq = (await self.conn.execute(bump)).scalar()
        if seq is None:  # first write of this tenant
            await self.conn.execute(
                self.db.insert(log_head).values(tenant_id=self.tenant_id, seq=0).on_conflict_do_nothing()
            )
            seq = (await self.conn.execute(bump)).scalar_one()
        return seq

    def _record(self, table: sa.Table, pairs: Iterable[tuple[Mapping | None, Mapping | None]]) -> None:
        synced = self._synced(table)
        specs = self.registry.specs_of(table.name)
        for before, after in pairs:
            key = _k((after or before)[synced.key])
            for spec in specs:
                old = spec.bucket_of(before) if before is not None else None
                new = spec.bucket_of(after) if after is not None else None
                if old is not None and old != new:
                    self._entries[(old, key)] = REMOVE
                if new is not None:
                    self._entries[(new, key)] = PUT

    # -- helpers ------------------------------------------------------------------

    def _synced(self, table: sa.Table) -> SyncedTable:
        try:
            return self.registry.tables[table.name]
        except KeyError:
            raise TypeError(f"{table.name} is not a synced table") from None

    async def _old_rows(self, synced: SyncedTable, keys: list[Any], *, full: bool) -> dict[str, dict[str, Any]]:
        """Current rows by key, locked for update (PostgreSQL) so scopes cannot race."""
        table = synced.table
        if full:
            cols = list(table.c)
        else:
            names = {synced.key}.union(*(s.columns for s in self.registry.specs_of(table.name)))
            cols = [table.c[n] for n in sorted(names)]
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(keys, _CHUNK):
            query = sa.select(*cols).where(table.c.tenant_id == self.tenant_id, table.c[synced.key].in_(chunk))
            if not self.db.is_sqlite:
                query = query.with_for_update()
            for row in (await self.conn.execute(query)).mappings():
                found[_k(row[synced.key])] = dict(row)
        return found

    async def _apply_updates(self, synced: SyncedTable, pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """Write ``(row before, new values)`` pairs; rows setting the same plain columns
        share one executemany round trip."""
        table, key = synced.table, synced.key
        scoped = {c for spec in self.registry.specs_of(table.name) for c in spec.columns}
        batches: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for before, values in pairs:
            values = {c: v for c, v in values.items() if c not in (key, "tenant_id")}
            if any(isinstance(values.get(c), sa.ClauseElement) for c in scoped):
                raise TypeError("scope columns must be written as plain values")
            if synced.versioned:
                _bump_versions(synced, before, values)
            if not values:
                continue
            if any(isinstance(v, sa.ClauseElement) for v in values.values()):
                await self.conn.execute(
                    sa.update(table).where(table.c.tenant_id == self.tenant_id, table.c[key] == before[key]).values(values)
                )
            else:
                batches.setdefault(tuple(sorted(values)), []).append({"_key": before[key], **values})
            after = {**before, **{c: v for c, v in values.items() if not isinstance(v, sa.ClauseElement)}}
            self._record(table, [(before, after)])
        for cols, params in batches.items():
            if len(params) >= _BULK_FROM and not self.db.is_sqlite and _unnestable(table, key, cols, params):
                # One statement over arrays instead of one executemany row each: for 500
                # rows, SQLAlchemy's per-row parameter handling was most of the write.
                arrays = {c: [p[c] for p in params] for c in ("_key", *cols)}
                await self.conn.execute(_unnest_update(table, key, cols), {"tenant": self.tenant_id, **arrays})
                continue
            statement = (
                sa.update(table)
                .where(table.c.tenant_id == self.tenant_id, table.c[key] == sa.bindparam("_key"))
                .values({c: sa.bindparam(c) for c in cols})
            )
            await self.conn.execute(statement, params)


_ARRAY_SAFE = (sa.Integer, sa.String, sa.Boolean, sa.Float, sa.Numeric)  # bound as PostgreSQL arrays as they are


def _unnestable(table: sa.Table, key: str, cols: tuple[str, ...], params: list[dict[str, Any]]) -> bool:
    """Plain column types only (a JSON value would need its own encoding inside an
    array), and each key once: ``UPDATE … FROM`` applies one of duplicate matches, not the last."""
    if not all(isinstance(table.c[c].type, _ARRAY_SAFE) for c in (key, *cols)):
        return False
    return len({p["_key"] for p in params}) == len(params)


@functools.lru_cache(maxsize=64)
def _unnest_update(table: sa.Table, key: str, cols: tuple[str, ...]) -> sa.Update:
    """``UPDATE t SET c = v.c FROM unnest(:_key, :c, …) AS v(_key, c, …) WHERE t.key = v._key``,
    built once per table and column set."""
    arrays = [sa.cast(sa.bindparam(c), postgresql.ARRAY(table.c[key if c == "_key" else c].type))
              for c in ("_key", *cols)]
    rows = sa.func.unnest(*arrays).table_valued(*("_key", *cols)).render_derived(name="v")
    return (
        sa.update(table)
        .where(table.c.tenant_id == sa.bindparam("tenant"), table.c[key] == rows.c["_key"])
        .values({c: rows.c[c] for c in cols})
    )


def _bump_versions(synced: SyncedTable, before: Mapping[str, Any], values: dict[str, Any]) -> None:
    """Give each changed versioned field the row's next version number."""
    changed = [f for f in synced.versioned if f in values and values[f] != before.get(f)]
    if not changed:
        return
    version = (before.get("version") or 0) + 1
    field_versions = dict(before.get("field_versions") or {})
    field_versions.update({f: version for f in changed})
    values["version"] = version
    values["field_versions"] = field_versions


def _k(key: Any) -> str:
    return str(key)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@asynccontextmanager
async def write_changes(db: Database, registry: Registry, tenant_id: int) -> AsyncIterator[ChangeSet]:
    """One write transaction; on success its entries get the next log position, then
    the commit listeners (fan-out) hear of it. An exception rolls everything back."""
    async with db.write() as conn:
        changes = ChangeSet(db, conn, registry, tenant_id)
        yield changes
        seq = await changes.commit_position()
    if seq is not None:
        db.notify(tenant_id, seq, changes.buckets)
