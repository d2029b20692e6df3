"""Contribution accounting: what this node computed in the current epoch, closed into one record per epoch."""

import math
from dataclasses import dataclass

from protocol.messages import MAX_LOSS


@dataclass(frozen=True)
class EpochContribution:
    """Work that went into one of the swarm's epochs; the reporter turns it into a signed report."""

    epoch: int
    samples: int
    compute_seconds: float
    loss: float | None
    group_size: int
    bytes_sent: int = 0  # averaging traffic since the previous epoch closed (node/bandwidth.py)
    bytes_received: int = 0


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

    def close_epoch(self, epoch: int, group_size: int, bytes_sent: int = 0, bytes_received: int = 0) -> EpochContribution:
        contribution = EpochContribution(
            epoch=epoch,
            samples=self.samples,
            compute_seconds=round(self.compute_seconds, 6),
            loss=_reportable(self._loss_sum / self._batches) if self._batches else None,
            group_size=group_size,
            bytes_sent=bytes_sent,
            bytes_received=bytes_received,
        )
        self.total_samples += self.samples
        self._reset()
        return contribution


def traffic_summary(bytes_sent: int, bytes_received: int, samples: int) -> str:
    """Averaging traffic for the status views, e.g. "412 B sent, 410 B received per sample (4.1 MB, 4.1 MB)"."""
    if not samples:
        return "-"
    return (f"{bytes_sent / samples:,.0f} B sent, {bytes_received / samples:,.0f} B received per sample "
            f"({_megabytes(bytes_sent)}, {_megabytes(bytes_received)})")  # fmt: skip


def _megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def _reportable(loss: float) -> float | None:
    """A diverged loss (NaN, infinite, beyond the protocol's bound) is reported as unknown: the work still counts."""
    return loss if math.isfinite(loss) and abs(loss) <= MAX_LOSS else None
