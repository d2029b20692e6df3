"""A peer joining a training swarm downloads the swarm's state (parameters and optimizer statistics) once, and not
the donor's gradient buffers, which hivemind.Optimizer would download and throw away; two real peers on 127.0.0.1."""

import multiprocessing
import os
import time

import torch

from node.swarm import SwarmMember, SwarmSettings
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


def _peer(initial_peers, results, leave) -> None:
    """One peer in a process of its own, as on its own PC: each peer owns its hivemind helper processes and
    torch's shared-memory manager, which its shutdown ends (the process must exit without freeing shared tensors,
    as the node's worker does)."""
    swarm = member(initial_peers)
    try:
        if not initial_peers:  # the peer already in the swarm
            results.put([str(maddr) for maddr in swarm.dht.get_visible_maddrs()])
            leave.wait(120)
        else:  # the joiner
            deadline, received = time.monotonic() + 60, 0
            while received == 0 and time.monotonic() < deadline:  # until the donor announced its state in the DHT
                swarm.optimizer.load_state_from_peers()
                received = swarm.traffic.take()[1]
            results.put(received)
    finally:
        swarm.shutdown()
        os._exit(0)


def test_a_joiner_downloads_the_state_once_and_no_gradient_buffers():
    context = multiprocessing.get_context("fork")  # as hivemind starts its own processes
    results, leave = context.Queue(), context.Event()
    donor = context.Process(target=_peer, args=([], results, leave))
    donor.start()
    joiner = None
    try:
        joiner = context.Process(target=_peer, args=(results.get(timeout=120), results, leave))
        joiner.start()
        received = results.get(timeout=180)
    finally:
        leave.set()
        for process in (joiner, donor):
            if process is not None:
                process.join(60)
                if process.exitcode is None:
                    process.kill()
    state = 3 * VALUES * 4
    # the state and its framing; the donor's gradient buffers would add another VALUES * 4 bytes
    assert state <= received < state + VALUES, received
