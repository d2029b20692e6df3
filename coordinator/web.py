"""The website: server-rendered pages (Jinja2, autoescaped) for the leaderboard, volunteers, teams, swarms and
joining. Pages refresh their live parts by re-fetching themselves (coordinator/static/site.js), so there is
one rendering path; data comes from coordinator/page_data.py."""

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from coordinator import page_data, queries
from coordinator.api import services

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
STATIC = HERE / "static"
POLL_SECONDS = 5
PAGE_SIZES = (25, 50, 100)

router = APIRouter(include_in_schema=False)

# What a report's or a rejected message's reason code means, for the audit trail.
REASONS = {
    "malformed": "the message could not be read",
    "oversized": "the message was too large",
    "bad_signature": "the signature did not match the node's key",
    "unsupported_version": "the node runs a protocol version this coordinator does not support",
    "replayed": "a copy of a report already counted (sent twice; nothing lost)",
    "unknown_sender": "the node is not registered here",
    "unknown_swarm": "the report names a swarm this coordinator does not run",
    "topic_mismatch": "the report was sent on another node's channel",
    "stale": "the message was too old",
    "protocol_error": "the message broke the protocol",
}


def _number(value: Optional[float]) -> str:
    if value is None:
        return "–"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if value >= 1 else f"{value:.4f}".rstrip("0").rstrip(".") or "0"


def _when(value: Optional[str]) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM UTC'."""
    return f"{value[:16].replace('T', ' ')} UTC" if value else "never"


def _duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _reason(code: Optional[str]) -> str:
    return REASONS.get(code or "", code or "")


def _static_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


STATIC_VERSION = _static_version()
TEMPLATES.env.filters.update(number=_number, when=_when, duration=_duration, reason=_reason)
TEMPLATES.env.globals.update(static_version=STATIC_VERSION, poll_seconds=POLL_SECONDS)


def _render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)


def _not_found(request: Request, what: str) -> HTMLResponse:
    return _render(request, "not_found.html", status_code=404, what=what, title="Not found")


def _link(path: str, **params: Any) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"{path}?{urlencode(kept)}" if kept else path


@router.get("/", response_class=HTMLResponse)
async def leaderboard(request: Request, view: str = Query("volunteers", pattern="^(volunteers|teams)$"),
                      sort: str = Query("credit", pattern="^(credit|rac|samples)$"), q: str = Query("", max_length=100),
                      page: int = Query(1, ge=1, le=1_000_000), size: int = Query(50)) -> HTMLResponse:  # fmt: skip
    svc = services(request)
    size = size if size in PAGE_SIZES else 50
    offset = (page - 1) * size
    stats = await page_data.site_stats(svc.ledger.engine)
    if view == "teams":
        board = await page_data.team_board(svc.ledger.engine, offset, size)
    else:
        board = await page_data.leaderboard(svc.ledger.engine, sort, offset, size, q.strip() or None)
    pages = max(1, math.ceil(board["total"] / size))

    def page_link(number: int) -> str:
        return _link("/", view=view if view != "volunteers" else None, sort=sort if sort != "credit" else None,
                     q=q.strip() or None, size=size if size != 50 else None, page=number if number > 1 else None)  # fmt: skip

    return _render(request, "leaderboard.html", title="Leaderboard", view=view, sort=sort, q=q, page=page,
                   pages=pages, size=size, sizes=PAGE_SIZES, board=board, stats=stats, page_link=page_link,
                   link=_link)  # fmt: skip


@router.get("/volunteers/{name:path}", response_class=HTMLResponse)
async def volunteer(request: Request, name: str) -> HTMLResponse:
    detail = await page_data.volunteer_page(services(request).ledger.engine, name)
    if detail is None:
        return _not_found(request, f"No volunteer is called “{name}”.")
    return _render(request, "volunteer.html", title=name, v=detail)


@router.get("/teams/{name:path}", response_class=HTMLResponse)
async def team(request: Request, name: str) -> HTMLResponse:
    detail = await page_data.team_page(services(request).ledger.engine, name)
    if detail is None:
        return _not_found(request, f"No team is called “{name}”.")
    return _render(request, "team.html", title=f"Team {name}", t=detail)


@router.get("/swarms", response_class=HTMLResponse)
async def swarms(request: Request) -> HTMLResponse:
    svc = services(request)
    return _render(request, "swarms.html", title="Swarms", swarms=await page_data.swarms_overview(svc.ledger.engine, svc.monitor))


@router.get("/swarms/{swarm_id}", response_class=HTMLResponse)
async def swarm(request: Request, swarm_id: str) -> HTMLResponse:
    svc = services(request)
    detail = await page_data.swarm_page(svc.ledger.engine, svc.monitor, swarm_id)
    if detail is None:
        return _not_found(request, f"No swarm has the id “{swarm_id}”.")
    return _render(request, "swarm.html", title=detail["title"], s=detail, now=time.time(),
                   checkpoints=_checkpoints(request, swarm_id))


def _checkpoints(request: Request, swarm_id: str) -> Optional[dict[str, Any]]:
    """The latest checkpoint of a swarm ({epoch, saved_at, size, url}), from the store that
    coordinator/checkpoint_api.py serves; None when this coordinator keeps no checkpoints."""
    store = getattr(request.app.state, "checkpoints", None)
    if store is None:
        return None
    latest = store.latest(swarm_id)
    if latest is None:
        return {"latest": None}
    return {"latest": {"epoch": latest.epoch, "saved_at": latest.saved_at, "size": latest.size, "sha256": latest.sha256,
                       "url": f"/api/v1/swarms/{swarm_id}/checkpoints/latest",
                       "evaluation": latest.evaluation or {}}}  # fmt: skip


@router.get("/join", response_class=HTMLResponse)
async def join(request: Request) -> HTMLResponse:
    svc = services(request)
    url = str(request.base_url).rstrip("/")
    swarms = await queries.list_swarms(svc.ledger.engine)
    return _render(request, "join.html", title="Join", command=f"hearth join {url}", url=url, swarms=swarms)


_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain", ".svg": "image/svg+xml"}


@router.get("/static/{path:path}")
async def static(path: str) -> Any:
    """Files under coordinator/static only; versioned URLs (?v=) may be cached for a year."""
    try:
        target = (STATIC / path).resolve()
        found = STATIC.resolve() in target.parents and target.is_file()
    except (ValueError, OSError):  # a NUL byte or a name too long for the file system: not ours either
        found = False
    if not found:
        return HTMLResponse("not found", status_code=404)
    media_type = _STATIC_TYPES.get(target.suffix, "text/plain" if "LICENSE" in target.name else "application/octet-stream")
    return FileResponse(target, media_type=media_type, headers={"Cache-Control": "public, max-age=31536000"})
