"""The Huey instance, built from config, and the :class:`Jobs` object the server and the
worker hold: fieldsync's own tasks (compaction, hot snapshot pages, the sweep), those of
the domain served (its :class:`JobPlugin`), the sink its mutation handlers enqueue to,
and a consumer. Nothing here knows a domain: it is handed one.

Storage by config: Redis in production (a ``fieldsync worker`` process consumes), SQLite
under the data dir in the embedded default (threads of the web process consume), or
immediate mode (each job runs in the enqueuing thread: tests). Messages are msgpack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from huey import MemoryHuey, RedisHuey
from huey.api import Huey, TaskWrapper
from huey.consumer import Consumer

from sync.schema import Registry
from sync.storage import Database

from . import metrics
from .config import JobSettings
from .serializer import MsgpackSerializer
from .sqlite_batch import SqliteHuey
from .tasks import define_tasks

log = logging.getLogger("fieldsync.jobs")
T = TypeVar("T")


def build_huey(settings: JobSettings) -> Huey:
    common = {"name": settings.name, "results": False, "utc": True, "serializer": MsgpackSerializer()}
    if settings.immediate:
        return MemoryHuey(immediate=True, **common)
    if settings.redis_url:
        return RedisHuey(url=settings.redis_url, blocking=True, read_timeout=1, **common)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    return SqliteHuey(filename=str(Path(settings.data_dir) / "jobs.db"), **common)


class JobPlugin(Protocol):
    """What a domain brings to the runner (the bundled one: server/domain/background)."""

    def define(self, jobs: Jobs) -> Any:
        """Register the domain's tasks (``jobs.huey``, named in ``jobs.named``); return the
        sink its mutation handlers enqueue to, handed to the domain's registry factory."""

    async def pending_work(self, db: Database, older_than_ms: int) -> dict[str, list[tuple[Any, ...]]]:
        """The arguments of work still pending since ``older_than_ms`` ago, by task name: a
        lost job's, which the sweep enqueues again."""

    async def gave_up(self, db: Database, registry: Registry, task: str, args: list[Any]) -> None:
        """A task ran out of retries: show it on the row it was making."""

    async def reopen(self, db: Database, registry: Registry, task: str, args: list[Any]) -> None:
        """``fieldsync jobs retry``: put that row back to pending before the task runs again."""


class _InProcessConsumer(Consumer):
    """Huey's consumer on threads of the web process; the web server owns the signals."""

    def _set_signal_handlers(self) -> None:
        pass


class Jobs:
    """One process's job runner: the Huey instance, its tasks, and the domain's sink.

    ``registry``: the domain's registry factory, handed the sink its plug-in returns (or
    None); ``plugin``: the domain's tasks, if it has any.
    """

    def __init__(self, settings: JobSettings, registry: Callable[[Any], Registry],
                 plugin: JobPlugin | None = None, huey: Huey | None = None) -> None:
        self.settings = settings
        self.huey = huey or build_huey(settings)
        self.plugin = plugin
        #: Every task by name, fieldsync's and the domain's: what a sweep or a retry enqueues.
        self.named: dict[str, TaskWrapper] = {}
        define_tasks(self)
        self.sink = plugin.define(self) if plugin is not None else None
        self.registry = registry(self.sink)
        self._consumer: Consumer | None = None
        self._local = threading.local()
        #: Told of every commit a job makes ``(tenant, seq, buckets)``: the process owner
        #: forwards them to the fan-out so live devices hear of job writes like any other.
        self.commit_listeners: list[Callable[[int, int, frozenset[str]], None]] = []
        self.huey.on_startup("fieldsync_open_thread")(self._open_thread)
        self.huey.on_shutdown("fieldsync_close_thread")(self._close_thread)

    def run(self, work: Callable[[Database], Awaitable[T]]) -> T:
        """Run the async core from a Huey worker thread. A consumer thread keeps one event
        loop and one Database for its life (opened and closed by Huey's start-up and
        shut-down hooks); any other thread gets ``asyncio.run`` and a Database of its own."""
        runner, db = getattr(self._local, "runner", None), getattr(self._local, "db", None)
        if runner is not None and db is not None:
            return runner.run(work(db))

        async def once() -> T:
            own = self._database()
            try:
                return await work(own)
            finally:
                await own.dispose()

        return asyncio.run(once())

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Around several enqueues from one thread: the embedded queue writes them in one
        transaction (one fsync, jobs/sqlite_batch.py); Redis writes as it goes."""
        batch = getattr(self.huey.storage, "batch", None)
        return batch() if batch is not None else contextlib.nullcontext()

    def _database(self) -> Database:
        db = Database(self.settings.database_url, pool_size=2)
        db.commit_listeners.append(self._committed)
        return db

    def _committed(self, tenant_id: int, seq: int, buckets: frozenset[str]) -> None:
        for listener in self.commit_listeners:
            try:
                listener(tenant_id, seq, buckets)
            except Exception:  # noqa: BLE001 - devices still get the change at their next wake-up
                log.exception("forwarding a job's commit to the fan-out failed")

    def _open_thread(self) -> None:
        self._local.runner = asyncio.Runner()
        self._local.db = self._database()

    def _close_thread(self) -> None:
        runner, db = getattr(self._local, "runner", None), getattr(self._local, "db", None)
        self._local.runner = self._local.db = None
        if runner is not None:
            if db is not None:
                runner.run(db.dispose())
            runner.close()

    # -- recovery -------------------------------------------------------------------------

    def sweep(self, older_than_s: float) -> int:
        """Enqueue again the work of rows still ``pending`` after ``older_than_s``: a job
        lost with a killed worker or a flushed queue is made by the next one."""
        if self.plugin is None:
            return 0
        found = self.run(lambda db: self.plugin.pending_work(db, int(older_than_s * 1000)))
        for task, calls in found.items():
            for args in calls:
                self.named[task](*args)
        total = sum(len(calls) for calls in found.values())
        if total:
            log.info("sweep: enqueued %d pending job(s) again", total)
        return total

    def report_queue(self) -> None:
        if not self.huey.immediate:
            metrics.JOBS_QUEUE.set(self.huey.pending_count())

    # -- consumers ------------------------------------------------------------------------

    def consumer(self, workers: int) -> Consumer:
        """The consumer of ``fieldsync worker`` (signals: SIGINT graceful, SIGTERM now)."""
        return self.huey.create_consumer(workers=workers, worker_type="thread", initial_delay=0.05,
                                         backoff=1.3, max_delay=1.0, scheduler_interval=1, periodic=True)

    def start(self) -> None:
        """Consume in this (web) process when configured to: the embedded default."""
        if self.huey.immediate or self.settings.threads <= 0 or self._consumer is not None:
            return
        self._consumer = _InProcessConsumer(self.huey, workers=self.settings.threads, worker_type="thread",
                                            initial_delay=0.05, backoff=1.3, max_delay=1.0, periodic=True,
                                            check_worker_health=False)
        self._consumer.start()

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.stop(graceful=True)
            self._consumer = None
