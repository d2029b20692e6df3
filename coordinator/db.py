"""The ledger's schema and engine: the only module that knows SQL dialects.

Tables are SQLAlchemy Core, for SQLite (the default) and PostgreSQL. The schema in the database is built by
the Alembic migrations in coordinator/migrations, run as `upgrade head` at every coordinator start
(`create_schema`), never by `metadata.create_all`. Upserts are the one dialect-specific statement, so
`upsert()` picks the right `insert` construct here.

To change the schema (a table, a column, an index):
  1. edit the tables below;
  2. `python -m coordinator.migrations revision -m "add accounts" --autogenerate` writes
     coordinator/migrations/versions/<date>_<rev>_add_accounts.py from the difference; read and fix it (name
     constraints and indexes; a NOT NULL column added to a table with rows needs a server_default or a data
     step; SQLite alters tables through `op.batch_alter_table`, which autogenerate already uses);
  3. write its downgrade() too (tests go down to the empty database and back up);
  4. `python -m coordinator.migrations check` must then report no difference, and
     tests/coordinator/test_migrations.py checks the same on SQLite and PostgreSQL.
Never edit a revision that has been released: add another one on top.
"""

import logging
import math
from datetime import datetime, timezone
from typing import Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    case,
    cast,
    event,
    func,
    literal_column,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from protocol.credit import RAC_HALF_LIFE_SECONDS, SECONDS_PER_DAY, recent_average

logger = logging.getLogger(__name__)
metadata = MetaData()

swarms = Table(
    "swarms",
    metadata,
    Column("swarm_id", String(63), primary_key=True),
    Column("title", String(200), nullable=False),
    Column("run_id", String(64), nullable=False, unique=True),
    Column("task", String(100), nullable=False),
    Column("hyperparameters", JSON, nullable=False),
    Column("flops_per_sample", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("access", String(8), nullable=False, server_default="open"),  # "open" | "token"
    Column("task_options", JSON),  # the manifest's task_options and assets
    Column("data", String(8), nullable=False, server_default="shared"),  # "shared" | "local"
    Column("privacy", JSON),  # protocol DifferentialPrivacy of a `data: local` swarm, or NULL
)

volunteers = Table(
    "volunteers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("team", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # the account's secrets, as SHA-256 hex (coordinator/accounts.py); NULL until a pre-accounts volunteer claims them
    Column("account_key_hash", String(64)),
    Column("attach_key_hash", String(64)),
    Column("banned_at", DateTime(timezone=True)),  # set when audits ban the volunteer: no tokens, no credit
    Column("deleted_at", DateTime(timezone=True)),  # set by `hearth account delete`: personal data erased
    Index("ix_volunteers_team", "team"),  # team pages count and list members without a scan
)

teams = Table(  # volunteers.team names a row here; a team outlives its members (its founder may leave)
    "teams",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("founder_id", Integer, ForeignKey("volunteers.id")),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

team_actions = Table(  # every accepted signed team action; the unique body hash refuses a replayed copy
    "team_actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("body_sha256", String(64), nullable=False, unique=True),
    Column("volunteer_id", Integer, ForeignKey("volunteers.id"), nullable=False, index=True),
    Column("action", String(16), nullable=False),
    Column("team", String(100)),
    Column("sent_at", Float, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

nodes = Table(
    "nodes",
    metadata,
    Column("node_id", String(32), primary_key=True),
    Column("public_key", String(64), nullable=False, unique=True),
    Column("volunteer_id", Integer, ForeignKey("volunteers.id"), nullable=False, index=True),
    Column("peer_id", String(128)),
    Column("device", String(64), nullable=False, default=""),
    Column("online", Boolean, nullable=False, default=False),
    Column("swarm_id", String(63)),
    Column("last_seen", DateTime(timezone=True)),
    Column("status_time", Float),
    Column("last_seq", BigInteger, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("detached_at", DateTime(timezone=True)),  # set when its account detached it: the key may report no more
    Column("epsilon_spent", Float),  # differential privacy the node has spent (data: local swarms)
    Index("ix_nodes_online", "online"),  # the website counts nodes online
)

reports = Table(
    "reports",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node_id", String(32), nullable=False),
    Column("volunteer_id", Integer, nullable=False),
    Column("swarm_id", String(63), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("samples", BigInteger, nullable=False),
    Column("compute_seconds", Float, nullable=False),
    Column("device", String(64), nullable=False),
    Column("loss", Float),
    Column("group_size", Integer, nullable=False),
    # 'pending' (received and verified, not yet granted) → 'granted' (one `grants` row) | 'rejected' (+ reason)
    Column("status", String(16), nullable=False),
    Column("reason", String(64)),
    Column("credit", Float, nullable=False, default=0.0),  # what the credit rule gives this report (granted or due)
    Column("bytes_sent", BigInteger),  # the node's averaging traffic for the epoch (NULL: older nodes)
    Column("bytes_received", BigInteger),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("node_id", "seq", name="uq_reports_node_seq"),
    Index("ix_reports_volunteer", "volunteer_id", "id"),
    Index("ix_reports_swarm_epoch", "swarm_id", "epoch"),  # swarm dashboards read the latest epochs
)

grants = Table(
    "grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("report_id", Integer, ForeignKey("reports.id"), nullable=False, unique=True),
    Column("rule", String(32), nullable=False),  # protocol.credit.CREDIT_RULE at the time of the grant
    Column("credit", Float, nullable=False),
    Column("granted_at", DateTime(timezone=True), nullable=False),
)

rejected_messages = Table(
    "rejected_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("reason", String(64), nullable=False),
    Column("detail", Text, nullable=False),
    Column("topic", String(300), nullable=False),
    Column("node_id", String(32), index=True),  # claimed by the topic or body; unverified unless noted in detail
    Column("seq", BigInteger),
    Column("payload_sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

audits = Table(  # spot checks of nodes' work (coordinator/audits.py): the request, the answer and the verdict
    "audits",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node_id", String(32), ForeignKey("nodes.node_id"), nullable=False),
    Column("swarm_id", String(63), nullable=False),
    Column("report_id", Integer, ForeignKey("reports.id")),  # the report whose grant waits for the verdict
    Column("epoch", BigInteger, nullable=False),
    Column("state_epoch", BigInteger, nullable=False),  # the checkpoint audited from (0: the initial model)
    Column("seed", BigInteger, nullable=False),
    Column("batch_size", Integer, nullable=False),
    Column("digest_size", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # 'open' → 'passed' | 'failed' | 'unanswered'
    Column("reason", String(200)),
    Column("loss", Float),  # as answered
    Column("expected_loss", Float),  # as recomputed by the validator
    Column("validator_seconds", Float, nullable=False, default=0.0),  # the audit's cost to the coordinator
    Column("node_seconds", Float, nullable=False, default=0.0),  # and to the node, as it said
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("answered_at", DateTime(timezone=True)),
    Index("ix_audits_node", "node_id", "id"),
)

node_trust = Table(  # what audits say about a node: its audit probability falls with passes in a row
    "node_trust",
    metadata,
    Column("node_id", String(32), ForeignKey("nodes.node_id"), primary_key=True),
    Column("passes_in_row", Integer, nullable=False, default=0),
    Column("audits", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("last_failure_at", DateTime(timezone=True)),
)


def _totals(name: str, key: Column, *extra) -> Table:
    """A maintained totals table: upserted in the grant's transaction, so leaderboards never scan reports.
    `rac` is BOINC's recent average credit (credits/day) as of `rac_updated_at`; readers decay it to now."""
    return Table(
        name,
        metadata,
        key,
        Column("credit", Float, nullable=False, default=0.0),
        Column("samples", BigInteger, nullable=False, default=0),
        Column("reports", BigInteger, nullable=False, default=0),  # granted reports
        Column("last_report_at", DateTime(timezone=True)),
        Column("rac", Float, nullable=False, default=0.0),
        Column("rac_updated_at", DateTime(timezone=True)),
        *extra,
        Index(f"ix_{name}_credit", "credit"),
    )


volunteer_totals = _totals(
    "volunteer_totals",
    Column("volunteer_id", Integer, ForeignKey("volunteers.id"), primary_key=True),
    Column("pending_credit", Float, nullable=False, default=0.0),  # what reports still pending would earn
    Column("pending_reports", BigInteger, nullable=False, default=0),
)
node_totals = _totals("node_totals", Column("node_id", String(32), ForeignKey("nodes.node_id"), primary_key=True))
team_totals = _totals("team_totals", Column("team", String(100), primary_key=True))  # teams are volunteers.team
swarm_totals = _totals("swarm_totals", Column("swarm_id", String(63), ForeignKey("swarms.swarm_id"), primary_key=True))


class LedgerUnavailable(OSError):
    """The ledger database cannot be used; the message is one line meant for the operator."""


# The async driver for a URL that names none (`postgresql://…` would otherwise mean psycopg2, not installed).
_ASYNC_DRIVERS = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}


def create_engine(url: str, **options) -> AsyncEngine:
    """An async engine; SQLite files get WAL, a busy timeout and enforced foreign keys. `options` go to
    SQLAlchemy (tests pass poolclass=NullPool so no connection outlives their event loop)."""
    try:
        parsed = make_url(url)
        parsed = parsed.set(drivername=_ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername))
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError("only SQLite and PostgreSQL are supported")
        if parsed.get_backend_name() == "sqlite":
            engine = create_async_engine(parsed, connect_args={"timeout": 30}, **options)
        else:
            engine = create_async_engine(parsed, pool_pre_ping=True, **options)
    except (ArgumentError, ImportError, ValueError) as e:
        raise ValueError(f"--db {_safe(url)} cannot be used: {_first_line(e)} "
                         f"(e.g. sqlite+aiosqlite:///ledger.sqlite3 or postgresql+asyncpg://user@host/db)") from None  # fmt: skip
    if engine.dialect.name == "sqlite":

        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)

    return engine


def sync_engine(engine: AsyncEngine):
    """A synchronous engine (the standard library's sqlite3) on the same SQLite file as `engine`, with the same
    pragmas: for work that runs whole in one worker thread (Ledger.write). One connection, kept: its prepared
    statements are reused batch after batch; NullPool would reopen the file and re-run the pragmas each time."""
    from sqlalchemy import create_engine as create_sync_engine
    from sqlalchemy.pool import SingletonThreadPool, StaticPool

    url = engine.url.set(drivername="sqlite+pysqlite")
    memory = url.database in (None, "", ":memory:")
    sync = create_sync_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                              poolclass=SingletonThreadPool if memory else StaticPool)  # fmt: skip
    event.listen(sync, "connect", _sqlite_pragmas)
    return sync


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    dbapi_connection.create_function("hearth_recent_average", 4, _sqlite_recent_average, deterministic=True)


def _sqlite_recent_average(average: float, updated_at: Optional[str], credit: float, now: float) -> float:
    """protocol.credit.recent_average on a row as SQLite stores it (DateTime as UTC text)."""
    updated = None if updated_at is None else datetime.fromisoformat(updated_at).replace(tzinfo=timezone.utc).timestamp()
    return recent_average(average or 0.0, updated, credit, now)


def recent_average_sql(dialect_name: str, average, updated_at, credit, now):
    """SQL for protocol.credit.recent_average(average, updated_at, credit, now) over a totals row's columns,
    `now` in POSIX seconds: the rule itself as a function on SQLite (registered on every connection), the same
    formula in SQL on PostgreSQL."""
    if dialect_name == "sqlite":
        return func.hearth_recent_average(average, updated_at, credit, now)
    def number(value: float):  # inline, not a bound parameter: DriverStatement binds only the named ones
        return literal_column(repr(float(value)), Float)

    elapsed = func.greatest(now - cast(func.extract("epoch", updated_at), Float), number(0))
    weight = func.exp(-elapsed * number(math.log(2) / RAC_HALF_LIFE_SECONDS))
    first = credit * number(math.log(2) * SECONDS_PER_DAY / RAC_HALF_LIFE_SECONDS)
    return case(
        (updated_at.is_(None), first),
        (number(1) - weight > number(1e-6), average * weight + (number(1) - weight) * credit / (elapsed / number(SECONDS_PER_DAY))),
        else_=average * weight + first,
    )


async def create_schema(engine: AsyncEngine) -> None:
    """Bring the ledger to the newest migration (creating it if new, adopting one from before migrations).
    Raises LedgerUnavailable when the database cannot be reached or refuses."""
    from coordinator.migrations import upgrade_head

    try:
        async with engine.connect() as connection:
            await connection.run_sync(upgrade_head)
    except (DBAPIError, OSError) as e:
        where = engine.url.render_as_string(hide_password=True)
        raise LedgerUnavailable(f"cannot open the ledger database {where}: {_first_line(e.orig if isinstance(e, DBAPIError) else e)}") from e


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(url)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def upsert(engine_or_dialect_name: str, table: Table):
    """The dialect's INSERT construct that supports ON CONFLICT (SQLite and PostgreSQL share the syntax)."""
    if engine_or_dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif engine_or_dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ValueError(f"database dialect {engine_or_dialect_name!r} is not supported (use SQLite or PostgreSQL)")
    return insert(table)


class DriverStatement:
    """A Core statement compiled once for a dialect and run through the driver's executemany with plain tuples.

    SQLAlchemy's executemany builds and type-processes a parameter dict per row (~3-8 us a row); on the ingest
    write path, with a handful of rows per report, that was as much as the SQL itself. Here the rows are tuples
    in the statement's own parameter order; the few columns whose type needs a bind processor for this
    dialect (DateTime on SQLite) go through it, the rest pass as they are. Every parameter is a named
    `bindparam`; `run` takes rows as tuples of those names' values, in the order `names` was given.
    """

    def __init__(self, statement, dialect, names: tuple[str, ...]):
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        order = list(compiled.positiontup)
        if set(order) != set(names):
            raise ValueError(f"statement parameters {sorted(set(order))} are not {sorted(names)}")
        position = {name: i for i, name in enumerate(names)}
        self._order = [position[name] for name in order]
        processors = [compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in order]
        self._processors = [(i, p) for i, p in enumerate(processors) if p is not None]

    def rows(self, rows) -> list[tuple]:
        order, processors = self._order, self._processors
        out = [[row[i] for i in order] for row in rows]
        for i, process in processors:
            last, done = None, None  # a batch's rows mostly share one time: convert it once
            for row in out:
                value = row[i]
                if value is not None:
                    if value is not last:
                        last, done = value, process(value)
                    row[i] = done
        return [tuple(row) for row in out]

    def run(self, conn, rows) -> None:
        """executemany of `rows` on `conn` (a synchronous Connection, e.g. in AsyncConnection.run_sync), in the
        caller's transaction."""
        if rows:
            conn.exec_driver_sql(self.sql, self.rows(rows))


_driver_statements: dict[tuple[str, str, str], DriverStatement] = {}


def driver_statement(key: str, dialect, build) -> DriverStatement:
    """The DriverStatement `build()` → (statement, names) for this dialect and driver, compiled at first use."""
    found = _driver_statements.get((key, dialect.name, dialect.driver))
    if found is None:
        statement, names = build()
        found = DriverStatement(statement, dialect, tuple(names))
        _driver_statements[(key, dialect.name, dialect.driver)] = found
    return found
