"""`hearth tasks list|describe NAME`: the training tasks this installation can train, built in or from plugins."""

import json

import click


@click.group()
def tasks() -> None:
    """Training tasks: built in, or added by packages through the `hearth.tasks` entry point group."""


@tasks.command("list")
def list_tasks() -> None:
    """Every task's name and what it trains."""
    from hearth.tasks import available_tasks, load_task

    for name in available_tasks():
        click.echo(f"{name:16} {load_task(name).description}")


@tasks.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def describe(name: str, as_json: bool) -> None:
    """What task NAME trains: model size, FLOPs per sample (measured) and recommended hyperparameters."""
    from dataclasses import asdict

    from hearth.tasks import load_task, measure_flops_per_sample
    from hearth.tasks.registry import UnknownTask

    try:
        task = load_task(name)
    except UnknownTask as e:
        raise click.ClickException(str(e)) from None
    parameters = sum(parameter.numel() for parameter in task.build_model().parameters())
    facts = {"name": task.name, "description": task.description, "parameters": parameters,
             "flops_per_sample": measure_flops_per_sample(task), "defaults": asdict(task.defaults)}  # fmt: skip
    if as_json:
        click.echo(json.dumps(facts))
        return
    click.echo(f"{task.name}: {task.description}")
    click.echo(f"  model parameters  {parameters:,}")
    click.echo(f"  FLOPs per sample  {facts['flops_per_sample']:,} (forward + backward, measured)")
    for key, value in facts["defaults"].items():
        click.echo(f"  {key.replace('_', ' '):17} {value}")
