"""A WebSocket session's outbound frames: bounded, in order, and free while idle.

At most ``limit`` frames wait. One task sends them, and it exists only while some are
waiting: 10,000 idle terminals hold no sender task, no queue and no timer (each cost
more than a kilobyte per session as an ``asyncio.Queue`` and a parked task).

A device that stops reading fills the outbox: it is *behind* from the moment a frame
finds no room (the live hub then skips it) until the outbox drains, when ``on_drained``
lets it catch up from the log. One that stays behind, or whose socket accepts nothing,
for ``slow_after`` seconds is given up on (``on_stalled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable


class Outbox:
    def __init__(self, send: Callable[[bytes], Awaitable[None]], *, limit: int, slow_after: float,
                 on_drained: Callable[[], None], on_stalled: Callable[[], Awaitable[None]]) -> None:
        self._send, self.limit, self.slow_after = send, limit, slow_after
        self._on_drained, self._on_stalled = on_drained, on_stalled
        self._frames: list[bytes] = []
        self._sender: asyncio.Task | None = None
        self._room: asyncio.Future | None = None  # set while put() waits for room
        self.behind_since: float | None = None
        self.frames_sent = self.bytes_sent = 0

    def has_room(self) -> bool:
        """False marks the device behind: it gets no live frame until the outbox drains."""
        if len(self._frames) >= self.limit:
            self.behind_since = self.behind_since or time.monotonic()
            return False
        return True

    def offer(self, frame: bytes) -> None:
        """Queue a frame the caller found room for (:meth:`has_room`)."""
        self._frames.append(frame)
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._drain())

    async def put(self, frame: bytes) -> None:
        """Queue a frame, waiting for room: catch-up batches and replies keep their pace."""
        while len(self._frames) >= self.limit:
            self._room = self._room or asyncio.get_running_loop().create_future()
            await asyncio.shield(self._room)
        self.offer(frame)

    async def close(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None and sender is not asyncio.current_task():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    async def _drain(self) -> None:
        try:
            while self._frames:
                if self.behind_since is not None and time.monotonic() - self.behind_since > self.slow_after:
                    return await self._on_stalled()
                frame = self._frames[0]
                try:
                    async with asyncio.timeout(self.slow_after):
                        await self._send(frame)
                except TimeoutError:  # the socket stayed full: the device reads nothing
                    return await self._on_stalled()
                except Exception:  # noqa: BLE001 - the socket is gone; the receive side ends the session
                    self._frames.clear()
                    self._release()
                    return
                self._frames.pop(0)
                self.frames_sent += 1
                self.bytes_sent += len(frame)
                self._release()
            if self.behind_since is not None:
                self.behind_since = None  # drained: catch up from the log
                self._on_drained()
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None

    def _release(self) -> None:
        """Wake whoever waits in :meth:`put`."""
        if self._room is not None:
            self._room.set_result(None)
            self._room = None
