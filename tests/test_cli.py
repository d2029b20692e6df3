"""The root `hearth` command: help without tracebacks, and the tasks subcommand."""

import json

from tests.conftest import run_hearth


def test_help_lists_every_command_without_importing_them():
    result = run_hearth("--help")
    assert result.returncode == 0, result.stderr
    for command in ("join", "node", "coordinator", "swarm", "leaderboard", "demo", "tasks"):
        assert f"  {command} " in result.stdout


def test_tasks_list_and_describe():
    listed = run_hearth("tasks", "list")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines()]
    assert {"spirals", "housing", "digits"} <= set(names) and names == sorted(names)
    described = run_hearth("tasks", "describe", "spirals", "--json")
    assert described.returncode == 0, described.stderr
    facts = json.loads(described.stdout)
    assert facts["parameters"] > 100_000 and facts["flops_per_sample"] > 3 * facts["parameters"]
    assert facts["defaults"]["target_batch_size"] > facts["defaults"]["batch_size"]
    assert facts["schedule"]["multipliers"][0] == 1.0 and facts["options"] == {}  # no warm-up by default


def test_describe_shows_the_warm_up_schedule_a_researcher_will_get():
    from click.testing import CliRunner

    from hearth.tasks.cli import tasks

    described = CliRunner().invoke(tasks, ["describe", "housing"])
    assert described.exit_code == 0, described.output
    assert "model parameters  6 (6 trained)" in described.stdout
    assert "× per epoch 0-5: 0.25, 0.5, 0.75, 1, 1, 1 (with warmup epochs 3)" in described.stdout


def test_describe_unknown_task_is_one_clear_line():
    result = run_hearth("tasks", "describe", "no-such-task")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("Error: unknown task 'no-such-task'; available: digits, housing, ")
