"""Audit routes: POST /api/v1/audits/answers (a node's signed answer) and GET /api/v1/audits (the audit trail).
The auditor (coordinator.audits.Auditor) is app.state.auditor, set when the coordinator verifies work."""

import time
from typing import Optional

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from coordinator import db
from coordinator.api import ApiError, Limit, Offset, page, services
from coordinator.audits import AuditRefused, Auditor
from protocol.envelope import verify_envelope
from protocol.errors import ProtocolError
from protocol.messages import NODE_ID_PATTERN, AuditAnswer, check_fresh

router = APIRouter(prefix="/api/v1/audits")


def _auditor(request: Request) -> Auditor:
    auditor: Optional[Auditor] = getattr(request.app.state, "auditor", None)
    if auditor is None:
        raise ApiError(404, "audits_off", "this coordinator does not audit work (it was started with --no-verify-work)")
    return auditor


@router.post("/answers")
async def answer(request: Request) -> JSONResponse:
    """Body: a sealed AuditAnswer signed by the audited node's key. Answers {audit_id, passed, reason}; 404
    "unknown_audit" when it answers no open audit of that node (answered already, timed out, or another node's)."""
    auditor = _auditor(request)
    ledger = services(request).ledger

    def key_for(message: AuditAnswer) -> Optional[str]:
        node = ledger.nodes.get(message.node_id)
        return None if node is None else node.public_key

    try:
        message = verify_envelope(await request.body(), AuditAnswer, public_key_for=key_for)
        check_fresh(message.time, time.time())
    except ProtocolError as e:
        raise ApiError(400, e.reason, f"invalid audit answer: {e}") from e
    try:
        return JSONResponse(await auditor.answer(message))
    except AuditRefused as e:
        raise ApiError(e.status, e.code, e.message) from e


@router.get("")
async def audits(request: Request, node_id: str = Query(pattern=NODE_ID_PATTERN), limit: Limit = 100,
                 offset: Offset = 0) -> JSONResponse:  # fmt: skip
    """A node's audits, newest first: {id, swarm_id, epoch, state_epoch, status, reason, requested_at, answered_at}."""
    a = db.audits
    async with services(request).ledger.engine.connect() as conn:
        total = (await conn.execute(select(func.count()).select_from(a).where(a.c.node_id == node_id))).scalar_one()
        rows = (await conn.execute(
            select(a.c.id, a.c.swarm_id, a.c.epoch, a.c.state_epoch, a.c.status, a.c.reason, a.c.requested_at,
                   a.c.answered_at).where(a.c.node_id == node_id).order_by(a.c.id.desc()).limit(limit).offset(offset)
        )).mappings()  # fmt: skip
        items = [{**row, "requested_at": _iso(row["requested_at"]), "answered_at": _iso(row["answered_at"])}
                 for row in rows]  # fmt: skip
    return JSONResponse(page(request, "audits", items, total, limit, offset))


def _iso(value) -> Optional[str]:
    return value.isoformat() if value is not None else None
