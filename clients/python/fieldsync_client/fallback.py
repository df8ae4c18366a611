"""The HTTP side of :class:`~fieldsync_client.client.SyncClient`: used when the WebSocket
cannot be opened. Pull to ``more = false`` (catching up), then push the outbox and poll
(live), and probe the WebSocket every ``ws_retry_interval`` seconds to switch back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
from websockets.exceptions import InvalidHandshake, InvalidURI

from .http import HttpSync, SyncHttpError
from .state import State

FATAL_CODES = frozenset({"AUTH_REQUIRED", "AUTH_INVALID", "REVOKED", "UNSUPPORTED_VERSION", "FORBIDDEN",
                         "BAD_REQUEST"})


WS_OPEN_ERRORS = (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI)  # the WebSocket cannot be opened


class SyncFatal(Exception):
    """The server refused the device for a reason retrying will not fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class HttpFallback:
    """Mixed into SyncClient; uses its store, outbox, state machine and counters."""

    _http: httpx.AsyncClient | None

    async def _http_session(self) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.base, timeout=self.request_timeout)
        sync = HttpSync(self._http, await self._token(), self.client_id, self.store)  # type: ignore[arg-type]
        self._link = "http"
        self._step(State.CATCHING_UP)
        await self._http_pull(sync)
        self._step(State.LIVE)
        next_poll = time.monotonic() + self.poll_interval
        while self.online and not self._closing:
            pushed = False
            while await self._http_push(sync):
                pushed = True
            if pushed or time.monotonic() >= next_poll:
                await self._http_pull(sync)
                next_poll = time.monotonic() + self.poll_interval
            if self.transport == "auto" and time.monotonic() - self._ws_failed_at >= self.ws_retry_interval:
                try:
                    self._next_conn = await self._open_ws()
                    return  # the WebSocket works again: reconnect over it at once
                except WS_OPEN_ERRORS:
                    self._ws_failed_at = time.monotonic()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_poll - time.monotonic()))
            self._wake.clear()

    async def _http_call(self, sync: HttpSync, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await sync.call(path, body)
        except SyncHttpError as error:
            if error.code in FATAL_CODES:
                raise SyncFatal(error.code, error.message) from None
            raise

    async def _http_pull(self, sync: HttpSync) -> None:
        while True:
            body: dict[str, Any] = {"v": 1, "client_id": self.client_id, "cursor": self.store.cursor}
            if self.app:
                body["app"] = self.app
            if self.limit is not None:
                body["limit"] = self.limit
            response = await self._http_call(sync, "/sync/pull", body)
            self._apply(response)
            if not response["more"]:
                return

    async def _http_push(self, sync: HttpSync) -> bool:
        """Push the oldest pending mutations; False when there were none."""
        batch = self.outbox.pending(self.push_batch)
        if not batch:
            return False
        self._inflight = [entry.id for entry in batch]
        body = {"v": 1, "client_id": self.client_id, "mutations": [entry.wire() for entry in batch]}
        try:
            response = await self._http_call(sync, "/sync/push", body)
        except SyncHttpError as error:
            if error.code != "PAYLOAD_TOO_LARGE" or self.push_batch == 1:
                raise
            self.push_batch = max(1, self.push_batch // 2)
            return True
        finally:
            self._inflight = []
        self._on_results(response["results"])
        return True
