"""A swarm's task assets on the node: pick the ones this node needs, download them from the coordinator, check
each file's sha256, and keep them in the cache directory (by digest) for the next start.

A cached file is re-hashed before use; one that no longer matches is deleted and downloaded again. A download
whose digest does not match is retried once, then refused with a clear error: the node never trains on a file
that is not the one the manifest names.
"""

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import urljoin

import httpx
from platformdirs import user_cache_dir

from hearth.tasks.assets import needed_names
from protocol.messages import TaskAsset

logger = logging.getLogger(__name__)

ATTEMPTS = 2
CHUNK = 1024 * 1024


class AssetError(RuntimeError):
    """An asset could not be had intact: unreachable, refused, or not the bytes the manifest names."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("HEARTH_CACHE_DIR") or user_cache_dir("hearth", appauthor=False)) / "assets"


def needed(task, assets: Iterable[TaskAsset], node_id: str) -> list[TaskAsset]:
    """The assets this node needs: the task chooses (tiny-lm: a few text shards); by default all of them."""
    assets = list(assets)
    missing = [name for name in getattr(task, "required_assets", ()) if name not in {asset.name for asset in assets}]
    if missing:
        raise AssetError(f"the swarm lists no {', '.join(missing)} asset, which task {task.name} needs")
    names = set(needed_names(task, [asset.name for asset in assets], node_id))
    return [asset for asset in assets if asset.name in names]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class AssetCache:
    def __init__(self, base_url: str, cache_dir: Optional[Path] = None, timeout: float = 30.0, verify: Any = True):
        self.base_url, self.timeout = base_url, timeout
        self.verify = verify  # httpx's verify: True, or an SSLContext that trusts a private CA
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.downloads = 0  # files fetched over the network (not from the cache)

    def fetch_all(self, assets: Iterable[TaskAsset]) -> dict[str, Path]:
        """Local, verified copies by asset name; raises AssetError."""
        return {asset.name: self.fetch(asset) for asset in assets}

    def fetch(self, asset: TaskAsset) -> Path:
        path = self.cache_dir / asset.sha256
        if path.is_file():
            if file_sha256(path) == asset.sha256:
                logger.debug("Asset %s: cached at %s", asset.name, path)
                return path
            logger.warning("Asset %s: the cached copy is corrupt; downloading it again", asset.name)
            path.unlink(missing_ok=True)
        url = urljoin(self.base_url, asset.url)
        for attempt in range(1, ATTEMPTS + 1):
            got = self._download(asset, url, path)
            if got == asset.sha256:
                logger.info("Asset %s: downloaded (%d bytes)", asset.name, asset.size)
                return path
            logger.warning("Asset %s from %s: sha256 %s, expected %s (attempt %d of %d)",
                           asset.name, url, got[:12], asset.sha256[:12], attempt, ATTEMPTS)  # fmt: skip
        raise AssetError(f"asset {asset.name} from {url} does not match its sha256 {asset.sha256} "
                         f"after {ATTEMPTS} downloads; the coordinator's copy may be damaged")  # fmt: skip

    def _download(self, asset: TaskAsset, url: str, path: Path) -> str:
        """Stream into a temporary file beside `path`; keep it as `path` only if its digest is right."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        handle, temporary = tempfile.mkstemp(dir=self.cache_dir, prefix=".download-")
        try:
            with os.fdopen(handle, "wb") as out, httpx.stream("GET", url, timeout=self.timeout,
                                                              verify=self.verify) as response:  # fmt: skip
                if response.status_code != 200:
                    raise AssetError(f"asset {asset.name}: {url} answered {response.status_code}")
                for chunk in response.iter_bytes(CHUNK):
                    size += len(chunk)
                    if size > asset.size:
                        break  # longer than the manifest says: wrong file, stop reading it
                    digest.update(chunk)
                    out.write(chunk)
            self.downloads += 1
            if size == asset.size and digest.hexdigest() == asset.sha256:
                os.replace(temporary, path)
                return asset.sha256
            return digest.hexdigest() if size == asset.size else f"(size {size}+, expected {asset.size})"
        except httpx.HTTPError as e:
            raise AssetError(f"cannot download asset {asset.name} from {url}: {e}") from None
        finally:
            Path(temporary).unlink(missing_ok=True)
