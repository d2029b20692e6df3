"""Parameter digests: the sketch tells float rounding from real drift, the majority rule picks the odd peer out
(and nobody in a tie), and over a real hivemind DHT the one peer whose parameters were perturbed is told to reload."""

import threading

import pytest
import torch

from hearth.processes import wait_until
from node.digest import TOLERANCE, ParameterDigests, compared_every, distance, majority_verdict, sketch
from protocol.messages import Hyperparameters


def parameters(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(300, 200, generator=generator) * 0.05, torch.randn(200, generator=generator) * 0.05]


def test_the_sketch_tells_rounding_and_compression_error_from_drift():
    params = parameters()
    own = sketch(params)
    assert len(own) == 16 and sketch([p.clone() for p in params]) == own
    rounded = [p * (1 + 1e-7 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1))) for p in params]
    assert distance(own, sketch(rounded)) < TOLERANCE["none"] / 10
    drifted = [p.clone() for p in params]
    drifted[0][:20] += 5e-4  # what a partly failed averaging round left: one part keeps its local update
    assert distance(own, sketch(drifted)) > TOLERANCE["none"] * 10
    assert distance(own, sketch(parameters(seed=1))) > 0.5


def test_the_peer_outside_the_majority_reloads_and_nobody_does_in_a_tie():
    a, c = sketch(parameters()), sketch(parameters(seed=1))
    tolerance = TOLERANCE["none"]
    reason = majority_verdict(c, {"a": a, "b": list(a)}, tolerance)
    assert reason is not None and reason.startswith("2 of 3 peers agree") and "1 of 3 agree with it" in reason
    assert majority_verdict(a, {"b": list(a), "c": c}, tolerance) is None
    assert majority_verdict(a, {"c": c}, tolerance) is None  # two peers apart: no majority
    assert majority_verdict(a, {}, tolerance) is None  # alone
    assert majority_verdict(a, {"b": list(a), "c": c, "d": list(c)}, tolerance) is None  # 2 against 2
    assert majority_verdict(a, {"c": c, "d": list(c), "e": list(c)}, tolerance) is not None


def test_malformed_records_are_counted_and_ignored():
    digests = ParameterDigests("run", "none", 1, swarm_handles=lambda: None)
    good = {"epoch": 3, "sketch": [1.0] * 16}
    records = {b"me": good, b"other": good, b"old": {"epoch": 2, "sketch": [1.0] * 16},
               b"bad1": {"epoch": 3, "sketch": [1.0] * 3}, b"bad2": "not a record", b"bad3": {"epoch": "3"}}  # fmt: skip
    assert digests._peer_sketches(records, b"me", epoch=3) == {repr(b"other"): [1.0] * 16}
    assert digests.malformed == 3
    moved_on = {"epoch": 5, "sketch": [5.0] * 16, "earlier": [{"epoch": 4, "sketch": [4.0] * 16}, good]}
    assert digests._peer_sketches({b"fast": moved_on}, b"me", epoch=3) == {repr(b"fast"): [1.0] * 16}
    digests.stop()


@pytest.fixture
def three_peers():
    """Three real DHT peers on loopback, each signing its records with its own key (as separate nodes do)."""
    from hivemind.dht import DHT
    from hivemind.dht.crypto import RSASignatureValidator
    from hivemind.utils.crypto import RSAPrivateKey

    peers = []
    try:
        for _ in range(3):
            validator = RSASignatureValidator(RSAPrivateKey())
            initial = [str(addr) for addr in peers[0][0].get_visible_maddrs()] if peers else []
            dht = DHT(initial_peers=initial, host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
            dht.add_validators([validator])
            peers.append((dht, validator.local_public_key))
        yield peers
    finally:
        for dht, _ in peers:
            dht.shutdown()


def test_over_a_real_dht_only_the_perturbed_peer_is_told_to_reload(three_peers):
    # Each compares once all three digests are in the DHT (the timer of epoch_done is set far off).
    digests = [ParameterDigests("digest-test", "none", 1, swarm_handles=lambda peer=peer: peer, settle_seconds=3600)
               for peer in three_peers]  # fmt: skip
    params = parameters()
    perturbed = [p.clone() for p in params]
    perturbed[1][:10] -= 1e-3
    owns = [params, [p.clone() for p in params], perturbed]
    try:
        for monitor, own in zip(digests, owns):
            monitor.epoch_done(4, own)
        dht = three_peers[0][0]
        wait_until(lambda: len(getattr(dht.get(digests[0].key, latest=True), "value", {})) == 3, 60,
                   what="the three digests in the DHT")  # fmt: skip
        for monitor, (dht, public_key), own in zip(digests, three_peers, owns):
            monitor.compare(dht, public_key, 4, sketch(own))
        verdicts = [monitor.take_verdict(local_epoch=4) for monitor in digests]
        assert verdicts[0] is None and verdicts[1] is None, verdicts
        assert verdicts[2] is not None and verdicts[2][0] == 4 and verdicts[2][1].startswith("2 of 3 peers agree")
        assert digests[2].take_verdict(local_epoch=4) is None  # told once
        assert [monitor.summary() for monitor in digests] == [{"compared": 1, "agreed": 0, "malformed": 0}] * 3
    finally:
        for monitor in digests:
            monitor.stop()


def test_gradient_swarms_compare_every_epoch_local_updates_only_after_state_rounds():
    def every(**options) -> int:
        hp = Hyperparameters(target_batch_size=64, batch_size=8, learning_rate=0.1, matchmaking_time=2.0,
                             averaging_timeout=10.0, **options)  # fmt: skip
        return compared_every(hp)

    assert every(average_state_every=5) == 1
    assert every(average_state_every=5, local_updates=True) == 5


def test_epochs_between_comparisons_publish_nothing():
    calls = []
    monitor = ParameterDigests("run", "none", every=5, swarm_handles=lambda: calls.append(1))
    monitor.epoch_done(3, parameters())
    assert calls == []  # not even asked for the DHT
    monitor.stop()
    assert isinstance(monitor._stopped, threading.Event) and monitor._stopped.is_set()
