"""`hearth demo`: a coordinator and three volunteer nodes, each a separate process group on loopback,
training the built-in task together until Ctrl+C or --duration."""

import json
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hearth.processes import leftovers_reported, python_argv, spawn_group, stop_group, wait_until

VOLUNTEERS = ["ada", "grace", "alan", "katherine", "edsger", "barbara"]
READY_TIMEOUT = 180.0


@dataclass
class Child:
    name: str
    process: object
    log_path: Path


def start_coordinator(work_dir: Path, console: Console) -> tuple[Child, dict]:
    ready_file = work_dir / "coordinator-ready.json"
    log_path = work_dir / "coordinator.log"
    argv = python_argv("hearth", "coordinator", "serve", "--data-dir", str(work_dir / "coordinator"),
                       "--port", "0", "--broker-port", "0", "--dht-port", "0", "--ready-file", str(ready_file))  # fmt: skip
    child = Child("coordinator", spawn_group(argv, stdout=log_path.open("w"), stderr=subprocess.STDOUT), log_path)

    def ready():
        if child.process.poll() is not None:
            raise click.ClickException(f"the coordinator exited early; see {log_path}")
        return ready_file.exists() and json.loads(ready_file.read_text())

    with console.status("Starting the coordinator…"):
        info = wait_until(ready, READY_TIMEOUT, what="the coordinator")
    return child, info


def start_node(work_dir: Path, url: str, name: str, peers: int) -> Child:
    log_path = work_dir / f"node-{name}.log"
    argv = python_argv("hearth", "-v", "join", url, "--name", name, "--data-dir", str(work_dir / f"node-{name}"),
                       "--threads", "1", "--min-peers", str(peers), "--view", "log")  # fmt: skip
    return Child(name, spawn_group(argv, stdout=log_path.open("w"), stderr=subprocess.STDOUT), log_path)


def leaderboard(url: str) -> list[dict]:
    return httpx.get(f"{url}/api/v1/leaderboard", timeout=10).json()["volunteers"]


def print_leaderboard(console: Console, rows: list[dict]) -> None:
    table = Table(title="Leaderboard")
    for column in ("rank", "volunteer", "credit", "samples", "reports"):
        table.add_column(column, justify="left" if column == "volunteer" else "right")
    for row in rows:
        # Text(): a volunteer's name is shown as typed, never read as rich markup.
        table.add_row(str(row["rank"]), Text(row["name"]), f"{row['credit']:.4f}", f"{row['samples']:,}", str(row["reports"]))
    console.print(table)


def node_summaries(nodes: list[Child], work_dir: Path) -> list[dict]:
    """What each node wrote about its run when it stopped (a node that crashed wrote nothing)."""
    paths = [work_dir / f"node-{child.name}" / "last-run.json" for child in nodes]
    return [json.loads(path.read_text()) for path in paths if path.exists()]


def wait_for_final_reports(url: str, summaries: list[dict]) -> None:
    """Give the coordinator's leaderboard time to show every report the nodes saw in its ledger."""
    in_ledger = sum(summary["reports_acknowledged"] for summary in summaries)
    try:
        wait_until(lambda: sum(row["reports"] for row in leaderboard(url)) >= in_ledger, 30, what="reports")
    except TimeoutError:
        pass


def summarize(url: str, summaries: list[dict], orphans: int) -> dict:
    group_sizes = [size for summary in summaries for epoch, size in summary["group_sizes"].items() if int(epoch) >= 1]
    return {
        "volunteers": [{"name": row["name"], "credit": row["credit"], "samples": row["samples"]}
                       for row in leaderboard(url)],  # fmt: skip
        "epochs": max((summary["epoch"] for summary in summaries), default=0),
        "min_group_size": min(group_sizes, default=0),
        "orphans": orphans,
    }


@click.command()
@click.option("--nodes", "node_count", type=click.IntRange(1, len(VOLUNTEERS)), default=3, show_default=True)
@click.option("--duration", type=click.FloatRange(min=1), help="Stop after this many seconds (default: Ctrl+C).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary as the last line.")
@click.option("--keep", is_flag=True, help="Keep the demo's data and logs instead of deleting them.")
def demo(node_count: int, duration: float | None, as_json: bool, keep: bool) -> None:
    """Run a coordinator and NODES volunteers on this machine, training together."""
    console = Console(stderr=True)
    work_dir = Path(tempfile.mkdtemp(prefix="hearth-demo-"))
    children: list[Child] = []
    stopping = {"requested": False}
    signal.signal(signal.SIGINT, lambda *_: stopping.update(requested=True))
    orphans = 0
    try:
        coordinator, info = start_coordinator(work_dir, console)
        children.append(coordinator)
        url = info["url"]
        console.print(f"[bold]Leaderboard:[/bold] {url}/   (logs in {work_dir})")
        nodes = [start_node(work_dir, url, name, node_count) for name in VOLUNTEERS[:node_count]]
        children += nodes
        started = time.monotonic()
        with console.status("Training… Ctrl+C to stop") as status:
            while not stopping["requested"] and (duration is None or time.monotonic() - started < duration):
                if all(node.process.poll() is not None for node in nodes):
                    break
                time.sleep(1.0)
                rows = _safe_leaderboard(url)
                total = sum(row["credit"] for row in rows)
                status.update(f"Training for {time.monotonic() - started:.0f} s · {len(rows)} volunteers · "
                              f"{total:.4f} credit in all · Ctrl+C to stop")  # fmt: skip
        console.print("Stopping the nodes…")
        for node in nodes:
            orphans += stop_group(node.process)[1]
            orphans += leftovers_reported(node.log_path.read_text())
        summaries = node_summaries(nodes, work_dir)
        wait_for_final_reports(url, summaries)
        result = summarize(url, summaries, orphans)
        print_leaderboard(console, _safe_leaderboard(url))
    finally:
        for child in reversed(children):  # nodes first (a no-op for those already stopped), the coordinator last
            orphans += stop_group(child.process)[1]
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    result["orphans"] = orphans
    if as_json:
        click.echo(json.dumps(result))


def _safe_leaderboard(url: str) -> list[dict]:
    try:
        return leaderboard(url)
    except (httpx.HTTPError, ValueError, KeyError):
        return []
