"""Alembic migrations; run with ``fieldsync migrate`` (``serve`` migrates SQLite itself)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from sync import capture
from sync.schema import Registry
from sync.storage import Database

from ..domain.registry import build_registry

HERE = Path(__file__).parent


def _config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


async def upgrade(db: Database, revision: str = "head", registry: Registry | None = None) -> None:
    """Migrate fieldsync's own tables, then (at head) install the capture triggers the
    declared datasets need (sync/capture.py): ``registry``'s, the bundled domain's by default."""
    async with db.engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: command.upgrade(_config(sync_conn), revision))
    if revision == "head":
        await capture.install(db, registry or build_registry())


async def pending(db: Database, registry: Registry | None = None) -> bool:
    """Whether the database is behind the code's migrations or ``registry``'s capture triggers."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    async with db.engine.connect() as conn:
        current = await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    return current != head or not await capture.installed(db, registry or build_registry())
