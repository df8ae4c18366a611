"""Back-office writes: ``POST /admin/{table}`` with ``{upsert: [rows], delete: [keys]}``.

Generic over the tables the served domain declares writable (``Domain.writable``); each
write goes through a ChangeSet, so it reaches the change log and every device whose scope
it touches, like any device mutation. A write only names rows of the writer's tenant: its
keys and the columns the domain declares as references (``info["ref"]``, see
``server/domain/tables.py``) are checked before it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sync import devices, wire
from sync.messages import check_text
from sync.changes import write_changes
from sync.errors import AuthError, BadRequest, ErrorCode
from sync.schema import MAX_ID, TENANT, Principal, Registry, wire_type

from .fanout import Notice
from .http import authenticate, msgpack_response, read_body
from .plugin import Writable

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "money": (int,), "time": (int,), "str": (str,), "bool": (bool,), "float": (float, int),
    "json": (dict, list), "bytes": (bytes,),
}


def _is_key(writable: Writable, value: Any) -> bool:
    kind = wire_type(writable.table.c[writable.key])
    return isinstance(value, _PY_TYPES[kind]) and not isinstance(value, bool)


def check_rows(writable: Writable, rows: Any, *, label: str = "row", first: int = 0) -> list[dict[str, Any]]:
    """Validate rows against the table's writable columns, their wire types and the domain's
    check. A refusal names the row as ``f"{label} {first + index}"`` (``fieldsync import``
    says "line 2")."""
    table, allowed, key = writable.table, writable.columns, writable.key
    if not isinstance(rows, list):
        raise BadRequest("`upsert` must be an array of rows")
    checked = []
    for index, row in enumerate(rows, start=first):
        if not isinstance(row, dict) or not _is_key(writable, row.get(key)):
            raise BadRequest(f"{label} {index}: a map with a{_article(writable)} `{key}` is required")
        unknown = sorted(set(row) - set(allowed))
        if unknown:
            raise BadRequest(f"{label} {index}: unknown or read-only column(s) {', '.join(unknown)}")
        for col, value in row.items():
            kind = wire_type(table.c[col])
            if value is None:
                if not table.c[col].nullable:
                    raise BadRequest(f"{label} {index}: `{col}` may not be null")
                continue
            if not isinstance(value, _PY_TYPES[kind]) or (isinstance(value, bool) and kind != "bool"):
                raise BadRequest(f"{label} {index}: `{col}` must be {kind}")
            _check_fits(table.c[col], value, f"{label} {index}: `{col}`")
        refusal = writable.check(row) if writable.check is not None else None
        if refusal:
            raise BadRequest(f"{label} {index}: {refusal}")
        checked.append(row)
    return checked


def _article(writable: Writable) -> str:
    return "n integer" if wire_type(writable.table.c[writable.key]) == "int" else " text"


def check_keys(writable: Writable, keys: Any) -> list[Any]:
    """Validate ``delete``: keys the table's key column can hold (a driver refuses others)."""
    if not isinstance(keys, list) or not all(_is_key(writable, k) for k in keys):
        raise BadRequest(f"`delete` must be an array of{_article(writable)} `{writable.key}`s")
    for index, key in enumerate(keys):
        _check_fits(writable.table.c[writable.key], key, f"`delete` key {index}")
    return keys


def _check_fits(column: sa.Column, value: Any, what: str) -> None:
    """Refuse what the column cannot hold, instead of letting PostgreSQL fail (SQLite would not)."""
    if isinstance(column.type, sa.String) and column.type.length and len(value) > column.type.length:
        raise BadRequest(f"{what} is longer than {column.type.length} characters")
    if isinstance(value, str):
        check_text(value, what)
    if isinstance(value, int) and not isinstance(value, bool):
        bound = 2**63 if isinstance(column.type, sa.BigInteger) else 2**31
        if not -bound <= value < bound:
            raise BadRequest(f"{what} is out of range")


async def apply(db, registry: Registry, tenant_id: int, writable: Writable,
                upsert: Sequence[Mapping[str, Any]], delete: Sequence[Any], *,
                label: str = "row", first: int = 0) -> dict[str, int]:
    """Apply one back-office batch in one transaction (also used by ``fieldsync import``);
    refusals name rows as :func:`check_rows` does."""
    table = writable.table
    rows = list(upsert)
    where = functools.partial(_where, label, first)
    if writable.write is not None and delete:
        raise BadRequest(f"rows of {table.name} are not deleted through the back office")
    try:
        async with write_changes(db, registry, tenant_id) as changes:
            if writable.write is not None:  # the domain's own way to write this table
                await writable.write(changes, rows, where)
                return {"upserted": len(rows), "deleted": 0}
            await _check_keys_free(changes.conn, tenant_id, writable, rows, where)
            await _check_references(changes.conn, tenant_id, table, rows, where)
            await changes.upsert(table, rows)
            deleted = await changes.delete(table, list(delete))
    except sa.exc.IntegrityError as exc:
        raise BadRequest(_clash(table, str(exc.orig))) from None
    except sa.exc.DataError:
        raise BadRequest("a value of the batch cannot be stored in its column "
                         "(out of the column's range, or a character the database refuses)") from None
    return {"upserted": len(rows), "deleted": deleted}


_CHUNK = 500  # values per IN (...) list


async def _ids_among(conn, column: sa.Column, ids: Sequence[Any], *where: sa.ColumnElement[bool]) -> set[Any]:
    """Which of ``ids`` name a row (by ``column``, its table's key) passing ``where``."""
    found: set[Any] = set()
    for start in range(0, len(ids), _CHUNK):
        query = sa.select(column).where(column.in_(ids[start:start + _CHUNK]), *where)
        found.update((await conn.execute(query)).scalars())
    return found


def _where(label: str, first: int, index: int) -> str:
    return f"{label} {first + index}"


async def _check_keys_free(conn, tenant_id: int, writable: Writable, rows: list[Mapping[str, Any]],
                           where: Callable[[int], str]) -> None:
    """Refuse a key another tenant's row holds, where keys are shared by all tenants (the
    bundled back-office tables' integer ids): ChangeSet.upsert, which looks for the key in
    the writer's tenant, would insert it and fail."""
    table, key = writable.table, writable.key
    if TENANT not in table.c or TENANT in table.primary_key.columns:
        return  # a single company's table, or keys unique per tenant
    taken = await _ids_among(conn, table.c[key], sorted({row[key] for row in rows}), table.c[TENANT] != tenant_id)
    for index, row in enumerate(rows):
        if row[key] in taken:
            raise BadRequest(f"{where(index)}: `{key}` {row[key]} is in use outside this tenant "
                             f"(keys of {table.name} are shared by all tenants); choose another")


def references(table: sa.Table) -> dict[str, list[str]]:
    """The tables ``table``'s columns name rows of, each with those columns."""
    found: dict[str, list[str]] = {}
    for column in table.c:
        if "ref" in column.info:
            found.setdefault(column.info["ref"], []).append(column.name)
    return found


async def _check_references(conn, tenant_id: int, table: sa.Table, rows: list[Mapping[str, Any]],
                            where: Callable[[int], str]) -> None:
    """Refuse a row naming a row of another tenant, or none: one query per referenced table."""
    for target_name, columns in references(table).items():
        target = table.metadata.tables[target_name]
        named = _named(rows, columns)
        own = [target.c[TENANT] == tenant_id] if TENANT in target.c else []
        [target_key] = [c for c in target.primary_key.columns if c.name != TENANT]
        found = await _ids_among(conn, target_key, sorted(set(named)), *own)
        for value, (index, column) in named.items():
            if value not in found:
                raise BadRequest(f"{where(index)}: `{column}` {value} is not a {_singular(target_name)} of this tenant",
                                 ErrorCode.INVALID_ARGS)


def _named(rows: Iterable[Mapping[str, Any]], columns: list[str]) -> dict[Any, tuple[int, str]]:
    """Each value the columns name, with its first row and column (what a refusal quotes)."""
    named: dict[Any, tuple[int, str]] = {}
    for index, row in enumerate(rows):
        for column in columns:
            if row.get(column) is not None:
                named.setdefault(row[column], (index, column))
    return named


def _singular(table_name: str) -> str:
    return table_name[:-2] if table_name.endswith("ches") else table_name[:-1]


def _clash(table: sa.Table, error: str) -> str:
    """What a unique key the batch broke means in the request's terms. The database's text
    only picks the key (PostgreSQL names the constraint, SQLite its columns); it is never quoted."""
    for key in [c for c in table.constraints if isinstance(c, sa.UniqueConstraint)]:
        columns = [c.name for c in key.columns if c.name != TENANT]
        if f'"{key.name}"' in error or all(f"{table.name}.{c}" in error for c in columns):
            listed = ", ".join(f"`{c}`" for c in columns)
            return f"two rows of this tenant would have the same {listed} (two of the batch, or one and a stored row)"
    # Checked before the write, so only a concurrent write can take an id meanwhile.
    return "an `id` of the batch was taken meanwhile by another write; send the batch again"


async def _admin(request: Request) -> Principal:
    principal = await authenticate(request)
    if principal.role != "admin":
        raise AuthError(ErrorCode.FORBIDDEN, "the back-office API needs the admin role")
    return principal


async def revoke(request: Request) -> Response:
    """Switch a device off: its live sessions close with REVOKED, its next connect is refused."""
    return await _set_revoked(request, revoked=True)


async def enrol(request: Request) -> Response:
    """Re-enrol a device: it may sync again, starting from a full reset. With a body
    ``{user_id}`` naming another user of the tenant, the device moves to that user: a fresh
    ledger (mutation ids start over) and the old owner's sessions on it are closed."""
    raw = await read_body(request, 4096)
    if not raw.strip():
        return await _set_revoked(request, revoked=False)
    services = request.app.state.services
    principal = await _admin(request)
    body = _json(raw) if "json" in request.headers.get("content-type", "json") else wire.unpack(raw, max_size=4096)
    user_id = body.get("user_id") if isinstance(body, dict) else None
    if not isinstance(user_id, int) or isinstance(user_id, bool) or not 0 < user_id <= MAX_ID:
        raise BadRequest("body must be {\"user_id\": <id of the device's new owner>}")
    directory = services.domain.directory
    if directory is not None:  # without one, the user id is taken at its word (claims-only)
        found = (await directory.users(services.db, principal.tenant_id, [user_id])).get(user_id)
        if found is None or not found.active:
            raise BadRequest(f"`user_id` {user_id} is not an active user of this tenant")
    client_id = check_text(request.path_params["client_id"], "`client_id`")
    if not await devices.move(services.db, principal.tenant_id, client_id, user_id):
        raise BadRequest(f"no device {client_id!r} in this tenant")
    await services.fanout.publish(Notice(principal.tenant_id, revoke_client=client_id))
    return JSONResponse({"client_id": client_id, "revoked": False, "user_id": user_id})


async def _set_revoked(request: Request, *, revoked: bool) -> Response:
    services = request.app.state.services
    principal = await _admin(request)
    client_id = check_text(request.path_params["client_id"], "`client_id`")
    if not await devices.set_revoked(services.db, principal.tenant_id, client_id, revoked):
        raise BadRequest(f"no device {client_id!r} in this tenant")
    if revoked:
        await services.fanout.publish(Notice(principal.tenant_id, revoke_client=client_id))
    return JSONResponse({"client_id": client_id, "revoked": revoked})


async def write(request: Request) -> Response:
    services = request.app.state.services
    principal = await _admin(request)
    name, writable_tables = request.path_params["table"], services.domain.writable
    writable = writable_tables.get(name)
    if writable is None:
        raise BadRequest(f"unknown table {name!r}; writable: {', '.join(writable_tables) or 'none'}")
    raw = await read_body(request, services.settings.max_body_bytes)
    is_json = "json" in request.headers.get("content-type", "")
    body = _json(raw) if is_json else wire.unpack(raw, max_size=services.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise BadRequest("body must be a map {upsert: [...], delete: [...]}")
    rows = check_rows(writable, body.get("upsert", []))
    keys = check_keys(writable, body.get("delete", []))
    counts = await apply(services.db, services.registry, principal.tenant_id, writable, rows, keys)
    if writable.rescope:
        # Sessions re-read their user: a new branch or pricelist resets what it affects, and a
        # deactivated user (or one whose role changed) is closed at once.
        await services.fanout.publish(Notice(principal.tenant_id, 0, None, rescope=True))
    return JSONResponse(counts) if is_json else msgpack_response(counts)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:  # the decoder recurses per level: ~1,000 levels exhaust the stack
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
