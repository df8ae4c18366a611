"""Pulls of devices in the same place, computed once.

After a morning offline, the terminals of one shop reconnect within a second, every one
of them at the same cursor: the same user's terminals were live together until the
network went, so they hold byte-identical cursors. Their next batches are identical too.
:class:`SharedPulls` computes each such batch once: the first device to ask computes it,
devices asking for the same key while it runs, or shortly after, get the same result.

The key is everything a batch depends on: who (tenant, user, role, attributes), the raw
cursor, the limit and the re-enrolment time. A result served a moment late is still
correct: it is a consistent batch up to its cursor's position, and every change after that
position follows in the device's next batch.

Memory stays bounded: at most ``max_entries`` results are kept, each for ``ttl_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from .schema import Principal

T = TypeVar("T")


def pull_key(principal: Principal, raw_cursor: bytes | None, limit: int | None, not_before: int | None) -> Hashable:
    """What decides a pull's result (see the module docstring)."""
    attrs = tuple(sorted((k, repr(v)) for k, v in principal.attrs.items()))
    return principal.tenant_id, principal.user_id, principal.role, attrs, raw_cursor, limit, not_before


class SharedPulls(Generic[T]):
    """Single flight with a short memory: one computation per key and ``ttl_s``."""

    def __init__(self, *, ttl_s: float = 2.0, max_entries: int = 64,
                 clock: Callable[[], float] = time.monotonic,
                 on_result: Callable[[bool], None] | None = None) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._on_result = on_result or (lambda shared: None)
        self._entries: OrderedDict[Hashable, tuple[float, asyncio.Future[T]]] = OrderedDict()

    async def run(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        """``compute()``'s result for ``key``, shared with every caller of the same key.

        The computation runs in its own task: a caller that goes away (its device
        disconnected) does not cancel it for the others. A failure is not remembered.
        """
        now = self.clock()
        found = self._entries.get(key)
        if found is not None and (not found[1].done() or now - found[0] < self.ttl_s):
            self._on_result(True)
            return await asyncio.shield(found[1])
        task: asyncio.Future[Any] = asyncio.ensure_future(compute())
        self._entries[key] = (now, task)
        self._entries.move_to_end(key)
        task.add_done_callback(lambda done: self._settled(key, done))
        self._trim(now)
        self._on_result(False)
        return await asyncio.shield(task)

    def __len__(self) -> int:
        return len(self._entries)

    def _settled(self, key: Hashable, task: asyncio.Future[Any]) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] is task:
            if task.cancelled() or task.exception() is not None:
                del self._entries[key]
            else:  # remembered from when it finished, not from when it started
                self._entries[key] = (self.clock(), task)

    def _trim(self, now: float) -> None:
        # Expired results first, then the oldest; computations still running are left alone
        # (there are at most as many as requests in flight, which the server bounds already).
        for key in [k for k, (at, task) in self._entries.items() if task.done() and now - at >= self.ttl_s]:
            del self._entries[key]
        for key in [k for k, (_, task) in self._entries.items() if task.done()]:
            if len(self._entries) <= self.max_entries:
                break
            del self._entries[key]
