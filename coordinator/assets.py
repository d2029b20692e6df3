"""Task assets on the coordinator: files an operator gives a swarm's task (a text, a pretrained checkpoint).

An upload is stored once under its sha256 (`<data_dir>/assets/<sha256>`), so its URL never changes meaning.
Creating a swarm turns the operator's named uploads into the manifest's assets: a task may split a file
(`split_asset(name, path, out_dir)`, e.g. tiny-lm's text shards), each part stored and listed as a TaskAsset
with a relative URL (`/api/v1/assets/<sha256>`) that nodes resolve against the coordinator they joined.
The coordinator's own copies of a task (FLOPs, checkpoints, evaluation) are configured with local paths.
"""

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Mapping, Optional

from hearth.tasks import Task, TaskContext, load_task
from hearth.tasks.assets import needed_names
from protocol.messages import TaskAsset

logger = logging.getLogger(__name__)

MAX_ASSET_BYTES = 4 * 1024**3
URL_PREFIX = "/api/v1/assets/"
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


class AssetTooLarge(ValueError):
    pass


class AssetStore:
    """Content-addressed files: written to a temporary file while hashed, then renamed to their digest."""

    def __init__(self, root: Path, max_bytes: int = MAX_ASSET_BYTES):
        self.root, self.max_bytes = Path(root), max_bytes

    def path(self, sha256: str) -> Optional[Path]:
        if not SHA256_PATTERN.match(sha256):
            return None
        path = self.root / sha256
        return path if path.is_file() else None

    async def add_stream(self, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Store an upload; (sha256, size). Raises AssetTooLarge past max_bytes (nothing is kept)."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        handle, temporary = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise AssetTooLarge(f"an asset may have at most {self.max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            return self._keep(temporary, digest.hexdigest()), size
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def add_file(self, source: Path) -> tuple[str, int]:
        """Copy a local file in (blocking: call it in a thread); (sha256, size)."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        handle, temporary = tempfile.mkstemp(dir=self.root, prefix=".add-")
        try:
            with os.fdopen(handle, "wb") as out, open(source, "rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            return self._keep(temporary, digest.hexdigest()), size
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def _keep(self, temporary: str, sha256: str) -> str:
        target = self.root / sha256
        if target.exists():  # the same bytes were stored before
            Path(temporary).unlink()
        else:
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)
        return sha256

    def local_paths(self, assets: Iterable[Mapping[str, Any]]) -> dict[str, Path]:
        """Manifest assets (dicts) → local files by asset name; one this coordinator lacks is left out, logged."""
        paths = {}
        for asset in assets:
            path = self.path(asset["sha256"])
            if path is None:
                logger.warning("Asset %s (%s) is not in %s", asset["name"], asset["sha256"][:12], self.root)
            else:
                paths[asset["name"]] = path
        return paths


def prepare_assets(task_name: str, options: Mapping[str, Any], inputs: Mapping[str, str],
                   store: AssetStore) -> list[dict[str, Any]]:  # fmt: skip
    """The operator's uploads by input name ({"text": sha256}) → the manifest's TaskAsset dicts, split as the task
    wants. Blocking (reads and hashes files). Raises ValueError with a message for the operator."""
    task = load_task(task_name)
    task.configure(TaskContext(options=dict(options)))
    accepted = getattr(task, "asset_inputs", None)  # {name: what it is}; a task that names none takes any file
    unknown = set(inputs) - set(accepted) if accepted is not None else set()
    if unknown:
        names = ", ".join(sorted(accepted)) or "none"
        raise ValueError(f"task {task_name} takes no asset {', '.join(sorted(unknown))}; it takes: {names}")
    missing = [name for name in getattr(task, "required_assets", ()) if name not in inputs]
    if missing:
        raise ValueError(f"task {task_name} needs the asset(s) {', '.join(missing)} "
                         "(hearth swarm create --asset NAME=FILE)")
    split = getattr(task, "split_asset", None)
    assets = []
    store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.root) as scratch:
        for name, sha256 in sorted(inputs.items()):
            path = store.path(sha256)
            if path is None:
                raise ValueError(f"asset {name}: nothing was uploaded with sha256 {sha256[:64]}")
            parts = split(name, path, Path(scratch) / name) if split is not None else [(name, path)]
            for part_name, part_path in parts:
                digest, size = (sha256, path.stat().st_size) if part_path == path else store.add_file(part_path)
                assets.append(TaskAsset(name=part_name, url=URL_PREFIX + digest, sha256=digest, size=size).model_dump())
    logger.info("Task %s: %d asset(s) from %s", task_name, len(assets), ", ".join(sorted(inputs)))
    return assets


def configured_task(task_name: str, task_options: Optional[Mapping[str, Any]], store: Optional[AssetStore],
                    node_id: Optional[str] = None) -> Task:  # fmt: skip
    """The task as the coordinator runs it for a swarm: its options, and its assets from the local store (with
    `node_id`: only the assets that node has, e.g. its own text shards, so its data stream is the node's).
    `task_options` is the swarms row's column: {"options": {...}, "assets": [...]} or None."""
    task = load_task(task_name)
    stored = task_options or {}
    options = dict(stored.get("options", {}))
    listed = stored.get("assets", [])
    if node_id is not None and listed:
        task.configure(TaskContext(options=options))  # the options may say which assets a node takes
        chosen = set(needed_names(task, [asset["name"] for asset in listed], node_id))
        listed = [asset for asset in listed if asset["name"] in chosen]
    assets = store.local_paths(listed) if store is not None else {}
    if options or assets:
        task.configure(TaskContext(options=options, assets=assets))
    return task
