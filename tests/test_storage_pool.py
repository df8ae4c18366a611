"""Pooled PostgreSQL connections that the server dropped are replaced before use, when
they sat idle (``sync.storage._ping_when_idle``): no request pays for a dead socket."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import sqlalchemy as sa

from sync import storage
from sync.errors import StorageError
from sync.storage import Database

pytestmark = pytest.mark.postgres


async def _terminate_others(url: str) -> int:
    """End every other session on the test database, as a restart or a firewall would."""
    others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    conn = await asyncpg.connect(url.replace("postgresql://", "postgres://"))
    try:
        ended = await conn.fetchval(f"SELECT count(pg_terminate_backend(pid)) {others}")
        for _ in range(100):  # terminating is asynchronous: wait until they are gone
            if not await conn.fetchval(f"SELECT count(*) {others}"):
                break
            await asyncio.sleep(0.05)
        return ended
    finally:
        await conn.close()


async def _read_one(db: Database) -> int:
    async with db.read() as conn:
        return (await conn.execute(sa.text("SELECT 1"))).scalar_one()


async def test_a_dropped_idle_connection_is_replaced_before_use(pg_database, monkeypatch):
    monkeypatch.setattr(storage, "PING_AFTER_IDLE_S", 0.0)  # every pooled connection counts as idle
    db = Database(pg_database, pool_size=1)
    try:
        assert await _read_one(db) == 1
        assert await _terminate_others(pg_database) >= 1
        assert await _read_one(db) == 1, "the dead connection was handed out"
    finally:
        await db.dispose()


async def test_a_connection_used_a_moment_ago_is_trusted(pg_database, monkeypatch):
    """The other side of the trade: without the idle ping, a connection the server dropped
    within the last few seconds fails the one request that gets it, with UNAVAILABLE (a
    retryable error, whichever way asyncpg reports the loss), and the pool replaces it."""
    monkeypatch.setattr(storage, "PING_AFTER_IDLE_S", 3600.0)
    db = Database(pg_database, pool_size=1)
    try:
        assert await _read_one(db) == 1
        await _terminate_others(pg_database)
        with pytest.raises(StorageError):
            await _read_one(db)
        assert await _read_one(db) == 1, "the pool did not replace the dead connection"
    finally:
        await db.dispose()
