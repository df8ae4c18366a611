"""Writes to synced tables, each recorded in the change log in the same transaction.

The recording is the capture triggers' (sync/capture.py), whoever writes: a ChangeSet is
fieldsync's own way to write (the domain, the admin API, the importers), which also
positions its entries as the transaction's last statement, so it can tell the fan-out
which position and buckets it committed.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from . import capture
from .schema import TENANT, Registry, SyncedTable, tenant_clause
from .storage import Database, now_ms  # noqa: F401 (now_ms: re-exported, imported from here widely)

_CHUNK = 500  # keys per IN (...) list: well under SQLite's 32766 bound parameters
_BULK_FROM = 50  # from this many updates of one column set, PostgreSQL takes the bulk path


class ChangeSet:
    """Writes for one tenant in one transaction.

    :meth:`commit_position` must be the last statement before COMMIT: it positions the
    entries the triggers staged, taking the tenant's ``log_head`` row lock, so positions
    are handed out in commit order.
    """

    def __init__(self, db: Database, conn: AsyncConnection, registry: Registry, tenant_id: int, *,
                 deferring: bool = False) -> None:
        self.db = db
        self.conn = conn
        self.registry = registry
        self.tenant_id = tenant_id
        self.buckets: frozenset[str] = frozenset()  # those the commit touched, once positioned
        #: Writes nothing in the transaction reads back may wait for :meth:`flush`: the
        #: appended rows, and what handlers hand to :meth:`before_flush`. Only where the
        #: transaction is all or nothing (the push's first pass): a savepoint rolled back
        #: would not take back what waits.
        self.deferring = deferring
        #: What handlers keep for the rest of the transaction (a deferring one's counters).
        self.held: dict[str, Any] = {}
        self._appended: dict[sa.Table, list[Mapping[str, Any]]] = {}
        self._before_flush: list[Callable[[], Awaitable[None]]] = []

    # -- writes -------------------------------------------------------------------

    async def insert(self, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows known to be new (a row without its key gets one from the database).
        A table no dataset syncs (the ledger, for one) may be written here too."""
        synced = self.registry.tables.get(table.name)
        key = synced.key if synced is not None else "id"
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in rows:  # executemany needs one column set per statement
            row = {**row, TENANT: self.tenant_id} if TENANT in table.c else dict(row)
            if row.get(key, 0) is None:
                del row[key]
            shapes.setdefault(tuple(sorted(row)), []).append(row)
        for same in shapes.values():
            await self.conn.execute(_insert_into(table), same)

    async def append(self, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows known to be new that nothing in this transaction reads back (an
        order, its invoice, a notice). A deferring change set writes all of a
        transaction's rows of a table in one statement at :meth:`flush`; a key taken then
        fails the flush, not the call."""
        if self.deferring:
            self._appended.setdefault(table, []).extend(rows)
        else:
            await self.insert(table, rows)

    def before_flush(self, write: Callable[[], Awaitable[None]]) -> None:
        """Run ``write`` at :meth:`flush`, before the appended rows are written."""
        self._before_flush.append(write)

    async def flush(self) -> None:
        """Run the writes handed to :meth:`before_flush`, then write the deferred appends,
        table by table in the order first appended."""
        writes, self._before_flush = self._before_flush, []
        for write in writes:
            await write()
        appended, self._appended = self._appended, {}
        for table, rows in appended.items():
            await self.insert(table, rows)

    async def upsert(self, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert new rows, update the given columns of existing ones; of a key given
        twice, the later values win (a new key is inserted once, with both merged)."""
        synced = self._synced(table)
        old = await self._old_rows(synced, [row[synced.key] for row in rows])
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
        old = await self._old_rows(synced, [key])
        before = old.get(_k(key))
        if before is not None:
            await self._apply_updates(synced, [(before, dict(values))])
        return before

    async def update_rows(self, table: sa.Table, pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> None:
        """Update rows the caller already read whole (and locked) in this transaction:
        ``[(row as read, new values), ...]``; saves re-reading them."""
        await self._apply_updates(self._synced(table), [(dict(before), dict(values)) for before, values in pairs])

    async def locked_rows(self, table: sa.Table, keys: Iterable[Any]) -> dict[Any, dict[str, Any]]:
        """The rows of these keys, by key, locked until commit (PostgreSQL) in key order:
        what a write that reads before it decides (an order's status move) starts from."""
        synced = self._synced(table)
        found = await self._old_rows(synced, sorted(set(keys)))
        return {row[synced.key]: row for row in found.values()}

    async def delete(self, table: sa.Table, keys: Iterable[Any]) -> int:
        """Delete rows by key; returns how many there were."""
        key_col = table.c[self._synced(table).key]
        deleted = 0
        for chunk in _chunks(list(keys), _CHUNK):
            result = await self.conn.execute(
                sa.delete(table).where(tenant_clause(table, self.tenant_id), key_col.in_(chunk)))
            deleted += result.rowcount
        return deleted

    # -- the log ------------------------------------------------------------------

    async def commit_position(self) -> int | None:
        """Position the transaction's entries; None when nothing was captured."""
        await self.flush()
        positioned = await capture.position(self.conn, self.db, self.tenant_id)
        if positioned is None:
            return None
        seq, self.buckets = positioned
        return seq

    # -- helpers ------------------------------------------------------------------

    def _synced(self, table: sa.Table) -> SyncedTable:
        try:
            synced = self.registry.tables[table.name]
        except KeyError:
            raise TypeError(f"{table.name} is not a synced table") from None
        if not isinstance(synced.key, str):
            raise TypeError(f"{table.name} has a composite key: write it with SQL on `changes.conn` "
                            "(the capture triggers log it as any write)")
        return synced

    async def _old_rows(self, synced: SyncedTable, keys: list[Any]) -> dict[str, dict[str, Any]]:
        """Current rows by key, locked for update (PostgreSQL): what an update starts from
        (its versions, the row ``update`` returns)."""
        table = synced.table
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(keys, _CHUNK):
            query = self.db.locking(sa.select(table).where(
                tenant_clause(table, self.tenant_id), table.c[synced.key].in_(chunk)).order_by(table.c[synced.key]))
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
            values = {c: v for c, v in values.items() if c not in (key, TENANT)}
            if any(isinstance(values.get(c), sa.ClauseElement) for c in scoped):
                raise TypeError("scope columns must be written as plain values")
            if synced.versioned:
                _bump_versions(synced, before, values)
            if not values:
                continue
            if any(isinstance(v, sa.ClauseElement) for v in values.values()):
                await self.conn.execute(
                    sa.update(table).where(tenant_clause(table, self.tenant_id), table.c[key] == before[key]).values(values)
                )
            else:
                batches.setdefault(tuple(sorted(values)), []).append({"_key": before[key], **values})
        for cols, params in batches.items():
            if len(params) >= _BULK_FROM and self.db.binds_arrays and _unnestable(table, key, cols, params):
                # One statement over arrays instead of one executemany row each: for 500
                # rows, SQLAlchemy's per-row parameter handling was most of the write.
                arrays = {c: [p[c] for p in params] for c in ("_key", *cols)}
                await self.conn.execute(_unnest_update(table, key, cols), {"tenant": self.tenant_id, **arrays})
                continue
            tenant = {"_tenant": self.tenant_id} if TENANT in table.c else {}
            await self.conn.execute(_update_by_key(table, key, cols, self.tenant_id if not tenant else None),
                                    [{**p, **tenant} for p in params])


@functools.lru_cache(maxsize=256)
def _insert_into(table: sa.Table) -> sa.Insert:
    """One INSERT per table: a fresh one per call computed its cache key every time."""
    return sa.insert(table)


@functools.lru_cache(maxsize=256)
def _update_by_key(table: sa.Table, key: str, cols: tuple[str, ...], tenant_id: int | None) -> sa.Update:
    """``UPDATE t SET c = :c, … WHERE tenant_id = :_tenant AND key = :_key``, built once per
    table and column set (per call it cost more Python than the round trip). ``tenant_id``:
    only for a table without the column, whose clause depends on it."""
    scope = (table.c[TENANT] == sa.bindparam("_tenant")) if tenant_id is None else tenant_clause(table, tenant_id)
    return sa.update(table).where(scope, table.c[key] == sa.bindparam("_key")).values({c: sa.bindparam(c) for c in cols})


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
        .where(tenant_clause(table, sa.bindparam("tenant")) if TENANT in table.c else sa.true(),
               table.c[key] == rows.c["_key"])
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
