"""SQLite local store and outbox (stdlib ``sqlite3``), the reference for app developers.

Layout of the file:

* ``fs_meta(name, value)``: the cursor (and anything else the app wants to keep);
* ``fs_datasets(name, tbl)``: which table holds which dataset;
* one table per dataset, ``ds_<name>(k PRIMARY KEY, v BLOB) WITHOUT ROWID``: ``k`` is the
  dataset's key as sent (int or str: the column has no type affinity, so 1 and "1" differ),
  ``v`` the row as a msgpack map of column → value;
* ``fs_outbox`` and ``fs_outbox_seq``: the outbox and its id counter.

Store and outbox may share one file (pass the same path or connection). Every write is an
explicit ``BEGIN IMMEDIATE … COMMIT``; a failure rolls back everything of the batch.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack

from .store import APPLIED, PENDING, REJECTED, Key, OutboxEntry, Row, check_value, now_ms, plan_batch

Source = str | Path | sqlite3.Connection


def _connect(source: Source, synchronous: str) -> tuple[sqlite3.Connection, bool]:
    if isinstance(source, sqlite3.Connection):
        source.isolation_level = None  # a shared connection: we BEGIN and COMMIT explicitly
        return source, False
    conn = sqlite3.connect(str(source), isolation_level=None)  # autocommit: we BEGIN ourselves
    if str(source) != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn, True


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SqliteStore:
    """:class:`~fieldsync_client.store.LocalStore` in a SQLite file (or ``":memory:"``).

    ``synchronous`` is SQLite's: NORMAL (default) may lose the last batches on power loss but
    never splits one, and a lost batch is pulled again since its cursor went with it.
    """

    def __init__(self, source: Source = ":memory:", keys: Mapping[str, str] | None = None, *,
                 synchronous: str = "NORMAL") -> None:
        self.conn, self._owned = _connect(source, synchronous)
        self.keys = dict(keys or {})
        with _transaction(self.conn) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS fs_meta (name TEXT PRIMARY KEY, value BLOB)")
            conn.execute("CREATE TABLE IF NOT EXISTS fs_datasets (name TEXT PRIMARY KEY, tbl TEXT NOT NULL UNIQUE)")
        self._tables: dict[str, str] = dict(self.conn.execute("SELECT name, tbl FROM fs_datasets"))
        self._cursor = self.get_meta("cursor")

    # -- LocalStore -------------------------------------------------------------------------

    @property
    def cursor(self) -> bytes | None:
        return self._cursor

    def apply(self, batch: Mapping[str, Any]) -> None:
        """Reset, upserts, deletes and the cursor in one SQLite transaction."""
        plan = plan_batch(batch, self.keys)
        packb = msgpack.Packer(use_bin_type=True).pack
        tables = dict(self._tables)
        try:
            with _transaction(self.conn) as conn:
                for name in plan.reset:
                    if name in self._tables:
                        conn.execute(f"DELETE FROM {_quote(self._tables[name])}")
                for part in plan.parts:
                    table = _quote(self._table(part.name))
                    cols = part.cols
                    if part.rows:
                        conn.executemany(f"INSERT OR REPLACE INTO {table} (k, v) VALUES (?, ?)",
                                         [(key, packb(dict(zip(cols, row)))) for key, row in zip(part.keys, part.rows)])
                    if part.deletes:
                        conn.executemany(f"DELETE FROM {table} WHERE k = ?", [(key,) for key in part.deletes])
                conn.execute("INSERT OR REPLACE INTO fs_meta (name, value) VALUES ('cursor', ?)", (plan.cursor,))
        except BaseException:
            self._tables = tables  # tables created in the rolled-back transaction are gone
            raise
        self._cursor = plan.cursor

    def rows(self, name: str) -> dict[Key, Row]:
        table = self._tables.get(name)
        if table is None:
            return {}
        return {k: msgpack.unpackb(v, raw=False) for k, v in self.conn.execute(f"SELECT k, v FROM {_quote(table)}")}

    def datasets(self) -> list[str]:
        return sorted(self._tables)

    # -- more reads ---------------------------------------------------------------------------

    def get(self, name: str, key: Key) -> Row | None:
        table = self._tables.get(name)
        if table is None:
            return None
        found = self.conn.execute(f"SELECT v FROM {_quote(table)} WHERE k = ?", (key,)).fetchone()
        return None if found is None else msgpack.unpackb(found[0], raw=False)

    def count(self, name: str) -> int:
        table = self._tables.get(name)
        return 0 if table is None else self.conn.execute(f"SELECT count(*) FROM {_quote(table)}").fetchone()[0]

    def keys_of(self, name: str) -> list[Key]:
        table = self._tables.get(name)
        return [] if table is None else [k for (k,) in self.conn.execute(f"SELECT k FROM {_quote(table)}")]

    def dump(self) -> dict[str, dict[Key, Row]]:
        """The non-empty datasets (an empty dataset counts as absent), for comparisons."""
        return {name: rows for name in self.datasets() if (rows := self.rows(name))}

    def get_meta(self, name: str) -> Any:
        found = self.conn.execute("SELECT value FROM fs_meta WHERE name = ?", (name,)).fetchone()
        return None if found is None else found[0]

    def set_meta(self, name: str, value: Any) -> None:
        with _transaction(self.conn) as conn:
            conn.execute("INSERT OR REPLACE INTO fs_meta (name, value) VALUES (?, ?)", (name, value))

    def close(self) -> None:
        if self._owned:
            self.conn.close()

    def _table(self, name: str) -> str:
        """The dataset's table, created on first use (inside the caller's transaction)."""
        table = self._tables.get(name)
        if table is None:
            base = "ds_" + re.sub(r"[^0-9A-Za-z_]", "_", name)[:48]
            table, n = base, 1
            while table in self._tables.values():
                n += 1
                table = f"{base}_{n}"
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS {_quote(table)} (k PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
            self.conn.execute("INSERT INTO fs_datasets (name, tbl) VALUES (?, ?)", (name, table))
            self._tables[name] = table
        return table


_ENTRY_COLS = "id, name, args, at, status, code, message, result, dismissed"


def _entry(row: tuple) -> OutboxEntry:
    ident, name, args, at, status, code, message, result, dismissed = row
    return OutboxEntry(ident, name, msgpack.unpackb(args, raw=False), at, status, code, message,
                       None if result is None else msgpack.unpackb(result, raw=False), bool(dismissed))


class SqliteOutbox:
    """:class:`~fieldsync_client.store.Outbox` in SQLite. ``synchronous=FULL`` by default: an
    enqueued mutation is an order the user took, it must survive a crash."""

    def __init__(self, source: Source = ":memory:", *, synchronous: str = "FULL", start_id: int = 1) -> None:
        self.conn, self._owned = _connect(source, synchronous)
        with _transaction(self.conn) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS fs_outbox (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                         "args BLOB NOT NULL, at INTEGER NOT NULL, status TEXT NOT NULL DEFAULT 'pending', "
                         "code TEXT, message TEXT, result BLOB, done_at INTEGER, dismissed INTEGER NOT NULL DEFAULT 0)")
            conn.execute("CREATE INDEX IF NOT EXISTS fs_outbox_status ON fs_outbox (status, id)")
            conn.execute("CREATE TABLE IF NOT EXISTS fs_outbox_seq (one INTEGER PRIMARY KEY CHECK (one = 1), "
                         "last_id INTEGER NOT NULL)")
            conn.execute("INSERT OR IGNORE INTO fs_outbox_seq (one, last_id) VALUES (1, ?)", (start_id - 1,))

    def enqueue(self, name: str, args: dict[str, Any], at: int | None = None) -> OutboxEntry:
        """Append a mutation; its id is the next of a persisted counter, never reused."""
        check_value(args)
        blob = msgpack.packb(args, use_bin_type=True)
        at = now_ms() if at is None else at
        with _transaction(self.conn) as conn:
            conn.execute("UPDATE fs_outbox_seq SET last_id = last_id + 1 WHERE one = 1")
            (ident,) = conn.execute("SELECT last_id FROM fs_outbox_seq WHERE one = 1").fetchone()
            conn.execute("INSERT INTO fs_outbox (id, name, args, at) VALUES (?, ?, ?, ?)", (ident, name, blob, at))
        return OutboxEntry(ident, name, dict(args), at)

    def pending(self, limit: int = 500) -> list[OutboxEntry]:
        query = f"SELECT {_ENTRY_COLS} FROM fs_outbox WHERE status = ? ORDER BY id LIMIT ?"
        return [_entry(row) for row in self.conn.execute(query, (PENDING, limit))]

    def mark(self, results: Iterable[Mapping[str, Any]]) -> list[OutboxEntry]:
        """Store the server's results (applied or rejected: both final) in one transaction."""
        done, ids = now_ms(), []
        with _transaction(self.conn) as conn:
            for r in results:
                if r.get("status") not in (APPLIED, REJECTED):
                    continue
                result = None if r.get("result") is None else msgpack.packb(r["result"], use_bin_type=True)
                changed = conn.execute(
                    "UPDATE fs_outbox SET status = ?, code = ?, message = ?, result = ?, done_at = ? "
                    "WHERE id = ? AND status = ?",
                    (r["status"], r.get("code"), r.get("message"), result, done, r["id"], PENDING)).rowcount
                if changed:
                    ids.append(r["id"])
        return [self._get(i) for i in ids]

    def entries(self) -> list[OutboxEntry]:
        return [_entry(row) for row in self.conn.execute(f"SELECT {_ENTRY_COLS} FROM fs_outbox ORDER BY id")]

    def rejected(self) -> list[OutboxEntry]:
        query = f"SELECT {_ENTRY_COLS} FROM fs_outbox WHERE status = ? AND dismissed = 0 ORDER BY id"
        return [_entry(row) for row in self.conn.execute(query, (REJECTED,))]

    def pending_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM fs_outbox WHERE status = ?", (PENDING,)).fetchone()[0]

    def dismiss(self, mutation_id: int) -> None:
        with _transaction(self.conn) as conn:
            conn.execute("UPDATE fs_outbox SET dismissed = 1 WHERE id = ?", (mutation_id,))

    def forget_applied(self) -> int:
        """Delete applied entries (the counter keeps going); returns how many."""
        with _transaction(self.conn) as conn:
            return conn.execute("DELETE FROM fs_outbox WHERE status = ?", (APPLIED,)).rowcount

    def close(self) -> None:
        if self._owned:
            self.conn.close()

    def _get(self, mutation_id: int) -> OutboxEntry:
        return _entry(self.conn.execute(f"SELECT {_ENTRY_COLS} FROM fs_outbox WHERE id = ?", (mutation_id,)).fetchone())
