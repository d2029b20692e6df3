"""A state-averaging round after a peer joined by downloading the swarm's state leaves both peers with the donor's
optimizer statistics: the joiner averages (and keeps) the statistics it downloaded, not the ones it started with.
(hivemind 1.1.12 kept averaging the joiner's initial Adam moments, which halved the donor's at every state round
and set the peers' parameters apart in the epochs after.) Two real peers on 127.0.0.1, each in its own process."""

import json
import os
import sys
import time

import pytest
import torch

from node.swarm import ADAM_MOMENTS, SwarmMember, SwarmSettings
from tests.node.peer_process import ask, two_peers
from protocol.messages import Hyperparameters, SwarmManifest

ROUNDS_TRIED = 5  # a round both peers start together may still form without one of them: try again


def manifest(initial_peers: list[str]) -> SwarmManifest:
    hp = Hyperparameters(target_batch_size=10**6, batch_size=32, learning_rate=1e-3, matchmaking_time=2.0,
                         averaging_timeout=30.0)  # fmt: skip
    return SwarmManifest(swarm_id="state", title="t", run_id="state-round-test", task="spirals", hyperparameters=hp,
                         flops_per_sample=1, initial_peers=initial_peers, broker_url="mqtt://127.0.0.1:1")  # fmt: skip


def statistics(swarm: SwarmMember) -> list[float]:
    """Per moment tensor, a sum that tells its values apart (the optimizer's own tensors, as its step uses them)."""
    optimizer = swarm.optimizer.state_averager.optimizer
    params = [param for group in optimizer.param_groups for param in group["params"]]
    weights = torch.arange(1, params[0].numel() + 1, dtype=torch.float64).reshape(params[0].shape)
    return [float((optimizer.state[param][key].double() * weights).sum()) for key in ADAM_MOMENTS for param in params]


def peer_main(initial_peers: list[str]) -> None:
    """The donor (no initial peers) gives its statistics seeded values, as training would, and prints its
    addresses; the joiner downloads its state. Then each runs a state round per line on stdin, printing the group
    size and its statistics after it."""
    swarm = SwarmMember(manifest(initial_peers), SwarmSettings())
    swarm.connect()
    model = torch.nn.Linear(100, 100, bias=False)
    swarm.build_optimizer(model.parameters(), lambda params: torch.optim.Adam(params, lr=1e-3))
    averager = swarm.optimizer.state_averager
    try:
        if not initial_peers:
            generator = torch.Generator().manual_seed(1)
            for key in ADAM_MOMENTS:
                for state in averager.optimizer.state.values():
                    state[key].copy_(torch.rand(state[key].shape, generator=generator))  # in place, as Adam's step
            print(json.dumps([str(maddr) for maddr in swarm.dht.get_visible_maddrs()]), flush=True)
        else:
            deadline = time.monotonic() + 60
            while swarm.optimizer.local_epoch == 0 and statistics(swarm)[0] == 0 and time.monotonic() < deadline:
                swarm.optimizer.load_state_from_peers()  # until the donor announced its state in the DHT
            print(json.dumps(statistics(swarm)), flush=True)
        for _ in sys.stdin:
            rounds = averager.rounds_started
            averager.step(averaging_round=True, averaging_opts=dict(timeout=30))
            outcome = averager.outcome_since(rounds)
            print(json.dumps({"group_size": outcome.group_size, "statistics": statistics(swarm)}), flush=True)
    finally:
        swarm.shutdown()
        os._exit(0)


@pytest.mark.timeout(300)
def test_a_state_round_after_a_download_keeps_the_donors_statistics_on_both_peers():
    with two_peers(__name__) as peers:
        downloaded = json.loads(peers[1].stdout.readline())
        assert all(value > 0 for value in downloaded), downloaded
        for _ in range(ROUNDS_TRIED):
            outcomes = ask(peers, "round")
            if all(outcome["group_size"] == 2 for outcome in outcomes):
                break
        assert [outcome["group_size"] for outcome in outcomes] == [2, 2], outcomes
        for outcome in outcomes:  # the average of two equal states is that state
            assert outcome["statistics"] == pytest.approx(downloaded, rel=1e-6), (outcome, downloaded)

if __name__ == "__main__":
    peer_main(sys.argv[1:])
