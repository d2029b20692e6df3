"""Indexes for the website: volunteers by team (team pages), nodes online (headline count) and reports by swarm
and epoch (swarm dashboards).

On a large existing ledger this builds two indexes at start (about a minute for 20M reports on SQLite).

Revision ID: 0003_web_indexes
Revises: 0002_accounts
Create Date: 2026-11-29
"""

from alembic import op

revision = "0003_web_indexes"
down_revision = "0002_accounts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_volunteers_team", "volunteers", ["team"], unique=False)
    op.create_index("ix_nodes_online", "nodes", ["online"], unique=False)
    op.create_index("ix_reports_swarm_epoch", "reports", ["swarm_id", "epoch"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_reports_swarm_epoch", table_name="reports")
    op.drop_index("ix_nodes_online", table_name="nodes")
    op.drop_index("ix_volunteers_team", table_name="volunteers")
