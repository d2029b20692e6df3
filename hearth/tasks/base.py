"""The task interface: a model, a deterministic per-peer data stream, a loss, and recommended settings."""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TaskDefaults:
    """Recommended hyperparameters; an operator may override them per swarm."""

    batch_size: int
    target_batch_size: int
    learning_rate: float
    matchmaking_time: float = 3.0
    averaging_timeout: float = 30.0
    average_state_every: int = 1
    compression: str = "none"  # "none" | "fp16" | "int8": what travels between peers
    local_updates: bool = False
    warmup_epochs: int = 0


@dataclass(frozen=True)
class TaskContext:
    """What a swarm gives its task beyond the code, on the node and on the coordinator alike."""

    options: Mapping[str, Any] = field(default_factory=dict)
    """The swarm manifest's task_options, set by the operator."""
    assets: Mapping[str, Path] = field(default_factory=dict)
    """Local, digest-checked copies of the manifest's assets this peer needs, by asset name."""
    local_data: Optional[Path] = None
    """In a `data: local` swarm, the dataset on this node's disk that its owner named (None on the coordinator)."""


class Task(ABC):
    name: str
    description: str
    defaults: TaskDefaults
    option_docs: Mapping[str, str] = {}
    """The swarm task_options this task reads, each with what it does (shown by `hearth tasks describe`)."""
    schedule_doc: str = "linear warm-up over warmup_epochs, then constant"

    def configure(self, context: TaskContext) -> None:
        """Called once before build_model() whenever the swarm gives options, assets or local data."""

    reads_local_data: bool = False
    """True for a task that can train on each node's own dataset (a `data: local` swarm)."""

    def local_dataset(self) -> Optional[torch.utils.data.Dataset]:
        """In a `data: local` swarm, the rows of the owner's dataset this node trains on (read by configure()), for
        differential privacy's Poisson sampling (node/privacy.py); None for a task that does not read local data."""
        return None

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model; identical on every peer (seeded), so peers start in sync."""

    @abstractmethod
    def data_stream(self, peer_seed: int, batch_size: int) -> Iterator[Batch]:
        """Endless training batches, deterministic for a given peer seed and different between peers."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Mean loss over the batch."""

    def make_optimizer(self, params, learning_rate: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=learning_rate)

    def lr_schedule(self, epoch: int, warmup_epochs: int) -> float:
        """The learning rate's multiplier for the optimizer step that closes global `epoch` (one step per epoch of
        target_batch_size samples, whatever the number of peers). Default: a linear rise to 1 over the first
        `warmup_epochs` epochs (1/(w+1), 2/(w+1), …: never a wasted step at 0), then constant."""
        return linear_warmup(epoch, warmup_epochs)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, warmup_epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        """The schedule as a torch scheduler; hivemind steps it once per global epoch, the same on every peer."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: self.lr_schedule(epoch, warmup_epochs))

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Metrics on held-out data; empty when the task has none."""
        return {}


def linear_warmup(epoch: int, warmup_epochs: int) -> float:
    return min(1.0, (epoch + 1) / (warmup_epochs + 1))


def measure_flops_per_sample(task: Task, batch_size: int = 64) -> int:
    """FLOPs of one forward + backward pass per sample, counted by torch rather than estimated."""
    model = task.build_model()
    batch = next(task.data_stream(peer_seed=0, batch_size=batch_size))
    with FlopCounterMode(display=False) as counter:
        task.loss(model, batch).backward()
    return max(1, round(counter.get_total_flops() / batch_size))
