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
    assert listed.stdout.startswith("spirals ")
    described = run_hearth("tasks", "describe", "spirals", "--json")
    assert described.returncode == 0, described.stderr
    facts = json.loads(described.stdout)
    assert facts["parameters"] > 100_000 and facts["flops_per_sample"] > 3 * facts["parameters"]
    assert facts["defaults"]["target_batch_size"] > facts["defaults"]["batch_size"]


def test_describe_unknown_task_is_one_clear_line():
    result = run_hearth("tasks", "describe", "no-such-task")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: unknown task 'no-such-task'; available: spirals"
