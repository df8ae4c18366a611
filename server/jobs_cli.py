"""``fieldsync worker``, ``fieldsync jobs failed|retry`` and ``fieldsync compact``.

Registered on the ``fieldsync`` parser by :func:`add_commands`; each handler takes the
server's settings and the parsed arguments and returns an exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from huey.api import PeriodicTask

from jobs import failures
from jobs.config import JobSettings
from jobs.runner import Jobs
from sync import compaction
from sync.storage import Database

from . import plugin
from .config import Settings
from .startup import StartupError, connect_or_explain

log = logging.getLogger("fieldsync.jobs")


def job_settings(settings: Settings) -> JobSettings:
    return JobSettings.for_server(settings)


def served_jobs(settings: Settings) -> Jobs:
    """The runner of the domain FIELDSYNC_DOMAIN names: fieldsync's tasks and its own."""
    try:
        domain = plugin.load(settings.domain)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    return Jobs(job_settings(settings), domain.registry, domain.jobs)


def add_commands(commands: argparse._SubParsersAction) -> dict[str, Callable[[Settings, argparse.Namespace], int]]:
    worker = commands.add_parser("worker", help="run the background job consumer (Huey)")
    worker.add_argument("--workers", type=int, default=2, help="worker threads")
    worker.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    jobs = commands.add_parser("jobs", help="inspect background jobs")
    which = jobs.add_subparsers(dest="jobs_command", required=True)
    failed = which.add_parser("failed", help="list jobs that ran out of retries")
    failed.add_argument("--limit", type=int, default=50, help="show at most this many, newest first")
    failed.add_argument("--all", action="store_true", help="include failures already retried")
    failed.add_argument("--json", action="store_true", help="one JSON object per line")
    again = which.add_parser("retry", help="enqueue a failed job again")
    again.add_argument("failure_id", type=int, help="the id `fieldsync jobs failed` shows")
    compact = commands.add_parser("compact", help="compact the change log now")
    compact.add_argument("--retention-days", type=float, default=None,
                         help="keep this many days of the change log (default FIELDSYNC_RETENTION_DAYS, 30)")
    return {"worker": cmd_worker, "jobs": cmd_jobs, "compact": cmd_compact}


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    jobs = served_jobs(settings)
    if jobs.huey.immediate:
        print("FIELDSYNC_JOBS=immediate runs jobs where they are enqueued: no worker needed", file=sys.stderr)
        return 1
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    storage = "redis" if jobs.settings.redis_url else f"sqlite ({jobs.settings.data_dir}/jobs.db)"
    print(f"fieldsync worker: queue {jobs.settings.name!r} on {storage}, {args.workers} thread(s)", flush=True)
    if settings.redis_url:
        jobs.commit_listeners.append(_publisher(settings))
    jobs.sweep(0)  # work whose job died with the previous worker
    jobs.consumer(args.workers).run()
    return 0


def _publisher(settings: Settings) -> Callable[[int, int, frozenset[str]], None]:
    """Publish each job commit on the web processes' change channel, as they publish theirs."""
    import redis

    from . import metrics
    from .fanout import Notice

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
    channel = f"{settings.redis_prefix}:changes"

    def publish(tenant_id: int, seq: int, buckets: frozenset[str]) -> None:
        data = Notice.of_commit(tenant_id, seq, buckets).pack()
        for attempt in (1, 2):  # the second gets a fresh connection after Redis restarted
            try:
                client.publish(channel, data)
                metrics.PUBLISHED.inc()
                return
            except redis.RedisError as exc:
                # The job's work is committed; web processes find it by their log poll.
                log.warning("publishing a job commit failed (attempt %d): %s", attempt, exc)

    return publish


def _run(settings: Settings, work: Callable[[Database], Any]) -> Any:
    async def main() -> Any:
        db = Database(settings.database_url)
        try:
            await connect_or_explain(db, settings.database_url)
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


def _when(ms: int | None) -> str:
    return "-" if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def cmd_jobs(settings: Settings, args: argparse.Namespace) -> int:
    if args.jobs_command == "retry":
        return _retry(settings, args.failure_id)
    found = _run(settings, lambda db: failures.listing(db, limit=args.limit, include_retried=args.all))
    if args.json:
        for failure in found:
            print(json.dumps(failure.__dict__))
        return 0
    if not found:
        print("no failed jobs")
        return 0
    print(f"{'id':>5}  {'failed at (UTC)':19}  {'task':16}  {'tries':>5}  args / error")
    for f in found:
        print(f"{f.id:>5}  {_when(f.failed_at):19}  {f.task:16}  {f.attempts:>5}  {json.dumps(f.args)}"
              f"{'  (retried ' + _when(f.retried_at) + ')' if f.retried_at else ''}")
        print(f"{'':>5}  {f.error[:200]}")
    return 0


def _retry(settings: Settings, failure_id: int) -> int:
    jobs = served_jobs(settings)
    failure = jobs.run(lambda db: failures.take_for_retry(db, failure_id))
    if failure is None:
        print(f"no failed job {failure_id}", file=sys.stderr)
        return 1
    task = jobs.named.get(failure.task)
    if task is None or issubclass(task.task_class, PeriodicTask):
        print(f"{failure.task} runs on its schedule; nothing to enqueue", file=sys.stderr)
        return 1
    if jobs.plugin is not None:
        jobs.run(lambda db: jobs.plugin.reopen(db, jobs.registry, failure.task, failure.args))
    task(*failure.args)
    print(f"enqueued {failure.task} {json.dumps(failure.args)} again")
    return 0


def cmd_compact(settings: Settings, args: argparse.Namespace) -> int:
    days = args.retention_days if args.retention_days is not None else job_settings(settings).retention_days
    started = time.perf_counter()
    done = _run(settings, lambda db: compaction.compact(db, retention_ms=int(days * compaction.DAY_MS)))
    for s in done:
        print(f"tenant {s.tenant_id}: {s.entries_before} -> {s.entries_after} entries "
              f"({s.below_horizon} beyond the horizon, {s.superseded} superseded), horizon {s.horizon}, "
              f"head {s.head}, {s.seconds:.2f}s")
    print(f"compacted {len(done)} tenant(s) in {time.perf_counter() - started:.2f}s")
    return 0
