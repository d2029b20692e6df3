"""Prometheus /metrics: a coordinator started in-process (real SQLite, real embedded broker, real HTTP) counts
a granted and a rejected report, times the grant, and serves gauges read at scrape time from the ledger and
the DHT monitor's latest reading (none yet, or one per swarm)."""

import asyncio
import types

import aiomqtt
import httpx
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from coordinator.app import Coordinator
from coordinator.config import CoordinatorConfig
from coordinator.metrics import CoordinatorMetrics, rejection_reasons
from coordinator.monitor import ProgressSnapshot
from hearth.progress import PeerProgress, SwarmProgress
from protocol.envelope import seal
from protocol.signing import SigningKey
from protocol.topics import report_topic, status_topic
from tests.coordinator.helpers import broker_login, registration, report, status, wait_for


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, (sorted label items)): value} of a text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def test_metrics_count_reports_over_http(tmp_path):
    async def scenario():
        config = CoordinatorConfig(data_dir=tmp_path / "data", port=0, broker_port=0, enable_monitor=False)
        coordinator = Coordinator(config)
        await coordinator.start()
        try:
            async with httpx.AsyncClient(base_url=coordinator.url, timeout=10) as api:
                key, stranger = SigningKey.generate(), SigningKey.generate()
                registered = await api.post("/api/v1/volunteers", content=registration(key, "dora"))
                assert registered.status_code == 201
                host, port = coordinator.broker_url.removeprefix("mqtt://").split(":")
                topic = report_topic("spirals", key.node_id)
                async with aiomqtt.Client(host, int(port), **broker_login(registered.json())) as client:
                    await client.publish(topic, seal(report(key, seq=1, samples=100), key), qos=1)
                    await client.publish(topic, seal(report(key, seq=2), stranger), qos=1)  # signed by someone else
                    await client.publish(status_topic("spirals", key.node_id), seal(status(key), key), qos=1)

                scraped = {}

                async def settled() -> bool:
                    response = await api.get("/metrics")
                    assert response.status_code == 200 and response.headers["content-type"] == CONTENT_TYPE_LATEST
                    scraped.update(samples(response.text))
                    return (scraped[("hearth_reports_received_total", ())] == 2
                            and scraped[("hearth_ingest_latency_seconds_count", ())] == 1
                            and scraped[("hearth_nodes_online", ())] == 1)  # fmt: skip

                await wait_for(settled, what="/metrics to show both reports, the grant's latency and the node online")
        finally:
            await coordinator.stop()
        return scraped

    scraped = asyncio.run(scenario())
    assert scraped[("hearth_reports_accepted_total", ())] == 1
    rejected = {dict(labels)["reason"]: value for (name, labels), value in scraped.items()
                if name == "hearth_reports_rejected_total"}  # fmt: skip
    assert rejected == {reason: float(reason == "bad_signature") for reason in rejection_reasons()}
    assert {"malformed", "oversized", "replayed", "unknown_sender", "topic_mismatch", "unknown_swarm"} <= set(rejected)
    assert 0 < scraped[("hearth_ingest_latency_seconds_sum", ())] < 10
    assert scraped[("hearth_ingest_latency_seconds_bucket", (("le", "10.0"),))] == 1
    assert not any(name.startswith("hearth_swarm_") for name, _ in scraped)  # no monitor: no swarm samples


def test_swarm_gauges_follow_the_monitor():
    metrics = CoordinatorMetrics()
    monitor = types.SimpleNamespace(progress={})
    idle = samples(metrics.exposition(None, monitor).decode())
    assert not any(name.startswith(("hearth_swarm_", "hearth_nodes_online")) for name, _ in idle)

    peers = [PeerProgress(f"peer{i}", 7, 10, 100.0 + i, 0.0, False) for i in range(3)]
    monitor.progress["spirals"] = ProgressSnapshot(SwarmProgress(epoch=7, peers=peers), 0.0)
    monitor.progress["empty"] = ProgressSnapshot(SwarmProgress(epoch=0, peers=[]), 0.0)
    live = samples(metrics.exposition(4, monitor).decode())
    assert live[("hearth_nodes_online", ())] == 4
    assert live[("hearth_swarm_epoch", (("swarm", "spirals"),))] == 7
    assert live[("hearth_swarm_samples_per_second", (("swarm", "spirals"),))] == 303.0
    assert live[("hearth_swarm_peers", (("swarm", "spirals"),))] == 3
    assert live[("hearth_swarm_peers", (("swarm", "empty"),))] == 0
    assert CoordinatorMetrics().registry is not metrics.registry  # one registry per coordinator
