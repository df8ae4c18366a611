"""Turning exceptions into responses: one place, one body shape ``{error: {code, message}}``."""

from __future__ import annotations

import json
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from sync import wire
from sync.errors import ErrorCode, SyncError

from . import metrics

log = logging.getLogger("fieldsync.errors")

MSGPACK = "application/msgpack"


def wants_json(request: Request) -> bool:
    """Admin callers may speak JSON; sync bodies are msgpack."""
    accept = request.headers.get("accept", "")
    ctype = request.headers.get("content-type", "")
    return MSGPACK not in accept and ("json" in ctype or "json" in accept or request.url.path.startswith("/admin"))


def error_response(request: Request, error: SyncError) -> Response:
    body = {"error": error.to_wire()}
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    if wants_json(request):
        return Response(json.dumps(body), error.status, headers, media_type="application/json")
    return Response(wire.pack(body), error.status, headers, media_type=MSGPACK)


async def on_sync_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SyncError)
    request.state.error_code = exc.code.value
    return error_response(request, exc)


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route for the path, a method the route does not take)
    in the error body every other refusal has, instead of its plain text."""
    assert isinstance(exc, HTTPException)
    missing = exc.status_code == 404
    error = SyncError(ErrorCode.NOT_FOUND if missing else ErrorCode.BAD_REQUEST,
                      f"no endpoint {request.method} {request.url.path[:200]}" if missing else str(exc.detail))
    error.status = exc.status_code
    request.state.error_code = error.code.value
    return error_response(request, error)


async def on_client_disconnect(request: Request, exc: Exception) -> Response:
    """The device went away mid-request: not a fault. The access log line (status 499, code
    CLIENT_DISCONNECT) is the only record; the response goes nowhere."""
    request.state.error_code = metrics.CLIENT_DISCONNECT
    return Response(status_code=metrics.CLIENT_DISCONNECT_STATUS)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    """A bug: log the traceback here, never send it to the client."""
    request_id = getattr(request.state, "request_id", "-")
    log.exception("unhandled error in %s %s (request %s)", request.method, request.url.path, request_id)
    error = SyncError(ErrorCode.INTERNAL, f"internal error; quote request id {request_id}")
    return error_response(request, error)
