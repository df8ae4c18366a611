"""A second domain, over a company's existing table: ``field_notes`` is created by plain
SQL (tests/test_second_domain.py), not by fieldsync; its key is text, it has no tenant
column (a single company), and principals come from the token's claims alone.

Served with ``FIELDSYNC_DOMAIN=tests.field_notes:domain``.
"""

from __future__ import annotations

import sqlalchemy as sa

from server.plugin import Domain, claims_only
from sync.schema import Dataset, Registry, Scope

CREATE = {
    "postgresql": "CREATE TABLE field_notes (note_id text PRIMARY KEY, author integer NOT NULL, "
                  "body text NOT NULL, visible boolean NOT NULL DEFAULT true)",
    "sqlite": "CREATE TABLE field_notes (note_id TEXT PRIMARY KEY, author INTEGER NOT NULL, "
              "body TEXT NOT NULL, visible BOOLEAN NOT NULL DEFAULT 1)",
}

# Declared on a metadata of its own: fieldsync's migrations never create or alter it.
notes = sa.Table(
    "field_notes", sa.MetaData(),
    sa.Column("note_id", sa.Text, primary_key=True),
    sa.Column("author", sa.Integer, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("visible", sa.Boolean, nullable=False),
)


def build_registry(jobs: object = None) -> Registry:
    registry = Registry()
    registry.table(notes, key="note_id")
    registry.dataset(Dataset("notes", notes, ("note_id", "author", "body"), key="note_id", scopes={
        "author": Scope(partition="author", values=lambda p: [p.user_id], where={"visible": True})}))

    @registry.mutation("note.add", args={"id": "str", "body": "str"}, roles=["author"])
    async def add(ctx, args):
        """A note taken on the road."""
        await ctx.changes.insert(notes, [{"note_id": args["id"], "author": ctx.principal.user_id,
                                          "body": args["body"], "visible": True}])
        return {"note_id": args["id"]}

    return registry


domain = Domain("field-notes", build_registry, claims_only(("author",)), ("author",))
