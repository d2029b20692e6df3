"""A state round told how many peers to expect starts its all-reduce as soon as they have all joined, instead of
waiting out its matchmaking window (hivemind's behaviour, which cost every peer ~1 s of every epoch). Two real peers
on 127.0.0.1, each in its own process, with a window long enough that waiting it out cannot pass for quick."""

import json
import os
import sys
import time

import pytest
import torch

import node.swarm
from node.swarm import SwarmMember, SwarmSettings
from tests.node.peer_process import ask, two_peers
from protocol.messages import Hyperparameters, SwarmManifest

WINDOW_SECONDS = 30.0  # the state round's matchmaking window in this test


def manifest(initial_peers: list[str]) -> SwarmManifest:
    hp = Hyperparameters(target_batch_size=10**6, batch_size=32, learning_rate=1e-3, matchmaking_time=WINDOW_SECONDS,
                         averaging_timeout=120.0)  # fmt: skip
    return SwarmManifest(swarm_id="quorum", title="t", run_id="state-quorum-test", task="spirals", hyperparameters=hp,
                         flops_per_sample=1, initial_peers=initial_peers, broker_url="mqtt://127.0.0.1:1")  # fmt: skip


def peer_main(initial_peers: list[str]) -> None:
    """Prints its addresses if it is the first peer; then for each line on stdin (the group size to expect) runs a
    state round and prints the group it averaged in and the round's seconds."""
    node.swarm.STATE_MATCHMAKING_SECONDS = WINDOW_SECONDS
    swarm = SwarmMember(manifest(initial_peers), SwarmSettings())
    swarm.connect()
    swarm.build_optimizer(torch.nn.Linear(10, 10).parameters(), lambda params: torch.optim.Adam(params, lr=1e-3))
    averager = swarm.optimizer.state_averager
    try:
        if not initial_peers:
            print(json.dumps([str(maddr) for maddr in swarm.dht.get_visible_maddrs()]), flush=True)
        for line in sys.stdin:
            rounds, started = averager.rounds_started, time.monotonic()
            averager.expected_group_size = int(line)
            averager.step(averaging_round=True, averaging_opts=dict(timeout=120))
            outcome = averager.outcome_since(rounds)
            print(json.dumps({"group_size": outcome.group_size, "seconds": time.monotonic() - started}), flush=True)
    finally:
        swarm.shutdown()
        os._exit(0)


@pytest.mark.timeout(300)
def test_a_state_round_expecting_both_peers_starts_once_both_joined():
    with two_peers(__name__) as peers:
        outcomes = ask(peers, "2")
    assert [outcome["group_size"] for outcome in outcomes] == [2, 2], outcomes
    assert all(outcome["seconds"] < WINDOW_SECONDS / 3 for outcome in outcomes), outcomes


if __name__ == "__main__":
    peer_main(sys.argv[1:])
