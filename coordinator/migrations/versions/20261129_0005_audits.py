"""Audits of nodes' work and each node's audit record (trust): coordinator/audits.py.

Revision ID: 0005_audits
Revises: 0004_swarm_settings
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_audits"
down_revision = "0004_swarm_settings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audits",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node_id", sa.String(length=32), nullable=False),
        sa.Column("swarm_id", sa.String(length=63), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("state_epoch", sa.BigInteger(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("digest_size", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("expected_loss", sa.Float(), nullable=True),
        sa.Column("validator_seconds", sa.Float(), nullable=False),
        sa.Column("node_seconds", sa.Float(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.node_id"], name="fk_audits_node_id_nodes"),
        sa.ForeignKeyConstraint(["report_id"], ["reports.id"], name="fk_audits_report_id_reports"),
        sa.PrimaryKeyConstraint("id", name="pk_audits"),
    )
    op.create_index("ix_audits_node", "audits", ["node_id", "id"], unique=False)
    op.create_table(
        "node_trust",
        sa.Column("node_id", sa.String(length=32), nullable=False),
        sa.Column("passes_in_row", sa.Integer(), nullable=False),
        sa.Column("audits", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.node_id"], name="fk_node_trust_node_id_nodes"),
        sa.PrimaryKeyConstraint("node_id", name="pk_node_trust"),
    )


def downgrade() -> None:
    op.drop_table("node_trust")
    op.drop_index("ix_audits_node", table_name="audits")
    op.drop_table("audits")
