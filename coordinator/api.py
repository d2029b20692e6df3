"""The JSON API under /api/v1, and the one error shape every failure uses: {"error": {"code", "message"}}."""

import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator import queries
from coordinator.accounts import AccountRefused
from coordinator.ledger import Ledger, NameTaken, SwarmExists
from coordinator.reachability import CheckRefused, ReachabilityAnswer
from coordinator.swarms import define_swarm, manifest
from coordinator.teams import TeamRefused
from coordinator.teams import apply as apply_team_action
from hearth.tasks.registry import UnknownTask
from protocol.envelope import open_envelope, parse_body
from protocol.errors import ProtocolError
from protocol.messages import ID_PATTERN, SwarmManifest, TeamAction, VolunteerRegistration, check_fresh
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
    started_at: float = field(default_factory=time.time)

    @property
    def initial_peers(self) -> list[str]:
        return list(self.monitor.initial_peers) if self.monitor is not None else []


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = "not found" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, code, message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(422, "invalid_request", f"{where}: {first.get('msg')}" if where else first.get("msg"))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unhandled error serving %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error")


class VolunteerOut(BaseModel):
    name: str
    team: Optional[str]


class RegistrationOut(BaseModel):
    volunteer: VolunteerOut
    node_id: str
    account_key: Optional[str] = None  # only in the answer that creates the account (or claims its keys), once
    attach_key: Optional[str] = None


class SwarmCreate(BaseModel):
    swarm_id: str = Field(pattern=ID_PATTERN)
    task: str = "spirals"
    title: Optional[str] = Field(default=None, max_length=200)
    target_batch_size: Optional[int] = Field(default=None, ge=1)
    batch_size: Optional[int] = Field(default=None, ge=1)
    learning_rate: Optional[float] = Field(default=None, gt=0)
    matchmaking_time: Optional[float] = Field(default=None, gt=0)
    averaging_timeout: Optional[float] = Field(default=None, gt=0)
    average_state_every: Optional[int] = Field(default=None, ge=1, le=10**6)


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
        "peers": [{"peer_id": peer.peer_id, "epoch": peer.epoch, "samples_per_second": peer.samples_per_second,
                   "client_mode": peer.client_mode} for peer in p.peers],
    }  # fmt: skip


router = APIRouter(prefix="/api/v1")


@router.post("/volunteers", response_model=RegistrationOut, status_code=201)
async def register_volunteer(request: Request) -> JSONResponse:
    """Body: a sealed VolunteerRegistration, signed by the key it registers (proof of possession)."""
    try:
        opened = open_envelope(await request.body())
        registration = parse_body(opened, VolunteerRegistration)
        verify(registration.public_key, opened.signature, opened.body)
    except ProtocolError as e:
        raise ApiError(400, e.reason, f"invalid registration: {e}") from e
    try:
        record, created = await services(request).ledger.register(registration)
    except NameTaken as e:
        raise ApiError(409, "name_taken", str(e)) from e
    except AccountRefused as e:
        raise ApiError(e.status, e.code, e.message) from e
    body = RegistrationOut(volunteer=VolunteerOut(name=record["name"], team=record["team"]), node_id=record["node_id"],
                           account_key=record.get("account_key"), attach_key=record.get("attach_key"))  # fmt: skip
    return JSONResponse(body.model_dump(exclude={"account_key", "attach_key"} if body.account_key is None else None),
                        status_code=201 if created else 200)  # fmt: skip


@router.get("/swarms")
async def list_swarms(request: Request) -> JSONResponse:
    svc = services(request)
    rows = await queries.list_swarms(svc.ledger.engine)
    return JSONResponse({"swarms": [
        {**manifest(row, svc.initial_peers, svc.broker_url).model_dump(mode="json"), "progress": progress_json(svc, row.swarm_id)}
        for row in rows
    ]})  # fmt: skip


@router.post("/swarms", response_model=SwarmManifest, status_code=201)
async def create_swarm(request: Request, body: SwarmCreate, authorization: Optional[str] = Header(None)) -> SwarmManifest:
    svc = services(request)
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), svc.operator_token.encode()):
        raise ApiError(401, "unauthorized", "creating a swarm needs the operator token (Authorization: Bearer …)")
    overrides = body.model_dump(exclude={"swarm_id", "task", "title"})
    try:
        values = await define_swarm(body.swarm_id, body.task, body.title, overrides)
        await svc.ledger.create_swarm(values)
    except SwarmExists as e:
        raise ApiError(409, "swarm_exists", str(e)) from e
    except UnknownTask as e:
        raise ApiError(400, "unknown_task", str(e)) from e
    except ValueError as e:
        raise ApiError(400, "invalid_swarm", str(e)) from e
    if svc.monitor is not None:
        await svc.monitor.register(values["run_id"])
    row = await queries.get_swarm(svc.ledger.engine, body.swarm_id)
    return manifest(row, svc.initial_peers, svc.broker_url)


@router.get("/swarms/{swarm_id}", response_model=SwarmManifest)
async def get_swarm(request: Request, swarm_id: str) -> SwarmManifest:
    svc = services(request)
    row = await queries.get_swarm(svc.ledger.engine, swarm_id)
    if row is None:
        raise ApiError(404, "unknown_swarm", f"no swarm {swarm_id!r}")
    return manifest(row, svc.initial_peers, svc.broker_url)


@router.get("/swarms/{swarm_id}/progress")
async def swarm_progress(request: Request, swarm_id: str) -> JSONResponse:
    svc = services(request)
    if await queries.get_swarm(svc.ledger.engine, swarm_id) is None:
        raise ApiError(404, "unknown_swarm", f"no swarm {swarm_id!r}")
    return JSONResponse(progress_json(svc, swarm_id))


@router.post("/reachability", response_model=ReachabilityAnswer)
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
async def leaderboard(request: Request, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> JSONResponse:
    entries, total = await queries.leaderboard(services(request).ledger.engine, limit, offset)
    return JSONResponse({"volunteers": entries, "total": total, "limit": limit, "offset": offset})


@router.get("/teams")
async def teams(request: Request, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> JSONResponse:
    entries, total = await queries.team_leaderboard(services(request).ledger.engine, limit, offset)
    return JSONResponse({"teams": entries, "total": total, "limit": limit, "offset": offset})


@router.post("/teams/actions")
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


@router.get("/teams/{name:path}")
async def team(request: Request, name: str) -> JSONResponse:
    """A team: {name, founder, created_at, members (names), members_total, credit, samples, reports,
    last_report_at, recent_average_credit}. Totals are the credit granted while volunteers were members."""
    detail = await queries.team_detail(services(request).ledger.engine, name)
    if detail is None:
        raise ApiError(404, "unknown_team", f"no team named {name!r}")
    return JSONResponse(detail)


@router.get("/volunteers/{name:path}")
async def volunteer(request: Request, name: str) -> JSONResponse:
    detail = await queries.volunteer_detail(services(request).ledger.engine, name)
    if detail is None:
        raise ApiError(404, "unknown_volunteer", f"no volunteer named {name!r}")
    return JSONResponse(detail)


@router.get("/stats")
async def stats(request: Request) -> JSONResponse:
    svc = services(request)
    ledger_stats = await queries.ledger_stats(svc.ledger.engine)
    reachability = dict(svc.reachability.counters) if svc.reachability is not None else {}
    return JSONResponse({**ledger_stats, "ingest": dict(svc.counters), "reachability": reachability,
                         "uptime_seconds": time.time() - svc.started_at})  # fmt: skip
