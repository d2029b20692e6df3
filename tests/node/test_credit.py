"""Credit as the node shows it: granted (polled from a real HTTP server), pending (estimated from a real outbox),
and how `hearth node status` prints both."""

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest
from rich.console import Console

from hearth.processes import wait_until
from node.control import ControlServer, socket_path
from node.control_cli import status_table
from node.credit import CreditTracker
from node.outbox import Outbox
from protocol.credit import FLOPS_PER_CREDIT, credit_for
from protocol.envelope import seal
from protocol.messages import ContributionReport
from protocol.signing import SigningKey
from tests.conftest import run_hearth

FLOPS = 3_685_888
NAME = "ada / lovelace"  # a space and a slash: the name must travel quoted


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class CoordinatorStub:
    """A tiny real HTTP server that answers GET /api/v1/volunteers/{name} as the coordinator does
    (coordinator/queries.py volunteer_detail)."""

    def __init__(self):
        self.answer: tuple[int, dict] = (200, {"name": NAME, "credit": 0.0, "samples": 0, "reports": 0})
        self.paths: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                stub.paths.append(self.path)
                status, body = stub.answer
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def grant(self, credit: float) -> None:
        self.answer = (200, {"name": NAME, "credit": credit, "samples": 1, "reports": 1, "audit": []})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def coordinator_stub():
    stub = CoordinatorStub()
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite")
    try:
        yield box
    finally:
        box.close()


def add_report(outbox: Outbox, key: SigningKey, samples: int, swarm_id: str = "spirals") -> int:
    seq = outbox.next_seq()
    report = ContributionReport(node_id=key.node_id, swarm_id=swarm_id, seq=seq, epoch=seq, samples=samples,
                                compute_seconds=1.0, device="cpu", time=time.time())  # fmt: skip
    outbox.add(seq, f"hearth/{swarm_id}/reports/{key.node_id}", seal(report, key))
    return seq


def test_credit_rule_is_the_cobblestone():
    assert FLOPS_PER_CREDIT == 4.32e11
    assert credit_for(1000, 432_000_000) == 1.0


def test_granted_credit_is_fetched_and_the_last_value_kept_when_the_coordinator_fails(coordinator_stub, outbox):
    clock = FakeClock()
    tracker = CreditTracker(coordinator_stub.url, NAME, outbox, "spirals", FLOPS, clock=clock)
    assert tracker.snapshot()["granted"] is None  # nothing fetched yet: unknown, not zero
    coordinator_stub.grant(12.5)
    tracker.refresh()
    assert coordinator_stub.paths == ["/api/v1/volunteers/" + quote(NAME, safe="")]
    fetched_at = clock.now
    assert (tracker.granted, tracker.granted_as_of, tracker.error) == (12.5, fetched_at, None)

    clock.now += 60
    coordinator_stub.answer = (500, {"error": {"code": "internal", "message": "boom"}})
    tracker.refresh()
    failing_since = clock.now
    snapshot = tracker.snapshot()
    assert (snapshot["granted"], snapshot["granted_as_of"]) == (12.5, fetched_at)
    assert snapshot["error"] == "the coordinator answered HTTP 500" and snapshot["failing_since"] == failing_since

    coordinator_stub.stop()  # the coordinator goes away altogether
    clock.now += 60
    tracker.refresh()
    assert tracker.granted == 12.5 and "unreachable" in tracker.error
    assert tracker.failing_since == failing_since  # the same outage: since when it began
    tracker.stop()


def test_unknown_volunteer_is_an_error_not_zero_credit(coordinator_stub, outbox):
    coordinator_stub.answer = (404, {"error": {"code": "unknown_volunteer", "message": "no volunteer"}})
    tracker = CreditTracker(coordinator_stub.url, NAME, outbox, "spirals", FLOPS, clock=FakeClock())
    tracker.refresh()
    assert tracker.granted is None and tracker.error == f"the coordinator knows no volunteer {NAME!r}"
    coordinator_stub.answer = (200, {"name": NAME})  # an answer without a total
    tracker.refresh()
    assert tracker.granted is None and "no credit total" in tracker.error
    tracker.stop()


def test_poller_fetches_in_the_background_and_stops_promptly(coordinator_stub, outbox):
    coordinator_stub.grant(3.25)
    tracker = CreditTracker(coordinator_stub.url, NAME, outbox, "spirals", FLOPS)  # polls every 60 s
    tracker.start()
    wait_until(lambda: tracker.granted == 3.25, 10, interval=0.02, what="the first fetch")
    started = time.monotonic()
    tracker.stop()
    assert time.monotonic() - started < 2 and not tracker._thread.is_alive()  # no waiting out the 60 s interval
    assert len(coordinator_stub.paths) == 1


def test_pending_estimate_counts_this_swarms_reports_until_their_receipt(outbox):
    key = SigningKey.generate()
    tracker = CreditTracker("http://127.0.0.1:9", NAME, outbox, "spirals", FLOPS)
    assert tracker.pending_estimate() == 0.0
    first = add_report(outbox, key, 4096)
    add_report(outbox, key, 1000, swarm_id="other-swarm")  # left from an earlier run: FLOPs unknown here
    add_report(outbox, key, 512)
    outbox.add(outbox.next_seq(), "t", b"not an envelope")  # unreadable: skipped, never fatal
    assert tracker.pending_estimate() == pytest.approx(credit_for(4096 + 512, FLOPS))
    outbox.acknowledge_through(first)  # the coordinator's receipt covers the first report
    assert tracker.pending_estimate() == pytest.approx(credit_for(512, FLOPS))
    assert tracker.snapshot()["pending_estimate"] == pytest.approx(credit_for(512, FLOPS))
    outbox.acknowledge_through(10)
    assert tracker.pending_estimate() == 0.0
    tracker.stop()


def _answer(**overrides) -> dict:
    answer = {
        "swarm": "spirals", "device": "cpu", "threads": 2, "coordinator": "http://127.0.0.1:8000",
        "policy": {"idle_minutes": 5.0, "max_other_cpu_percent": None, "pause_on_gpu_busy": False,
                   "battery_pause_below": None, "battery_resume_above": None, "schedule": None},
        "paused": False, "pause_reason": None,
        "training": {"state": "training", "epoch": 7, "samples_per_second": 3600.0, "last_group_size": 3,
                     "samples_total": 123456, "state_downloads": 1, "first_step_at": 1.0},
        "reporting": {"connected": True, "reports_sent": 6, "reports_acknowledged": 5, "reports_waiting": 1},
        "credit": {"volunteer": NAME, "granted": 12.5, "granted_as_of": time.time() - 30, "pending_estimate": 0.0349,
                   "error": None, "failing_since": None},
        "metrics_url": "http://127.0.0.1:9400/metrics", "time": time.time(),
    }  # fmt: skip
    answer.update(overrides)
    return answer


def _render(answer: dict) -> str:
    console = Console(record=True, width=160)
    console.print(status_table(answer))
    return console.export_text()


def test_status_table_shows_credit_state_limits_and_reports():
    text = _render(_answer())
    for expected in ("training", "spirals", "3,600", "123,456", "2 thread(s); pause rules: idle_minutes=5.0",
                     "credit granted", "12.5 (as of", "credit pending (estimate)", "0.0349",
                     "reports in outbox (waiting)", "reports acknowledged", "5 of 6",
                     "http://127.0.0.1:9400/metrics"):  # fmt: skip
        assert expected in text, (expected, text)
    assert "why" not in text

    now = time.time()
    outage = {"granted": 12.5, "granted_as_of": now - 300, "pending_estimate": 0.5,
              "error": "the coordinator is unreachable (ConnectError)", "failing_since": now - 120}  # fmt: skip
    paused = _answer(paused=True, pause_reason="paused by you", credit=outage)
    text = _render(paused)
    assert "paused by you" in text and "why" in text
    assert "12.5 (as of" in text and "the coordinator is unreachable (ConnectError) since" in text
    unknown = {"granted": None, "pending_estimate": None, "granted_as_of": None}
    assert "not fetched yet" in _render(_answer(credit=unknown))


def test_hearth_node_status_over_the_real_control_socket(tmp_path):
    answer = _answer()
    server = ControlServer(socket_path(tmp_path), {"status": lambda request: answer})
    server.start()
    env = {**os.environ, "HEARTH_DATA_DIR": str(tmp_path), "HEARTH_CONFIG": str(tmp_path / "none.toml")}
    try:
        raw = run_hearth("node", "status", "--json", env=env)
        table = run_hearth("node", "status", env={**env, "COLUMNS": "160"})
    finally:
        server.stop()
    assert raw.returncode == 0, raw.stderr
    parsed = json.loads(raw.stdout)
    assert parsed["training"]["samples_total"] == 123456 and set(parsed["credit"]) >= {"granted", "pending_estimate",
                                                                                         "granted_as_of"}  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "credit pending (estimate)" in table.stdout and "12.5" in table.stdout


def test_status_table_shows_the_resources_decision_and_the_network_mode():
    resources = {"device": "cuda:0 NVIDIA H200", "threads": 2, "batch_size": 128, "swarm_batch_size": 256,
                 "amp": "bf16", "ram_limit_gb": 8.0, "ram_needed_gb": 0.4, "gpu_memory_limit_gb": 110.4}  # fmt: skip
    text = _render(_answer(resources=resources, reachability="client mode (not reachable: connection refused)"))
    for expected in ("cuda:0 NVIDIA H200", "batch 128", "RAM cap 8.0 GB", "GPU memory cap 110.4 GB", "bf16 autocast",
                     "client mode (not reachable: connection refused)"):  # fmt: skip
        assert expected in text, (expected, text)
