"""`hearth node install-service | uninstall-service`: run the node at every login as a systemd user service
(Linux) or a launchd agent (macOS). The logic lives in node/service.py; this is the click layer. Imports
neither torch nor hivemind."""

import sys
from pathlib import Path

import click

from node import service
from node.service import ServiceError
from node.settings import config_path

# Hidden: builds another platform's file, so that the macOS agent can be checked (and tested) on Linux.
platform_option = click.option("--platform", default=sys.platform, hidden=True)


def register(group: click.Group) -> None:
    for command in (install_service, uninstall_service):
        group.add_command(command)


@click.command("install-service")
@click.option("--coordinator", "coordinator_url", metavar="URL",
              help="Save this coordinator URL first (as `hearth node config set coordinator_url URL` does).")
@click.option("--force", is_flag=True, help="Replace an installed service file that differs from this one.")
@click.option("--print", "print_only", is_flag=True,
              help="Print the service file; write nothing (not even --coordinator).")
@platform_option
def install_service(coordinator_url: str | None, force: bool, print_only: bool, platform: str) -> None:
    """Run the node in the background at every login, with your saved settings: a systemd user service on
    Linux, a launchd agent on macOS. Prints the commands that start it."""
    try:
        built = service.build(platform)
        if print_only:
            click.echo(built.text, nl=False)
            click.echo(f"(not written; install-service writes it to {built.path})", err=True)
            return
        service.check_replace(built, force)  # before saving anything
        config_file = config_path()
        if coordinator_url is not None:
            _save_url(config_file, coordinator_url)
        service.saved_config(config_file)
        outcome = service.install(built, force)
    except ServiceError as e:
        raise click.ClickException(str(e)) from None
    done = {"new": "Installed", "replace": "Replaced", "same": "Already installed, unchanged:"}[outcome]
    click.echo(f"{done} {built.path}")
    click.echo(f"It runs: hearth node start --view log, with the settings in {config_file}.")
    for line in service.next_steps(built, outcome):
        click.echo(line)
    ignored = service.overridden_settings()
    if ignored:
        click.echo(f"Note: the service does not see {', '.join(ignored)} from this shell; save what you need "
                   "with `hearth node config set KEY VALUE`.", err=True)  # fmt: skip


def _save_url(config_file: Path, url: str) -> None:
    from node.settings import KEYS, set_in_file

    try:
        saved = set_in_file(config_file, KEYS["coordinator_url"], url)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"Saved coordinator_url = {saved} in {config_file}.")


@click.command("uninstall-service")
@click.option("--force", is_flag=True, help="Remove the systemd unit even while it is still enabled.")
@platform_option
def uninstall_service(force: bool, platform: str) -> None:
    """Remove the service that install-service wrote (stop and disable it first)."""
    try:
        kind = service.service_kind(platform)
        path = service.service_path(kind, Path.home())
        removed = service.uninstall(kind, path, force)
    except ServiceError as e:
        raise click.ClickException(str(e)) from None
    if not removed:
        click.echo(f"No Hearth service is installed (nothing at {path}).")
        return
    click.echo(f"Removed {path}")
    for line in service.after_uninstall(kind):
        click.echo(line)
