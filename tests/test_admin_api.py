"""The back-office API ``POST /admin/{table}``: JSON or msgpack, upserts and deletes
reach the devices whose scope they touch, and every refusal changes nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgpack
import pytest
import sqlalchemy as sa

from fieldsync_client import HttpSync
from server.domain.tables import customers, products, users
from sync.changes import write_changes
from sync.storage import log_head, metadata

from .support import World, seed, token

MSGPACK = "application/msgpack"
OTHER_ADMIN = 42  # an admin of tenant 2, added by the tests that need one


# -- helpers ------------------------------------------------------------------------


async def admin_post(client: httpx.AsyncClient, table: str, body: Any, bearer: str, fmt: str = "json",
                     raw: bytes | None = None) -> tuple[httpx.Response, Any]:
    """POST a body as JSON or msgpack; returns the response and its decoded body."""
    if fmt == "json":
        content = raw if raw is not None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
    else:
        content = raw if raw is not None else msgpack.packb(body, use_bin_type=True)
        headers = {"Content-Type": MSGPACK, "Accept": MSGPACK}
    response = await client.post(f"/admin/{table}", content=content,
                                 headers={**headers, "Authorization": f"Bearer {bearer}"})
    assert b"Traceback" not in response.content
    ctype = response.headers.get("content-type", "")
    if fmt == "json":
        assert ctype.startswith("application/json"), (ctype, response.content[:200])
        decoded = response.json()
    else:
        assert ctype.startswith(MSGPACK), (ctype, response.content[:200])
        decoded = msgpack.unpackb(response.content, raw=False)
    return response, decoded


def assert_error(response: httpx.Response, decoded: Any, status: int, code: str) -> str:
    assert response.status_code == status, (response.status_code, decoded)
    assert isinstance(decoded, dict) and set(decoded) == {"error"}, decoded
    assert decoded["error"]["code"] == code, decoded
    assert decoded["error"]["message"], decoded
    return decoded["error"]["message"]


async def dump(services) -> dict[str, list]:
    """Every row of every table, both tenants, in a stable order."""
    out: dict[str, list] = {}
    async with services.db.read() as conn:
        for table in metadata.sorted_tables:
            rows = (await conn.execute(sa.select(table))).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


async def row(services, table: sa.Table, key: Any, tenant_id: int = 1) -> dict[str, Any] | None:
    async with services.db.read() as conn:
        found = (await conn.execute(
            sa.select(table).where(table.c.tenant_id == tenant_id, table.c.id == key)
        )).mappings().first()
    return dict(found) if found else None


async def head_seq(services, tenant_id: int) -> int:
    async with services.db.read() as conn:
        return await conn.scalar(sa.select(log_head.c.seq).where(log_head.c.tenant_id == tenant_id)) or 0


def admin_token(services, w: World) -> str:
    return token(services, w.admin, "admin")


def new_product(pid: int, **over: Any) -> dict[str, Any]:
    return {"id": pid, "sku": f"SKU-{pid:04d}", "name": f"Product {pid}", "category": "Tools", "unit": "pcs",
            "barcode": None, "active": True, **over}


async def add_tenant2_admin_and_product(services, product_id: int = 500) -> None:
    async with write_changes(services.db, services.registry, 2) as ch:
        await ch.insert(users, [{"id": OTHER_ADMIN, "username": "admin", "name": "Other office", "role": "admin"}])
        await ch.insert(products, [new_product(product_id, name="Theirs")])


# -- writes reach devices ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_product_upsert_and_delete_reach_a_synced_device(services, client, fmt):
    w = await seed(services)
    device = HttpSync(client, token(services, w.sales1, "salesperson"), "dev-1")
    await device.sync()
    assert len(device.replica.rows("catalog")) == 20
    seq = await head_seq(services, 1)

    body = {"upsert": [new_product(100, name="Brand new"), {"id": 3, "name": "Renamed 3", "category": "Paint"}],
            "delete": [5]}
    response, decoded = await admin_post(client, "products", body, admin_token(services, w), fmt)
    assert response.status_code == 200, decoded
    assert decoded == {"upserted": 2, "deleted": 1}
    assert (await row(services, products, 100))["name"] == "Brand new"
    renamed = await row(services, products, 3)
    assert (renamed["name"], renamed["category"], renamed["sku"]) == ("Renamed 3", "Paint", "SKU-0003")  # partial
    assert await row(services, products, 5) is None
    assert await head_seq(services, 1) == seq + 1  # one batch, one transaction, one log position

    delta = await device.pull_once()
    assert delta["reset"] == [] and delta["more"] is False  # a delta, not a new snapshot
    catalog = delta["data"]["catalog"]
    got = {r[catalog["cols"].index("id")]: dict(zip(catalog["cols"], r)) for r in catalog["rows"]}
    assert set(got) == {3, 100}
    assert got[3]["name"] == "Renamed 3" and got[100]["name"] == "Brand new"
    assert catalog["deletes"] == [5]
    rows = device.replica.rows("catalog")
    assert set(rows) == (set(range(1, 21)) - {5}) | {100}
    assert rows[100] == {"id": 100, "sku": "SKU-0100", "name": "Brand new", "category": "Tools", "unit": "pcs",
                         "barcode": None}


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_deactivating_a_product_deletes_it_from_catalogs(services, client, fmt):
    w = await seed(services)
    pos = HttpSync(client, token(services, w.pos1, "pos"), "till-1")
    await pos.sync()
    response, decoded = await admin_post(client, "products", {"upsert": [{"id": 7, "active": False}]},
                                         admin_token(services, w), fmt)
    assert response.status_code == 200, decoded
    delta = await pos.pull_once()
    assert delta["data"]["catalog"]["deletes"] == [7] and delta["data"]["catalog"]["rows"] == []
    assert 7 not in pos.replica.rows("catalog")
    assert (await row(services, products, 7))["active"] is False  # still there for the office


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_reassigning_a_customer_moves_it_between_salespeople(services, client, fmt):
    w = await seed(services)
    ana = HttpSync(client, token(services, w.sales1, "salesperson"), "ana")
    ben = HttpSync(client, token(services, w.sales2, "salesperson"), "ben")
    await ana.sync()
    await ben.sync()
    assert set(ana.replica.rows("customers")) == {1, 2, 3, 4}
    assert set(ben.replica.rows("customers")) == {5, 6}

    response, decoded = await admin_post(client, "customers", {"upsert": [{"id": 1, "salesperson_id": w.sales2}]},
                                         admin_token(services, w), fmt)
    assert response.status_code == 200, decoded
    assert decoded == {"upserted": 1, "deleted": 0}

    lost = await ana.pull_once()
    assert lost["reset"] == [] and lost["data"]["customers"] == {
        "cols": lost["data"]["customers"]["cols"], "rows": [], "deletes": [1]}
    assert set(ana.replica.rows("customers")) == {2, 3, 4}
    gained = await ben.pull_once()
    assert 1 in {r[0] for r in gained["data"]["customers"]["rows"]}
    assert set(ben.replica.rows("customers")) == {1, 5, 6}
    assert ben.replica.rows("customers")[1]["name"] == "Customer 1"

    # and the scope change holds for writes too: Ana may no longer order for customer 1
    [result] = await ana.push([ana.mutation("order.create", {
        "id": "8d0c1a8e-5b1c-4bb5-9a3b-3c3a1c1e0f01", "customer_id": 1, "lines": [{"product_id": 1, "qty": 1}]})])
    assert result["code"] == "FORBIDDEN"


# -- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["salesperson", "pos"])
async def test_non_admin_is_forbidden(services, client, role):
    w = await seed(services)
    user = w.sales1 if role == "salesperson" else w.pos1
    before = await dump(services)
    for fmt in ("json", "msgpack"):
        response, decoded = await admin_post(client, "products", {"upsert": [new_product(100)]},
                                             token(services, user, role), fmt)
        assert_error(response, decoded, 403, "FORBIDDEN")
        assert await dump(services) == before, fmt


async def test_admin_needs_a_token(services, client):
    await seed(services)
    before = await dump(services)
    response = await client.post("/admin/products", json={"upsert": [new_product(100)]})
    assert response.status_code == 401 and response.json()["error"]["code"] == "AUTH_REQUIRED"
    assert await dump(services) == before


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_unknown_table_is_a_bad_request(services, client, fmt):
    w = await seed(services)
    before = await dump(services)
    for table in ("sales", "tenants", "pricelists", "change_log", "mutation_ledger", "nope"):
        response, decoded = await admin_post(client, table, {"upsert": [{"id": 1}]}, admin_token(services, w), fmt)
        message = assert_error(response, decoded, 400, "BAD_REQUEST")
        assert table in message, message
        assert await dump(services) == before, table


# table -> body; each must be refused with 400 and change nothing
BAD_BATCHES: dict[str, tuple[str, Any]] = {
    "unknown column": ("products", {"upsert": [{"id": 3, "colour": "red"}]}),
    "read-only tenant_id": ("products", {"upsert": [{"id": 3, "tenant_id": 2}]}),
    "name as int": ("products", {"upsert": [{"id": 3, "name": 42}]}),
    "active as str": ("products", {"upsert": [{"id": 3, "active": "yes"}]}),
    "active as int": ("products", {"upsert": [{"id": 3, "active": 1}]}),
    "id as str": ("products", {"upsert": [{"id": "3", "name": "x"}]}),
    "id as bool": ("products", {"upsert": [{"id": True, "name": "x"}]}),
    "id missing": ("products", {"upsert": [{"name": "x"}]}),
    "row not a map": ("products", {"upsert": [[3, "x"]]}),
    "upsert not an array": ("products", {"upsert": {"id": 3}}),
    "body an array": ("products", [{"id": 3}]),
    "null name": ("products", {"upsert": [{"id": 3, "name": None}]}),
    "null credit_limit": ("customers", {"upsert": [{"id": 1, "credit_limit": None}]}),
    "balance as float": ("customers", {"upsert": [{"id": 1, "balance": 10.5}]}),
    "unknown role": ("users", {"upsert": [{"id": 11, "role": "root"}]}),
    "delete strings": ("products", {"delete": ["3"]}),
    "delete not an array": ("products", {"delete": 3}),
    "good row then bad row": ("products", {"upsert": [new_product(100), {"id": 3, "name": None}]}),
    "good rows then bad delete": ("products", {"upsert": [new_product(100)], "delete": [4, "x"]}),
    "new row missing columns": ("products", {"upsert": [new_product(101), {"id": 102, "name": "half"}]}),
    "sku longer than its column": ("products", {"upsert": [{"id": 3, "sku": "S" * 41}]}),
    "on_hand beyond its column": ("stock", {"upsert": [{"id": 1003, "on_hand": 2**40}]}),
    "product id beyond its column": ("products", {"upsert": [new_product(2**40)]}),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
async def test_bad_batch_is_refused_and_changes_nothing(services, client, case):
    w = await seed(services)
    table, body = BAD_BATCHES[case]
    before = await dump(services)
    for fmt in ("json", "msgpack"):
        response, decoded = await admin_post(client, table, body, admin_token(services, w), fmt)
        assert_error(response, decoded, 400, "BAD_REQUEST")
        assert await dump(services) == before, fmt


@pytest.mark.parametrize("fmt,raw", [("json", b"{not json"), ("json", b""), ("msgpack", b"\xc1"),
                                     ("msgpack", b"\x81\xa6upsert")])
async def test_undecodable_body_is_a_bad_request(services, client, fmt, raw):
    w = await seed(services)
    before = await dump(services)
    response, decoded = await admin_post(client, "products", None, admin_token(services, w), fmt, raw=raw)
    assert_error(response, decoded, 400, "BAD_REQUEST")
    assert await dump(services) == before


async def test_oversized_admin_body_is_refused(services, client):
    w = await seed(services)
    before = await dump(services)
    rows = [new_product(1000 + i, name="x" * 100) for i in range(3000)]  # ~500 KiB of JSON
    response, decoded = await admin_post(client, "products", {"upsert": rows}, admin_token(services, w))
    assert_error(response, decoded, 413, "PAYLOAD_TOO_LARGE")
    assert await dump(services) == before


# -- tenants -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_upserting_another_tenants_product_id_is_refused(services, client, fmt):
    w = await seed(services)
    await add_tenant2_admin_and_product(services, 500)
    before = await dump(services)
    seqs = (await head_seq(services, 1), await head_seq(services, 2))
    # a full, otherwise valid row (plus a good one) whose id is tenant 2's product
    body = {"upsert": [new_product(100), new_product(500, name="Mine now")]}
    response, decoded = await admin_post(client, "products", body, admin_token(services, w), fmt)
    assert_error(response, decoded, 400, "BAD_REQUEST")
    assert await dump(services) == before
    assert (await head_seq(services, 1), await head_seq(services, 2)) == seqs
    assert (await row(services, products, 500, tenant_id=2))["name"] == "Theirs"
    assert await row(services, products, 500, tenant_id=1) is None
    assert await row(services, products, 100, tenant_id=1) is None  # the batch is all or nothing

    # a partial "update" of their row cannot reach it either
    response, decoded = await admin_post(client, "products", {"upsert": [{"id": 500, "name": "Mine now"}]},
                                         admin_token(services, w), fmt)
    assert_error(response, decoded, 400, "BAD_REQUEST")
    assert await dump(services) == before


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_upserting_another_tenants_user_id_is_refused(services, client, fmt):
    w = await seed(services)
    before = await dump(services)
    body = {"upsert": [{"id": w.intruder, "username": "eve2", "name": "Eve", "role": "admin", "active": True}]}
    response, decoded = await admin_post(client, "users", body, admin_token(services, w), fmt)
    assert_error(response, decoded, 400, "BAD_REQUEST")
    assert await dump(services) == before
    intruder = await row(services, users, w.intruder, tenant_id=2)
    assert (intruder["role"], intruder["name"]) == ("salesperson", "Eve")


async def test_deleting_another_tenants_row_deletes_nothing(services, client):
    w = await seed(services)
    await add_tenant2_admin_and_product(services, 500)
    before = await dump(services)
    response, decoded = await admin_post(client, "products", {"delete": [500]}, admin_token(services, w))
    assert response.status_code == 200, decoded
    assert decoded == {"upserted": 0, "deleted": 0}
    assert await dump(services) == before


async def test_other_tenants_admin_cannot_touch_tenant_1(services, client):
    w = await seed(services)
    await add_tenant2_admin_and_product(services, 500)
    theirs = token(services, OTHER_ADMIN, "admin", tenant_id=2)
    before = await dump(services)
    response, decoded = await admin_post(client, "products", {"upsert": [new_product(3, name="Hijacked")]}, theirs)
    assert_error(response, decoded, 400, "BAD_REQUEST")
    response, decoded = await admin_post(client, "customers", {"upsert": [{"id": 1, "credit_limit": 5}]}, theirs)
    assert_error(response, decoded, 400, "BAD_REQUEST")
    response, decoded = await admin_post(client, "products", {"delete": [3, 4]}, theirs)
    assert response.status_code == 200 and decoded["deleted"] == 0
    assert await dump(services) == before
    # while their own product is theirs to change
    response, decoded = await admin_post(client, "products", {"upsert": [{"id": 500, "name": "Renamed"}]}, theirs)
    assert response.status_code == 200, decoded
    assert (await row(services, products, 500, tenant_id=2))["name"] == "Renamed"
    assert (await row(services, products, 3, tenant_id=1))["name"] == "Product 3"


async def test_admin_edit_of_a_versioned_field_is_a_server_change(services, client):
    """A back-office edit bumps the field's version, so an older device edit of it conflicts."""
    w = await seed(services)
    response, decoded = await admin_post(client, "customers", {"upsert": [{"id": 2, "phone": "+1 555"}]},
                                         admin_token(services, w))
    assert response.status_code == 200, decoded
    changed = await row(services, customers, 2)
    assert changed["phone"] == "+1 555" and changed["version"] == 1 and changed["field_versions"] == {"phone": 1}
    pos = HttpSync(client, token(services, w.pos1, "pos"), "till-1")
    await pos.sync()
    assert pos.replica.rows("customers")[2]["phone"] == "+1 555"
    ana = HttpSync(client, token(services, w.sales1, "salesperson"), "ana")
    [result] = await ana.push([ana.mutation("customer.update",
                                            {"customer_id": 2, "base_version": 0, "fields": {"phone": "+2 666"}})])
    assert result["code"] == "CONFLICT", result
    assert (await row(services, customers, 2))["phone"] == "+1 555"


async def test_bulk_batches_write_and_log_like_single_rows(services, client):
    """Batches of 50 rows and more take the bulk paths on PostgreSQL (log entries by COPY,
    updates over arrays): the rows, the log and a synced device end exactly as with small
    batches; a batch naming a key twice keeps the last values, as row by row."""
    w = await seed(services, products_count=150)
    bearer = admin_token(services, w)
    pos = HttpSync(client, token(services, w.pos1, "pos"), "till-bulk")
    await pos.sync()
    renames = [{"id": n, "name": f"bulk {n}", "active": n % 3 != 0} for n in range(1, 121)]
    response, decoded = await admin_post(client, "products", {"upsert": renames}, bearer)
    assert response.status_code == 200, decoded
    twice = [{"id": n, "name": f"first {n}"} for n in range(1, 60)] + [{"id": 5, "name": "last wins"}]
    response, decoded = await admin_post(client, "products", {"upsert": twice}, bearer)
    assert response.status_code == 200, decoded

    expected = {n: (f"first {n}" if n < 60 else f"bulk {n}", n % 3 != 0) for n in range(1, 121)}
    expected[5] = ("last wins", True)
    async with services.db.read() as conn:
        stored = dict((r.id, (r.name, r.active)) for r in await conn.execute(
            sa.select(products.c.id, products.c.name, products.c.active).where(
                products.c.tenant_id == 1, products.c.id <= 120)))
    assert stored == expected
    await pos.sync()
    catalog = pos.replica.rows("catalog")
    assert {n for n in range(1, 121) if n in catalog} == {n for n, (_, active) in expected.items() if active}
    assert all(catalog[n]["name"] == expected[n][0] for n in range(1, 121) if n in catalog)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
async def test_a_new_id_named_twice_is_one_row_with_the_later_values(services, client, fmt):
    """As for an existing key: the later values win, instead of a clash with itself."""
    w = await seed(services)
    twice = [new_product(600, name="first"), {"id": 600, "name": "second", "barcode": "42"}]
    response, decoded = await admin_post(client, "products", {"upsert": twice}, admin_token(services, w), fmt)
    assert response.status_code == 200, decoded
    stored = await row(services, products, 600)
    assert (stored["name"], stored["barcode"], stored["sku"]) == ("second", "42", "SKU-0600")
