"""Plausibility rules (coordinator/plausibility.py) on a simulated swarm with a fake clock: peers accumulate at
their own rates, publish throttled progress records like hivemind's tracker, and the monitor reads the latest ones
every half second, as coordinator/work_check.py does."""

import random

import pytest

from coordinator.plausibility import (CLAIM_WAIT, DECISIONS_KEPT, EPOCH_SLACK, EVIDENCE_TIMEOUT, PEER_MEMORY,
                                      STALE_PEER, STARTUP_SECONDS, THROUGHPUT_SLACK, TOLERANCE, Claim,
                                      SwarmPlausibility)  # fmt: skip
from hearth.progress import PeerProgress

TARGET = 12_000
STEP = 0.05


class FakeSwarm:
    """Peers at `rates` samples/s; an epoch ends when their samples reach TARGET; records at most once a second
    (at each peer's own phase) and at once on a new epoch; the coordinator polls every 0.5 s."""

    def __init__(self, rates: dict[str, float], seed: int = 1):
        self.rates, self.rng = rates, random.Random(seed)
        self.now, self.epoch = 1000.0, 0
        self.samples = {peer: 0.0 for peer in rates}
        self.published = {peer: PeerProgress(peer, 0, 0, rate, self.now, False) for peer, rate in rates.items()}
        self.last_publish = {peer: self.now - self.rng.random() for peer in rates}
        self.closed: list[tuple[int, float, dict[str, int]]] = []  # (epoch, time, true samples per peer)

    def advance(self, seconds: float, plausibility: SwarmPlausibility) -> None:
        for _ in range(round(seconds / STEP)):
            self.now += STEP
            for peer, rate in self.rates.items():
                self.samples[peer] += rate * STEP * self.rng.uniform(0.9, 1.1)
                if self.now - self.last_publish[peer] >= 1.0:
                    self._publish(peer)
            if sum(self.samples.values()) >= TARGET:
                self.closed.append((self.epoch, self.now, {p: int(s) for p, s in self.samples.items()}))
                self.epoch += 1
                self.samples = {peer: 0.0 for peer in self.rates}
                for peer in self.rates:
                    self._publish(peer)
            if round(self.now / STEP) % 10 == 0:  # every 0.5 s
                plausibility.observe(list(self.published.values()), self.now)

    def _publish(self, peer: str) -> None:
        self.published[peer] = PeerProgress(peer, self.epoch, int(self.samples[peer]), self.rates[peer], self.now, False)
        self.last_publish[peer] = self.now


def run(rates, claim_factor: dict[str, float], epochs: int = 30, seed: int = 1):
    """Claims arrive 0.3 s after each epoch closes; returns (claimed, believed, true) samples per peer, reasons."""
    swarm, rules = FakeSwarm(rates, seed), SwarmPlausibility(TARGET)
    pending, next_id, seen = [], 1, 0
    believed, true, reasons = {p: 0 for p in rates}, {p: 0 for p in rates}, []
    peer_of = {}
    while len(swarm.closed) < epochs or pending:
        swarm.advance(0.3, rules)
        for epoch, _, truth in swarm.closed[seen:]:
            for peer, samples in truth.items():
                pending.append(Claim(next_id, f"node-{peer}", peer, epoch, int(samples * claim_factor.get(peer, 1)),
                                     swarm.now))  # fmt: skip
                peer_of[next_id] = peer
                true[peer] += samples
                next_id += 1
        seen = len(swarm.closed)
        for verdict in rules.decide(pending, swarm.now):
            believed[peer_of[verdict.report_id]] += verdict.samples
            reasons.append((peer_of[verdict.report_id], verdict.reason))
            pending = [c for c in pending if c.report_id != verdict.report_id]
        if len(swarm.closed) >= epochs:
            swarm.rates = {p: 0.0 for p in rates}  # stop training; let the last claims settle
            if swarm.now > 10_000:
                raise AssertionError("claims never settled")
    return believed, true, reasons


def test_honest_peers_are_believed_in_full():
    believed, true, reasons = run({"a": 1000, "b": 2000, "c": 3000}, {})
    for peer in true:
        assert believed[peer] / true[peer] == pytest.approx(1.0, abs=0.02)
    assert sum(reason is not None for _, reason in reasons) <= 3  # at most a first-epoch trim


def test_an_inflator_gets_at_most_its_observed_share_plus_tolerance():
    believed, true, reasons = run({"a": 1000, "b": 2000, "c": 3000, "x": 1500}, {"x": 2.0})
    assert believed["x"] / true["x"] <= 1 + TOLERANCE + 0.02
    assert believed["x"] / true["x"] >= 0.9
    assert any(peer == "x" and reason and reason.startswith("over observed share") for peer, reason in reasons)
    for peer in "abc":
        assert believed[peer] / true[peer] == pytest.approx(1.0, abs=0.02)


def test_claims_beyond_throughput_times_time_are_cut():
    rules = SwarmPlausibility(TARGET)
    rules.observe([PeerProgress("p", 0, 100, 100.0, 0.0, False)], now=0.0)
    rules.observe([PeerProgress("p", 1, 0, 100.0, 10.0, False)], now=10.0)
    [verdict] = rules.decide([Claim(1, "n", "p", 0, 5000, 10.0)], now=10.0 + CLAIM_WAIT)
    # seen training for 10 s (+ STARTUP_SECONDS before the first read, whose 100 samples count too)
    assert verdict.samples == int(100 * (10 + STARTUP_SECONDS) * THROUGHPUT_SLACK + 100)
    assert verdict.reason.startswith("over throughput x time")


def test_a_backlog_delivered_at_once_is_believed_for_the_time_it_was_trained():
    """After a broker outage a node's outbox delivers many epochs' reports at once: the throughput budget accrued
    while the peer was seen training, not when its reports arrived."""
    rules = SwarmPlausibility(TARGET)
    for second in range(101):  # 10 epochs of 10 s at 100 samples/s, records read every second
        rules.observe([PeerProgress("p", second // 10, (second % 10) * 100, 100.0, float(second), False)], now=second)
    backlog = [Claim(epoch + 1, "n", "p", epoch, 1000, received=100.5) for epoch in range(10)]
    verdicts = rules.decide(backlog, now=100.5)
    assert sorted((v.samples, v.reason) for v in verdicts) == [(1000, None)] * 10


def test_an_epoch_too_short_for_its_records_to_be_read_is_believed():
    """Epochs of about a second: the coordinator may read no record of an epoch at all. It closes once the peers
    are seen past it, and its claims are believed within the throughput budget and the epoch cap, not refused."""
    rules = SwarmPlausibility(TARGET)
    rules.observe([PeerProgress(p, 4, 600, 1000.0, 0.0, False) for p in "pq"], now=0.0)
    rules.observe([PeerProgress(p, 6, 300, 1000.0, 2.1, False) for p in "pq"], now=2.1)  # epoch 5 was never read
    claims = [Claim(1, "n", "p", 5, 900, received=2.0), Claim(2, "m", "q", 5, 950, received=2.0)]
    verdicts = rules.decide(claims, now=2.1)
    assert sorted((v.samples, v.reason, v.rejected) for v in verdicts) == [(900, None, False), (950, None, False)]


def test_unread_epochs_do_not_pay_a_known_inflator_in_full():
    """Without an observed share, a node that usually claims far above the scale is believed that much less."""
    rules = SwarmPlausibility(TARGET)
    rules.accounts["node-x"].excess[:] = [2.0] * 10
    rules.observe([PeerProgress("x", 1, 500, 1000.0, 0.0, False)], now=0.0)
    rules.observe([PeerProgress("x", 3, 500, 1000.0, 2.0, False)], now=2.0)
    [verdict] = rules.decide([Claim(1, "node-x", "x", 2, 1000, received=1.9)], now=2.0)
    assert verdict.samples == 500 and verdict.reason.startswith("over the node's usual share")


def test_a_paused_peer_does_not_hold_its_epoch_open():
    """A paused peer's last record stays in the DHT (hivemind re-publishes it): once it showed no progress for
    STALE_PEER seconds, the others' reports of that epoch are decided (they used to wait, then be refused)."""
    rules = SwarmPlausibility(TARGET)
    for now in range(0, 16):  # q moves on at 1 s; p, paused, is read again and again in epoch 3
        q = PeerProgress("q", 3 if now == 0 else 4, 500 if now == 0 else now * 10, 100.0, float(now), False)
        rules.observe([PeerProgress("p", 3, 500, 100.0, 0.0, False), q], now)
    claim = Claim(1, "m", "q", 3, 500, received=1.0)
    assert rules.decide([claim], now=STALE_PEER - 1) == []  # p may still be training
    assert rules.decide([claim], now=STALE_PEER) == []  # closed now; p's report may be on its way
    [verdict] = rules.decide([claim], now=STALE_PEER + CLAIM_WAIT)
    assert (verdict.samples, verdict.reason) == (500, None)


def test_an_epoch_is_capped_at_its_target():
    rules = SwarmPlausibility(target_batch_size=100)
    rules.observe([PeerProgress("p", 0, 1000, 1000.0, 0.0, False), PeerProgress("q", 0, 1000, 1000.0, 0.0, False)], 0.0)
    rules.observe([PeerProgress("p", 1, 0, 1000.0, 5.0, False), PeerProgress("q", 1, 0, 1000.0, 5.0, False)], 5.0)
    verdicts = rules.decide([Claim(1, "n", "p", 0, 1000, 5.0), Claim(2, "m", "q", 0, 1000, 5.0)], now=5.0)
    assert sum(v.samples for v in verdicts) <= 100 * EPOCH_SLACK
    assert all(v.reason.startswith("epoch over target") for v in verdicts)


def test_the_last_epoch_closes_once_its_peers_went_quiet():
    rules = SwarmPlausibility(TARGET)
    rules.observe([PeerProgress("p", 4, 900, 100.0, 0.0, False)], now=0.0)
    claim = Claim(1, "n", "p", 4, 1000, received=9.0)  # 9 s of work at 100/s, within THROUGHPUT_SLACK
    assert rules.decide([claim], now=9.5) == []  # p may still be training
    rules.observe([], now=STALE_PEER)
    [verdict] = rules.decide([claim], now=STALE_PEER + CLAIM_WAIT)
    assert verdict.samples == 1000 and not verdict.rejected  # 900 + 100/s × up to MAX_EXTRAPOLATION, +TOLERANCE


def test_a_claim_waits_for_evidence_then_is_rejected_without_it():
    rules = SwarmPlausibility(TARGET)
    claim = Claim(1, "n", "unseen-peer", 3, 1000, received=50.0)
    assert rules.decide([claim], now=51.0) == []
    [verdict] = rules.decide([claim], now=50.0 + EVIDENCE_TIMEOUT)
    assert verdict.rejected and verdict.samples == 0 and "no progress record" in verdict.reason


def test_an_epoch_waits_for_its_peers_reports_but_not_forever():
    rules = SwarmPlausibility(TARGET)
    rules.observe([PeerProgress("p", 0, 500, 100.0, 0.0, False), PeerProgress("q", 0, 500, 100.0, 0.0, False)], 0.0)
    rules.observe([PeerProgress("p", 1, 0, 100.0, 5.0, False), PeerProgress("q", 1, 0, 100.0, 5.0, False)], 5.0)
    claim = Claim(1, "n", "p", 0, 500, 5.0)
    assert rules.decide([claim], now=5.5) == []  # q's report may still come
    [verdict] = rules.decide([claim], now=5.0 + CLAIM_WAIT)
    assert verdict.samples == 500 and verdict.reason is None


def test_a_later_epoch_decided_first_does_not_starve_the_earlier_one():
    rules = SwarmPlausibility(TARGET)
    for now, records in ((0.0, [("p", 0, 900, 0.0)]), (10.0, [("p", 1, 0, 10.0)]), (19.0, [("p", 1, 900, 19.0)]),
                         (20.0, [("p", 2, 0, 20.0)])):  # fmt: skip
        rules.observe([PeerProgress(peer, epoch, samples, 100.0, t, False) for peer, epoch, samples, t in records], now)
    later, earlier = Claim(2, "n", "p", 1, 1000, received=20.5), Claim(1, "n", "p", 0, 1000, received=10.5)
    [first] = rules.decide([later], now=20.5 + CLAIM_WAIT)
    [second] = rules.decide([earlier], now=21.0 + CLAIM_WAIT)
    assert (first.samples, second.samples) == (1000, 1000)  # both fit 100/s × the time p was seen training


def test_honest_peers_in_epochs_of_a_second_are_believed_in_full():
    """Epochs about as long as the records' refresh: many are never read; none of the honest claims is cut."""
    believed, true, reasons = run({"a": 5000, "b": 7000}, {}, epochs=40)
    assert believed == true, reasons


def test_in_a_young_swarm_each_peer_may_reach_the_target_alone():
    """Peers that do not see each other's progress yet each train a whole target_batch_size; later on, an epoch's
    believed samples are capped at the target × EPOCH_SLACK, or × (1 + half its peers) if more."""
    rules, peers = SwarmPlausibility(target_batch_size=1000), "pqr"
    verdicts = {}
    for epoch in range(5):
        rules.observe([PeerProgress(p, epoch, 990, 1000.0, epoch * 2.0, False) for p in peers], now=epoch * 2.0)
        rules.observe([PeerProgress(p, epoch + 1, 0, 1000.0, epoch * 2.0 + 1, False) for p in peers], epoch * 2.0 + 1)
        claims = [Claim(epoch * 10 + i, f"node-{p}", p, epoch, 1000, epoch * 2.0 + 1) for i, p in enumerate(peers)]
        verdicts[epoch] = sum(v.samples for v in rules.decide(claims, now=epoch * 2.0 + 1))
    assert [verdicts[e] for e in range(3)] == [3000] * 3  # in full
    cap = 1000 * max(EPOCH_SLACK, 1 + len(peers) / 2)
    assert all(cap - 3 <= verdicts[e] <= cap for e in (3, 4))  # scaled down alike


def test_memory_stays_bounded_over_a_long_run():
    """Closing times and decisions of old epochs, and peers gone for a week, are forgotten; the rules go on."""
    rules, now = SwarmPlausibility(target_batch_size=1000), 0.0
    epochs = DECISIONS_KEPT * 3
    for epoch in range(epochs):
        now += 10
        rules.observe([PeerProgress(peer, epoch, 500, 100.0, now, False) for peer in "ab"], now)
        now += 10
        rules.observe([PeerProgress(peer, epoch + 1, 0, 100.0, now, False) for peer in "ab"], now)
        claims = [Claim(epoch * 2 + i, f"node-{peer}", peer, epoch, 500, now) for i, peer in enumerate("ab")]
        verdicts = rules.decide(claims, now + CLAIM_WAIT)
        assert [v.samples for v in verdicts] == [500, 500], (epoch, verdicts)
    assert len(rules.closed_at) <= DECISIONS_KEPT + 5 and len(rules.decided_epochs) <= DECISIONS_KEPT + 5  # of 600
    assert rules.first_decided == 0  # young epochs are still counted from the swarm's first
    now += PEER_MEMORY + 120
    rules.observe([PeerProgress("c", epochs + 1, 10, 100.0, now, False)], now)
    assert set(rules.peers) == {"c"}


def test_the_time_to_an_epochs_end_counts_the_newest_epochs_peers_at_their_rates():
    plausibility = SwarmPlausibility(TARGET)
    assert plausibility.seconds_to_epoch_end(1000.0) == 0.0  # nobody seen: read at once
    plausibility.observe([PeerProgress("a", 3, 2_000, 100.0, 1000.0, False),
                          PeerProgress("b", 3, 4_000, 300.0, 999.0, False),
                          PeerProgress("old", 2, 11_000, 5_000.0, 1000.0, False)], 1000.0)  # fmt: skip
    # (12,000 - 2,000 - 4,000 - 300 extrapolated over b's extra second) at 400 samples/s
    assert plausibility.seconds_to_epoch_end(1000.0) == pytest.approx(5_700 / 400)
    plausibility.observe([PeerProgress(p, 3, 6_000, 0.0, 1001.0, False) for p in "ab"], 1001.0)
    assert plausibility.seconds_to_epoch_end(1001.0) == 0.0  # stopped for the epoch's averaging: read every pass
