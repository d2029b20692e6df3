"""Swarm settings beyond hyperparameters: access mode (open or token), task options and assets, data mode
(shared or local) and the differential-privacy guarantee of a local-data swarm. Also per-report averaging
traffic, per-node privacy spent, and volunteers' ban and erasure times.

Existing swarms stay open, shared-data swarms without options.

Revision ID: 0004_swarm_settings
Revises: 0003_web_indexes
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_swarm_settings"
down_revision = "0003_web_indexes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("swarms") as batch:
        batch.add_column(sa.Column("access", sa.String(length=8), nullable=False, server_default="open"))
        batch.add_column(sa.Column("task_options", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("data", sa.String(length=8), nullable=False, server_default="shared"))
        batch.add_column(sa.Column("privacy", sa.JSON(), nullable=True))
    with op.batch_alter_table("reports") as batch:
        batch.add_column(sa.Column("bytes_sent", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("bytes_received", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("epsilon_spent", sa.Float(), nullable=True))
    with op.batch_alter_table("volunteers") as batch:
        batch.add_column(sa.Column("banned_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("volunteers") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("banned_at")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("epsilon_spent")
    with op.batch_alter_table("reports") as batch:
        batch.drop_column("bytes_received")
        batch.drop_column("bytes_sent")
    with op.batch_alter_table("swarms") as batch:
        batch.drop_column("privacy")
        batch.drop_column("data")
        batch.drop_column("task_options")
        batch.drop_column("access")
