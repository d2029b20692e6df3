"""Noticing that the PC slept. After a suspend the node's swarm connections are stale and the swarm trained on
without it, so the trainer leaves and rejoins (downloading the swarm's state) without the volunteer doing
anything. The MQTT reporter reconnects by itself.

A monotonic clock stops while the machine sleeps (CLOCK_MONOTONIC on Linux, mach_absolute_time on macOS);
CLOCK_BOOTTIME (Linux) and the wall clock do not. When one runs ahead of the monotonic clock by more than a
threshold between two checks, the PC was asleep for about that long. A large wall-clock step (a manual clock
change) reads the same way; rejoining after one costs a state download and nothing else."""

import time
from typing import Callable, Optional

SLEEP_THRESHOLD_SECONDS = 30.0  # shorter gaps are scheduler stalls or small clock corrections, not a suspend


def _sleep_inclusive_clock() -> Callable[[], float]:
    if hasattr(time, "CLOCK_BOOTTIME"):
        return lambda: time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.time


class SleepDetector:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic, wall: Optional[Callable[[], float]] = None,
                 threshold: float = SLEEP_THRESHOLD_SECONDS):  # fmt: skip
        self.monotonic, self.wall = monotonic, wall or _sleep_inclusive_clock()
        self.threshold = threshold
        self._offset = self.wall() - self.monotonic()

    def slept(self) -> Optional[float]:
        """Seconds the PC slept since the last call, or None when it did not."""
        offset = self.wall() - self.monotonic()
        gap, self._offset = offset - self._offset, offset
        return gap if abs(gap) >= self.threshold else None
