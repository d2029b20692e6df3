"""The website: a server-rendered leaderboard with a swarm summary (Jinja2, autoescaped), refreshing itself."""

from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from coordinator import queries
from coordinator.api import progress_json, services

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
REFRESH_SECONDS = 5

router = APIRouter()


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if value >= 1 else f"{value:.4f}".rstrip("0").rstrip(".") or "0"


TEMPLATES.env.filters["number"] = _number


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request, limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)) -> HTMLResponse:
    svc = services(request)
    entries, total = await queries.leaderboard(svc.ledger.engine, limit, offset)
    swarms = [
        {"swarm_id": row.swarm_id, "title": row.title, "task": row.task, "progress": progress_json(svc, row.swarm_id)}
        for row in await queries.list_swarms(svc.ledger.engine)
    ]
    stats = await queries.ledger_stats(svc.ledger.engine)
    context = {"entries": entries, "total": total, "swarms": swarms, "stats": stats, "refresh": REFRESH_SECONDS,
               "limit": limit, "offset": offset}  # fmt: skip
    return TEMPLATES.TemplateResponse(request, "index.html", context)
