"""Per-node ordering of verified reports before they reach the ledger.

A node's receipt says "everything up to last_seq is in", and its outbox then forgets those reports, so a report
must never be accepted while an earlier one may still come: that earlier one would then be refused as a replay
and lost. Reports that arrive ahead of a gap (several ingest workers on a shared subscription, or a restart that
lost reports the broker had already handed over) are held. If the gap fills, they go on in order. If it is still
open once they waited `hold_seconds` and every receiver has caught up past them (so the missing report is not
merely queued in a slower ingest worker), they are dropped unreceipted; the node's outbox sends them again,
in order, with the missing ones first. A report that is dropped this way a second time shows the node has no
earlier report (it skipped a sequence number): it is then released over the gap.
"""

from collections import defaultdict
from typing import Any, Callable

MAX_REMEMBERED = 10_000  # dropped sequence numbers remembered per node


class Sequencer:
    def __init__(self, last_seq: Callable[[str], int], hold_seconds: float = 2.0):
        self.last_seq, self.hold_seconds = last_seq, hold_seconds
        self._held: dict[str, dict[int, list[tuple[float, Any]]]] = {}
        self._dropped_before: dict[str, set[int]] = defaultdict(set)
        self.dropped = 0

    def offer(self, node_id: str, seq: int, item: Any, now: float) -> list[Any]:
        """Items ready to decide, in order: this one (and the held ones it unblocks), or none while a gap is open."""
        last = self.last_seq(node_id)
        if seq <= last:
            return [item]  # a replay: decided (and refused) at once
        held = self._held.get(node_id)
        if seq == last + 1:
            return [item] + self._drain(node_id, seq + 1)
        if held is None:
            held = self._held[node_id] = {}
        held.setdefault(seq, []).append((now, item))
        return []

    def expire(self, now: float, caught_up: float) -> list[Any]:
        """Release or drop what waited `hold_seconds` for a gap to fill while every receiver has caught up to
        `caught_up` (monotonic seconds); returns the released items, in order."""
        released, horizon = [], min(now - self.hold_seconds, caught_up)
        expired = [n for n, held in self._held.items() if min(i[0][0] for i in held.values()) <= horizon]
        for node_id in expired:
            first = min(self._held[node_id])
            remembered = self._dropped_before[node_id]
            if first in remembered:  # dropped once already and still ahead of a gap: the node skipped a number
                released.extend(self._drain(node_id, first))
                continue
            held = self._held.pop(node_id)
            for seq, items in held.items():
                if items[0][0] <= horizon:
                    self.dropped += len(items)
                    if len(remembered) < MAX_REMEMBERED:
                        remembered.add(seq)
                else:
                    self._held.setdefault(node_id, {})[seq] = items
        return released

    def next_deadline(self) -> float | None:
        """When the oldest held item expires (monotonic seconds), or None."""
        oldest = [items[0][0] for held in self._held.values() for items in held.values()]
        return min(oldest) + self.hold_seconds if oldest else None

    def forget_below(self, node_id: str, seq: int) -> None:
        remembered = self._dropped_before.get(node_id)
        if remembered:
            remembered.difference_update([s for s in remembered if s <= seq])

    def _drain(self, node_id: str, seq: int) -> list[Any]:
        held, ready = self._held.get(node_id), []
        while held and seq in held:
            ready.extend(item for _, item in held.pop(seq))
            seq += 1
        if held is not None and not held:
            del self._held[node_id]
        return ready

    def __len__(self) -> int:
        return sum(len(items) for held in self._held.values() for items in held.values())
