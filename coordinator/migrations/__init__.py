"""The ledger's Alembic migrations, configured in code: no alembic.ini, nothing to set up at run time.

`upgrade_head(connection)` runs at every coordinator start (coordinator.db.create_schema), inside the caller's
transaction, for SQLite and PostgreSQL alike. Developers add a revision with
    python -m coordinator.migrations revision -m "add accounts" --autogenerate
(see coordinator/db.py for the steps).
"""

from contextlib import contextmanager
from pathlib import Path

from typing import Optional

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

SCRIPT_LOCATION = Path(__file__).parent
BASELINE = "0001_baseline"  # the schema when migrations began; ledgers from before then are adopted by it
# Two coordinators starting at once on one PostgreSQL database must not migrate it concurrently.
_PG_MIGRATION_LOCK = 0x4865_6172_7468  # "Hearth"


def alembic_config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


def upgrade_head(connection) -> None:
    """Bring the ledger on this synchronous connection (`AsyncConnection.run_sync`), fresh from the pool and
    outside a transaction, to the newest revision, and commit."""
    with _migrating(connection):
        command.upgrade(alembic_config(connection), "head")


def downgrade_to(connection, revision: str) -> None:
    """Undo the revisions after `revision`, and commit (tests use it to rebuild the layouts of older ledgers)."""
    with _migrating(connection):
        command.downgrade(alembic_config(connection), revision)


@contextmanager
def _migrating(connection):
    """One transaction, serialized across coordinators on PostgreSQL. On SQLite, foreign keys are off meanwhile:
    batch operations rebuild a table by copy, drop and rename, which enforced keys would refuse (the pragma is
    ignored inside a transaction, so it goes first and is restored after the commit); they are checked before,
    when a revision was applied (the check reads every table: ~50 s on a ledger of 20M reports, at every start)."""
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    try:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
        before = current_revision(connection)
        yield
        if sqlite and current_revision(connection) != before:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            if broken:
                raise RuntimeError(f"the migration left rows whose foreign keys point nowhere: {broken[:5]}")
        connection.commit()
    finally:
        if sqlite:
            connection.rollback()
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


def current_revision(connection) -> Optional[str]:
    return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
