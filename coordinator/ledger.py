"""The credit ledger: the credit rule, registrations, swarms, and idempotent batched writes of ingest results.

Credit is computed here, never taken from a node: accepted samples × the swarm's measured FLOPs per sample,
in BOINC cobblestones (1 credit = 4.32e11 FLOPs; the rule is protocol/credit.py, which nodes use to estimate
pending credit). A report is appended `pending` (or `granted` at once); a grant is a `grants` row naming the
rule, and the report is then `granted`. Every grant upserts the node, volunteer, team and swarm totals (credit,
samples, reports and BOINC's recent average credit) in the same transaction, so leaderboards read totals tables
and never scan reports.

Today ingest verifies everything it can at receipt, so reports are granted in the transaction that writes them;
a report written with status 'pending' (e.g. waiting for its epoch to be confirmed) stays so, counted in the
volunteer's pending credit, until `grant_pending` grants it.
"""

import asyncio
import logging
import time
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import Float, bindparam, func, insert, literal_column, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator import accounts, db
from coordinator.teams import join_or_create
from protocol.credit import CREDIT_RULE, FLOPS_PER_CREDIT, credit_for, recent_average  # noqa: F401 (the shared rule; ingest imports it from here)
from protocol.messages import MAX_CLOCK_SKEW, VolunteerRegistration
from protocol.signing import node_id_for

logger = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class NameTaken(Exception):
    """The display name belongs to another key."""


class SwarmExists(Exception):
    """A swarm with that id already exists."""


@dataclass
class NodeInfo:
    public_key: str
    volunteer_id: int
    last_seq: int
    status_time: float = 0.0


@dataclass
class SwarmInfo:
    run_id: str
    flops_per_sample: int


@dataclass
class Batch:
    """Ingest results to write in one transaction."""

    # verified reports (reports-table values): status 'granted' is granted in the same transaction, 'pending' waits
    grants: list[dict] = field(default_factory=list)
    rejections: list[dict] = field(default_factory=list)
    statuses: dict[str, dict] = field(default_factory=dict)  # node_id → latest status values

    def __bool__(self) -> bool:
        return bool(self.grants or self.rejections or self.statuses)


class Ledger:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.nodes: dict[str, NodeInfo] = {}
        self.swarms: dict[str, SwarmInfo] = {}
        self._sync_engine = None  # SQLite: the one `write` uses (db.sync_engine), made at the first write

    async def load(self) -> None:
        """Fill the caches the ingest loop reads synchronously (node keys, sequence numbers, swarms)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(db.nodes.c.node_id, db.nodes.c.public_key, db.nodes.c.volunteer_id, db.nodes.c.last_seq,
                       db.nodes.c.status_time).where(db.nodes.c.detached_at.is_(None))
            )  # fmt: skip
            self.nodes = {r.node_id: NodeInfo(r.public_key, r.volunteer_id, r.last_seq, r.status_time or 0.0) for r in rows}
            rows = await conn.execute(select(db.swarms.c.swarm_id, db.swarms.c.run_id, db.swarms.c.flops_per_sample))
            self.swarms = {r.swarm_id: SwarmInfo(r.run_id, r.flops_per_sample) for r in rows}

    async def refresh_node(self, node_id: str) -> Optional[NodeInfo]:
        """Cache miss path: a node registered through another replica of the coordinator."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(db.nodes).where(db.nodes.c.node_id == node_id))).first()
        if row is None or row.detached_at is not None:  # a detached node's key is revoked
            return None
        info = NodeInfo(row.public_key, row.volunteer_id, row.last_seq, row.status_time or 0.0)
        self.nodes[node_id] = info
        return info

    async def refresh_swarm(self, swarm_id: str) -> Optional[SwarmInfo]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(db.swarms).where(db.swarms.c.swarm_id == swarm_id))).first()
        if row is None:
            return None
        self.swarms[swarm_id] = info = SwarmInfo(row.run_id, row.flops_per_sample)
        return info

    async def register(self, reg: VolunteerRegistration) -> tuple[dict, bool]:
        """Create the volunteer and node for a verified registration. Idempotent per key: (record, created)."""
        node_id = node_id_for(reg.public_key)
        async with self.engine.begin() as conn:
            existing = await _registered(conn, node_id)
            if existing is not None:
                return {**existing, **await _keys_for_registered(conn, node_id, reg)}, False
            taken = (await conn.execute(select(db.volunteers.c.id).where(db.volunteers.c.name == reg.name))).first()
            if taken is not None:
                raise NameTaken(f"the name {reg.name!r} is already taken")
            now = utcnow()
            try:
                result = await conn.execute(insert(db.volunteers).values(name=reg.name, team=reg.team, created_at=now))
                volunteer_id = result.inserted_primary_key[0]
                if reg.team is not None:  # joins the team, creating it (founded by this volunteer) if new
                    await join_or_create(conn, self.engine.dialect.name, volunteer_id, reg.team, now)
                await conn.execute(insert(db.volunteer_totals).values(volunteer_id=volunteer_id))
                keys = await accounts.issue_keys(conn, volunteer_id)
                await conn.execute(
                    insert(db.nodes).values(
                        node_id=node_id, public_key=reg.public_key, volunteer_id=volunteer_id, peer_id=reg.peer_id,
                        device="", online=False, last_seq=0, created_at=now,
                    )
                )  # fmt: skip
            except IntegrityError as e:  # a concurrent registration won the race
                raise NameTaken(f"the name {reg.name!r} is already taken") from e
        self.nodes[node_id] = NodeInfo(reg.public_key, volunteer_id, 0)
        logger.info("Registered volunteer %s (node %s)", reg.name, node_id)
        return {"name": reg.name, "team": reg.team, "node_id": node_id, **keys}, True

    async def create_swarm(self, values: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            exists = await conn.execute(select(db.swarms.c.swarm_id).where(db.swarms.c.swarm_id == values["swarm_id"]))
            if exists.first() is not None:
                raise SwarmExists(f"swarm {values['swarm_id']!r} already exists")
            await conn.execute(insert(db.swarms).values(**values, created_at=utcnow()))
        self.swarms[values["swarm_id"]] = SwarmInfo(values["run_id"], values["flops_per_sample"])
        logger.info("Created swarm %s (run_id %s)", values["swarm_id"], values["run_id"])

    async def count_swarms(self) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(db.swarms))).scalar_one()

    async def write(self, batch: Batch, now: Optional[datetime] = None) -> None:
        """Write reports (pending, then granted with their grant rows and totals), rejections and presence
        updates in one transaction: all of it or none of it.

        On SQLite the whole transaction runs in one worker thread on a plain sqlite3 connection of its own
        (db.sync_engine): through aiosqlite every statement is a round trip between threads (~0.5 ms of CPU
        each, a dozen per batch), which at moderate load cost more than the SQL. PostgreSQL runs it on the
        async engine (asyncpg is a network round trip per statement either way)."""
        if not batch:
            return
        now = now or utcnow()
        if self.engine.dialect.name == "sqlite":
            if self._sync_engine is None:
                self._sync_engine = db.sync_engine(self.engine)
                weakref.finalize(self, self._sync_engine.dispose)  # its one connection closes with the ledger
            await asyncio.to_thread(self._write_sync, batch, now)
        else:
            async with self.engine.begin() as conn:
                await conn.run_sync(_write_batch, batch, now)

    def _write_sync(self, batch: Batch, now: datetime) -> None:
        with self._sync_engine.begin() as conn:
            _write_batch(conn, batch, now)

    async def grant_pending(self, report_ids: list[int], now: Optional[datetime] = None) -> int:
        """Grant stored pending reports (those of `report_ids` still pending), in one transaction; how many."""
        async with self.engine.begin() as conn:
            rows = [dict(r) for r in (await conn.execute(
                select(db.reports).where(db.reports.c.id.in_(report_ids), db.reports.c.status == "pending")
                .with_for_update()
            )).mappings()]  # fmt: skip
            if rows:
                await conn.run_sync(_grant, [(r["id"], r) for r in rows], now or utcnow())
                await conn.run_sync(_add_pending, rows, -1)
        return len(rows)

    async def last_epoch(self, node_id: str, swarm_id: str) -> int:
        """The latest epoch this node reported in this swarm and was not refused for (-1: none)."""
        r = db.reports
        async with self.engine.connect() as conn:
            latest = (await conn.execute(select(func.max(r.c.epoch)).where(
                r.c.node_id == node_id, r.c.swarm_id == swarm_id, r.c.status != "rejected"))).scalar()  # fmt: skip
        return -1 if latest is None else latest

    async def settle(self, grants: dict[int, tuple[int, float, Optional[str]]], rejections: dict[int, str],
                     now: Optional[datetime] = None) -> int:  # fmt: skip
        """Decide stored pending reports in one transaction: `grants` maps report id → (believed samples, credit,
        reason or None), `rejections` report id → reason. Reports no longer pending are left alone; how many
        were decided. The report keeps its claimed samples; credit and totals count the believed ones."""
        ids = list(grants) + list(rejections)
        if not ids:
            return 0
        async with self.engine.begin() as conn:
            rows = [dict(r) for r in (await conn.execute(
                select(db.reports).where(db.reports.c.id.in_(ids), db.reports.c.status == "pending").with_for_update()
            )).mappings()]  # fmt: skip
            granted = [(r["id"], {**r, "samples": grants[r["id"]][0], "credit": grants[r["id"]][1]})
                       for r in rows if r["id"] in grants]  # fmt: skip
            if granted:
                await conn.run_sync(_grant, granted, now or utcnow())
                await conn.execute(
                    update(db.reports).where(db.reports.c.id == bindparam("rid"))
                    .values(credit=bindparam("c"), reason=bindparam("why")),
                    [{"rid": i, "c": r["credit"], "why": grants[i][2]} for i, r in granted],
                )  # fmt: skip
            refused = [r for r in rows if r["id"] in rejections]
            if refused:
                await conn.execute(
                    update(db.reports).where(db.reports.c.id == bindparam("rid"))
                    .values(status="rejected", reason=bindparam("why")),
                    [{"rid": r["id"], "why": rejections[r["id"]][:64]} for r in refused],
                )  # fmt: skip
            await conn.run_sync(_add_pending, rows, -1)
        return len(rows)


async def _registered(conn, node_id: str) -> Optional[dict]:
    row = (
        await conn.execute(
            select(db.volunteers.c.name, db.volunteers.c.team)
            .join(db.nodes, db.nodes.c.volunteer_id == db.volunteers.c.id)
            .where(db.nodes.c.node_id == node_id)
        )
    ).first()
    return None if row is None else {"name": row.name, "team": row.team, "node_id": node_id}


async def _keys_for_registered(conn, node_id: str, reg: VolunteerRegistration) -> dict:
    """A registered node registering again: refused if detached; an account from before accounts gets its keys
    now, once, if the signed registration is fresh (an old captured copy claims nothing)."""
    node = await accounts.node_state(conn, node_id)
    accounts.refuse_if_detached(node)
    if node.account_key_hash is not None or abs(reg.time - time.time()) > MAX_CLOCK_SKEW:
        return {}
    return await accounts.claim_keys(conn, node.volunteer_id) or {}


_REPORT_COLUMNS = ("node_id", "volunteer_id", "swarm_id", "seq", "epoch", "samples", "compute_seconds", "device",
                   "loss", "group_size", "status", "reason", "credit", "bytes_sent", "bytes_received", "received_at")


def _statement(conn, key: str, build) -> db.DriverStatement:
    return db.driver_statement(key, conn.dialect, build)


def _write_batch(conn, batch: Batch, now: datetime) -> None:
    """Ledger.write's transaction, on a synchronous Connection."""
    if batch.grants:
        # each report is inserted with its final status: granted, pending, or refused (verified and
        # sequenced, but e.g. a second report of one epoch)
        _receive(conn, batch.grants)
        _bump_sequences(conn, batch.grants)
        granted = [r for r in batch.grants if r.get("status", "granted") == "granted"]
        if granted:
            _grant_received(conn, granted, now)
            _add_totals(conn, granted, now)
        _add_pending(conn, [r for r in batch.grants if r.get("status", "granted") == "pending"], +1)
    if batch.rejections:
        conn.execute(insert(db.rejected_messages), batch.rejections)
    for node_id, values in batch.statuses.items():
        conn.execute(update(db.nodes).where(db.nodes.c.node_id == node_id).values(**values))


def _receive(conn, reports: list[dict]) -> None:
    """Append the reports with their status (default 'granted') and reason, in one executemany."""
    statement = _statement(conn, "receive", lambda: (
        insert(db.reports).values({c: bindparam(c) for c in _REPORT_COLUMNS}).inline(), _REPORT_COLUMNS))  # fmt: skip
    statement.run(conn, [
        (r["node_id"], r["volunteer_id"], r["swarm_id"], r["seq"], r["epoch"], r["samples"], r["compute_seconds"],
         r["device"], r["loss"], r["group_size"], r.get("status", "granted"), r.get("reason"), r["credit"],
         r.get("bytes_sent"), r.get("bytes_received"), r["received_at"]) for r in reports
    ])  # fmt: skip


def _grant_received(conn, reports: list[dict], now: datetime) -> None:
    """A grant row for each report just inserted granted, found by its (node, seq), which is unique: no ids
    need to come back from the insert (RETURNING made SQLAlchemy build and process a dict per row)."""
    def build():
        r, g = db.reports, db.grants
        found = select(r.c.id, bindparam("rule", type_=g.c.rule.type), r.c.credit,
                       bindparam("now", type_=g.c.granted_at.type)).where(
            r.c.node_id == bindparam("node", type_=r.c.node_id.type), r.c.seq == bindparam("seq", type_=r.c.seq.type))  # fmt: skip
        return insert(g).from_select(["report_id", "rule", "credit", "granted_at"], found).inline(), ("rule", "now", "node", "seq")

    _statement(conn, "grant_received", build).run(conn, [(CREDIT_RULE, now, r["node_id"], r["seq"]) for r in reports])


def _grant(conn, granted: list[tuple[int, dict]], now: datetime) -> None:
    """One grant row per stored report (rule and credit), the reports marked granted, and the totals upserted."""
    conn.execute(
        insert(db.grants),
        [{"report_id": i, "rule": CREDIT_RULE, "credit": r["credit"], "granted_at": now} for i, r in granted],
    )
    conn.execute(
        update(db.reports).where(db.reports.c.id.in_([i for i, _ in granted])).values(status="granted", reason=None)
    )
    _add_totals(conn, [r for _, r in granted], now)


def _bump_sequences(conn, grants: list[dict]) -> None:
    latest: dict[str, int] = {}
    for grant in grants:
        latest[grant["node_id"]] = max(latest.get(grant["node_id"], 0), grant["seq"])
    nodes = db.nodes
    statement = _statement(conn, "bump_sequences", lambda: (
        update(nodes).where(nodes.c.node_id == bindparam("node"), nodes.c.last_seq < bindparam("seq"))
        .values(last_seq=bindparam("seq")), ("node", "seq")))  # fmt: skip
    statement.run(conn, sorted(latest.items()))  # one executemany, not a statement per node


def _add_pending(conn, reports: list[dict], sign: int) -> None:
    """Count reports into (+1) or out of (−1) their volunteers' pending credit."""
    sums: dict[int, list] = defaultdict(lambda: [0.0, 0])
    for r in reports:
        sums[r["volunteer_id"]][0] += sign * r["credit"]
        sums[r["volunteer_id"]][1] += sign
    if not sums:
        return
    t = db.volunteer_totals
    conn.execute(
        update(t).where(t.c.volunteer_id == bindparam("v"))
        .values(pending_credit=t.c.pending_credit + bindparam("c"), pending_reports=t.c.pending_reports + bindparam("n")),
        [{"v": v, "c": c, "n": n} for v, (c, n) in sorted(sums.items())],
    )  # fmt: skip


def _seconds(value: Optional[datetime]) -> Optional[float]:
    if value is None:
        return None
    return (value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value).timestamp()


def _add_totals(conn, grants: list[dict], now: datetime) -> None:
    """Upsert node, volunteer, team and swarm totals for `grants` (in the caller's transaction)."""
    volunteer_ids = {g["volunteer_id"] for g in grants}
    teams = dict((conn.execute(
        select(db.volunteers.c.id, db.volunteers.c.team).where(db.volunteers.c.id.in_(volunteer_ids))
    )).all())  # fmt: skip
    tables = (db.node_totals, db.volunteer_totals, db.team_totals, db.swarm_totals)
    sums: tuple[dict[Any, list], ...] = ({}, {}, {}, {})  # key → [credit, samples, reports, last_report_at]
    for g in grants:
        credit, samples, at = g["credit"], g["samples"], g["received_at"]
        for table_sums, key in zip(sums, (g["node_id"], g["volunteer_id"], teams.get(g["volunteer_id"]) or None,
                                          g["swarm_id"])):  # fmt: skip
            if key is None:
                continue
            total = table_sums.get(key)
            if total is None:
                table_sums[key] = [credit, samples, 1, at]
            else:
                total[0] += credit
                total[1] += samples
                total[2] += 1
                if at is not None and (total[3] is None or at > total[3]):
                    total[3] = at
    for table, table_sums in zip(tables, sums):
        if table_sums:
            _upsert_totals(conn, table, table_sums, now)


def _upsert_totals(conn, table, sums: dict[Any, list], now: datetime) -> None:
    """Add the sums to each key's row, created by its first grant, and move its RAC on, in one executemany of
    INSERT … ON CONFLICT DO UPDATE: the database computes the RAC from the row it holds (db.recent_average_sql),
    so no row is read back first. Rows go in key order, so concurrent writers (replicas on one PostgreSQL)
    cannot deadlock."""
    key = table.primary_key.columns.values()[0]
    statement = _statement(conn, f"upsert_totals:{table.name}", lambda: _totals_upsert(conn.dialect.name, table, key))
    at, first = now.timestamp(), recent_average(0.0, None, 1.0, 0.0)  # a first grant's RAC per credit
    statement.run(conn, [
        (k, float(credit), samples, reports, last, credit * first, now, at)
        for k, (credit, samples, reports, last) in sorted(sums.items())
    ])  # fmt: skip


def _totals_upsert(dialect_name: str, table, key):
    extra = {c.name: c.default.arg for c in table.columns if c.name.startswith("pending_")}  # volunteer_totals
    insert_ = db.upsert(dialect_name, table).values(
        {key.name: bindparam("k"), "credit": bindparam("c"), "samples": bindparam("s"), "reports": bindparam("n"),
         "last_report_at": bindparam("last"), "rac": bindparam("rac_first"), "rac_updated_at": bindparam("now"),
         **{name: literal_column(repr(value)) for name, value in extra.items()}})  # fmt: skip
    new = insert_.excluded
    statement = insert_.on_conflict_do_update(index_elements=[key], set_={
        "credit": table.c.credit + new.credit, "samples": table.c.samples + new.samples,
        "reports": table.c.reports + new.reports, "last_report_at": new.last_report_at,
        "rac": db.recent_average_sql(dialect_name, table.c.rac, table.c.rac_updated_at, new.credit,
                                     bindparam("at", type_=Float)),
        "rac_updated_at": new.rac_updated_at,
    })  # fmt: skip
    return statement, ("k", "c", "s", "n", "last", "rac_first", "now", "at")
