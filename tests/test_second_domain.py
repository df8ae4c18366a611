"""A second domain (tests/field_notes.py) over tables made by plain SQL, not by fieldsync:
a text key and a composite one, no tenant column, principals from the token alone (issue
11, item 4).

A device syncs them; other programs' plain-SQL writes reach a live device; a row moved
out of scope by plain SQL becomes a delete; a mutation of that domain is applied exactly
once; its back office writes a text-keyed table. On PostgreSQL and SQLite.
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
from server.plugin import Domain, claims_only
from sync.schema import Dataset, Registry, Scope

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
    # the company's own tables
    await sql.run([field_notes.CREATE["sqlite" if sql.sqlite else "postgresql"], field_notes.CREATE_LINES])
    services = build_services(settings, domain=field_notes.domain)
    await upgrade(services.db, services.domain)
    yield services
    await services.db.dispose()


@pytest.fixture
async def notes_client(notes_services) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(notes_services.settings, services=notes_services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fieldsync") as http:
        yield http


def author_token(services, user: int = AUTHOR, role: str = "author") -> str:
    return services.tokens.issue(user_id=user, tenant_id=1, role=role)


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
    # The domain appends its notes (written at the group's end): a key taken is still the
    # one mutation's CONFLICT, its neighbours apply.
    taken = {"id": 2, "name": "note.add", "args": {"id": "n-9", "body": "the same id"}, "at": 0}
    fresh = {"id": 3, "name": "note.add", "args": {"id": "n-10", "body": "another"}, "at": 0}
    pushed = await tablet.call("/sync/push", {"v": 1, "client_id": "tablet-2", "mutations": [taken, fresh]})
    assert [(r["status"], r.get("code")) for r in pushed["results"]] == [("rejected", "CONFLICT"), ("applied", None)]
    async with notes_services.db.read() as conn:
        assert await conn.scalar(sa.text("SELECT body FROM field_notes WHERE note_id = 'n-9'")) == "from the road"


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


def line(note_id: str, number: int, author: int, text: str) -> str:
    return (f"INSERT INTO note_lines (note_id, line, author, text) "
            f"VALUES ('{note_id}', {number}, {author}, '{text}')")


async def test_a_composite_key_syncs_and_its_plain_sql_deletes_and_moves_reach_the_device(
        notes_services, notes_client):
    sql = PlainSql(notes_services.settings)
    async with watching(notes_services):
        await sql.run([line("n-1", 1, AUTHOR, "first"), line("n-1", 2, AUTHOR, "second"),
                       line("a|b\\", 1, AUTHOR, "a key with the separator"), line("n-2", 1, OTHER, "theirs")])
        await settled(notes_services)
    tablet = HttpSync(notes_client, author_token(notes_services), "tablet-3",
                      Replica({"notes": "note_id", "lines": "_key"}))
    await tablet.sync()
    assert {k: r["text"] for k, r in tablet.replica.rows("lines").items()} == {
        "n-1|1": "first", "n-1|2": "second", "a\\|b\\\\|1": "a key with the separator"}
    assert tablet.replica.rows("lines")["n-1|2"]["line"] == 2, "the key's columns travel as themselves"

    async with watching(notes_services):
        await sql.run(["DELETE FROM note_lines WHERE note_id = 'n-1' AND line = 2",
                       f"UPDATE note_lines SET author = {OTHER} WHERE note_id = 'a|b\\'",  # out of scope
                       "UPDATE note_lines SET text = 'edited' WHERE note_id = 'n-1' AND line = 1",
                       "UPDATE note_lines SET line = 7 WHERE note_id = 'n-2'",  # a key change, not ours
                       line("n-3", 1, AUTHOR, "new")])
        await settled(notes_services)
    await tablet.sync()
    assert {k: r["text"] for k, r in tablet.replica.rows("lines").items()} == {"n-1|1": "edited", "n-3|1": "new"}


async def test_the_back_office_writes_a_text_keyed_table_of_a_single_company(notes_services, notes_client):
    admin = {"Authorization": f"Bearer {author_token(notes_services, 1, 'admin')}"}
    written = await notes_client.post("/admin/field_notes", headers=admin, json={
        "upsert": [{"note_id": "office-1", "author": AUTHOR, "body": "from the office", "visible": True}]})
    assert written.status_code == 200 and written.json() == {"upserted": 1, "deleted": 0}, written.text
    refused = await notes_client.post("/admin/field_notes", headers=admin, json={"upsert": [{"note_id": 5}]})
    assert refused.status_code == 400 and "text `note_id`" in refused.json()["error"]["message"]
    unknown = await notes_client.post("/admin/products", headers=admin, json={"upsert": []})
    assert unknown.status_code == 400 and "writable: field_notes" in unknown.json()["error"]["message"]

    tablet = HttpSync(notes_client, author_token(notes_services), "tablet-4", Replica({"notes": "note_id"}))
    await tablet.sync()
    assert tablet.replica.rows("notes")["office-1"]["body"] == "from the office"
    deleted = await notes_client.post("/admin/field_notes", headers=admin, json={"delete": ["office-1"]})
    assert deleted.json() == {"upserted": 0, "deleted": 1}
    await tablet.sync()
    assert "office-1" not in tablet.replica.rows("notes")


async def test_a_composite_keyed_snapshot_pages_by_the_key_columns(notes_services, notes_client):
    # Ordered by (note_id, line), not by the `_key` text: "n|1" < "n|10" < "n|2" as text.
    sql = PlainSql(notes_services.settings)
    async with watching(notes_services):
        await sql.run([line(note_id, number, AUTHOR, f"{note_id} {number}")
                       for note_id in ("n", "n|x", "m") for number in (1, 2, 10, 11)])
        await settled(notes_services)
    tablet = HttpSync(notes_client, author_token(notes_services), "tablet-5",
                      Replica({"notes": "note_id", "lines": "_key"}))
    seen: list[str] = []
    while True:
        response = await tablet.pull_once(limit=3)
        seen += [row[-1] for row in response["data"].get("lines", {}).get("rows", [])]
        if not response["more"]:
            break
    assert len(seen) == len(set(seen)) == 12, seen
    assert seen[:4] == ["m|1", "m|2", "m|10", "m|11"], "in key order, each once"
    assert set(tablet.replica.rows("lines")) == set(seen)


visits = sa.Table("site_visits", sa.MetaData(), sa.Column("visit_id", sa.Uuid(as_uuid=False), primary_key=True),
                  sa.Column("author", sa.Integer, nullable=False), sa.Column("note", sa.Text, nullable=False))


def visits_registry(jobs: object = None) -> Registry:
    registry = Registry()
    registry.table(visits, key="visit_id")
    registry.dataset(Dataset("visits", visits, ("visit_id", "author", "note"), key="visit_id",
                             scopes={"author": Scope(partition="author", values=lambda p: [p.user_id])}))
    return registry


async def test_a_uuid_keyed_table_syncs_as_text(settings):
    if settings.embedded:
        pytest.skip("uuid is a PostgreSQL type: on SQLite a uuid column is text, declared sa.Text")
    await _reset_pg(settings.database_url)
    sql = PlainSql(settings)
    await sql.run(["CREATE TABLE site_visits (visit_id uuid PRIMARY KEY, author integer NOT NULL, note text NOT NULL)"])
    domain = Domain("site-visits", visits_registry, claims_only(("author",)), ("author",))
    services = build_services(settings, domain=domain)
    await upgrade(services.db, domain)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        async with watching(services):
            await sql.run([f"INSERT INTO site_visits VALUES ('{first}', {AUTHOR}, 'one'), ('{second}', {AUTHOR}, 'two')"])
            await settled(services)
        app = create_app(settings, services=services)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fieldsync") as http:
            tablet = HttpSync(http, author_token(services), "tablet-6", Replica({"visits": "visit_id"}))
            await tablet.sync()
            assert sorted(tablet.replica.rows("visits")) == sorted([first, second])
            async with watching(services):
                await sql.run([f"UPDATE site_visits SET note = 'edited' WHERE visit_id = '{first}'",
                               f"DELETE FROM site_visits WHERE visit_id = '{second}'"])
                await settled(services)
            await tablet.sync()
            assert {k: r["note"] for k, r in tablet.replica.rows("visits").items()} == {first: "edited"}
    finally:
        await services.db.dispose()
