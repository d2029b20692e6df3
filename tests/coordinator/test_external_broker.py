"""A real coordinator process on a real Mosquitto (`--broker`): signed reports in, exactly-once ledger rows and a
retained receipt out."""

import asyncio
import time

import aiomqtt
import httpx
import pytest

from hearth.processes import wait_until
from protocol.envelope import seal, verify_envelope
from protocol.messages import ContributionReport, Receipt, VolunteerRegistration
from protocol.signing import SigningKey
from protocol.topics import receipt_topic, report_topic
from scripts.mosquitto import INSTALL_HINT, Mosquitto, mosquitto_binary
from tests.conftest import CoordinatorProcess

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason=f"no mosquitto binary; {INSTALL_HINT}")

SWARM = "spirals"  # the coordinator's default swarm


@pytest.fixture
def mosquitto(tmp_path):
    with Mosquitto(work_dir=tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def coordinator_on_mosquitto(tmp_path, mosquitto):
    # --no-verify-work: these reports stand for no training (the default work check would hold them pending)
    process = CoordinatorProcess(tmp_path / "coordinator", "--broker", mosquitto.url, "--no-verify-work")
    try:
        yield process
    finally:
        process.stop()


def report(key: SigningKey, seq: int) -> bytes:
    return seal(ContributionReport(node_id=key.node_id, swarm_id=SWARM, seq=seq, epoch=seq, samples=100 * seq,
                                   compute_seconds=1.0, device="cpu", time=time.time()), key)  # fmt: skip


async def publish_and_await_receipt(port: int, key: SigningKey, payloads: list[bytes], coordinator_key: str,
                                    timeout: float = 30) -> Receipt:  # fmt: skip
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(receipt_topic(SWARM, key.node_id), qos=1)
        for payload in payloads:
            await client.publish(report_topic(SWARM, key.node_id), payload, qos=1)
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                receipt = verify_envelope(message.payload, Receipt, lambda _: coordinator_key)  # sealed by it
                if receipt.last_seq >= 3:
                    return receipt


def test_reports_through_mosquitto_are_persisted_once_with_a_receipt(coordinator_on_mosquitto, mosquitto):
    coordinator = coordinator_on_mosquitto
    assert coordinator.info["broker_url"] == mosquitto.url
    key = SigningKey.generate()
    registration = VolunteerRegistration(name="mosquitto-volunteer", public_key=key.public_key, time=time.time())
    response = httpx.post(f"{coordinator.url}/api/v1/volunteers", content=seal(registration, key),
                          headers={"content-type": "application/json"}, timeout=10)  # fmt: skip
    assert response.status_code == 201, response.text

    first, second, third = (report(key, seq) for seq in (1, 2, 3))
    coordinator_key = coordinator.get("/api/v1/coordinator-key")["public_key"]
    receipt = asyncio.run(publish_and_await_receipt(mosquitto.port, key, [first, second, second, third], coordinator_key))
    assert receipt.node_id == key.node_id and receipt.last_seq == 3

    def ledger_holds_three():
        detail = coordinator.get("/api/v1/volunteers/mosquitto-volunteer")
        return detail["reports"] == 3 and detail

    detail = wait_until(ledger_holds_three, 15, what="three reports in the ledger")
    granted = sorted(row["seq"] for row in detail["audit"] if row["status"] == "granted")
    assert granted == [1, 2, 3]
    assert detail["samples"] == 600
    assert [m["reason"] for m in detail["rejected_messages"]] == ["replayed"]  # the duplicate, recorded once
