"""devices bound to their owner: ledger epochs, presented tokens, revoked tokens

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 13:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("token_hash", sa.String(length=64)))
        batch.add_column(sa.Column("token_exp", sa.BigInteger()))
        batch.create_index("ix_devices_user", ["tenant_id", "user_id"])
    with op.batch_alter_table("mutation_ledger") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_constraint("uq_ledger_client_mutation", type_="unique")
        batch.create_unique_constraint("uq_ledger_client_mutation", ["tenant_id", "client_id", "epoch", "mutation_id"])
    op.create_table(
        "revoked_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )


def downgrade() -> None:
    op.drop_table("revoked_tokens")
    with op.batch_alter_table("mutation_ledger") as batch:
        batch.drop_constraint("uq_ledger_client_mutation", type_="unique")
        batch.create_unique_constraint("uq_ledger_client_mutation", ["tenant_id", "client_id", "mutation_id"])
        batch.drop_column("epoch")
    with op.batch_alter_table("devices") as batch:
        batch.drop_index("ix_devices_user")
        batch.drop_column("token_exp")
        batch.drop_column("token_hash")
        batch.drop_column("epoch")
