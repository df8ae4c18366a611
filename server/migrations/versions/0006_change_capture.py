"""change capture: the staging tables of the capture triggers

The triggers themselves are generated from the declared datasets and installed after the
migrations by ``sync.capture.install`` (``fieldsync migrate``), so a change of the
declarations regenerates them without a migration.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 20:20:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    # Unlogged on PostgreSQL: a row lives from a write to the commit of its own transaction,
    # so there is nothing to recover after a crash, and no WAL is worth writing for it.
    unlogged = {"prefixes": ["UNLOGGED"]} if postgres else {}
    op.create_table(
        "change_stage",
        sa.Column("n", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("txid", sa.BigInteger(), nullable=True),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("op", sa.SmallInteger(), nullable=False),
        **unlogged,
    )
    op.create_index("ix_change_stage_txid", "change_stage", ["txid", "tenant_id"])
    op.create_table(
        "change_txn",
        sa.Column("txid", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("tenant_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("txid", "tenant_id"),
        **unlogged,
    )
    op.create_table(
        "capture_state",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("installed_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("capture_state")
    op.drop_table("change_txn")
    op.drop_index("ix_change_stage_txid", "change_stage")
    op.drop_table("change_stage")
