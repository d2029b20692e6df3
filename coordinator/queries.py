"""Read queries shared by the JSON API and the website. Leaderboards and totals read the maintained totals tables
(never a scan of reports); recent average credit is decayed to the time of reading, so an idle volunteer's falls."""

import re
import time
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import desc, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator import db
from protocol.credit import recent_average

AUDIT_LIMIT = 100


def device_kind(device: Optional[str]) -> str:
    """'cuda:0' → 'cuda': what public pages, the API and exports show of a device; never an index or a name a node
    may have put there (a modified node can send any text)."""
    kind = (device or "").split(":", 1)[0].lower()
    return kind if re.fullmatch(r"[a-z0-9_]{1,16}", kind) else ""


def peer_fingerprint(peer_id: Optional[str]) -> str:
    """The last 8 characters of a libp2p peer id: enough to tell peers apart on a page, too little to look the
    peer (and so its addresses) up in a swarm's DHT."""
    return (peer_id or "")[-8:]


# Pages call these for every row: naive values (SQLite's, written as UTC) take plain string and datetime
# arithmetic, as astimezone() and timestamp() were most of a leaderboard row's time.
_EPOCH = datetime(1970, 1, 1)


def iso(value: Optional[datetime]) -> Optional[str]:
    """Timestamps as ISO 8601 in UTC (SQLite hands back naive datetimes that were written as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.isoformat() + "+00:00"
    return value.astimezone(timezone.utc).isoformat()


def posix(value: datetime) -> float:
    """POSIX seconds of a stored timestamp (naive ones are UTC)."""
    return (value - _EPOCH).total_seconds() if value.tzinfo is None else value.timestamp()


def rac_now(rac: float, updated_at: Optional[datetime], now: Optional[float] = None) -> float:
    """A stored recent average credit decayed to `now` (POSIX seconds; default: the present)."""
    if updated_at is None:
        return 0.0
    return recent_average(rac, posix(updated_at), 0.0, time.time() if now is None else now)


def _latest(*values: Optional[datetime]) -> Optional[datetime]:
    present = [v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v for v in values if v is not None]
    return max(present, default=None)


async def list_swarms(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return list(await conn.execute(select(db.swarms).order_by(db.swarms.c.created_at, db.swarms.c.swarm_id)))


async def list_swarms_page(engine: AsyncEngine, limit: int, offset: int = 0) -> tuple[list[Any], int]:
    """A page of swarms, oldest first, and how many there are."""
    query = select(db.swarms).order_by(db.swarms.c.created_at, db.swarms.c.swarm_id).limit(limit).offset(offset)
    async with engine.connect() as conn:
        rows = list(await conn.execute(query))
        total = (await conn.execute(select(func.count()).select_from(db.swarms))).scalar_one()
    return rows, total


async def get_swarm(engine: AsyncEngine, swarm_id: str) -> Optional[Any]:
    async with engine.connect() as conn:
        return (await conn.execute(select(db.swarms).where(db.swarms.c.swarm_id == swarm_id))).first()


async def leaderboard(engine: AsyncEngine, limit: int = 100, offset: int = 0) -> tuple[list[dict], int]:
    """Volunteers by credit, highest first: (page of entries, total number of volunteers). The order comes from
    the in-memory rankings (coordinator/rankings.py: any offset in microseconds, no OFFSET walk over a million
    rows); the values are live."""
    from coordinator import page_data  # composes this module's queries with the rankings

    board = await page_data.leaderboard(engine, "credit", offset, limit)
    entries = board["entries"]
    return entries, board["total"]


async def volunteer_detail(engine: AsyncEngine, name: str, limit: int = AUDIT_LIMIT) -> Optional[dict]:
    """A volunteer's totals (granted and pending credit, recent average), nodes and audit trail (latest reports with
    status, reason and the rule that granted them; rejected messages with reasons)."""
    v, t, n, r, x, g = db.volunteers, db.volunteer_totals, db.nodes, db.reports, db.rejected_messages, db.grants
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(v, t.c.credit, t.c.samples, t.c.reports, t.c.last_report_at, t.c.rac,
                                      t.c.rac_updated_at, t.c.pending_credit, t.c.pending_reports)
                               .join(t, t.c.volunteer_id == v.c.id).where(v.c.name == name))  # fmt: skip
        ).first()
        if row is None:
            return None
        nodes = list(await conn.execute(select(n).where(n.c.volunteer_id == row.id).order_by(n.c.created_at)))
        node_ids = [node.node_id for node in nodes]
        reports = list(await conn.execute(
            select(r, g.c.rule, g.c.granted_at).outerjoin(g, g.c.report_id == r.c.id)
            .where(r.c.volunteer_id == row.id).order_by(desc(r.c.id)).limit(limit)
        ))  # fmt: skip
        rejected = list(
            await conn.execute(select(x).where(x.c.node_id.in_(node_ids)).order_by(desc(x.c.id)).limit(limit))
        )
    return {
        "name": row.name, "team": row.team, "created_at": iso(row.created_at), "credit": row.credit,
        "samples": row.samples, "reports": row.reports, "last_report_at": iso(row.last_report_at),
        "granted_credit": row.credit, "pending_credit": row.pending_credit, "pending_reports": row.pending_reports,
        "recent_average_credit": rac_now(row.rac, row.rac_updated_at),
        "nodes": [
            {"node_id": node.node_id, "device": device_kind(node.device), "online": node.online, "swarm_id": node.swarm_id,
             "last_seen": iso(node.last_seen), "last_seq": node.last_seq,
             "detached": node.detached_at is not None}  # fmt: skip
            for node in nodes
        ],
        "audit": [_report_entry(rep) for rep in reports],
        "rejected_messages": [
            {"node_id": m.node_id, "seq": m.seq, "reason": m.reason, "detail": m.detail, "topic": m.topic,
             "received_at": iso(m.received_at)}  # fmt: skip
            for m in rejected
        ],
    }


def _report_entry(rep: Any) -> dict:
    return {"node_id": rep.node_id, "swarm_id": rep.swarm_id, "seq": rep.seq, "epoch": rep.epoch,
            "samples": rep.samples, "compute_seconds": rep.compute_seconds, "device": device_kind(rep.device), "loss": rep.loss,
            "status": rep.status, "reason": rep.reason, "credit": rep.credit, "received_at": iso(rep.received_at),
            "rule": rep.rule, "granted_at": iso(rep.granted_at),
            "group_size": rep.group_size, "bytes_sent": rep.bytes_sent, "bytes_received": rep.bytes_received}  # fmt: skip


async def volunteer_reports(engine: AsyncEngine, name: str, limit: int, offset: int = 0) -> Optional[tuple[list[dict], int]]:
    """A page of a volunteer's reports, newest first, and how many there are; None if no such volunteer."""
    v, r, g = db.volunteers, db.reports, db.grants
    async with engine.connect() as conn:
        volunteer_id = (await conn.execute(select(v.c.id).where(v.c.name == name))).scalar()
        if volunteer_id is None:
            return None
        rows = list(await conn.execute(
            select(r, g.c.rule, g.c.granted_at).outerjoin(g, g.c.report_id == r.c.id)
            .where(r.c.volunteer_id == volunteer_id).order_by(desc(r.c.id)).limit(limit).offset(offset)
        ))  # fmt: skip
        total = (await conn.execute(select(func.count()).select_from(r).where(r.c.volunteer_id == volunteer_id))).scalar_one()
    return [_report_entry(rep) for rep in rows], total


async def team_members(engine: AsyncEngine, name: str, limit: int, offset: int = 0) -> Optional[tuple[list[dict], int]]:
    """A page of a team's members by name with their own totals, and how many there are; None if no such team."""
    v, t = db.volunteers, db.volunteer_totals
    async with engine.connect() as conn:
        if (await conn.execute(select(db.teams.c.name).where(db.teams.c.name == name))).first() is None:
            return None
        rows = list(await conn.execute(
            select(v.c.name, t.c.credit, t.c.samples, t.c.reports).outerjoin(t, t.c.volunteer_id == v.c.id)
            .where(v.c.team == name).order_by(v.c.name).limit(limit).offset(offset)
        ))  # fmt: skip
        total = (await conn.execute(select(func.count()).select_from(v).where(v.c.team == name))).scalar_one()
    members = [{"name": m.name, "credit": m.credit or 0.0, "samples": m.samples or 0, "reports": m.reports or 0} for m in rows]
    return members, total


async def team_leaderboard(engine: AsyncEngine, limit: int = 100, offset: int = 0) -> tuple[list[dict], int]:
    """Teams by credit, highest first, from team_totals: (page of entries, number of teams with credit)."""
    t, v = db.team_totals, db.volunteers
    # per team on the page, through the index on volunteers.team (a GROUP BY would count every volunteer)
    members = select(func.count()).select_from(v).where(v.c.team == t.c.team).scalar_subquery()
    async with engine.connect() as conn:
        rows = list(await conn.execute(
            select(t, members.label("members")).order_by(desc(t.c.credit), t.c.team).limit(limit).offset(offset)
        ))  # fmt: skip
        total = (await conn.execute(select(func.count()).select_from(t))).scalar_one()
    now = time.time()
    entries = [
        {"rank": offset + i + 1, "team": r.team, "members": int(r.members or 0), "credit": r.credit,
         "samples": r.samples, "reports": r.reports, "last_report_at": iso(r.last_report_at),
         "recent_average_credit": rac_now(r.rac, r.rac_updated_at, now)}  # fmt: skip
        for i, r in enumerate(rows)
    ]
    return entries, total


async def team_detail(engine: AsyncEngine, name: str, member_limit: int = 1000) -> Optional[dict]:
    """A team's founder, members (names, up to `member_limit`), totals and recent average credit; None if unknown."""
    t, v, tt = db.teams, db.volunteers, db.team_totals
    founder = v.alias("founder")
    async with engine.connect() as conn:
        row = (await conn.execute(
            select(t.c.name, t.c.created_at, founder.c.name.label("founder"))
            .select_from(t.outerjoin(founder, founder.c.id == t.c.founder_id)).where(t.c.name == name)
        )).first()  # fmt: skip
        if row is None:
            return None
        totals = (await conn.execute(select(tt).where(tt.c.team == name))).first()
        members = list((await conn.execute(
            select(v.c.name).where(v.c.team == name).order_by(v.c.name).limit(member_limit)
        )).scalars())  # fmt: skip
        count = (await conn.execute(select(func.count()).select_from(v).where(v.c.team == name))).scalar_one()
    return {
        "name": row.name, "founder": row.founder, "created_at": iso(row.created_at), "members": members,
        "members_total": count, "credit": totals.credit if totals else 0.0, "samples": totals.samples if totals else 0,
        "reports": totals.reports if totals else 0, "last_report_at": iso(totals.last_report_at) if totals else None,
        "recent_average_credit": rac_now(totals.rac, totals.rac_updated_at) if totals else 0.0,
    }  # fmt: skip


async def ledger_stats(engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as conn:
        async def count(table, *where) -> int:
            return (await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one()

        s = db.swarm_totals  # one row per swarm: the sums are cheap
        credit, samples, granted = (await conn.execute(select(
            func.coalesce(func.sum(s.c.credit), 0.0), func.coalesce(func.sum(s.c.samples), 0),
            func.coalesce(func.sum(s.c.reports), 0),
        ))).one()  # fmt: skip
        return {
            "swarms": await count(db.swarms),
            "volunteers": await count(db.volunteers),
            "nodes": await count(db.nodes),
            "nodes_online": await count(db.nodes, db.nodes.c.online.is_(True)),
            "reports_granted": int(granted),
            "rejected_messages": await count(db.rejected_messages),
            "credit": float(credit),
            "samples": int(samples),
        }
