"""Checkpoint routes: GET /api/v1/swarms/{id}/checkpoints (list) and /checkpoints/{epoch|latest} (download).
The store (coordinator.checkpoints.CheckpointStore) is app.state.checkpoints; the files on disk are the truth."""

from datetime import datetime, timezone
from typing import Optional

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from coordinator import queries
from coordinator.api import ApiError, services
from coordinator.checkpoints import CheckpointInfo, CheckpointStore
from protocol.messages import is_valid_swarm_id

router = APIRouter(prefix="/api/v1/swarms/{swarm_id}/checkpoints")

SHA256_HEADER = "X-Checkpoint-Sha256"
EPOCH_HEADER = "X-Checkpoint-Epoch"


async def _store_for(request: Request, swarm_id: str) -> CheckpointStore:
    if not is_valid_swarm_id(swarm_id) or await queries.get_swarm(services(request).ledger.engine, swarm_id) is None:
        raise ApiError(404, "unknown_swarm", f"no swarm {swarm_id!r}")
    store: Optional[CheckpointStore] = getattr(request.app.state, "checkpoints", None)
    if store is None:
        raise ApiError(503, "checkpoints_unavailable", "this coordinator takes no checkpoints (it runs no DHT peer)")
    return store


def _url(info: CheckpointInfo) -> str:
    return f"/api/v1/swarms/{info.swarm_id}/checkpoints/{info.epoch}"


@router.get("")
async def list_checkpoints(request: Request, swarm_id: str) -> JSONResponse:
    """The checkpoints on disk, newest first: {epoch, time (ISO 8601, UTC), size (bytes), sha256, url, evaluation
    (the task's metrics on its held-out data, or null)}."""
    store = await _store_for(request, swarm_id)
    checkpoints = [
        {"epoch": info.epoch, "time": datetime.fromtimestamp(info.saved_at, timezone.utc).isoformat(),
         "size": info.size, "sha256": info.sha256, "url": _url(info), "evaluation": info.evaluation}
        for info in reversed(store.listing(swarm_id))
    ]  # fmt: skip
    return JSONResponse({"swarm_id": swarm_id, "keep": store.keep, "checkpoints": checkpoints})


@router.get("/{epoch}")
async def download_checkpoint(request: Request, swarm_id: str, epoch: str) -> FileResponse:
    """The checkpoint file of an epoch, or `latest`; its sha256 and epoch also come as response headers."""
    store = await _store_for(request, swarm_id)
    if epoch == "latest":
        info = store.latest(swarm_id)
    elif epoch.isdigit() and len(epoch) <= 12:
        info = store.get(swarm_id, int(epoch))
    else:
        raise ApiError(400, "invalid_epoch", f"epoch must be a number or 'latest', got {epoch[:40]!r}")
    if info is None:
        raise ApiError(404, "unknown_checkpoint", f"swarm {swarm_id!r} has no checkpoint {epoch!r}")
    return FileResponse(
        info.path, media_type="application/octet-stream", filename=f"{swarm_id}-epoch-{info.epoch}.pt",
        headers={SHA256_HEADER: info.sha256, EPOCH_HEADER: str(info.epoch)},
    )  # fmt: skip
