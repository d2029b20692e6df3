"""Teams: the signed create / join / leave actions, and the join-or-create of a registration with a team.

A volunteer is in at most one team (`volunteers.team`); joining another leaves the first. A team outlives its
members: its founder may leave and the team (and its founder) stays. Credit is never moved: each grant is added
to the team_totals row of the team the volunteer was in at grant time, so credit earned before a move stays
with the old team and only later grants count for the new one.
"""

import hashlib
import logging
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from coordinator import db
from coordinator.accounts import AccountRefused, require_account_key
from protocol.messages import TeamAction
from protocol.signing import node_id_for

logger = logging.getLogger(__name__)


DOING = {"create": "creating", "join": "joining", "leave": "leaving"}


class TeamRefused(Exception):
    """An action that cannot be applied: HTTP status, error code and a one-line message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def join_or_create(conn, dialect: str, volunteer_id: int, name: str, now: datetime) -> None:
    """Registration with a team: create the team (founded by this volunteer) unless it exists. The caller sets
    volunteers.team. Safe against a concurrent creation of the same name (ON CONFLICT DO NOTHING)."""
    await conn.execute(
        db.upsert(dialect, db.teams).on_conflict_do_nothing(index_elements=[db.teams.c.name]),
        [{"name": name, "founder_id": volunteer_id, "created_at": now}],
    )


async def apply(engine, action: TeamAction, body: bytes, account_key: Optional[str],
                now: Optional[datetime] = None) -> dict[str, Any]:  # fmt: skip
    """Apply a verified, fresh TeamAction whose signed bytes are `body`, in one transaction; raise TeamRefused.
    `account_key` must be the account key of the signing node's account: a node key alone cannot change team.
    Answers {"volunteer", "action", "team", "previous_team", "founder"} (founder: of the team now joined)."""
    now = now or datetime.now(timezone.utc)
    digest = hashlib.sha256(body).hexdigest()
    v, n = db.volunteers, db.nodes
    async with engine.begin() as conn:
        volunteer = (await conn.execute(
            select(v.c.id, v.c.name, v.c.team).join(n, n.c.volunteer_id == v.c.id)
            .where(n.c.node_id == node_id_for(action.public_key), n.c.public_key == action.public_key)
        )).first()  # fmt: skip
        if volunteer is None:
            raise TeamRefused(403, "not_registered", "this node is not registered here; run `hearth join URL` first")
        try:
            await require_account_key(conn, account_key, volunteer.id, f"{DOING[action.action]} a team")
        except AccountRefused as e:
            raise TeamRefused(e.status, e.code, e.message) from e
        if (await conn.execute(select(db.team_actions.c.id).where(db.team_actions.c.body_sha256 == digest))).first():
            raise TeamRefused(409, "replayed", "this signed team action was already applied (replay refused)")
        team = await _change(conn, volunteer, action, now)
        try:
            await conn.execute(insert(db.team_actions).values(
                body_sha256=digest, volunteer_id=volunteer.id, action=action.action, team=action.team,
                sent_at=action.time, received_at=now,
            ))  # fmt: skip
        except IntegrityError as e:  # the same action applied concurrently
            raise TeamRefused(409, "replayed", "this signed team action was already applied (replay refused)") from e
        founder = team is not None and (await conn.execute(
            select(db.teams.c.founder_id).where(db.teams.c.name == team)
        )).scalar() == volunteer.id  # fmt: skip
    logger.info("Volunteer %s: team %s %s (was %s)", volunteer.name, action.action, team, volunteer.team)
    return {"volunteer": volunteer.name, "action": action.action, "team": team, "previous_team": volunteer.team,
            "founder": founder}  # fmt: skip


async def _change(conn, volunteer, action: TeamAction, now: datetime) -> Optional[str]:
    """The team the volunteer is in after the action."""
    t = db.teams
    exists = action.team is not None and (
        await conn.execute(select(t.c.name).where(t.c.name == action.team))
    ).first() is not None  # fmt: skip
    if action.action == "create":
        if exists:
            raise TeamRefused(409, "team_exists", f"a team named {action.team!r} already exists; join it instead")
        try:
            await conn.execute(insert(t).values(name=action.team, founder_id=volunteer.id, created_at=now))
        except IntegrityError as e:  # created concurrently
            raise TeamRefused(409, "team_exists", f"a team named {action.team!r} already exists") from e
        team = action.team
    elif action.action == "join":
        if not exists:
            raise TeamRefused(404, "unknown_team", f"no team named {action.team!r}; create it first")
        team = action.team
    else:
        if volunteer.team is None:
            raise TeamRefused(409, "not_in_team", "you are not in a team")
        team = None
    await conn.execute(update(db.volunteers).where(db.volunteers.c.id == volunteer.id).values(team=team))
    return team
