"""Pull: compute a device's next batch from its cursor.

One code path serves HTTP pull and WebSocket catch-up. A batch is read in one
consistent database snapshot; it is either a snapshot page (datasets being reset, in
priority order, paged by key) or the changes after the cursor: keys from the log, their
*current* rows re-read and re-checked against the device's scope, so a row that left the
scope becomes a delete and a key appears once per batch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from .changes import now_ms
from . import hot
from .cursor import Cursor, CursorCodec
from .messages import PROTOCOL_VERSION, DatasetBatch, PullResponse
from .schema import Dataset, Principal, Registry, Scope, tenant_clause
from .storage import Database, change_log, log_head

_CHUNK = 500


class Batch:
    """The data part of one pull response, a key at most once per dataset."""

    def __init__(self) -> None:
        self.reset: list[str] = []
        self.data: dict[str, DatasetBatch] = {}
        self.rows = 0
        self.expected: dict[str, int] = {}  # rows of each snapshot begun in this batch, for progress

    def _of(self, ds: Dataset) -> DatasetBatch:
        if ds.name not in self.data:
            self.data[ds.name] = {"cols": list(ds.columns), "rows": [], "deletes": []}
        return self.data[ds.name]

    def put(self, ds: Dataset, rows: list[list[Any]]) -> None:
        if rows:
            self._of(ds)["rows"].extend(rows)
            self.rows += len(rows)

    def delete(self, ds: Dataset, keys: list[Any]) -> None:
        if keys:
            self._of(ds)["deletes"].extend(keys)
            self.rows += len(keys)


class SharedReads:
    """One read transaction shared by the live sessions woken together for one tenant.

    They all see one snapshot and its head; entries of a bucket and current rows are read
    once and served to every session that needs them, so 5,000 terminals on one catalog
    cost one query per round, not 5,000, and a round is one transaction, not one per
    session (a transaction's BEGIN, COMMIT and pool check-out are most of a small pull).
    """

    def __init__(self, conn: AsyncConnection, head: tuple[int, int]) -> None:
        self.conn = conn
        self.head = head
        self.entries: dict[str, tuple[int, list[tuple[int, str]]]] = {}  # bucket -> (after, [(seq, key)])
        self.rows: dict[tuple[str, str], dict[str, Any] | None] = {}  # (table, key) -> current row
        self.values: dict[tuple[str, str, int], list[Any]] = {}  # (dataset, role, user) -> partition values

    @classmethod
    async def begin(cls, conn: AsyncConnection, tenant_id: int) -> SharedReads:
        """Shared reads in ``conn``'s snapshot (a ``db.read()`` transaction)."""
        return cls(conn, await _head(conn, tenant_id))


WINDOW_STEP_MS = 60_000  # time windows are re-applied at most this often per device


class Reader:
    """Builds pull responses for a principal; knows nothing of HTTP or sockets."""

    def __init__(self, db: Database, registry: Registry, cursors: CursorCodec, *,
                 default_limit: int = 2000, max_limit: int = 10000, clock: Callable[[], int] = now_ms) -> None:
        self.db = db
        self.clock = clock  # tests move time to age rows out of windows
        self.registry = registry
        self.cursors = cursors
        self.default_limit = default_limit
        self.max_limit = max_limit
        self._bucket_sets: dict[frozenset[str], frozenset[str]] = {}

    async def pull(self, principal: Principal, raw_cursor: bytes | None, limit: int | None = None,
                   shared: SharedReads | None = None, not_before: int | None = None) -> PullResponse:
        """The next batch for this device, read in one snapshot. ``shared`` (a live round)
        shares that snapshot and its reads with the round's other sessions; a cursor last
        refreshed before ``not_before`` (the device was re-enrolled) starts over with a
        full snapshot."""
        if shared is not None:
            return await self._pull(shared.conn, principal, raw_cursor, limit, shared, not_before)
        async with self.db.read() as conn:
            return await self._pull(conn, principal, raw_cursor, limit, None, not_before)

    async def _pull(self, conn: AsyncConnection, principal: Principal, raw_cursor: bytes | None, limit: int | None,
                    shared: SharedReads | None, not_before: int | None) -> PullResponse:
        limit = min(limit or self.default_limit, self.max_limit)
        head, horizon = shared.head if shared is not None else await _head(conn, principal.tenant_id)
        now = self.clock()
        datasets = {ds.name: ds for ds in self.registry.for_role(principal.role)}
        values = {name: await _values(conn, ds, principal, shared) for name, ds in datasets.items()}
        batch = Batch()
        cursor = self._resume(principal, raw_cursor, horizon, head, now, datasets, values, batch, not_before)
        if cursor.snap:
            await self._snapshot_page(conn, principal, cursor, datasets, values, batch, limit, now, horizon)
            more = bool(cursor.snap) or cursor.seq < head
        else:
            more = await self._changes(conn, principal, cursor, datasets, values, batch, head, limit, now, shared)
        response: PullResponse = {"v": PROTOCOL_VERSION, "cursor": self.cursors.encode(cursor), "more": more,
                                  "reset": batch.reset, "data": batch.data}
        if batch.expected:
            response["expected"] = batch.expected
        return response

    async def buckets(self, principal: Principal) -> frozenset[str]:
        """The log buckets this principal's datasets read: what wakes its live session."""
        async with self.db.read() as conn:
            found: set[str] = set()
            for ds in self.registry.for_role(principal.role):
                spec = ds.scopes[principal.role].spec(ds.table.name)
                values = await _values(conn, ds, principal, None) if spec.partition else [None]
                found.update(spec.bucket(v) for v in values)
        buckets = frozenset(found)
        if len(self._bucket_sets) > 4096:
            self._bucket_sets.clear()
        return self._bucket_sets.setdefault(buckets, buckets)  # live sessions of one scope share one set

    def _resume(self, principal: Principal, raw: bytes | None, horizon: int, head: int, now: int,
                datasets: dict[str, Dataset], values: dict[str, list[Any]], batch: Batch,
                not_before: int | None) -> Cursor:
        """Decode the cursor and queue a snapshot of every dataset that must be reset."""
        cursor = self.cursors.decode(raw) if raw else None
        if cursor is None or (cursor.tenant_id, cursor.user_id) != (principal.tenant_id, principal.user_id) \
                or cursor.seq < horizon or cursor.seq > head or (not_before is not None and cursor.t < not_before):
            return Cursor(principal.tenant_id, principal.user_id, seq=head, t=now, snap=list(datasets))
        for gone in [name for name in cursor.datasets if name not in datasets]:
            batch.reset.append(gone)  # no longer served to this role: the device clears it
            del cursor.datasets[gone]
        for name, ds in datasets.items():
            if cursor.datasets.get(name) != _state(ds, values[name]) and name not in cursor.snap:
                cursor.snap.append(name)
        # A dataset being paged keeps its place (``after`` is its key); the rest go in priority order.
        if cursor.snap and (cursor.after is None or cursor.snap[0] not in datasets):
            cursor.after = None
            current: list[str] = []
        else:
            current = cursor.snap[:1]
        order = list(datasets)
        queued = sorted({n for n in cursor.snap if n in datasets} - set(current), key=order.index)
        cursor.snap = current + queued
        return cursor

    async def _snapshot_page(self, conn: AsyncConnection, principal: Principal, cursor: Cursor,
                             datasets: dict[str, Dataset], values: dict[str, list[Any]],
                             batch: Batch, limit: int, now: int, horizon: int) -> None:
        while cursor.snap and batch.rows < limit:
            ds = datasets[cursor.snap[0]]
            scope = ds.scopes[principal.role]
            starting = cursor.after is None
            if starting:
                batch.reset.append(ds.name)
                cursor.datasets[ds.name] = _state(ds, values[ds.name])
            want = limit - batch.rows
            if await _hot_page(conn, principal.tenant_id, ds, scope, values[ds.name], cursor, batch, want, horizon):
                if starting:  # what the pages hold: a reconnect storm must not count the catalog per device
                    batch.expected[ds.name] = await hot.rows_in(
                        conn, principal.tenant_id, ds, hot.scope_key(ds, scope, values[ds.name]))
                continue
            if starting:
                batch.expected[ds.name] = await conn.scalar(sa.select(sa.func.count()).select_from(ds.table).where(
                    tenant_clause(ds.table, principal.tenant_id), scope.clause(ds.table, values[ds.name], now)))
            if isinstance(cursor.after, list):  # was paging pre-built pages: go on from its last key
                cursor.after = cursor.after[0]
            query = (
                sa.select(*(ds.sql(c) for c in ds.columns))
                .where(tenant_clause(ds.table, principal.tenant_id), scope.clause(ds.table, values[ds.name], now))
                .order_by(*ds.order())
                .limit(want)
            )
            if cursor.after is not None:
                query = query.where(ds.after(cursor.after))
            rows = [list(r) for r in await conn.execute(query)]
            batch.put(ds, rows)
            if len(rows) < want:
                cursor.snap.pop(0)
                cursor.after = None
            else:
                cursor.after = rows[-1][ds.columns.index(ds.key)]

    async def _changes(self, conn: AsyncConnection, principal: Principal, cursor: Cursor,
                       datasets: dict[str, Dataset], values: dict[str, list[Any]],
                       batch: Batch, head: int, limit: int, now: int, shared: SharedReads | None) -> bool:
        """Append the changes after the cursor to the batch; returns ``more``."""
        by_bucket: dict[str, list[Dataset]] = {}
        for name, ds in datasets.items():
            spec = ds.scopes[principal.role].spec(ds.table.name)
            for value in values[name] if spec.partition else [None]:
                by_bucket.setdefault(spec.bucket(value), []).append(ds)
        entries, upto = await _entries(conn, principal.tenant_id, list(by_bucket), cursor.seq, head, limit, shared)
        keys: dict[str, dict[str, None]] = {}
        for bucket, key in entries:
            for ds in by_bucket[bucket]:
                keys.setdefault(ds.name, {})[key] = None
        for name, ds_keys in keys.items():
            await _current(conn, principal, datasets[name], list(ds_keys), set(values[name]), batch, now, shared)
        if now - cursor.t >= WINDOW_STEP_MS:
            for name, ds in datasets.items():
                await _aged_out(conn, principal, ds, values[name], cursor.t, now, batch, keys.get(name, {}))
            cursor.t = now
        cursor.seq = upto
        return upto < head


async def _head(conn: AsyncConnection, tenant_id: int) -> tuple[int, int]:
    row = (await conn.execute(
        sa.select(log_head.c.seq, log_head.c.horizon).where(log_head.c.tenant_id == tenant_id)
    )).first()
    return (row[0], row[1]) if row else (0, 0)


async def _values(conn: AsyncConnection, ds: Dataset, principal: Principal, shared: SharedReads | None) -> list[Any]:
    scope = ds.scopes[principal.role]
    if scope.partition is None or scope.values is None:
        return []
    memo = (ds.name, principal.role, principal.user_id)
    if shared is not None and memo in shared.values:
        return shared.values[memo]
    values = scope.values(principal)
    if isinstance(values, sa.Select):
        values = (await conn.execute(values)).scalars().all()
    values = sorted({v for v in values if v is not None}, key=repr)
    if shared is not None:
        shared.values[memo] = values
    return values


def _state(ds: Dataset, values: Sequence[Any]) -> tuple[int, int]:
    digest = hashlib.blake2b(repr(list(values)).encode(), digest_size=4).digest()
    return ds.shape_hash, int.from_bytes(digest, "big")


async def _entries(conn: AsyncConnection, tenant_id: int, buckets: list[str], after: int, head: int,
                   limit: int, shared: SharedReads | None = None) -> tuple[list[tuple[str, str]], int]:
    """``(bucket, key)`` entries after a position, whole transactions only, up to ~limit."""
    if not buckets or after >= head:
        return [], head
    if shared is not None:
        found = await _shared_entries(conn, tenant_id, buckets, after, head, limit, shared)
        if found is not None:
            return found, head
    log = change_log.c
    params = {"tenant": tenant_id, "after": after, "head": head, "limit": limit,
              **{f"b{n}": bucket for n, bucket in enumerate(buckets)}}
    rows = (await conn.execute(_entries_statement(len(buckets)), params)).all()
    if len(rows) < limit:
        return [(b, k) for b, k, _ in rows], head
    upto = rows[-1][2]
    base = sa.select(log.bucket, log.key, log.seq).where(log.tenant_id == tenant_id, log.bucket.in_(buckets))
    rest = (await conn.execute(base.where(change_log.c.seq == upto))).all()
    seen = {(b, k) for b, k, s in rows if s == upto}
    return [(b, k) for b, k, _ in rows] + [(b, k) for b, k, _ in rest if (b, k) not in seen], upto


@functools.lru_cache(maxsize=64)
def _entries_statement(buckets: int) -> sa.Select:
    """The entries query for a number of buckets, built once: building the union of
    subqueries cost more than running it (a 10-change pull spent most of its time here).

    One range scan of the (tenant, bucket, seq) primary key per bucket: the planner cannot
    pick a scan of every entry of a bucket, however long the log grows.
    """
    log = change_log.c
    limit = sa.bindparam("limit", type_=sa.Integer)
    per_bucket = [
        sa.select(log.bucket, log.key, log.seq)
        .where(log.tenant_id == sa.bindparam("tenant"), log.bucket == sa.bindparam(f"b{n}"),
               log.seq > sa.bindparam("after"), log.seq <= sa.bindparam("head"))
        .order_by(log.seq).limit(limit).subquery().select()
        for n in range(buckets)
    ]
    merged = sa.union_all(*per_bucket).subquery() if buckets > 1 else per_bucket[0].subquery()
    return sa.select(merged).order_by(merged.c.seq).limit(limit)


async def _shared_entries(conn: AsyncConnection, tenant_id: int, buckets: list[str], after: int, head: int,
                          limit: int, shared: SharedReads) -> list[tuple[str, str]] | None:
    """Entries of each bucket in (after, head], read once per wake-up (the buckets no
    session of the round has read yet, in one statement); None when there are more than
    ``limit`` of them (a catch-up, paged the usual way)."""
    missing = [b for b in buckets if (cached := shared.entries.get(b)) is None or cached[0] > after]
    if missing:
        params = {"tenant": tenant_id, "after": after, "head": head, "limit": limit + 1,
                  **{f"b{n}": bucket for n, bucket in enumerate(missing)}}
        rows = (await conn.execute(_entries_statement(len(missing)), params)).all()
        if len(rows) > limit:
            return None
        read: dict[str, list[tuple[int, str]]] = {bucket: [] for bucket in missing}
        for bucket, key, seq in rows:  # in seq order
            read[bucket].append((seq, key))
        for bucket in missing:
            shared.entries[bucket] = (after, read[bucket])
    found = [(seq, bucket, key) for bucket in buckets for seq, key in shared.entries[bucket][1] if seq > after]
    if len(found) > limit:
        return None
    return [(bucket, key) for _, bucket, key in sorted(found)]


async def _hot_page(conn: AsyncConnection, tenant_id: int, ds: Dataset, scope: Scope, values: list[Any],
                    cursor: Cursor, batch: Batch, want: int, horizon: int) -> bool:
    """Serve the next pre-built page of a hot dataset, if there is one that fits.

    ``cursor.after`` is ``[last key, page seq, next page]`` while pages are served. The
    cursor moves back to the page's position: changes since it follow as changes.
    """
    if not hot.eligible(ds, scope):
        return False
    if cursor.after is None:
        seq, number = None, 0
    elif isinstance(cursor.after, list):
        _, seq, number = cursor.after
    else:
        return False  # paging live rows already
    page = await hot.read_page(conn, tenant_id, ds, hot.scope_key(ds, scope, values), number)
    if page is None or (seq is not None and page.seq != seq) or page.seq < horizon or len(page.rows) > want:
        return False
    cursor.seq = min(cursor.seq, page.seq)
    batch.put(ds, page.rows)
    if page.last:
        cursor.snap.pop(0)
        cursor.after = None
    else:
        cursor.after = [page.rows[-1][ds.columns.index(ds.key)], page.seq, number + 1]
    return True


def _typed(ds: Dataset, keys: list[str]) -> list[Any]:
    """The change log's key texts as the key column's values (a composite key stays text)."""
    return [int(k) for k in keys] if ds.types[ds.columns.index(ds.key)] == "int" else keys



async def _current(conn: AsyncConnection, principal: Principal, ds: Dataset, keys: list[str],
                   values: set[Any], batch: Batch, now: int, shared: SharedReads | None = None) -> None:
    """Re-read changed rows: visible ones are upserts, every other key a delete."""
    scope = ds.scopes[principal.role]
    wire = list(ds.columns)
    typed = _typed(ds, keys)
    if shared is None:
        extra = sorted((scope.spec(ds.table.name).columns | ({scope.window[0]} if scope.window else set()))
                       - set(wire))
        found = await _read_rows(conn, principal.tenant_id, ds, typed, wire + extra)
    else:
        found = await _shared_rows(conn, principal.tenant_id, ds, typed, shared)
    rows, deletes = [], []
    for key in typed:
        row = found.get(key)
        if row is not None and scope.admits(row, values, now):
            rows.append([row[c] for c in wire])
        else:
            deletes.append(key)
    batch.put(ds, rows)
    batch.delete(ds, deletes)


async def _read_rows(conn: AsyncConnection, tenant_id: int, ds: Dataset, keys: list[Any],
                     names: list[str]) -> dict[Any, dict[str, Any]]:
    found: dict[Any, dict[str, Any]] = {}
    for start in range(0, len(keys), _CHUNK):
        query = sa.select(*(ds.sql(c) for c in names)).where(
            tenant_clause(ds.table, tenant_id), ds.key_in(keys[start:start + _CHUNK])
        )
        for row in (await conn.execute(query)).mappings():
            found[row[ds.key]] = dict(row)
    return found


async def _shared_rows(conn: AsyncConnection, tenant_id: int, ds: Dataset, keys: list[Any],
                       shared: SharedReads) -> dict[Any, dict[str, Any]]:
    """Whole current rows, read once per wake-up whichever datasets and roles need them."""
    table = ds.table.name
    missing = [k for k in keys if (table, str(k)) not in shared.rows]
    if missing:
        found = await _read_rows(conn, tenant_id, ds, missing, list(ds.whole_row))
        for key in missing:
            shared.rows[(table, str(key))] = found.get(key)
    return {k: row for k in keys if (row := shared.rows[(table, str(k))]) is not None}


async def _aged_out(conn: AsyncConnection, principal: Principal, ds: Dataset, values: list[Any],
                    since: int, now: int, batch: Batch, already: dict[str, None]) -> None:
    """Rows that left a time window between two pulls, with no write to them: deletes."""
    scope = ds.scopes[principal.role]
    if scope.window is None or now <= since:
        return
    column, width = scope.window
    stamp = ds.table.c[column]
    no_window = dataclasses.replace(scope, window=None)
    query = sa.select(ds.sql(ds.key)).where(
        tenant_clause(ds.table, principal.tenant_id),
        no_window.clause(ds.table, values, now),
        stamp >= since - width,
        stamp < now - width,
    )
    keys = [k for k in (await conn.execute(query)).scalars() if str(k) not in already]
    batch.delete(ds, keys)
