"""A second domain (tests/field_notes.py) over a table made by plain SQL, not by fieldsync:
text keys, no tenant column, principals from the token alone (issue 11, item 4).

A device syncs it; other programs' plain-SQL writes reach a live device; a row moved out
of scope by plain SQL becomes a delete; a mutation of that domain is applied exactly once.
On PostgreSQL and SQLite.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import sqlalchemy as sa

from fieldsync_client import HttpSync, Replica
from server.app import build_services, create_app
from server.migrations import upgrade

from . import field_notes
from .conftest import _reset_pg
from .live_support import Server, WsClient, close_all
from .test_capture import PlainSql, settled, watching

AUTHOR, OTHER = 7, 8


@pytest.fixture
async def notes_services(settings) -> AsyncIterator:
    if not settings.embedded:
        await _reset_pg(settings.database_url)
    sql = PlainSql(settings)
    await sql.run([field_notes.CREATE["sqlite" if sql.sqlite else "postgresql"]])  # the company's own table
    services = build_services(settings, domain=field_notes.domain)
    await upgrade(services.db, services.domain)
    yield services
    await services.db.dispose()


@pytest.fixture
async def notes_client(notes_services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(notes_services.settings, services=notes_services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fieldsync") as http:
        yield http


def author_token(services, user: int = AUTHOR) -> str:
    return services.tokens.issue(user_id=user, tenant_id=1, role="author")


def note(note_id: str, author: int, body: str, visible: bool = True, *, sqlite: bool) -> str:
    flag = ("1" if visible else "0") if sqlite else ("true" if visible else "false")
    return f"INSERT INTO field_notes (note_id, author, body, visible) VALUES ('{note_id}', {author}, '{body}', {flag})"


async def test_a_device_syncs_a_table_fieldsync_did_not_create(notes_services, notes_client):
    sql = PlainSql(notes_services.settings)
    async with watching(notes_services):
        await sql.run([note("n-1", AUTHOR, "mine", sqlite=sql.sqlite), note("n-2", OTHER, "theirs", sqlite=sql.sqlite),
                       note("n-3", AUTHOR, "hidden", False, sqlite=sql.sqlite)])
        await settled(notes_services)
    tablet = HttpSync(notes_client, author_token(notes_services), "tablet-1", Replica({"notes": "note_id"}))
    await tablet.sync()
    assert {k: r["body"] for k, r in tablet.replica.rows("notes").items()} == {"n-1": "mine"}

    async with notes_services.db.read() as conn:  # fieldsync added no column to the company's table
        columns = await conn.run_sync(lambda c: [col["name"] for col in sa.inspect(c).get_columns("field_notes")])
    assert columns == ["note_id", "author", "body", "visible"]


async def test_a_mutation_of_the_domain_is_applied_exactly_once(notes_services, notes_client):
    tablet = HttpSync(notes_client, author_token(notes_services), "tablet-2", Replica({"notes": "note_id"}))
    mutation = {"id": 1, "name": "note.add", "args": {"id": "n-9", "body": "from the road"}, "at": 0}
    first = await tablet.call("/sync/push", {"v": 1, "client_id": "tablet-2", "mutations": [mutation]})
    again = await tablet.call("/sync/push", {"v": 1, "client_id": "tablet-2", "mutations": [mutation]})
    assert first == again and first["results"][0]["status"] == "applied", first
    async with notes_services.db.read() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM field_notes WHERE note_id = 'n-9'")) == 1
    await tablet.sync()
    assert tablet.replica.rows("notes")["n-9"]["body"] == "from the road"


async def test_plain_sql_writes_reach_a_live_device_and_leaving_its_scope_is_a_delete(notes_services, tmp_path):
    server = Server(notes_services.settings, tmp_path / "server", env={"FIELDSYNC_DOMAIN": "tests.field_notes:domain"})
    server.start()
    sql = PlainSql(notes_services.settings)
    try:
        tablet = await WsClient.open(server.ws_url, author_token(notes_services))
        await tablet.hello(f"tablet-{uuid.uuid4().hex[:6]}")
        while (frame := await tablet.recv())["t"] != "changes" or frame["more"]:
            pass

        def notes_in(frame: dict) -> dict:
            part = frame.get("data", {}).get("notes", {"cols": [], "rows": [], "deletes": []})
            return {"rows": {row[0]: row for row in part["rows"]}, "deletes": set(part["deletes"])}

        await sql.run([note("live-1", AUTHOR, "written by the ERP", sqlite=sql.sqlite)])
        frame = await tablet.recv_until(lambda f: f["t"] == "changes" and "live-1" in notes_in(f)["rows"], 5)
        assert notes_in(frame)["rows"]["live-1"][2] == "written by the ERP"

        await sql.run(["UPDATE field_notes SET author = 8 WHERE note_id = 'live-1'"])  # out of its scope
        await tablet.recv_until(lambda f: f["t"] == "changes" and "live-1" in notes_in(f)["deletes"], 5)
    finally:
        await close_all()
        server.stop()
