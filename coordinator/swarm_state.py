"""Downloading a swarm's training state from its peers, as a joining node does, and turning it into a checkpoint.

Nodes run hivemind.Optimizer, whose TrainingStateAverager (prefix `<run_id>_state_averager`) serves its state
as (metadata {epoch, optimizer_metadata, …}, [parameters…, optimizer tensors…]) to whoever asks. The coordinator
asks with a plain DecentralizedAverager under the same prefix, in client mode, holding one dummy tensor: it never
averages, never shares state and accepts no connections, so it costs one idle process per swarm and no copy of
the model between checkpoints. The task's model and optimizer are built only to lay the tensors out.
"""

import asyncio
import functools
import logging
import time
from typing import Any, Optional, Sequence

import torch

from coordinator.assets import configured_task
from coordinator.monitor import _signals_ignored

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "hearth-checkpoint-1"
AVERAGER_START_TIMEOUT = 30.0


class StateMismatch(ValueError):
    """A peer's state does not fit the swarm's task (another model, or a malformed answer)."""


class StateDownloader:
    """One download-only hivemind averager per swarm, on the DHT monitor's peer, started at first use."""

    def __init__(self, dht, dht_for=None):
        """`dht_for(run_id)`: the peer a swarm's averager uses (DHTMonitor.dht_for: private swarms have their own)."""
        self.dht, self.dht_for = dht, dht_for
        self._averagers: dict[str, Any] = {}

    async def download(self, run_id: str, timeout: float) -> Optional[tuple[dict, list[torch.Tensor]]]:
        """(metadata, tensors) from the peer with the newest state; None when no peer shared one."""
        averager = await self._averager(run_id)
        # An MPFuture, awaited here: a coordinator stopping mid-download is not held up by a waiting thread.
        return await asyncio.wait_for(averager.load_state_from_peers(wait=False, timeout=timeout), timeout)

    async def _averager(self, run_id: str):
        if run_id not in self._averagers:
            averager = _state_client_class()(
                averaged_tensors=[torch.zeros(1)], dht=self.dht_for(run_id) if self.dht_for else self.dht,
                prefix=f"{run_id}_state_averager",
                client_mode=True, start=False,
            )  # fmt: skip
            with _signals_ignored():  # fork here, in the main thread: the child must not inherit our signal handlers
                averager.start()
            try:
                await asyncio.to_thread(averager.wait_until_ready, AVERAGER_START_TIMEOUT)
            except BaseException:
                averager.terminate()
                raise
            self._averagers[run_id] = averager
        return self._averagers[run_id]

    async def close(self) -> None:
        averagers, self._averagers = list(self._averagers.values()), {}
        for averager in averagers:
            await asyncio.to_thread(averager.shutdown)


@functools.cache
def _state_client_class():
    from hivemind.averaging import DecentralizedAverager
    from hivemind.optim.state_averager import TrainingStateAverager

    class StateClient(DecentralizedAverager):
        """Asks for state as a TrainingStateAverager does: libp2p protocol names carry the servicer's class name."""

        @classmethod
        def get_stub(cls, p2p, peer, *, namespace=None):
            return TrainingStateAverager.get_stub(p2p, peer, namespace=namespace)

    return StateClient


def build_checkpoint(row: Any, metadata: dict, tensors: Sequence[torch.Tensor], assets=None) -> dict[str, Any]:
    """Lay a downloaded state out as the task's model and optimizer state_dicts (CPU work: run it in a thread).
    `row` is the swarm's ledger row (swarm_id, run_id, task, hyperparameters, task_options); `assets` the
    coordinator's AssetStore, for tasks built from files."""
    from hivemind.optim.state_averager import initialize_optimizer_state_, load_optimizer_state

    task = configured_task(row.task, getattr(row, "task_options", None), assets)
    model = task.build_model()
    optimizer = task.make_optimizer(model.parameters(), row.hyperparameters["learning_rate"])
    # Nodes run the task's schedule on their optimizer, which adds "initial_lr" to its param groups: lay the state
    # out on the same structure, or hivemind's flat state lands shifted by one key (weight_decay=1, maximize=lr).
    task.make_scheduler(optimizer, row.hyperparameters.get("warmup_epochs", 0))
    params = [param for group in optimizer.param_groups for param in group["params"]]
    if len(tensors) < len(params):
        raise StateMismatch(f"the state has {len(tensors)} tensors, the task's model alone {len(params)}")
    with torch.no_grad():
        for index, (param, tensor) in enumerate(zip(params, tensors)):
            if not isinstance(tensor, torch.Tensor) or tensor.shape != param.shape:
                raise StateMismatch(f"parameter {index} has shape {getattr(tensor, 'shape', None)}, not {param.shape}")
            param.copy_(tensor)
    initialize_optimizer_state_(optimizer)  # hivemind's layout assumes initialised statistics (a zero step)
    try:
        load_optimizer_state(optimizer, metadata["optimizer_metadata"], list(tensors[len(params):]))
    except (KeyError, IndexError, StopIteration, TypeError, ValueError, RuntimeError) as e:
        raise StateMismatch(f"the optimizer state does not fit the task ({type(e).__name__}: {e})") from e
    names = {id(param): name for name, param in model.named_parameters()}
    model.eval()
    with torch.no_grad():
        evaluation = {name: float(value) for name, value in task.evaluate(model).items()}  # {} if the task has none
    return {
        "format": CHECKPOINT_FORMAT, "swarm_id": row.swarm_id, "run_id": row.run_id, "task": row.task,
        "epoch": int(metadata["epoch"]), "saved_at": time.time(),
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "parameter_names": [names[id(param)] for param in params],  # the optimizer's parameter order
        "evaluation": evaluation,  # the task's metrics on its held-out data, e.g. {"loss": …, "accuracy": …}
    }  # fmt: skip
