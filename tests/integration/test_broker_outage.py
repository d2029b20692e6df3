"""The broker goes down for 30 s while a node trains: afterwards the ledger holds every report exactly once."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hearth.processes import spawn_group, stop_group, wait_until
from node.control import ControlError, request, socket_path
from node.outbox import Outbox
from tests.conftest import CoordinatorProcess

pytestmark = pytest.mark.swarm

BROKER_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mqtt_broker.py"
OUTAGE_SECONDS = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_broker(port: int, log: Path) -> subprocess.Popen:
    broker = spawn_group([sys.executable, str(BROKER_SCRIPT), str(port)], stdout=log.open("a"), stderr=subprocess.STDOUT)
    wait_until(lambda: "listening" in log.read_text() or broker.poll() is not None, 30, what="the broker")
    assert broker.poll() is None, log.read_text()
    return broker


def test_no_report_is_lost_or_doubled_across_a_broker_outage(tmp_path, nodes):
    port, broker_log = free_port(), tmp_path / "broker.log"
    broker = start_broker(port, broker_log)
    coordinator = CoordinatorProcess(tmp_path / "coordinator", "--broker", f"mqtt://127.0.0.1:{port}")
    try:
        nodes.start(coordinator.url, "gina")
        status = lambda: _reporting(nodes.data_dir("gina"))  # noqa: E731
        wait_until(lambda: status().get("reports_acknowledged", 0) >= 1, 180, what="a first report in the ledger")

        stop_group(broker)  # the outage
        down_since = time.monotonic()
        wait_until(lambda: status()["reports_waiting"] >= 2, 180, what="reports piling up in the outbox")
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_since)))  # the outage lasts 30 s
        broker = start_broker(port, broker_log)
        backlog = status()["reports_queued"]  # every report made before and during the outage

        # gina trains on, so her outbox is rarely empty at any one instant: wait for the outage's reports instead
        wait_until(lambda: status()["reports_acknowledged"] >= backlog, 120,
                   what="the outage's reports to be receipted")  # fmt: skip
        assert stop_group(nodes.processes["gina"])[0] == 0, nodes.log("gina")
        outbox = Outbox(nodes.data_dir("gina") / "outbox.sqlite")
        last_seq, waiting = outbox.next_seq() - 1, [seq for seq, _, _ in outbox.pending()]
        outbox.close()
        in_ledger = last_seq - len(waiting)
        assert in_ledger >= backlog and waiting == list(range(in_ledger + 1, last_seq + 1))  # kept for the next start
        reports = wait_until(lambda: _settled_reports(coordinator, "gina", in_ledger), 90,
                             what=f"all {in_ledger} reports to be decided")  # fmt: skip
        stored = sorted(report["seq"] for report in reports)
        assert stored == list(range(1, in_ledger + 1))  # nothing lost, nothing doubled
        assert {report["status"] for report in reports} <= {"granted", "pending"}, reports
    finally:
        coordinator.stop()
        stop_group(broker)


def _reporting(data_dir: Path) -> dict:
    try:
        return request(socket_path(data_dir), "status").get("reporting", {})  # none while the node starts
    except ControlError:  # not listening yet
        return {}


def _settled_reports(coordinator, name: str, expected: int) -> list[dict] | None:
    """All of the volunteer's reports once `expected` of them are settled: decided, or pending on an audit that is
    still open. The coordinator audits a new node's first reports at random; an audit sent while the broker is down
    is sent again once it is back, but the test stops the node right after, so it may stay open (until the node
    returns or OFFLINE_LIMIT passes), and its report pending."""
    reports = coordinator.get(f"/api/v1/volunteers/{name}/reports", limit=1000)["reports"]
    audited = {(audit["epoch"], audit["status"]) for node_id in {report["node_id"] for report in reports}
               for audit in coordinator.get("/api/v1/audits", node_id=node_id)["audits"]}  # fmt: skip
    settled = [report for report in reports if report["status"] != "pending" or (report["epoch"], "open") in audited]
    return reports if len(settled) >= expected else None
