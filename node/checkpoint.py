"""Resuming from the coordinator's latest checkpoint when no peer in the swarm could give this node its state
(every node had left): download it, verify its sha256, and load model, optimizer and hivemind's epoch.

The file is read with `torch.load(weights_only=True)`: tensors and plain values only, never code. The format is
coordinator/swarm_state.py's: {epoch, model (state_dict), optimizer (state_dict), parameter_names, …}.
"""

import hashlib
import logging
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import httpx
import torch

logger = logging.getLogger(__name__)

LIST_TIMEOUT = 10.0
DOWNLOAD_TIMEOUT = 120.0


class CheckpointUnavailable(RuntimeError):
    """No usable checkpoint: the reason, in one sentence."""


class CoordinatorCheckpoints:
    """Called by node.swarm.SwarmMember.catch_up() with the hivemind Optimizer when peers gave it no newer state;
    True if this node now stands at the coordinator's checkpoint."""

    def __init__(self, coordinator_url: str, swarm_id: str, work_dir: Path):
        self.base_url, self.swarm_id, self.work_dir = coordinator_url.rstrip("/"), swarm_id, Path(work_dir)

    def __call__(self, optimizer) -> bool:
        epoch = optimizer.local_epoch
        try:
            latest = self.latest()
            if latest is None or latest["epoch"] <= epoch:
                logger.info("No peer had newer state and the coordinator has no checkpoint past epoch %d: "
                            "training from epoch %d", epoch, epoch)  # fmt: skip
                return False
            checkpoint = self.download(latest)
            apply_checkpoint(optimizer, checkpoint)
        except CheckpointUnavailable as e:
            logger.warning("No peer had newer state and the coordinator's checkpoint is unusable (%s): "
                           "training from epoch %d", e, epoch)  # fmt: skip
            return False
        logger.info("No peer had newer state: resumed from the coordinator's checkpoint of epoch %d (sha256 %s)",
                    optimizer.local_epoch, latest["sha256"])  # fmt: skip
        return True

    def latest(self) -> Optional[dict[str, Any]]:
        """The newest checkpoint's listing {epoch, sha256, url, …}, or None when the swarm has none."""
        url = f"{self.base_url}/api/v1/swarms/{self.swarm_id}/checkpoints"
        try:
            response = httpx.get(url, timeout=LIST_TIMEOUT)
        except httpx.HTTPError as e:
            raise CheckpointUnavailable(f"cannot reach the coordinator: {type(e).__name__}") from None
        if response.status_code == 503:
            return None  # this coordinator takes no checkpoints
        if response.status_code != 200:
            raise CheckpointUnavailable(f"listing answered HTTP {response.status_code}")
        try:
            listing = [self._checked(entry) for entry in response.json()["checkpoints"]]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointUnavailable(f"malformed checkpoint listing ({type(e).__name__}: {e})") from None
        return max(listing, key=lambda entry: entry["epoch"], default=None)

    def _checked(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Only what this node uses, validated: the URL must be a path on this coordinator, never another host."""
        epoch, sha256, url = int(entry["epoch"]), str(entry["sha256"]), str(entry["url"])
        if not re.fullmatch(r"[0-9a-f]{64}", sha256) or url != f"/api/v1/swarms/{self.swarm_id}/checkpoints/{epoch}":
            raise ValueError(f"unexpected checkpoint entry for epoch {epoch}")
        return {"epoch": epoch, "sha256": sha256, "url": url}

    def download(self, listing: dict[str, Any]) -> dict[str, Any]:
        """Stream the file to a temporary file, check its sha256 against the listing, and load it."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with tempfile.TemporaryFile(dir=self.work_dir) as f:
            try:
                with httpx.stream("GET", self.base_url + listing["url"], timeout=DOWNLOAD_TIMEOUT) as response:
                    if response.status_code != 200:
                        raise CheckpointUnavailable(f"download answered HTTP {response.status_code}")
                    for chunk in response.iter_bytes():
                        digest.update(chunk)
                        f.write(chunk)
            except httpx.HTTPError as e:
                raise CheckpointUnavailable(f"download failed: {type(e).__name__}") from None
            if digest.hexdigest() != listing["sha256"]:
                raise CheckpointUnavailable(f"sha256 mismatch for epoch {listing['epoch']}")
            f.seek(0)
            try:
                checkpoint = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # a corrupt or foreign file: torch raises many kinds
                raise CheckpointUnavailable(f"cannot read the file ({type(e).__name__})") from None
        if not isinstance(checkpoint, dict) or checkpoint.get("epoch") != listing["epoch"]:
            raise CheckpointUnavailable("the file is not the listed epoch's checkpoint")
        return checkpoint


def apply_checkpoint(optimizer, checkpoint: dict[str, Any]) -> None:
    """Load parameters, optimizer statistics and epoch into a hivemind.Optimizer, as its own
    load_state_from_peers() does with a peer's state (hivemind 1.1.12: optim/optimizer.py, state_averager.py)."""
    averager = optimizer.state_averager
    params = [param for group in averager.optimizer.param_groups for param in group["params"]]
    try:
        names, model_state = checkpoint["parameter_names"], checkpoint["model"]
        tensors = [model_state[name] for name in names]
    except (KeyError, TypeError) as e:
        raise CheckpointUnavailable(f"the file lacks {e}") from None
    if len(tensors) != len(params) or any(not isinstance(t, torch.Tensor) or t.shape != p.shape
                                          for t, p in zip(tensors, params)):  # fmt: skip
        raise CheckpointUnavailable("its parameters do not fit this task's model")
    with torch.no_grad(), averager.lock_averaged_tensors:
        try:
            averager.optimizer.load_state_dict(checkpoint["optimizer"])
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointUnavailable(f"its optimizer state does not fit ({e})") from None
        for param, tensor in zip(params, tensors):
            param.copy_(tensor)
    if averager.offload_optimizer:
        averager._apply_optimizer_parameters_()
    if not averager.reuse_tensors:
        averager._load_local_tensors_into_averager_()
    averager.local_epoch = int(checkpoint["epoch"])
    optimizer.tracker.report_local_progress(local_epoch=optimizer.local_epoch, samples_accumulated=0)
    if not optimizer.client_mode:  # other joiners may download this state now
        averager.state_sharing_priority = optimizer.local_epoch
    if optimizer.use_gradient_averaging:
        optimizer.grad_averager.reset_accumulated_grads_()
        if not optimizer.client_mode:
            optimizer.grad_averager.state_sharing_priority = optimizer.local_epoch
