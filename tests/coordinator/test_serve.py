"""`hearth coordinator serve` as a real process: ready file, API, a report over its embedded broker, the
operator and leaderboard commands, graceful shutdown leaving no process behind, one-line CLI errors."""

import asyncio
import json
import os
import signal
import subprocess

import aiomqtt
import httpx
import psutil
import pytest

from protocol.envelope import seal
from protocol.messages import SwarmManifest
from protocol.signing import SigningKey
from protocol.topics import report_topic
from hearth.processes import wait_until
from tests.conftest import hearth_argv
from tests.conftest import run_hearth as hearth
from tests.coordinator.helpers import broker_login, registration, report

START_TIMEOUT = 90


@pytest.fixture
def served(tmp_path):
    data_dir, ready = tmp_path / "data", tmp_path / "ready.json"
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        # --no-verify-work: the report below stands for no training, so the (default) work check would never grant it
        hearth_argv("coordinator", "serve", "--data-dir", str(data_dir), "--port", "0", "--broker-port", "0",
                    "--ready-file", str(ready), "--no-verify-work"),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        def started():
            if process.poll() is not None:
                raise AssertionError(f"serve exited: {(tmp_path / 'serve.log').read_text()}")
            return ready.exists() and json.loads(ready.read_text())

        info = wait_until(started, START_TIMEOUT, what="the ready file")
        yield process, info, data_dir, tmp_path / "serve.log"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()


def test_serve_end_to_end(served):
    process, info, data_dir, log_path = served
    assert set(info) >= {"url", "broker_url", "initial_peers", "data_dir"}
    assert info["broker_url"].startswith("mqtt://127.0.0.1:") and info["initial_peers"][0].startswith("/ip4/127.0.0.1/tcp/")
    assert (data_dir / "operator-token").stat().st_mode & 0o777 == 0o600
    api = httpx.Client(base_url=info["url"], timeout=10)
    assert api.get("/healthz").json() == {"status": "ok"}
    manifest = SwarmManifest.model_validate_json(api.get("/api/v1/swarms/spirals").content)
    assert manifest.initial_peers == info["initial_peers"] and manifest.broker_url == info["broker_url"]
    assert manifest.run_id.startswith("hearth-spirals-") and manifest.flops_per_sample > 0

    key = SigningKey.generate()
    registered = api.post("/api/v1/volunteers", content=registration(key, "carol", "blue"))
    assert registered.status_code == 201

    async def publish() -> None:
        host, port = info["broker_url"].removeprefix("mqtt://").split(":")
        with pytest.raises(aiomqtt.MqttError):  # the embedded broker admits only logins by default
            async with aiomqtt.Client(host, int(port), timeout=10):
                pass
        async with aiomqtt.Client(host, int(port), **broker_login(registered.json())) as client:
            await client.publish(report_topic("spirals", key.node_id), seal(report(key, seq=1, samples=432), key), qos=1)

    asyncio.run(publish())
    expected = 432 * manifest.flops_per_sample / 4.32e11
    board = wait_until(lambda: (b := api.get("/api/v1/leaderboard").json())["volunteers"][0]["credit"] > 0 and b,
                       20, what="the report to be credited")  # fmt: skip
    assert board["volunteers"][0]["name"] == "carol" and board["volunteers"][0]["credit"] == expected
    assert api.get("/api/v1/stats").json()["ingest"]["accepted"] == 1

    shown = hearth("leaderboard", "--coordinator", info["url"])
    assert shown.returncode == 0 and "carol" in shown.stdout, shown.stderr
    token_file = str(data_dir / "operator-token")
    made = hearth("swarm", "create", "tiny", "--task", "spirals", "--target-batch-size", "1024",
                  "--coordinator", info["url"], "--token-file", token_file)  # fmt: skip
    assert made.returncode == 0 and "tiny" in made.stdout, made.stderr
    assert SwarmManifest.model_validate_json(api.get("/api/v1/swarms/tiny").content).hyperparameters.target_batch_size == 1024
    refused = hearth("swarm", "create", "other", "--coordinator", info["url"], "--token", "wrong")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr and "operator token" in refused.stderr
    listed = hearth("swarm", "list", "--coordinator", info["url"])
    assert listed.returncode == 0 and "tiny" in listed.stdout and "spirals" in listed.stdout

    group = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
    assert len(group) >= 3  # the coordinator, its DHT process and p2pd
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl+C in a terminal does: the whole foreground group
    assert process.wait(30) == 0, log_path.read_text()
    wait_until(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                               for pid in group), 10, what="every process of the group to exit")  # fmt: skip
    assert not (data_dir.parent / "ready.json").exists()
    assert "Traceback" not in log_path.read_text()


def test_cli_errors_are_one_line(tmp_path):
    unreachable = hearth("coordinator", "serve", "--data-dir", str(tmp_path), "--port", "0",
                         "--broker", "mqtt://127.0.0.1:9")  # fmt: skip
    assert unreachable.returncode != 0 and "Traceback" not in unreachable.stderr
    assert "cannot reach the MQTT broker at mqtt://127.0.0.1:9" in unreachable.stderr
    bad_port = hearth("coordinator", "serve", "--data-dir", str(tmp_path), "--port", "70000")
    assert bad_port.returncode == 2 and "--port must be between 0 and 65535" in bad_port.stderr
    no_server = hearth("leaderboard", "--coordinator", "http://127.0.0.1:9")
    assert no_server.returncode == 1 and "cannot reach the coordinator" in no_server.stderr
    assert "Traceback" not in bad_port.stderr + no_server.stderr

