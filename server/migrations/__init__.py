"""Migrations, run by ``fieldsync migrate`` (``serve`` migrates SQLite itself).

Two Alembic chains, each with its own version table, so neither knows the other:
fieldsync's own tables (this directory, ``fieldsync_version``), then those of the domain
served, if it brings any (``Domain.migrations``; the bundled one: ``field_sales_version``).
A company serving its existing database brings none: ``migrate`` then creates only
fieldsync's tables and installs the capture triggers on the company's (sync/capture.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from sync import capture
from sync.storage import Database, metadata

from ..config import DEFAULT_DOMAIN
from ..plugin import Domain, load

HERE = Path(__file__).parent
#: The last revision of the single chain before the split, and what it became.
_UNSPLIT_HEAD = "0006"


@dataclass(frozen=True)
class Chain:
    location: Path
    version_table: str
    metadata: sa.MetaData | None = None

    def config(self, connection=None) -> Config:
        config = Config()
        config.set_main_option("script_location", str(self.location))
        config.attributes.update(connection=connection, chain=self)
        return config

    def head(self) -> str | None:
        return ScriptDirectory.from_config(self.config()).get_current_head()

    def base(self) -> str:
        return ScriptDirectory.from_config(self.config()).get_base()

    def current(self, connection) -> str | None:
        return MigrationContext.configure(connection, opts={"version_table": self.version_table}).get_current_revision()


FIELDSYNC = Chain(HERE, "fieldsync_version", metadata)


def chains(domain: Domain) -> list[Chain]:
    if domain.migrations is None:
        return [FIELDSYNC]
    return [FIELDSYNC, Chain(Path(domain.migrations), f"{domain.name.replace('-', '_')}_version", domain.metadata)]


def run_environment() -> None:
    """The body of each chain's ``env.py``: always handed a live connection by ``upgrade``."""
    chain: Chain = context.config.attributes["chain"]
    context.configure(connection=context.config.attributes["connection"], target_metadata=chain.metadata,
                      version_table=chain.version_table, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def _served(domain: Domain | None) -> Domain:
    return domain or load(DEFAULT_DOMAIN)


async def upgrade(db: Database, domain: Domain | None = None) -> None:
    """Migrate fieldsync's tables, then the domain's, then install the capture triggers its
    datasets need. ``domain``: the one served; the bundled one if None."""
    domain = _served(domain)
    async with db.engine.begin() as conn:
        await conn.run_sync(lambda c: _upgrade(c, chains(domain)))
    await capture.install(db, domain.registry(None))


def _upgrade(connection, chains: list[Chain]) -> None:
    _stamp_unsplit(connection, chains)
    for chain in chains:
        command.upgrade(chain.config(connection), "head")


def _stamp_unsplit(connection, chains: list[Chain]) -> None:
    """A database migrated by the single chain of earlier releases holds the same tables as
    both chains' heads: record it so, rather than create them again."""
    inspector = sa.inspect(connection)
    if chains[0].current(connection) or not (inspector.has_table("alembic_version") and inspector.has_table("log_head")):
        return  # not ours: a company's database may well keep its own alembic_version
    revision = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    if revision != _UNSPLIT_HEAD:
        raise RuntimeError(f"the database is at revision {revision} of an earlier release: migrate it with "
                           f"that release's `fieldsync migrate` to {_UNSPLIT_HEAD} first")
    for chain in chains:  # each chain's first revision is the squash of the single chain
        command.stamp(chain.config(connection), chain.base())
    connection.execute(sa.text("DROP TABLE alembic_version"))


async def pending(db: Database, domain: Domain | None = None) -> bool:
    """Whether the database is behind either chain or the domain's capture triggers."""
    domain = _served(domain)
    async with db.engine.connect() as conn:
        behind = await conn.run_sync(lambda c: any(ch.current(c) != ch.head() for ch in chains(domain)))
    return behind or not await capture.installed(db, domain.registry(None))
