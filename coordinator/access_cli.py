"""`hearth volunteer ban|unban NAME`: the operator's ban (operator token). A banned volunteer's nodes get no more
access tokens, so they fall out of private swarms within one token lifetime (`coordinator serve --token-lifetime`)."""

from pathlib import Path
from urllib.parse import quote

import click

from coordinator.cli import _coordinator_option, _request
from coordinator.config import default_token_file


@click.group()
def volunteer() -> None:
    """Ban or unban a volunteer on a coordinator (operators)."""


def _token_options(function):
    function = click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=default_token_file,
                            show_default="<default data dir>/operator-token")(function)  # fmt: skip
    return click.option("--token", help="Operator token (default: read from --token-file).")(function)


def _operator_token(token, token_file) -> str:
    if token is not None:
        return token
    try:
        return Path(token_file).read_text().strip()
    except OSError:
        raise click.UsageError(f"no operator token: pass --token, or --token-file (the coordinator writes "
                               f"{token_file} at first start)") from None  # fmt: skip


@volunteer.command()
@click.argument("name")
@_coordinator_option
@_token_options
def ban(name, url, token, token_file) -> None:
    """Ban volunteer NAME: no more access tokens for its nodes."""
    answer = _request("POST", f"{url.rstrip('/')}/api/v1/volunteers/{quote(name, safe='')}/ban",
                      headers={"Authorization": f"Bearer {_operator_token(token, token_file)}"})  # fmt: skip
    click.echo(f"Banned {answer['name']} (since {answer['banned_at']}); its nodes leave private swarms when their "
               "access tokens expire.")  # fmt: skip


@volunteer.command()
@click.argument("name")
@_coordinator_option
@_token_options
def unban(name, url, token, token_file) -> None:
    """Lift the ban of volunteer NAME."""
    answer = _request("DELETE", f"{url.rstrip('/')}/api/v1/volunteers/{quote(name, safe='')}/ban",
                      headers={"Authorization": f"Bearer {_operator_token(token, token_file)}"})  # fmt: skip
    click.echo(f"Lifted the ban of {answer['name']}.")
