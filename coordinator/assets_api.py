"""Asset routes: POST /api/v1/assets (operator uploads a file; streamed, hashed, stored once by sha256) and
GET /api/v1/assets/{sha256} (anyone downloads it; immutable, so caches may keep it forever; Range supported).
The store (coordinator.assets.AssetStore) is Services.assets."""

import logging
import secrets
from typing import Optional

from fastapi import APIRouter, Header, Request
from fastapi.responses import FileResponse, JSONResponse

from coordinator.api import ApiError, bearer, services
from coordinator.assets import SHA256_PATTERN, URL_PREFIX, AssetStore, AssetTooLarge
from coordinator.errors import error_doc

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/assets")
IMMUTABLE = "public, max-age=31536000, immutable"


def _store(request: Request) -> AssetStore:
    store: Optional[AssetStore] = services(request).assets
    if store is None:
        raise ApiError(503, "assets_unavailable", "this coordinator keeps no task assets")
    return store


@router.post("", status_code=201, responses={401: error_doc("No or a wrong operator token"),
                                             413: error_doc("Larger than the coordinator keeps")})  # fmt: skip
async def upload_asset(request: Request, authorization: Optional[str] = Header(None)) -> JSONResponse:
    """Body: the file's bytes. Answers {sha256, size, url}; name the upload in a swarm with `assets: {NAME: sha256}`.
    Uploading the same bytes again stores nothing new."""
    token = bearer(authorization) or ""
    if not secrets.compare_digest(token.encode(), services(request).operator_token.encode()):
        raise ApiError(401, "unauthorized", "uploading an asset needs the operator token (Authorization: Bearer …)")
    store = _store(request)
    try:
        sha256, size = await store.add_stream(request.stream())
    except AssetTooLarge as e:
        raise ApiError(413, "body_too_large", str(e)) from e
    logger.info("Asset %s stored (%d bytes)", sha256[:12], size)
    return JSONResponse({"sha256": sha256, "size": size, "url": URL_PREFIX + sha256}, status_code=201)


@router.get("/{sha256}", responses={404: error_doc("No asset has this digest")})
async def download_asset(request: Request, sha256: str) -> FileResponse:
    """The file whose sha256 is in the URL (lowercase hex)."""
    path = _store(request).path(sha256) if SHA256_PATTERN.match(sha256) else None
    if path is None:
        raise ApiError(404, "unknown_asset", f"no asset with sha256 {sha256[:64]!r}")
    return FileResponse(path, media_type="application/octet-stream", headers={"Cache-Control": IMMUTABLE})
