"""A node kept running with `hearth node start` takes swarms from `hearth join`: it trains in the one it is handed
(torch and hivemind already loaded), a second join moves it to another swarm in the same process, and `hearth node
stop` ends it with nothing left behind."""

import os

import psutil
import pytest

from hearth.processes import groups_of_tree, group_members, leftovers_reported, wait_until
from node.control import ControlError, request, socket_path
from tests.conftest import create_swarm, run_hearth

pytestmark = pytest.mark.swarm


def _status(data_dir) -> dict:
    try:
        return request(socket_path(data_dir), "status")
    except (ControlError, OSError, ValueError):
        return {}


def _join(coordinator, swarm_id: str, data_dir) -> str:
    joined = run_hearth("join", coordinator.url, "--swarm", swarm_id, "--name", "warm", "--data-dir", str(data_dir),
                        "--threads", "1", timeout=60)  # fmt: skip
    assert joined.returncode == 0, joined.stderr
    return joined.stdout


def _trains_in(data_dir, swarm_id: str) -> bool:
    answer = _status(data_dir)
    return answer.get("swarm") == swarm_id and bool(answer["training"].get("first_step_at"))


def test_join_hands_swarms_to_the_running_node(coordinator, swarm, nodes):
    daemon = nodes.start_daemon("warm")
    data_dir = nodes.data_dir("warm")
    wait_until(lambda: _status(data_dir).get("host", {}).get("state", "").startswith("waiting"), 120,
               what="the node to wait for a join")  # fmt: skip
    worker = psutil.Process(daemon.pid).children()[0]
    assert _status(data_dir)["swarm"] is None  # nothing runs before the join

    said = _join(coordinator, swarm["swarm_id"], data_dir)
    assert f"(pid {worker.pid}) joins {swarm['swarm_id']}" in said
    wait_until(lambda: _trains_in(data_dir, swarm["swarm_id"]), 120, what="training in the first swarm")

    other = create_swarm(coordinator)
    said = _join(coordinator, other["swarm_id"], data_dir)
    assert f"It left {swarm['swarm_id']} for it." in said
    wait_until(lambda: _trains_in(data_dir, other["swarm_id"]), 120, what="training in the second swarm")
    assert psutil.Process(daemon.pid).children() == [worker]  # the same warm process, not a new one

    groups = groups_of_tree(daemon.pid)
    assert "stopping" in run_hearth("node", "stop", env=_env(data_dir)).stdout
    assert daemon.wait(60) == 0
    wait_until(lambda: all(group_members(group) == [] for group in groups), 30, what="every process of the node to end")
    log = nodes.log("warm")
    assert leftovers_reported(log) == 0, log
    assert log.count("Registered as warm") == 2


def _env(data_dir) -> dict:
    return {**os.environ, "HEARTH_DATA_DIR": str(data_dir), "HEARTH_CONFIG": str(data_dir.parent / "no-config.toml")}
