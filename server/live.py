"""Live delivery inside one process: which sessions a notice wakes, and one read per wake-up.

Each tenant has at most one *round* running: it waits a moment so bursts coalesce (100
commits in 10 ms give a device one frame, not 100), then builds every woken session's batch
in one read transaction, with reads shared between them (:class:`sync.reader.SharedReads`),
and queues the frames. A session whose queue is full is *behind*: it gets nothing more until it
drains, then catches up from the log; memory stays bounded whatever the clients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from sync import wire
from sync.groups import pull_group
from sync.reader import Reader
from sync.schema import Principal
from sync.storage import Database

from . import metrics
from .fanout import Notice
from .ws_protocol import SharedTail

log = logging.getLogger("fieldsync.live")

RETRY_ROUND_S = 1.0  # after a round failed on the database


def count_sent(batch: dict, size: int, framing: str, devices: int = 1) -> None:
    """Rows and bytes a batch sends (to ``devices`` devices), by dataset, for the metrics."""
    for name, part in batch["data"].items():
        metrics.ROWS_SENT.labels(name, framing).inc((len(part["rows"]) + len(part["deletes"])) * devices)
    metrics.BYTES_SENT.labels(framing).inc(size * devices)
    if batch["reset"]:
        metrics.SNAPSHOTS.labels(framing).inc(devices)
        rows = sum(len(p["rows"]) for p in batch["data"].values())
        for _ in range(devices):
            metrics.SNAPSHOT_ROWS.observe(rows)


class Subscriber(Protocol):
    """What the hub needs of a WebSocket session."""

    principal: Principal
    client_id: str
    cursor: bytes | None
    buckets: frozenset[str]
    dirty: bool

    def is_live(self) -> bool: ...
    def has_room(self) -> bool: ...
    def offer(self, frame: bytes, reset: bool = False) -> None: ...
    async def close_for(self, code: object, message: str) -> None: ...


SwitchedOff = Callable[[int, set[tuple[str, int]]], Awaitable[set[tuple[str, int]]]]


class Hub:
    """The live sessions of this process, grouped by tenant."""

    def __init__(self, db: Database, reader: Reader, *, coalesce_s: float = 0.010) -> None:
        self.db = db
        self.reader = reader
        self.coalesce_s = coalesce_s
        self.sessions: dict[int, set[Subscriber]] = {}
        self._rounds: dict[int, asyncio.Task] = {}
        self._oldest: dict[int, float] = {}  # tenant -> commit time of the oldest undelivered notice
        self._revoke: Callable[[Subscriber, Notice], Awaitable[None]] | None = None
        self._switched_off: SwitchedOff | None = None
        self._rescope: Callable[[Subscriber], Awaitable[None]] | None = None

    def tenants(self) -> list[int]:
        return [tenant for tenant, group in self.sessions.items() if group]

    def add(self, session: Subscriber) -> None:
        self.sessions.setdefault(session.principal.tenant_id, set()).add(session)

    def remove(self, session: Subscriber) -> None:
        self.sessions.get(session.principal.tenant_id, set()).discard(session)

    def on_revoke(self, handler: Callable[[Subscriber, Notice], Awaitable[None]],
                  switched_off: SwitchedOff | None = None) -> None:
        """``handler`` closes a session; ``switched_off`` finds, in the database, the sessions
        a revocation notice would have named (used by :meth:`recheck`)."""
        self._revoke, self._switched_off = handler, switched_off

    async def recheck(self) -> None:
        """Close the sessions revoked while notices could not reach us (Redis was away)."""
        if self._revoke is None or self._switched_off is None:
            return
        for tenant_id, group in list(self.sessions.items()):
            pairs = {(s.client_id, s.principal.user_id) for s in group}
            if not pairs:
                continue
            off = await self._switched_off(tenant_id, pairs)
            for session in list(group):
                if (session.client_id, session.principal.user_id) in off:
                    asyncio.get_running_loop().create_task(
                        self._revoke(session, Notice(tenant_id, revoke_client=session.client_id)))

    def on_rescope(self, handler: Callable[[Subscriber], Awaitable[None]]) -> None:
        """``handler`` re-reads a session's principal (its branch, pricelist, role)."""
        self._rescope = handler

    def notify(self, notice: Notice) -> None:
        """Called for every notice (local or from Redis): mark touched sessions dirty."""
        group = self.sessions.get(notice.tenant_id, ())
        if notice.rescope:
            asyncio.get_running_loop().create_task(self._rescope_all(notice.tenant_id))
            return
        if notice.revoke_client is not None or notice.revoke_user is not None:
            for session in list(group):
                if session.client_id == notice.revoke_client or session.principal.user_id == notice.revoke_user:
                    if self._revoke is not None:
                        asyncio.get_running_loop().create_task(self._revoke(session, notice))
            return
        woken = False
        for session in group:
            if notice.buckets is None or not session.buckets.isdisjoint(notice.buckets):
                session.dirty = True
                woken = True
        if woken:
            if notice.at:
                self._oldest[notice.tenant_id] = min(self._oldest.get(notice.tenant_id, notice.at), notice.at)
            self.wake(notice.tenant_id)

    async def _rescope_all(self, tenant_id: int) -> None:
        """Re-read every session's principal, then give each its next batch: a terminal moved
        to another branch gets its datasets reset live, not at its next reconnect."""
        group = list(self.sessions.get(tenant_id, ()))
        if self._rescope is not None:
            await asyncio.gather(*(self._rescope(session) for session in group), return_exceptions=True)
        for session in group:
            session.dirty = True
        self.wake(tenant_id)

    def wake(self, tenant_id: int) -> None:
        task = self._rounds.get(tenant_id)
        if task is None or task.done():
            self._rounds[tenant_id] = asyncio.get_running_loop().create_task(self._run(tenant_id))

    async def _run(self, tenant_id: int) -> None:
        # The first round after a quiet spell starts at once (a lone commit is not delayed);
        # notices arriving while it runs are coalesced into the next round, which waits a
        # moment so the rest of a burst joins it.
        wait = 0.0
        try:
            while True:
                await asyncio.sleep(wait)
                wait = self.coalesce_s
                ready = [s for s in self.sessions.get(tenant_id, ()) if s.dirty and s.is_live() and s.has_room()]
                if not ready:
                    return
                await self._round(tenant_id, ready)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a failed round must not kill live delivery; next notice retries
            log.exception("live round for tenant %s failed", tenant_id)

    async def _round(self, tenant_id: int, ready: list[Subscriber]) -> None:
        started = time.perf_counter()
        for session in ready:
            session.dirty = False
        committed = self._oldest.pop(tenant_id, None)
        try:
            batches = await pull_group(self.reader, tenant_id, [(s.principal, s.cursor) for s in ready])
        except Exception:
            # The database failed this round (restarting, say): the sessions keep what woke
            # them, and the hub tries again in a moment rather than at the next commit.
            for session in ready:
                session.dirty = True
            if committed is not None:
                self._oldest[tenant_id] = committed
            asyncio.get_running_loop().call_later(RETRY_ROUND_S, self.wake, tenant_id)
            raise
        packed: dict[int, bytes] = {}  # devices of one group share the data object: encode it once
        frames: dict[tuple, list] = {}  # and devices at one cursor the whole frame: [frame, batch, devices]
        lag = max(0.0, time.time() - committed) if committed is not None else None
        for session, batch in zip(ready, batches):
            session.dirty = session.dirty or batch["more"]
            if batch["data"] or batch["reset"]:
                data = packed.get(id(batch["data"]))
                if data is None:
                    data = packed[id(batch["data"])] = wire.pack(batch["data"])
                expected = batch.get("expected")
                key = (id(data), batch["cursor"], batch["more"], tuple(batch["reset"]),
                       tuple(sorted(expected.items())) if expected else ())
                entry = frames.get(key)
                if entry is None:  # the shared tail is deflated once for all (server/ws_protocol.py)
                    head = wire.changes_head(batch["cursor"], batch["more"], batch["reset"], expected)
                    entry = frames[key] = [SharedTail(head, data), batch, 0]
                entry[2] += 1
                session.offer(entry[0], bool(batch["reset"]))
                if lag is not None:
                    metrics.COMMIT_TO_DEVICE.observe(lag)
            session.cursor = batch["cursor"]
        for frame, batch, devices in frames.values():
            count_sent(batch, len(frame), "ws", devices)
        metrics.LIVE_ROUNDS.observe(time.perf_counter() - started)

    async def stop(self) -> None:
        for task in self._rounds.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
