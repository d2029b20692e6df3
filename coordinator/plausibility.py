"""Plausibility rules: how many of a report's claimed samples the coordinator believes, judged against evidence
the node cannot forge alone. Pure logic: evidence comes in through `observe`, time through arguments.

Evidence is each peer's own signed hivemind progress records (`<run_id>_progress` in the DHT: epoch,
samples_accumulated, samples/s, time), read every fraction of a second by coordinator/work_check.py. For a
closed epoch every peer's samples are estimated at one common instant (its last record, extrapolated at its own
rate to the latest record of that epoch), which gives *shares*, if noisy ones: the records read last lag the
peers' work by up to a few seconds (their stores stall while peers average), ±10-30 % of a share per epoch.
A report is then believed:

1. up to its observed samples × the epoch's scale × (1 + TOLERANCE), where the scale is the weighted median
   of claimed ÷ observed over the epoch's reports (honest peers agree on it; cheaters would need most of
   the epoch's samples to move it). Allowance not used in one epoch carries to the next, and a node may run
   ahead of it by BORROW of its usual epoch's shares, repaid from its next epochs, so the noise evens out while a node's
   total credit stays within (1 + TOLERANCE) of what it was observed to do, plus that float. A node that
   usually claims SUSPECT_EXCESS × the scale or more gets no float. An epoch too short for any record of the
   peer in it to be read has no observed share: rules 2 and 3 bound it alone (a suspect is believed its
   claim ÷ its usual excess);
2. up to its peer's throughput budget: what the peer was seen training in the DHT (its samples/s × the seconds
   between two reads that show progress, or the samples gained if more; + STARTUP_SECONDS at its best rate, + the
   samples of the first record read) × THROUGHPUT_SLACK, less what was already believed of it. It accrues while
   the peer trains, not when reports arrive, so a backlog delivered at once after a broker outage fits;
3. the epoch's believed samples are scaled down, all alike, to target_batch_size × EPOCH_SLACK, or × (1 + half its
   peers) if more (in a swarm's first YOUNG_EPOCHS epochs seen, × its peers: peers that do not see each other's
   progress yet each reach the target alone).

Credit is for min(claimed, believed); every cut keeps a readable reason.
"""

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from hearth.progress import PeerProgress

TOLERANCE = 0.02  # allowance over the observed share (after scaling); also the bound on what an over-claimer gains
BORROW = 2.0  # how far (in shares of the current epoch) a node's believed samples may run ahead of its allowance
SUSPECT_EXCESS = 1.5  # a node whose claims usually exceed the scale by more borrows nothing, and is believed that
SUSPECT_AFTER = 3  # much less where its share was not observed; judged after this many epochs observed
THROUGHPUT_SLACK = 1.5  # samples may exceed what the peer was seen training by this factor
STARTUP_SECONDS = 3.0  # training at its best samples/s credited to a peer before the coordinator first read it
MAX_PROGRESS_GAP = 15.0  # seconds between two reads that show a peer's progress counted at most as training
EPOCH_SLACK = 3.0  # an epoch's believed samples may exceed target_batch_size by this factor, or by 1 + half its
# peers if more (hivemind overshoots, most in a swarm's first epochs, on a loaded machine and with many peers: they
# see each other's progress late; 5 peers on 2 loaded cores: 2.5x; 2 honest peers in CI's spine test: 2.45x)
YOUNG_EPOCHS = 3  # a swarm's first epochs seen, in which each reporting peer may have reached the target alone
MAX_EXTRAPOLATION = 1.0  # seconds a peer's last record is extrapolated at most (peers stop training for an epoch
# at different moments, up to seconds apart: extrapolating one that stopped early past its end inflates its share)
CLAIM_WAIT = 5.0  # seconds an epoch's decision waits, once it closed, for the reports of all its observed peers
EVIDENCE_TIMEOUT = 60.0  # seconds a report may wait for its epoch to close before it is decided on what is known
STALE_PEER = 10.0  # seconds without progress after which a peer no longer holds its epoch open
EXCESS_MEMORY = 20  # epochs of a node's claims remembered to judge how it usually claims
DECISIONS_KEPT = 200  # epochs behind the newest whose closing time and decision are remembered (a running total
# of an older epoch's reports restarts at 0: the throughput budget still bounds them)
PEER_MEMORY = 7 * 24 * 3600.0  # seconds without progress after which a peer and its budget are forgotten
FORGET_EVERY = 60.0  # seconds between those clean-ups


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
    progress_seen: float = 0.0  # coordinator time of the latest read that showed the peer making progress
    trained: float = 0.0  # samples it was seen training (its throughput budget, before THROUGHPUT_SLACK)
    head_start: int = 0  # samples its first record read already counted (done before the coordinator saw it)
    believed: float = 0.0  # samples believed of its claims so far (spent from that budget)

    @property
    def latest(self) -> PeerProgress:
        return self.records[max(self.records)]

    def budget(self) -> float:
        rate = max(record.samples_per_second for record in self.records.values())
        return (self.trained + rate * STARTUP_SECONDS) * THROUGHPUT_SLACK + self.head_start - self.believed

    def progress(self, record: PeerProgress, now: float) -> None:
        """Accrue the budget for a read that shows the peer training since the previous one: its samples/s × the
        time between the reads, or the samples its records gained if more (hivemind's first rates are far low)."""
        latest = self.latest
        if record.epoch > latest.epoch:
            gained = record.samples_accumulated
        elif record.epoch == latest.epoch and record.samples_accumulated > latest.samples_accumulated:
            gained = record.samples_accumulated - latest.samples_accumulated
        else:
            return
        self.trained += max(record.samples_per_second * min(now - self.progress_seen, MAX_PROGRESS_GAP), gained)
        self.progress_seen = now


@dataclass
class _NodeAccount:
    allowance: float = 0.0  # believed samples allowed so far (Σ observed × scale × (1 + TOLERANCE))
    used: int = 0  # of the allowance
    epochs: int = 0  # observed epochs the allowance was built of
    excess: list[float] = field(default_factory=list)  # recent claimed ÷ (observed × the epoch's scale)

    @property
    def usual_excess(self) -> float:
        return max(1.0, statistics.median(self.excess)) if self.excess else 1.0

    @property
    def suspect(self) -> bool:
        """Its claims usually exceed the scale by more than honest nodes' do (judged over a few epochs: a single
        epoch's estimate can be far off, most of all a peer's first)."""
        return len(self.excess) >= SUSPECT_AFTER and self.usual_excess > SUSPECT_EXCESS


class SwarmPlausibility:
    """The rules for one swarm."""

    def __init__(self, target_batch_size: int):
        self.target_batch_size = target_batch_size
        self.peers: dict[str, _PeerHistory] = {}
        self.accounts: dict[str, _NodeAccount] = defaultdict(_NodeAccount)
        self.decided_epochs: dict[int, tuple[float, float]] = {}  # epoch → (scale, believed samples so far)
        self.closed_at: dict[int, float] = {}
        self.first_decided: Optional[int] = None  # the first epoch a claim was decided in (young epochs follow it)
        self._forget_after = 0.0

    # --- evidence ---------------------------------------------------------------------------------------------
    def observe(self, records: list[PeerProgress], now: float) -> None:
        for record in records:
            history = self.peers.get(record.peer_id)
            if history is None:
                history = self.peers[record.peer_id] = _PeerHistory(progress_seen=now, head_start=record.samples_accumulated)
            else:
                history.progress(record, now)
            known = history.records.get(record.epoch)
            if known is None or record.time > known.time:
                history.records[record.epoch] = record
            for old in [e for e in history.records if e < record.epoch - 50]:  # bounded memory
                del history.records[old]
        for epoch in {e for h in self.peers.values() for e in h.records if e not in self.closed_at}:
            self._closed_at(epoch, now)
        if now >= self._forget_after:
            self._forget(now)

    def _forget(self, now: float) -> None:
        """Keep memory bounded in a swarm that runs for months: old epochs' decisions, long-gone peers."""
        self._forget_after = now + FORGET_EVERY
        for peer in [peer for peer, history in self.peers.items() if now - history.progress_seen > PEER_MEMORY]:
            del self.peers[peer]
        newest = max((history.latest.epoch for history in self.peers.values()), default=None)
        if newest is None:
            return
        for table in (self.closed_at, self.decided_epochs):
            for epoch in [epoch for epoch in table if epoch < newest - DECISIONS_KEPT]:
                del table[epoch]

    def _closed_at(self, epoch: int, now: float) -> Optional[float]:
        """When `epoch` was first found closed (now, if it is now): some peer reached it, and every peer whose
        latest record is of it has moved past it or stopped making progress (paused, or left: their last
        records are all the evidence there will be). An epoch too short for any of its records to be read
        closes too, once a peer is seen past it (found when a claim of it is decided)."""
        if epoch not in self.closed_at:
            latest = [(history.latest.epoch, now - history.progress_seen) for history in self.peers.values()]
            reached = any(latest_epoch >= epoch for latest_epoch, _ in latest)
            if reached and not any(e == epoch and quiet < STALE_PEER for e, quiet in latest):
                self.closed_at[epoch] = now
        return self.closed_at.get(epoch)

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

    def seconds_to_epoch_end(self, now: float) -> float:
        """The swarm's newest epoch's estimated remaining time, from its peers' latest records extrapolated at their
        rates to `now` (0 while none of them trains, e.g. all averaging): how long evidence may go unread."""
        latest = [history.latest for history in self.peers.values()]
        newest = max((record.epoch for record in latest), default=None)
        current = [record for record in latest if record.epoch == newest]
        rate = sum(record.samples_per_second for record in current)
        if rate <= 0:
            return 0.0
        done = sum(r.samples_accumulated + r.samples_per_second * max(now - r.time, 0.0) for r in current)
        return max(self.target_batch_size - done, 0.0) / rate

    def _expected(self, epoch: int) -> set[str]:
        """Peers that presumably trained in `epoch`: a record of it was seen, or records from before and after it."""
        return {peer for peer, h in self.peers.items() if epoch in h.records or min(h.records) < epoch < max(h.records)}

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
        newest = max((h.latest.epoch for h in self.peers.values()), default=-1)
        for epoch, group in sorted(by_epoch.items()):
            closed = self._closed_at(epoch, now)
            if closed is None:
                if now - min(c.received for c in group) < EVIDENCE_TIMEOUT:
                    continue
                if epoch > newest:  # an epoch no peer has reached: nothing stands behind it
                    verdicts += [self._unobserved(c) for c in group]
                    continue
                closed = now - CLAIM_WAIT  # held open too long by a peer: decided on what is known
            claimed_peers = {c.peer_id for c in group}
            if epoch not in self.decided_epochs and now - closed < CLAIM_WAIT and not self._expected(epoch) <= claimed_peers:
                continue  # some observed peer's report may still be on its way
            verdicts += self._decide_epoch(epoch, group, self.estimates(epoch))
        return verdicts

    def _unobserved(self, claim: Claim) -> Verdict:
        return Verdict(claim.report_id, 0, "no progress record in the DHT for this epoch", rejected=True)

    def _decide_epoch(self, epoch: int, group: list[Claim], estimates: dict[str, float]) -> list[Verdict]:
        estimates = {peer: samples for peer, samples in estimates.items() if samples > 0}
        scale, believed_so_far = self.decided_epochs.get(epoch) or (self._scale(group, estimates), 0.0)
        self._remember_excess(group, estimates, scale)
        believed = {}
        for claim in sorted(group, key=lambda c: c.report_id):
            observed = estimates.get(claim.peer_id)
            if observed is None:
                allowed, reason = self._unobserved_share(claim)
            else:
                allowed, reason = self._observed_share(claim, observed * scale)
            history = self.peers[claim.peer_id]
            budget = max(0, int(history.budget()))
            if budget < allowed:
                allowed, reason = budget, f"over throughput x time: {budget} of {claim.samples} believed"
            history.believed += allowed
            believed[claim.report_id] = (claim, allowed, reason)
        peers = len(self._expected(epoch) | {c.peer_id for c in group})
        young = epoch < (epoch if self.first_decided is None else self.first_decided) + YOUNG_EPOCHS
        slack = max(EPOCH_SLACK, peers if young else 1 + peers / 2)
        cap = self.target_batch_size * slack - believed_so_far
        total = sum(allowed for _, allowed, _ in believed.values())
        factor = min(1.0, max(cap, 0.0) / total) if total > 0 else 1.0
        verdicts = []
        for report_id, (claim, allowed, reason) in believed.items():
            if factor < 1.0:
                allowed = int(allowed * factor)
                reason = f"epoch over target: {allowed} of {claim.samples} believed"
            verdicts.append(Verdict(report_id, allowed, reason))
        self.decided_epochs[epoch] = (scale, believed_so_far + sum(v.samples for v in verdicts))
        self.first_decided = epoch if self.first_decided is None else min(self.first_decided, epoch)
        return verdicts

    def _observed_share(self, claim: Claim, share: float) -> tuple[int, Optional[str]]:
        """The claim within its node's allowance (+ what it may borrow against its next epochs)."""
        account = self.accounts[claim.node_id]
        account.allowance += share * (1 + TOLERANCE)
        account.epochs += 1
        # in shares of its usual epoch: the epoch whose estimate fell short is the one that needs the float
        borrow = 0.0 if account.suspect else BORROW * account.allowance / account.epochs
        share_cap = max(0, int(account.allowance - account.used + borrow))
        allowed, reason = claim.samples, None
        if share_cap < allowed:
            allowed, reason = share_cap, f"over observed share: {share_cap} of {claim.samples} believed"
        account.used += allowed  # before the other caps: a cut there must not become allowance later
        return allowed, reason

    def _unobserved_share(self, claim: Claim) -> tuple[int, Optional[str]]:
        """No record of the peer in this epoch was read (an epoch of about a second): the claim, less what its
        node usually claims above the scale; it leaves the node's allowance as it was."""
        account = self.accounts[claim.node_id]
        if not account.suspect:
            return claim.samples, None
        allowed = int(claim.samples / account.usual_excess)
        return allowed, f"over the node's usual share: {allowed} of {claim.samples} believed"

    def _remember_excess(self, group: list[Claim], estimates: dict[str, float], scale: float) -> None:
        """How far above the epoch's scale each node claims, for the next epochs' scales."""
        for claim in group:
            observed = estimates.get(claim.peer_id)
            if observed:
                excess = self.accounts[claim.node_id].excess
                excess.append(claim.samples / observed / scale)
                del excess[:-EXCESS_MEMORY]

    def _scale(self, group: list[Claim], estimates: dict[str, float]) -> float:
        """The epoch's claimed ÷ observed, common to honest nodes (the estimates all miss the work after the
        epoch's last records): the weighted median (weights: observed) of each node's ratio divided by how
        far above the scale that node has usually claimed (≥ 1), so a steady over-claimer cannot pull it up.
        1 without evidence."""
        ratios = sorted((c.samples / estimates[c.peer_id] / self.accounts[c.node_id].usual_excess, estimates[c.peer_id])
                        for c in group if c.peer_id in estimates)  # fmt: skip
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

