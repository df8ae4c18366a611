"""Every task and periodic task, registered on one Huey instance.

Thin by design: a task takes ids, runs its async core in :meth:`Jobs.run` (own loop, own
Database) and is safe to run twice. Failures retry with exponential backoff; a task out
of retries is recorded (``jobs_failed``, metric, its row marked ``failed``). Periodic
tasks use Huey's scheduler (``crontab``), so they run wherever a consumer runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from huey import crontab
from huey.api import TaskWrapper
from huey.signals import SIGNAL_COMPLETE, SIGNAL_ENQUEUED, SIGNAL_ERROR

from server import metrics
from sync import compaction, devices, hot
from sync.storage import log_head

from . import dashboards, failures, invoices, notices, reports

if TYPE_CHECKING:
    from .runner import Jobs

log = logging.getLogger("fieldsync.jobs")


@dataclass(frozen=True)
class Tasks:
    invoice_render: TaskWrapper
    report_render: TaskWrapper
    notice_deliver: TaskWrapper
    dashboard_refresh: TaskWrapper
    dashboards_periodic: TaskWrapper
    compact_log: TaskWrapper
    sweep_pending: TaskWrapper
    hot_snapshots: TaskWrapper


def define_tasks(jobs: Jobs) -> Tasks:
    on_demand = _on_demand(jobs)
    periodic = _periodic(jobs)
    _observe(jobs)
    return Tasks(*on_demand, *periodic)


def _on_demand(jobs: Jobs) -> tuple[TaskWrapper, ...]:
    huey, settings = jobs.huey, jobs.settings
    # Immediate mode cannot wait (nothing reads the schedule): it retries at once.
    retry: dict[str, Any] = {"retries": settings.retries, "retry_backoff": settings.retry_backoff,
                             "retry_delay": 0 if settings.immediate else settings.retry_delay}
    transport = notices.transport_for(settings.smtp_url, settings.data_dir)

    @huey.task(name="invoice_render", **retry)
    def invoice_render(tenant_id: int, invoice_id: str) -> str:
        """Make the invoice PDF of an order or sale; the row turns ``ready``."""
        return jobs.run(lambda db: invoices.render_invoice(db, jobs.registry, tenant_id, invoice_id,
                                                           pause_ms=settings.pause_ms))

    @huey.task(name="report_render", **retry)
    def report_render(tenant_id: int, document_id: str) -> str:
        """Make a requested report's PDF; its ``documents`` row turns ``ready``."""
        return jobs.run(lambda db: reports.render_report(db, jobs.registry, tenant_id, document_id))

    @huey.task(name="notice_deliver", **retry)
    def notice_deliver(tenant_id: int, notice_id: str) -> str:
        """Deliver one outbox notice (SMTP or file), unless already sent."""
        return jobs.run(lambda db: notices.deliver(db, tenant_id, notice_id, transport, settings.smtp_from))

    @huey.task(name="dashboard_refresh", **retry)
    def dashboard_refresh(tenant_id: int, dashboard_id: str) -> bool:
        """Recompute one dashboard row (debounced by the sink)."""
        huey.delete(jobs.debounce_key(tenant_id, dashboard_id))  # landings from now on schedule anew
        return jobs.run(lambda db: dashboards.refresh(db, jobs.registry, tenant_id, dashboard_id))

    return invoice_render, report_render, notice_deliver, dashboard_refresh


def _periodic(jobs: Jobs) -> tuple[TaskWrapper, ...]:
    huey, settings = jobs.huey, jobs.settings

    @huey.periodic_task(crontab(minute="*/15"), name="dashboards_periodic")
    def dashboards_periodic() -> int:
        """Every dashboard, so day and month roll-overs show without a landing."""
        return jobs.run(lambda db: dashboards.refresh_all(db, jobs.registry))

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

    return dashboards_periodic, compact_log, sweep_pending, hot_snapshots


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
        jobs.run(lambda db: failures.record(db, jobs.registry, task.name, task.id, list(task.args), error, attempts))
