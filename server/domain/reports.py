"""Reports on request: ``report.request`` records a ``documents`` row (``pending``) that a
job turns into a PDF; the row, with its link, reaches the asking user's devices."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sync.errors import ErrorCode
from sync.push import MutationContext
from sync.schema import Registry

from . import mutations
from .job_tables import documents
from .jobsink import after_commit

KINDS = ("customer_statement", "daily_sales")
DAY_MS = 86_400_000
MAX_SPAN_MS = 366 * DAY_MS


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)


def day_start(ms: int) -> int:
    """Midnight UTC of the day holding ``ms`` (dashboards and reports count in UTC days)."""
    return ms - ms % DAY_MS


def month_start(ms: int) -> int:
    moment = _utc(ms)
    return int(dt.datetime(moment.year, moment.month, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)


async def _statement(ctx: MutationContext, args: dict[str, Any]) -> tuple[dict[str, Any], str]:
    if args.get("customer_id") is None:
        raise mutations.reject(ErrorCode.INVALID_ARGS, "a customer_statement needs `customer_id`")
    customer = await mutations.load_customer(ctx, args["customer_id"], lock=False)
    if ctx.principal.role == "pos" and customer["branch_id"] != ctx.principal.attrs.get("branch_id"):
        raise mutations.reject(ErrorCode.FORBIDDEN, f"customer {customer['id']} is not a customer of your shop")
    start = args.get("from") if args.get("from") is not None else month_start(ctx.at)
    end = args.get("to") if args.get("to") is not None else ctx.at
    title = f"Statement {customer['name'][:60]} {_utc(start):%Y-%m-%d} to {_utc(end):%Y-%m-%d}"
    return {"customer_id": customer["id"], "from": start, "to": end}, title


async def _daily_sales(ctx: MutationContext, args: dict[str, Any]) -> tuple[dict[str, Any], str]:
    start = day_start(args["from"] if args.get("from") is not None else ctx.at)
    end = args.get("to") if args.get("to") is not None else start + DAY_MS
    return {"from": start, "to": end}, f"Sales {_utc(start):%Y-%m-%d}"


async def report_request(ctx: MutationContext, args: dict[str, Any]) -> dict[str, Any]:
    """Ask for a PDF report (``customer_statement`` of one customer, month to date by
    default; ``daily_sales``, today by default). The ``documents`` row appears at once as
    ``pending`` and turns ``ready`` with its link when the job has made the PDF."""
    document_id = mutations.check_uuid(args["id"])
    mutations.check_at(ctx)
    if args["kind"] not in KINDS:
        raise mutations.reject(ErrorCode.INVALID_ARGS, f"`kind` is one of {', '.join(KINDS)}")
    await mutations.ensure_new(ctx, documents, document_id)
    build = _statement if args["kind"] == "customer_statement" else _daily_sales
    params, title = await build(ctx, args)
    if not 0 <= params["from"] < params["to"] or params["to"] - params["from"] > MAX_SPAN_MS:
        raise mutations.reject(ErrorCode.INVALID_ARGS, "`from` must come before `to`, at most 366 days apart")
    await ctx.changes.append(documents, [{
        "id": document_id, "user_id": ctx.principal.user_id, "kind": args["kind"], "params": params,
        "title": title, "status": "pending", "url": None, "requested_at": ctx.now, "ready_at": None,
    }])
    tenant = ctx.principal.tenant_id
    after_commit(ctx, lambda jobs: jobs.report(tenant, document_id))
    return {"document_id": document_id, "status": "pending"}


def register(registry: Registry) -> None:
    registry.mutation("report.request", roles=["salesperson", "pos"],
                      args={"id": "str", "kind": "str", "customer_id": "id?", "from": "int?",
                            "to": "int?"})(report_request)
