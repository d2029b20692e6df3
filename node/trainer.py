"""The training loop, top to bottom: compute a batch, hand it to hivemind.Optimizer, and close an epoch's
contribution whenever the swarm moves to the next epoch."""

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

from hearth.tasks import Task
from node.accounting import Accountant, EpochContribution
from node.resources import Resources, fit_batch
from node import warmup
from node.swarm import SwarmMember
from node.wake import SleepDetector

logger = logging.getLogger(__name__)
PAUSE_POLL_SECONDS = 0.5  # a pause or resume takes effect within this (plus one batch)


@dataclass
class TrainingStats:
    """What the live view and presence messages show; written by the training thread only."""

    state: str = "starting"
    epoch: int = 0
    samples_per_second: float = 0.0
    last_group_size: int = 0
    last_loss: Optional[float] = None
    epochs_contributed: int = 0
    state_downloads: int = 0
    digest_reloads: int = 0  # state reloaded because this peer's parameters had left its peers' (node/digest.py)
    samples_total: int = 0
    group_sizes: dict[int, int] = field(default_factory=dict)  # epoch → peers that averaged it
    first_step_at: Optional[float] = None  # wall-clock time of the first optimizer step
    epoch_closed_at: Optional[float] = None  # wall-clock time the last epoch this node contributed to closed
    step_seconds: float = 0.0  # time in hivemind's optimizer step this epoch: bookkeeping, averaging, catching up
    bytes_sent: int = 0  # averaging traffic in the epochs contributed (node/bandwidth.py)
    bytes_received: int = 0


def peer_seed(node_id: str, epoch: int) -> int:
    """Seeds the task's data stream: a different stream for every peer and every epoch of the swarm."""
    return int.from_bytes(hashlib.sha256(f"{node_id}:{epoch}".encode()).digest()[:8], "little")


class Trainer:
    def __init__(self, task: Task, swarm: SwarmMember, resources: Resources, node_id: str,
                 on_contribution: Callable[[EpochContribution], None],
                 gate: Callable[[], Optional[str]] = lambda: None, sleep_detector: Optional[SleepDetector] = None,
                 privacy_state=None):  # fmt: skip
        self.task, self.swarm, self.device, self.node_id = task, swarm, resources.torch_device, node_id
        self.on_contribution = on_contribution
        self.gate = gate  # returns why to pause now, or None to train
        self.sleep_detector = sleep_detector or SleepDetector()
        self.model = task.build_model().to(self.device)
        self.resources = fit_batch(task, self.model, resources)  # on CUDA: halved until it really fits
        self.batch_size = self.resources.batch_size  # may be below the swarm's batch size
        hp = swarm.manifest.hyperparameters
        # Frozen parameters (requires_grad=False, e.g. a fine-tuned model's lower layers) are never averaged.
        trainable = [param for param in self.model.parameters() if param.requires_grad]
        swarm.build_optimizer(trainable, lambda params: task.make_optimizer(params, hp.learning_rate),
                              lambda optimizer: task.make_scheduler(optimizer, hp.warmup_epochs))
        self._data, self._data_epoch = None, None
        self.privacy = None  # differential privacy (node/privacy.py, Opacus: imported only for swarms that require it)
        if swarm.manifest.privacy is not None:
            from node.privacy import PrivateTraining

            self.privacy = PrivateTraining(self.model, task.local_dataset(), swarm.manifest.privacy, self.batch_size,
                                           privacy_state)  # fmt: skip
            self._data = self.privacy.batches()
        self.accountant = Accountant()
        self.digests = None  # node.digest.ParameterDigests: compares parameters with the peers after each epoch
        self.audits = None  # node.audit.AuditResponder, when the daemon answers audits
        self.stats = TrainingStats()
        self._throughput = (time.monotonic(), 0)

    @property
    def optimizer(self):
        return self.swarm.optimizer  # replaced when the node leaves the swarm during a pause and rejoins

    @property
    def privacy_spent(self) -> bool:
        """The swarm's differential privacy budget is used up: this node must not compute again."""
        return self.privacy is not None and self.privacy.exhausted

    def run(self, stop: threading.Event, max_epochs: Optional[int] = None, deadline: Optional[float] = None,
            min_peers: int = 1, wait_timeout: float = 60.0) -> None:  # fmt: skip
        self.stats.state = "syncing"
        if self.swarm.catch_up():
            self.stats.state_downloads += 1
        if min_peers > 1:  # one batch first: a peer becomes visible in the DHT only once it has progress
            self._train_one_batch(self._next_batch())
            self.stats.state = f"waiting for {min_peers} peers"
            self.swarm.wait_for_peers(min_peers, timeout=wait_timeout, stop=stop)
        self.stats.state = "training"
        while not stop.is_set():
            if self.audits is not None:  # the coordinator's spot checks, answered through compute_gradients
                self.audits.run_pending(self.compute_gradients, self.device)
            if max_epochs is not None and self.stats.epoch >= max_epochs:
                logger.info("Reached epoch %d; stopping", self.stats.epoch)
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            slept = self.sleep_detector.slept()
            if slept is not None and self.swarm.joined:  # stale connections, and the swarm went on without us
                logger.info("This PC was asleep for about %.0f s: rejoining the swarm", slept)
                self._pause("rejoining after sleep")
            pause_reason = self.gate()
            if pause_reason is not None:
                self._pause(pause_reason)
                stop.wait(PAUSE_POLL_SECONDS)
                continue
            if not self.swarm.joined:
                self._resume()
            self._reload_if_diverged()
            self.stats.state = "training"
            self._train_one_batch(self._next_batch())
        self.stats.state = "stopping"
        if self.privacy is not None:
            self.privacy.close()  # the privacy ledger records the steps actually taken

    def _next_batch(self):
        """From a stream seeded by this peer and the swarm's epoch: no two peers, and no two epochs of one peer
        (even across restarts), train on the same samples in the same order."""
        if self.privacy is not None:  # Poisson-sampled from the local dataset, as the privacy accounting assumes
            return next(self._data)
        epoch = self.optimizer.local_epoch
        if epoch != self._data_epoch:
            self._data, self._data_epoch = self.task.data_stream(peer_seed(self.node_id, epoch), self.batch_size), epoch
        return next(self._data)

    def _reload_if_diverged(self) -> None:
        verdict = self.digests.take_verdict(self.optimizer.local_epoch) if self.digests is not None else None
        if verdict is None:
            return
        logger.warning("Epoch %d: this peer's parameters differ from the swarm's (%s); reloading state from peers",
                       *verdict)  # fmt: skip
        self.accountant.discard()  # hivemind drops the gradients accumulated so far with the old parameters
        self.optimizer.load_state_from_peers()
        self.stats.digest_reloads += 1
        self.stats.state_downloads += 1

    def _pause(self, reason: str) -> None:
        self.stats.state, self.stats.samples_per_second = reason, 0.0
        if self.swarm.joined:
            logger.info("Pausing (%s): leaving the swarm until resumed", reason)
            self.accountant.discard()  # gradients accumulated for the current epoch leave with us
            self.swarm.leave()

    def _resume(self) -> None:
        self.stats.state = "rejoining the swarm"
        logger.info("Resuming: rejoining the swarm")
        if self.swarm.rejoin():
            self.stats.state_downloads += 1
        self.stats.epoch = self.optimizer.local_epoch

    def compute_gradients(self, model: torch.nn.Module, batch, amp: bool = False) -> torch.Tensor:
        """Loss and backward pass of one batch into `model`'s .grad: the one code path that makes this node's
        gradients. Audits (node/audit.py) answer through it too, so what they check is what averaging gets."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = self.task.loss(model, batch)
        loss.backward()
        return loss

    def _train_one_batch(self, batch) -> None:
        optimizer, averager = self.optimizer, self.swarm.rounds
        inputs, targets = (tensor.to(self.device, non_blocking=True) for tensor in batch)
        started = time.perf_counter()
        if self.privacy is not None:  # clipped per sample and noised before hivemind accumulates it
            loss, samples = self.privacy.backward(self.task.loss, (inputs, targets)), self.privacy.expected_batch_size
        else:
            loss, samples = self.compute_gradients(self.model, (inputs, targets), amp=self.resources.amp), len(targets)
        compute_seconds = time.perf_counter() - started
        epoch, rounds, loads = optimizer.local_epoch, averager.rounds_started, optimizer.state_loads
        # this node's batch may differ from the swarm's; step() also clears .grad once it used the gradients
        step_started = time.perf_counter()
        optimizer.step(batch_size=samples)  # with DP, the expected batch: the drawn size is not released
        self.stats.step_seconds += time.perf_counter() - step_started
        if self.stats.first_step_at is None:
            self.stats.first_step_at = time.time()
            warmup.load_deferred_in_background()  # needed from the first averaging round on
        self.accountant.add_batch(samples, compute_seconds, loss.item() if loss is not None else 0.0)
        self._update_throughput(samples)

        if optimizer.state_loads != loads:  # fell behind: the swarm's newer state replaced this work
            self.accountant.discard()
            self.stats.state_downloads += 1
        elif optimizer.local_epoch != epoch:
            outcome = self.swarm.epoch_outcome(rounds)
            contribution = self.accountant.close_epoch(epoch=epoch, group_size=outcome.group_size,
                                                       bytes_sent=outcome.bytes_sent, bytes_received=outcome.bytes_received)
            self.stats.bytes_sent += outcome.bytes_sent
            self.stats.bytes_received += outcome.bytes_received
            self.stats.epochs_contributed += 1
            self.stats.epoch_closed_at = time.time()
            self.stats.last_group_size = outcome.group_size
            self.stats.group_sizes[epoch] = outcome.group_size
            self.stats.last_loss = contribution.loss
            logger.info("Epoch %d: %d samples in %.1f s of compute; %.1f s in the optimizer, its averaging included",
                        epoch, contribution.samples, contribution.compute_seconds, self.stats.step_seconds)
            self.stats.step_seconds = 0.0
            if self.privacy is not None:  # the training loss is computed on private data without noise: it stays here
                contribution = replace(contribution, loss=None)
            self.on_contribution(contribution)
            if self.digests is not None:
                self.digests.epoch_done(optimizer.local_epoch, list(self.model.parameters()))
        self.stats.samples_total = self.accountant.total_samples  # first: a reader that sees the new epoch sees its samples
        self.stats.epoch = optimizer.local_epoch

    def _update_throughput(self, samples: int) -> None:
        since, counted = self._throughput
        counted += samples
        elapsed = time.monotonic() - since
        if elapsed >= 2.0:
            self.stats.samples_per_second = counted / elapsed
            self._throughput = (time.monotonic(), 0)
        else:
            self._throughput = (since, counted)

    def save_checkpoint(self, path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"epoch": self.stats.epoch, "model": self.model.state_dict()}, path)
