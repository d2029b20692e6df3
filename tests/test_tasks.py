"""The built-in tasks housing and digits, and the task API's learning-rate schedule, in one process; the swarm
dashboard shows housing's learned coefficients next to the true ones."""

import asyncio

import httpx
import pytest
import torch

from hearth.tasks import load_task
from hearth.tasks.base import linear_warmup
from hearth.tasks.housing import FEATURES, TRUE_COEFFICIENTS, TRUE_INTERCEPT


def train(task, epochs: int, global_batch: int, seed: int = 1) -> torch.nn.Module:
    """One optimizer step per epoch of `global_batch` samples, with the task's own optimizer and schedule."""
    model = task.build_model()
    optimizer = task.make_optimizer(model.parameters(), task.defaults.learning_rate)
    scheduler = task.make_scheduler(optimizer, task.defaults.warmup_epochs)
    data = task.data_stream(peer_seed=seed, batch_size=global_batch)
    for _ in range(epochs):
        optimizer.zero_grad()
        task.loss(model, next(data)).backward()
        optimizer.step()
        scheduler.step()
    return model


def test_the_default_schedule_warms_up_linearly_then_stays_constant():
    assert [linear_warmup(epoch, 3) for epoch in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert linear_warmup(0, 0) == 1.0
    task = load_task("spirals")
    optimizer = task.make_optimizer([torch.nn.Parameter(torch.zeros(1))], 0.1)
    scheduler = task.make_scheduler(optimizer, warmup_epochs=3)
    rates = []
    for _ in range(5):  # as hivemind steps it: once per global epoch
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])


def test_housing_learns_the_true_coefficients():
    task = load_task("housing")
    before = task.evaluate(task.build_model())
    after = task.evaluate(train(task, epochs=30, global_batch=16384))
    assert before["r2"] < 0 < 0.9 < after["r2"] and after["rmse_k_eur"] < 32  # the noise alone: 30 k€
    assert after["true.intercept"] == TRUE_INTERCEPT
    for feature, true in zip(FEATURES, TRUE_COEFFICIENTS):
        assert after[f"true.{feature}"] == true
        assert after[f"coef.{feature}"] == pytest.approx(true, rel=0.1), feature


def test_digits_streams_differ_by_seed_and_a_few_steps_learn():
    task = load_task("digits")
    first, again, other = (next(task.data_stream(seed, 32)) for seed in (5, 5, 6))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    assert first[0].shape == (32, 1, 8, 8) and 0 <= first[0].min() and first[0].max() <= 1
    before = task.evaluate(task.build_model())
    after = task.evaluate(train(task, epochs=8, global_batch=512))
    assert 0 <= before["accuracy"] <= 0.3 and after["accuracy"] > 0.5 and after["loss"] < before["loss"]


def test_the_swarm_page_shows_learned_coefficients_next_to_the_true_ones(tmp_path):
    from coordinator.api import Services
    from coordinator.app import create_app
    from coordinator.checkpoints import CheckpointStore
    from tests.coordinator.test_checkpoints import checkpoint
    from tests.coordinator.helpers import make_ledger

    evaluation = {"loss": 0.07, "r2": 0.95, "coef.size_m2": 2.3871, "true.size_m2": 2.4, "coef.garden": 24.5}
    store = CheckpointStore(tmp_path / "checkpoints", keep=2)
    store.save("spirals", checkpoint(4, evaluation=evaluation))

    async def page() -> str:
        ledger = await make_ledger(tmp_path)
        app = create_app(Services(ledger, "mqtt://127.0.0.1:1883", "token"))
        app.state.checkpoints = store
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            text = (await client.get("/swarms/spirals")).text
        await ledger.engine.dispose()
        return text

    text = asyncio.run(page())
    assert "<strong>loss</strong> 0.07, <strong>r2</strong> 0.95</p>" in text  # coefficients are not metrics
    rows = text[text.index('<table id="coefficients">'):].split("</table>")[0]
    assert '<td>size_m2</td><td class="num">2.387</td>\n      <td class="num">2.4</td>' in rows
    assert '<td>garden</td><td class="num">24.5</td>\n      <td class="num">–</td>' in rows


def test_a_task_published_as_a_package_is_found_by_its_entry_point(tmp_path, monkeypatch):
    """What a researcher's package installs: a module and its dist-info with a `hearth.tasks` entry point."""
    (tmp_path / "my_tasks.py").write_text(
        "from hearth.tasks.housing import HousingTask\n\n"
        "class CottagesTask(HousingTask):\n"
        "    name = 'cottages'\n"
        "    description = 'House prices, for cottages'\n"
        "    option_docs = {'garden_weight': 'how much a garden counts'}\n"
    )  # fmt: skip
    info = tmp_path / "my_tasks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-tasks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hearth.tasks]\ncottages = my_tasks:CottagesTask\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    from hearth.tasks import available_tasks
    from hearth.tasks.cli import describe_task

    assert "cottages" in available_tasks()
    facts = describe_task(load_task("cottages"))
    assert facts["name"] == "cottages" and facts["parameters"] == 6
    assert facts["options"] == {"garden_weight": "how much a garden counts"}
    assert facts["schedule"]["multipliers"][:4] == [0.25, 0.5, 0.75, 1.0]
