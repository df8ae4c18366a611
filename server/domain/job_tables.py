"""Tables the background jobs write: requested documents (synced), stored PDF files,
and the notice outbox (not synced). The record of jobs that ran out of retries is
fieldsync's own (``sync.storage.jobs_failed``).

Migrations: ``server/migrations/versions/0002_jobs.py``; keyed by ``(tenant_id, id)`` since
``0005_tenant_scoped_ids.py`` (their ids derive from device-made UUIDs, unique per tenant).
"""

from __future__ import annotations

import sqlalchemy as sa

from .tables import invoices, metadata, ref, tenant_key

TIME = {"wire": "time"}

documents = sa.Table(
    "documents", metadata,
    sa.Column("id", sa.String(36)),  # UUID made on the device (report.request's `id`)
    sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("user_id", sa.Integer, nullable=False, info=ref("users")),  # who asked; the dataset's scope
    sa.Column("kind", sa.String(24), nullable=False),  # customer_statement | daily_sales
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("title", sa.String(120), nullable=False),
    sa.Column("status", sa.String(10), nullable=False),  # pending | ready | failed
    sa.Column("url", sa.String(200)),
    sa.Column("requested_at", sa.BigInteger, nullable=False, info=TIME),
    sa.Column("ready_at", sa.BigInteger, info=TIME),
    sa.Index("ix_documents_user", "tenant_id", "user_id"),
    tenant_key("documents"),
)

document_files = sa.Table(
    "document_files", metadata,
    sa.Column("id", sa.String(40)),  # the `{id}` of GET /documents/{id}
    sa.Column("tenant_id", sa.Integer, nullable=False),
    # The synced row the file belongs to: reading the file is allowed to whoever's datasets hold that row.
    sa.Column("source_table", sa.String(40), nullable=False),
    sa.Column("source_key", sa.String(40), nullable=False),
    sa.Column("filename", sa.String(80), nullable=False),
    sa.Column("content_type", sa.String(60), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    tenant_key("document_files"),
)

notices = sa.Table(
    "notices", metadata,
    sa.Column("id", sa.String(80)),  # the de-duplication key within the tenant, e.g. order-confirmation:<order id>
    sa.Column("tenant_id", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("recipient", sa.String(120)),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("status", sa.String(10), nullable=False),  # pending | sent | skipped | failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.String(300)),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("sent_at", sa.BigInteger),
    sa.Index("ix_notices_status", "status", "created_at"),
    tenant_key("notices"),
)

# The sweep looks for invoices still pending: an index rather than a scan of every invoice.
sa.Index("ix_invoices_status", invoices.c.status, invoices.c.created_at)
