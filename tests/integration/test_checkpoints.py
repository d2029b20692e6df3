"""Swarm checkpoints end to end: a real coordinator process takes checkpoints of a real node's training every
2 s (keeping 2), serves them from the API, and after every node has left, the next node to join resumes from
the latest checkpoint instead of from scratch."""

import hashlib
import json
import re

import httpx
import pytest
import torch

from hearth.processes import stop_group, wait_until
from hearth.tasks import load_task
from node.control import request, socket_path
from tests.conftest import CoordinatorProcess, run_hearth

pytestmark = pytest.mark.swarm

SWARM_ID = "ckpt"
KEEP = 2


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    process = CoordinatorProcess(tmp_path_factory.mktemp("checkpointing") / "coordinator", "--checkpoint-every", "2", "--keep-checkpoints", str(KEEP))
    try:
        yield process
    finally:
        process.stop()


def checkpoints(coordinator) -> list[dict]:
    return coordinator.get(f"/api/v1/swarms/{SWARM_ID}/checkpoints")["checkpoints"]


def saved_total(coordinator) -> float:
    text = coordinator.api.get("/metrics").text
    return float(re.search(r"^hearth_checkpoints_saved_total (\S+)$", text, re.M).group(1))


def epoch_of(nodes, name: str) -> int:
    return request(socket_path(nodes.data_dir(name)), "status")["training"]["epoch"]  # at once, unlike the DHT


def test_checkpoints_are_served_and_a_node_joining_an_empty_swarm_resumes_from_the_latest(coordinator, nodes):
    created = run_hearth("swarm", "create", SWARM_ID, "--task", "spirals", "--target-batch-size", "16384",
                         "--matchmaking-time", "1", "--coordinator", coordinator.url,
                         "--token-file", str(coordinator.data_dir / "operator-token"), timeout=120)  # fmt: skip
    assert created.returncode == 0, created.stderr
    nodes.start(coordinator.url, "alice", "--swarm", SWARM_ID)

    # Periodic checkpoints while alice trains, pruned to the last KEEP on disk.
    wait_until(lambda: saved_total(coordinator) > KEEP and checkpoints(coordinator)[0]["epoch"] >= 3, 120,
               what="three checkpoints")  # fmt: skip
    listing = checkpoints(coordinator)
    assert len(listing) == KEEP and listing[0]["epoch"] > listing[1]["epoch"]
    on_disk = sorted(path.name for path in (coordinator.data_dir / "checkpoints" / SWARM_ID).iterdir())
    assert on_disk == sorted(f"epoch-{c['epoch']}.pt{ext}" for c in listing for ext in ("", ".sha256", ".eval.json"))
    assert all(0.0 <= c["evaluation"]["accuracy"] <= 1.0 and c["evaluation"]["loss"] > 0 for c in listing)

    latest = coordinator.api.get(f"/api/v1/swarms/{SWARM_ID}/checkpoints/latest")
    assert latest.status_code == 200
    epoch = int(latest.headers["x-checkpoint-epoch"])
    digest = hashlib.sha256(latest.content).hexdigest()
    assert digest == latest.headers["x-checkpoint-sha256"] == {c["epoch"]: c["sha256"] for c in listing}[epoch]
    checkpoint = torch.load(_saved(coordinator, latest.content), weights_only=True)
    assert checkpoint["epoch"] == epoch and checkpoint["swarm_id"] == SWARM_ID
    initial = load_task("spirals").build_model().state_dict()
    assert any(not torch.equal(checkpoint["model"][name], initial[name]) for name in checkpoint["parameter_names"])

    # Every node leaves: alice stops once the newest checkpoint holds her current epoch (epochs last seconds,
    # a stop takes effect after the current batch).
    wait_until(lambda: checkpoints(coordinator)[0]["epoch"] == epoch_of(nodes, "alice"), 60,
               what="a checkpoint of alice's current epoch")  # fmt: skip
    assert stop_group(nodes.processes["alice"], grace=30) == (0, 0), nodes.log("alice")
    newest = checkpoints(coordinator)[0]
    alice = torch.load(nodes.data_dir("alice") / "swarms" / SWARM_ID / "model.pt", weights_only=True)
    saved = torch.load(_saved(coordinator, coordinator.api.get(newest["url"]).content), weights_only=True)
    if alice["epoch"] == newest["epoch"]:  # she did not finish another epoch between the check and her stop
        for name in saved["parameter_names"]:
            assert torch.equal(saved["model"][name], alice["model"][name]), name
    assert alice["epoch"] >= newest["epoch"]

    # The next node to join starts at the checkpoint's epoch with its parameters.
    stop_at = newest["epoch"] + 1
    bob = nodes.start(coordinator.url, "bob", "--swarm", SWARM_ID, "--max-epochs", str(stop_at))
    assert bob.wait(timeout=120) == 0, nodes.log("bob")
    assert (f"resumed from the coordinator's checkpoint of epoch {newest['epoch']} (sha256 {newest['sha256']})"
            in nodes.log("bob")), nodes.log("bob")  # fmt: skip
    summary = json.loads((nodes.data_dir("bob") / "last-run.json").read_text())
    assert summary["epoch"] == stop_at
    assert [int(e) for e in summary["group_sizes"]] == [newest["epoch"]]  # its one epoch: the checkpoint's


def _saved(coordinator, content: bytes):
    path = coordinator.data_dir.parent / "downloaded.pt"
    path.write_bytes(content)
    return path


def test_checkpoint_errors_use_the_api_error_shape(coordinator):
    response = coordinator.api.get("/api/v1/swarms/no-such-swarm/checkpoints")
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_swarm"
    response = coordinator.api.get("/api/v1/swarms/spirals/checkpoints/latest")
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_checkpoint"
    assert httpx.get(coordinator.url + "/api/v1/swarms/spirals/checkpoints").json()["checkpoints"] == []
