"""Shared fixtures: real coordinator processes, real node processes, and clean-up of everything they start."""

import itertools
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from hearth.processes import python_argv, spawn_group, stop_group, stop_groups, wait_until

COORDINATOR_START_TIMEOUT = 120


def hearth_argv(*args: str) -> list[str]:
    return python_argv("hearth", *args)


def run_hearth(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run the `hearth` command to completion, capturing its output as text."""
    return subprocess.run(hearth_argv(*args), capture_output=True, text=True, timeout=timeout, **kwargs)


class CoordinatorProcess:
    def __init__(self, data_dir: Path, *extra_args: str):
        self.data_dir = data_dir
        self.ready_file = data_dir / "ready.json"
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        broker = () if "--broker" in extra_args else ("--broker-port", "0")  # else the embedded broker
        # Every test client registers from 127.0.0.1, far faster than a person would: the strict account budget
        # (coordinator/ratelimit.py) is off unless a test sets it.
        account = () if "--account-rate-limit" in extra_args else ("--account-rate-limit", "0")
        argv = hearth_argv("coordinator", "serve", "--data-dir", str(data_dir), "--port", "0", *broker, *account, *extra_args,
                           "--dht-port", "0", "--ready-file", str(self.ready_file))  # fmt: skip
        self.process = spawn_group(argv, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)
        self.info = wait_until(self._ready, COORDINATOR_START_TIMEOUT, what="the coordinator to start")
        self.url = self.info["url"]
        self.api = httpx.Client(base_url=self.url, timeout=10)

    def _ready(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"coordinator exited with {self.process.returncode}:\n{self.log_path.read_text()}")
        return self.ready_file.exists() and json.loads(self.ready_file.read_text())

    def get(self, path: str, **params) -> dict:
        response = self.api.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def stop(self) -> int:
        self.api.close()
        return stop_group(self.process)[1]


@pytest.fixture(scope="session")
def coordinator(tmp_path_factory):
    """A real `hearth coordinator serve` process: SQLite ledger, embedded broker, DHT bootstrap peer, API."""
    process = CoordinatorProcess(tmp_path_factory.mktemp("coordinator") / "data")
    try:
        yield process
    finally:
        process.stop()


class NodeProcesses:
    """Starts `hearth join` processes and guarantees their whole process groups end with the test."""

    def __init__(self, base: Path):
        self.base, self.processes = base, {}

    def start(self, url: str, name: str, *args: str) -> subprocess.Popen:
        data_dir = self.base / name
        log = (self.base / f"{name}.log").open("w")
        argv = hearth_argv("-v", "join", url, "--name", name, "--data-dir", str(data_dir), "--threads", "1",
                           "--view", "log", *args)  # fmt: skip
        self.processes[name] = spawn_group(argv, stdout=log, stderr=subprocess.STDOUT)
        return self.processes[name]

    def start_daemon(self, name: str) -> subprocess.Popen:
        """`hearth node start` with no coordinator saved: a node that waits for `hearth join`."""
        env = {**os.environ, "HEARTH_CONFIG": str(self.base / "no-config.toml"), "HEARTH_DATA_DIR": str(self.base / name),
               "HEARTH_THREADS": "1", "HEARTH_VIEW": "log"}  # fmt: skip
        log = (self.base / f"{name}.log").open("w")
        self.processes[name] = spawn_group(hearth_argv("-v", "node", "start"), stdout=log, stderr=subprocess.STDOUT, env=env)
        return self.processes[name]

    def data_dir(self, name: str) -> Path:
        return self.base / name

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text()

    def stop_all(self) -> None:
        stop_groups(list(self.processes.values()), grace=20)


@pytest.fixture
def nodes(tmp_path):
    processes = NodeProcesses(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


TEST_SWARM = "itest"
_swarm_count = itertools.count(1)


@pytest.fixture
def swarm(coordinator):
    """A fresh small swarm (short epochs) per test, defined through the operator CLI: tests never see each
    other's peers or progress records in the DHT."""
    return create_swarm(coordinator)


def create_swarm(coordinator) -> dict:
    swarm_id = f"{TEST_SWARM}-{next(_swarm_count)}"
    result = run_hearth("swarm", "create", swarm_id, "--task", "spirals", "--target-batch-size", "16384",
                        "--coordinator", coordinator.url, "--token-file", str(coordinator.data_dir / "operator-token"),
                        timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return coordinator.get(f"/api/v1/swarms/{swarm_id}")


@pytest.fixture
def one_torch_thread():
    """Run the test's torch work on one thread: small models run fastest so, and a node trains with --threads 1."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
