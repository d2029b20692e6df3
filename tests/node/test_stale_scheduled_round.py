"""An epoch's end finds the gradient round hivemind pre-scheduled for it already over (its matchmaking gave up,
e.g. while the other peer was still busy in a state round): the node still averages with its peers, in a fresh
round. (hivemind 1.1.12 then skipped averaging for the whole epoch and stepped alone: CI's tiny-lm test saw one
peer train two epochs so.) Two real peers on 127.0.0.1, each in its own process."""

import json
import os
import sys
import threading

import pytest
import torch

from node.swarm import SwarmMember, SwarmSettings
from protocol.messages import Hyperparameters, SwarmManifest
from tests.node.peer_process import ask, two_peers

ROUNDS_TRIED = 5  # a round both peers start together may still form without one of them: try again
BATCH = 32


def manifest(initial_peers: list[str]) -> SwarmManifest:
    hp = Hyperparameters(target_batch_size=10**6, batch_size=BATCH, learning_rate=1e-3, matchmaking_time=2.0,
                         averaging_timeout=30.0)  # fmt: skip
    return SwarmManifest(swarm_id="stale", title="t", run_id="stale-round-test", task="spirals", hyperparameters=hp,
                         flops_per_sample=1, initial_peers=initial_peers, broker_url="mqtt://127.0.0.1:1")  # fmt: skip


def peer_main(initial_peers: list[str]) -> None:
    """Prints its addresses, waits until it sees both peers' progress, then per line on stdin: accumulates a batch's
    gradients, has a pre-scheduled round that is already over (cancelled), reaches the epoch's end and prints
    whether a round began and with how many peers it averaged."""
    swarm = SwarmMember(manifest(initial_peers), SwarmSettings())
    swarm.connect()
    model = torch.nn.Linear(16, 2)
    optimizer = swarm.build_optimizer(model.parameters(), lambda params: torch.optim.Adam(params, lr=1e-3))
    try:
        print(json.dumps([str(maddr) for maddr in swarm.dht.get_visible_maddrs()]), flush=True)
        optimizer.tracker.report_local_progress(0, BATCH)
        seen = swarm.wait_for_peers(2, timeout=60, stop=threading.Event())
        for _ in sys.stdin:
            model(torch.randn(BATCH, 16)).sum().backward()
            optimizer.grad_averager.accumulate_grads_(BATCH)
            stale = optimizer.grad_averager.schedule_step(timeout=30)
            stale.cancel()
            optimizer.scheduled_grads = stale
            rounds = optimizer.grad_averager.rounds_started
            began = optimizer._begin_averaging_gradients(grad_scaler=None)
            if began:
                optimizer.scheduled_grads.result(timeout=60)  # raises if the fresh round failed
            outcome = optimizer.grad_averager.outcome_since(rounds)
            print(json.dumps({"saw_peer": seen, "began": began, "group_size": outcome.group_size}), flush=True)
    finally:
        swarm.shutdown()
        os._exit(0)


@pytest.mark.timeout(300)
def test_a_node_whose_pre_scheduled_round_is_over_still_averages_with_its_peer():
    with two_peers(__name__) as peers:
        peers[1].stdout.readline()  # its addresses
        for _ in range(ROUNDS_TRIED):
            outcomes = ask(peers, "epoch end")
            assert all(outcome["saw_peer"] and outcome["began"] for outcome in outcomes), outcomes
            if all(outcome["group_size"] == 2 for outcome in outcomes):
                break
        assert [outcome["group_size"] for outcome in outcomes] == [2, 2], outcomes

if __name__ == "__main__":
    peer_main(sys.argv[1:])
