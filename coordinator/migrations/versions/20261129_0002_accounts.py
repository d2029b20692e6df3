"""Accounts: a volunteer's account key and attach key (SHA-256 only), and nodes.detached_at.

Volunteers already in the ledger get no keys here (the coordinator never sees the secrets it stores hashes of):
each claims them once, through a fresh registration signed by its node key, the first time `hearth join` runs
after the upgrade (coordinator/accounts.py claim_keys).

Revision ID: 0002_accounts
Revises: 0001_baseline
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_accounts"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("volunteers") as batch:
        batch.add_column(sa.Column("account_key_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("attach_key_hash", sa.String(length=64), nullable=True))
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("detached_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("detached_at")
    with op.batch_alter_table("volunteers") as batch:
        batch.drop_column("attach_key_hash")
        batch.drop_column("account_key_hash")
