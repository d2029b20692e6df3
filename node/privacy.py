"""Differential privacy on the node (DP-SGD with Opacus): per-sample gradient clipping and Gaussian noise applied
to every batch BEFORE its gradient joins hivemind's accumulation, so everything that leaves the node (averaged
gradients, parameters and optimizer state derived from them) is post-processing of privatised gradients.

Batches are Poisson-sampled from the local dataset (each row independently with rate q = batch / rows), which
is what the RDP accountant's guarantee assumes; the gradient is divided by the expected batch size, and the node
tells hivemind and the coordinator that expected size, never the drawn one. ε at the swarm's δ is tracked per
node and swarm in a state file, reserved ahead of use so that a crash can only over-count; once the next step
would pass the swarm's budget the node stops computing."""

import json
import logging
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch.utils.data import Dataset

from protocol.messages import DifferentialPrivacy

logger = logging.getLogger(__name__)
# Opacus' hooks on the first layer, whose input needs no gradient, make torch warn once; it is harmless there.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed",
                        category=UserWarning)  # fmt: skip

BUDGET_SPENT = "privacy budget spent"
ORDERS = RDPAccountant.DEFAULT_ALPHAS
MAX_STEPS = 1 << 40  # "unlimited": a budget this generous is never the limit
RESERVE_STEPS = 64  # steps written to the state file ahead of use: a crash over-counts by at most this many


def epsilon_for(history: list[tuple[float, float, int]], delta: float) -> float:
    """ε at δ of DP-SGD steps given as [(noise multiplier, sample rate, steps), …], by Opacus' RDP accountant."""
    accountant = RDPAccountant()
    accountant.history = [tuple(entry) for entry in history if entry[2] > 0]
    return accountant.get_epsilon(delta) if accountant.history else 0.0


def _rdp(noise_multiplier: float, sample_rate: float, steps: int) -> np.ndarray:
    return np.asarray(compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=ORDERS))


class PrivacyLedger:
    """The steps this node has taken in one swarm, persisted, and how many more the budget allows.

    ε is what Opacus' RDPAccountant computes for the same history; the RDP of n steps at one (σ, q) is n times
    that of one step, so it is computed once here and ε after any number of steps costs one conversion."""

    def __init__(self, settings: DifferentialPrivacy, sample_rate: float, path: Optional[Path]):
        self.settings, self.sample_rate, self.path = settings, sample_rate, path
        self.earlier: list[tuple[float, float, int]] = []  # steps of earlier runs (other batch or dataset sizes)
        if path is not None and path.exists():
            self.earlier = [tuple(entry) for entry in json.loads(path.read_text())["history"]]
        self._earlier_rdp = sum((_rdp(*entry) for entry in self.earlier if entry[2] > 0), np.zeros(len(ORDERS)))
        self._step_rdp = _rdp(settings.noise_multiplier, sample_rate, 1)
        self.steps = 0  # this run's, at (noise_multiplier, sample_rate)
        self._reserved = 0
        self.max_steps = self._max_steps()

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return self._merged(self.steps)

    def _merged(self, steps: int) -> list[tuple[float, float, int]]:
        current = (self.settings.noise_multiplier, self.sample_rate)
        merged = [tuple(entry) for entry in self.earlier if tuple(entry[:2]) != current]
        earlier_same = sum(entry[2] for entry in self.earlier if tuple(entry[:2]) == current)
        return merged + [(*current, earlier_same + steps)]

    def epsilon_after(self, steps: int) -> float:
        rdp = self._earlier_rdp + (steps * self._step_rdp if steps else 0.0)  # 0 × ∞ (σ = 0) is no step
        if not rdp.any():
            return 0.0
        with warnings.catch_warnings():  # "optimal order is the smallest alpha": large ε, still an upper bound
            warnings.simplefilter("ignore")
            return float(get_privacy_spent(orders=ORDERS, rdp=rdp, delta=self.settings.delta)[0])

    @property
    def epsilon(self) -> float:
        return self.epsilon_after(self.steps)

    @property
    def exhausted(self) -> bool:
        return self.steps >= self.max_steps

    def _max_steps(self) -> int:
        """The most steps this run may take with ε (at δ) staying within the budget (ε grows with steps)."""
        def fits(steps: int) -> bool:
            return self.epsilon_after(steps) <= self.settings.epsilon_budget

        if not fits(1):
            return 0
        low, high = 1, 2
        while fits(high):
            low, high = high, high * 2
            if high > MAX_STEPS:
                return MAX_STEPS
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low

    def take_step(self) -> None:
        if self.exhausted:
            raise RuntimeError(BUDGET_SPENT)
        if self.steps >= self._reserved:
            self._reserved = min(self.steps + RESERVE_STEPS, self.max_steps)
            self._save(self._reserved)
        self.steps += 1

    def close(self) -> None:
        """Record the steps actually taken (a clean stop gives back the unused reservation)."""
        self._save(self.steps)

    def _save(self, steps: int) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"history": self._merged(steps), "delta": self.settings.delta}))
        os.replace(temporary, self.path)


@dataclass(frozen=True)
class PrivacySnapshot:
    epsilon_spent: float
    epsilon_budget: float
    delta: float
    steps: int  # taken in this run
    history: list  # every step counted for this swarm: [(noise multiplier, sample rate, steps), …]
    sample_rate: float
    noise_multiplier: float
    clip_norm: float
    exhausted: bool


class PrivateTraining:
    """DP-SGD for one model on one local dataset: Poisson batches, and per batch clipped + noised gradients added
    into the parameters' .grad (hivemind's accumulators)."""

    def __init__(self, model: torch.nn.Module, dataset: Dataset, settings: DifferentialPrivacy, batch_size: int,
                 state_path: Optional[Path] = None, seed: Optional[int] = None):  # fmt: skip
        """`seed` makes the sampling and the noise repeatable, for tests only: a real node's must not be guessable."""
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ValueError(f"differential privacy cannot train this task's model: {errors[0]}")
        self.dataset, self.settings = dataset, settings
        rows = len(dataset)
        self.expected_batch_size = min(batch_size, rows)
        self.sample_rate = self.expected_batch_size / rows
        self.ledger = PrivacyLedger(settings, self.sample_rate, state_path)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.module = GradSampleModule(model, loss_reduction="mean", strict=False)  # hooks on model's own layers
        noise_seed, sampling_seed = (secrets.randbits(63), secrets.randbits(63)) if seed is None else (seed, seed + 1)
        noise = torch.Generator(device=self.params[0].device).manual_seed(noise_seed)
        self.dp = DPOptimizer(torch.optim.SGD(self.params, lr=0.0), noise_multiplier=settings.noise_multiplier,
                              max_grad_norm=settings.clip_norm, expected_batch_size=self.expected_batch_size,
                              generator=noise)  # fmt: skip
        self._sampling = torch.Generator().manual_seed(sampling_seed)
        logger.info("Differential privacy: %d rows, batches of %d expected (q = %.4g), clip %g, noise ×%g; "
                    "ε spent %.3f of %g at δ %g, %d more steps allowed", rows, self.expected_batch_size,
                    self.sample_rate, settings.clip_norm, settings.noise_multiplier, self.ledger.epsilon,
                    settings.epsilon_budget, settings.delta, self.ledger.max_steps)  # fmt: skip

    @property
    def exhausted(self) -> bool:
        return self.ledger.exhausted

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless Poisson-sampled batches of the local dataset (sizes vary around the expected batch size)."""
        sampler = UniformWithReplacementSampler(num_samples=len(self.dataset), sample_rate=self.sample_rate,
                                                generator=self._sampling, steps=1 << 62)  # fmt: skip
        for indices in sampler:
            yield self.dataset[torch.as_tensor(indices, dtype=torch.int64)]

    def backward(self, loss_fn: Callable, batch) -> Optional[torch.Tensor]:
        """Add this batch's clipped, noised mean gradient to each parameter's .grad; the batch's mean loss (None
        for an empty batch). Raises RuntimeError once the budget is spent: the caller checks `exhausted` first."""
        self.ledger.take_step()  # counted before the data is touched; raises once the budget is spent
        accumulated = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        loss = None
        if len(batch[1]) > 0:
            loss = loss_fn(self.module, batch)
            loss.backward()
        else:  # an empty Poisson draw still releases a (pure noise) gradient
            for p in self.params:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        self.dp.pre_step()  # clip each sample's gradient, sum, add noise, divide by the expected batch size
        with torch.no_grad():
            for p, grad in zip(self.params, accumulated):
                if grad is not None:
                    p.grad = grad.add_(p.grad)
                p.grad_sample, p.summed_grad = None, None
        return loss

    def snapshot(self) -> PrivacySnapshot:
        s = self.settings
        return PrivacySnapshot(epsilon_spent=round(self.ledger.epsilon, 6), epsilon_budget=s.epsilon_budget,
                               delta=s.delta, steps=self.ledger.steps,
                               history=[list(entry) for entry in self.ledger.history], sample_rate=self.sample_rate,
                               noise_multiplier=s.noise_multiplier, clip_norm=s.clip_norm,
                               exhausted=self.ledger.exhausted)  # fmt: skip

    def close(self) -> None:
        self.ledger.close()
