"""The node daemon dies cleanly: whichever of its processes is SIGKILLed, nothing hivemind started survives."""

import os
import re
import signal
import subprocess

import psutil
import pytest

from hearth.processes import group_members, groups_of_tree, wait_until
from node.control import ControlError, request, socket_path

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


def _worker(supervisor: subprocess.Popen) -> psutil.Process | None:
    for child in psutil.Process(supervisor.pid).children():
        if "node.worker" in " ".join(child.cmdline()):
            return child
    return None


def test_a_crashed_worker_is_started_again_and_trains(coordinator, swarm, nodes):
    process, _ = _start_training_node(coordinator, swarm, nodes, "crash-worker")
    crashed = _worker(process)
    crashed_groups = groups_of_tree(crashed.pid)
    os.kill(crashed.pid, signal.SIGSEGV)  # what a fault in torch's native code does
    wait_until(lambda: "the node process crashed (SIGSEGV); starting it again" in nodes.log("crash-worker"), 60,
               what="the supervisor to notice the crash")  # fmt: skip
    wait_until(lambda: _nothing_left(crashed_groups - {process.pid}), 60, what="the crashed worker's helpers to end")
    restarted = wait_until(lambda: (worker := _worker(process)) and worker.pid != crashed.pid and worker, 60,
                           what="a new worker")  # fmt: skip
    data_dir = nodes.data_dir("crash-worker")
    wait_until(lambda: _training(data_dir).get("first_step_at"), 180, what="the restarted node's first step")
    assert restarted.is_running() and process.poll() is None
    registrations = re.findall(r"Registered as crash-worker \(node ([0-9a-f]{32})\)", nodes.log("crash-worker"))
    assert len(registrations) == 2 and len(set(registrations)) == 1  # the same identity, registered again


def _training(data_dir) -> dict:
    try:
        return request(socket_path(data_dir), "status")["training"]
    except (ControlError, OSError, ValueError):
        return {}
