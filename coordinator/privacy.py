"""A volunteer's personal data: `hearth account export` (everything held about them, as JSON), `hearth account
delete` (erasure that keeps the ledger's anonymous aggregates) and the retention of network identities.

Erasure (account key needed): the display name becomes a random placeholder, both key hashes go, every node gets
a fresh random id (its old id is a hash of its public key), loses its public key, peer id, device details and
last-seen time, and is revoked; reports keep their numbers (samples, credit, epoch, time) under the new node id
with the device reduced to its kind; the volunteer's signed team actions and rejected messages go. The totals
tables are not touched, so every team, swarm and leaderboard total stays as it was; the anonymous row keeps its
team membership for the same reason (exports count members per team). The broker forgets the nodes' retained
presence and receipt messages (empty retained messages on their old topics).

Retention: the ledger holds no IP address. A node's libp2p peer id (which finds its addresses in a swarm's DHT) is
cleared once the node has been offline for `peer_id_hours`, and messages from unknown senders (such as a PC still
running after its account was erased) go after as long; the in-memory per-address state of the HTTP rate limiter
and of reachability checks is dropped as soon as it no longer limits anything (seconds to minutes).
"""

import asyncio
import logging
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable, Optional

from sqlalchemy import and_, delete, insert, or_, select, update

from coordinator import db
from coordinator.accounts import ACCOUNT, authenticate
from coordinator.exports import _device_type
from coordinator.queries import iso

logger = logging.getLogger(__name__)

PLACEHOLDER_PREFIX = "deleted-"
PEER_ID_HOURS = 24.0  # a node's peer id is kept this long after it went offline
SWEEP_SECONDS = 60.0


def _jsonable(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


def _row(row: Any, drop: tuple[str, ...] = ()) -> dict:
    return {k: _jsonable(v) for k, v in row._mapping.items() if k not in drop}


async def export_volunteer(engine, key: Optional[str]) -> dict:
    """Everything the ledger holds about the account `key` (the account key) opens: the volunteer row, totals,
    team, nodes with their totals, every report with its grant, rejected messages of its nodes, team actions, and
    any other table's rows about its nodes (audits, trust)."""
    v, n, r, g, x = db.volunteers, db.nodes, db.reports, db.grants, db.rejected_messages
    async with engine.connect() as conn:
        account, _ = await authenticate(conn, key, ACCOUNT, "exporting the account's data")
        volunteer = (await conn.execute(select(v).where(v.c.id == account.id))).one()
        totals = (await conn.execute(select(db.volunteer_totals).where(db.volunteer_totals.c.volunteer_id == account.id))).first()
        team = None
        if volunteer.team is not None:
            team_row = (await conn.execute(select(db.teams).where(db.teams.c.name == volunteer.team))).first()
            team = {"name": volunteer.team, "founder": team_row is not None and team_row.founder_id == account.id,
                    "created_at": iso(team_row.created_at) if team_row is not None else None}  # fmt: skip
        nodes = list(await conn.execute(select(n).where(n.c.volunteer_id == account.id).order_by(n.c.created_at)))
        node_ids = [node.node_id for node in nodes]
        node_totals = {row.node_id: row for row in await conn.execute(
            select(db.node_totals).where(db.node_totals.c.node_id.in_(node_ids)))}  # fmt: skip
        reports = list(await conn.execute(select(r).where(r.c.volunteer_id == account.id).order_by(r.c.id)))
        grants = list(await conn.execute(
            select(g).join(r, r.c.id == g.c.report_id).where(r.c.volunteer_id == account.id).order_by(g.c.id)))  # fmt: skip
        rejected = list(await conn.execute(select(x).where(x.c.node_id.in_(node_ids)).order_by(x.c.id)))
        actions = list(await conn.execute(
            select(db.team_actions).where(db.team_actions.c.volunteer_id == account.id).order_by(db.team_actions.c.id)))  # fmt: skip
        per_node = {t.name: [_row(r) for r in await conn.execute(select(t).where(t.c.node_id.in_(node_ids)))]
                    for t in _node_tables() if t is not db.node_totals}  # e.g. audits of its nodes' work
    return {
        "exported_at": iso(datetime.now(timezone.utc)),
        "volunteer": _row(volunteer),
        "totals": _row(totals, drop=("volunteer_id",)) if totals is not None else None,
        "team": team,
        "nodes": [{**_row(node), "totals": _row(node_totals[node.node_id], drop=("node_id",))
                   if node.node_id in node_totals else None} for node in nodes],  # fmt: skip
        "reports": [_row(rep) for rep in reports],
        "grants": [_row(grant) for grant in grants],
        "rejected_messages": [_row(m) for m in rejected],
        "team_actions": [_row(a) for a in actions],
        **per_node,
    }


async def erase_volunteer(ledger, key: Optional[str], now: Optional[datetime] = None,
                          forget_retained: Optional[Callable[[list[tuple[str, str]]], Awaitable[None]]] = None) -> dict:
    """Erase the personal data of the account `key` (the account key) opens; aggregates stay (module docstring).
    Answers {"erased": True, "nodes": N, "reports": N}. The in-memory node cache forgets the nodes at once, and
    `forget_retained` gets the (swarm, node id) pairs whose retained MQTT messages (presence, receipts) must go."""
    now = now or datetime.now(timezone.utc)
    v, n, r = db.volunteers, db.nodes, db.reports
    async with ledger.engine.begin() as conn:
        account, _ = await authenticate(conn, key, ACCOUNT, "deleting the account")
        nodes = list(await conn.execute(select(n).where(n.c.volunteer_id == account.id)))
        topics = await _node_swarms(conn, nodes)
        for node in nodes:
            await _anonymise_node(conn, node, now)
        reports = (await conn.execute(select(r.c.id).where(r.c.volunteer_id == account.id))).all()
        await conn.execute(delete(db.team_actions).where(db.team_actions.c.volunteer_id == account.id))
        await conn.execute(update(db.teams).where(db.teams.c.founder_id == account.id).values(founder_id=None))
        await conn.execute(update(v).where(v.c.id == account.id).values(
            name=PLACEHOLDER_PREFIX + secrets.token_hex(8), account_key_hash=None, attach_key_hash=None,
            deleted_at=now))  # fmt: skip
    for node in nodes:
        ledger.nodes.pop(node.node_id, None)  # ingest refuses the old keys from now on
    if forget_retained is not None and topics:
        await forget_retained(topics)
    logger.info("Erased the personal data of volunteer %s (%d nodes)", account.id, len(nodes))
    return {"erased": True, "nodes": len(nodes), "reports": len(reports)}


async def _node_swarms(conn, nodes: list) -> list[tuple[str, str]]:
    """(swarm, node id) for every swarm each node reported in or was last in."""
    r = db.reports
    reported = select(r.c.swarm_id, r.c.node_id).where(r.c.node_id.in_([node.node_id for node in nodes])).distinct()
    pairs = {(node.swarm_id, node.node_id) for node in nodes if node.swarm_id}
    pairs.update(tuple(row) for row in await conn.execute(reported))
    return sorted(pairs)


async def _anonymise_node(conn, node: Any, now: datetime) -> None:
    """Move a node's rows to a fresh random id (the old one derives from its key), without key or details."""
    n, r, x = db.nodes, db.reports, db.rejected_messages
    new_id = secrets.token_hex(16)
    await conn.execute(insert(n).values(
        node_id=new_id, public_key=f"erased:{new_id}", volunteer_id=node.volunteer_id, peer_id=None, device="",
        online=False, swarm_id=node.swarm_id, last_seen=None, status_time=None, last_seq=node.last_seq,
        created_at=node.created_at, detached_at=node.detached_at or now, epsilon_spent=node.epsilon_spent))  # fmt: skip
    for table in _node_tables():  # totals, audits, trust, … : kept, under the new id
        await conn.execute(update(table).where(table.c.node_id == node.node_id).values(node_id=new_id))
    devices = (await conn.execute(select(r.c.device).where(r.c.node_id == node.node_id).distinct())).scalars().all()
    for device in devices:  # few distinct values: one UPDATE each
        await conn.execute(update(r).where(r.c.node_id == node.node_id, r.c.device == device)
                           .values(node_id=new_id, device=_device_type(device)))  # fmt: skip
    await conn.execute(delete(x).where(or_(x.c.node_id == node.node_id, x.c.topic.contains(node.node_id))))
    await conn.execute(delete(n).where(n.c.node_id == node.node_id))


def _node_tables() -> list:
    """Tables keyed by node id whose rows are aggregates or verdicts (not messages the node wrote)."""
    handled = {db.nodes.name, db.reports.name, db.rejected_messages.name}
    return [t for t in db.metadata.sorted_tables if "node_id" in t.c and t.name not in handled]


async def forget_peer_ids(engine, older_than: timedelta, now: Optional[datetime] = None) -> int:
    """Clear the peer id of every node offline (or never seen) for longer than `older_than`; how many."""
    cutoff = (now or datetime.now(timezone.utc)) - older_than
    n = db.nodes
    stale = or_(n.c.last_seen < cutoff, and_(n.c.last_seen.is_(None), n.c.created_at < cutoff))
    async with engine.begin() as conn:
        done = await conn.execute(update(n).where(n.c.peer_id.is_not(None), n.c.online.is_(False), stale)
                                  .values(peer_id=None))  # fmt: skip
    return done.rowcount or 0


def app_rate_limiters(app: Any) -> list:
    """The per-client-IP rate limiters of the HTTP app (coordinator/ratelimit.py middleware)."""
    from coordinator.ratelimit import RateLimitMiddleware

    return [m.kwargs["limiter"] for m in app.user_middleware if m.cls is RateLimitMiddleware]


async def forget_unknown_senders(engine, older_than: timedelta, now: Optional[datetime] = None) -> int:
    """Drop rejected messages from senders no registered node matches (e.g. a PC still running after its account
    was erased: the node id it claims is a hash of the erased key) once older than `older_than`; how many."""
    cutoff = (now or datetime.now(timezone.utc)) - older_than
    x, n = db.rejected_messages, db.nodes
    known = select(n.c.node_id).where(n.c.node_id == x.c.node_id).exists()
    async with engine.begin() as conn:
        done = await conn.execute(delete(x).where(x.c.reason == "unknown_sender", x.c.received_at < cutoff, ~known))
    return done.rowcount or 0


def forget_idle_addresses(rate_limiters: list = (), prober: Any = None) -> int:
    """Drop per-address state that no longer limits anything; how many entries went."""
    dropped = sum(limiter.forget_idle() for limiter in rate_limiters)
    if prober is not None:
        dropped += prober.forget_idle()
    return dropped


class RetentionSweeper:
    """Every `interval` seconds: forget_peer_ids and forget_idle_addresses. Errors are logged, never fatal."""

    def __init__(self, engine, peer_id_hours: float = PEER_ID_HOURS, rate_limiters: list = (), prober: Any = None,
                 interval: float = SWEEP_SECONDS):  # fmt: skip
        self.engine, self.keep = engine, timedelta(hours=peer_id_hours)
        self.rate_limiters, self.prober, self.interval = list(rate_limiters), prober, interval
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention")

    async def sweep(self) -> tuple[int, int]:
        cleared = await forget_peer_ids(self.engine, self.keep)
        await forget_unknown_senders(self.engine, self.keep)
        dropped = forget_idle_addresses(self.rate_limiters, self.prober)
        if cleared:
            logger.info("Retention: cleared the peer id of %d node(s) offline for over %s", cleared, self.keep)
        return cleared, dropped

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                logger.exception("Retention sweep failed; next try in %.0f s", self.interval)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
