"""Baseline: the ledger as it was when migrations began (reports → grants → maintained totals, teams).

A new database gets every table. A ledger written before migrations (no alembic_version table) keeps its
tables and gets what it lacks: the tables and volunteer_totals columns added with grants and per-node/team/swarm
totals, grants rows and totals derived from its granted reports, and a teams row for each team its volunteers
name. Recent average credit of an upgraded ledger starts at 0: the old one kept no history of it.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-29
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

logger = logging.getLogger("coordinator.migrations")


def _totals_columns():
    return [
        sa.Column("credit", sa.Float(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.Column("last_report_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rac", sa.Float(), nullable=False),
        sa.Column("rac_updated_at", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    adopting = "volunteers" in existing  # a ledger created before migrations, by metadata.create_all

    def create_table(name, *columns, indexes=()):
        if name in existing:
            return
        op.create_table(name, *columns)
        for index_name, index_columns in indexes:
            op.create_index(index_name, name, index_columns, unique=False)

    create_table(
        "swarms",
        sa.Column("swarm_id", sa.String(length=63), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("flops_per_sample", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("swarm_id"),
        sa.UniqueConstraint("run_id"),
    )
    create_table(
        "volunteers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("team", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    create_table(
        "teams",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("founder_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["founder_id"], ["volunteers.id"]),
        sa.PrimaryKeyConstraint("name"),
    )
    create_table(
        "team_actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("volunteer_id", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("team", sa.String(length=100), nullable=True),
        sa.Column("sent_at", sa.Float(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["volunteer_id"], ["volunteers.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("body_sha256"),
        indexes=[("ix_team_actions_volunteer_id", ["volunteer_id"])],
    )
    create_table(
        "nodes",
        sa.Column("node_id", sa.String(length=32), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("volunteer_id", sa.Integer(), nullable=False),
        sa.Column("peer_id", sa.String(length=128), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("swarm_id", sa.String(length=63), nullable=True),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status_time", sa.Float(), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["volunteer_id"], ["volunteers.id"]),
        sa.PrimaryKeyConstraint("node_id"),
        sa.UniqueConstraint("public_key"),
        indexes=[("ix_nodes_volunteer_id", ["volunteer_id"])],
    )
    create_table(
        "reports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node_id", sa.String(length=32), nullable=False),
        sa.Column("volunteer_id", sa.Integer(), nullable=False),
        sa.Column("swarm_id", sa.String(length=63), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("compute_seconds", sa.Float(), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("group_size", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("credit", sa.Float(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("node_id", "seq", name="uq_reports_node_seq"),
        indexes=[("ix_reports_volunteer", ["volunteer_id", "id"])],
    )
    create_table(
        "grants",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("credit", sa.Float(), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["report_id"], ["reports.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("report_id"),
    )
    create_table(
        "rejected_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("topic", sa.String(length=300), nullable=False),
        sa.Column("node_id", sa.String(length=32), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        indexes=[("ix_rejected_messages_node_id", ["node_id"])],
    )
    create_table(
        "volunteer_totals",
        sa.Column("volunteer_id", sa.Integer(), nullable=False),
        *_totals_columns(),
        sa.Column("pending_credit", sa.Float(), nullable=False),
        sa.Column("pending_reports", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["volunteer_id"], ["volunteers.id"]),
        sa.PrimaryKeyConstraint("volunteer_id"),
        indexes=[("ix_volunteer_totals_credit", ["credit"])],
    )
    create_table(
        "node_totals",
        sa.Column("node_id", sa.String(length=32), nullable=False),
        *_totals_columns(),
        sa.ForeignKeyConstraint(["node_id"], ["nodes.node_id"]),
        sa.PrimaryKeyConstraint("node_id"),
        indexes=[("ix_node_totals_credit", ["credit"])],
    )
    create_table(
        "team_totals",
        sa.Column("team", sa.String(length=100), nullable=False),
        *_totals_columns(),
        sa.PrimaryKeyConstraint("team"),
        indexes=[("ix_team_totals_credit", ["credit"])],
    )
    create_table(
        "swarm_totals",
        sa.Column("swarm_id", sa.String(length=63), nullable=False),
        *_totals_columns(),
        sa.ForeignKeyConstraint(["swarm_id"], ["swarms.swarm_id"]),
        sa.PrimaryKeyConstraint("swarm_id"),
        indexes=[("ix_swarm_totals_credit", ["credit"])],
    )
    if adopting:
        _fill_in_older_ledger(existing)


# Columns that ledgers written before grants, per-node/team/swarm totals and recent average credit lack.
def _added_volunteer_totals_columns() -> list[sa.Column]:
    return [
        sa.Column("rac", sa.Float(), nullable=False, server_default="0"),
        sa.Column("rac_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pending_credit", sa.Float(), nullable=False, server_default="0"),
        sa.Column("pending_reports", sa.BigInteger(), nullable=False, server_default="0"),
    ]
_DERIVED_TOTALS = {  # table → (key column, its value in a granted report joined with its volunteer)
    "node_totals": ("node_id", "r.node_id"), "swarm_totals": ("swarm_id", "r.swarm_id"), "team_totals": ("team", "v.team"),
}  # fmt: skip


def _fill_in_older_ledger(existing: set[str]) -> None:
    """Add the volunteer_totals columns it lacks; derive the rows of the grants and totals tables just created
    from its granted reports; give each team named only in volunteers.team its teams row."""
    present = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("volunteer_totals")}
    created = {"grants", *_DERIVED_TOTALS} - existing
    missing = [column for column in _added_volunteer_totals_columns() if column.name not in present]
    if created or missing:
        logger.warning("Upgrading a ledger written by an older Hearth: adding %s",
                       ", ".join([*sorted(created), *(f"volunteer_totals.{c.name}" for c in missing)]))  # fmt: skip
    for column in missing:
        op.add_column("volunteer_totals", column)
    granted = "FROM reports r JOIN volunteers v ON v.id = r.volunteer_id WHERE r.status = 'granted'"
    if "grants" in created:
        op.execute(f"INSERT INTO grants (report_id, rule, credit, granted_at) "
                   f"SELECT r.id, 'flops-v1', r.credit, r.received_at {granted}")  # fmt: skip
    for table, (column, key) in _DERIVED_TOTALS.items():
        if table in created:
            op.execute(f"INSERT INTO {table} ({column}, credit, samples, reports, last_report_at, rac) "
                       f"SELECT {key}, SUM(r.credit), SUM(r.samples), COUNT(*), MAX(r.received_at), 0 {granted} "
                       f"AND {key} IS NOT NULL GROUP BY {key}")  # fmt: skip
    _add_missing_teams()


def _add_missing_teams() -> None:
    """Ledgers from before the teams table named teams only in volunteers.team: give each such team its row,
    founded by its earliest member."""
    op.execute(
        "INSERT INTO teams (name, founder_id, created_at) SELECT v.team, MIN(v.id), MIN(v.created_at) "
        "FROM volunteers v WHERE v.team IS NOT NULL AND v.team NOT IN (SELECT name FROM teams) GROUP BY v.team"
    )


def downgrade() -> None:
    for name in ("swarm_totals", "team_totals", "node_totals", "volunteer_totals", "rejected_messages", "grants",
                 "reports", "nodes", "team_actions", "teams", "volunteers", "swarms"):  # fmt: skip
        op.drop_table(name)
