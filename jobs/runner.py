"""The Huey instance, built from config, and the :class:`Jobs` object the server and the
worker hold: tasks, the sink mutation handlers enqueue to, and a consumer.

Storage by config: Redis in production (a ``fieldsync worker`` process consumes), SQLite
under the data dir in the embedded default (threads of the web process consume), or
immediate mode (each job runs in the enqueuing thread: tests). Messages are msgpack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from huey import MemoryHuey, RedisHuey
from huey.api import Huey
from huey.consumer import Consumer

from server import metrics
from server.domain.registry import build_registry
from sync.storage import Database

from . import failures
from .config import JobSettings
from .serializer import MsgpackSerializer
from .sqlite_batch import SqliteHuey
from .tasks import Tasks, define_tasks

log = logging.getLogger("fieldsync.jobs")
T = TypeVar("T")
DEBOUNCE_STALE_S = 300  # a debounce mark older than this belongs to a lost job: schedule anew


def build_huey(settings: JobSettings) -> Huey:
    common = {"name": settings.name, "results": False, "utc": True, "serializer": MsgpackSerializer()}
    if settings.immediate:
        return MemoryHuey(immediate=True, **common)
    if settings.redis_url:
        return RedisHuey(url=settings.redis_url, blocking=True, read_timeout=1, **common)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    return SqliteHuey(filename=str(Path(settings.data_dir) / "jobs.db"), **common)


class HueySink:
    """The domain's :class:`~server.domain.jobsink.JobSink`: enqueue by ids."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    def invoice(self, tenant_id: int, invoice_id: str) -> None:
        self.jobs.tasks.invoice_render(tenant_id, invoice_id)

    def notice(self, tenant_id: int, notice_id: str) -> None:
        self.jobs.tasks.notice_deliver(tenant_id, notice_id)

    def report(self, tenant_id: int, document_id: str) -> None:
        self.jobs.tasks.report_render(tenant_id, document_id)

    def dashboards(self, tenant_id: int, dashboard_ids: Sequence[str]) -> None:
        for dashboard_id in dashboard_ids:
            self.jobs.refresh_dashboard_soon(tenant_id, dashboard_id)

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """The embedded queue writes a batch in one transaction; Redis writes as it goes."""
        batch = getattr(self.jobs.huey.storage, "batch", None)
        return batch() if batch is not None else contextlib.nullcontext()


class _InProcessConsumer(Consumer):
    """Huey's consumer on threads of the web process; the web server owns the signals."""

    def _set_signal_handlers(self) -> None:
        pass


class Jobs:
    """One process's job runner: the Huey instance, its tasks, and the sink."""

    def __init__(self, settings: JobSettings, huey: Huey | None = None) -> None:
        self.settings = settings
        self.huey = huey or build_huey(settings)
        self.sink = HueySink(self)
        self.registry = build_registry(self.sink)
        self.tasks: Tasks = define_tasks(self)
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

    # -- debounced dashboards -----------------------------------------------------------

    def debounce_key(self, tenant_id: int, dashboard_id: str) -> str:
        return f"debounce:dashboard:{tenant_id}:{dashboard_id}"

    def refresh_dashboard_soon(self, tenant_id: int, dashboard_id: str) -> None:
        """One refresh per burst: the first landing schedules it ``dashboard_debounce``
        seconds ahead and marks it; later landings see the mark and add nothing."""
        if self.huey.immediate:
            self.tasks.dashboard_refresh(tenant_id, dashboard_id)
            return
        key, now = self.debounce_key(tenant_id, dashboard_id), time.time()
        if not self.huey.put_if_empty(key, now):
            marked = self.huey.get(key, peek=True)
            if marked is not None and now - marked < DEBOUNCE_STALE_S:
                return
            self.huey.put(key, now)
        self.tasks.dashboard_refresh.schedule((tenant_id, dashboard_id), delay=self.settings.dashboard_debounce)

    # -- recovery -------------------------------------------------------------------------

    def sweep(self, older_than_s: float) -> int:
        """Enqueue again the work of rows still ``pending`` after ``older_than_s``: a job
        lost with a killed worker or a flushed queue is made by the next one."""
        found = self.run(lambda db: failures.pending_work(db, int(older_than_s * 1000)))
        for task, keys in found.items():
            wrapper = getattr(self.tasks, task)
            for tenant_id, key in keys:
                wrapper(tenant_id, key)
        total = sum(len(keys) for keys in found.values())
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
