"""Every built-in task trains in a real 2-peer swarm: a coordinator process, two `hearth join` processes, the swarm
defined with `hearth swarm create`. The peers end with the same model, and it beats the initial one on the task's
held-out data. Add a task by adding a case to CASES."""

import itertools

import pytest
import torch

from hearth.tasks import load_task
from tests.conftest import run_hearth

pytestmark = pytest.mark.swarm

_numbers = itertools.count(1)


def _housing_learned(before: dict, after: dict) -> None:
    assert after["r2"] > 0.5 and after["loss"] < before["loss"] / 3, (before, after)


def _digits_learned(before: dict, after: dict) -> None:
    assert after["accuracy"] > max(0.2, before["accuracy"] + 0.1), (before, after)


# task, `hearth swarm create` options (short epochs), epochs to train, what "it learned" means for the task
CASES = [
    pytest.param("housing", ("--target-batch-size", "8192", "--batch-size", "256"), 4, _housing_learned, id="housing"),
    pytest.param("digits", ("--target-batch-size", "1024", "--batch-size", "64"), 4, _digits_learned, id="digits"),
]


@pytest.mark.timeout(600)  # two node processes and a coordinator: minutes on a loaded 2-core machine
@pytest.mark.parametrize("task_name, options, epochs, learned", CASES)
def test_builtin_task_trains_in_a_two_peer_swarm(coordinator, nodes, task_name, options, epochs, learned):
    swarm_id = f"builtin-{task_name}-{next(_numbers)}"
    created = run_hearth("swarm", "create", swarm_id, "--task", task_name, "--matchmaking-time", "1", *options,
                         "--coordinator", coordinator.url, "--token-file", str(coordinator.data_dir / "operator-token"),
                         timeout=120)  # fmt: skip
    assert created.returncode == 0, created.stderr
    for name in (f"{task_name}-a", f"{task_name}-b"):
        nodes.start(coordinator.url, name, "--swarm", swarm_id, "--min-peers", "2", "--max-epochs", str(epochs))
    for name, process in nodes.processes.items():
        assert process.wait(timeout=300) == 0, nodes.log(name)

    task = load_task(task_name)
    final = [torch.load(nodes.data_dir(name) / "swarms" / swarm_id / "model.pt", weights_only=True)
             for name in nodes.processes]  # fmt: skip
    assert final[0]["epoch"] == final[1]["epoch"] == epochs
    for key, tensor in final[0]["model"].items():
        assert torch.allclose(tensor, final[1]["model"][key], atol=1e-5, rtol=0), key
    model = task.build_model()
    before = task.evaluate(model.eval())
    model.load_state_dict(final[0]["model"])
    learned(before, task.evaluate(model.eval()))
