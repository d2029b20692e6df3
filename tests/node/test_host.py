"""NodeHost, the node process's outer loop (node/host.py), over its real control socket, with a stand-in for a
swarm run: joins start runs, a join during a run moves to the new swarm, stop ends the process."""

import queue
import threading

import pytest

from hearth.processes import wait_until
from node.config import NodeConfig
from node.control import ControlError, request, socket_path
from node.daemon import NodeError
from node.host import NodeHost
from node.settings import NO_URL

URL = "http://127.0.0.1:9"


class Runs:
    """Stands in for run_node: each run records its settings and lasts until it is stopped or told to end."""

    def __init__(self):
        self.started: queue.Queue = queue.Queue()
        self.outcomes: queue.Queue = queue.Queue()  # what the current run does once released: a summary or an error

    def __call__(self, config, stop, control):
        self.started.put((config, stop))
        while not stop.is_set():
            try:
                outcome = self.outcomes.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        return SUMMARY

    def next(self):
        return self.started.get(timeout=10)


SUMMARY = {"epoch": 3, "samples": 10, "reports_acknowledged": 1, "reports_waiting": 0}


@pytest.fixture
def host(tmp_path):
    started = []

    def start(url=NO_URL, stay=True):
        runs, stop = Runs(), threading.Event()
        node = NodeHost(NodeConfig(coordinator_url=url, data_dir=tmp_path, view="quiet"), stop, stay, run=runs)
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("code", node.serve()), daemon=True)
        thread.start()
        started.append((stop, thread))
        if url == NO_URL:
            wait_until(lambda: _state(tmp_path).startswith("waiting"), 30, what="the host to wait")
        return node, runs, stop, thread, result

    yield start
    for stop, thread in started:
        stop.set()
        thread.join(10)


def _ask(data_dir, command, **fields):
    return request(socket_path(data_dir), command, **fields)


def _state(data_dir) -> str:
    try:
        return _ask(data_dir, "status").get("host", {}).get("state", "")
    except ControlError:
        return ""


def _join_config(tmp_path, swarm_id):
    return NodeConfig(coordinator_url=URL, swarm_id=swarm_id, data_dir=tmp_path, view="live").to_json_dict()


def test_a_join_starts_a_run_with_the_hosts_view(host, tmp_path):
    node, runs, stop, thread, result = host()
    answer = _ask(tmp_path, "join", config=_join_config(tmp_path, "one"))
    assert answer["left"] is None and answer["pid"] > 0
    config, _ = runs.next()
    assert (config.swarm_id, config.coordinator_url, config.view) == ("one", URL, "quiet")


def test_a_join_during_a_run_ends_it_and_starts_the_new_swarm(host, tmp_path):
    node, runs, stop, thread, result = host()
    _ask(tmp_path, "join", config=_join_config(tmp_path, "one"))
    _, first_stop = runs.next()
    answer = _ask(tmp_path, "join", config=_join_config(tmp_path, "two"))
    assert answer["left"] == "one" and first_stop.is_set()
    config, second_stop = runs.next()
    assert config.swarm_id == "two" and not second_stop.is_set()


def test_stop_ends_the_run_and_the_process(host, tmp_path):
    node, runs, stop, thread, result = host()
    _ask(tmp_path, "join", config=_join_config(tmp_path, "one"))
    _, run_stop = runs.next()
    assert "stopping" in _ask(tmp_path, "stop")["message"]
    thread.join(10)
    assert run_stop.is_set() and result["code"] == 0
    assert not socket_path(tmp_path).exists()  # the control channel closed with it
    with pytest.raises(ControlError, match="no Hearth node is running"):
        _ask(tmp_path, "status")


def test_a_kept_node_waits_again_after_a_run_ends_and_shows_a_failure(host, tmp_path):
    node, runs, stop, thread, result = host()
    _ask(tmp_path, "join", config=_join_config(tmp_path, "one"))
    runs.next()
    runs.outcomes.put(NodeError("swarm one is full"))
    wait_until(lambda: _state(tmp_path).startswith("waiting"), 10, what="the host to wait again")
    assert _ask(tmp_path, "status")["host"]["last_error"] == "swarm one is full"
    _ask(tmp_path, "join", config=_join_config(tmp_path, "two"))
    assert runs.next()[0].swarm_id == "two"


def test_a_join_process_ends_with_its_run(host, tmp_path):
    node, runs, stop, thread, result = host(url=URL, stay=False)
    runs.next()
    runs.outcomes.put(NodeError("no such swarm"))
    thread.join(10)
    assert result["code"] == 2


def test_commands_of_a_run_are_refused_between_runs(host, tmp_path):
    host()
    for command in ("pause", "resume", "snooze"):
        with pytest.raises(ControlError, match="not training"):
            _ask(tmp_path, command)


@pytest.mark.parametrize("config", [None, {"coordinator_url": NO_URL}, {"coordinator_url": "ftp://x"}])
def test_a_malformed_join_is_refused(host, tmp_path, config):
    host()
    with pytest.raises(ControlError):
        _ask(tmp_path, "join", config=config)
    assert _state(tmp_path).startswith("waiting")
