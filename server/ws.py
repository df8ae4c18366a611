"""``GET /sync/ws``: the WebSocket framing of the sync engine.

A session moves HANDSHAKE → CATCHING_UP → LIVE → CLOSING and nowhere else. Catch-up uses
the same :meth:`Reader.pull` as HTTP; live frames come from the :class:`~server.live.Hub`.
Outbound frames go through a small bounded outbox (:mod:`server.outbox`); a device that
stops reading fills it, is marked behind, and catches up from the log when it drains (or is
closed with SLOW_CLIENT after a timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from sync import devices, messages, wire
from sync.errors import AuthError, BadRequest, ErrorCode, SyncError
from sync.schema import Principal
from sync.shared_pulls import pull_key

from . import metrics
from .admission import SnapshotSlots
from .auth import bearer, credential_of
from .http import note_rejections, record_results, register_device
from .live import count_sent
from .outbox import Outbox

log = logging.getLogger("fieldsync.ws")

QUEUE_FRAMES = 4  # outbound frames buffered per session; beyond that the device is "behind"
CLOSE_SEND_TIMEOUT_S = 1.0  # a closing frame that cannot be written by then is given up on


class State(enum.Enum):
    HANDSHAKE = "handshake"
    CATCHING_UP = "catching_up"
    LIVE = "live"
    CLOSING = "closing"


_ALLOWED = {
    State.HANDSHAKE: {State.CATCHING_UP, State.CLOSING},
    State.CATCHING_UP: {State.LIVE, State.CLOSING},
    State.LIVE: {State.CLOSING},
    State.CLOSING: set(),
}


class Session:
    """One device's live connection."""

    def __init__(self, websocket: WebSocket, services: Any) -> None:
        self.ws = websocket
        self.services = services
        self.state = State.HANDSHAKE
        self.principal: Principal | None = None
        self.client_id = ""
        self.cursor: bytes | None = None
        self.buckets: frozenset[str] = frozenset()
        self.dirty = False
        self.token_exp = float("inf")
        self.claims: dict = {}
        self.close_code: int | None = None
        self.not_before: int | None = None
        self.joined_at = 0.0  # when the hub started waking this session (monotonic)
        self.outbox = Outbox(websocket.send_bytes, limit=QUEUE_FRAMES, slow_after=services.settings.ws_slow_timeout,
                             on_drained=self._drained, on_stalled=self._give_up)
        self._main: asyncio.Task | None = None

    # -- state ---------------------------------------------------------------------

    def step(self, new: State) -> None:
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"illegal session step {self.state.value} -> {new.value}")
        metrics.WS_SESSIONS.labels(self.state.value).dec()
        metrics.WS_SESSIONS.labels(new.value).inc()
        self.state = new

    def is_live(self) -> bool:
        return self.state is State.LIVE

    def has_room(self) -> bool:
        """False marks the session behind: it gets no frame until its outbox drains."""
        if self.outbox.has_room():
            return True
        self.dirty = True
        return False

    def offer(self, frame: bytes, reset: bool = False) -> None:
        self.outbox.offer(frame)
        if reset:  # the device's scope changed: refresh what wakes it
            asyncio.get_running_loop().create_task(self._refresh_buckets())

    async def close_for(self, code: ErrorCode, message: str, retry_after: int | None = None) -> None:
        if self.state is State.CLOSING:
            return
        self.step(State.CLOSING)
        self.close_code = code.close
        frame = {"t": "error", "code": code.value, "message": message}
        if retry_after is not None:
            frame["retry_after"] = retry_after
        # Bounded: a device that reads nothing never makes room for these frames.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_SEND_TIMEOUT_S):
                await self.ws.send_bytes(wire.pack(frame))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_SEND_TIMEOUT_S):
                await self.ws.close(code.close, message[:120])

    # -- the connection ----------------------------------------------------------------

    async def run(self) -> None:
        await self.ws.accept()
        self._main = asyncio.current_task()
        metrics.WS_OPENED.inc()
        metrics.WS_SESSIONS.labels(self.state.value).inc()
        opened = time.monotonic()
        hub = self.services.hub
        try:
            await self._handshake(opened)
            hub.add(self)
            self.joined_at = time.monotonic()
            await self._catch_up()
            self.step(State.LIVE)
            if self.dirty:
                hub.wake(self.principal.tenant_id)
            await self._receive_loop()
        except WebSocketDisconnect:
            pass
        except SyncError as error:
            await self.close_for(error.code, error.message, error.retry_after)
            await self._note(error.code)
        except asyncio.CancelledError:
            if self.close_code is None:  # not our own give-up on a stalled device (see _give_up)
                raise
            asyncio.current_task().uncancel()
        finally:
            if self.principal is not None:
                hub.remove(self)
            await self.outbox.close()
            self._ended(opened)

    def _ended(self, opened: float) -> None:
        metrics.WS_SESSIONS.labels(self.state.value).dec()
        code = str(self.close_code or 1000)
        metrics.WS_CLOSED.labels(code).inc()
        log.info("session ended", extra={"fields": {
            "route": "/sync/ws", "user": getattr(self.principal, "user_id", None), "device": self.client_id,
            "close": code, "seconds": round(time.monotonic() - opened, 1), "frames": self.outbox.frames_sent,
            "bytes": self.outbox.bytes_sent}})

    async def _handshake(self, opened: float) -> None:
        # Counted from the connect: junk frames before hello must not keep a socket open.
        frame = await self._next_frame(self.services.settings.ws_hello_timeout, since=opened)
        if frame.get("t") != "hello":
            raise BadRequest("the first frame must be hello")
        messages.check_version(frame, minimum=self.services.settings.min_protocol)
        self.client_id = messages.client_id_of(frame)
        app = messages.app_of(frame)
        cursor = frame.get("cursor")
        if cursor is not None and not isinstance(cursor, bytes):
            raise BadRequest("`cursor` must be bin or nil")
        token = frame.get("token") or bearer(self.ws.headers.get("authorization"))
        if not isinstance(token, str):
            raise AuthError(ErrorCode.AUTH_INVALID, "`token` must be a string")
        claims = self.services.tokens.verify(token)
        # A reconnect loop is refused here, before any database work: error frame, close 4429.
        self.services.admission.admit(claims["tid"], int(claims["sub"]), self.client_id, "ws")
        self.principal = await self.services.domain.principal(self.services.db, claims)
        self.token_exp = float(claims["exp"])
        self.claims = claims
        self.cursor = cursor
        self.not_before = await register_device(self.services, self.principal, credential_of(token, claims),
                                                self.client_id, force=True, app=app)
        self.buckets = await self.services.reader.buckets(self.principal)
        self.step(State.CATCHING_UP)

    async def _catch_up(self) -> None:
        reader, principal = self.services.reader, self.principal
        while True:
            # Terminals reconnecting together at one cursor share each batch and its encoding
            # (and the snapshot slot it needs: UNAVAILABLE closes them all with 1013).
            cursor, not_before = self.cursor, self.not_before
            slots = self.services.admission.snapshots \
                if reader.cursors.snapshot_pending(cursor, principal.tenant_id, principal.user_id) else None
            batch, frame, read_at = await self.services.shared_pulls.run(
                ("ws", pull_key(principal, cursor, None, not_before)),
                lambda: _changes_frame(reader, principal, cursor, not_before, slots))
            count_sent(batch, len(frame), "ws")
            await self.outbox.put(frame)
            self.cursor = batch["cursor"]
            if batch["reset"]:
                self.buckets = await self.services.reader.buckets(self.principal)
            if not batch["more"]:
                # A shared batch may have been read before this session joined the hub: a
                # commit in between woke no one here, so the first live round checks.
                self.dirty = self.dirty or read_at < self.joined_at
                return

    async def _receive_loop(self) -> None:
        idle = self.services.settings.ws_idle_timeout
        while True:
            frame = await self._next_frame(idle)
            kind = frame.get("t")
            if kind == "ping":
                await self.outbox.put(wire.pack({"t": "pong"}))
            elif kind == "push":
                await self._push(frame)
            elif kind == "ack":
                await self._ack(frame)
            elif kind == "hello":
                await self._error(ErrorCode.BAD_REQUEST, "hello was already received")
            else:
                await self._error(ErrorCode.BAD_REQUEST, f"unknown frame type {kind!r}")

    async def _next_frame(self, timeout: float, since: float | None = None) -> dict:
        """The next well-formed frame; malformed ones get an error frame and are skipped.
        ``timeout`` restarts with each wait, or runs from ``since`` (monotonic) when given."""
        while True:
            until_expiry = self.token_exp - time.time()
            if until_expiry <= 0:
                raise AuthError(ErrorCode.AUTH_INVALID, "the token expired; reconnect with a new one")
            left = timeout if since is None else since + timeout - time.monotonic()
            try:
                # asyncio.timeout, not wait_for: no extra task per frame and per idle session
                async with asyncio.timeout(max(0.0, min(left, until_expiry))):
                    message = await self.ws.receive()
            except asyncio.TimeoutError:
                # Decide by which deadline was waited for, not by re-reading the clock: the
                # loop's timer may fire a hair before time.time() reaches ``exp``.
                if until_expiry <= left:
                    raise AuthError(ErrorCode.AUTH_INVALID, "the token expired; reconnect with a new one") from None
                raise SyncError(ErrorCode.IDLE_TIMEOUT, f"no frame for {timeout:.0f}s" if since is None
                                else f"no valid hello within {timeout:.0f}s of connecting") from None
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            if message.get("bytes") is None:
                await self._error(ErrorCode.BAD_REQUEST, "frames are binary msgpack, not text")
                continue
            try:
                frame = wire.unpack(message["bytes"], max_size=self.services.settings.max_body_bytes)
            except BadRequest as error:
                await self._error(error.code, error.message)
                continue
            if isinstance(frame, dict):
                return frame
            await self._error(ErrorCode.BAD_REQUEST, "a frame is a msgpack map")

    async def _push(self, frame: dict) -> None:
        try:
            mutations = messages.parse_mutations(frame.get("mutations"),
                                                 max_mutations=self.services.settings.max_mutations)
            # Refused in an error frame: the socket stays open, the device resends the same
            # mutations after retry_after (closing would cost it a hello and a catch-up).
            self.services.admission.admit(self.principal.tenant_id, self.principal.user_id, self.client_id, "ws")
        except SyncError as error:
            await self._error(error.code, error.message, error.retry_after)
            return
        results = await self.services.pusher.push(self.principal, self.client_id, mutations)
        record_results(self.services.registry, mutations, results)
        await self.outbox.put(wire.pack({"t": "results", "results": results}))
        await note_rejections(self.services, self.principal, self.client_id, mutations, results)

    async def _ack(self, frame: dict) -> None:
        cursor = frame.get("cursor")
        decoded = self.services.reader.cursors.decode(cursor) if isinstance(cursor, bytes) else None
        if decoded is None:
            await self._error(ErrorCode.BAD_REQUEST, "`cursor` of ack is not a cursor this server issued")
            return
        await record_ack(self.services.db, self.principal, self.client_id, decoded.seq)

    async def _note(self, code: ErrorCode) -> None:
        """The refusal that closed a registered device's session, on its device row (an
        idle close is routine, a storage failure the server's)."""
        if self.principal is None or code in (ErrorCode.IDLE_TIMEOUT, ErrorCode.UNAVAILABLE):
            return
        with contextlib.suppress(SyncError):
            await devices.note_error(self.services.db, self.principal, self.client_id, code.value)

    async def _error(self, code: ErrorCode, message: str, retry_after: int | None = None) -> None:
        frame = {"t": "error", "code": code.value, "message": message}
        if retry_after is not None:
            frame["retry_after"] = retry_after
        await self.outbox.put(wire.pack(frame))

    def _drained(self) -> None:
        """The outbox emptied after the device fell behind: catch it up from the log."""
        self.services.hub.wake(self.principal.tenant_id)

    async def _give_up(self) -> None:
        """Close a device that stopped reading, and end its session even though the
        receive side, waiting for frames the device will never send, would not notice."""
        await self.close_for(ErrorCode.SLOW_CLIENT, f"frames not read for {self.outbox.slow_after:.0f}s")
        if self._main is not None and not self._main.done():
            self._main.cancel()

    async def _refresh_buckets(self) -> None:
        with contextlib.suppress(Exception):
            self.buckets = await self.services.reader.buckets(self.principal)


async def _changes_frame(reader: Any, principal: Principal, cursor: bytes | None, not_before: int | None,
                         slots: SnapshotSlots | None) -> tuple[dict, bytes, float]:
    """A catch-up batch, its frame, and when its read began; a snapshot page holds one of
    ``slots`` while it is read and encoded."""
    with slots.hold("ws") if slots is not None else contextlib.nullcontext():
        read_at = time.monotonic()
        batch = await reader.pull(principal, cursor, not_before=not_before)
        return batch, wire.pack({"t": "changes", **{k: v for k, v in batch.items() if k != "v"}}), read_at


async def rescope(session: Session) -> None:
    """Re-read the session's user after the office changed users or branches: a new branch
    or pricelist changes its buckets (and the reader resets the datasets it affects)."""
    if session.principal is None or session.state is State.CLOSING:
        return
    try:
        principal = await session.services.domain.principal(session.services.db, session.claims)
    except SyncError as error:  # deactivated, or its role changed: the token no longer fits
        await session.close_for(error.code, error.message)
        return
    if principal != session.principal:
        session.principal = principal
        session.buckets = await session.services.reader.buckets(principal)


async def close_revoked(session: Session, notice: object) -> None:
    await session.close_for(ErrorCode.REVOKED, "this device or its user was switched off by an admin")


async def endpoint(websocket: WebSocket) -> None:
    await Session(websocket, websocket.app.state.services).run()


async def record_ack(db, principal: Principal, client_id: str, seq: int) -> None:
    """Store a WebSocket ack and observe ``fieldsync_device_lag_positions`` (head − acked):
    the device-lag histogram, fed without one series per device."""
    head = await devices.acknowledge(db, principal, client_id, seq)
    metrics.DEVICE_LAG.observe(max(0, head - seq))
