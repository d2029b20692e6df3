"""Exactly-once ingestion under faults, with a real coordinator process on a real Mosquitto: simulated nodes
deliver signed reports the way real ones do (durable outbox, QoS 1, re-sent until a receipt covers them); the
coordinator is killed with SIGKILL mid-stream and restarted on the same data directory; at the end the ledger
holds exactly the published (node, seq) set, each once, and the totals equal their sum. Also with ingest
workers on MQTT 5 shared subscriptions."""

import asyncio
import os
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import aiomqtt
import httpx
import pytest

from node.outbox import Outbox
from protocol.envelope import open_envelope, seal
from protocol.messages import ContributionReport, VolunteerRegistration
from protocol.signing import SigningKey
from protocol.topics import receipt_topic, report_topic
from scripts.mosquitto import INSTALL_HINT, Mosquitto, mosquitto_binary
from tests.conftest import CoordinatorProcess

SWARM = "spirals"  # the coordinator's default swarm
RESEND_SECONDS = 3.0  # a real node waits 20 s before sending an unreceipted report again
NODES, REPORTS_PER_NODE = 6, 500  # enough that the kill lands mid-stream at a few thousand reports/s


@pytest.fixture
def mosquitto(tmp_path):
    if mosquitto_binary() is None:
        message = f"no mosquitto binary; {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with Mosquitto(work_dir=tmp_path / "mosquitto") as broker:
        yield broker


class SimulatedNode:
    """The delivery half of a node (node/reporter.py): reports wait in the durable outbox until a receipt
    covers them, and whatever has no receipt is sent again every RESEND_SECONDS."""

    def __init__(self, key: SigningKey, outbox_path: Path, reports: int):
        self.key, self.outbox = key, Outbox(outbox_path)
        self.topic = report_topic(SWARM, key.node_id)
        self.published: dict[int, int] = {}  # seq → samples
        for _ in range(reports):
            seq = self.outbox.next_seq()
            report = ContributionReport(node_id=key.node_id, swarm_id=SWARM, seq=seq, epoch=seq, samples=10 + seq,
                                        compute_seconds=1.0, device="cpu", time=time.time())  # fmt: skip
            self.outbox.add(seq, self.topic, seal(report, key))
            self.published[seq] = report.samples
        self.emptied = asyncio.Event()

    async def deliver(self, port: int) -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"sim-{self.key.node_id}") as client:
            await client.subscribe(receipt_topic(SWARM, self.key.node_id), qos=1)
            listener = asyncio.create_task(self._receipts(client))
            try:
                while len(self.outbox):
                    for _, topic, payload in self.outbox.pending():
                        await client.publish(topic, payload, qos=1)
                    try:
                        await asyncio.wait_for(self.emptied.wait(), RESEND_SECONDS)
                    except asyncio.TimeoutError:
                        pass  # no receipt for some: send them again
            finally:
                listener.cancel()

    async def _receipts(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            # receipts are sealed by the coordinator (tests/coordinator/test_tokens.py checks the seal)
            self.outbox.acknowledge_through(open_envelope(message.payload).fields["last_seq"])
            if len(self.outbox) == 0:
                self.emptied.set()

    @property
    def acknowledged(self) -> int:
        return len(self.published) - len(self.outbox)


def register(url: str, key: SigningKey, name: str) -> None:
    registration = VolunteerRegistration(name=name, public_key=key.public_key, time=time.time())
    response = httpx.post(f"{url}/api/v1/volunteers", content=seal(registration, key),
                          headers={"content-type": "application/json"}, timeout=30)  # fmt: skip
    assert response.status_code == 201, response.text


def start_coordinator(data_dir: Path, broker_url: str, workers: int) -> CoordinatorProcess:
    (data_dir / "ready.json").unlink(missing_ok=True)  # a killed coordinator leaves its ready file behind
    # --no-verify-work: the simulated nodes train nothing (the default work check would hold every report pending)
    return CoordinatorProcess(data_dir, "--broker", broker_url, "--ingest-workers", str(workers), "--no-verify-work")


def kill_9(coordinator: CoordinatorProcess) -> None:
    os.killpg(coordinator.process.pid, signal.SIGKILL)  # the whole group: ingest workers, DHT processes
    coordinator.process.wait(30)
    coordinator.api.close()


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def assert_ledger_holds_exactly(data_dir: Path, nodes: list[SimulatedNode]) -> None:
    with sqlite3.connect(f"file:{data_dir / 'ledger.sqlite3'}?mode=ro", uri=True) as conn:
        rows = Counter(conn.execute("SELECT node_id, seq FROM reports WHERE status = 'granted'").fetchall())
        samples = conn.execute("SELECT COALESCE(SUM(samples), 0), COALESCE(SUM(reports), 0) FROM node_totals").fetchone()
        volunteer_samples = conn.execute("SELECT COALESCE(SUM(samples), 0) FROM volunteer_totals").fetchone()[0]
        grants = conn.execute("SELECT COUNT(*), COUNT(DISTINCT report_id) FROM grants").fetchone()
    published = {(node.key.node_id, seq) for node in nodes for seq in node.published}
    assert set(rows) == published, f"missing {len(published - set(rows))}, unexpected {len(set(rows) - published)}"
    assert max(rows.values()) == 1, "a report was granted twice"
    total_samples = sum(sum(node.published.values()) for node in nodes)
    assert samples == (total_samples, len(published))
    assert volunteer_samples == total_samples
    assert grants == (len(published), len(published))


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "two-ingest-workers"])
def test_kill_9_mid_stream_then_restart_ingests_every_report_exactly_once(tmp_path, mosquitto, workers):
    data_dir = tmp_path / "coordinator"
    coordinator = start_coordinator(data_dir, mosquitto.url, workers)
    try:
        keys = [SigningKey.generate() for _ in range(NODES)]
        for number, key in enumerate(keys):
            register(coordinator.url, key, f"crash-{number}")
        nodes = [SimulatedNode(key, tmp_path / f"outbox-{i}.sqlite3", REPORTS_PER_NODE) for i, key in enumerate(keys)]
        total = NODES * REPORTS_PER_NODE

        async def scenario() -> None:
            nonlocal coordinator
            deliveries = [asyncio.create_task(node.deliver(mosquitto.port)) for node in nodes]
            try:
                await wait_for(lambda: sum(n.acknowledged for n in nodes) >= total // 10, 120, "a tenth receipted")
                assert sum(n.acknowledged for n in nodes) < total, "the stream ended before the kill"
                kill_9(coordinator)
                coordinator = await asyncio.to_thread(start_coordinator, data_dir, mosquitto.url, workers)
                await asyncio.wait_for(asyncio.gather(*deliveries), 240)
            finally:
                for task in deliveries:
                    task.cancel()

        asyncio.run(scenario())
    finally:
        coordinator.stop()
    assert_ledger_holds_exactly(data_dir, nodes)


def test_two_ingest_workers_share_the_subscription_and_ingest_each_report_once(tmp_path, mosquitto):
    data_dir = tmp_path / "coordinator"
    coordinator = start_coordinator(data_dir, mosquitto.url, workers=2)
    try:
        keys = [SigningKey.generate() for _ in range(4)]
        for number, key in enumerate(keys):
            register(coordinator.url, key, f"shared-{number}")
        nodes = [SimulatedNode(key, tmp_path / f"outbox-{i}.sqlite3", 100) for i, key in enumerate(keys)]

        async def deliver_all() -> None:
            await asyncio.wait_for(asyncio.gather(*(node.deliver(mosquitto.port) for node in nodes)), 180)

        asyncio.run(deliver_all())
        counters = coordinator.get("/api/v1/stats")["ingest"]
    finally:
        coordinator.stop()
    assert counters["worker_0_messages"] > 0 and counters["worker_1_messages"] > 0, counters  # both took a share
    assert counters["accepted"] == 400, counters
    assert_ledger_holds_exactly(data_dir, nodes)
