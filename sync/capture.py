"""Change capture by triggers: every write to a synced table, by fieldsync or by any other
program (the ERP's backend, ``psql``, a COPY import), appends its change-log entries in the
writer's own transaction.

The triggers are generated from the registry's bucket specs, so they file a row exactly
as :class:`sync.schema.BucketSpec` does: an insert puts the row in its buckets, a delete
removes it, an update removes it from buckets it left and puts it in the ones it is in.
They *stage* entries (``change_stage``); the entries get their log position when the
transaction commits, which keeps positions commit-ordered and gapless (invariant 1)
without holding the tenant's position lock for the writer's whole transaction:

* PostgreSQL: statement-level triggers read the transition tables (one INSERT … SELECT
  per statement, however many rows); the first staging statement of a transaction and
  tenant inserts a ``change_txn`` row, whose deferred constraint trigger runs at COMMIT:
  it bumps ``log_head`` (the row lock orders commits from there to the end of the commit),
  moves the staged entries to ``change_log`` under that position, and NOTIFYs
  ``fieldsync_changes`` for writers other than fieldsync.
* SQLite has one writer at a time and no commit hook: row triggers stage, and
  :func:`flush` positions what is staged, as the last statement of fieldsync's own write
  transactions and, for other programs' writes, from :func:`watch`.

Why triggers and not logical replication: docs/architecture.md, "Change capture".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import SINGLE_TENANT, TENANT, BucketSpec, Registry, SyncedTable, key_parts
from .storage import Database, capture_state, change_stage, log_head, now_ms

log = logging.getLogger(__name__)

CHANNEL = "fieldsync_changes"  # PostgreSQL NOTIFY channel of commits by other programs
APPLICATION = "fieldsync"  # application_name of fieldsync's connections: it notifies by itself
_NOTIFY_BYTES = 7000  # NOTIFY payloads end at 8000 bytes; past this the notice names no buckets
OnCommit = Callable[[int, int, "frozenset[str] | None"], None]


# -- SQL of one bucket spec ---------------------------------------------------------


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _literal(value: Any, postgres: bool) -> str:
    if isinstance(value, bool):
        return ("TRUE" if value else "FALSE") if postgres else ("1" if value else "0")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"a scope filter on {value!r}: only bool, int and str values can be captured")


def _text(expr: str, postgres: bool) -> str:
    return f"({expr})::text" if postgres else f"CAST({expr} AS TEXT)"


def bucket_sql(spec: BucketSpec, row: str, postgres: bool) -> str:
    """The SQL twin of ``spec.bucket_of(row)``: the row's bucket, or NULL."""
    terms = [f"{row}.{col} IS NULL" if value is None else f"{row}.{col} = {_literal(value, postgres)}"
             for col, value in spec.where]
    if spec.partition is None:
        bucket = _quote(spec.prefix)
    else:
        terms.append(f"{row}.{spec.partition} IS NOT NULL")
        bucket = f"{_quote(spec.prefix)} || {_text(f'{row}.{spec.partition}', postgres)}"
    return f"CASE WHEN {' AND '.join(terms)} THEN {bucket} END" if terms else bucket


def key_sql(synced: SyncedTable, row: str, postgres: bool) -> str:
    """The row's key as the change log holds it: a composite key as ``schema.encode_key``."""
    parts = key_parts(synced.key)
    if len(parts) == 1:
        return _text(f"{row}.{parts[0]}", postgres)
    escaped = [f"replace(replace({_text(f'{row}.{p}', postgres)}, '\\', '\\\\'), '|', '\\|')" for p in parts]
    return " || '|' || ".join(escaped)


def _tenant(synced: SyncedTable, row: str) -> str:
    return f"{row}.{TENANT}" if TENANT in synced.table.c else str(SINGLE_TENANT)


def _check(synced: SyncedTable) -> None:
    for column in (*key_parts(synced.key), *([TENANT] if TENANT in synced.table.c else [])):
        if not isinstance(synced.table.c[column].type, (sa.Integer, sa.String, sa.Uuid)):
            raise TypeError(f"{synced.table.name}.{column}: capture needs an integer, text or uuid column")


# -- PostgreSQL ---------------------------------------------------------------------


_PG_COMMIT = [f"""
CREATE OR REPLACE FUNCTION fieldsync_commit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  position bigint;
  named text[];
BEGIN
  DELETE FROM change_txn WHERE txid = NEW.txid AND tenant_id = NEW.tenant_id;
  IF NOT EXISTS (SELECT 1 FROM change_stage WHERE txid = NEW.txid AND tenant_id = NEW.tenant_id) THEN
    RETURN NULL;  -- its statements touched no row any bucket holds
  END IF;
  UPDATE log_head SET seq = seq + 1 WHERE tenant_id = NEW.tenant_id RETURNING seq INTO position;
  IF position IS NULL THEN
    INSERT INTO log_head (tenant_id, seq, horizon) VALUES (NEW.tenant_id, 0, 0) ON CONFLICT DO NOTHING;
    UPDATE log_head SET seq = seq + 1 WHERE tenant_id = NEW.tenant_id RETURNING seq INTO position;
  END IF;
  -- Of a key staged twice in one bucket, the last write wins (as one row has one state).
  WITH staged AS (DELETE FROM change_stage WHERE txid = NEW.txid AND tenant_id = NEW.tenant_id
                  RETURNING bucket, key, op, n)
  INSERT INTO change_log (tenant_id, bucket, seq, key, op, at)
    SELECT DISTINCT ON (bucket, key) NEW.tenant_id, bucket, position, key, op,
           (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    FROM staged ORDER BY bucket, key, n DESC;
  PERFORM set_config('fieldsync.seq_' || NEW.tenant_id, position::text, true);
  IF current_setting('application_name', true) IS DISTINCT FROM '{APPLICATION}' THEN
    SELECT array_agg(DISTINCT bucket) INTO named FROM change_log
      WHERE tenant_id = NEW.tenant_id AND seq = position;
    PERFORM pg_notify('{CHANNEL}', json_build_object(
      't', NEW.tenant_id, 's', position,
      'b', CASE WHEN length(array_to_string(named, ',')) < {_NOTIFY_BYTES} THEN named END)::text);
  END IF;
  RETURN NULL;
END $$""", "DROP TRIGGER IF EXISTS fieldsync_commit ON change_txn", """
CREATE CONSTRAINT TRIGGER fieldsync_commit AFTER INSERT ON change_txn
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fieldsync_commit()"""]


def _pg_entries(synced: SyncedTable, specs: list[BucketSpec], rows: str) -> str:
    """The (tenant, bucket, key) of each row of one transition table in each spec's bucket."""
    row = rows[len("fieldsync_")]
    buckets = ", ".join(f"({bucket_sql(s, row, True)})" for s in specs)
    return (f"SELECT {_tenant(synced, row)} AS tenant_id, b.bucket, {key_sql(synced, row, True)} AS key "
            f"FROM {rows} {row} CROSS JOIN LATERAL (VALUES {buckets}) AS b(bucket) WHERE b.bucket IS NOT NULL")


def _pg_staging(synced: SyncedTable, specs: list[BucketSpec], op: str) -> str:
    """Stage a statement's entries, and mark the transaction for positioning at commit.

    An update removes a row from the buckets its old version was in and its new one is not
    (old entries ``EXCEPT`` new ones: a hashed set difference; a join of the transition
    tables, which have no index, was planned as a nested loop and cost 7x the statement),
    then puts it in its new buckets."""
    stage = "INSERT INTO change_stage (txid, tenant_id, bucket, key, op) SELECT txid_current(), e.*,"
    old, new = _pg_entries(synced, specs, "fieldsync_old"), _pg_entries(synced, specs, "fieldsync_new")
    steps = {
        "INSERT": [f"{stage} 1 FROM ({new}) AS e;"],
        "UPDATE": [f"{stage} 0 FROM ({old} EXCEPT {new}) AS e;", f"{stage} 1 FROM ({new}) AS e;"],
        "DELETE": [f"{stage} 0 FROM ({old}) AS e;"],
    }[op]
    rows = "fieldsync_old" if op == "DELETE" else "fieldsync_new"
    # The commit trigger positions nothing (and takes no position) for a tenant that staged nothing.
    steps.append(f"INSERT INTO change_txn (txid, tenant_id) SELECT DISTINCT txid_current(), "
                 f"{_tenant(synced, 'r')} FROM {rows} r ON CONFLICT DO NOTHING;")
    return "\n  ".join(steps)


def _pg_table(synced: SyncedTable, specs: list[BucketSpec]) -> list[str]:
    name = synced.table.name
    statements = []
    for op, tables in (("INSERT", "NEW TABLE AS fieldsync_new"),
                       ("UPDATE", "OLD TABLE AS fieldsync_old NEW TABLE AS fieldsync_new"),
                       ("DELETE", "OLD TABLE AS fieldsync_old")):
        function = f"fieldsync_capture_{name}_{op.lower()}"
        statements.append(f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                          f"BEGIN\n  {_pg_staging(synced, specs, op)}\n  RETURN NULL;\nEND $$")
        statements.append(f'DROP TRIGGER IF EXISTS {function} ON "{name}"')
        statements.append(f'CREATE TRIGGER {function} AFTER {op} ON "{name}" REFERENCING {tables} '
                          f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()")
    return statements


# -- SQLite -------------------------------------------------------------------------


def _sqlite_table(synced: SyncedTable, specs: list[BucketSpec]) -> list[str]:
    name = synced.table.name
    stage = "INSERT INTO change_stage (tenant_id, bucket, key, op)"

    def put(row: str) -> str:
        buckets = " UNION ALL ".join(f"SELECT {bucket_sql(s, row, False)} AS bucket" for s in specs)
        return (f"{stage} SELECT {_tenant(synced, row)}, bucket, {key_sql(synced, row, False)}, 1 "
                f"FROM ({buckets}) WHERE bucket IS NOT NULL;")

    moved = " UNION ALL ".join(f"SELECT {bucket_sql(s, 'OLD', False)} AS old, {bucket_sql(s, 'NEW', False)} AS new"
                               for s in specs)
    old_key, new_key = key_sql(synced, "OLD", False), key_sql(synced, "NEW", False)
    remove_moved = (f"{stage} SELECT {_tenant(synced, 'OLD')}, old, {old_key}, 0 FROM ({moved}) "
                    f"WHERE old IS NOT NULL AND (old IS NOT new OR {old_key} IS NOT {new_key}"
                    + (f" OR OLD.{TENANT} IS NOT NEW.{TENANT}" if TENANT in synced.table.c else "") + ");")
    removes = " UNION ALL ".join(f"SELECT {bucket_sql(s, 'OLD', False)} AS old" for s in specs)
    remove = (f"{stage} SELECT {_tenant(synced, 'OLD')}, old, {old_key}, 0 FROM ({removes}) "
              f"WHERE old IS NOT NULL;")
    bodies = {"insert": put("NEW"), "update": f"{remove_moved}\n  {put('NEW')}", "delete": remove}
    statements = []
    for op, body in bodies.items():
        trigger = f"fieldsync_capture_{name}_{op}"
        statements.append(f"DROP TRIGGER IF EXISTS {trigger}")
        statements.append(f'CREATE TRIGGER {trigger} AFTER {op.upper()} ON "{name}" FOR EACH ROW BEGIN\n  {body}\nEND')
    return statements


# -- install, check, uninstall ------------------------------------------------------


def _captured(registry: Registry) -> list[tuple[SyncedTable, list[BucketSpec]]]:
    found = []
    for name, synced in sorted(registry.tables.items()):
        specs = registry.specs_of(name)
        if specs:
            _check(synced)
            found.append((synced, specs))
    return found


def ddl(registry: Registry, postgres: bool) -> list[str]:
    """Every statement that (re)installs capture for the registry's synced tables."""
    statements = list(_PG_COMMIT) if postgres else []
    for synced, specs in _captured(registry):
        statements += (_pg_table if postgres else _sqlite_table)(synced, specs)
    return statements


def _hash(statements: list[str]) -> str:
    return hashlib.sha256("\n;\n".join(statements).encode()).hexdigest()


async def install(db: Database, registry: Registry) -> bool:
    """(Re)install the triggers; idempotent. Tables synced before but not now lose theirs.
    Returns whether anything changed."""
    statements = ddl(registry, not db.is_sqlite)
    wanted = _hash(statements)
    async with db.write() as conn:
        if await conn.scalar(sa.select(capture_state.c.hash).where(capture_state.c.name == "triggers")) == wanted:
            return False
        await _drop_all(conn, db, keep={t.table.name for t, _ in _captured(registry)})
        for statement in statements:
            await conn.exec_driver_sql(statement)
        await conn.execute(sa.delete(capture_state).where(capture_state.c.name == "triggers"))
        await conn.execute(sa.insert(capture_state).values(name="triggers", hash=wanted,
                                                           installed_at=now_ms()))
    log.debug("capture triggers installed for %d tables", len(_captured(registry)))
    return True


async def installed(db: Database, registry: Registry) -> bool:
    """Whether the installed triggers are those the registry asks for."""
    async with db.read() as conn:
        found = await conn.scalar(sa.select(capture_state.c.hash).where(capture_state.c.name == "triggers"))
    return found == _hash(ddl(registry, not db.is_sqlite))


async def uninstall(db: Database) -> None:
    """Remove every capture trigger and function; the tables are left as they were."""
    async with db.write() as conn:
        await _drop_all(conn, db, keep=set())
        await conn.execute(sa.delete(capture_state).where(capture_state.c.name == "triggers"))


async def _drop_all(conn: AsyncConnection, db: Database, keep: set[str]) -> None:
    """Drop capture triggers of tables not in ``keep`` (those in it are replaced anyway)."""
    if db.is_sqlite:
        found = await conn.exec_driver_sql(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'fieldsync_capture_%'")
        for trigger, table in found.all():
            if table not in keep:
                await conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger}")
        return
    found = await conn.exec_driver_sql(
        "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE t.tgname LIKE 'fieldsync_capture_%'")
    for trigger, table in found.all():
        if table not in keep:
            await conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS {trigger} ON "{table}"')
            await conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {trigger}()")
    if not keep:
        await conn.exec_driver_sql("DROP TRIGGER IF EXISTS fieldsync_commit ON change_txn")
        await conn.exec_driver_sql("DROP FUNCTION IF EXISTS fieldsync_commit()")


# -- positions ----------------------------------------------------------------------


async def position(conn: AsyncConnection, db: Database, tenant_id: int) -> tuple[int, frozenset[str]] | None:
    """Give the transaction's staged entries of ``tenant_id`` their log position now, as its
    last statement: ``(seq, buckets)``, or None when it staged nothing. What the commit
    would do anyway, done early so the caller learns the position (to notify with it)."""
    if db.is_sqlite:
        return await _flush_tenant(conn, tenant_id)
    await conn.exec_driver_sql("SET CONSTRAINTS fieldsync_commit IMMEDIATE")
    found = (await conn.execute(_POSITIONED, {"tenant": tenant_id, "setting": f"fieldsync.seq_{tenant_id}"})).all()
    if not found:
        return None
    return found[0].seq, frozenset(row.bucket for row in found)


# The position the commit trigger just gave this transaction (a setting local to it), and
# the buckets it wrote there: one round trip.
_POSITIONED = sa.text(
    "SELECT seq, bucket FROM change_log WHERE tenant_id = :tenant "
    "AND seq = NULLIF(current_setting(:setting, true), '')::bigint GROUP BY seq, bucket")


async def _flush_tenant(conn: AsyncConnection, tenant_id: int) -> tuple[int, frozenset[str]] | None:
    """SQLite: move the tenant's staged entries to the log under the next position. Three
    statements, no entry through Python: this runs in every write transaction."""
    seq = (await conn.exec_driver_sql(_SQLITE_BUMP, (tenant_id, tenant_id))).scalar()
    if seq is None:  # nothing staged, or the tenant's first write
        if (await conn.exec_driver_sql(_SQLITE_STAGED, (tenant_id,))).scalar() is None:
            return None
        await conn.execute(sa.insert(log_head).values(tenant_id=tenant_id, seq=1))
        seq = 1
    await conn.exec_driver_sql(_SQLITE_MOVE, (seq, now_ms(), tenant_id))
    buckets = (await conn.exec_driver_sql(_SQLITE_CLEAR, (tenant_id,))).scalars().all()
    return seq, frozenset(buckets)


_SQLITE_BUMP = ("UPDATE log_head SET seq = seq + 1 WHERE tenant_id = ? "
                "AND EXISTS (SELECT 1 FROM change_stage WHERE tenant_id = ?) RETURNING seq")
_SQLITE_STAGED = "SELECT 1 FROM change_stage WHERE tenant_id = ? LIMIT 1"
# Of a key staged twice in one bucket, the last write wins.
_SQLITE_MOVE = ("INSERT INTO change_log (tenant_id, bucket, seq, key, op, at) "
                "SELECT tenant_id, bucket, ?, key, op, ? FROM change_stage WHERE n IN "
                "(SELECT max(n) FROM change_stage WHERE tenant_id = ? GROUP BY bucket, key)")
_SQLITE_CLEAR = "DELETE FROM change_stage WHERE tenant_id = ? RETURNING bucket"


async def flush(db: Database) -> dict[int, tuple[int, frozenset[str]]]:
    """SQLite: position what other programs' writes staged; ``{tenant: (seq, buckets)}``."""
    async with db.read() as conn:
        tenants = (await conn.execute(sa.select(change_stage.c.tenant_id).distinct())).scalars().all()
    if not tenants:
        return {}
    done = {}
    async with db.write() as conn:
        for tenant_id in tenants:
            if (positioned := await _flush_tenant(conn, tenant_id)) is not None:
                done[tenant_id] = positioned
    return done


async def watch(db: Database, on_commit: OnCommit, *, interval: float = 0.1) -> None:
    """Hear of commits by other programs until cancelled: ``on_commit(tenant, seq, buckets)``
    (``buckets`` None: any). PostgreSQL: LISTEN on the capture's NOTIFY channel. SQLite,
    every ``interval`` seconds: position what other programs staged, and notice log heads
    another fieldsync process (``fieldsync import``) moved."""
    if db.is_sqlite:
        await _watch_sqlite(db, on_commit, interval)
    await _listen(db, on_commit)


async def _watch_sqlite(db: Database, on_commit: OnCommit, interval: float) -> None:
    seen: dict[int, int] = {}

    def ours(tenant_id: int, seq: int, buckets: frozenset[str]) -> None:  # this process told its fan-out
        seen[tenant_id] = max(seen.get(tenant_id, 0), seq)

    db.commit_listeners.append(ours)
    moved: dict[int, int] = {}  # heads seen ahead of this process's own commits, one look ago
    try:
        first = True
        while True:
            try:
                for tenant_id, (seq, buckets) in (await flush(db)).items():
                    ours(tenant_id, seq, buckets)
                    on_commit(tenant_id, seq, buckets)
                async with db.read() as conn:
                    heads = (await conn.execute(sa.select(log_head.c.tenant_id, log_head.c.seq))).all()
                for tenant_id, seq in heads:
                    # A head ahead of our commits may be one of ours whose notice is a moment
                    # behind its COMMIT: only a head still ahead one look later is another
                    # process's (waking every session for our own commits split bursts).
                    if not first and moved.get(tenant_id, 0) > seen.get(tenant_id, 0):
                        on_commit(tenant_id, seq, None)
                        seen[tenant_id] = seq
                    moved[tenant_id] = seq if seq > seen.get(tenant_id, 0) else 0
                    if first:
                        seen[tenant_id] = max(seen.get(tenant_id, 0), seq)
                first = False
            except Exception:  # the database is away: the next round tries again
                log.warning("capture watch: could not look for other programs' writes", exc_info=True)
            await asyncio.sleep(interval)
    finally:
        db.commit_listeners.remove(ours)


async def _listen(db: Database, on_commit: OnCommit) -> None:
    def heard(connection: Any, pid: int, channel: str, payload: str) -> None:
        try:
            notice = json.loads(payload)
            buckets = notice.get("b")
            on_commit(int(notice["t"]), int(notice["s"]), frozenset(buckets) if buckets is not None else None)
        except (ValueError, KeyError, TypeError):
            log.warning("capture watch: unreadable notice %r", payload[:200])

    while True:
        try:
            async with db.engine.connect() as conn:
                raw = (await conn.get_raw_connection()).driver_connection
                await raw.add_listener(CHANNEL, heard)
                try:
                    while not raw.is_closed():
                        await asyncio.sleep(1)
                finally:
                    if not raw.is_closed():
                        await raw.remove_listener(CHANNEL, heard)
        except asyncio.CancelledError:
            raise
        except Exception:  # reconnect; the 30 s safety poll covers what was missed meanwhile
            log.warning("capture watch: LISTEN connection lost; reconnecting", exc_info=True)
        await asyncio.sleep(1)
