"""Alembic environment: always handed a live connection by server.migrations."""

from __future__ import annotations

from alembic import context

import server.domain.tables  # noqa: F401  (registers the domain tables on the metadata)
from sync.storage import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
with context.begin_transaction():
    context.run_migrations()
