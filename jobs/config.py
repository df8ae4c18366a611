"""Settings of the job runner, read once from the environment at the edge.

| variable | default | meaning |
|---|---|---|
| `FIELDSYNC_JOBS` | `auto` | `auto`: Huey on Redis when `FIELDSYNC_REDIS_URL` is set (run `fieldsync worker`), else Huey on SQLite under the data dir, consumed by threads of the web process; `immediate`: run each job at once in the enqueuing thread (tests, debugging) |
| `FIELDSYNC_JOBS_THREADS` | 2 (SQLite), 0 (Redis) | consumer threads inside `fieldsync serve` |
| `FIELDSYNC_SMTP_URL` | — | `smtp://user:pass@host:port` (`smtps://` for TLS, `?starttls=1`); unset: notices go to files under `<data dir>/outbox/` |
| `FIELDSYNC_SMTP_FROM` | `fieldsync@localhost` | sender address |
| `FIELDSYNC_RETENTION_DAYS` | 30 | change-log history kept before compaction |
| `FIELDSYNC_STALE_DEVICE_DAYS` | 180 | a device unseen this long is retired by the daily task (0: never) |
| `FIELDSYNC_JOB_RETRIES` | 5 | retries of a failing job before it is recorded as failed |
| `FIELDSYNC_JOB_RETRY_DELAY` | 2 | seconds before the first retry; doubles each time |
| `FIELDSYNC_DASHBOARD_DEBOUNCE` | 2 | seconds a dashboard refresh waits for more landings |
| `FIELDSYNC_JOBS_SWEEP_AFTER` | 120 | seconds after which a row still `pending` is enqueued again |
| `FIELDSYNC_JOBS_PAUSE_MS` | 0 | fault injection for tests: invoice jobs sleep this long half-way |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class JobSettings:
    database_url: str
    redis_url: str | None
    data_dir: str
    name: str = "fieldsync_jobs"  # Huey's queue name: the Redis key prefix (alphanumerics and _)
    immediate: bool = False
    threads: int = 2  # consumer threads the web process runs (0: a separate worker does)
    smtp_url: str | None = None
    smtp_from: str = "fieldsync@localhost"
    retention_days: float = 30.0
    stale_device_days: float = 180.0  # 0: devices are never retired
    retries: int = 5
    retry_delay: float = 2.0
    retry_backoff: float = 2.0
    dashboard_debounce: float = 2.0
    sweep_after: float = 120.0
    pause_ms: int = 0  # fault injection for tests: invoice jobs sleep this long mid-task

    @property
    def uses_redis(self) -> bool:
        return self.redis_url is not None and not self.immediate

    @classmethod
    def from_env(cls, *, database_url: str, redis_url: str | None, data_dir: Path | str, prefix: str,
                 env: dict[str, str] | None = None) -> JobSettings:
        """The server's settings (database, Redis, data dir, key prefix) plus the job variables."""
        env = dict(os.environ if env is None else env)
        mode = env.get("FIELDSYNC_JOBS", "auto")
        if mode not in ("auto", "immediate"):
            raise ValueError(f"FIELDSYNC_JOBS is `auto` or `immediate`, not {mode!r}")
        redis = redis_url
        threads = env.get("FIELDSYNC_JOBS_THREADS")
        return cls(
            database_url=database_url,
            redis_url=redis,
            data_dir=str(data_dir),
            name=f"{prefix}_jobs",
            immediate=mode == "immediate",
            threads=int(threads) if threads else (0 if redis else 2),
            smtp_url=env.get("FIELDSYNC_SMTP_URL") or None,
            smtp_from=env.get("FIELDSYNC_SMTP_FROM") or "fieldsync@localhost",
            retention_days=float(env.get("FIELDSYNC_RETENTION_DAYS") or 30),
            stale_device_days=float(env.get("FIELDSYNC_STALE_DEVICE_DAYS") or 180),
            retries=int(env.get("FIELDSYNC_JOB_RETRIES") or 5),
            retry_delay=float(env.get("FIELDSYNC_JOB_RETRY_DELAY") or 2),
            dashboard_debounce=float(env.get("FIELDSYNC_DASHBOARD_DEBOUNCE") or 2),
            sweep_after=float(env.get("FIELDSYNC_JOBS_SWEEP_AFTER") or 120),
            pause_ms=int(env.get("FIELDSYNC_JOBS_PAUSE_MS") or 0),
        )

    @classmethod
    def for_server(cls, settings: Any, env: dict[str, str] | None = None) -> JobSettings:
        """From the server's :class:`~server.config.Settings` (database, Redis, data dir, prefix)."""
        return cls.from_env(database_url=settings.database_url, redis_url=settings.redis_url,
                            data_dir=settings.data_dir, prefix=settings.redis_prefix, env=env)

    def but(self, **changes: object) -> JobSettings:
        return replace(self, **changes)
