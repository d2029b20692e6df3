"""The ledger's Alembic migrations on real SQLite and PostgreSQL: `upgrade head` builds exactly the models'
schema, a ledger created before migrations is adopted without loss, and every revision can be undone."""

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select
from sqlalchemy.pool import NullPool

from coordinator import db, migrations
from tests.coordinator.helpers import SWARM, make_ledger


def schema_differences(connection) -> list:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return compare_metadata(context, db.metadata)


def test_upgrade_head_builds_the_models_schema(ledger_url):
    async def scenario():
        engine = db.create_engine(ledger_url, poolclass=NullPool)
        try:
            await db.create_schema(engine)
            await db.create_schema(engine)  # every start runs it: the second one changes nothing
            async with engine.connect() as conn:
                assert await conn.run_sync(schema_differences) == []
                assert await conn.run_sync(migrations.current_revision) == migrations.head_revision()
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_a_ledger_from_before_migrations_is_adopted_as_it_is(tmp_path, ledger_url):
    """The layout `metadata.create_all` made before migrations began (the baseline, no alembic_version table)."""

    async def scenario():
        ledger = await make_ledger(tmp_path, ledger_url)
        async with ledger.engine.connect() as conn:
            await conn.run_sync(migrations.downgrade_to, migrations.BASELINE)
        async with ledger.engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE alembic_version")
        await db.create_schema(ledger.engine)
        async with ledger.engine.connect() as conn:
            assert await conn.run_sync(migrations.current_revision) == migrations.head_revision()
            assert await conn.run_sync(schema_differences) == []
            swarms = (await conn.execute(select(db.swarms.c.swarm_id, db.swarms.c.hyperparameters))).all()
            assert [(s, h) for s, h in swarms] == [(SWARM["swarm_id"], SWARM["hyperparameters"])]
        await ledger.engine.dispose()

    asyncio.run(scenario())


def test_every_revision_downgrades_to_an_empty_database_and_back(ledger_url):
    async def scenario():
        engine = db.create_engine(ledger_url, poolclass=NullPool)
        try:
            await db.create_schema(engine)
            async with engine.connect() as conn:
                await conn.run_sync(migrations.downgrade_to, "base")
                assert await conn.run_sync(lambda c: inspect(c).get_table_names()) in ([], ["alembic_version"])
            await db.create_schema(engine)
            async with engine.connect() as conn:
                assert await conn.run_sync(schema_differences) == []
                assert (await conn.execute(select(func.count()).select_from(db.reports))).scalar_one() == 0
        finally:
            await engine.dispose()

    asyncio.run(scenario())
