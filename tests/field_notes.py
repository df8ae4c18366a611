"""A second domain, over a company's existing tables: ``field_notes`` and ``note_lines``
are created by plain SQL (tests/test_second_domain.py), not by fieldsync; the first's key
is text, the second's composite (text, integer); neither has a tenant column (a single
company), and principals come from the token's claims alone.

Served with ``FIELDSYNC_DOMAIN=tests.field_notes:domain``.
"""

from __future__ import annotations

import sqlalchemy as sa

from server.plugin import Domain, Writable, claims_only
from sync.schema import Dataset, Registry, Scope

CREATE = {
    "postgresql": "CREATE TABLE field_notes (note_id text PRIMARY KEY, author integer NOT NULL, "
                  "body text NOT NULL, visible boolean NOT NULL DEFAULT true)",
    "sqlite": "CREATE TABLE field_notes (note_id TEXT PRIMARY KEY, author INTEGER NOT NULL, "
              "body TEXT NOT NULL, visible BOOLEAN NOT NULL DEFAULT 1)",
}
# The same DDL on both: a line of a note, keyed by the note and its number.
CREATE_LINES = ("CREATE TABLE note_lines (note_id varchar(40) NOT NULL, line integer NOT NULL, "
                "author integer NOT NULL, text varchar(200) NOT NULL, PRIMARY KEY (note_id, line))")

# Declared on a metadata of its own: fieldsync's migrations never create or alter it.
notes = sa.Table(
    "field_notes", sa.MetaData(),
    sa.Column("note_id", sa.Text, primary_key=True),
    sa.Column("author", sa.Integer, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("visible", sa.Boolean, nullable=False),
)
lines = sa.Table(
    "note_lines", notes.metadata,
    sa.Column("note_id", sa.String(40), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True),
    sa.Column("author", sa.Integer, nullable=False),
    sa.Column("text", sa.String(200), nullable=False),
)


def build_registry(jobs: object = None) -> Registry:
    registry = Registry()
    registry.table(notes, key="note_id")
    registry.dataset(Dataset("notes", notes, ("note_id", "author", "body"), key="note_id", scopes={
        "author": Scope(partition="author", values=lambda p: [p.user_id], where={"visible": True})}))
    registry.table(lines, key=("note_id", "line"))
    registry.dataset(Dataset("lines", lines, ("note_id", "line", "text"), key=("note_id", "line"), scopes={
        "author": Scope(partition="author", values=lambda p: [p.user_id])}))

    @registry.mutation("note.add", args={"id": "str", "body": "str"}, roles=["author"])
    async def add(ctx, args):
        """A note taken on the road."""
        await ctx.changes.append(notes, [{"note_id": args["id"], "author": ctx.principal.user_id,
                                          "body": args["body"], "visible": True}])
        return {"note_id": args["id"]}

    return registry


ROLES = ("author", "admin")
domain = Domain("field-notes", build_registry, claims_only(ROLES), ROLES,
                # The back office corrects notes; its key is text and the table has no tenant.
                writable={"field_notes": Writable(notes, ("note_id", "author", "body", "visible"), key="note_id")})
