"""``GET /documents/{id}``: a stored PDF (invoice or requested report), for the bearer of a
token whose datasets hold the row it belongs to.

A file names its synced row (``invoices`` or ``documents``); the request is allowed when
that row is visible to the principal under the scope its role has in a dataset over that
table: the same rule that decides which rows reach the device. An admin may read every
file of their tenant. Anything else, including another tenant's file, is a 404, so ids
reveal nothing.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sync.changes import now_ms
from sync.errors import ErrorCode
from sync.messages import check_text
from sync.schema import Principal, Registry
from sync.storage import Database

from ..http import authenticate
from .job_tables import document_files


def _not_found() -> Response:
    # NOT_FOUND is otherwise a mutation code; here it is a request for no visible file.
    body = {"error": {"code": ErrorCode.NOT_FOUND.value, "message": "no such document"}}
    return JSONResponse(body, status_code=404)


async def visible(db: Database, registry: Registry, principal: Principal, table: str, row: dict[str, Any]) -> bool:
    """Whether ``row`` of ``table`` is in one of the principal's datasets (scope and window)."""
    if principal.role == "admin":
        return True
    now = now_ms()
    for dataset in registry.for_role(principal.role):
        if dataset.table.name != table:
            continue
        scope = dataset.scopes[principal.role]
        values: Any = scope.values(principal) if scope.values is not None else []
        if isinstance(values, sa.Select):
            async with db.read() as conn:
                values = (await conn.execute(values)).scalars().all()
        if scope.admits(row, set(values), now):
            return True
    return False


async def fetch(request: Request) -> Response:
    services = request.app.state.services
    principal = await authenticate(request)
    file_id = check_text(request.path_params["id"], "the document id")
    async with services.db.read() as conn:
        found = (await conn.execute(sa.select(document_files).where(
            document_files.c.id == file_id, document_files.c.tenant_id == principal.tenant_id,
        ))).mappings().first()
        source = services.registry.tables.get(found["source_table"]) if found else None
        row = None
        if source is not None:
            table = source.table
            row = (await conn.execute(sa.select(table).where(
                table.c.tenant_id == principal.tenant_id, table.c[source.key] == found["source_key"],
            ))).mappings().first()
    if row is None or not await visible(services.db, services.registry, principal, source.table.name, dict(row)):
        return _not_found()
    filename = found["filename"].replace('"', "")
    return Response(found["body"], media_type=found["content_type"], headers={
        "Content-Disposition": f'inline; filename="{filename}"',
        "Cache-Control": "private, max-age=86400",  # a stored file never changes
    })
