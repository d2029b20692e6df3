"""The `hearth` command. Each subcommand lives in its own package and is imported only when used, so
`hearth node …` never loads the web stack and `hearth coordinator …` never touches a GPU."""

import importlib
import logging
import sys

import click

SUBCOMMANDS = {  # name: (module, attribute, one-line help shown by `hearth --help` without importing the module)
    "join": ("node.cli", "join", "Join a training swarm with this PC."),
    "node": ("node.cli", "node", "Control and configure this PC's node (start, status, pause, config, service)."),
    "coordinator": ("coordinator.cli", "coordinator", "Run a coordinator (operators)."),
    "swarm": ("coordinator.cli", "swarm", "Create and list swarms on a coordinator (operators)."),
    "team": ("node.team_cli", "team", "Create, join or leave a team on a coordinator."),
    "account": ("node.account_cli", "account", "Your account: its PCs, attach key, name; detach a PC."),
    "leaderboard": ("coordinator.cli", "leaderboard", "Print a coordinator's credit leaderboard."),
    "volunteer": ("coordinator.access_cli", "volunteer", "Ban or unban a volunteer (operators)."),
    "demo": ("hearth.demo", "demo", "Run a local swarm demo: a coordinator and a few nodes on this machine."),
    "tasks": ("hearth.tasks.cli", "tasks", "List the training tasks this installation knows and describe one."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module_name, attribute, _ = SUBCOMMANDS[name]
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)])


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
