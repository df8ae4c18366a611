"""The field-sales tasks, registered on the runner's Huey instance by :class:`FieldSalesJobs`.

Thin by design: a task takes ids, runs its async core in :meth:`jobs.runner.Jobs.run`
(own loop, own Database) and is safe to run twice. Failures retry with exponential
backoff; one out of retries is recorded by the runner and its row marked ``failed`` here
(recovery.py). Handlers enqueue through :class:`HueySink` after their commit.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from huey import crontab

from jobs.runner import Jobs
from sync.schema import Registry
from sync.storage import Database

from . import dashboards, invoices, notices, recovery, reports

DEBOUNCE_STALE_S = 300  # a debounce mark older than this belongs to a lost job: schedule anew


class FieldSalesJobs:
    """The domain's :class:`jobs.runner.JobPlugin`."""

    def define(self, jobs: Jobs) -> HueySink:
        _on_demand(jobs)
        _periodic(jobs)
        return HueySink(jobs)

    async def pending_work(self, db: Database, older_than_ms: int) -> dict[str, list[tuple[Any, ...]]]:
        return await recovery.pending_work(db, older_than_ms)

    async def gave_up(self, db: Database, registry: Registry, task: str, args: list[Any]) -> None:
        await recovery.gave_up(db, registry, task, args)

    async def reopen(self, db: Database, registry: Registry, task: str, args: list[Any]) -> None:
        await recovery.reopen(db, registry, task, args)


class HueySink:
    """The domain's :class:`~server.domain.jobsink.JobSink`: enqueue by ids."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    def invoice(self, tenant_id: int, invoice_id: str) -> None:
        self.jobs.named["invoice_render"](tenant_id, invoice_id)

    def notice(self, tenant_id: int, notice_id: str) -> None:
        self.jobs.named["notice_deliver"](tenant_id, notice_id)

    def report(self, tenant_id: int, document_id: str) -> None:
        self.jobs.named["report_render"](tenant_id, document_id)

    def dashboards(self, tenant_id: int, dashboard_ids: Sequence[str]) -> None:
        for dashboard_id in dashboard_ids:
            self.refresh_dashboard_soon(tenant_id, dashboard_id)

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return self.jobs.batch()

    def refresh_dashboard_soon(self, tenant_id: int, dashboard_id: str) -> None:
        """One refresh per burst: the first landing schedules it ``dashboard_debounce``
        seconds ahead and marks it; later landings see the mark and add nothing."""
        huey, refresh = self.jobs.huey, self.jobs.named["dashboard_refresh"]
        if huey.immediate:
            refresh(tenant_id, dashboard_id)
            return
        key, now = debounce_key(tenant_id, dashboard_id), time.time()
        if not huey.put_if_empty(key, now):
            marked = huey.get(key, peek=True)
            if marked is not None and now - marked < DEBOUNCE_STALE_S:
                return
            huey.put(key, now)
        refresh.schedule((tenant_id, dashboard_id), delay=self.jobs.settings.dashboard_debounce)


def debounce_key(tenant_id: int, dashboard_id: str) -> str:
    return f"debounce:dashboard:{tenant_id}:{dashboard_id}"


def _on_demand(jobs: Jobs) -> None:
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
        huey.delete(debounce_key(tenant_id, dashboard_id))  # landings from now on schedule anew
        return jobs.run(lambda db: dashboards.refresh(db, jobs.registry, tenant_id, dashboard_id))

    for task in (invoice_render, report_render, notice_deliver, dashboard_refresh):
        jobs.named[task.name] = task


def _periodic(jobs: Jobs) -> None:
    huey = jobs.huey

    @huey.periodic_task(crontab(minute="*/15"), name="dashboards_periodic")
    def dashboards_periodic() -> int:
        """Every dashboard, so day and month roll-overs show without a landing."""
        return jobs.run(lambda db: dashboards.refresh_all(db, jobs.registry))

    jobs.named[dashboards_periodic.name] = dashboards_periodic
