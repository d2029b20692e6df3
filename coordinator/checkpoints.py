"""Swarm checkpoints: the files on disk and the task that takes them.

`<data_dir>/checkpoints/<swarm_id>/epoch-<E>.pt` is a torch file (model state_dict, optimizer state_dict, epoch;
coordinator/swarm_state.py builds it, node/checkpoint.py loads it) next to `epoch-<E>.pt.sha256`. Each file is
written to a temporary name and renamed (sidecar first), so a listed checkpoint is always complete; only the
last K are kept. The files are the source of truth: there is no table.

CheckpointScheduler downloads a swarm's state from its peers every `interval` seconds when a peer is online
and the swarm's epoch passed the last checkpoint's. A failed download is logged and counted, never raised.
"""

import asyncio
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from coordinator import queries
from coordinator.swarm_state import StateDownloader, StateMismatch, build_checkpoint

logger = logging.getLogger(__name__)

FILE_PATTERN = re.compile(r"epoch-(\d+)\.pt")
SIDECAR = ".sha256"
EVALUATION = ".eval.json"  # the task's held-out metrics of the checkpoint's model (optional)
DOWNLOAD_TIMEOUT = 120.0  # seconds for one state download (hivemind also bounds each chunk by its request_timeout)


@dataclass(frozen=True)
class CheckpointInfo:
    swarm_id: str
    epoch: int
    path: Path
    size: int
    sha256: str
    saved_at: float
    evaluation: Optional[dict] = None  # e.g. {"loss": 0.21, "accuracy": 0.93}; None if the task has no metric


def file_name(epoch: int) -> str:
    return f"epoch-{epoch}.pt"


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_synced(path: Path, write) -> None:
    with path.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


class CheckpointStore:
    """The checkpoint files of every swarm under one directory."""

    def __init__(self, root: Path, keep: int):
        if keep < 1:
            raise ValueError("keep at least one checkpoint")
        self.root, self.keep = Path(root), keep

    def directory(self, swarm_id: str) -> Path:
        return self.root / swarm_id

    def save(self, swarm_id: str, checkpoint: dict[str, Any]) -> CheckpointInfo:
        """Write atomically (a crash leaves the previous files as they were), then prune to the last K."""
        epoch = int(checkpoint["epoch"])
        directory = self.directory(swarm_id)
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / file_name(epoch)
        tmp = directory / f".{final.name}.{os.getpid()}.tmp"
        sidecar_tmp = directory / f".{final.name}{SIDECAR}.{os.getpid()}.tmp"
        evaluation_tmp = directory / f".{final.name}{EVALUATION}.{os.getpid()}.tmp"
        try:
            if checkpoint.get("evaluation"):
                _write_synced(evaluation_tmp, lambda f: f.write(json.dumps(checkpoint["evaluation"]).encode()))
                os.replace(evaluation_tmp, directory / (final.name + EVALUATION))
            _write_synced(tmp, lambda f: torch.save(checkpoint, f))
            digest = sha256_of(tmp)
            _write_synced(sidecar_tmp, lambda f: f.write(f"{digest}  {final.name}\n".encode()))
            os.replace(sidecar_tmp, directory / (final.name + SIDECAR))
            os.replace(tmp, final)
        finally:
            for leftover in (tmp, sidecar_tmp, evaluation_tmp):
                leftover.unlink(missing_ok=True)
        self.prune(swarm_id)
        return self.get(swarm_id, epoch)

    def listing(self, swarm_id: str) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest epoch first."""
        directory = self.directory(swarm_id)
        if not directory.is_dir():
            return []
        found = []
        for path in directory.iterdir():
            match = FILE_PATTERN.fullmatch(path.name)
            if match is None:
                continue
            info = self._info(swarm_id, int(match.group(1)), path)
            if info is not None:
                found.append(info)
        return sorted(found, key=lambda info: info.epoch)

    def get(self, swarm_id: str, epoch: int) -> Optional[CheckpointInfo]:
        path = self.directory(swarm_id) / file_name(epoch)
        return self._info(swarm_id, epoch, path)

    def latest(self, swarm_id: str) -> Optional[CheckpointInfo]:
        checkpoints = self.listing(swarm_id)
        return checkpoints[-1] if checkpoints else None

    def _info(self, swarm_id: str, epoch: int, path: Path) -> Optional[CheckpointInfo]:
        try:
            stat = path.stat()
            digest = (path.parent / (path.name + SIDECAR)).read_text().split()[0]
        except (OSError, IndexError):  # pruned meanwhile, or no sidecar: not a complete checkpoint
            return None
        return CheckpointInfo(swarm_id, epoch, path, stat.st_size, digest, stat.st_mtime, _evaluation(path))

    def prune(self, swarm_id: str) -> list[int]:
        """Delete all but the last K checkpoints (file first, then its sidecar), and leftovers of dead writers."""
        directory = self.directory(swarm_id)
        removed = []
        for info in self.listing(swarm_id)[: -self.keep]:
            info.path.unlink(missing_ok=True)
            (directory / (info.path.name + SIDECAR)).unlink(missing_ok=True)
            (directory / (info.path.name + EVALUATION)).unlink(missing_ok=True)
            removed.append(info.epoch)
        for path in directory.glob(".*.tmp"):
            if not path.name.endswith(f".{os.getpid()}.tmp"):
                path.unlink(missing_ok=True)
        if removed:
            logger.info("Pruned checkpoints of %s: epochs %s", swarm_id, ", ".join(map(str, removed)))
        return removed


def _evaluation(path: Path) -> Optional[dict]:
    try:
        evaluation = json.loads((path.parent / (path.name + EVALUATION)).read_text())
    except (OSError, ValueError):
        return None
    return evaluation if isinstance(evaluation, dict) else None


class CheckpointScheduler:
    """Takes each swarm's checkpoint every `interval` seconds, when it is worth one."""

    def __init__(self, store: CheckpointStore, engine, monitor, interval: float, metrics=None,
                 downloader: Optional[StateDownloader] = None, assets=None):  # fmt: skip
        self.store, self.engine, self.monitor, self.interval, self.metrics = store, engine, monitor, interval, metrics
        self.assets = assets  # coordinator.assets.AssetStore: the tasks' files (a pretrained model, held-out text)
        self.downloader = downloader or StateDownloader(monitor.dht, getattr(monitor, "dht_for", None))
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="checkpoints")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.run_once()

    async def run_once(self) -> list[CheckpointInfo]:
        """One pass over every swarm; returns the checkpoints saved."""
        saved = []
        for row in await queries.list_swarms(self.engine):
            try:
                info = await self.checkpoint(row)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # hivemind, the disk, a peer's malformed state: never the coordinator's end
                reason = _failure_reason(e)
                logger.warning("Checkpoint of swarm %s failed (%s: %s); next try in %.0f s",
                               row.swarm_id, reason, e or type(e).__name__, self.interval)  # fmt: skip
                if self.metrics is not None:
                    self.metrics.checkpoint_failures.labels(reason).inc()
                continue
            if info is not None:
                saved.append(info)
        return saved

    async def checkpoint(self, row) -> Optional[CheckpointInfo]:
        """Download and save `row`'s swarm state if a peer is online and the epoch advanced; None if not due."""
        snapshot = self.monitor.progress.get(row.swarm_id)
        if snapshot is None or not snapshot.progress.peers:
            return None
        latest = self.store.latest(row.swarm_id)
        last_epoch = latest.epoch if latest is not None else 0  # epoch 0 is the task's seeded initial model
        if snapshot.progress.epoch <= last_epoch:
            return None
        started = time.monotonic()
        state = await self.downloader.download(row.run_id, DOWNLOAD_TIMEOUT)
        if state is None:
            raise NoStateShared("no online peer shared its state")
        metadata, tensors = state
        epoch = metadata.get("epoch") if isinstance(metadata, dict) else None
        if not isinstance(epoch, int) or epoch <= last_epoch:
            return None  # the peer that answered is not ahead of the last checkpoint
        checkpoint = await asyncio.to_thread(build_checkpoint, row, metadata, tensors, self.assets)
        info = await asyncio.to_thread(self.store.save, row.swarm_id, checkpoint)
        if self.metrics is not None:
            self.metrics.checkpoints_saved.inc()
        logger.info("Saved checkpoint of swarm %s at epoch %d (%.1f MB, %.1f s)",
                    row.swarm_id, epoch, info.size / 1e6, time.monotonic() - started)  # fmt: skip
        return info

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.downloader.close()


class NoStateShared(RuntimeError):
    pass


def _failure_reason(error: Exception) -> str:
    """One of coordinator.metrics.CHECKPOINT_FAILURE_REASONS."""
    if isinstance(error, NoStateShared):
        return "no_state"
    if isinstance(error, StateMismatch):
        return "mismatch"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, OSError):
        return "disk"
    return "error"

