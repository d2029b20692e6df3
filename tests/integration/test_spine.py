"""The spine, end to end with real parts: a coordinator process (SQLite, embedded MQTT broker, DHT), two
node processes training in a real hivemind swarm over loopback, and hostile reports sent to the broker."""

import asyncio
import json
import signal
import time

import aiomqtt
import pytest
import torch

from hearth.processes import group_members, leftovers_reported, wait_until
from protocol.envelope import seal
from protocol.messages import ContributionReport, VolunteerRegistration
from protocol.signing import SigningKey
from protocol.topics import report_topic

pytestmark = pytest.mark.swarm

EPOCHS = 4
COBBLESTONE_FLOPS = 4.32e11


def test_two_nodes_train_together_and_are_credited(coordinator, swarm, nodes):
    for name in ("alice", "bob"):
        nodes.start(coordinator.url, name, "--swarm", swarm["swarm_id"], "--min-peers", "2", "--max-epochs", str(EPOCHS))
    for name, process in nodes.processes.items():
        assert process.wait(timeout=240) == 0, nodes.log(name)
        assert group_members(process.pid) == [], f"{name} left hivemind processes behind"
        assert leftovers_reported(nodes.log(name)) == 0, nodes.log(name)

    summaries = {name: json.loads((nodes.data_dir(name) / "last-run.json").read_text()) for name in ("alice", "bob")}
    for summary in summaries.values():
        assert summary["epoch"] == EPOCHS
        assert summary["reports_waiting"] == 0
        averaged = {int(epoch): size for epoch, size in summary["group_sizes"].items()}
        assert all(size == 2 for epoch, size in averaged.items() if epoch >= 1), averaged

    final = [torch.load(nodes.data_dir(name) / "swarms" / swarm["swarm_id"] / "model.pt") for name in ("alice", "bob")]
    assert final[0]["epoch"] == final[1]["epoch"] == EPOCHS
    for key, tensor in final[0]["model"].items():
        assert torch.allclose(tensor, final[1]["model"][key], atol=1e-5, rtol=0), key

    # The coordinator checks work by default: each report waits for its epoch's DHT evidence, then is granted for
    # min(claimed, what the evidence makes plausible). Honest nodes get exactly what they claimed.
    flops = swarm["flops_per_sample"]
    for name, summary in summaries.items():
        volunteer = wait_until(lambda: _volunteer_decided(coordinator, name, summary["reports_acknowledged"]),
                               90, what=f"{name}'s reports to be decided")  # fmt: skip
        decided = {(report["status"], report["reason"]) for report in volunteer["audit"]}
        assert decided == {("granted", None)}, volunteer["audit"]  # nothing cut
        assert sum(report["samples"] for report in volunteer["audit"]) == summary["samples"] > 0
        assert volunteer["credit"] == pytest.approx(summary["samples"] * flops / COBBLESTONE_FLOPS, rel=1e-9)

    board = coordinator.get("/api/v1/leaderboard")["volunteers"]
    assert {row["name"] for row in board} >= {"alice", "bob"}
    assert [row["credit"] for row in board] == sorted((row["credit"] for row in board), reverse=True)


def test_forged_replayed_and_malformed_reports_are_rejected_with_reasons(coordinator, swarm):
    key = SigningKey.generate()
    registration = VolunteerRegistration(name="carol", public_key=key.public_key, time=time.time())
    response = coordinator.api.post("/api/v1/volunteers", content=seal(registration, key))
    assert response.status_code == 201, response.text
    login = (response.json()["broker_username"], response.json()["broker_password"])  # the broker admits only logins
    topic = report_topic(swarm["swarm_id"], key.node_id)

    def report(seq: int, samples: int) -> ContributionReport:
        return ContributionReport(node_id=key.node_id, swarm_id=swarm["swarm_id"], seq=seq, epoch=99, samples=samples,
                                  compute_seconds=1.0, device="cpu", time=time.time())  # fmt: skip

    genuine = seal(report(1, 1000), key)
    messages = [
        seal(report(2, 10**9), SigningKey.generate()),  # forged: not carol's key
        genuine,
        genuine,  # replayed: the same signed bytes again
        b"{this is not json",  # malformed
        seal(report(2, 500), key),  # ingestion goes on after all of the above (a node never skips a number)
    ]
    asyncio.run(_publish(coordinator.info["broker_url"], topic, messages, login))

    def carol():
        volunteer = coordinator.get("/api/v1/volunteers/carol")
        return volunteer if len(volunteer["rejected_messages"]) >= 3 and len(volunteer["audit"]) >= 2 else None

    volunteer = wait_until(carol, 30, what="carol's reports and rejections")
    assert sorted(message["reason"] for message in volunteer["rejected_messages"]) == [
        "bad_signature", "malformed", "replayed",
    ]  # fmt: skip
    # Both genuine reports are in the ledger, once each. No training stands behind them, so the coordinator's work
    # check (on by default) will not grant them: they wait for DHT evidence that never comes.
    assert sorted(report["seq"] for report in volunteer["audit"]) == [1, 2]
    assert all(report["status"] != "granted" for report in volunteer["audit"]) and volunteer["credit"] == 0
    stats = coordinator.get("/api/v1/stats")
    assert all(stats["ingest"].get(reason, 0) >= 1 for reason in ("bad_signature", "replayed", "malformed"))


async def _publish(broker_url: str, topic: str, payloads: list[bytes], login: tuple[str, str]) -> None:
    host, port = broker_url.removeprefix("mqtt://").split(":")
    async with aiomqtt.Client(host, int(port), username=login[0], password=login[1]) as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)


def _volunteer_decided(coordinator, name: str, count: int):
    volunteer = coordinator.get(f"/api/v1/volunteers/{name}")
    decided = [report for report in volunteer["audit"] if report["status"] != "pending"]
    return volunteer if len(decided) >= count and volunteer["pending_reports"] == 0 else None


def test_ctrl_c_stops_a_training_node_gracefully_and_leaves_nothing_behind(coordinator, swarm, nodes):
    process = nodes.start(coordinator.url, "dave", "--swarm", swarm["swarm_id"])
    wait_until(lambda: "epoch 0 done" in nodes.log("dave"), 120, what="dave's first epoch")
    process.send_signal(signal.SIGINT)  # what Ctrl+C in a terminal delivers
    assert process.wait(timeout=60) == 0, nodes.log("dave")
    assert group_members(process.pid) == []
    assert leftovers_reported(nodes.log("dave")) == 0, nodes.log("dave")
    assert "Stopped at epoch" in nodes.log("dave")
    wait_until(lambda: _offline(coordinator, "dave"), 30, what="dave's presence to turn offline")
    wait_until(lambda: coordinator.get("/api/v1/volunteers/dave")["credit"] > 0, 90, what="dave's work to be credited")


def _offline(coordinator, name: str):
    volunteer = coordinator.get(f"/api/v1/volunteers/{name}")
    return volunteer if volunteer["nodes"] and not any(node["online"] for node in volunteer["nodes"]) else None
