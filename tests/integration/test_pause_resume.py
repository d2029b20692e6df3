"""A volunteer pauses a node in a live 2-peer swarm: it stops training within 2 s, counts no samples while
paused, leaves the swarm (its CPU use falls below 5 % of a core and its peer no longer waits for it), and on
resume rejoins and catches up with the swarm's epoch by itself, without a restart."""

import json
import os
import subprocess
import time

import psutil
import pytest

from hearth.processes import tree_cpu_seconds, wait_until
from node.control import request, socket_path
from tests.conftest import hearth_argv

pytestmark = pytest.mark.swarm


def control(nodes, name: str, *command: str) -> dict | str:
    env = {**os.environ, "HEARTH_DATA_DIR": str(nodes.data_dir(name)), "HEARTH_CONFIG": str(nodes.base / "none.toml")}
    result = subprocess.run(hearth_argv("node", *command), capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if "--json" in command else result.stdout


def status(nodes, name: str) -> dict:
    return request(socket_path(nodes.data_dir(name)), "status")  # the socket itself: polling stays cheap


def test_pause_stops_work_and_resume_catches_up(coordinator, swarm, nodes):
    for name in ("erin", "frank"):
        nodes.start(coordinator.url, name, "--swarm", swarm["swarm_id"], "--min-peers", "2")
    wait_until(lambda: "epoch 1 done" in nodes.log("frank"), 180, what="frank's second epoch")

    asked = time.monotonic()
    request(socket_path(nodes.data_dir("frank")), "pause")  # what `hearth node pause` sends, without its start-up
    wait_until(lambda: status(nodes, "frank")["training"]["state"].startswith("paused"), 10, what="the pause")
    assert time.monotonic() - asked < 2.0
    assert "paused by you" in control(nodes, "frank", "status")

    paused = status(nodes, "frank")["training"]
    assert paused["state"] == "paused by you"
    worker = next(child for child in psutil.Process(nodes.processes["frank"].pid).children()
                  if "node.worker" in child.cmdline())  # fmt: skip
    wait_until(lambda: len(worker.children()) <= 1, 15, what="frank to leave the swarm")  # torch_shm_manager may stay
    cpu_before, wall_before = tree_cpu_seconds(worker.pid), time.monotonic()
    erin_epoch = status(nodes, "erin")["training"]["epoch"]
    wait_until(lambda: status(nodes, "erin")["training"]["epoch"] >= erin_epoch + 2, 120, what="erin to go on alone")
    cpu_share = (tree_cpu_seconds(worker.pid) - cpu_before) / (time.monotonic() - wall_before)
    still = status(nodes, "frank")["training"]
    assert still["samples_total"] == paused["samples_total"] and still["epoch"] == paused["epoch"]
    assert cpu_share < 0.05, f"a paused node used {cpu_share:.1%} of a core"

    control(nodes, "frank", "resume")
    wait_until(lambda: status(nodes, "frank")["training"]["epoch"] >= status(nodes, "erin")["training"]["epoch"],
               120, what="frank to catch up with the swarm")  # fmt: skip
    resumed = status(nodes, "frank")["training"]
    assert resumed["state"] == "training" and resumed["state_downloads"] >= 1
