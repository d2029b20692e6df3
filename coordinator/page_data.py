"""What each web page shows, composed from the ledger queries (coordinator/queries.py), the in-memory rankings
(coordinator/rankings.py) and the DHT monitor's live progress. Every query here reads an index or a totals
table: none scans reports or all volunteers, so pages stay fast at a million volunteers."""

import functools
import logging
import time
import weakref
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import Integer, bindparam, cast, desc, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from coordinator import db, queries
from coordinator.queries import iso, peer_fingerprint, posix, rac_now
from coordinator.rankings import SORTS, rankings_for

logger = logging.getLogger(__name__)

SEARCH_COUNT_CAP = 10_000  # counting the matches of a short prefix among a million names stops here
CREDIT_SERIES_REPORTS = 2000  # a volunteer's credit-over-time chart covers their latest this-many grants
ROUNDS_SHOWN = 200  # epochs on the loss chart
ROUNDS_FRESH_SECONDS = 5.0  # the per-epoch aggregate is shared by every viewer for this long (pages poll every 5 s)
_rounds_cache: "weakref.WeakKeyDictionary[AsyncEngine, dict[str, tuple[float, list]]]" = weakref.WeakKeyDictionary()
RECENT_REPORTS = 20
PRIVACY_NODES_SHOWN = 100


async def leaderboard(engine: AsyncEngine, sort: str = "credit", offset: int = 0, limit: int = 50,
                      search: Optional[str] = None) -> dict[str, Any]:  # fmt: skip
    """A page of volunteers in `sort` order (credit, rac or samples), or of those whose name starts with `search`
    (by name; `total` then counts at most SEARCH_COUNT_CAP + 1), each with their rank as of the rankings."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}")
    snapshot = await rankings_for(engine).current()
    async with engine.connect() as conn:  # one connection for the whole page
        if search:
            # a range on the unique name index
            where = {"low": search, "high": search + "\U0010ffff"}
            ids = list((await conn.execute(_SEARCH_PAGE, {**where, "limit": limit, "offset": offset})).scalars())
            if 0 < len(ids) < limit or (offset == 0 and not ids):  # the last page: no need to count
                total = offset + len(ids)
            else:
                total = (await conn.execute(_SEARCH_COUNT, {**where, "cap": SEARCH_COUNT_CAP + 1})).scalar_one()
        else:
            ids = snapshot.page(sort, offset, limit)
            total = snapshot.total
        rows = await _volunteer_rows(conn, ids)
    entries = []
    for position, volunteer_id in enumerate(ids):
        row = rows.get(volunteer_id)
        if row is None:  # deleted since the snapshot (never today); skip rather than show a hole
            continue
        row["rank"] = snapshot.rank(volunteer_id, sort) if search else offset + position + 1
        entries.append(row)
    return {"entries": entries, "total": total, "sort": sort, "offset": offset, "limit": limit, "search": search,
            "ranked_at": snapshot.built_at}  # fmt: skip


# The hot pages' statements are built once, with bind parameters: building and cache-keying a statement at every
# request cost about as much CPU as running it.
def _search_statements():
    v = db.volunteers
    matches = (v.c.name >= bindparam("low"), v.c.name < bindparam("high"))
    page = select(v.c.id).where(*matches).order_by(v.c.name).limit(bindparam("limit")).offset(bindparam("offset"))
    capped = select(v.c.id).where(*matches).limit(bindparam("cap")).subquery()
    return page, select(func.count()).select_from(capped)


def _volunteer_rows_statement():
    v, t, n = db.volunteers, db.volunteer_totals, db.nodes
    mine = n.c.volunteer_id == v.c.id
    online = select(func.coalesce(func.sum(cast(n.c.online, Integer)), 0)).where(mine).scalar_subquery()
    seen = select(func.max(n.c.last_seen)).where(mine).scalar_subquery()
    return (select(v.c.id, v.c.name, v.c.team, t.c.credit, t.c.samples, t.c.reports, t.c.last_report_at, t.c.rac,
                   t.c.rac_updated_at, online, seen)
            .join(t, t.c.volunteer_id == v.c.id).where(v.c.id.in_(bindparam("ids", expanding=True))))  # fmt: skip


def _site_stats_statement():
    n, s = db.nodes, db.swarm_totals
    return select(
        select(func.count()).select_from(n).where(n.c.online == True).scalar_subquery(),  # noqa: E712 (SQL)
        select(func.coalesce(func.sum(s.c.credit), 0.0)).scalar_subquery(),
        select(func.coalesce(func.sum(s.c.samples), 0)).scalar_subquery(),
    )


_SEARCH_PAGE, _SEARCH_COUNT = _search_statements()
_VOLUNTEER_ROWS = _volunteer_rows_statement()
_SITE_STATS = _site_stats_statement()


async def volunteer_rows(engine: AsyncEngine, ids: list[int]) -> dict[int, dict]:
    """Leaderboard rows (live values) for the given volunteer ids, in one statement (node activity through the
    index on nodes.volunteer_id)."""
    if not ids:
        return {}
    async with engine.connect() as conn:
        return await _volunteer_rows(conn, ids)


async def _volunteer_rows(conn, ids: list[int]) -> dict[int, dict]:
    if not ids:
        return {}
    rows = (await conn.execute(_VOLUNTEER_ROWS, {"ids": ids})).all()
    now = time.time()
    out = {}
    # positional access: Row attribute lookups were much of this loop's time
    for vid, name, team, credit, samples, reports, last_report_at, rac, rac_updated_at, online, seen in rows:
        out[vid] = {
            "name": name, "team": team, "credit": credit, "samples": samples, "reports": reports,
            "last_seen": iso(_later(last_report_at, seen)), "nodes_online": int(online or 0),
            "recent_average_credit": rac_now(rac, rac_updated_at, now),
        }  # fmt: skip
    return out


def _later(a: Optional[datetime], b: Optional[datetime]) -> Optional[datetime]:
    if a is None or b is None:
        return b if a is None else a
    if (a.tzinfo is None) != (b.tzinfo is None):
        a, b = _utc(a), _utc(b)
    return a if a >= b else b


async def site_stats(engine: AsyncEngine) -> dict[str, Any]:
    """The leaderboard's headline numbers without counting big tables: volunteers from the rankings, nodes online
    through the index on nodes.online, credit and samples from swarm_totals (one row per swarm)."""
    snapshot = await rankings_for(engine).current()
    async with engine.connect() as conn:
        nodes_online, credit, samples = (await conn.execute(_SITE_STATS)).one()
    return {"volunteers": snapshot.total, "nodes_online": int(nodes_online), "credit": float(credit),
            "samples": int(samples)}  # fmt: skip


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


async def team_board(engine: AsyncEngine, offset: int = 0, limit: int = 50) -> dict[str, Any]:
    """Teams by credit (team_totals), each with its member count."""
    entries, total = await queries.team_leaderboard(engine, limit, offset)
    return {"entries": entries, "total": total, "offset": offset, "limit": limit}


def _credit_series_statement(volunteers):
    r, g = db.reports, db.grants
    return (select(g.c.granted_at, g.c.credit).join(g, g.c.report_id == r.c.id).where(volunteers)
            .order_by(desc(r.c.id)).limit(bindparam("limit")))  # fmt: skip


_SERIES_OF_VOLUNTEER = _credit_series_statement(db.reports.c.volunteer_id == bindparam("volunteer_id"))
_SERIES_OF_VOLUNTEERS = _credit_series_statement(db.reports.c.volunteer_id.in_(bindparam("ids", expanding=True)))


async def _credit_series(conn, statement, params: dict, total_credit: float,
                         limit: int = CREDIT_SERIES_REPORTS) -> list[list[float]]:  # fmt: skip
    """[[unix seconds, cumulative credit], …] oldest first, over the latest `limit` granted reports of the
    volunteers in `params`; earlier credit is the starting level, so the last point equals the total."""
    rows = (await conn.execute(statement, {**params, "limit": limit})).all()
    series, level = [], total_credit
    for granted_at, credit in rows:  # newest first: walk back from the total
        series.append([posix(granted_at), level])
        level -= credit
    if rows:
        series.append([series[-1][0] - 1.0, max(level, 0.0)])
    series.reverse()
    return _by_time(series)


def _by_time(series: list[list[float]]) -> list[list[float]]:
    """Points sorted by time, one per timestamp (uPlot needs strictly increasing x)."""
    out: list[list[float]] = []
    for at, value in sorted(series, key=lambda point: point[0]):
        if out and at <= out[-1][0]:
            out[-1][1] = value
        else:
            out.append([at, value])
    return out


def _volunteer_page_statements():
    v, n, nt, r = db.volunteers, db.nodes, db.node_totals, db.reports
    volunteer_id = select(v.c.id).where(v.c.name == bindparam("name"))
    node_totals = select(nt.c.node_id, nt.c.credit, nt.c.samples).join(n, n.c.node_id == nt.c.node_id).where(
        n.c.volunteer_id == bindparam("volunteer_id"))
    latest = (select(r.c.samples, r.c.compute_seconds).where(r.c.node_id == bindparam("node_id"))
              .order_by(desc(r.c.seq)).limit(20).subquery())  # fmt: skip
    return volunteer_id, node_totals, select(func.sum(latest.c.samples), func.sum(latest.c.compute_seconds))


_VOLUNTEER_ID, _NODE_TOTALS, _NODE_RECENT = _volunteer_page_statements()


async def volunteer_page(engine: AsyncEngine, name: str) -> Optional[dict[str, Any]]:
    """The volunteer API detail, plus rank, credit over time and each node's totals and recent throughput."""
    detail = await queries.volunteer_detail(engine, name)
    if detail is None:
        return None
    async with engine.connect() as conn:
        volunteer_id = (await conn.execute(_VOLUNTEER_ID, {"name": name})).scalar_one()
        detail["credit_series"] = await _credit_series(conn, _SERIES_OF_VOLUNTEER, {"volunteer_id": volunteer_id},
                                                       detail["credit"])  # fmt: skip
        totals = {row[0]: row for row in await conn.execute(_NODE_TOTALS, {"volunteer_id": volunteer_id})}
        for node in detail["nodes"]:
            samples, seconds = (await conn.execute(_NODE_RECENT, {"node_id": node["node_id"]})).one()
            node["samples_per_second"] = samples / seconds if seconds else None
            total = totals.get(node["node_id"])
            node["credit"] = total[1] if total else 0.0
            node["samples"] = total[2] if total else 0
    detail["rank"] = (await rankings_for(engine).current()).rank(volunteer_id)
    return detail


async def team_page(engine: AsyncEngine, name: str, member_limit: int = 100) -> Optional[dict[str, Any]]:
    """The team API detail, plus its rank, its top members by credit and credit over time (its members'
    latest grants)."""
    detail = await queries.team_detail(engine, name, member_limit=0)
    if detail is None:
        return None
    v, t, tt = db.volunteers, db.volunteer_totals, db.team_totals
    async with engine.connect() as conn:
        members = list(await conn.execute(
            select(v.c.id, v.c.name, t.c.credit, t.c.samples, t.c.rac, t.c.rac_updated_at)
            .join(t, t.c.volunteer_id == v.c.id).where(v.c.team == name).order_by(desc(t.c.credit), v.c.id)
            .limit(member_limit)
        ))  # fmt: skip
        ids = [m.id for m in members]
        detail["credit_series"] = await _credit_series(conn, _SERIES_OF_VOLUNTEERS, {"ids": ids}, detail["credit"]) if ids else []
        detail["rank"] = 1 + (await conn.execute(
            select(func.count()).select_from(tt).where(tt.c.credit > detail["credit"])
        )).scalar_one()  # fmt: skip
    now = time.time()
    detail["top_members"] = [
        {"name": m.name, "credit": m.credit, "samples": m.samples, "recent_average_credit": rac_now(m.rac, m.rac_updated_at, now)}
        for m in members
    ]  # fmt: skip
    return detail


@functools.lru_cache(maxsize=64)
def task_info(task_name: str) -> dict[str, Any]:
    """What a task trains, in plain words, and its model's size (built once per task and cached)."""
    try:
        from hearth.tasks import load_task

        task = load_task(task_name)
        parameters = sum(p.numel() for p in task.build_model().parameters())
        return {"name": task_name, "description": task.description, "parameters": parameters}
    except Exception as e:  # a plugin this coordinator lacks, or one that fails to build
        logger.warning("Cannot describe task %s: %s", task_name, e)
        return {"name": task_name, "description": None, "parameters": None}


def live_progress(monitor: Any, swarm_id: str, target_batch_size: int) -> dict[str, Any]:
    """The monitor's latest view of a swarm: epoch, peers, samples/s and the expected end of this epoch."""
    snapshot = monitor.progress.get(swarm_id) if monitor is not None else None
    if snapshot is None:
        return {"epoch": None, "peers_online": 0, "samples_per_second": 0.0, "eta_seconds": None,
                "updated_at": None, "peers": []}  # fmt: skip
    p = snapshot.progress
    current = [peer for peer in p.peers if peer.epoch == p.epoch]
    remaining = max(target_batch_size - sum(peer.samples_accumulated for peer in current), 0)
    speed = p.samples_per_second
    return {
        "epoch": p.epoch, "peers_online": len(p.peers), "samples_per_second": speed,
        "eta_seconds": remaining / speed if speed > 0 else None, "updated_at": snapshot.updated_at,
        "peers": [{"peer_id": peer_fingerprint(peer.peer_id), "epoch": peer.epoch, "samples_per_second": peer.samples_per_second,
                   "client_mode": peer.client_mode} for peer in p.peers],
    }  # fmt: skip


async def swarm_rounds(conn, swarm_id: str, epochs: int = ROUNDS_SHOWN) -> list[dict[str, Any]]:
    """Per epoch of the latest `epochs`: reports, volunteers' mean loss, largest averaging group, samples, and
    averaging bytes sent per sample (None when no report of the epoch carried traffic) (index on reports
    (swarm_id, epoch))."""
    r = db.reports
    latest = (await conn.execute(select(func.max(r.c.epoch)).where(r.c.swarm_id == swarm_id))).scalar()
    if latest is None:
        return []
    rows = await conn.execute(
        select(r.c.epoch, func.count().label("reports"), func.avg(r.c.loss).label("loss"),
               func.max(r.c.group_size).label("group_size"), func.sum(r.c.samples).label("samples"),
               func.max(r.c.received_at).label("at"), func.sum(r.c.bytes_sent).label("bytes_sent"))
        .where(r.c.swarm_id == swarm_id, r.c.epoch > latest - epochs, r.c.status != "rejected")
        .group_by(r.c.epoch).order_by(r.c.epoch)
    )  # fmt: skip
    return [{"epoch": row.epoch, "reports": row.reports, "loss": row.loss, "group_size": row.group_size,
             "samples": int(row.samples or 0), "at": iso(row.at),
             "bytes_per_sample": row.bytes_sent / row.samples if row.bytes_sent and row.samples else None}
            for row in rows]  # fmt: skip


async def _recent_rounds(conn, engine: AsyncEngine, swarm_id: str) -> list[dict[str, Any]]:
    """swarm_rounds(), computed at most once per ROUNDS_FRESH_SECONDS per swarm and epoch: it aggregates every
    report of the latest epochs (~0.2 s at 200 reports per epoch), and every open dashboard asks every few seconds.
    A new epoch shows at once; more reports of the same epoch within the window."""
    per_swarm, now = _rounds_cache.setdefault(engine, {}), time.monotonic()
    cached = per_swarm.get(swarm_id)
    if cached is not None and now - cached[0] < ROUNDS_FRESH_SECONDS:
        r = db.reports
        latest = (await conn.execute(select(func.max(r.c.epoch)).where(r.c.swarm_id == swarm_id))).scalar()
        if cached[1] and cached[1][-1]["epoch"] == latest:
            return cached[1]
    rounds = await swarm_rounds(conn, swarm_id)
    per_swarm[swarm_id] = (now, rounds)
    return rounds


async def swarm_page(engine: AsyncEngine, monitor: Any, swarm_id: str) -> Optional[dict[str, Any]]:
    r, st, v = db.reports, db.swarm_totals, db.volunteers
    async with engine.connect() as conn:
        swarm = (await conn.execute(select(db.swarms).where(db.swarms.c.swarm_id == swarm_id))).first()
        if swarm is None:
            return None
        rounds = await _recent_rounds(conn, engine, swarm_id)
        totals = (await conn.execute(select(st).where(st.c.swarm_id == swarm_id))).first()
        since = rounds[-1]["epoch"] - 2 if rounds else 0
        # The latest reports of the last epochs, picked through the (swarm_id, epoch) index: ordered by plain id,
        # SQLite walked the whole reports table backwards (0.15 s at 20M reports; all of it for a quiet swarm).
        latest = (select(r.c.id, r.c.node_id, r.c.volunteer_id, r.c.epoch, r.c.samples, r.c.loss, r.c.status, r.c.reason,
                         r.c.credit, r.c.received_at)
                  .where(r.c.swarm_id == swarm_id, r.c.epoch >= since).order_by(desc(r.c.id + 0)).limit(RECENT_REPORTS)
                  .subquery())  # fmt: skip
        recent = list(await conn.execute(
            select(latest, v.c.name).join(v, v.c.id == latest.c.volunteer_id).order_by(desc(latest.c.id))
        ))  # fmt: skip
        privacy_spent = await _privacy_spent(conn, swarm_id) if swarm.privacy else []
    hyper = dict(swarm.hyperparameters)
    return {
        "swarm_id": swarm.swarm_id, "title": swarm.title, "task": task_info(swarm.task), "hyperparameters": hyper,
        "data": swarm.data, "privacy": dict(swarm.privacy) if swarm.privacy else None, "privacy_spent": privacy_spent,
        "flops_per_sample": swarm.flops_per_sample, "created_at": iso(swarm.created_at),
        "progress": live_progress(monitor, swarm_id, int(hyper.get("target_batch_size") or 0)),
        "rounds": rounds,
        "loss_series": [[row["epoch"], row["loss"]] for row in rounds if row["loss"] is not None],
        "credit": totals.credit if totals else 0.0, "samples": totals.samples if totals else 0,
        "reports": totals.reports if totals else 0,
        "recent_reports": [
            {"volunteer": row.name, "node_id": row.node_id, "epoch": row.epoch, "samples": row.samples,
             "loss": row.loss, "status": row.status, "reason": row.reason, "credit": row.credit,
             "received_at": iso(row.received_at)}  # fmt: skip
            for row in recent
        ],
    }


async def _privacy_spent(conn, swarm_id: str) -> list[dict[str, Any]]:
    """ε each node of a differentially private swarm has spent, from its latest presence; largest first."""
    n, v = db.nodes, db.volunteers
    rows = await conn.execute(
        select(v.c.name, n.c.node_id, n.c.epsilon_spent, n.c.online).join(v, v.c.id == n.c.volunteer_id)
        .where(n.c.swarm_id == swarm_id, n.c.epsilon_spent.is_not(None))
        .order_by(desc(n.c.epsilon_spent)).limit(PRIVACY_NODES_SHOWN)
    )  # fmt: skip
    return [{"volunteer": row.name, "node_id": row.node_id, "epsilon_spent": row.epsilon_spent, "online": row.online}
            for row in rows]  # fmt: skip


async def swarms_overview(engine: AsyncEngine, monitor: Any) -> list[dict[str, Any]]:
    st = db.swarm_totals
    async with engine.connect() as conn:
        totals = {row.swarm_id: row for row in await conn.execute(select(st))}
    out = []
    for row in await queries.list_swarms(engine):
        hyper = dict(row.hyperparameters)
        total = totals.get(row.swarm_id)
        out.append({
            "swarm_id": row.swarm_id, "title": row.title, "task": task_info(row.task),
            "progress": live_progress(monitor, row.swarm_id, int(hyper.get("target_batch_size") or 0)),
            "credit": total.credit if total else 0.0, "samples": total.samples if total else 0,
        })  # fmt: skip
    return out
