"""Backends for the suite: every storage test runs on SQLite and on a real PostgreSQL.

Each test run creates its own PostgreSQL database (and, later, Redis key prefix) and
drops it at the end, so runs never see each other's state. With ``CI=true`` a missing
server fails the run; elsewhere the PostgreSQL cases skip with a message.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from server.app import Services, build_services, create_app
from server.config import Settings
from server.migrations import upgrade
from sync.storage import Database

PG_ADMIN_URL = os.environ.get("FIELDSYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


async def _pg_admin(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL.replace("postgresql://", "postgres://"), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> str:
    """A fresh PostgreSQL database for this test run (dropped at the end)."""
    name = f"fieldsync_test_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - any failure: server absent
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} ({exc}); start it to run these cases")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("pg_database")


async def _reset_pg(url: str) -> None:
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            await conn.exec_driver_sql("CREATE SCHEMA public")
    finally:
        await db.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path) -> Settings:
    return Settings(database_url=database_url, redis_url=None, jwt_secret=b"fieldsync-test-secret-0123456789abcdef", data_dir=tmp_path,
                    max_body_bytes=256 * 1024, max_mutations=50,
                    # Property tests sync one user from many client ids, as fast as they can;
                    # the cap and admission control (tests/test_admission.py) have their own tests.
                    max_devices_per_user=100_000, rate_limits=False, max_snapshots=10_000)


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    if not settings.embedded:
        await _reset_pg(settings.database_url)  # the run's database is shared by its tests
    built = build_services(settings)
    await upgrade(built.db)
    yield built
    await built.db.dispose()


@pytest.fixture
async def client(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(services.settings, services=services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fieldsync") as http:
        yield http
