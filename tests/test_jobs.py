"""Background jobs in immediate mode (each job runs in the enqueuing thread), on SQLite and
PostgreSQL: invoices, reports, notices, dashboards, retries and recorded failures."""

from __future__ import annotations

import argparse
import asyncio
import email
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import sqlalchemy as sa

from server import jobs_cli
from server.app import Services, build_services, create_app
from server.domain.background import dashboards as dashboard_jobs
from server.domain.background import invoices as invoice_jobs
from server.domain.job_tables import document_files, notices
from server.domain.tables import dashboards, invoices, orders
from server.migrations import upgrade
from sync.changes import write_changes
from sync.storage import change_log, jobs_failed

from .conftest import _reset_pg
from .jobs_support import RefusingSmtp, device, fetch, order, pdf_text, rows, sale
from .support import admin_write, seed


@pytest.fixture
async def services(settings, monkeypatch) -> AsyncIterator[Services]:
    """Like the suite's, with jobs run at once where they are enqueued."""
    monkeypatch.setenv("FIELDSYNC_JOBS", "immediate")
    monkeypatch.setenv("FIELDSYNC_JOB_RETRIES", "2")
    monkeypatch.delenv("FIELDSYNC_SMTP_URL", raising=False)
    if not settings.embedded:
        await _reset_pg(settings.database_url)
    built = build_services(settings)
    await upgrade(built.db)
    yield built
    await built.db.dispose()


async def test_an_applied_order_gets_a_ready_invoice_with_its_pdf(services, client):
    w = await seed(services)
    s1 = device(services, client, w.sales1)
    [result] = await s1.push([order(s1, qty=3, product_id=4)])
    number = result["result"]["number"]
    await s1.sync()
    [invoice] = s1.replica.rows("invoices").values()
    assert invoice["status"] == "ready" and invoice["url"] == f"/documents/inv-{result['result']['order_id']}"
    response = await fetch(client, services, invoice["url"], w.sales1, "salesperson")
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")
    text = pdf_text(response.content)
    for expected in (number, invoice["number"], "Acme Trading", "Customer 1", "Product 4", "12.00 EUR"):
        assert expected in text


async def test_a_pos_sale_gets_a_receipt_for_its_branch(services, client):
    w = await seed(services)
    pos = device(services, client, w.pos1, "pos")
    [result] = await pos.push([sale(pos, qty=2, price=250)])
    await pos.sync()
    [invoice] = pos.replica.rows("invoices").values()
    assert invoice["status"] == "ready" and invoice["sale_id"] == result["result"]["sale_id"]
    body = (await fetch(client, services, invoice["url"], w.pos1, "pos")).content
    assert result["result"]["number"] in pdf_text(body) and "5.00 EUR" in pdf_text(body)


async def test_documents_are_served_only_within_scope(services, client):
    w = await seed(services)
    s1 = device(services, client, w.sales1)
    await s1.push([order(s1)])
    [invoice] = await rows(services, invoices)
    url = invoice["url"]
    assert (await fetch(client, services, url, w.sales1, "salesperson")).status_code == 200
    assert (await fetch(client, services, url, w.admin, "admin")).status_code == 200
    for user, role, tenant in ((w.sales2, "salesperson", 1), (w.pos1, "pos", 1), (w.intruder, "salesperson", 2)):
        refused = await fetch(client, services, url, user, role, tenant)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "NOT_FOUND"
    assert (await client.get(url)).status_code == 401
    assert (await fetch(client, services, "/documents/inv-nothing", w.sales1, "salesperson")).status_code == 404


async def test_running_an_invoice_job_again_changes_nothing(services, client):
    w = await seed(services)
    s1 = device(services, client, w.sales1)
    await s1.push([order(s1)])
    [invoice] = await rows(services, invoices)
    entries = len(await rows(services, change_log))
    outcome = await asyncio.to_thread(services.jobs.named["invoice_render"].call_local, 1, invoice["id"])
    assert outcome == "already"
    assert len(await rows(services, change_log)) == entries, "an idle re-run logs nothing"
    async with write_changes(services.db, services.registry, 1) as changes:  # as if the first run died
        await changes.conn.execute(sa.update(invoices).values(status="pending"))  # after storing, before the row
    entries = len(await rows(services, change_log))  # (captured too: every writer's change is)
    assert await asyncio.to_thread(services.jobs.named["invoice_render"].call_local, 1, invoice["id"]) == "made"
    assert len(await rows(services, document_files)) == 1
    assert len(await rows(services, change_log)) == entries + 2  # the row went ready once more (its 2 buckets)


async def test_order_confirmation_goes_to_the_file_sink_once(services, client, tmp_path):
    w = await seed(services)
    await admin_write(services.db, services.registry, w.tenant_id, "customers",
                      [{"id": 1, "email": "buyer@example.com"}], [])
    s1 = device(services, client, w.sales1)
    [first, second] = await s1.push([order(s1, customer_id=1), order(s1, customer_id=2)])
    sent = {n["id"]: n for n in await rows(services, notices)}
    key = f"order-confirmation:{first['result']['order_id']}"
    assert sent[key]["status"] == "sent" and sent[key]["attempts"] == 1
    assert sent[f"order-confirmation:{second['result']['order_id']}"]["status"] == "skipped"  # no e-mail address
    [mail] = list((tmp_path / "outbox").glob("*.eml"))
    message = email.message_from_bytes(mail.read_bytes())
    assert message["To"] == "buyer@example.com" and first["result"]["number"] in message.get_payload()
    assert message["Message-ID"].strip() == f"<t1-order-confirmation_{first['result']['order_id']}@fieldsync>"
    assert await asyncio.to_thread(services.jobs.named["notice_deliver"].call_local, 1, key) == "sent"
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1
    assert (await rows(services, notices, notices.c.id == key))[0]["attempts"] == 1


async def test_failing_smtp_retries_then_records_the_failure(services, client, settings, monkeypatch, capsys):
    w = await seed(services)
    await admin_write(services.db, services.registry, w.tenant_id, "customers",
                      [{"id": 1, "email": "buyer@example.com"}], [])
    smtp = RefusingSmtp()
    try:
        monkeypatch.setenv("FIELDSYNC_SMTP_URL", f"smtp://127.0.0.1:{smtp.port}")
        failing = build_services(settings)  # same database, jobs that mail through the refusing server
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings, services=failing)),
                                     base_url="http://fieldsync") as http:
            s1 = device(failing, http, w.sales1)
            [result] = await s1.push([order(s1)])
        await failing.db.dispose()
    finally:
        smtp.close()
    assert result["status"] == "applied"  # a failing job never fails the push
    assert smtp.attempts == 3  # the first try and two retries
    [notice] = await rows(services, notices)
    assert notice["status"] == "failed" and notice["attempts"] == 3 and "554" in notice["last_error"]
    [failure] = await rows(services, jobs_failed)
    assert failure["task"] == "notice_deliver" and failure["args"] == [1, notice["id"]] and failure["attempts"] == 3
    listing = argparse.Namespace(jobs_command="failed", limit=10, all=False, json=False)
    assert await asyncio.to_thread(jobs_cli.cmd_jobs, settings, listing) == 0
    assert "notice_deliver" in capsys.readouterr().out


async def test_an_invoice_out_of_retries_shows_failed_then_retries_on_request(services, client, settings,
                                                                              monkeypatch, capsys):
    w = await seed(services)
    calls = []

    def broken(sheet):
        calls.append(sheet)
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(invoice_jobs, "render", broken)
    s1 = device(services, client, w.sales1)
    await s1.push([order(s1)])
    await s1.sync()
    [invoice] = s1.replica.rows("invoices").values()
    assert invoice["status"] == "failed" and len(calls) == 3
    [failure] = await rows(services, jobs_failed)
    assert failure["task"] == "invoice_render" and "renderer broke" in failure["error"]
    monkeypatch.undo()
    monkeypatch.setenv("FIELDSYNC_JOBS", "immediate")
    assert await asyncio.to_thread(jobs_cli._retry, settings, failure["id"]) == 0
    await s1.sync()
    assert next(iter(s1.replica.rows("invoices").values()))["status"] == "ready"
    assert (await rows(services, jobs_failed))[0]["retried_at"] is not None


async def test_report_request_makes_a_statement_for_the_user_only(services, client):
    w = await seed(services)
    s1, s2 = device(services, client, w.sales1), device(services, client, w.sales2)
    [placed] = await s1.push([order(s1, customer_id=2)])
    await s1.push([s1.mutation("payment.record", {"id": str(uuid.uuid4()), "customer_id": 2, "amount": 150,
                                                  "currency": "EUR", "method": "cash"})])
    doc_id = str(uuid.uuid4())
    [asked] = await s1.push([s1.mutation("report.request", {"id": doc_id, "kind": "customer_statement",
                                                             "customer_id": 2})])
    assert asked["status"] == "applied" and asked["result"] == {"document_id": doc_id, "status": "pending"}
    await s1.sync()
    document = s1.replica.rows("documents")[doc_id]
    assert document["status"] == "ready" and document["kind"] == "customer_statement" and document["ready_at"]
    text = pdf_text((await fetch(client, services, document["url"], w.sales1, "salesperson")).content)
    assert "Customer statement" in text and placed["result"]["number"] in text and "1.50 EUR" in text
    await s2.sync()
    assert s2.replica.rows("documents") == {}
    assert (await fetch(client, services, document["url"], w.sales2, "salesperson")).status_code == 404
    [refused] = await s1.push([s1.mutation("report.request", {"id": str(uuid.uuid4()), "kind": "customer_statement",
                                                              "customer_id": 5})])
    assert refused["code"] == "FORBIDDEN"
    [unknown] = await s1.push([s1.mutation("report.request", {"id": str(uuid.uuid4()), "kind": "gossip"})])
    assert unknown["code"] == "INVALID_ARGS"


async def test_daily_sales_report_of_a_pos_terminal(services, client):
    w = await seed(services)
    pos = device(services, client, w.pos1, "pos")
    [sold] = await pos.push([sale(pos, qty=3, price=100)])
    doc_id = str(uuid.uuid4())
    await pos.push([pos.mutation("report.request", {"id": doc_id, "kind": "daily_sales"})])
    await pos.sync()
    document = pos.replica.rows("documents")[doc_id]
    text = pdf_text((await fetch(client, services, document["url"], w.pos1, "pos")).content)
    assert sold["result"]["number"] in text and "3.00 EUR" in text and "Sales report" in text


async def test_dashboards_follow_orders_sales_and_payments(services, client):
    w = await seed(services)
    s1, pos = device(services, client, w.sales1), device(services, client, w.pos1, "pos")
    await s1.push([order(s1, product_id=5, qty=2), order(s1, product_id=6, qty=1)])
    await pos.push([sale(pos, qty=60, price=100)])  # takes product 1 below zero: flagged for a count
    await s1.sync()
    await pos.sync()
    [mine] = s1.replica.rows("dashboard").values()
    assert mine["id"] == f"user:{w.sales1}" and mine["today_total"] == mine["month_total"] == 1000 + 600
    assert [p["product_id"] for p in mine["top_products"]] == [5, 6] and mine["pending_approvals"] == 2
    [shop] = pos.replica.rows("dashboard").values()
    assert shop["today_total"] == 6000 and shop["pending_approvals"] == 1
    assert await dashboard_jobs.refresh_all(services.db, services.registry) == 2  # sales2's and tenant 2's rows
    entries = len(await rows(services, change_log))
    assert await dashboard_jobs.refresh_all(services.db, services.registry) == 0  # nothing changed: no writes
    assert len(await rows(services, change_log)) == entries
    assert len(await rows(services, dashboards)) == 4 and len(await rows(services, orders)) == 2
