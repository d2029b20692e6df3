"""Contribution accounting: what this node computed in the current epoch, closed into one record per epoch."""

from dataclasses import dataclass


@dataclass(frozen=True)
class EpochContribution:
    """Work that went into one of the swarm's epochs; the reporter turns it into a signed report."""

    epoch: int
    samples: int
    compute_seconds: float
    loss: float | None
    group_size: int


class Accountant:
    def __init__(self) -> None:
        self._reset()
        self.total_samples = 0
        self.discarded_samples = 0

    def _reset(self) -> None:
        self.samples, self.compute_seconds, self._loss_sum, self._batches = 0, 0.0, 0.0, 0

    def add_batch(self, samples: int, compute_seconds: float, loss: float) -> None:
        self.samples += samples
        self.compute_seconds += compute_seconds
        self._loss_sum += loss
        self._batches += 1

    def discard(self) -> None:
        """The swarm moved on without this work (the node had to download newer state)."""
        self.discarded_samples += self.samples
        self._reset()

    def close_epoch(self, epoch: int, group_size: int) -> EpochContribution:
        contribution = EpochContribution(
            epoch=epoch,
            samples=self.samples,
            compute_seconds=round(self.compute_seconds, 6),
            loss=self._loss_sum / self._batches if self._batches else None,
            group_size=group_size,
        )
        self.total_samples += self.samples
        self._reset()
        return contribution
