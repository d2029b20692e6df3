"""The node daemon dies cleanly: whichever of its processes is SIGKILLed, nothing hivemind started survives."""

import os
import signal

import psutil
import pytest

from hearth.processes import group_members, groups_of_tree, wait_until

pytestmark = pytest.mark.swarm


def _start_training_node(coordinator, swarm, nodes, name: str):
    process = nodes.start(coordinator.url, name, "--swarm", swarm["swarm_id"])
    wait_until(lambda: "Registered as" in nodes.log(name), 120, what=f"{name} to register")
    # the DHT process, p2pd and averagers exist once the optimizer is built, before the first batch
    wait_until(lambda: len(psutil.Process(process.pid).children(recursive=True)) >= 4, 60, what="hivemind helpers")
    return process, groups_of_tree(process.pid)


def _nothing_left(groups: set[int]) -> bool:
    return all(group_members(group) == [] for group in groups)


@pytest.mark.parametrize("victim", ["supervisor", "worker"])
def test_sigkill_leaves_no_hivemind_process_behind(coordinator, swarm, nodes, victim):
    process, groups = _start_training_node(coordinator, swarm, nodes, f"kill-{victim}")
    assert len(groups) >= 2  # the supervisor's group, the worker's own (and p2pd's)
    worker = next(child for child in psutil.Process(process.pid).children() if "node.worker" in " ".join(child.cmdline()))
    os.kill(process.pid if victim == "supervisor" else worker.pid, signal.SIGKILL)
    wait_until(lambda: _nothing_left(groups), 60, what="every process of the node to end")
