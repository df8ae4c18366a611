"""Observability at the edge: request ids, one structured log line per request, latency
metrics by route template, slow requests and slow queries, database pool gauges."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid

from sqlalchemy import event
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sync.storage import Database

from . import metrics

log = logging.getLogger("fieldsync.access")
SLOW_REQUEST_S = 0.5
SLOW_QUERY_S = 0.2


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers want."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Libraries whose INFO lines bury a command's one useful line (alembic: ~10 per migrate;
# httpx: one per request of `simulate`); `--verbose` shows them.
CHATTY = ("alembic", "httpx", "httpcore")


def configure_logging(level: int = logging.INFO, *, verbose: bool = False) -> None:
    """JSON lines when the output is collected; plain text in a terminal."""
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


class Observe:
    """Accept ``X-Request-ID`` or make one, echo it, time the request, log one line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")[:64]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id = given or uuid.uuid4().hex
        started, status = time.perf_counter(), 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        if route == "/metrics":
            return
        metrics.HTTP_DURATION.labels(route, scope["method"], str(status)).observe(seconds)
        state = scope.get("state", {})
        principal = state.get("principal")
        fields = {"request_id": state.get("request_id"), "route": route, "method": scope["method"],
                  "status": status, "ms": round(seconds * 1000, 2),
                  "user": getattr(principal, "user_id", None), "device": state.get("client_id"),
                  "rows": state.get("rows"), "bytes": state.get("bytes"), "code": state.get("error_code")}
        level = logging.WARNING if seconds > SLOW_REQUEST_S else logging.INFO
        log.log(level, "%s %s %s %.1fms%s", scope["method"], route, status, seconds * 1000,
                " (slow)" if level == logging.WARNING else "", extra={"fields": fields})


def instrument_database(db: Database) -> None:
    """Pool gauges, acquire times and slow-query warnings for one engine."""
    db.on_acquire = metrics.DB_WAIT.observe
    pool = db.engine.sync_engine.pool
    event.listen(pool, "checkout", lambda *args: metrics.DB_IN_USE.inc())
    event.listen(pool, "checkin", lambda *args: metrics.DB_IN_USE.dec())
    slow = logging.getLogger("fieldsync.sql")

    def before(conn, cursor, statement, params, context, executemany) -> None:
        context._fs_started = time.perf_counter()

    def after(conn, cursor, statement, params, context, executemany) -> None:
        seconds = time.perf_counter() - context._fs_started
        if seconds > SLOW_QUERY_S:
            slow.warning("slow query %.0fms: %s", seconds * 1000, statement.split("\n")[0][:200],
                         extra={"fields": {"ms": round(seconds * 1000, 1)}})

    event.listen(db.engine.sync_engine, "before_cursor_execute", before)
    event.listen(db.engine.sync_engine, "after_cursor_execute", after)
