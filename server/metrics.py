"""Every Prometheus metric fieldsync exports: defined here, except the job runner's
(jobs/metrics.py, below the server), which are listed here too.

Several processes: with ``PROMETHEUS_MULTIPROC_DIR`` set (see docs/operations.md), every ``web``
process and the worker write their samples there and any one ``/metrics`` serves the sum;
without it each process serves its own registry. No label takes unbounded values: routes
are templates, datasets and mutation names come from the registry, codes from ErrorCode
(and ``CLIENT_DISCONNECT``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

from jobs.metrics import (  # noqa: F401  (listed with the others)
    COMPACTION_REMOVED, COMPACTION_RUNS, DEVICES_RETIRED, JOBS_ENQUEUED, JOBS_FAILED, JOBS_GIVEN_UP, JOBS_QUEUE,
    JOBS_RETRIED, JOBS_RUN, LOG_ENTRIES,
)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LAG = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
POSITIONS = (0, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
# The outcome of a request whose device went away before its body arrived (signal lost, or the
# body timeout of server/http_protocol.py). Not an ErrorCode: no one is left to receive it.
# It is counted under this code and the nginx-style status 499, which no alert treats as a fault.
CLIENT_DISCONNECT = "CLIENT_DISCONNECT"
CLIENT_DISCONNECT_STATUS = 499


def _gauge(name: str, doc: str, labels: tuple[str, ...] = (), mode: str = "livesum") -> Gauge:
    return Gauge(name, doc, labels, multiprocess_mode=mode)


HTTP_DURATION = Histogram("fieldsync_http_request_duration_seconds", "HTTP request latency.",
                          ("route", "method", "status"), buckets=LATENCY)
WS_SESSIONS = _gauge("fieldsync_ws_sessions", "Open WebSocket sessions by state.", ("state",))
WS_OPENED = Counter("fieldsync_ws_sessions_opened_total", "WebSocket sessions accepted.")
WS_CLOSED = Counter("fieldsync_ws_sessions_closed_total", "WebSocket sessions ended, by close code.", ("code",))
ROWS_SENT = Counter("fieldsync_rows_sent_total", "Rows and deletes sent to devices.", ("dataset", "framing"))
BYTES_SENT = Counter("fieldsync_bytes_sent_total", "Sync bytes sent (before gzip).", ("framing",))
SNAPSHOTS = Counter("fieldsync_snapshot_pages_total", "Batches that reset datasets (snapshot pages).", ("framing",))
SNAPSHOT_ROWS = Histogram("fieldsync_snapshot_page_rows", "Rows in a snapshot page.",
                          buckets=(10, 100, 500, 1000, 2000, 5000, 10000, 20000))
PULLS = Counter("fieldsync_pulls_total", "Pull requests by outcome code (ok or an error code).", ("code",))
PUSHES = Counter("fieldsync_pushes_total", "Push requests by outcome code.", ("code",))
MUTATIONS = Counter("fieldsync_mutations_total", "Mutations by name and status.", ("name", "status", "code"))
PUSH_GROUPS_REDONE = Counter("fieldsync_push_groups_redone_total",
                             "Push groups applied again a savepoint per mutation: their first pass met a "
                             "refusal or a failed write.")
COMMIT_TO_DEVICE = Histogram("fieldsync_commit_to_device_seconds",
                             "From a change's commit to its live frame leaving the server.", buckets=LAG)
DEVICE_LAG = Histogram("fieldsync_device_lag_positions",
                       "How many log positions behind the head a device's acknowledged cursor is.",
                       buckets=POSITIONS)
PUBLISHED = Counter("fieldsync_pubsub_published_total", "Change notices published.")
RECEIVED = Counter("fieldsync_pubsub_received_total", "Change notices received.")
FALLBACK = _gauge("fieldsync_fanout_fallback", "1 while live delivery polls the log because Redis is away.",
                  mode="max")
SHARED_PULLS = Counter("fieldsync_shared_pulls_total",
                       "Catch-up batches computed, or shared with a device at the same cursor.", ("outcome",))
LIVE_ROUNDS = Histogram("fieldsync_live_round_seconds", "Time to build and queue one wake-up's frames.",
                        buckets=LATENCY)
ADMISSION_REFUSED = Counter("fieldsync_admission_refused_total",
                            "Requests refused by admission control: limit is device or user (RATE_LIMITED) "
                            "or snapshots (UNAVAILABLE).", ("limit", "framing"))
SNAPSHOTS_IN_FLIGHT = _gauge("fieldsync_snapshots_in_flight", "Snapshot pages being read and encoded now.")
DB_IN_USE = _gauge("fieldsync_db_pool_in_use", "Database connections checked out.")
DB_WAIT = Histogram("fieldsync_db_acquire_seconds", "Time to get a database connection from the pool.",
                    buckets=LATENCY)


def count_shared_pull(shared: bool) -> None:
    SHARED_PULLS.labels("shared" if shared else "computed").inc()


def exposition() -> tuple[bytes, str]:
    """The text to serve at /metrics: this process, or every process in multiprocess mode."""
    if MULTIPROCESS:
        forget_dead_processes(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def forget_dead_processes(directory: Path) -> list[int]:
    """Drop the gauges of processes of this host that are gone, so a crashed process's last
    values (sessions open, connections in use, "Redis is away") stop counting; their
    counters and histograms stay, as totals must. ``multiprocess.mark_process_dead`` drops
    only the ``live*`` gauges; a gauge is a value now, so a dead process has none of any
    mode. Run at each scrape: one directory listing."""
    gone = []
    for pid in sorted({int(m.group(1)) for path in directory.glob("gauge_*_*.db")
                       if (m := re.search(r"_(\d+)\.db$", path.name))}):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            for path in directory.glob(f"gauge_*_{pid}.db"):
                path.unlink(missing_ok=True)
            gone.append(pid)
        except PermissionError:  # alive, another user's
            pass
    return gone
