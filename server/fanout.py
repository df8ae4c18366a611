"""Fan-out: after a commit, one small notice tells every server process "the log of
tenant T advanced to S in these buckets". It is only a wake-up; the log is the truth.

Two backends behind one interface, chosen by config: in-process (embedded default) and
Redis pub/sub (several ``web`` processes). The Redis backend keeps serving when Redis goes
away: it falls back to polling ``log_head`` every couple of seconds and switches back when
Redis returns, logging each switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import msgpack
import sqlalchemy as sa

from sync.storage import Database, log_head

from . import metrics

log = logging.getLogger("fieldsync.fanout")

MAX_BUCKETS = 256  # a bigger commit says "anything may have changed" instead of listing them


@dataclass(frozen=True)
class Notice:
    """A wake-up: changes up to ``seq`` (``buckets`` None: any bucket), a revocation, or
    ``rescope``: the tenant's users or branches changed, so sessions re-read who they serve."""

    tenant_id: int
    seq: int = 0
    buckets: frozenset[str] | None = None
    revoke_client: str | None = None
    revoke_user: int | None = None
    at: float = 0.0  # commit time (epoch seconds), for the commit-to-device lag metric
    rescope: bool = False

    def pack(self) -> bytes:
        return msgpack.packb([self.tenant_id, self.seq, sorted(self.buckets) if self.buckets is not None else None,
                              self.revoke_client, self.revoke_user, self.at, self.rescope], use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes) -> Notice:
        # fields appended later are optional, so processes of two versions can share a channel
        tenant, seq, buckets, client, user, at, *later = msgpack.unpackb(data, raw=False)
        return cls(tenant, seq, frozenset(buckets) if buckets is not None else None, client, user, at,
                   bool(later and later[0]))

    @classmethod
    def of_commit(cls, tenant_id: int, seq: int, buckets: Iterable[str] | None) -> Notice:
        """``buckets`` None (or too many to name): the notice wakes every session of the tenant."""
        buckets = frozenset(buckets) if buckets is not None else None
        return cls(tenant_id, seq, buckets if buckets is not None and len(buckets) <= MAX_BUCKETS else None,
                   at=time.time())


Listener = Callable[[Notice], None]
Resync = Callable[[], Awaitable[None]]  # re-check what notices would have said (revocations)


class LogWatch:
    """What a process knows of the log heads, and a check against the database: the log is
    the truth, notices only a wake-up, so a lost notice is found here."""

    def __init__(self, db: Database, listener: Listener, tenants: Callable[[], Iterable[int]],
                 resync: Resync | None) -> None:
        self._db, self._listener, self._tenants, self._resync = db, listener, tenants, resync
        self._seen: dict[int, int] = {}

    def heard(self, notice: Notice) -> None:
        self._seen[notice.tenant_id] = max(self._seen.get(notice.tenant_id, 0), notice.seq)

    async def catch_up(self, resync: bool = False) -> None:
        """Wake the sessions of any tenant whose log head moved past what we last heard;
        with ``resync``, also re-check what revocation notices may have been missed."""
        if resync and self._resync is not None:
            await self._resync()
        tenants = list(self._tenants())
        if not tenants:
            return
        async with self._db.read() as conn:
            heads = dict((await conn.execute(
                sa.select(log_head.c.tenant_id, log_head.c.seq).where(log_head.c.tenant_id.in_(tenants))
            )).all())
        for tenant, seq in heads.items():
            if seq > self._seen.get(tenant, 0):
                self._seen[tenant] = seq
                self._listener(Notice(tenant, seq, None, at=time.time()))

    async def poll(self, interval: float, due: Callable[[int], bool]) -> None:
        """Every ``interval``, catch up when ``due(tick)`` says so."""
        ticks = 0
        while True:
            await asyncio.sleep(interval)
            ticks += 1
            if due(ticks):
                try:
                    await self.catch_up(resync=True)
                except Exception as exc:  # noqa: BLE001 - the database may be away too; try next tick
                    log.debug("log poll failed: %s", exc)


class Fanout(Protocol):
    """What the server needs of a fan-out backend: one per process, picked by URL
    (:func:`fanout_for`). ``start`` subscribes ``listener`` to every process's notices."""

    async def start(self, listener: Listener, tenants: Callable[[], Iterable[int]],
                    resync: Resync | None = None) -> None: ...

    async def publish(self, notice: Notice) -> None: ...

    async def ping(self) -> None: ...

    async def stop(self) -> None: ...


def fanout_for(url: str | None, db: Database, *, prefix: str, poll_interval: float) -> Fanout:
    """The fan-out a URL names: none (or ``memory://``) is in-process, ``redis://``,
    ``rediss://`` or ``unix://`` Redis pub/sub."""
    safety = poll_interval * RedisFanout.SAFETY_POLLS
    if not url or url.startswith("memory://"):
        return MemoryFanout(db, safety_interval=safety)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisFanout(url, db, channel=f"{prefix}:changes", poll_interval=poll_interval)
    raise ValueError(f"no fan-out backend for {url.split('@')[-1]!r}: memory:// or redis://")


class MemoryFanout:
    """One process: notices go straight to the local listener. A slow poll of the log finds
    what other processes on the same database wrote (``fieldsync import``, a worker)."""

    fallback = False

    def __init__(self, db: Database | None = None, *, safety_interval: float = 30.0) -> None:
        self._db = db
        self.safety_interval = safety_interval
        self._listener: Listener | None = None
        self._watch: LogWatch | None = None
        self._task: asyncio.Task | None = None

    async def start(self, listener: Listener, tenants: Callable[[], Iterable[int]],
                    resync: Resync | None = None) -> None:
        self._listener = listener
        if self._db is not None:
            self._watch = LogWatch(self._db, listener, tenants, resync)
            self._task = asyncio.create_task(self._watch.poll(self.safety_interval, lambda tick: True))

    async def publish(self, notice: Notice) -> None:
        metrics.PUBLISHED.inc()
        if self._watch is not None:
            self._watch.heard(notice)
        if self._listener is not None:
            metrics.RECEIVED.inc()
            self._listener(notice)

    async def ping(self) -> None:
        return None

    async def stop(self) -> None:
        self._listener = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class RedisFanout:
    """Redis pub/sub with one subscription per process, and polling while Redis is away."""

    SAFETY_POLLS = 15  # in pub/sub mode, still compare log heads every 15 poll intervals

    def __init__(self, url: str, db: Database, *, channel: str, poll_interval: float = 2.0,
                 on_mode: Callable[[bool], None] | None = None) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=None, health_check_interval=10)
        self._db = db
        self.channel = channel
        self.poll_interval = poll_interval
        self.fallback = False
        self._on_mode = on_mode or (lambda active: None)
        self._tasks: list[asyncio.Task] = []
        self._watch: LogWatch | None = None

    async def start(self, listener: Listener, tenants: Callable[[], Iterable[int]],
                    resync: Resync | None = None) -> None:
        self._listener = listener
        self._watch = LogWatch(self._db, listener, tenants, resync)
        # Every poll interval while Redis is away; now and then even when it is up, since
        # a notice whose publish failed is lost to every process in pub/sub mode.
        due = lambda tick: self.fallback or tick % self.SAFETY_POLLS == 0  # noqa: E731
        self._tasks = [asyncio.create_task(self._listen()),
                       asyncio.create_task(self._watch.poll(self.poll_interval, due))]

    async def publish(self, notice: Notice) -> None:
        data = notice.pack()
        for attempt in (1, 2):
            try:
                await self._redis.publish(self.channel, data)
                metrics.PUBLISHED.inc()
                return
            except Exception as exc:  # noqa: BLE001 - redis-py raises its own tree
                # After Redis restarts, the pooled connection is dead and the first use fails
                # ("Connection closed by server"); redis-py has dropped it, so one more try
                # gets a fresh one. Beyond that, processes poll the log (fallback, or the
                # safety poll), so the change still reaches every device.
                log.debug("publish attempt %d failed (%s)", attempt, exc)

    async def ping(self) -> None:
        await self._redis.ping()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._redis.aclose()

    def _set_fallback(self, active: bool, reason: str = "") -> None:
        if active != self.fallback:
            self.fallback = active
            if active:
                log.warning("redis unavailable (%s): live delivery falls back to polling the log every %.1fs",
                            reason, self.poll_interval)
            else:
                log.warning("redis is back: live delivery by pub/sub again")
            metrics.FALLBACK.set(1 if active else 0)
            self._on_mode(active)

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._set_fallback(False)
                    delay = 0.2
                    await self._watch.catch_up(resync=True)  # anything committed while we were not listening
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._deliver(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any redis/network failure: poll until it returns
                self._set_fallback(True, f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _deliver(self, data: bytes) -> None:
        try:
            notice = Notice.unpack(data)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            log.warning("ignored a malformed notice: %s", exc)
            return
        self._watch.heard(notice)
        metrics.RECEIVED.inc()
        self._listener(notice)
