"""`hearth join URL` and `hearth node …`: the volunteer's commands. Imports no web stack and no torch
until a node actually starts. Settings come from defaults < config.toml < HEARTH_* env < flags (node/settings.py)."""

import json
import logging
import os
import sys

import click

from node.config import NodeConfig, default_data_dir

logger = logging.getLogger(__name__)


def _load_settings(**flags):
    """Settings from file, env and the given flags (None: not given); bad input becomes a one-line error."""
    from node.settings import load_settings

    try:
        return load_settings({key.replace("__", "."): value for key, value in flags.items()})
    except ValueError as e:
        raise click.UsageError(str(e)) from None


def _build_config(**options) -> NodeConfig:
    """NodeConfig from flags over HEARTH_* env over config.toml over defaults. Policy flags are named policy__*."""
    settings = _load_settings(**options)
    try:
        return settings.config()
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@click.command()
@click.argument("coordinator_url", required=False)
@click.option("--name", help="Display name on the leaderboard (default: a friendly random name).")
@click.option("--team", help="Team to credit your work to.")
@click.option("--swarm", "swarm_id", help="Swarm to join (default: the coordinator's first swarm).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where keys and state live.")
@click.option("--threads", type=int, help="CPU threads for training (default: half the cores).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]),
              help="Compute device (default: auto: a GPU with enough free memory, else the CPU).")
@click.option("--gpus", help="CUDA devices the node may use, e.g. 0,1 (default: all); it trains on the first that fits.")
@click.option("--gpu-memory-fraction", type=float, help="Share of the GPU's memory the node may use (default 0.8).")
@click.option("--max-ram-gb", type=float, help="RAM the node may use, in GB (default: half of this PC's RAM).")
@click.option("--batch-size", type=int, help="Samples per step here (default: the swarm's, halved until it fits).")
@click.option("--amp", type=click.Choice(["auto", "on", "off"]),
              help="bf16 autocast on CUDA GPUs that support it (default: auto).")
@click.option("--host", help="Address the peer listens on (default 127.0.0.1; 0.0.0.0 to accept remote peers).")
@click.option("--port", type=int, help="TCP port of the peer (default: any free port).")
@click.option("--announce-host", help="Public address to announce to peers.")
@click.option("--reachability", type=click.Choice(["auto", "public", "client"]),
              help="auto (default): the coordinator tries to dial this PC back; public: always accept peers; "
                   "client: only dial out, through relays.")
@click.option("--client-mode/--no-client-mode", default=None, help="Same as --reachability client (older spelling).")
@click.option("--min-peers", type=int, help="Wait for this many training peers before the first round.")
@click.option("--max-epochs", type=int, help="Stop once the swarm reaches this epoch.")
@click.option("--duration", type=float, help="Stop after this many seconds.")
@click.option("--view", type=click.Choice(["live", "log", "quiet"]), help="Live table, a log line per epoch, or nothing.")
@click.option("--connect-timeout", type=float, help="Seconds to keep retrying an unreachable coordinator.")
@click.option("--ca-cert", type=click.Path(dir_okay=False), metavar="FILE",
              help="Trust this CA certificate (PEM) too, for a coordinator and broker with a private CA's TLS "
                   "certificate (https://, mqtts://); env HEARTH_CA_CERT.")
@click.option("--local-data", type=click.Path(dir_okay=False), metavar="FILE",
              help="Your dataset for a `data: local` swarm (CSV or NPZ for `tabular`); it stays on this PC.")
@click.option("--metrics-port", type=int,
              help="Serve Prometheus metrics on 127.0.0.1 at this port (0: any free port; default: off).")
@click.option("--idle-minutes", "policy__idle_minutes", type=float,
              help="Compute only after this many minutes without keyboard/mouse input.")
@click.option("--max-other-cpu-percent", "policy__max_other_cpu_percent", type=float,
              help="Pause while other programs use more than this % of the CPU.")
@click.option("--pause-on-gpu-busy/--no-pause-on-gpu-busy", "policy__pause_on_gpu_busy", default=None,
              help="Leave the GPU alone while another program computes on it.")
@click.option("--battery-pause-below", "policy__battery_pause_below", type=int,
              help="On battery, pause below this charge (%).")
@click.option("--battery-resume-above", "policy__battery_resume_above", type=int,
              help="After a battery pause, resume at this charge (%) (default: pause level + 10).")
@click.option("--schedule", "policy__schedule", help='When to compute, e.g. "mon-fri 22:00-07:00, sat-sun *".')
@click.option("--attach", "attach_key", envvar="HEARTH_ATTACH_KEY", metavar="KEY",
              help="Attach this PC to your existing account with its attach key (`hearth account show` on your "
                   "first PC prints it); env HEARTH_ATTACH_KEY.")
@click.pass_context
def join(ctx: click.Context, coordinator_url: str | None, attach_key: str | None, **options) -> None:
    """Join a training swarm: create your identity, register, and train until Ctrl+C.

    COORDINATOR_URL may be left out once saved with `hearth node config set coordinator_url URL`.
    Every option can also be set in the config file (`hearth node config`) or as HEARTH_<OPTION>."""
    config = _build_config(coordinator_url=coordinator_url, **options)
    if config.ca_cert:  # for the attach step here (node/tls.py)
        os.environ["HEARTH_CA_CERT"] = str(config.ca_cert)
    if attach_key:
        from node.account_cli import attach_this_node

        attach_this_node(config.coordinator_url, config.data_dir, attach_key, on_join=True)  # before it registers
    if _hand_to_running_node(config):
        return
    verbosity = ctx.find_root().params.get("verbose", 0)
    click.echo(f"Joining {config.coordinator_url} (data in {config.data_dir}); Ctrl+C to stop.", err=True)
    sys.exit(run_node_process(config, verbosity, stay=False))


def run_node_process(config: NodeConfig, verbosity: int, stay: bool) -> int:
    """Run the node process (node/worker.py) supervised until it ends: its exit code. `stay`: it waits for the next
    join when a run ends (`hearth node start`)."""
    from hearth.processes import CrashRestarts, python_argv, run_supervised

    argv = python_argv("node.worker", json.dumps(config.to_json_dict()), str(verbosity), *(["stay"] if stay else []))
    # a crash in native code (torch, hivemind) is retried: identity, outbox and swarm state survive it
    return run_supervised(argv, restarts=CrashRestarts(), what="the node process")


def _hand_to_running_node(config: NodeConfig) -> bool:
    """Give the swarm to the node already running on this data dir (`hearth node start`), which has torch and
    hivemind loaded and trains within seconds; False if none runs."""
    from node.control import ControlError, NotRunning, request, socket_path

    try:
        answer = request(socket_path(config.data_dir), "join", timeout=10, config=config.to_json_dict())
    except NotRunning:
        return False
    except ControlError as e:
        raise click.ClickException(f"a Hearth node already runs on {config.data_dir} but did not take the join: {e}")
    swarm = config.swarm_id or "the coordinator's first swarm"
    left = f" It left {answer['left']} for it." if answer.get("left") else ""
    click.echo(f"The Hearth node running here (pid {answer['pid']}) joins {swarm} at {config.coordinator_url}.{left}\n"
               "See it with `hearth node status`; stop it with `hearth node stop`.")  # fmt: skip
    return True


@click.group()
def node() -> None:
    """Inspect this PC's Hearth node."""


@node.command()
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where keys and state live.")
def info(data_dir: str | None) -> None:
    """Show this node's identity and where its files are."""
    from pathlib import Path

    from node.identity import NodeIdentity

    settings = _load_settings(data_dir=data_dir)
    identity = NodeIdentity.load_or_create(Path(settings.values.get("data_dir") or default_data_dir()))
    click.echo(f"node id:    {identity.node_id}")
    click.echo(f"public key: {identity.key.public_key}")
    click.echo(f"name:       {identity.registered_name() or '(not registered yet)'}")
    click.echo(f"data dir:   {identity.profile_path.parent}")


@node.group()
def config() -> None:
    """Show or change saved settings (config.toml; HEARTH_* env and flags override it)."""


@config.command("show")
def config_show() -> None:
    """Print every setting, its effective value and where it comes from."""
    from rich.console import Console
    from rich.table import Table

    from node.settings import field_docs

    settings = _load_settings()
    try:
        rows = settings.rows()
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    docs = field_docs()
    table = Table(title=f"Hearth node settings ({settings.path})", title_justify="left")
    console = Console()
    explain = console.width >= 110  # the explanations only fit a wide terminal
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("source", no_wrap=True)
    if explain:
        table.add_column("what it does", ratio=1)
    for key, value, source in rows:
        shown = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        shown = "(not set)" if value is None and key == "coordinator_url" else shown
        cells = [key, shown, str(source)] + ([docs.get(key, "")] if explain else [])
        table.add_row(*cells, style="dim" if source.kind == "default" else None)
    console.print(table)
    click.echo("Change with `hearth node config set KEY VALUE`, or per run with HEARTH_KEY "
               "(HEARTH_POLICY__KEY for policy.*) or a flag of `hearth join`.")


@config.command("set")
@click.argument("key")
@click.argument("value")
def config_set(key: str, value: str) -> None:
    """Save KEY = VALUE in the config file (VALUE "none" clears an optional setting)."""
    _change(key, value)


@config.command("unset")
@click.argument("key")
def config_unset(key: str) -> None:
    """Remove KEY from the config file, back to its default."""
    _change(key, None)


@config.command("path")
def config_path_command() -> None:
    """Print where the config file lives (HEARTH_CONFIG overrides it)."""
    from node.settings import config_path

    click.echo(str(config_path()))


def _change(name: str, value: str | None) -> None:
    import os

    from node.settings import config_path, resolve_key, set_in_file

    path = config_path()
    try:
        key = resolve_key(name)
        typed = set_in_file(path, key, value)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if typed is None:
        click.echo(f"Removed {key.name} from {path}.")
    else:
        click.echo(f"Saved {key.name} = {typed} in {path}.")
    if os.environ.get(key.env, "").strip():
        click.echo(f"Note: {key.env}={os.environ[key.env]} in this environment overrides the file.", err=True)


def _register_control_commands() -> None:
    from node.control_cli import register
    from node.service_cli import register as register_service_commands

    register(node)
    register_service_commands(node)


_register_control_commands()
