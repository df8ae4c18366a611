"""``SyncClient``: the device side of protocol v1, live over WebSocket, HTTP as the fallback.

    store, outbox = SqliteStore("device.db"), SqliteOutbox("device.db")
    async with SyncClient("https://sync.example.com", token, client_id, store, outbox) as client:
        await client.wait_state(State.LIVE)          # caught up: the store is a consistent copy
        client.enqueue("order.create", {...})        # pushed now, or when the device is back online

The client runs one background task through :class:`~fieldsync_client.state.State`:
``offline → connecting → catching_up → live``, back to ``offline`` on any failure (then it
reconnects with exponential back-off and jitter), ``closed`` for good on :meth:`close` or a
fatal error (revoked device, invalid token without a token provider, unsupported version).
When the WebSocket cannot be opened (refused upgrade, blocked by a proxy) it syncs over HTTP:
pull to ``more = false``, push, poll; and tries the WebSocket again every
``ws_retry_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .fallback import WS_OPEN_ERRORS, HttpFallback, SyncFatal
from .http import SyncHttpError
from .state import Backoff, State, StateMachine, Status
from .store import LocalStore, MemoryOutbox, MemoryStore, Outbox, OutboxEntry

log = logging.getLogger("fieldsync.client")

TokenSource = str | Callable[[], str | Awaitable[str]]
AUTH_CODES = frozenset({"AUTH_REQUIRED", "AUTH_INVALID"})
RETRY_CODES = frozenset({"RATE_LIMITED", "UNAVAILABLE"})  # refused for now: again after retry_after
CLOSE_CODES = {4400: "BAD_REQUEST", 4401: "AUTH_INVALID", 4403: "FORBIDDEN", 4410: "REVOKED",
               4426: "UNSUPPORTED_VERSION"}


class ConnectionLost(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # from the error frame that came before the close


def _pack(frame: dict[str, Any]) -> bytes:
    return msgpack.packb(frame, use_bin_type=True)


class SyncClient(HttpFallback):
    """One device: a :class:`LocalStore`, an :class:`Outbox` and a server."""

    def __init__(self, url: str, token: TokenSource, client_id: str, store: LocalStore | None = None,
                 outbox: Outbox | None = None, *, transport: str = "auto", ws_path: str = "/sync/ws",
                 limit: int | None = None, push_batch: int = 500, backoff: Backoff | None = None,
                 poll_interval: float = 5.0, ws_retry_interval: float = 30.0, ping_interval: float = 30.0,
                 open_timeout: float = 5.0, request_timeout: float = 30.0, app: str | None = None) -> None:
        if transport not in ("auto", "ws", "http"):
            raise ValueError("transport is auto, ws or http")
        self.base = url.rstrip("/")
        scheme, _, rest = self.base.partition("://")
        self.ws_url = ("wss" if scheme == "https" else "ws") + "://" + rest + ws_path
        self.client_id, self.transport = client_id, transport
        self.app = app  # "name version": sent in hello and pull, shown in the server's device list
        self.store: LocalStore = store if store is not None else MemoryStore()
        self.outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        self.limit, self.push_batch, self.backoff = limit, push_batch, backoff or Backoff()
        self.poll_interval, self.ws_retry_interval, self.ping_interval = poll_interval, ws_retry_interval, ping_interval
        self.open_timeout, self.request_timeout = open_timeout, request_timeout
        self._token_source = token
        self._machine = StateMachine()
        self._tick, self._wake, self._interrupt = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._online_evt = asyncio.Event()
        self._online_evt.set()
        self._task: asyncio.Task | None = None
        self._http: httpx.AsyncClient | None = None
        self._conn: ClientConnection | None = None
        self._next_conn: ClientConnection | None = None
        self._link: str | None = None
        self._closing = self._reached_live = self._push_blocked = False
        self._inflight: list[int] = []
        self._push_after = 0.0  # monotonic: a push refused with retry_after waits until then
        self._retry_after: float | None = None  # of this connection's last error frame
        self._ws_failed_at = float("-inf")
        self._counts = {"batches": 0, "rows": 0, "catchup_batches": 0, "catchup_rows": 0, "connects": 0}
        self._last_applied_at: float | None = None
        self._checkpoint_at: float | None = None
        self._last_error: str | None = None
        self._fatal: str | None = None
        self._listeners: dict[str, list[Callable[[Any], None]]] = {"status": [], "changes": [], "results": []}

    # -- what the app sees ------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._machine.state

    @property
    def online(self) -> bool:
        return self._online_evt.is_set()

    @property
    def status(self) -> Status:
        c = self._counts
        return Status(self.state, self._link, c["catchup_batches"], c["catchup_rows"], c["batches"], c["rows"],
                      c["connects"], self._last_applied_at, self._checkpoint_at, self.outbox.pending_count(),
                      len(self._inflight), len(self.outbox.rejected()), self._last_error, self._fatal)

    def on_status(self, callback: Callable[[Status], None]) -> None:
        """Called after every state change."""
        self._listeners["status"].append(callback)

    def on_changes(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Called with every applied batch (``reset`` and ``data`` name the datasets it touched)."""
        self._listeners["changes"].append(callback)

    def on_results(self, callback: Callable[[list[OutboxEntry]], None]) -> None:
        """Called with the outbox entries that just got their result."""
        self._listeners["results"].append(callback)

    def enqueue(self, name: str, args: dict[str, Any], at: int | None = None) -> OutboxEntry:
        """Put a mutation in the outbox (id assigned now); pushed as soon as the client is live."""
        entry = self.outbox.enqueue(name, args, at)
        self._wake.set()
        self._notify()
        return entry

    async def wait_until(self, predicate: Callable[[Status], bool], timeout: float | None = None) -> Status:
        async def watch() -> Status:
            while not predicate(status := self.status):
                await self._tick.wait()
            return status

        return await asyncio.wait_for(watch(), timeout)

    async def wait_state(self, *states: State, timeout: float | None = None) -> Status:
        return await self.wait_until(lambda s: s.state in states or s.state is State.CLOSED, timeout)

    async def wait_synced(self, timeout: float | None = None) -> Status:
        """Live with an empty outbox (or closed)."""
        return await self.wait_until(lambda s: s.in_sync and not s.in_flight or s.state is State.CLOSED, timeout)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> SyncClient:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"fieldsync {self.client_id}")
        return self

    async def __aenter__(self) -> SyncClient:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        for event in (self._wake, self._interrupt, self._online_evt):
            event.set()
        for conn in (self._conn, self._next_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.state is not State.CLOSED:
            self._step(State.CLOSED)
        if self._http is not None:
            await self._http.aclose()

    def set_online(self, online: bool) -> None:
        """The network comes and goes (the simulator, an app's airplane-mode switch)."""
        if online:
            self._online_evt.set()
            return
        self._online_evt.clear()
        self._interrupt.set()
        self._wake.set()
        if self._conn is not None:
            asyncio.get_running_loop().create_task(self._conn.close())

    def drop(self) -> None:
        """Cut the WebSocket's TCP connection without a close frame, as a dead network does."""
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.abort()

    def reconnect_now(self) -> None:
        """Skip the current back-off delay."""
        self._interrupt.set()

    # -- the loop ---------------------------------------------------------------------------------

    def _step(self, new: State) -> None:
        self._machine.step(new)
        if new is State.CONNECTING:
            self._counts["catchup_batches"] = self._counts["catchup_rows"] = 0
            self._reached_live = self._push_blocked = False
        elif new is State.LIVE:
            self._reached_live = True
        self._notify("status")

    def _notify(self, kind: str | None = None, value: Any = None) -> None:
        for callback in self._listeners.get(kind, ()) if kind else ():
            try:
                callback(self.status if kind == "status" else value)
            except Exception:  # noqa: BLE001 - an app callback must not stop syncing
                log.exception("fieldsync %s listener failed", kind)
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def _run(self) -> None:
        while not self._closing:
            if not self.online:
                await self._online_evt.wait()
                continue
            self._step(State.CONNECTING)
            retry_after = None
            try:
                await self._session()
            except SyncFatal as fatal:
                self._last_error = str(fatal)
                if not (fatal.code in AUTH_CODES and callable(self._token_source)):
                    self._fatal = fatal.code
                    self._step(State.CLOSED)
                    return
            except (ConnectionLost, ConnectionClosed, SyncHttpError, httpx.HTTPError, *WS_OPEN_ERRORS) as error:
                self._last_error = f"{type(error).__name__}: {error}"
                retry_after = getattr(error, "retry_after", None)
            except Exception as error:  # noqa: BLE001 - e.g. a local store failure: retry from the stored cursor
                log.warning("fieldsync session failed: %r", error)
                self._last_error = f"{type(error).__name__}: {error}"
            finally:
                self._conn, self._link, self._inflight = None, None, []
            self._step(State.OFFLINE)
            if self._reached_live:
                self.backoff.reset()
            if self._next_conn is None and self.online and not self._closing:
                self._interrupt.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    delay = self.backoff.after(retry_after) if retry_after else self.backoff.next()
                    await asyncio.wait_for(self._interrupt.wait(), delay)

    async def _token(self) -> str:
        token = self._token_source
        if callable(token):
            token = token()
            if inspect.isawaitable(token):
                token = await token
        return token

    async def _session(self) -> None:
        conn, self._next_conn = self._next_conn, None
        if conn is None and self.transport != "http":
            try:
                conn = await self._open_ws()
            except WS_OPEN_ERRORS as error:
                if self.transport == "ws":
                    raise
                self._ws_failed_at = time.monotonic()
                self._last_error = f"WebSocket unavailable ({type(error).__name__}: {error}); using HTTP"
        self._counts["connects"] += 1
        if conn is not None:
            await self._ws_session(conn)
        else:
            await self._http_session()

    def _apply(self, batch: dict[str, Any]) -> None:
        self.store.apply(batch)
        rows = sum(len(p.get("rows") or ()) + len(p.get("deletes") or ()) for p in (batch.get("data") or {}).values())
        for name in ("batches", "catchup_batches"):
            self._counts[name] += 1
        for name in ("rows", "catchup_rows"):
            self._counts[name] += rows
        self._last_applied_at = time.time()
        if not batch.get("more"):
            self._checkpoint_at = self._last_applied_at
        self._notify("changes", batch)

    def _on_results(self, results: list[dict[str, Any]]) -> None:
        marked = self.outbox.mark(results)
        self._inflight = []
        self._wake.set()
        self._notify("results", marked)

    # -- WebSocket --------------------------------------------------------------------------------

    async def _open_ws(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {await self._token()}"}
        return await connect(self.ws_url, additional_headers=headers, open_timeout=self.open_timeout,
                             max_size=64 * 1024 * 1024, ping_interval=20, ping_timeout=20, close_timeout=2)

    async def _ws_session(self, conn: ClientConnection) -> None:
        self._conn, self._link, self._retry_after = conn, "ws", None
        writer: asyncio.Task | None = None
        over = asyncio.Event()
        try:
            hello = {"t": "hello", "v": 1, "client_id": self.client_id, "cursor": self.store.cursor}
            await conn.send(_pack({**hello, "app": self.app} if self.app else hello))
            self._step(State.CATCHING_UP)
            writer = asyncio.get_running_loop().create_task(self._ws_writer(conn, over))
            async for data in conn:
                frame = msgpack.unpackb(data, raw=False) if isinstance(data, bytes) else {}
                await self._on_frame(conn, frame)
                await asyncio.sleep(0)  # frames may be queued already: let the app's other tasks run
        except ConnectionClosed:
            pass
        finally:
            if writer is not None:
                over.set()  # wait_for may swallow a cancel (Python 3.11): the writer also checks this
                self._wake.set()
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
            if conn.state.name != "CLOSED":
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
        if self._closing or not self.online:
            return
        code, reason = conn.close_code, conn.close_reason or ""
        if code in CLOSE_CODES:
            raise SyncFatal(CLOSE_CODES[code], reason)
        raise ConnectionLost(f"WebSocket closed ({code} {reason})".strip(), self._retry_after)

    async def _on_frame(self, conn: ClientConnection, frame: dict[str, Any]) -> None:
        kind = frame.get("t")
        if kind == "changes":
            self._apply(frame)
            if not frame.get("more"):
                await conn.send(_pack({"t": "ack", "cursor": frame["cursor"]}))
                if self.state is State.CATCHING_UP:
                    self._step(State.LIVE)
                self._wake.set()
        elif kind == "results":
            self._on_results(frame.get("results") or [])
        elif kind == "error":
            code = frame.get("code")
            self._last_error = f"{code}: {frame.get('message')}"
            retry_after = frame.get("retry_after")
            if isinstance(retry_after, int) and not isinstance(retry_after, bool) and retry_after > 0:
                self._retry_after = retry_after  # kept for a close that follows (hello refused)
                if self._inflight and code in RETRY_CODES:  # the push frame was refused: resend it later
                    self._push_after = time.monotonic() + self.backoff.after(retry_after)
                    self._inflight = []
                    self._wake.set()
            elif self._inflight and code in ("PAYLOAD_TOO_LARGE", "BAD_REQUEST"):  # the push frame was refused
                self._push_blocked = code == "BAD_REQUEST"  # a client bug: do not resend it in a loop
                self.push_batch = max(1, self.push_batch // 2)
                self._inflight = []
                self._wake.set()
            self._notify()

    async def _ws_writer(self, conn: ClientConnection, over: asyncio.Event) -> None:
        """Pushes the outbox one frame at a time once live; pings while idle."""
        last_sent = time.monotonic()
        try:
            while not over.is_set():
                now = time.monotonic()
                wait = self.ping_interval - (now - last_sent)
                if self._push_after > now:  # a refused push is due again then
                    wait = min(wait, self._push_after - now)
                if wait > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                self._wake.clear()
                if over.is_set():
                    return
                if self.state is State.LIVE and not self._inflight and not self._push_blocked \
                        and time.monotonic() >= self._push_after:
                    batch = self.outbox.pending(self.push_batch)
                    if batch:
                        self._inflight = [entry.id for entry in batch]
                        await conn.send(_pack({"t": "push", "mutations": [entry.wire() for entry in batch]}))
                        last_sent = time.monotonic()
                        self._notify()
                        continue
                if time.monotonic() - last_sent >= self.ping_interval:
                    await conn.send(_pack({"t": "ping"}))
                    last_sent = time.monotonic()
        except ConnectionClosed:
            return
        except Exception as error:  # noqa: BLE001 - e.g. the outbox failed: end the session, retry later
            self._last_error = f"{type(error).__name__}: {error}"
            await conn.close(1011, "client error")
