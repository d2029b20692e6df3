"""Swarm definitions: creating a swarm from a task (FLOPs measured once, stored) and building its manifest."""

import asyncio
import logging
import secrets
from typing import Any, Optional

from coordinator.ledger import Ledger
from coordinator.assets import configured_task
from hearth.tasks import measure_flops_per_sample
from protocol.messages import Hyperparameters, SwarmManifest, is_valid_swarm_id

logger = logging.getLogger(__name__)

DEFAULT_SWARM_ID = "spirals"
HYPERPARAMETERS = ("batch_size", "target_batch_size", "learning_rate", "matchmaking_time", "averaging_timeout",
                   "average_state_every", "compression", "local_updates", "warmup_epochs")


def new_run_id(swarm_id: str) -> str:
    """hivemind's run_id: the DHT key prefix of the swarm; random per swarm so old records never collide."""
    return f"hearth-{swarm_id[:40]}-{secrets.token_hex(4)}"


async def define_swarm(swarm_id: str, task_name: str, title: Optional[str] = None,
                       overrides: Optional[dict[str, Any]] = None, *, access: str = "open",
                       task_options: Optional[dict[str, Any]] = None, data: str = "shared",
                       privacy: Optional[dict[str, Any]] = None, assets: Any = None) -> dict[str, Any]:  # fmt: skip
    """Validate a swarm definition and measure its task's FLOPs per sample; raises ValueError / LookupError.
    `task_options` is stored as {"options": {...}, "assets": [TaskAsset dicts]} (see manifest()); `assets` is the
    coordinator's AssetStore, where those files are."""
    if not is_valid_swarm_id(swarm_id):
        raise ValueError(f"swarm id {swarm_id!r} must be 1-63 lowercase letters, digits or '-', starting alphanumeric")
    task = await asyncio.to_thread(configured_task, task_name, task_options, assets)  # options checked, files read
    if privacy is not None and data != "local":
        raise ValueError("differential privacy settings apply to swarms that train on local data only (data: local)")
    if data == "local" and not task.reads_local_data:
        raise ValueError(f"task {task_name} cannot train on nodes' local data (data: local needs a task such as tabular)")
    defaults = {name: getattr(task.defaults, name) for name in HYPERPARAMETERS}
    chosen = {**defaults, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    unknown = set(chosen) - set(HYPERPARAMETERS)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s): {', '.join(sorted(unknown))}")
    for name in ("target_batch_size", "batch_size", "average_state_every", "warmup_epochs"):
        chosen[name] = int(chosen[name])
    chosen["local_updates"] = bool(chosen["local_updates"])
    for name in ("learning_rate", "matchmaking_time", "averaging_timeout"):
        chosen[name] = float(chosen[name])
    try:
        hyperparameters = Hyperparameters(**chosen)
    except Exception as e:  # pydantic's message names the field
        raise ValueError(f"invalid hyperparameters: {e}") from e
    flops = await asyncio.to_thread(measure_flops_per_sample, task)
    logger.info("Task %s: %d FLOPs per sample (forward + backward)", task_name, flops)
    return dict(
        swarm_id=swarm_id, title=title or task.description, run_id=new_run_id(swarm_id), task=task_name,
        hyperparameters=hyperparameters.model_dump(), flops_per_sample=flops,
        access=access, task_options=task_options, data=data, privacy=privacy,
    )  # fmt: skip


async def ensure_default_swarm(ledger: Ledger, task_name: str) -> None:
    """At first start (no swarm at all), create the `spirals` swarm so a node can join with zero set-up."""
    if await ledger.count_swarms() > 0:
        return
    values = await define_swarm(DEFAULT_SWARM_ID, task_name)
    await ledger.create_swarm(values)


def manifest(row: Any, initial_peers: list[str], broker_url: str) -> SwarmManifest:
    return SwarmManifest(
        swarm_id=row.swarm_id, title=row.title, run_id=row.run_id, task=row.task,
        hyperparameters=Hyperparameters(**row.hyperparameters), flops_per_sample=row.flops_per_sample,
        initial_peers=list(initial_peers), broker_url=broker_url, access=row.access,
        task_options=(row.task_options or {}).get("options", {}), assets=(row.task_options or {}).get("assets", []),
        data=row.data, privacy=row.privacy,
    )  # fmt: skip
