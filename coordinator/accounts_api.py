"""The account routes under /api/v1/accounts (logic: coordinator/accounts.py). Keys travel as
`Authorization: Bearer …`: the attach key or account key where either will do, the account key for changes.
Errors use the API's one shape; a missing or wrong key is 401, a key too weak for the action 403."""

import re
import time
from typing import Optional

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, field_validator

from coordinator import accounts, privacy
from coordinator.accounts import AccountRefused
from coordinator.api import ApiError, bearer, services
from coordinator.tokens import bind_peer, proven_peer_id
from protocol.envelope import open_envelope, parse_body
from protocol.errors import ProtocolError
from protocol.messages import NODE_ID_PATTERN, NodeAttach, check_fresh, clean_display_name
from protocol.signing import verify

router = APIRouter(prefix="/api/v1/accounts", tags=["accounts"])


class Rename(BaseModel):
    name: str

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return clean_display_name(value)


async def _answer(call, status: int = 200) -> JSONResponse:
    try:
        return JSONResponse(await call, status_code=status)
    except AccountRefused as e:
        raise ApiError(e.status, e.code, e.message) from e


@router.get("/me")
async def account(request: Request, authorization: Optional[str] = Header(None)) -> JSONResponse:
    """The account the bearer key opens (attach or account key): {name, team, founder, created_at, credit, samples,
    reports, pending_credit, recent_average_credit, key: "acct"|"attach", nodes: [{node_id, device, online,
    last_seen, created_at, detached_at, credit, samples, reports}]}. Its credit is the sum of its nodes'."""
    return await _answer(accounts.account_detail(services(request).ledger.engine, bearer(authorization)))


@router.post("/nodes", status_code=201)
async def attach_node(request: Request, authorization: Optional[str] = Header(None)) -> JSONResponse:
    """Body: a sealed NodeAttach signed by the new node's key, `time` within 5 minutes; bearer: the account's attach
    key (or account key). 201 {volunteer: {name, team}, node_id} when attached, 200 when it already was; 409 if the
    node belongs to another account, 403 if it was detached."""
    try:
        opened = open_envelope(await request.body())
        message = parse_body(opened, NodeAttach)
        verify(message.public_key, opened.signature, opened.body)
        check_fresh(message.time, time.time())
        peer_id = proven_peer_id(message.public_key, message.peer_id, message.peer_public_key, message.peer_signature,
                                 message.time)  # fmt: skip
    except ProtocolError as e:
        raise ApiError(400, e.reason, f"invalid attach request: {e}") from e
    try:
        record, created = await accounts.attach(services(request).ledger, message, bearer(authorization))
    except AccountRefused as e:
        raise ApiError(e.status, e.code, e.message) from e
    if peer_id is not None and not created:
        await bind_peer(services(request).ledger.engine, record["node_id"], peer_id, message.time)
    body = {"volunteer": {"name": record["name"], "team": record["team"]}, "node_id": record["node_id"]}
    return JSONResponse(body, status_code=201 if created else 200)


@router.delete("/nodes/{node_id}")
async def detach_node(request: Request, node_id: str, authorization: Optional[str] = Header(None)) -> JSONResponse:
    """Detach one of the account's nodes (account key): its key is revoked, its credit stays with the account."""
    if re.fullmatch(NODE_ID_PATTERN, node_id) is None:
        raise ApiError(400, "invalid_node_id", "a node id is 32 hexadecimal digits (see `hearth account show`)")
    return await _answer(accounts.detach(services(request).ledger, bearer(authorization), node_id))


@router.post("/attach-key")
async def rotate_attach_key(request: Request, authorization: Optional[str] = Header(None)) -> JSONResponse:
    """A new attach key (account key needed), shown once: {name, attach_key}. The old attach key stops working;
    nodes already attached keep reporting."""
    return await _answer(accounts.rotate_attach_key(services(request).ledger.engine, bearer(authorization)))


@router.post("/name")
async def rename(request: Request, body: Rename, authorization: Optional[str] = Header(None)) -> JSONResponse:
    """Change the display name (account key): {name, previous_name}; 409 "name_taken"."""
    return await _answer(accounts.rename(services(request).ledger.engine, bearer(authorization), body.name))


@router.get("/me/export")
async def export_account(request: Request, authorization: Optional[str] = Header(None)) -> JSONResponse:
    """Everything this coordinator holds about the account (account key): {exported_at, volunteer, totals, team,
    nodes (with their totals), reports, grants, rejected_messages, team_actions} (coordinator/privacy.py)."""
    return await _answer(privacy.export_volunteer(services(request).ledger.engine, bearer(authorization)))


@router.delete("/me")
async def delete_account(request: Request, authorization: Optional[str] = Header(None)) -> JSONResponse:
    """Erase the account's personal data (account key): name, keys, node keys and details, team actions; the
    credit totals stay, anonymous, so team and swarm totals do not change. {erased, nodes, reports}."""
    svc = services(request)
    erasure = privacy.erase_volunteer(svc.ledger, bearer(authorization), forget_retained=svc.forget_retained)
    return await _answer(erasure)
