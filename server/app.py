"""The Starlette application: wiring only. Engines and clients are built in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from jobs.config import JobSettings
from jobs.runner import Jobs
from sync import capture
from sync.cursor import CursorCodec
from sync.errors import SyncError
from sync.push import Pusher
from sync.reader import Reader
from sync.schema import Registry
from sync.shared_pulls import SharedPulls
from sync.storage import Database

from . import admin, device_health, http, metrics, plugin, ws
from .admission import Admission
from .fanout import Fanout, Notice, fanout_for
from .live import Hub
from .auth import TokenService, switched_off
from .compression import Compression
from .config import Settings
from .errors import on_client_disconnect, on_http_error, on_sync_error, on_unexpected
from .observe import Observe, instrument_database
from .plugin import Domain

log = logging.getLogger("fieldsync")


@dataclass
class Services:
    """Everything a request handler needs, built once per process."""

    settings: Settings
    db: Database
    domain: Domain
    registry: Registry
    tokens: TokenService
    reader: Reader
    pusher: Pusher
    hub: Hub
    fanout: Fanout
    admission: Admission | None = None  # rate limits and snapshot slots (built from the settings when None)
    jobs: Jobs | None = None  # background jobs: enqueued after commits, consumed here in the embedded default
    # A reconnect storm: WebSocket devices at one cursor share each catch-up batch. Not HTTP
    # pulls: a batch read before a device's own push would hide it from its next pull.
    shared_pulls: SharedPulls = field(default_factory=lambda: SharedPulls(on_result=metrics.count_shared_pull))
    _watch: asyncio.Task | None = None  # sync.capture.watch: commits by other programs

    def __post_init__(self) -> None:
        if self.admission is None:
            self.admission = Admission(self.settings)

    async def start_live(self) -> None:
        """Connect fan-out: local commits are published, every notice wakes the hub; and
        hear of other programs' commits (every process hears them itself, so they wake
        only its own sessions)."""
        loop = asyncio.get_running_loop()
        await self.fanout.start(self.hub.notify, self.hub.tenants, self.hub.recheck)
        self.db.commit_listeners.append(
            lambda tenant, seq, buckets: loop.create_task(self.fanout.publish(Notice.of_commit(tenant, seq, buckets)))
        )
        self._watch = asyncio.create_task(capture.watch(
            self.db, lambda tenant, seq, buckets: self.hub.notify(Notice.of_commit(tenant, seq, buckets))))

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.hub.stop()
        await self.fanout.stop()
        if self.jobs is not None:
            await asyncio.to_thread(self.jobs.stop)
        await self.db.dispose()


def build_services(settings: Settings, domain: Domain | None = None) -> Services:
    """Build (not connect) everything a process serves with: ``domain``, or the one
    ``FIELDSYNC_DOMAIN`` names."""
    domain = domain or plugin.load(settings.domain)
    db = Database(settings.database_url)
    if settings.metrics:
        instrument_database(db)
    # fieldsync's own tasks and the domain's; with its sink, handlers enqueue after commit
    jobs = Jobs(JobSettings.for_server(settings), domain.registry, domain.jobs)
    registry = jobs.registry
    reader = Reader(db, registry, CursorCodec(settings.jwt_secret),
                    default_limit=settings.pull_limit, max_limit=settings.pull_max_limit)
    fanout = fanout_for(settings.redis_url, db, prefix=settings.redis_prefix, poll_interval=settings.poll_interval)
    return Services(
        settings=settings, db=db, domain=domain, registry=registry, tokens=TokenService(settings), reader=reader,
        pusher=Pusher(db, registry, on_redo=metrics.PUSH_GROUPS_REDONE.inc), hub=Hub(db, reader), fanout=fanout, jobs=jobs,
    )


class App(Starlette):
    """The routes of ``create_app``, and ``GET /sync/ws`` straight to its session: a live
    session lasts hours, and going through the HTTP middleware (which passes WebSockets on
    untouched) would keep a chain of their coroutine frames alive, ~4 KB per session."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"].removeprefix(scope.get("root_path", "")) == "/sync/ws":
            scope["app"] = self
            return await ws.endpoint(WebSocket(scope, receive, send))
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, services: Services | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    domain = services.domain if services is not None else plugin.load(settings.domain)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        built = services or build_services(settings, domain)
        app.state.services = built
        built.hub.on_revoke(ws.close_revoked, functools.partial(switched_off, built.db, built.domain.inactive_users))
        built.hub.on_rescope(ws.rescope)
        await built.start_live()
        if built.jobs is not None:  # jobs' commits wake live devices like the server's own
            loop = asyncio.get_running_loop()
            built.jobs.commit_listeners.append(lambda *commit: loop.call_soon_threadsafe(built.db.notify, *commit))
            built.jobs.start()  # consumer threads here unless a `fieldsync worker` consumes
        try:
            yield
        finally:
            if services is None:
                await built.close()

    routes = [
        Route("/sync/pull", http.pull, methods=["POST"]),
        Route("/sync/push", http.push, methods=["POST"]),
        Route("/sync/schema", http.schema, methods=["GET"]),
        Route("/", http.index, methods=["GET"]),
        Route("/healthz", http.healthz, methods=["GET"]),
        Route("/readyz", http.readyz, methods=["GET"]),
        Route("/metrics", http.metrics_endpoint, methods=["GET"]),
        Route("/admin/devices", device_health.list_devices, methods=["GET"]),
        Route("/admin/devices/{client_id}/revoke", admin.revoke, methods=["POST"]),
        Route("/admin/devices/{client_id}/enrol", admin.enrol, methods=["POST"]),
        Route("/admin/{table}", admin.write, methods=["POST"]),
        *domain.routes,
    ]
    app = App(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(Observe)] * settings.metrics + [Middleware(Compression)],
        exception_handlers={SyncError: on_sync_error, ClientDisconnect: on_client_disconnect,
                            HTTPException: on_http_error, Exception: on_unexpected},
    )
    if services is not None:  # in-process tests: usable without running the lifespan
        app.state.services = services
    return app
