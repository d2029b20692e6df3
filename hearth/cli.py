"""The `hearth` command. Each subcommand lives in its own package and is imported only when used, so
`hearth node …` never loads the web stack and `hearth coordinator …` never touches a GPU."""

import importlib
import logging
import sys

import click

SUBCOMMANDS = {
    "join": ("node.cli", "join"),
    "node": ("node.cli", "node"),
    "coordinator": ("coordinator.cli", "coordinator"),
    "swarm": ("coordinator.cli", "swarm"),
    "leaderboard": ("coordinator.cli", "leaderboard"),
    "demo": ("hearth.demo", "demo"),
    "tasks": ("hearth.tasks.cli", "tasks"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module_name, attribute = SUBCOMMANDS[name]
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Hearth: give your PC's spare compute to open deep-learning training swarms."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
