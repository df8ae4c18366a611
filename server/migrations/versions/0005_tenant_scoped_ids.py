"""tenant-scoped ids: device-made UUIDs and the ids derived from them keyed by (tenant_id, id)

Orders, sales, payments, visits and requested documents carry UUIDs made on devices;
invoices (``inv-<order or sale id>``), stored files and notices
(``order-confirmation:<order id>``) derive their ids from those, and dashboards
(``user:<id>``, ``branch:<id>``) from ids another tenant's rows could name. Keyed by
``id`` alone they were unique across tenants: a tenant learnt that another's UUID existed
(``CONFLICT``) and could squat it, and a dashboard of one tenant could block another's.

Existing rows keep their ids: the old keys were unique across all tenants, so they are
unique per tenant too, and the ids' formats do not change. A downgrade fails once two
tenants share an id.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 15:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = ("orders", "sales", "payments", "visits", "invoices", "dashboards", "documents", "document_files", "notices")


def _rekey(table: str, columns: list[str]) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.drop_constraint(f"{table}_pkey", type_="primary")
            batch.create_primary_key(f"{table}_pkey", columns)
        return
    # SQLite cannot alter a key, and its old key has no name to drop: batch mode copies the
    # table into one declared with the new key. The copy starts from the table as reflected,
    # with the old key's column flags cleared (a column flagged primary but left out of the
    # new key is an SAWarning, and may become an error).
    reflected = sa.Table(table, sa.MetaData(), autoload_with=bind)
    for column in reflected.c:
        column.primary_key = False
    with op.batch_alter_table(table, recreate="always", copy_from=reflected) as batch:
        batch.create_primary_key(f"{table}_pkey", columns)


def upgrade() -> None:
    for table in TABLES:
        _rekey(table, ["tenant_id", "id"])


def downgrade() -> None:
    for table in TABLES:
        _rekey(table, ["id"])
