"""Developer commands for the ledger's migrations, run against a scratch SQLite ledger at head:

    python -m coordinator.migrations revision -m "add accounts" [--autogenerate]
    python -m coordinator.migrations check     # exits 1 if the models differ from the migrations' schema
"""

import argparse
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from coordinator.db import metadata
from coordinator.migrations import alembic_config, upgrade_head


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m coordinator.migrations", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    revision = commands.add_parser("revision", help="write a new revision file into coordinator/migrations/versions")
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument("--autogenerate", action="store_true", help="fill it with the models' differences")
    commands.add_parser("check", help="compare the models with the schema `upgrade head` builds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{Path(scratch) / 'ledger.sqlite3'}")
        with engine.connect() as connection:
            upgrade_head(connection)
            if args.command == "check":
                diff = compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), metadata)
                for change in diff:
                    print(change)
                print("models and migrations agree" if not diff else "models differ: add a revision", file=sys.stderr)
                sys.exit(1 if diff else 0)
            script = command.revision(alembic_config(connection), message=args.message, autogenerate=args.autogenerate)
            print(f"wrote {script.path}")
        engine.dispose()


if __name__ == "__main__":
    main()
