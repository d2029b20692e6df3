"""`hearth team create NAME | join NAME | leave`: team actions signed with this PC's node key and sent with the
account key (node/accounts.py), so a node key alone cannot change team. Credit earned from
now on counts for the new team; credit already earned stays with the team it was earned in."""

import time
from pathlib import Path

import click

from node.config import default_data_dir

coordinator_option = click.option("--coordinator", "coordinator_url", metavar="URL",
                                  help="Coordinator URL (default: the saved coordinator_url setting).")  # fmt: skip
data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False), help="Where this node's keys live.")


@click.group()
def team() -> None:
    """Create, join or leave a team on your coordinator (signed with this PC's node key)."""


@team.command()
@click.argument("name")
@coordinator_option
@data_dir_option
def create(name: str, coordinator_url: str | None, data_dir: str | None) -> None:
    """Create team NAME; you become its founder and first member."""
    _act("create", name, coordinator_url, data_dir)


@team.command()
@click.argument("name")
@coordinator_option
@data_dir_option
def join(name: str, coordinator_url: str | None, data_dir: str | None) -> None:
    """Join team NAME (leaving your current team, if any)."""
    _act("join", name, coordinator_url, data_dir)


@team.command()
@coordinator_option
@data_dir_option
def leave(coordinator_url: str | None, data_dir: str | None) -> None:
    """Leave your team."""
    _act("leave", None, coordinator_url, data_dir)


def _act(action: str, name: str | None, coordinator_url: str | None, data_dir: str | None) -> None:
    from node.account_cli import account_key_for
    from node.cli import _load_settings
    from node.coordinator_client import CoordinatorClient, CoordinatorError
    from node.identity import NodeIdentity
    from protocol.messages import TeamAction

    settings = _load_settings(coordinator_url=coordinator_url, data_dir=data_dir)
    url = settings.values.get("coordinator_url")
    if not url:
        raise click.UsageError("no coordinator URL: give --coordinator URL, "
                               "or save it with `hearth node config set coordinator_url URL`")  # fmt: skip
    identity = NodeIdentity.load_or_create(Path(settings.values.get("data_dir") or default_data_dir()))
    try:
        message = TeamAction(action=action, team=name, public_key=identity.key.public_key, time=time.time())
    except ValueError as e:
        raise click.UsageError(f"invalid team name: {_first_error(e)}") from None
    client = CoordinatorClient(url, connect_timeout=10.0)
    try:
        account_key = account_key_for(client, identity, identity.profile_path.parent)  # a node key alone cannot
        result = client.team_action(message, identity.key, account_key)
    except CoordinatorError as e:
        raise click.ClickException(str(e)) from None
    finally:
        client.close()
    registered = identity.registered_name()
    if registered:
        identity.remember(registered, result["team"])
    if action == "leave":
        click.echo(f"{result['volunteer']} left team {result['previous_team']!r}.")
    else:
        founder = " (founder)" if result["founder"] else ""
        previous = result["previous_team"]
        moved = f", leaving {previous!r}" if previous not in (None, result["team"]) else ""
        click.echo(f"{result['volunteer']} is now in team {result['team']!r}{founder}{moved}.")


def _first_error(error: ValueError) -> str:
    errors = getattr(error, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first.get("msg", error)).removeprefix("Value error, ")
    return str(error)
