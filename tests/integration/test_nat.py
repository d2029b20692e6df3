"""NAT: a node asks the coordinator to dial it back at start. One node listens where it announces (public);
the other announces an address where nothing listens (127.0.0.2: its peer is bound to 127.0.0.1 only), so
the coordinator's probe is refused, and the node starts again in client mode with relays. The two still
average together and reach epoch 2."""

import json
import socket
from contextlib import closing

import pytest

from hearth.processes import group_members, leftovers_reported, wait_until
from node.control import ControlError, request, socket_path

pytestmark = pytest.mark.swarm

EPOCHS = 2


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_node_runs_in_client_mode_and_still_averages(coordinator, swarm, nodes):
    common = ("--swarm", swarm["swarm_id"], "--min-peers", "2", "--max-epochs", str(EPOCHS))
    nodes.start(coordinator.url, "pia", *common)
    nodes.start(coordinator.url, "nat", *common, "--port", str(free_port()), "--announce-host", "127.0.0.2")

    nat_status = wait_until(lambda: (answer := _status(nodes, "nat")) and "reachability" in answer and answer, 120,
                            what="nat to train")  # fmt: skip
    assert nat_status["reachability"].startswith("client mode (not reachable: could not dial"), nat_status

    for name, process in nodes.processes.items():
        assert process.wait(timeout=240) == 0, nodes.log(name)
        assert group_members(process.pid) == [], f"{name} left hivemind processes behind"
        assert leftovers_reported(nodes.log(name)) == 0, nodes.log(name)
    assert "running in client mode through relays" in nodes.log("nat")

    summaries = {name: json.loads((nodes.data_dir(name) / "last-run.json").read_text()) for name in ("pia", "nat")}
    assert summaries["pia"]["reachability"].startswith("public 127.0.0.1:"), summaries["pia"]
    assert summaries["nat"]["reachability"].startswith("client mode (not reachable:"), summaries["nat"]
    for name, summary in summaries.items():
        assert summary["epoch"] >= EPOCHS, (name, summary)
        assert 2 in summary["group_sizes"].values(), (name, summary["group_sizes"])

    checks = coordinator.get("/api/v1/stats")["reachability"]
    assert checks.get("reachable", 0) >= 1 and checks.get("unreachable", 0) >= 1, checks


def _status(nodes, name: str):
    try:
        return request(socket_path(nodes.data_dir(name)), "status")
    except (ControlError, OSError):
        return None
