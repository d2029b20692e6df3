"""`hearth tasks list|describe NAME`: the training tasks this installation can train, built in or from plugins."""

import json
from dataclasses import asdict

import click

SCHEDULE_EPOCHS_SHOWN = 6


@click.group()
def tasks() -> None:
    """Training tasks: built in, or added by packages through the `hearth.tasks` entry point group."""


@tasks.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per task: name, description, defaults.")
def list_tasks(as_json: bool) -> None:
    """Every task's name and what it trains."""
    from hearth.tasks import available_tasks, load_task

    for name in available_tasks():
        task = load_task(name)
        if as_json:
            click.echo(json.dumps({"name": name, "description": task.description, "defaults": asdict(task.defaults)}))
        else:
            click.echo(f"{name:16} {task.description}")


def describe_task(task) -> dict:
    """Everything a researcher needs to set up a swarm for the task; FLOPs and parameters measured here."""
    from hearth.tasks import measure_flops_per_sample

    defaults = task.defaults
    model = task.build_model()
    return {
        "name": task.name, "description": task.description,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops_per_sample": measure_flops_per_sample(task), "defaults": asdict(defaults),
        "schedule": {
            "description": task.schedule_doc,
            "multipliers": [task.lr_schedule(epoch, defaults.warmup_epochs) for epoch in range(SCHEDULE_EPOCHS_SHOWN)],
        },
        "options": dict(task.option_docs),
    }  # fmt: skip


@tasks.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def describe(name: str, as_json: bool) -> None:
    """What task NAME trains: model size, FLOPs per sample (measured), recommended hyperparameters, the
    learning-rate schedule and the options a swarm may set (`hearth swarm create --task-option KEY=VALUE`)."""
    from hearth.tasks import load_task
    from hearth.tasks.registry import UnknownTask

    try:
        task = load_task(name)
    except UnknownTask as e:
        raise click.ClickException(str(e)) from None
    facts = describe_task(task)
    if as_json:
        click.echo(json.dumps(facts))
        return
    click.echo(f"{task.name}: {task.description}")
    click.echo(f"  model parameters  {facts['parameters']:,} ({facts['trainable_parameters']:,} trained)")
    click.echo(f"  FLOPs per sample  {facts['flops_per_sample']:,} (forward + backward, measured)")
    click.echo("  recommended hyperparameters (override with `hearth swarm create` options):")
    for key, value in facts["defaults"].items():
        click.echo(f"    {key.replace('_', ' '):21} {value}")
    schedule = facts["schedule"]
    shown = ", ".join(f"{m:.3g}" for m in schedule["multipliers"])
    click.echo(f"  learning rate     {schedule['description']}")
    click.echo(f"    × per epoch 0-{SCHEDULE_EPOCHS_SHOWN - 1}: {shown} (with warmup epochs {task.defaults.warmup_epochs})")
    if facts["options"]:
        click.echo("  task options:")
        for key, doc in facts["options"].items():
            click.echo(f"    {key:21} {doc}")
    else:
        click.echo("  task options      none")
