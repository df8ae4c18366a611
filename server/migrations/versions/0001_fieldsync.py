"""fieldsync's own tables: the change log and its capture, devices, the mutation ledger,
hot snapshot pages, revoked tokens, the jobs that ran out of retries. A company's tables are never touched here; the domain
it serves migrates its own (``Domain.migrations``).

Squashed from the single chain of releases before the domain became a plug-in (0001-0006,
which also created the bundled domain's tables); ``server.migrations`` stamps a database
migrated by that chain instead of running this.

Revision ID: fieldsync_0001
Revises:
Create Date: 2026-12-07
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = 'fieldsync_0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Unlogged on PostgreSQL: a staged row lives from a write to the commit of its own
    # transaction, so there is nothing to recover after a crash and no WAL worth writing.
    unlogged = {"prefixes": ["UNLOGGED"]} if op.get_bind().dialect.name == "postgresql" else {}
    op.create_table('capture_state',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('installed_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('change_log',
    sa.Column('tenant_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('bucket', sa.String(length=200), nullable=False),
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('op', sa.SmallInteger(), nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'bucket', 'seq', 'key')
    )
    with op.batch_alter_table('change_log', schema=None) as batch_op:
        batch_op.create_index('ix_change_log_key', ['tenant_id', 'bucket', 'key'], unique=False)
        batch_op.create_index('ix_change_log_seq', ['tenant_id', 'seq'], unique=False)

    op.create_table('change_stage',
    sa.Column('n', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('txid', sa.BigInteger(), nullable=True),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('bucket', sa.String(length=200), nullable=False),
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('op', sa.SmallInteger(), nullable=False),
    sa.PrimaryKeyConstraint('n'),
    **unlogged,
    )
    with op.batch_alter_table('change_stage', schema=None) as batch_op:
        batch_op.create_index('ix_change_stage_txid', ['txid', 'tenant_id'], unique=False)

    op.create_table('change_txn',
    sa.Column('txid', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('tenant_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.PrimaryKeyConstraint('txid', 'tenant_id'),
    **unlogged,
    )
    op.create_table('devices',
    sa.Column('tenant_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('last_mutation_id', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('first_seen', sa.BigInteger(), nullable=False),
    sa.Column('last_seen', sa.BigInteger(), nullable=False),
    sa.Column('acked_seq', sa.BigInteger(), nullable=True),
    sa.Column('app_version', sa.String(length=64), nullable=True),
    sa.Column('last_error', sa.String(length=40), nullable=True),
    sa.Column('revoked_at', sa.BigInteger(), nullable=True),
    sa.Column('enrolled_at', sa.BigInteger(), nullable=True),
    sa.Column('epoch', sa.Integer(), server_default='0', nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=True),
    sa.Column('token_exp', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('tenant_id', 'client_id')
    )
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.create_index('ix_devices_user', ['tenant_id', 'user_id'], unique=False)

    op.create_table('hot_pages',
    sa.Column('tenant_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('dataset', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=32), nullable=False),
    sa.Column('page', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('pages', sa.Integer(), nullable=False),
    sa.Column('rows', sa.LargeBinary(), nullable=False),
    sa.Column('built_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'dataset', 'scope', 'page')
    )
    op.create_table('log_head',
    sa.Column('tenant_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('seq', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('horizon', sa.BigInteger(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('tenant_id')
    )
    op.create_table('mutation_ledger',
    sa.Column('id', sa.String(length=180), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('epoch', sa.Integer(), server_default='0', nullable=False),
    sa.Column('mutation_id', sa.BigInteger(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('args', sa.JSON(), nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('code', sa.String(length=40), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('applied_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'client_id', 'epoch', 'mutation_id', name='uq_ledger_client_mutation')
    )
    with op.batch_alter_table('mutation_ledger', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_user', ['tenant_id', 'user_id', 'status'], unique=False)

    op.create_table('revoked_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('revoked_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('token_hash')
    )
    op.create_table('jobs_failed',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task', sa.String(length=60), nullable=False),
    sa.Column('task_id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.Integer(), nullable=True),
    sa.Column('args', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('failed_at', sa.BigInteger(), nullable=False),
    sa.Column('retried_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('jobs_failed', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_failed_at', ['failed_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs_failed', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_failed_at')

    op.drop_table('jobs_failed')
    op.drop_table('revoked_tokens')
    with op.batch_alter_table('mutation_ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_user')

    op.drop_table('mutation_ledger')
    op.drop_table('log_head')
    op.drop_table('hot_pages')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_index('ix_devices_user')

    op.drop_table('devices')
    op.drop_table('change_txn')
    with op.batch_alter_table('change_stage', schema=None) as batch_op:
        batch_op.drop_index('ix_change_stage_txid')

    op.drop_table('change_stage')
    with op.batch_alter_table('change_log', schema=None) as batch_op:
        batch_op.drop_index('ix_change_log_seq')
        batch_op.drop_index('ix_change_log_key')

    op.drop_table('change_log')
    op.drop_table('capture_state')
