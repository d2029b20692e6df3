"""`hearth node start|status|pause|resume|snooze|stop`: control of the node running on this PC through its
local control socket. Imports neither torch nor hivemind."""

import re
import subprocess
import sys
from pathlib import Path

import click

from node.control import ControlError, request, socket_path

DURATION = re.compile(r"^\s*(?:(\d+)\s*d)?\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m(?:in)?)?\s*(?:(\d+)\s*s)?\s*$")


def parse_duration(text: str) -> float:
    """'2h', '90m', '1h30m', '45s', '1d' → seconds."""
    match = DURATION.match(text.lower())
    if not match or not any(match.groups()):
        raise click.BadParameter(f"{text!r} is not a duration like 2h, 30m, 1h30m or 45s")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def _data_dir() -> Path:
    from node.cli import _load_settings

    return _load_settings().config(require_url=False).data_dir


def _ask(command: str, **fields) -> dict:
    try:
        return request(socket_path(_data_dir()), command, **fields)
    except ControlError as e:
        raise click.ClickException(str(e)) from None


def register(group: click.Group) -> None:
    for command in (start, status, pause, resume, snooze, stop):
        group.add_command(command)


@click.command()
@click.option("--detach", is_flag=True, help="Run in the background; its log goes to node.log in the data dir.")
@click.option("--view", type=click.Choice(["live", "log", "quiet"]), help="Live table, a log line per epoch, or nothing.")
@click.pass_context
def start(ctx: click.Context, detach: bool, view: str | None) -> None:
    """Start the node with your saved settings (`hearth node config`) and keep it running: it trains in the saved
    coordinator's swarm if there is one, and takes the swarms you give it with `hearth join` within seconds."""
    from node.cli import _load_settings, run_node_process
    from node.settings import NO_URL

    try:
        config = _load_settings(view=view).config(require_url=False)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if detach:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = config.data_dir / "node.log"
        with open(log_path, "ab") as log:
            child = subprocess.Popen([sys.executable, "-m", "hearth", "node", "start", "--view", "log"],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)  # fmt: skip
        click.echo(f"Hearth node started in the background (pid {child.pid}); log: {log_path}")
        click.echo("See it with `hearth node status`; stop it with `hearth node stop`.")
        return
    if config.coordinator_url == NO_URL:
        click.echo("No coordinator saved: the node waits for `hearth join URL`.", err=True)
    sys.exit(run_node_process(config, ctx.find_root().params.get("verbose", 0), stay=True))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Show what the running node is doing, why it is paused if it is, and your credit."""
    import json

    answer = _ask("status")
    if as_json:
        click.echo(json.dumps(answer))
        return
    from rich.console import Console

    Console().print(status_table(answer))


def status_table(answer: dict):
    """The rich table of `hearth node status` for a status answer (node/controller.py)."""
    from rich.table import Table

    from node.accounting import traffic_summary

    if "host" in answer:  # between swarms, or joining one (node/host.py)
        return _host_table(answer["host"], answer.get("swarm"))
    training, reporting, credit = answer["training"], answer["reporting"], answer.get("credit") or {}
    resources = answer.get("resources") or {}
    rules = ", ".join(f"{key}={value}" for key, value in answer["policy"].items() if value not in (None, False))
    reason = answer.get("pause_reason")
    table = Table(title="Hearth node", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("state", "paused" if reason else training.get("state", "starting")), ("why", reason),
        ("swarm", answer["swarm"]), ("epoch", training.get("epoch", 0)),
        ("samples/s", f"{training.get('samples_per_second', 0):,.0f}"),
        ("peers in last round", training.get("last_group_size") or "-"),
        ("samples contributed", f"{training.get('samples_total', 0):,}"),
        ("averaging traffic", traffic_summary(training.get("bytes_sent", 0), training.get("bytes_received", 0),
                                              training.get("samples_total", 0))),
        ("device", resources.get("device", answer["device"])), ("limits", _limits(answer, resources, rules)),
        ("network", answer.get("reachability")),
        ("differential privacy", _privacy(answer.get("privacy"))),
        ("credit granted", _granted(credit, answer.get("time"))),
        ("credit pending (estimate)", _credits(credit.get("pending_estimate"))),
        ("broker", "connected" if reporting.get("connected") else f"offline ({reporting.get('last_error') or '…'})"),
        ("reports in outbox (waiting)", reporting.get("reports_waiting", 0)),
        ("reports acknowledged", f"{reporting.get('reports_acknowledged', 0)} of {reporting.get('reports_sent', 0)}"),
        ("coordinator", answer["coordinator"]), ("metrics", answer.get("metrics_url")),
    ]  # fmt: skip
    for label, value in rows:
        if value is not None:
            table.add_row(label, str(value))
    return table


def _host_table(host: dict, swarm: str | None):
    from rich.table import Table

    table = Table(title="Hearth node", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    rows = (("state", host["state"]), ("swarm", swarm), ("process", host["pid"]), ("last run ended with", host.get("last_error")))
    for label, value in rows:
        if value is not None:
            table.add_row(label, str(value))
    return table


def _limits(answer: dict, resources: dict, rules: str) -> str:
    limits = [f"{answer['threads']} thread(s)"]
    if resources:
        limits.append(f"batch {resources['batch_size']}")
        limits.append(f"RAM cap {resources['ram_limit_gb']} GB")
        if resources.get("gpu_memory_limit_gb") is not None:
            limits.append(f"GPU memory cap {resources['gpu_memory_limit_gb']} GB")
        if resources.get("amp") not in (None, "off"):
            limits.append(f"{resources['amp']} autocast")
    return ", ".join(limits) + f"; pause rules: {rules or 'none'}"


def _privacy(privacy: dict | None) -> str | None:
    if not privacy:
        return None
    spent = " (budget spent: no more training here)" if privacy["exhausted"] else ""
    return (f"ε {privacy['epsilon_spent']:.3g} of {privacy['epsilon_budget']:g} spent at δ {privacy['delta']:g}"
            f"{spent}; clip {privacy['clip_norm']:g}, noise ×{privacy['noise_multiplier']:g}, "
            f"{privacy['steps']} steps this run")


def _credits(value) -> str:
    if value is None:
        return "-"
    if 0 < value < 1e-4:
        return "< 0.0001"
    return f"{value:,.2f}" if value >= 100 else f"{value:.4g}"


def _when(timestamp: float, now: float | None) -> str:
    from datetime import datetime

    moment = datetime.fromtimestamp(timestamp)
    return f"{moment:%H:%M:%S}" if now is None or abs(now - timestamp) < 12 * 3600 else f"{moment:%Y-%m-%d %H:%M}"


def _granted(credit: dict, now: float | None) -> str:
    """'12.5 (as of 14:05:10)', with the coordinator's trouble and since when if the last fetch failed."""
    granted, as_of, error = credit.get("granted"), credit.get("granted_as_of"), credit.get("error")
    text = "not fetched yet" if granted is None else f"{_credits(granted)} (as of {_when(as_of, now)})"
    if error:
        since = credit.get("failing_since")
        text += f"; {error}" + (f" since {_when(since, now)}" if since else "")
    return text


@click.command()
def pause() -> None:
    """Pause computing until `hearth node resume`."""
    click.echo(_ask("pause")["message"])


@click.command()
def resume() -> None:
    """Resume computing (ends a pause or a snooze)."""
    click.echo(_ask("resume")["message"])


@click.command()
@click.argument("duration")
def snooze(duration: str) -> None:
    """Pause for DURATION, such as 2h or 30m; computing resumes by itself."""
    click.echo(_ask("snooze", seconds=parse_duration(duration))["message"])


@click.command()
def stop() -> None:
    """Stop the running node gracefully."""
    click.echo(_ask("stop")["message"])
