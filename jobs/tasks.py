"""fieldsync's own tasks, registered on the runner's Huey instance: change-log compaction,
hot snapshot pages, the sweep of lost work, the retirement of stale devices; and the
signals that count and record every task's runs, the domain's too (the domain registers
its own tasks: ``JobPlugin.define``).

Thin by design: a task takes ids, runs its async core in :meth:`Jobs.run` (own loop, own
Database) and is safe to run twice. Failures retry with exponential backoff; a task out
of retries is recorded (``jobs_failed``, metric, its row marked ``failed``). Periodic
tasks use Huey's scheduler (``crontab``), so they run wherever a consumer runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from huey import crontab
from huey.api import TaskWrapper
from huey.signals import SIGNAL_COMPLETE, SIGNAL_ENQUEUED, SIGNAL_ERROR

from sync import compaction, devices, hot
from sync.storage import log_head

from . import failures, metrics

if TYPE_CHECKING:
    from .runner import Jobs

log = logging.getLogger("fieldsync.jobs")


def define_tasks(jobs: Jobs) -> None:
    """Register fieldsync's tasks on ``jobs.huey``, named in ``jobs.named`` beside the domain's."""
    jobs.named.update({task.name: task for task in _periodic(jobs)})
    _observe(jobs)


def _periodic(jobs: Jobs) -> tuple[TaskWrapper, ...]:
    huey, settings = jobs.huey, jobs.settings

    @huey.periodic_task(crontab(minute="17"), name="compact_log")
    def compact_log() -> int:
        """Hourly change-log compaction to the retention horizon."""
        retention = int(settings.retention_days * compaction.DAY_MS)
        done = jobs.run(lambda db: compaction.compact(db, retention_ms=retention))
        removed = sum(s.below_horizon + s.superseded for s in done)
        metrics.COMPACTION_RUNS.inc()
        metrics.COMPACTION_REMOVED.inc(removed)
        metrics.LOG_ENTRIES.set(sum(s.entries_after for s in done))
        log.info("compaction: %d entries removed over %d tenant(s)", removed, len(done))
        jobs.run(devices.forget_expired_tokens)  # housekeeping of the same kind: past their exp
        return removed

    @huey.periodic_task(crontab(minute="*/5"), name="sweep_pending")
    def sweep_pending() -> int:
        """Enqueue again work still pending after ``sweep_after`` seconds (lost jobs)."""
        jobs.report_queue()
        return jobs.sweep(settings.sweep_after)

    @huey.periodic_task(crontab(minute="*/5"), name="hot_snapshots")
    def hot_snapshots() -> int:
        """Pre-build the snapshot pages of shared datasets (catalog, each branch's stock), so
        a reconnect storm of fresh devices reads pages instead of running the same query."""
        async def build_all(db: Any) -> int:
            async with db.read() as conn:
                tenants = (await conn.execute(sa.select(log_head.c.tenant_id))).scalars().all()
            return sum([await hot.build(db, jobs.registry, tenant) for tenant in tenants])

        pages = jobs.run(build_all)
        log.info("hot snapshots: %d pages built", pages)
        return pages

    @huey.periodic_task(crontab(hour="3", minute="41"), name="retire_stale_devices")
    def retire_stale_devices() -> int:
        """Daily: retire the devices unseen for ``stale_device_days`` (sync/devices.py)."""
        if settings.stale_device_days <= 0:
            return 0
        stale_ms = int(settings.stale_device_days * compaction.DAY_MS)
        retired = jobs.run(lambda db: devices.retire_stale(db, jobs.registry, stale_ms))
        metrics.DEVICES_RETIRED.inc(retired)
        log.info("stale devices: %d retired", retired)
        return retired

    return compact_log, sweep_pending, hot_snapshots, retire_stale_devices


def _observe(jobs: Jobs) -> None:
    """Count every run; record a task that ran out of retries, never lose it silently."""
    huey = jobs.huey

    @huey.signal(SIGNAL_ENQUEUED)
    def enqueued(signal: str, task: Any) -> None:
        metrics.JOBS_ENQUEUED.labels(task.name).inc()

    @huey.signal(SIGNAL_COMPLETE)
    def completed(signal: str, task: Any) -> None:
        metrics.JOBS_RUN.labels(task.name).inc()

    @huey.signal(SIGNAL_ERROR)
    def errored(signal: str, task: Any, exc: BaseException | None = None) -> None:
        metrics.JOBS_FAILED.labels(task.name).inc()
        if task.retries:
            metrics.JOBS_RETRIED.labels(task.name).inc()
            return
        metrics.JOBS_GIVEN_UP.labels(task.name).inc()
        attempts = type(task).default_retries + 1
        error = f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
        log.error("job %s %s gave up after %d attempt(s): %s", task.name, list(task.args), attempts, error)
        jobs.run(lambda db: failures.record(db, jobs.registry, jobs.plugin, task.name, task.id, list(task.args),
                                            error, attempts))
