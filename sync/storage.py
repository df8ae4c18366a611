"""The engine's own tables and the database handle (SQLite or PostgreSQL by URL).

Tables: ``log_head`` (per-tenant commit position), ``change_log`` (what changed in which
bucket at which position), ``mutation_ledger`` (exactly-once push) and ``devices``.
Domain tables join the same :data:`metadata` so one Alembic history covers everything.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .errors import StorageError

log = logging.getLogger(__name__)

metadata = sa.MetaData()


def now_ms() -> int:
    return time.time_ns() // 1_000_000

log_head = sa.Table(
    "log_head",
    metadata,
    sa.Column("tenant_id", sa.Integer, primary_key=True, autoincrement=False),
    # The last committed position. Writers bump it as the last statement of their
    # transaction, so its row lock orders commits: see docs/architecture.md.
    sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
    # Entries at or below this position may be compacted away; older cursors get a snapshot.
    sa.Column("horizon", sa.BigInteger, nullable=False, server_default="0"),
)

change_log = sa.Table(
    "change_log",
    metadata,
    sa.Column("tenant_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("bucket", sa.String(200), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("op", sa.SmallInteger, nullable=False),  # 1 put, 0 removed from the bucket
    sa.Column("at", sa.BigInteger, nullable=False),  # commit time, ms
    sa.Index("ix_change_log_seq", "tenant_id", "seq"),
    sa.Index("ix_change_log_key", "tenant_id", "bucket", "key"),
)
# Change capture (sync/capture.py). The triggers on synced tables stage each write's
# entries here, in the writer's transaction; they get their log position when it commits
# (PostgreSQL: a deferred trigger on ``change_txn``; SQLite: ``capture.flush``). Rows live
# only inside one transaction on PostgreSQL, hence UNLOGGED there (see the migration).
change_stage = sa.Table(
    "change_stage",
    metadata,
    sa.Column("n", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("txid", sa.BigInteger),  # PostgreSQL's txid_current(); unused on SQLite
    sa.Column("tenant_id", sa.Integer, nullable=False),
    sa.Column("bucket", sa.String(200), nullable=False),
    sa.Column("key", sa.String(100), nullable=False),
    sa.Column("op", sa.SmallInteger, nullable=False),
    sa.Index("ix_change_stage_txid", "txid", "tenant_id"),
)
# One row per (transaction, tenant) that staged entries: its insert queues the deferred
# trigger that positions them at commit (PostgreSQL only).
change_txn = sa.Table(
    "change_txn",
    metadata,
    sa.Column("txid", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("tenant_id", sa.Integer, primary_key=True, autoincrement=False),
)
# The hash of the capture triggers installed, so ``serve`` can tell they are out of date.
capture_state = sa.Table(
    "capture_state",
    metadata,
    sa.Column("name", sa.String(40), primary_key=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("installed_at", sa.BigInteger, nullable=False),
)

# Pre-built snapshot pages of datasets many devices share (the catalog, a branch's stock):
# the rows of one scope read in one snapshot at log position ``seq``, in key order.
hot_pages = sa.Table(
    "hot_pages",
    metadata,
    sa.Column("tenant_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("dataset", sa.String(64), primary_key=True),
    sa.Column("scope", sa.String(32), primary_key=True),  # hash of the scope and its partition values
    sa.Column("page", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),  # rows in this page
    sa.Column("pages", sa.Integer, nullable=False),  # pages in this build
    sa.Column("rows", sa.LargeBinary, nullable=False),  # msgpack array of row arrays
    sa.Column("built_at", sa.BigInteger, nullable=False),
)

PUT, REMOVE = 1, 0

mutation_ledger = sa.Table(
    "mutation_ledger",
    metadata,
    # "<tenant>:<client_id>:<mutation id>"; "<tenant>/<epoch>:…" from a device's first move
    # to another user on (see ``devices.epoch``)
    sa.Column("id", sa.String(180), primary_key=True),
    sa.Column("tenant_id", sa.Integer, nullable=False),
    sa.Column("client_id", sa.String(128), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
    sa.Column("mutation_id", sa.BigInteger, nullable=False),
    sa.Column("user_id", sa.Integer, nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("args", sa.JSON, nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False, info={"wire": "time"}),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("code", sa.String(40)),
    sa.Column("message", sa.Text),
    sa.Column("result", sa.JSON),
    sa.Column("applied_at", sa.BigInteger, nullable=False, info={"wire": "time"}),
    sa.UniqueConstraint("tenant_id", "client_id", "epoch", "mutation_id", name="uq_ledger_client_mutation"),
    sa.Index("ix_ledger_user", "tenant_id", "user_id", "status"),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("tenant_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("client_id", sa.String(128), primary_key=True),
    sa.Column("user_id", sa.Integer, nullable=False),
    sa.Column("last_mutation_id", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("first_seen", sa.BigInteger, nullable=False),
    sa.Column("last_seen", sa.BigInteger, nullable=False),
    sa.Column("acked_seq", sa.BigInteger),
    sa.Column("app_version", sa.String(64)),
    sa.Column("last_error", sa.String(40)),
    sa.Column("revoked_at", sa.BigInteger),
    # Set when an admin re-enrols a revoked device: cursors from before it get a full reset.
    sa.Column("enrolled_at", sa.BigInteger),
    # The ledger namespace: raised when an admin moves the device to another user, so the
    # new owner's mutation ids start over without meeting the old owner's results.
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
    # The last bearer token the device presented (SHA-256) and its expiry: revoking the
    # device refuses that token whatever client_id it comes with.
    sa.Column("token_hash", sa.String(64)),
    sa.Column("token_exp", sa.BigInteger),
    # Set by the stale-device task (unseen for FIELDSYNC_STALE_DEVICE_DAYS), cleared when
    # the device comes back; a retired device does not count toward its user's cap.
    sa.Column("retired_at", sa.BigInteger),
    # The device's high-water mark when it was retired: the ledger entries up to it are
    # gone, and a replay of one is answered as forgotten, never applied again.
    sa.Column("forgot_through", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_devices_user", "tenant_id", "user_id"),
)

# Tokens last presented by revoked devices, refused until they expire.
revoked_tokens = sa.Table(
    "revoked_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.Integer, nullable=False),
    sa.Column("client_id", sa.String(128), nullable=False),
    sa.Column("revoked_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
)


# Background jobs that ran out of retries (jobs/failures.py), whatever domain they belong to:
# listed by `fieldsync jobs failed`, run again by `fieldsync jobs retry`.
jobs_failed = sa.Table(
    "jobs_failed",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("task", sa.String(60), nullable=False),
    sa.Column("task_id", sa.String(40), nullable=False),
    sa.Column("tenant_id", sa.Integer),
    sa.Column("args", sa.JSON, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("failed_at", sa.BigInteger, nullable=False),
    sa.Column("retried_at", sa.BigInteger),  # set by `fieldsync jobs retry`
    sa.Index("ix_jobs_failed_at", "failed_at"),
)


def async_url(url: str) -> str:
    """Pick the async driver for a plain ``sqlite://`` or ``postgresql://`` URL."""
    for plain, driver in (("sqlite://", "sqlite+aiosqlite://"), ("postgresql://", "postgresql+asyncpg://"),
                          ("postgres://", "postgresql+asyncpg://")):
        if url.startswith(plain):
            return driver + url[len(plain):]
    return url


# sa.exc.TimeoutError: no pooled connection within the pool's timeout (a storm of requests
# waiting for the pool); nothing was run, so it is UNAVAILABLE, not a server fault.
_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, OSError, asyncio.TimeoutError, sa.exc.TimeoutError)



@functools.lru_cache(maxsize=64)
def _for_update(query: sa.Select, of: sa.Table | None) -> sa.Select:
    """The locking twin of a statement built once (a handler's prebuilt read), built once
    too: building it and its cache key per call cost more than running it (issue 13)."""
    return query.with_for_update() if of is None else query.with_for_update(of=of)

class Database:
    """An async engine plus the transaction discipline the change log needs.

    ``read()`` gives a consistent snapshot (REPEATABLE READ on PostgreSQL, one WAL read
    transaction on SQLite); ``write()`` a read-committed transaction. SQLite allows one
    writer, so writes are serialised in-process and begin IMMEDIATE instead of failing
    with "database is locked" half-way.
    """

    def __init__(self, url: str, *, pool_size: int = 10, pool_timeout: float = 30.0,
                 application: str = "fieldsync") -> None:
        """``application``: the PostgreSQL application_name. The capture's commit trigger
        NOTIFYs for every other name; a server process tells its fan-out itself."""
        url = async_url(url)
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: AsyncEngine = create_async_engine(url, connect_args={"timeout": 30})
            _sqlite_transactions(self.engine)
        else:
            self.engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size,
                                              pool_timeout=pool_timeout, connect_args={
                "server_settings": {"application_name": application}})
            _ping_when_idle(self.engine)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        read_options = {"fs_mode": "read"}
        if not self.is_sqlite:
            read_options["isolation_level"] = "REPEATABLE READ"
        self._reader = self.engine.execution_options(**read_options)
        self._peeker = None if self.is_sqlite else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._writer = self.engine.execution_options(fs_mode="write")
        #: Called after each commit that appended to the log: ``(tenant_id, seq, buckets)``.
        self.commit_listeners: list[Callable[[int, int, frozenset[str]], None]] = []
        #: Called with the seconds each transaction waited for a pooled connection (metrics).
        self.on_acquire: Callable[[float], None] = lambda seconds: None

    @property
    def dialect(self) -> str:
        return "sqlite" if self.is_sqlite else "postgresql"

    def insert(self, table: sa.Table):
        """A dialect insert supporting ``on_conflict_do_nothing``/``do_update``."""
        return (sqlite.insert if self.is_sqlite else postgresql.insert)(table)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._guard(), self._timed(self._reader) as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def peek(self) -> AsyncIterator[AsyncConnection]:
        """Lookups that need no snapshot of their own (who a token names, whether a device
        is known): on PostgreSQL each statement runs alone, with no BEGIN and ROLLBACK
        round trips around it; every pull and push starts with such lookups."""
        if self._peeker is None:
            async with self.read() as conn:
                yield conn
            return
        async with self._guard(), self._timed(self._peeker) as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        async with self._guard():
            if self._write_lock is None:
                async with self._timed(self._writer) as conn, conn.begin():
                    yield conn
            else:
                async with self._write_lock, self._timed(self._writer) as conn, conn.begin():
                    yield conn

    @asynccontextmanager
    async def _timed(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        started = time.perf_counter()
        async with engine.connect() as conn:
            self.on_acquire(time.perf_counter() - started)
            yield conn

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except _UNAVAILABLE as exc:
            if isinstance(exc, sa.exc.DBAPIError) and not _is_connectivity(exc):
                raise
            log.warning("database unavailable: %s", exc)
            raise StorageError() from exc
        except sa.exc.DBAPIError as exc:  # another class of driver error that lost the connection
            if not exc.connection_invalidated:
                raise
            log.warning("database connection lost: %s", exc)
            raise StorageError() from exc

    def locking(self, query: sa.Select, of: sa.Table | None = None) -> sa.Select:
        """``query`` taking row locks for update, where the database has them (SQLite has one
        writer at a time, so a write transaction's reads cannot race another's); ``of``:
        lock that table's rows only, not those of the tables it is joined to."""
        return query if self.is_sqlite else _for_update(query, of)

    @property
    def binds_arrays(self) -> bool:
        """Whether a statement can take a column of values as one array (``unnest``)."""
        return not self.is_sqlite

    async def follow_ids(self, conn: AsyncConnection, tables: Iterable[sa.Table]) -> None:
        """Move the tables' id sequences past rows inserted with explicit ids, so rows
        inserted without one fit (SQLite's rowid follows by itself)."""
        if self.is_sqlite:
            return
        for t in tables:
            await conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{t.name}', 'id'), "
                                       f"(SELECT max(id) FROM {t.name}))"))

    async def lock(self, conn: AsyncConnection, *name: str | int) -> None:
        """Serialise this write transaction with others locking the same ``name`` (e.g.
        ``"devices", tenant_id, user_id``) until it ends. SQLite has one writer at a time
        already. The name is hashed to one advisory-lock key: the namespace in its first
        part keeps two uses from sharing keys."""
        if not self.is_sqlite:
            digest = hashlib.blake2b(repr(name).encode(), digest_size=8).digest()
            key = int.from_bytes(digest, "big", signed=True)
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    def notify(self, tenant_id: int, seq: int, buckets: frozenset[str]) -> None:
        for listener in self.commit_listeners:
            listener(tenant_id, seq, buckets)

    async def analyze(self, tables: Iterable[sa.Table] = ()) -> None:
        """Refresh the planner's statistics after a bulk load. A table loaded in one go and
        not analyzed yet (autovacuum off, or not run yet) is planned as if nearly empty: a
        10-key lookup of ``prices`` was planned as a scan of the tenant's whole index."""
        names = [f'"{t.name}"' for t in tables]
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("ANALYZE" + (f" {', '.join(names)}" if names and not self.is_sqlite else ""))

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def _is_connectivity(exc: sa.exc.DBAPIError) -> bool:
    if exc.connection_invalidated or isinstance(exc, sa.exc.InterfaceError):
        return True
    text = str(exc.orig).lower()
    return any(s in text for s in ("connect", "closed", "terminat", "shutdown", "timeout", "locked"))


PING_AFTER_IDLE_S = 5.0


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Check a pooled connection before use only if it sat idle: a connection that worked
    a moment ago is trusted. ``pool_pre_ping`` pings on every check-out, a round trip that
    was a third of a small pull; this keeps its protection where it matters (a database
    restarted, or a firewall that dropped idle connections) at a fraction of the cost."""

    @event.listens_for(engine.sync_engine, "checkin")
    def on_checkin(dbapi_conn, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_conn, record, proxy) -> None:
        if time.monotonic() - record.info.get("idle_since", float("inf")) < PING_AFTER_IDLE_S:
            return
        try:
            dbapi_conn.ping()
        except Exception as exc:  # noqa: BLE001 - any failure: the pool replaces the connection
            raise sa.exc.DisconnectionError(f"pooled connection is dead: {exc}") from exc

    broken = getattr(engine.dialect.dbapi, "InternalClientError", ())

    @event.listens_for(engine.sync_engine, "handle_error")
    def on_error(context) -> None:
        # A trusted connection the server dropped a moment ago can fail with asyncpg's
        # "cannot switch to state …": its protocol is in a state it cannot leave. That is a
        # lost connection: the pool must discard it, and the request gets UNAVAILABLE.
        if isinstance(context.original_exception, broken):
            context.is_disconnect = True


def _sqlite_transactions(engine: AsyncEngine) -> None:
    """Take transaction control from pysqlite so BEGIN happens when we say, as we say."""

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn) -> None:
        write = conn.get_execution_options().get("fs_mode") == "write"
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
