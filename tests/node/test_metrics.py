"""Prometheus /metrics: the collector over a status source, the real HTTP server on 127.0.0.1, and the
controller's status feeding it."""

import threading

import httpx
import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.config import NodeConfig, PolicyConfig
from node.controller import NodeController
from node.credit import CreditTracker
from node.metrics import HOST, MetricsError, MetricsServer, NodeCollector
from node.outbox import Outbox
from node.policy import Policy
from node.settings import load_settings

LABELS = {"swarm": "spirals", "device": "cuda"}


def fake_status(**overrides) -> dict:
    status = {
        "swarm": "spirals", "device": "cuda", "threads": 2, "paused": False, "pause_reason": None,
        "training": {"state": "training", "epoch": 7, "samples_per_second": 3600.5, "last_group_size": 3,
                     "samples_total": 123456, "state_downloads": 2, "first_step_at": 1.0},
        "reporting": {"connected": True, "reports_sent": 6, "reports_acknowledged": 5, "reports_waiting": 1},
        "credit": {"granted": 12.5, "granted_as_of": 1.0, "pending_estimate": 0.25},
    }  # fmt: skip
    status.update(overrides)
    return status


def samples(text: str) -> dict[str, tuple[dict, float]]:
    """Sample name → (labels, value), parsed by prometheus_client's own parser."""
    return {sample.name: (sample.labels, sample.value)
            for family in text_string_to_metric_families(text) for sample in family.samples}  # fmt: skip


def scrape(source) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(source))
    return generate_latest(registry).decode()


def test_collector_reads_the_status_at_scrape_time():
    status = fake_status()
    text = scrape(lambda: status)
    found = samples(text)
    expected = {
        "hearth_node_epoch": 7, "hearth_node_samples_total": 123456, "hearth_node_samples_per_second": 3600.5,
        "hearth_node_paused": 0, "hearth_node_last_group_size": 3, "hearth_node_reports_waiting": 1,
        "hearth_node_reports_acknowledged_total": 5, "hearth_node_credit_granted": 12.5,
        "hearth_node_credit_pending_estimate": 0.25, "hearth_node_state_downloads_total": 2,
        "hearth_node_digest_reloads_total": 0,
    }  # fmt: skip
    assert {name: value for name, (labels, value) in found.items()} == expected
    for name, (labels, _) in found.items():
        assert {key: labels[key] for key in LABELS} == LABELS, name
    assert "# TYPE hearth_node_samples_total counter" in text and "# TYPE hearth_node_epoch gauge" in text

    status.update(paused=True, pause_reason="paused by you", credit={"granted": None, "pending_estimate": 0.0})
    status["training"]["samples_total"] = 130000
    found = samples(scrape(lambda: status))  # no state of its own: the next scrape sees the change
    assert found["hearth_node_paused"] == ({**LABELS, "reason": "paused by you"}, 1.0)
    assert found["hearth_node_samples_total"][1] == 130000
    assert "hearth_node_credit_granted" not in found  # not fetched yet: no sample rather than a false 0


def test_server_answers_on_loopback_only_and_stops_cleanly():
    server = MetricsServer(lambda: fake_status(), port=0)
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        response = httpx.get(server.url, timeout=5)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        assert samples(response.text)["hearth_node_epoch"][1] == 7
        listening = [c for c in psutil.Process().net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port]  # fmt: skip
        assert [c.laddr.ip for c in listening] == [HOST] == ["127.0.0.1"]
        with pytest.raises(MetricsError, match="choose another --metrics-port"):
            MetricsServer(lambda: fake_status(), port=server.port)  # taken: one sentence, not a traceback
    finally:
        server.stop()
    assert not server._thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url, timeout=5)
    assert MetricsServer.serve(None, fake_status) is None  # off by default


def test_metrics_port_setting_is_validated_and_read_from_env_and_flags(tmp_path):
    assert NodeConfig("http://c").metrics_port is None
    for bad in (-1, 65536):
        with pytest.raises(ValueError, match="metrics_port must be between 0 and 65535"):
            NodeConfig("http://c", metrics_port=bad)
    environ = {"HEARTH_METRICS_PORT": "0"}
    settings = load_settings({"coordinator_url": "http://c"}, environ=environ, path=tmp_path / "none.toml")
    assert settings.config().metrics_port == 0
    flagged = load_settings({"coordinator_url": "http://c", "metrics_port": 9400}, environ=environ,
                            path=tmp_path / "none.toml")  # fmt: skip
    assert flagged.config().metrics_port == 9400


def test_controller_status_feeds_metrics_and_status(tmp_path):
    config = NodeConfig("http://127.0.0.1:9", data_dir=tmp_path, threads=1)
    controller = NodeController(config, Policy.from_config(PolicyConfig()), "cpu", threading.Event(), "spirals")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    credit = CreditTracker(config.coordinator_url, "ada", outbox, "spirals", 1000)
    controller.attach(None, None, credit)
    server = MetricsServer(controller.status, port=0)
    controller.metrics_url = server.url
    try:
        status = controller.status()
        assert status["credit"]["granted"] is None and status["credit"]["pending_estimate"] == 0.0
        assert status["metrics_url"] == server.url and status["paused"] is False
        controller.handlers()["pause"]({})
        assert controller.gate() == "paused by you"
        status = controller.status()
        assert status["paused"] is True and status["pause_reason"] == "paused by you"
        found = samples(httpx.get(server.url, timeout=5).text)
        assert found["hearth_node_paused"] == ({"swarm": "spirals", "device": "cpu", "reason": "paused by you"}, 1.0)
        assert found["hearth_node_credit_pending_estimate"][1] == 0.0
    finally:
        server.stop()
        credit.stop()
        outbox.close()
