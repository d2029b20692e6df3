"""The audit computation both sides agree on: which batch an audit names, the model state it starts from, and the
short digest of the resulting gradient (a fixed random projection: a count sketch seeded by the audit).

The node computes the gradient through its own training code path (node/audit.py); the coordinator's validator
recomputes it with the task's plain loss (coordinator/audits.py) and compares with `matches`.
"""

import math
import threading
from typing import Any, Callable, Optional

import torch

from hearth.tasks.base import Batch, Task

LOSS_TOLERANCE = 1e-3  # relative; float non-determinism between machines is orders of magnitude below
DIGEST_TOLERANCE = 1e-2  # relative distance between the two digests
# Tasks seed their initial model through torch's global generator (fork_rng + manual_seed): two threads building
# at once would mix their draws, so every build for an audit takes this lock.
BUILD_LOCK = threading.Lock()
DIGEST_ENTRIES = 8192  # gradient entries the digest samples


def audit_batch(task: Task, seed: int, batch_size: int) -> Batch:
    """The batch an audit names: the first of the task's data stream seeded with the audit's seed."""
    return next(task.data_stream(seed, batch_size))


def audit_model(task: Task, model_state: Optional[dict[str, Any]]) -> torch.nn.Module:
    """The task's model at the audited state: a checkpoint's state_dict, or None for the seeded initial model."""
    with BUILD_LOCK:
        model = task.build_model()
    if model_state is not None:
        model.load_state_dict(model_state)
    return model


def gradient_digest(model: torch.nn.Module, seed: int, size: int, entries: int = DIGEST_ENTRIES) -> list[float]:
    """Project the model's gradient (all parameters, in order, as one vector) onto `size` numbers: `entries`
    random entries each go, with a random sign, into a random bucket (a count sketch of a random sample). All of
    it is drawn from `seed`, so the projection is fixed per audit and unknown before it; any gradient other than
    the real one differs in nearly every entry, so a sample catches it as well as the whole would, for far less."""
    grads = [p.grad.detach().flatten() if p.grad is not None else torch.zeros(p.numel(), device=p.device)
             for p in model.parameters()]  # fmt: skip
    vector = torch.cat(grads).to("cpu", torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randint(0, len(vector), (entries,), generator=generator)
    buckets = torch.randint(0, size, (entries,), generator=generator)
    signs = torch.randint(0, 2, (entries,), generator=generator).to(torch.float64) * 2 - 1
    return torch.zeros(size, dtype=torch.float64).index_add_(0, buckets, vector[picked] * signs).tolist()


def compute_answer(task: Task, model_state: Optional[dict[str, Any]], seed: int, batch_size: int, digest_size: int,
                   backward: Callable[[torch.nn.Module, Batch], torch.Tensor],
                   device: torch.device = torch.device("cpu")) -> tuple[float, list[float]]:  # fmt: skip
    """(loss, gradient digest) of the audit, with `backward(model, batch)` computing the loss and the gradients."""
    model = audit_model(task, model_state).to(device)
    model.zero_grad(set_to_none=True)
    inputs, targets = (tensor.to(device) for tensor in audit_batch(task, seed, batch_size))
    loss = backward(model, (inputs, targets))
    return float(loss.detach()), gradient_digest(model, seed, digest_size)


def reference_backward(task: Task) -> Callable[[torch.nn.Module, Batch], torch.Tensor]:
    """The task's plain loss and backward pass, in fp32: what the validator computes."""

    def backward(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        loss = task.loss(model, batch)
        loss.backward()
        return loss.detach()

    return backward


def mismatch(expected: tuple[float, list[float]], answered: tuple[float, list[float]]) -> Optional[str]:
    """None if the answer matches the recomputation within float tolerance, else why not (one sentence)."""
    (loss, digest), (their_loss, their_digest) = expected, answered
    if len(their_digest) != len(digest) or not all(map(math.isfinite, [their_loss, *their_digest])):
        return "the answer is malformed (digest size or non-finite values)"
    if abs(their_loss - loss) > LOSS_TOLERANCE * max(abs(loss), 1e-6):
        return f"loss {their_loss:.6g} differs from the recomputed {loss:.6g}"
    distance = math.dist(digest, their_digest) / max(math.hypot(*digest), 1e-12)
    if distance > DIGEST_TOLERANCE:
        return f"gradient digest differs from the recomputed one by {distance:.3g} (relative)"
    return None
