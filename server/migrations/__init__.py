"""Alembic migrations; run with ``fieldsync migrate`` (``serve`` migrates SQLite itself)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from sync.storage import Database

HERE = Path(__file__).parent


def _config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


async def upgrade(db: Database, revision: str = "head") -> None:
    async with db.engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: command.upgrade(_config(sync_conn), revision))


async def pending(db: Database) -> bool:
    """Whether the database is behind the code's migrations."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    async with db.engine.connect() as conn:
        current = await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    return current != head
