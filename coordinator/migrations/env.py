"""Alembic's environment: always handed an open connection by coordinator.migrations (never a URL)."""

from alembic import context

from coordinator.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the ledger's migrations through coordinator.migrations, not the alembic command")
context.configure(
    connection=connection,
    target_metadata=metadata,
    compare_type=True,
    render_as_batch=True,  # SQLite cannot ALTER most things: autogenerate renders batch operations
)
with context.begin_transaction():
    context.run_migrations()
