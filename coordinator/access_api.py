"""Access routes: the coordinator's public key, private swarms' DHT access tokens (logic: coordinator/tokens.py), and
the operator's ban. Errors use the API's one shape."""

import secrets
import time
from typing import Optional

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from coordinator.api import ApiError, bearer, services
from coordinator.broker_acl import revoke_banned
from coordinator.tokens import TokenRefused, set_banned
from protocol.envelope import open_envelope, parse_body
from protocol.errors import ProtocolError
from protocol.messages import check_fresh
from protocol.signing import verify
from protocol.tokens import AccessTokenRequest

router = APIRouter(prefix="/api/v1", tags=["access"])


@router.get("/coordinator-key")
async def coordinator_key(request: Request) -> JSONResponse:
    """{public_key}: the Ed25519 key that signs receipts and access tokens (also in every swarm manifest)."""
    return JSONResponse({"public_key": _issuer(request).key.public_key})


def _issuer(request: Request):
    """The coordinator's TokenIssuer. An app built without one (tests, benchmarks) answers 404 no_signing_key, as a
    coordinator without audits answers audits_off: nothing is down, the resource does not exist there."""
    issuer = services(request).issuer
    if issuer is None:
        raise ApiError(404, "no_signing_key", "this coordinator has no signing key")
    return issuer


@router.post("/swarms/{swarm_id}/access-token")
async def access_token(request: Request, swarm_id: str) -> JSONResponse:
    """Body: a sealed AccessTokenRequest signed by a registered node's key, `time` within 5 minutes, naming the
    RSA key of the PeerID the node proved at registration. Answers the hivemind AccessToken fields {username,
    public_key, expiration_time, signature} (bytes in URL-safe base64). 403 "banned" for a banned volunteer,
    "unproven_peer" for a peer key never bound, "node_detached"; 409 "open_swarm"; 404 "unknown_swarm"."""
    svc = services(request)
    try:
        opened = open_envelope(await request.body())
        message = parse_body(opened, AccessTokenRequest)
        verify(message.public_key, opened.signature, opened.body)
        check_fresh(message.time, time.time())
    except ProtocolError as e:
        raise ApiError(400, e.reason, f"invalid access token request: {e}") from e
    if message.swarm_id != swarm_id:
        raise ApiError(400, "wrong_swarm", "the signed request names another swarm than the URL")
    try:
        grant = await _issuer(request).for_node(svc.ledger.engine, message)
    except TokenRefused as e:
        raise ApiError(e.status, e.code, e.message) from e
    return JSONResponse(grant.model_dump())


def _operator(request: Request, authorization: Optional[str], doing: str) -> None:
    token = bearer(authorization) or ""
    if not secrets.compare_digest(token.encode(), services(request).operator_token.encode()):
        raise ApiError(401, "unauthorized", f"{doing} needs the operator token (Authorization: Bearer …)")


@router.post("/volunteers/{name:path}/ban")
async def ban(request: Request, name: str, authorization: Optional[str] = Header(None)) -> JSONResponse:
    """Ban a volunteer (operator token): its nodes get no more access tokens, so they fall out of private swarms when
    their token expires. {name, banned_at}; 404 "unknown_volunteer"."""
    return await _set_banned(request, name, authorization, True)


@router.delete("/volunteers/{name:path}/ban")
async def unban(request: Request, name: str, authorization: Optional[str] = Header(None)) -> JSONResponse:
    """Lift a ban (operator token): {name, banned_at: null}."""
    return await _set_banned(request, name, authorization, False)


async def _set_banned(request: Request, name: str, authorization: Optional[str], banned: bool) -> JSONResponse:
    _operator(request, authorization, "banning a volunteer" if banned else "lifting a ban")
    result = await set_banned(services(request).ledger.engine, name, banned)
    if result is None:
        raise ApiError(404, "unknown_volunteer", f"no volunteer named {name[:80]!r}")
    await revoke_banned(services(request).ledger.engine)  # the embedded broker's logins follow the ban
    return JSONResponse(result)
