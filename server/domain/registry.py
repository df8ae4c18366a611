"""Builds the registry the engine serves: every dataset and mutation of the domain."""

from __future__ import annotations

from sync.schema import Registry

from . import datasets, mutations, mutations_sales, reports
from .jobsink import DomainRegistry, JobSink


def build_registry(jobs: JobSink | None = None) -> Registry:
    """``jobs``: where handlers enqueue background work after commit (none: rows wait for a sweep)."""
    registry = DomainRegistry(jobs)
    datasets.register(registry)
    mutations.register(registry)
    mutations_sales.register(registry)
    reports.register(registry)
    return registry
