"""The plug point between mutation handlers and the job runner.

A handler writes its durable rows (an invoice ``pending``, a notice in the outbox) in its
own transaction and, through :func:`after_commit`, asks the registry's :class:`JobSink`
to enqueue the work once that transaction has committed. The domain never imports Huey:
``jobs/`` provides the sink. Without one (:data:`NO_JOBS`), the rows stay ``pending``
until the periodic sweep of a worker finds them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from sync.push import MutationContext
from sync.schema import Registry

log = logging.getLogger("fieldsync.jobs")


class JobSink(Protocol):
    """Enqueues background work by ids; each call may block briefly (a Redis write)."""

    def invoice(self, tenant_id: int, invoice_id: str) -> None: ...

    def notice(self, tenant_id: int, notice_id: str) -> None: ...

    def report(self, tenant_id: int, document_id: str) -> None: ...

    def dashboards(self, tenant_id: int, dashboard_ids: Sequence[str]) -> None: ...

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Around several enqueues from one thread: they may be written at once."""
        ...


class NoJobs:
    """No runner attached (CLI imports, bare registries): pending rows wait for a sweep."""

    def invoice(self, tenant_id: int, invoice_id: str) -> None:
        pass

    def notice(self, tenant_id: int, notice_id: str) -> None:
        pass

    def report(self, tenant_id: int, document_id: str) -> None:
        pass

    def dashboards(self, tenant_id: int, dashboard_ids: Sequence[str]) -> None:
        pass

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


NO_JOBS = NoJobs()


class DomainRegistry(Registry):
    """The engine's registry plus the job sink the domain's handlers enqueue to."""

    def __init__(self, jobs: JobSink | None = None) -> None:
        super().__init__()
        self.jobs: JobSink = jobs or NO_JOBS

    def after_commit_batch(self) -> contextlib.AbstractContextManager[None]:
        batch = getattr(self.jobs, "batch", None)  # a sink written before batches had none
        return batch() if batch is not None else contextlib.nullcontext()


def sink_of(ctx: MutationContext) -> JobSink:
    return getattr(ctx.changes.registry, "jobs", NO_JOBS)


def after_commit(ctx: MutationContext, *calls: Callable[[JobSink], None]) -> None:
    """Run ``calls`` with the sink once the mutation has committed, off the event loop
    (enqueueing may be a network write, or in immediate mode the job itself): the push
    runs a whole group's in one worker thread."""
    sink = sink_of(ctx)
    if sink is NO_JOBS or not calls:
        return

    def run() -> None:
        for call in calls:
            try:
                call(sink)
            except Exception:  # noqa: BLE001 - the row stays pending; the sweep re-enqueues it
                log.exception("enqueueing a job failed; the periodic sweep will retry it")

    ctx.after_commit_blocking.append(run)
