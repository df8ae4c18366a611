"""The job runner's Prometheus metrics. Defined here because the runner sits below the
server and imports nothing of it; ``server.metrics`` lists them with the others and
serves them (one registry, or the multiprocess directory)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LOG_ENTRIES = Gauge("fieldsync_change_log_entries", "Entries in the change log (all tenants).",
                    multiprocess_mode="max")
COMPACTION_RUNS = Counter("fieldsync_compaction_runs_total", "Change-log compaction runs.")
DEVICES_RETIRED = Counter("fieldsync_devices_retired_total",
                          "Devices retired as stale (unseen for FIELDSYNC_STALE_DEVICE_DAYS), their ledger dropped.")
COMPACTION_REMOVED = Counter("fieldsync_compaction_removed_total", "Change-log entries removed by compaction.")
JOBS_ENQUEUED = Counter("fieldsync_jobs_enqueued_total", "Jobs enqueued.", ("task",))
JOBS_RUN = Counter("fieldsync_jobs_run_total", "Jobs run to completion.", ("task",))
JOBS_FAILED = Counter("fieldsync_jobs_failed_total", "Job attempts that failed.", ("task",))
JOBS_RETRIED = Counter("fieldsync_jobs_retried_total", "Job attempts scheduled for retry.", ("task",))
JOBS_GIVEN_UP = Counter("fieldsync_jobs_given_up_total", "Jobs that ran out of retries (recorded).", ("task",))
JOBS_QUEUE = Gauge("fieldsync_jobs_queue_depth", "Jobs waiting in the queue.", multiprocess_mode="max")
