"""What an applied order, sale or payment leaves for the background jobs.

Called by the mutation handlers inside their transaction: the ``invoices`` row (status
``pending``) and the confirmation notice are written with the order or sale, so they
exist exactly when it does; the jobs that render and deliver them are enqueued after
commit (:mod:`server.domain.jobsink`). Everything here is re-runnable by id.
"""

from __future__ import annotations

from typing import Any

from sync.push import MutationContext

from .job_tables import notices
from .jobsink import after_commit
from .tables import invoices

_EXPONENTS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "HUF": 2, "BHD": 3, "KWD": 3, "OMR": 3, "TND": 3}


def format_money(amount: int, currency: str) -> str:
    """Minor units as text: ``123456, "EUR"`` is ``1,234.56 EUR``."""
    exponent = _EXPONENTS.get(currency, 2)
    sign = "-" if amount < 0 else ""
    whole, cents = divmod(abs(amount), 10**exponent) if exponent else (abs(amount), 0)
    text = f"{whole:,}" + (f".{cents:0{exponent}d}" if exponent else "")
    return f"{sign}{text} {currency}"


def invoice_id_for(source_id: str) -> str:
    return f"inv-{source_id}"


def dashboard_of_user(user_id: int) -> str:
    return f"user:{user_id}"


def dashboard_of_branch(branch_id: int) -> str:
    return f"branch:{branch_id}"


#: The invoice number series, ``(counter, prefix)``: the handler takes its number with the
#: order's or the sale's own (mutations.next_numbers), in one statement.
SERIES = ("invoice", "INV")


async def _pending_invoice(ctx: MutationContext, source: dict[str, Any], number: str, *, order: bool) -> str:
    invoice_id = invoice_id_for(source["id"])
    await ctx.changes.append(invoices, [{
        "id": invoice_id, "number": number,
        "order_id": source["id"] if order else None, "sale_id": None if order else source["id"],
        "salesperson_id": source.get("salesperson_id"), "branch_id": source["branch_id"],
        "total": source["total"], "currency": source["currency"], "status": "pending", "url": None,
        "created_at": ctx.now,
    }])
    return invoice_id


async def order_created(ctx: MutationContext, order: dict[str, Any], customer: dict[str, Any], company: str,
                        invoice_number: str) -> None:
    """An order was applied: its invoice, its confirmation notice, its owner's dashboard.
    Takes the rows the handler holds rather than reading them again."""
    tenant = ctx.principal.tenant_id
    invoice_id = await _pending_invoice(ctx, order, invoice_number, order=True)
    notice_id = await _confirmation_notice(ctx, order, customer, company)
    dashboard = [dashboard_of_user(order["salesperson_id"])]
    calls = [lambda jobs: jobs.invoice(tenant, invoice_id), lambda jobs: jobs.dashboards(tenant, dashboard)]
    if notice_id is not None:
        calls.append(lambda jobs: jobs.notice(tenant, notice_id))
    after_commit(ctx, *calls)


async def sale_completed(ctx: MutationContext, sale: dict[str, Any], invoice_number: str) -> None:
    """A POS sale was recorded: its invoice (receipt) and the shop's dashboard."""
    tenant = ctx.principal.tenant_id
    invoice_id = await _pending_invoice(ctx, sale, invoice_number, order=False)
    dashboard = [dashboard_of_branch(sale["branch_id"])]
    after_commit(ctx, lambda jobs: jobs.invoice(tenant, invoice_id), lambda jobs: jobs.dashboards(tenant, dashboard))


def payment_recorded(ctx: MutationContext) -> None:
    tenant, dashboard = ctx.principal.tenant_id, [dashboard_of_user(ctx.principal.user_id)]
    after_commit(ctx, lambda jobs: jobs.dashboards(tenant, dashboard))


async def _confirmation_notice(ctx: MutationContext, order: dict[str, Any], customer: dict[str, Any],
                               company: str) -> str | None:
    """Put the order confirmation in the outbox; its id is the de-duplication key.
    A customer with no e-mail address gets none (the row says ``skipped``)."""
    notice_id = f"order-confirmation:{order['id']}"
    lines = len(order["lines"])
    body = (
        f"Dear {customer['contact_name'] or customer['name']},\n\n"
        f"thank you for your order {order['number']} ({lines} line{'s' if lines != 1 else ''}, "
        f"total {format_money(order['total'], order['currency'])}).\n"
        f"We will send the goods and the invoice shortly.\n\n{company}\n"
    )
    await ctx.changes.append(notices, [dict(
        id=notice_id, tenant_id=ctx.principal.tenant_id, kind="order_confirmation",
        recipient=customer["email"], subject=f"{company}: order {order['number']} confirmed", body=body,
        status="pending" if customer["email"] else "skipped", attempts=0, created_at=ctx.now,
    )])
    return notice_id if customer["email"] else None
