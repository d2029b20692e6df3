"""The JSON API under /api/v1. Every failure uses the error shape of coordinator/errors.py; every list is paged
the same way (`limit`, `offset` → {<items>, total, limit, offset, next})."""

import asyncio
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from coordinator import page_data, queries
from coordinator.errors import ApiError, error_doc  # ApiError: also imported from here by the other route modules
from coordinator.accounts import AccountRefused
from coordinator.assets import prepare_assets
from coordinator.ledger import Ledger, NameTaken, SwarmExists
from coordinator.reachability import CheckRefused, ReachabilityAnswer
from coordinator.queries import peer_fingerprint
from coordinator.swarms import define_swarm, manifest
from coordinator.teams import TeamRefused
from coordinator.tokens import bind_peer, proven_peer_id
from coordinator.broker_acl import HearthBrokerAuth, password_for
from coordinator.teams import apply as apply_team_action
from hearth.tasks.registry import UnknownTask
from protocol.envelope import open_envelope, parse_body
from protocol.errors import ProtocolError
from protocol.messages import (ID_PATTERN, DifferentialPrivacy, SwarmManifest, TaskOptionValue, TeamAction,
                               VolunteerRegistration, check_fresh)
from protocol.signing import verify

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """What the API and pages read; built by app.py."""

    ledger: Ledger
    broker_url: str
    operator_token: str
    counters: Counter = field(default_factory=Counter)
    monitor: Any = None  # coordinator.monitor.DHTMonitor, when running
    reachability: Any = None  # coordinator.reachability.ReachabilityProber, when the monitor runs
    exports_dir: Optional[Path] = None  # where coordinator.exports writes the public stats dumps
    assets: Any = None  # coordinator.assets.AssetStore: files of the swarms' tasks
    started_at: float = field(default_factory=time.time)
    issuer: Any = None  # coordinator.tokens.TokenIssuer: the coordinator's key; access tokens (coordinator/access_api.py)
    broker_secret: Optional[str] = None  # nodes' broker passwords derive from it (coordinator/broker_acl.py)
    forget_retained: Any = None  # async ([(swarm, node id)]): clear their retained MQTT messages (Ingestor.clear_retained)

    @property
    def initial_peers(self) -> list[str]:
        return list(self.monitor.initial_peers) if self.monitor is not None else []

    def manifest(self, row: Any) -> SwarmManifest:
        """A swarm's manifest: private swarms bootstrap from the coordinator's private DHT peer."""
        peers = self.monitor.peers_for(row.access) if self.monitor is not None else []
        key = self.issuer.key.public_key if self.issuer is not None else None
        return manifest(row, peers, self.broker_url).model_copy(update={"coordinator_key": key})


class VolunteerOut(BaseModel):
    name: str
    team: Optional[str]


class RegistrationOut(BaseModel):
    volunteer: VolunteerOut
    node_id: str
    account_key: Optional[str] = None  # only in the answer that creates the account (or claims its keys), once
    attach_key: Optional[str] = None
    broker_username: Optional[str] = None  # this node's MQTT login (coordinator/broker_acl.py)
    broker_password: Optional[str] = None


class SwarmCreate(BaseModel):
    # Upper bounds keep every value storable (SQLite integers are 64-bit) and JSON-serialisable (no inf/NaN).
    swarm_id: str = Field(pattern=ID_PATTERN)
    task: str = Field(default="spirals", max_length=64)
    title: Optional[str] = Field(default=None, max_length=200)
    target_batch_size: Optional[int] = Field(default=None, ge=1, le=10**12)
    batch_size: Optional[int] = Field(default=None, ge=1, le=10**9)
    learning_rate: Optional[float] = Field(default=None, gt=0, le=1e6, allow_inf_nan=False)
    matchmaking_time: Optional[float] = Field(default=None, gt=0, le=86400, allow_inf_nan=False)
    averaging_timeout: Optional[float] = Field(default=None, gt=0, le=86400, allow_inf_nan=False)
    average_state_every: Optional[int] = Field(default=None, ge=1, le=10**6)
    compression: Optional[Literal["none", "fp16", "int8"]] = None
    local_updates: Optional[bool] = None
    warmup_epochs: Optional[int] = Field(default=None, ge=0, le=10**6)
    access: Literal["open", "token"] = "open"
    task_options: dict[str, TaskOptionValue] = Field(default_factory=dict, max_length=64)
    assets: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")], Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=dict, max_length=16, description="The task's files: input name → sha256 of an upload (POST /api/v1/assets)")
    data: Literal["shared", "local"] = "shared"
    privacy: Optional[DifferentialPrivacy] = None


MAX_PAGE = 1000
MAX_OFFSET = 10**9
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Items per page (1 to {MAX_PAGE}).")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")]


def page(request: Request, key: str, items: list, total: int, limit: int, offset: int) -> dict:
    """One page of a list, the same for every list endpoint: `next` is the relative URL of the next page (None
    on the last one), with the request's other query parameters kept."""
    following = None
    if offset + limit < total:
        raw_path = request.scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else quote(request.url.path)
        query = {**request.query_params, "limit": str(limit), "offset": str(offset + limit)}
        following = f"{path}?{urlencode(query)}"
    return {key: items, "total": total, "limit": limit, "offset": offset, "next": following}


def bearer(authorization: Optional[str]) -> Optional[str]:
    """The token of an `Authorization: Bearer …` header, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def services(request: Request) -> Services:
    return request.app.state.services


def progress_json(svc: Services, swarm_id: str) -> dict:
    snapshot = svc.monitor.progress.get(swarm_id) if svc.monitor is not None else None
    if snapshot is None:
        return {"swarm_id": swarm_id, "epoch": None, "peers_online": 0, "samples_per_second": 0.0,
                "updated_at": None, "peers": []}  # fmt: skip
    p = snapshot.progress
    return {
        "swarm_id": swarm_id, "epoch": p.epoch, "peers_online": len(p.peers), "samples_per_second": p.samples_per_second,
        "updated_at": snapshot.updated_at,
        "peers": [{"peer_id": peer_fingerprint(peer.peer_id), "epoch": peer.epoch, "samples_per_second": peer.samples_per_second,
                   "client_mode": peer.client_mode} for peer in p.peers],
    }  # fmt: skip


router = APIRouter(prefix="/api/v1")


@router.post("/volunteers", response_model=RegistrationOut, status_code=201,
             responses={409: error_doc("The display name belongs to another volunteer")})
async def register_volunteer(request: Request) -> JSONResponse:
    """Body: a sealed VolunteerRegistration, signed by the key it registers (proof of possession)."""
    try:
        opened = open_envelope(await request.body())
        registration = parse_body(opened, VolunteerRegistration)
        verify(registration.public_key, opened.signature, opened.body)
        peer_id = proven_peer_id(registration.public_key, registration.peer_id, registration.peer_public_key,
                                 registration.peer_signature, registration.time)  # fmt: skip
    except ProtocolError as e:
        raise ApiError(400, e.reason, f"invalid registration: {e}") from e
    try:
        record, created = await services(request).ledger.register(registration)
    except NameTaken as e:
        raise ApiError(409, "name_taken", str(e)) from e
    except AccountRefused as e:
        raise ApiError(e.status, e.code, e.message) from e
    if peer_id is not None and not created:  # a known node with a (new) proven libp2p identity
        await bind_peer(services(request).ledger.engine, record["node_id"], peer_id, registration.time)
    secret = services(request).broker_secret
    body = RegistrationOut(volunteer=VolunteerOut(name=record["name"], team=record["team"]), node_id=record["node_id"],
                           account_key=record.get("account_key"), attach_key=record.get("attach_key"),
                           broker_username=record["node_id"] if secret else None,
                           broker_password=password_for(secret, record["node_id"]) if secret else None)  # fmt: skip
    hidden = {name for name in ("account_key", "attach_key", "broker_username", "broker_password")
              if getattr(body, name) is None}  # fmt: skip
    return JSONResponse(body.model_dump(exclude=hidden), status_code=201 if created else 200)


@router.get("/swarms")
async def list_swarms(request: Request, limit: Limit = 100, offset: Offset = 0) -> JSONResponse:
    """Swarms, oldest first, each with its manifest and live progress."""
    svc = services(request)
    rows, total = await queries.list_swarms_page(svc.ledger.engine, limit, offset)
    swarms = [
        {**svc.manifest(row).model_dump(mode="json"), "progress": progress_json(svc, row.swarm_id)}
        for row in rows
    ]  # fmt: skip
    return JSONResponse(page(request, "swarms", swarms, total, limit, offset))


@router.post("/swarms", response_model=SwarmManifest, status_code=201,
             responses={401: error_doc("No or a wrong operator token"), 409: error_doc("The swarm id is taken")})
async def create_swarm(request: Request, body: SwarmCreate, authorization: Optional[str] = Header(None)) -> SwarmManifest:
    svc = services(request)
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), svc.operator_token.encode()):
        raise ApiError(401, "unauthorized", "creating a swarm needs the operator token (Authorization: Bearer …)")
    settings = {"access", "task_options", "assets", "data", "privacy"}
    overrides = body.model_dump(exclude={"swarm_id", "task", "title", *settings})
    privacy = body.privacy.model_dump() if body.privacy is not None else None
    try:
        assets = await prepare_swarm_assets(svc, body)
        task_options = {"options": body.task_options, "assets": assets} if body.task_options or assets else None
        values = await define_swarm(body.swarm_id, body.task, body.title, overrides, access=body.access,
                                    task_options=task_options, data=body.data, privacy=privacy,
                                    assets=svc.assets)  # fmt: skip
        await svc.ledger.create_swarm(values)
    except SwarmExists as e:
        raise ApiError(409, "swarm_exists", str(e)) from e
    except UnknownTask as e:
        raise ApiError(400, "unknown_task", str(e)) from e
    except ValueError as e:
        raise ApiError(400, "invalid_swarm", str(e)) from e
    if svc.monitor is not None:
        await svc.monitor.register(values["run_id"], private=body.access == "token")
    row = await queries.get_swarm(svc.ledger.engine, body.swarm_id)
    return svc.manifest(row)


async def prepare_swarm_assets(svc: Services, body: SwarmCreate) -> list[dict]:
    """The manifest's assets from the operator's uploads, split as the task wants (coordinator/assets.py)."""
    if svc.assets is None:
        if body.assets:
            raise ValueError("this coordinator keeps no task assets")
        return []
    return await asyncio.to_thread(prepare_assets, body.task, body.task_options, body.assets, svc.assets)


@router.get("/swarms/{swarm_id}", response_model=SwarmManifest)
async def get_swarm(request: Request, swarm_id: str) -> SwarmManifest:
    svc = services(request)
    row = await queries.get_swarm(svc.ledger.engine, swarm_id)
    if row is None:
        raise ApiError(404, "unknown_swarm", f"no swarm {_shown(swarm_id)}")
    return svc.manifest(row)


@router.get("/swarms/{swarm_id}/progress")
async def swarm_progress(request: Request, swarm_id: str) -> JSONResponse:
    svc = services(request)
    if await queries.get_swarm(svc.ledger.engine, swarm_id) is None:
        raise ApiError(404, "unknown_swarm", f"no swarm {_shown(swarm_id)}")
    return JSONResponse(progress_json(svc, swarm_id))


@router.post("/reachability", response_model=ReachabilityAnswer,
             responses={503: error_doc("This coordinator runs no DHT peer")})
async def reachability(request: Request) -> JSONResponse:
    """Body {peer_id, addrs}: dial the node back at the TCP addresses it announces (policy and limits:
    coordinator/reachability.py). Answers {reachable, addr, detail}."""
    prober = services(request).reachability
    if prober is None:
        raise ApiError(503, "unavailable", "this coordinator runs no DHT peer, so it checks no reachability")
    try:
        answer = await prober.handle(await request.body(), request.client.host if request.client else "unknown")
    except CheckRefused as e:
        raise ApiError(e.status, e.code, e.message) from e
    return JSONResponse(answer.model_dump())


@router.get("/leaderboard")
async def leaderboard(request: Request, limit: Limit = 100, offset: Offset = 0,
                      sort: str = Query("credit", pattern="^(credit|rac|samples)$",
                                        description="Order: credit (default), rac (recent average credit) or samples."),
                      search: Optional[str] = Query(None, min_length=1, max_length=100,
                                                    description="Only names starting with this, by name (`rank` is "
                                                                "still the rank in `sort` order; `total` counts at most "
                                                                "10,001).")) -> JSONResponse:  # fmt: skip
    """Volunteers by granted credit (or `sort`), highest first; the website's leaderboard reads the same."""
    if sort == "credit" and search is None:
        entries, total = await queries.leaderboard(services(request).ledger.engine, limit, offset)
    else:
        board = await page_data.leaderboard(services(request).ledger.engine, sort, offset, limit, search)
        entries = board["entries"]
        total = board["total"]
    return JSONResponse(page(request, "volunteers", entries, total, limit, offset))


@router.get("/teams")
async def teams(request: Request, limit: Limit = 100, offset: Offset = 0) -> JSONResponse:
    """Teams by credit, highest first."""
    entries, total = await queries.team_leaderboard(services(request).ledger.engine, limit, offset)
    return JSONResponse(page(request, "teams", entries, total, limit, offset))


@router.post("/teams/actions", status_code=200,
             responses={201: {"description": "Team created"}, 409: error_doc("Team exists, not in a team, or replayed")})
async def team_action(request: Request, authorization: Optional[str] = Header(None)) -> JSONResponse:
    """Body: a sealed TeamAction {action: create|join|leave, team, public_key, time}, signed by the node key of a
    registered volunteer, with that volunteer's account key as `Authorization: Bearer acct-…` (401/403 without
    it: a node key alone cannot change team; see coordinator/accounts.py). `time` must be within 5 minutes of the coordinator's clock, and a signed action is
    applied once (a replayed copy gets 409 "replayed").

    create: 201, the volunteer founds and joins the team (409 "team_exists" if the name is taken). join: 200
    (404 "unknown_team"); a volunteer is in at most one team, so joining leaves the previous one. leave: 200
    (409 "not_in_team"); a founder may leave, the team stays. Answers {volunteer, action, team, previous_team,
    founder}. Credit already earned stays with the team it was earned in: team_totals grow per grant, with the
    team the volunteer was in at grant time, and nothing is moved when a volunteer changes team."""
    try:
        opened = open_envelope(await request.body())
        action = parse_body(opened, TeamAction)
        verify(action.public_key, opened.signature, opened.body)
        check_fresh(action.time, time.time())
    except ProtocolError as e:
        raise ApiError(400, e.reason, f"invalid team action: {e}") from e
    try:
        result = await apply_team_action(services(request).ledger.engine, action, opened.body, bearer(authorization))
    except TeamRefused as e:
        raise ApiError(e.status, e.code, e.message) from e
    return JSONResponse(result, status_code=201 if action.action == "create" else 200)


# The paged sub-lists come first: names may contain "/", and `{name:path}` would swallow "/members".
@router.get("/teams/{name:path}/members")
async def team_members(request: Request, name: str, limit: Limit = 100, offset: Offset = 0) -> JSONResponse:
    """A team's members by name: {members: [{name, credit, samples, reports}], total, limit, offset, next}."""
    found = await queries.team_members(services(request).ledger.engine, name, limit, offset)
    if found is None:
        raise ApiError(404, "unknown_team", f"no team named {_shown(name)}")
    return JSONResponse(page(request, "members", *found, limit, offset))


@router.get("/teams/{name:path}")
async def team(request: Request, name: str) -> JSONResponse:
    """A team: {name, founder, created_at, members (the first 1000 names; all of them, paged, at
    …/members), members_total, credit, samples, reports, last_report_at, recent_average_credit}. Totals are the
    credit granted while volunteers were members."""
    detail = await queries.team_detail(services(request).ledger.engine, name)
    if detail is None:
        raise ApiError(404, "unknown_team", f"no team named {_shown(name)}")
    return JSONResponse(detail)


@router.get("/volunteers/{name:path}/reports")
async def volunteer_reports(request: Request, name: str, limit: Limit = 100, offset: Offset = 0) -> JSONResponse:
    """A volunteer's reports, newest first, with status, reason and the rule that granted them."""
    found = await queries.volunteer_reports(services(request).ledger.engine, name, limit, offset)
    if found is None:
        raise ApiError(404, "unknown_volunteer", f"no volunteer named {_shown(name)}")
    return JSONResponse(page(request, "reports", *found, limit, offset))


@router.get("/volunteers/{name:path}")
async def volunteer(request: Request, name: str) -> JSONResponse:
    """A volunteer's totals, nodes, and latest 100 reports (`audit`; all of them, paged, at …/reports)."""
    detail = await queries.volunteer_detail(services(request).ledger.engine, name)
    if detail is None:
        raise ApiError(404, "unknown_volunteer", f"no volunteer named {_shown(name)}")
    return JSONResponse(detail)


def _shown(name: str, limit: int = 80) -> str:
    """A name as quoted in an error message, cut short: a 10 kB path must not come back as a 10 kB message."""
    return repr(name) if len(name) <= limit else repr(name[:limit]) + "…"


@router.get("/stats")
async def stats(request: Request) -> JSONResponse:
    svc = services(request)
    ledger_stats = await queries.ledger_stats(svc.ledger.engine)
    reachability = dict(svc.reachability.counters) if svc.reachability is not None else {}
    return JSONResponse({**ledger_stats, "ingest": dict(svc.counters), "reachability": reachability,
                         "broker_refused": dict(HearthBrokerAuth.refused),  # embedded broker, --broker-auth
                         "uptime_seconds": time.time() - svc.started_at})  # fmt: skip
