"""`hearth join URL` and `hearth node …`: the volunteer's commands. Imports no web stack and no torch
until a node actually starts."""

import json
import logging
import sys

import click

from node.config import NodeConfig, default_data_dir

logger = logging.getLogger(__name__)


def _build_config(**options) -> NodeConfig:
    try:
        return NodeConfig(**{key: value for key, value in options.items() if value is not None})
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@click.command()
@click.argument("coordinator_url")
@click.option("--name", help="Display name on the leaderboard (default: a friendly random name).")
@click.option("--team", help="Team to credit your work to.")
@click.option("--swarm", "swarm_id", help="Swarm to join (default: the coordinator's first swarm).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where keys and state live.")
@click.option("--threads", type=int, help="CPU threads for training (default: half the cores).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Compute device (default: auto).")
@click.option("--host", help="Address the peer listens on (default 127.0.0.1; 0.0.0.0 to accept remote peers).")
@click.option("--port", type=int, help="TCP port of the peer (default: any free port).")
@click.option("--announce-host", help="Public address to announce to peers.")
@click.option("--client-mode/--no-client-mode", default=None, help="Only dial out (PC not reachable from outside).")
@click.option("--min-peers", type=int, help="Wait for this many training peers before the first round.")
@click.option("--max-epochs", type=int, help="Stop once the swarm reaches this epoch.")
@click.option("--duration", type=float, help="Stop after this many seconds.")
@click.option("--view", type=click.Choice(["live", "log", "quiet"]), help="Live table, a log line per epoch, or nothing.")
@click.option("--connect-timeout", type=float, help="Seconds to keep retrying an unreachable coordinator.")
@click.pass_context
def join(ctx: click.Context, coordinator_url: str, **options) -> None:
    """Join a training swarm: create your identity, register, and train until Ctrl+C."""
    from hearth.processes import python_argv, run_supervised

    config = _build_config(coordinator_url=coordinator_url, **options)
    verbosity = ctx.find_root().params.get("verbose", 0)
    click.echo(f"Joining {config.coordinator_url} (data in {config.data_dir}); Ctrl+C to stop.", err=True)
    code = run_supervised(python_argv("node.worker", json.dumps(config.to_json_dict()), str(verbosity)))
    sys.exit(code)


@click.group()
def node() -> None:
    """Inspect this PC's Hearth node."""


@node.command()
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where keys and state live.")
def info(data_dir: str | None) -> None:
    """Show this node's identity and where its files are."""
    from pathlib import Path

    from node.identity import NodeIdentity

    identity = NodeIdentity.load_or_create(Path(data_dir) if data_dir else default_data_dir())
    click.echo(f"node id:    {identity.node_id}")
    click.echo(f"public key: {identity.key.public_key}")
    click.echo(f"name:       {identity.registered_name() or '(not registered yet)'}")
    click.echo(f"data dir:   {identity.profile_path.parent}")
