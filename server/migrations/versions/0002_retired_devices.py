"""Stale devices: ``devices.retired_at`` (set by the ``retire_stale_devices`` task for a
device unseen for ``FIELDSYNC_STALE_DEVICE_DAYS``) and ``devices.forgot_through`` (the
highest mutation id whose ledger entry went with the retirement).

Revision ID: fieldsync_0002
Revises: fieldsync_0001
Create Date: 2026-12-07
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = 'fieldsync_0002'
down_revision = 'fieldsync_0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('devices') as batch:
        batch.add_column(sa.Column('retired_at', sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column('forgot_through', sa.BigInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('devices') as batch:
        batch.drop_column('forgot_through')
        batch.drop_column('retired_at')
