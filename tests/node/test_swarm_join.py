"""A peer joining a training swarm downloads the swarm's state (parameters and optimizer statistics) once, and not
the donor's gradient buffers, which hivemind.Optimizer would download and throw away; two real peers on 127.0.0.1."""

import json
import os
import sys
import time

import pytest
import torch

from node.swarm import SwarmMember, SwarmSettings
from tests.node.peer_process import two_peers
from protocol.messages import Hyperparameters, SwarmManifest

VALUES = 100_000  # parameters of the model below, so a state of 3 × 400 kB (parameters, two Adam moments)


def manifest(initial_peers: list[str]) -> SwarmManifest:
    hp = Hyperparameters(target_batch_size=10**6, batch_size=32, learning_rate=1e-3, matchmaking_time=2.0,
                         averaging_timeout=30.0)  # fmt: skip
    return SwarmManifest(swarm_id="join", title="t", run_id="join-test", task="spirals", hyperparameters=hp,
                         flops_per_sample=1, initial_peers=initial_peers, broker_url="mqtt://127.0.0.1:1")  # fmt: skip


def member(initial_peers: list[str]) -> SwarmMember:
    swarm = SwarmMember(manifest(initial_peers), SwarmSettings())
    swarm.connect()
    model = torch.nn.Linear(VALUES // 100, 100, bias=False)
    swarm.build_optimizer(model.parameters(), lambda params: torch.optim.Adam(params, lr=1e-3))
    return swarm


def peer_main(initial_peers: list[str]) -> None:
    """One peer in a fresh interpreter, as on its own PC: it owns its hivemind helper processes and torch's
    shared-memory manager, which its shutdown ends (so it exits without freeing shared tensors, as the node's
    worker does). The peer already in the swarm prints its addresses and stays until its stdin closes; the joiner
    prints the bytes its state download received."""
    swarm = member(initial_peers)
    try:
        if not initial_peers:
            print(json.dumps([str(maddr) for maddr in swarm.dht.get_visible_maddrs()]), flush=True)
            sys.stdin.read()
        else:
            deadline, received = time.monotonic() + 60, 0
            while received == 0 and time.monotonic() < deadline:  # until the donor announced its state in the DHT
                swarm.optimizer.load_state_from_peers()
                received = swarm.traffic.take()[1]
            print(json.dumps(received), flush=True)
    finally:
        swarm.shutdown()
        os._exit(0)


@pytest.mark.timeout(300)
def test_a_joiner_downloads_the_state_once_and_no_gradient_buffers():
    with two_peers(__name__) as (_donor, joiner):
        received = json.loads(joiner.stdout.readline())
    state = 3 * VALUES * 4
    # the state and its framing; the donor's gradient buffers would add another VALUES * 4 bytes
    assert state <= received < state + VALUES, received


if __name__ == "__main__":
    peer_main(sys.argv[1:])
