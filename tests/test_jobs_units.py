"""Pieces of the job runner on their own: the msgpack serializer, settings, money and PDF
text, the SMTP URL, and the dashboard debounce on a queue nobody consumes."""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle

import pytest
import sqlalchemy as sa
from huey import MemoryHuey

from jobs.config import JobSettings
from jobs.runner import Jobs, build_huey
from jobs.serializer import MsgpackSerializer
from server.domain.background.notices import SmtpTransport
from server.domain.background.pdf import Sheet, latin1, render
from server.domain.invoices import format_money
from server.domain.plugin import domain
from server.domain.tables import dashboards

from .jobs_support import pdf_text
from .support import seed


def test_messages_cross_the_queue_as_msgpack_not_pickle():
    huey = MemoryHuey("units", results=False, serializer=MsgpackSerializer())

    @huey.task(retries=3, retry_delay=2, retry_backoff=2)
    def job(tenant_id: int, key: str) -> None:
        pass

    job.schedule((7, "inv-x"), eta=dt.datetime(2030, 1, 2, 3, 4, 5))
    raw = huey.storage.dequeue()
    assert not raw.startswith(b"\x80")  # a pickle stream starts with PROTO
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(raw)
    task = huey.deserialize_task(raw)
    assert task.args == (7, "inv-x") and task.eta == dt.datetime(2030, 1, 2, 3, 4, 5)
    assert (task.retries, task.retry_delay, task.retry_backoff) == (3, 2, 2)


def test_only_plain_data_may_be_enqueued():
    huey = MemoryHuey("units", results=False, serializer=MsgpackSerializer())

    @huey.task()
    def job(value) -> None:
        pass

    with pytest.raises(TypeError, match="pass ids"):
        job(object())


def test_settings_pick_the_backend(tmp_path):
    base = {"database_url": "sqlite:///x.db", "data_dir": tmp_path, "prefix": "acme"}
    embedded = JobSettings.from_env(redis_url=None, env={}, **base)
    assert (embedded.name, embedded.threads, embedded.uses_redis) == ("acme_jobs", 2, False)
    assert type(build_huey(embedded)).__name__ == "SqliteHuey" and (tmp_path / "jobs.db").exists()
    production = JobSettings.from_env(redis_url="redis://127.0.0.1:6379/0", env={}, **base)
    assert (production.threads, production.uses_redis) == (0, True)
    immediate = JobSettings.from_env(redis_url=None, env={"FIELDSYNC_JOBS": "immediate"}, **base)
    assert build_huey(immediate).immediate
    with pytest.raises(ValueError):
        JobSettings.from_env(redis_url=None, env={"FIELDSYNC_JOBS": "sometimes"}, **base)


def test_money_is_formatted_from_minor_units():
    assert format_money(123456, "EUR") == "1,234.56 EUR"
    assert format_money(-5, "EUR") == "-0.05 EUR"
    assert format_money(1500, "JPY") == "1,500 JPY"
    assert format_money(1234, "KWD") == "1.234 KWD"


def test_pdf_layout_draws_what_the_core_fonts_can():
    assert latin1("Zoë Łódź ☃") == "Zoë ?ódz ?"  # ó is Latin-1, ź folds to z, Ł and ☃ have no base
    sheet = Sheet("Ümlaut GmbH", "Invoice", 1_700_000_000_000, [("Invoice no.", "INV-000042")], ["Zoë"],
                  ["#", "Item", "Qty"], [10, 100, 20], [["1", "Łódź widget", "2"]])
    body = render(sheet)
    assert body.startswith(b"%PDF") and body == render(sheet)  # same sheet, same bytes
    text = pdf_text(body)
    assert "INV-000042" in text and "Ümlaut GmbH" in text and "ódz widget" in text


def test_smtp_url():
    smtp = SmtpTransport("smtps://mailer%40acme:s%3Acret@mail.example.com")
    assert (smtp.host, smtp.port, smtp.tls, smtp.user, smtp.password) == ("mail.example.com", 465, True,
                                                                           "mailer@acme", "s:cret")
    assert SmtpTransport("smtp://mail:2525?starttls=1").starttls
    with pytest.raises(ValueError):
        SmtpTransport("http://mail")


async def test_a_burst_of_landings_schedules_one_dashboard_refresh(services):
    await seed(services)
    settings = JobSettings(database_url=services.settings.database_url, redis_url=None,
                           data_dir=str(services.settings.data_dir), dashboard_debounce=5)
    jobs = Jobs(settings, domain.registry, domain.jobs,
                huey=MemoryHuey("burst", results=False, serializer=MsgpackSerializer()))
    for _ in range(300):  # a POS terminal replaying a morning of sales
        jobs.sink.dashboards(1, ["branch:2"])
    assert jobs.huey.pending_count() == 1
    task = jobs.huey.dequeue()
    assert task.eta is not None and task.args == (1, "branch:2")
    task.eta = None  # as the scheduler does once the debounce has passed
    await asyncio.to_thread(jobs.huey.execute, task)
    async with services.db.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(dashboards)) == 1
    jobs.sink.dashboards(1, ["branch:2"])  # a landing after the refresh started: a new one
    assert jobs.huey.pending_count() == 1
