"""Plausibility rules: how many of a report's claimed samples the coordinator believes, judged against evidence
the node cannot forge alone. Pure logic: evidence comes in through `observe`, time through arguments.

Evidence is each peer's own signed hivemind progress records (`<run_id>_progress` in the DHT: epoch,
samples_accumulated, samples/s, time), read every fraction of a second by coordinator/work_check.py. For a
closed epoch every peer's samples are estimated at one common instant (its last record, extrapolated at its own
rate to the latest record of that epoch), which gives accurate *shares*. A report is then believed:

1. up to its node's measured throughput × the time since its previous report (× THROUGHPUT_SLACK);
2. up to its observed samples × the epoch's scale × (1 + TOLERANCE), where the scale is the weighted median
   of claimed ÷ observed over the epoch's reports (honest peers agree on it; cheaters would need most of
   the epoch's samples to move it). Allowance not used in one epoch carries to the next, so estimation noise
   evens out while a node's total credit stays within (1 + TOLERANCE) of what it was observed to do;
3. the epoch's believed samples are scaled down, all alike, to target_batch_size × EPOCH_SLACK.

Credit is for min(claimed, believed) samples; every cut keeps a readable reason.
"""

import bisect
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from hearth.progress import PeerProgress

TOLERANCE = 0.02  # allowance over the observed share (after scaling); also the bound on what an over-claimer gains
THROUGHPUT_SLACK = 1.5  # samples may exceed measured samples/s × seconds since the previous report by this factor
EPOCH_SLACK = 2.0  # an epoch's believed samples may exceed target_batch_size by this factor (hivemind overshoots,
# most in a swarm's first epochs and on a loaded machine, when peers see each other's progress late)
MAX_EXTRAPOLATION = 3.0  # seconds a peer's last record is extrapolated at most
CLAIM_WAIT = 5.0  # seconds an epoch's decision waits, once it closed, for the reports of all its observed peers
EVIDENCE_TIMEOUT = 60.0  # seconds a report may wait for its epoch to close before it is decided without evidence
STALE_PEER = 10.0  # seconds without a record after which a peer no longer holds its epoch open
EXCESS_MEMORY = 20  # epochs of a node's claims remembered to judge how it usually claims


@dataclass(frozen=True)
class Claim:
    """A pending report, as the rules need it."""

    report_id: int
    node_id: str
    peer_id: Optional[str]
    epoch: int
    samples: int
    received: float  # POSIX seconds


@dataclass(frozen=True)
class Verdict:
    report_id: int
    samples: int  # believed samples: credit is for these
    reason: Optional[str]  # None: everything claimed is believed
    rejected: bool = False


@dataclass
class _PeerHistory:
    records: dict[int, PeerProgress] = field(default_factory=dict)  # epoch → latest record of that epoch
    first_seen: float = 0.0
    last_seen: float = 0.0  # coordinator time of the latest observation


@dataclass
class _NodeAccount:
    allowance: float = 0.0  # believed samples allowed so far (Σ observed × scale × (1 + TOLERANCE))
    used: int = 0  # of the allowance
    excess: list[float] = field(default_factory=list)  # recent claimed ÷ (observed × the epoch's scale)
    claim_times: list[float] = field(default_factory=list)  # when its recent claims arrived, in order

    @property
    def usual_excess(self) -> float:
        return max(1.0, statistics.median(self.excess)) if self.excess else 1.0


class SwarmPlausibility:
    """The rules for one swarm."""

    def __init__(self, target_batch_size: int):
        self.target_batch_size = target_batch_size
        self.peers: dict[str, _PeerHistory] = {}
        self.accounts: dict[str, _NodeAccount] = defaultdict(_NodeAccount)
        self.decided_epochs: dict[int, tuple[float, float]] = {}  # epoch → (scale, believed samples so far)
        self.closed_at: dict[int, float] = {}

    # --- evidence ---------------------------------------------------------------------------------------------
    def observe(self, records: list[PeerProgress], now: float) -> None:
        for record in records:
            history = self.peers.get(record.peer_id)
            if history is None:
                history = self.peers[record.peer_id] = _PeerHistory(first_seen=now)
            history.last_seen = now
            known = history.records.get(record.epoch)
            if known is None or record.time > known.time:
                history.records[record.epoch] = record
            for old in [e for e in history.records if e < record.epoch - 50]:  # bounded memory
                del history.records[old]
        for epoch in self._open_epochs():
            if self._is_closed(epoch, now):
                self.closed_at.setdefault(epoch, now)

    def _open_epochs(self) -> set[int]:
        return {e for h in self.peers.values() for e in h.records if e not in self.closed_at}

    def _is_closed(self, epoch: int, now: float) -> bool:
        """Every peer seen in `epoch` has moved past it or gone quiet (a swarm whose peers all left closes its
        last epoch too: their last records are all the evidence there will be)."""
        for history in self.peers.values():
            if epoch in history.records and max(history.records) <= epoch and now - history.last_seen < STALE_PEER:
                return False
        return True

    def estimates(self, epoch: int) -> dict[str, float]:
        """Each peer's samples in `epoch`, estimated at the instant of the epoch's latest record."""
        last = {peer: h.records[epoch] for peer, h in self.peers.items() if epoch in h.records}
        if not last:
            return {}
        instant = max(record.time for record in last.values())
        return {
            peer: record.samples_accumulated
            + record.samples_per_second * min(max(instant - record.time, 0.0), MAX_EXTRAPOLATION)
            for peer, record in last.items()
        }

    def throughput(self, peer_id: Optional[str]) -> Optional[float]:
        history = self.peers.get(peer_id) if peer_id else None
        if history is None or not history.records:
            return None
        return max(record.samples_per_second for record in history.records.values())

    # --- decisions --------------------------------------------------------------------------------------------
    def decide(self, claims: list[Claim], now: float) -> list[Verdict]:
        """Verdicts for the claims that can be decided now; the others wait (are not returned)."""
        verdicts = []
        by_epoch: dict[int, list[Claim]] = defaultdict(list)
        for claim in claims:
            if claim.peer_id not in self.peers:  # not seen in the DHT yet (a young swarm's reads can miss peers)
                if now - claim.received >= EVIDENCE_TIMEOUT:
                    verdicts.append(self._unobserved(claim))
                continue
            by_epoch[claim.epoch].append(claim)
        for epoch, group in sorted(by_epoch.items()):
            closed = self.closed_at.get(epoch)
            waited = now - min(c.received for c in group)
            if closed is None:
                if waited >= EVIDENCE_TIMEOUT:
                    verdicts += [self._unobserved(c) for c in group]
                continue
            estimates = self.estimates(epoch)
            claimed_peers = {c.peer_id for c in group}
            if epoch not in self.decided_epochs and now - closed < CLAIM_WAIT and not set(estimates) <= claimed_peers:
                continue  # some observed peer's report may still be on its way
            verdicts += self._decide_epoch(epoch, group, estimates)
        return verdicts

    def _unobserved(self, claim: Claim) -> Verdict:
        return Verdict(claim.report_id, 0, "no progress record in the DHT for this epoch", rejected=True)

    def _decide_epoch(self, epoch: int, group: list[Claim], estimates: dict[str, float]) -> list[Verdict]:
        scale, believed_so_far = self.decided_epochs.get(epoch) or (self._scale(group, estimates), 0.0)
        for claim in group:  # how far above the epoch's scale each node claims, for the next epochs' scales
            observed = estimates.get(claim.peer_id, 0.0) if claim.peer_id else 0.0
            if observed > 0:
                excess = self.accounts[claim.node_id].excess
                excess.append(claim.samples / observed / scale)
                del excess[:-EXCESS_MEMORY]
        verdicts, believed = [], {}
        for claim in sorted(group, key=lambda c: c.report_id):
            observed = estimates.get(claim.peer_id)
            account = self.accounts[claim.node_id]
            account.allowance += (observed or 0.0) * scale * (1 + TOLERANCE)
            allowed, reason = claim.samples, None
            share_cap = max(0, int(account.allowance - account.used))
            if share_cap < allowed:
                allowed, reason = share_cap, f"over observed share: {share_cap} of {claim.samples} believed"
            rate = self.throughput(claim.peer_id)
            if rate is not None:
                earlier = [t for t in account.claim_times if t < claim.received]  # epochs may be decided out of order
                since = earlier[-1] if earlier else self.peers[claim.peer_id].first_seen
                rate_cap = int(rate * max(claim.received - since, 0.0) * THROUGHPUT_SLACK)
                if rate_cap < allowed:
                    allowed, reason = rate_cap, f"over throughput x time: {rate_cap} of {claim.samples} believed"
            bisect.insort(account.claim_times, claim.received)
            del account.claim_times[:-EXCESS_MEMORY]
            account.used += allowed  # before the epoch's cap: a cut there must not become allowance later
            believed[claim.report_id] = (claim, allowed, reason)
        cap = self.target_batch_size * EPOCH_SLACK - believed_so_far
        total = sum(allowed for _, allowed, _ in believed.values())
        factor = min(1.0, max(cap, 0.0) / total) if total > 0 else 1.0
        for report_id, (claim, allowed, reason) in believed.items():
            if factor < 1.0:
                allowed = int(allowed * factor)
                reason = f"epoch over target: {allowed} of {claim.samples} believed"
            verdicts.append(Verdict(report_id, allowed, reason))
        self.decided_epochs[epoch] = (scale, believed_so_far + sum(v.samples for v in verdicts if not v.rejected))
        return verdicts

    def _scale(self, group: list[Claim], estimates: dict[str, float]) -> float:
        """The epoch's claimed ÷ observed, common to honest nodes (the estimates all miss the work after the
        epoch's last records): the weighted median (weights: observed) of each node's ratio divided by how
        far above the scale that node has usually claimed (≥ 1), so a steady over-claimer cannot pull it up.
        1 without evidence."""
        ratios = sorted((c.samples / estimates[c.peer_id] / self.accounts[c.node_id].usual_excess, estimates[c.peer_id])
                        for c in group if estimates.get(c.peer_id, 0) > 0)  # fmt: skip
        if not ratios:
            return 1.0
        half, running = sum(weight for _, weight in ratios) / 2, 0.0
        for index, (ratio, weight) in enumerate(ratios):
            running += weight
            if running > half:
                return ratio
            if running == half:  # an even split: halfway between the two middle ratios (no bias either way)
                return (ratio + ratios[index + 1][0]) / 2
        return ratios[-1][0]
