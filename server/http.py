"""HTTP framing of the sync engine: read bytes, authenticate, call the core, write bytes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
from collections.abc import AsyncIterator, Iterator

from prometheus_client import Counter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from sync import devices, messages, wire
from sync.devices import Credential
from sync.errors import AuthError, BadRequest, ErrorCode, SyncError
from sync.schema import Principal

from . import metrics
from .auth import bearer, credential_of
from .errors import MSGPACK
from .live import count_sent


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` (never buffered beyond it)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BadRequest(f"body of {length} bytes exceeds the {limit} byte limit", ErrorCode.PAYLOAD_TOO_LARGE)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(f"body exceeds the {limit} byte limit", ErrorCode.PAYLOAD_TOO_LARGE)
    return bytes(body)


async def authenticate(request: Request) -> Principal:
    return await resolve(request, verify(request))


def verify(request: Request) -> dict:
    """The bearer token's claims (no I/O: admission is decided on them before any)."""
    token = bearer(request.headers.get("authorization"))
    claims = request.app.state.services.tokens.verify(token)
    request.state.credential = credential_of(token, claims)
    return claims


async def resolve(request: Request, claims: dict) -> Principal:
    services = request.app.state.services
    principal = await services.domain.principal(services.db, claims)
    request.state.principal = principal
    return principal


async def register_device(services, principal: Principal, credential: Credential, client_id: str, *,
                          force: bool = False, app: str | None = None) -> int | None:
    """The device's registration for this sync (see :func:`sync.devices.touch`), under the
    server's device policy; returns when it was last enrolled."""
    if services.settings.require_device_tokens and credential.device is None:
        raise AuthError(ErrorCode.FORBIDDEN, "this server syncs only with device-bound tokens (claim `did`)")
    return await devices.touch(services.db, principal, client_id, credential=credential,
                               max_devices=services.settings.max_devices_per_user, force=force, app=app)


@contextlib.asynccontextmanager
async def noting_errors(services, principal: Principal, client_id: str) -> AsyncIterator[None]:
    """Record on the device the refusal that ends this request (a storage failure is the
    server's, and the database may be what failed: not recorded)."""
    try:
        yield
    except SyncError as error:
        if error.code is not ErrorCode.UNAVAILABLE:
            with contextlib.suppress(SyncError):
                await devices.note_error(services.db, principal, client_id, error.code.value)
        raise


async def note_rejections(services, principal: Principal, client_id: str, mutations, results) -> None:
    rejected = [(m.name, r["code"]) for m, r in zip(mutations, results) if r["status"] == "rejected"]
    if rejected:
        name, code = rejected[-1]
        await devices.note_error(services.db, principal, client_id, f"{name[:20]}: {code}")


def msgpack_response(body: object) -> Response:
    return Response(wire.pack(body), media_type=MSGPACK)


async def _sync_body(request: Request) -> tuple[dict, object]:
    claims = verify(request)
    limit = request.app.state.services.settings.max_body_bytes
    return claims, wire.unpack(await read_body(request, limit), max_size=limit)


def admit(services, claims: dict, client_id: str, cursor: bytes | None = None, *,
          pull: bool = False) -> contextlib.AbstractContextManager:
    """Admission (server/admission.py) before any database work: RATE_LIMITED, or for a pull
    that serves a snapshot page the slot to hold while it is read and encoded."""
    tenant_id, user_id = claims["tid"], int(claims["sub"])
    services.admission.admit(tenant_id, user_id, client_id, "http")
    if pull and services.reader.cursors.snapshot_pending(cursor, tenant_id, user_id):
        return services.admission.snapshots.hold("http")
    return contextlib.nullcontext()


@contextlib.contextmanager
def outcome(counter: Counter) -> Iterator[None]:
    """Count a request by its outcome: ``ok`` or the error code that ended it."""
    try:
        yield
    except SyncError as error:
        counter.labels(error.code.value).inc()
        raise
    except ClientDisconnect:
        counter.labels(metrics.CLIENT_DISCONNECT).inc()
        raise
    except Exception:
        counter.labels(ErrorCode.INTERNAL.value).inc()
        raise
    counter.labels("ok").inc()


def record_results(registry, mutations, results) -> None:
    for mutation, result in zip(mutations, results):
        name = mutation.name if mutation.name in registry.mutations else "unknown"
        metrics.MUTATIONS.labels(name, result["status"], result.get("code", "")).inc()


async def pull(request: Request) -> Response:
    services = request.app.state.services
    with outcome(metrics.PULLS):
        claims, body = await _sync_body(request)
        req = messages.parse_pull(body, services.settings.min_protocol)
        request.state.client_id = req.client_id
        with admit(services, claims, req.client_id, req.cursor, pull=True):
            principal = await resolve(request, claims)
            async with noting_errors(services, principal, req.client_id):
                enrolled = await register_device(services, principal, request.state.credential, req.client_id,
                                                 app=req.app)
                batch = await services.reader.pull(principal, req.cursor, req.limit, not_before=enrolled)
            packed = wire.pack(batch)
    count_sent(batch, len(packed), "pull")
    request.state.rows = sum(len(p["rows"]) + len(p["deletes"]) for p in batch["data"].values())
    request.state.bytes = len(packed)
    return Response(packed, media_type=MSGPACK)


async def push(request: Request) -> Response:
    services = request.app.state.services
    with outcome(metrics.PUSHES):
        claims, body = await _sync_body(request)
        req = messages.parse_push(body, max_mutations=services.settings.max_mutations,
                                  minimum=services.settings.min_protocol)
        request.state.client_id = req.client_id
        admit(services, claims, req.client_id)
        principal = await resolve(request, claims)
        async with noting_errors(services, principal, req.client_id):
            await register_device(services, principal, request.state.credential, req.client_id)
            results = await services.pusher.push(principal, req.client_id, req.mutations)
    record_results(services.registry, req.mutations, results)
    await note_rejections(services, principal, req.client_id, req.mutations, results)
    return msgpack_response({"v": messages.PROTOCOL_VERSION, "results": results})


async def schema(request: Request) -> Response:
    await authenticate(request)
    body = {"v": messages.PROTOCOL_VERSION, **request.app.state.services.registry.describe()}
    if "json" in request.headers.get("accept", ""):
        return JSONResponse(body)
    return msgpack_response(body)


async def index(request: Request) -> Response:
    """``GET /``: what this server is and where to go, for a person trying it in a browser."""
    return JSONResponse({
        "name": "fieldsync", "version": _version(), "protocol": messages.PROTOCOL_VERSION,
        "links": {"health": "/healthz", "ready": "/readyz", "schema": "/sync/schema (with a bearer token)",
                  "pull": "POST /sync/pull", "push": "POST /sync/push", "websocket": "/sync/ws",
                  "metrics": "/metrics", "docs": "docs/protocol.md and docs/operations.md in the source"},
    })


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("fieldsync")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was not installed
        return "unknown"


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """200 when the database (and Redis, when configured) answer; 503 naming what does not."""
    services = request.app.state.services
    checks = {"database": services.db.ping()}
    if services.settings.redis_url:
        checks["redis"] = services.fanout.ping()
    report, ready = {}, True
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, 3)
            report[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", reported as such
            report[name], ready = f"{type(exc).__name__}: {exc}"[:300], False
    return JSONResponse({"status": "ok" if ready else "unavailable", **report}, 200 if ready else 503)


async def metrics_endpoint(request: Request) -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
