"""End to end on the production set-up: jobs enqueued to the real Redis by the server and
run by a real ``fieldsync worker`` process. A pushed order yields a ready invoice with
its PDF; a worker killed mid-task and restarted makes the invoice once; a failing SMTP
server is retried, then recorded."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from server.app import Services, build_services
from server.domain.job_tables import document_files, notices
from server.domain.tables import invoices
from server.migrations import upgrade
from sync.storage import jobs_failed

from .conftest import _reset_pg
from .jobs_support import (
    ROOT, RefusingSmtp, WorkerProcess, device, drop_queue, fetch, order, pdf_text, require_redis, rows,
)
from .support import admin_write, seed

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def redis_settings(settings, monkeypatch) -> Iterator:
    """The suite's settings on the real Redis under a key prefix of this test's own."""
    url = require_redis()
    prefix = f"fsjobs{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("FIELDSYNC_JOBS", "auto")
    monkeypatch.setenv("FIELDSYNC_DASHBOARD_DEBOUNCE", "0.3")
    # The retry policy travels in each message: the enqueuing process (here, this one) sets it.
    monkeypatch.setenv("FIELDSYNC_JOB_RETRIES", "2")
    monkeypatch.setenv("FIELDSYNC_JOB_RETRY_DELAY", "0.3")
    yield dataclasses.replace(settings, redis_url=url, redis_prefix=prefix)
    drop_queue(url, f"{prefix}_jobs")


@pytest.fixture
async def services(redis_settings) -> AsyncIterator[Services]:
    if not redis_settings.embedded:
        await _reset_pg(redis_settings.database_url)
    built = build_services(redis_settings)
    await upgrade(built.db)
    yield built
    await built.db.dispose()


@pytest.fixture
def worker(redis_settings, tmp_path) -> Iterator[callable]:
    started: list[WorkerProcess] = []

    def start(**env: str) -> WorkerProcess:
        started.append(WorkerProcess(redis_settings, tmp_path / f"worker-{len(started)}.log", **env).start())
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


async def wait_for(check, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_pushed_order_yields_a_ready_invoice_through_the_worker(services, client, worker, tmp_path):
    w = await seed(services)
    await admin_write(services.db, services.registry, 1, "customers", [{"id": 1, "email": "buyer@example.com"}], [])
    worker()
    s1 = device(services, client, w.sales1)
    [result] = await s1.push([order(s1, qty=2, product_id=9)])

    async def ready_invoice():
        await s1.sync()
        found = [i for i in s1.replica.rows("invoices").values() if i["status"] == "ready"]
        return found[0] if found else None

    invoice = await wait_for(ready_invoice, what="a ready invoice on the device")
    body = (await fetch(client, services, invoice["url"], w.sales1, "salesperson")).content
    assert body.startswith(b"%PDF") and result["result"]["number"] in pdf_text(body)
    async def mailed():
        return list((tmp_path / "outbox").glob("*.eml"))

    mail = await wait_for(mailed, what="the confirmation notice")
    assert result["result"]["number"] in mail[0].read_text()

    async def dashboard_with_the_order():
        # wait for the figure, not the row: the periodic refresh (every quarter hour) may
        # have made the row before the order's debounced refresh counts it
        await s1.sync()
        row = s1.replica.rows("dashboard").get(f"user:{w.sales1}")
        return row if row is not None and row["today_total"] == 2 * 900 else None

    await wait_for(dashboard_with_the_order, what="the dashboard row counting the order")


async def test_a_worker_killed_mid_task_makes_the_invoice_once_after_restart(services, client, worker,
                                                                             redis_settings):
    w = await seed(services)
    slow = worker(FIELDSYNC_JOBS_PAUSE_MS="6000")  # every invoice job sleeps 6 s half-way
    s1 = device(services, client, w.sales1)
    await s1.push([order(s1)])
    queue = redis.Redis.from_url(redis_settings.redis_url)
    name = services.jobs.huey.storage.queue_key
    started = time.monotonic()

    async def inside_the_task():  # taken off the queue, not finished
        return (queue.llen(name) == 0 and time.monotonic() - started > 1.5
                and (await rows(services, invoices))[0]["status"] == "pending")

    await wait_for(inside_the_task, what="the invoice job to be running")
    slow.kill()
    queue.close()
    assert (await rows(services, invoices))[0]["status"] == "pending" and await rows(services, document_files) == []
    worker()  # its start-up sweep finds the pending invoice whose job died

    async def ready():
        return (await rows(services, invoices))[0]["status"] == "ready"

    await wait_for(ready, what="the invoice after the restart")
    await asyncio.sleep(1.0)  # let any duplicate job run: it must change nothing
    [stored] = await rows(services, document_files)
    assert stored["body"].startswith(b"%PDF") and await rows(services, jobs_failed) == []
    await s1.sync()
    assert [i["status"] for i in s1.replica.rows("invoices").values()] == ["ready"]


async def test_a_failing_smtp_server_is_retried_then_the_failure_recorded(services, client, worker, redis_settings):
    w = await seed(services)
    await admin_write(services.db, services.registry, 1, "customers", [{"id": 1, "email": "buyer@example.com"}], [])
    smtp = RefusingSmtp()
    try:
        worker(FIELDSYNC_SMTP_URL=f"smtp://127.0.0.1:{smtp.port}")
        s1 = device(services, client, w.sales1)
        await s1.push([order(s1)])

        async def failed():
            found = await rows(services, notices)
            return found and found[0]["status"] == "failed"

        await wait_for(failed, what="the notice to be given up")
        assert smtp.attempts == 3
    finally:
        smtp.close()
    [failure] = await rows(services, jobs_failed)
    assert failure["task"] == "notice_deliver" and failure["attempts"] == 3 and "554" in failure["error"]
    assert (await rows(services, invoices))[0]["status"] in ("pending", "ready")  # other jobs are unaffected
    env = WorkerProcess(redis_settings, ROOT / "unused.log").env
    listing = subprocess.run([sys.executable, "-m", "server.cli", "jobs", "failed"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "notice_deliver" in listing.stdout and "554" in listing.stdout
