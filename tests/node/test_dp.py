"""Differential privacy on the node (node/privacy.py): per-sample clipping, calibrated noise added into hivemind's
.grad accumulators, Poisson batches, the ε ledger against Opacus' accountant, and a membership-inference smoke
check (single process: the honest way to compare training with held-out loss)."""

import json
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from hearth.tasks.base import TaskContext
from hearth.tasks.tabular import TabularTask, score
from node.privacy import RESERVE_STEPS, PrivacyLedger, PrivateTraining, epsilon_for
from protocol.messages import DifferentialPrivacy
from scripts.make_local_data import make_datasets

logger = logging.getLogger(__name__)


# Opacus' per-sample work runs in many small ops: more threads than free cores only slow it (~10× here).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def settings(clip=1.0, noise=1.0, delta=1e-5, budget=100.0) -> DifferentialPrivacy:
    return DifferentialPrivacy(clip_norm=clip, noise_multiplier=noise, delta=delta, epsilon_budget=budget)


def mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x).squeeze(1), y)


def regression(rows=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 5, generator=generator) * 10  # large inputs: every sample's gradient is far above the clip
    return TensorDataset(x, torch.randn(rows, generator=generator) * 10)


def linear():
    torch.manual_seed(0)
    return nn.Linear(5, 1)


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def test_without_noise_or_binding_clip_it_is_the_ordinary_mean_gradient_scaled_to_the_expected_batch():
    data = regression(rows=8)
    reference = linear()
    mse(reference, data[:]).backward()
    model = linear()
    private = PrivateTraining(model, data, settings(clip=1e6, noise=0.0), batch_size=4, seed=1)
    private.ledger.max_steps = 1  # σ = 0 has no finite ε: only the mechanics are tested here
    private.backward(mse, data[:])  # all 8 rows, divided by the expected batch of 4
    assert torch.allclose(flat_grad(model), flat_grad(reference) * 8 / 4, rtol=1e-4, atol=1e-5)


def test_each_sample_is_clipped_and_the_result_adds_into_the_existing_accumulator():
    data = regression(rows=8)
    model = linear()
    private = PrivateTraining(model, data, settings(clip=0.5, noise=0.0), batch_size=8, seed=1)
    private.ledger.max_steps = 1  # σ = 0 has no finite ε: only the mechanics are tested here
    accumulators = [torch.ones_like(p) for p in model.parameters()]
    for p, accumulator in zip(model.parameters(), accumulators):
        p.grad = accumulator
    private.backward(mse, data[:])
    assert all(p.grad is accumulator for p, accumulator in zip(model.parameters(), accumulators))  # same buffers
    clipped = []
    for x, y in zip(*data[:]):  # each sample's own gradient, clipped to norm 0.5
        reference = linear()
        mse(reference, (x[None], y[None])).backward()
        gradient = flat_grad(reference)
        assert gradient.norm() > 1.0  # the clip binds for every sample
        clipped.append(gradient * 0.5 / gradient.norm())
    assert torch.allclose(flat_grad(model) - 1.0, torch.stack(clipped).mean(dim=0), rtol=1e-4, atol=1e-5)
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())


def test_noise_is_gaussian_with_std_noise_multiplier_times_clip_over_expected_batch():
    torch.manual_seed(0)
    model = nn.Linear(100, 100)
    data = TensorDataset(torch.randn(1000, 100), torch.randn(1000, 100))
    private = PrivateTraining(model, data, settings(clip=1.0, noise=2.0), batch_size=10, seed=3)
    empty = (torch.zeros(0, 100), torch.zeros(0, 100))  # an empty Poisson draw: the gradient is pure noise
    assert private.backward(lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]), empty) is None
    noise = flat_grad(model)
    assert noise.mean().abs() < 0.01
    assert noise.std().item() == pytest.approx(2.0 * 1.0 / 10, rel=0.05)


def test_batches_are_poisson_samples_at_the_expected_rate():
    data = TensorDataset(torch.arange(500.0), torch.zeros(500))
    private = PrivateTraining(nn.Linear(1, 1), data, settings(), batch_size=20, seed=5)
    assert private.sample_rate == pytest.approx(20 / 500)
    sizes = [len(batch[0]) for _, batch in zip(range(400), private.batches())]
    assert len(set(sizes)) > 5  # sizes vary, as Poisson sampling does
    assert sum(sizes) / len(sizes) == pytest.approx(20, rel=0.1)


def test_epsilon_is_the_accountants_and_the_node_stops_at_the_budget(tmp_path):
    path = tmp_path / "privacy.json"
    ledger = PrivacyLedger(settings(noise=1.0, budget=5.0), sample_rate=0.05, path=path)
    assert ledger.epsilon == 0.0 and not ledger.exhausted and 10 < ledger.max_steps < RESERVE_STEPS * 10
    assert epsilon_for([(1.0, 0.05, ledger.max_steps)], 1e-5) <= 5.0 < epsilon_for([(1.0, 0.05, ledger.max_steps + 1)], 1e-5)
    for _ in range(10):
        ledger.take_step()
    assert ledger.epsilon == pytest.approx(epsilon_for([(1.0, 0.05, 10)], 1e-5), rel=1e-9)
    # a crash now would leave the reservation on disk: at least as many steps as were taken
    assert json.loads(path.read_text())["history"] == [[1.0, 0.05, min(RESERVE_STEPS, ledger.max_steps)]]
    ledger.close()  # a clean stop records exactly the steps taken
    assert json.loads(path.read_text())["history"] == [[1.0, 0.05, 10]]

    again = PrivacyLedger(settings(noise=1.0, budget=5.0), sample_rate=0.05, path=path)  # the next run goes on
    assert again.epsilon == pytest.approx(ledger.epsilon, rel=1e-9) and again.max_steps == ledger.max_steps - 10
    while not again.exhausted:
        again.take_step()
    assert again.epsilon <= 5.0 < again.epsilon_after(again.steps + 1)
    with pytest.raises(RuntimeError, match="privacy budget spent"):
        again.take_step()
    again.close()
    assert json.loads(path.read_text())["history"] == [[1.0, 0.05, ledger.max_steps]]

    path.write_text(json.dumps({"history": [[1.0, 0.05, 10]]}))
    other_rate = PrivacyLedger(settings(noise=1.0, budget=5.0), sample_rate=0.1, path=path)  # a new batch size
    assert other_rate.epsilon == pytest.approx(epsilon_for([(1.0, 0.05, 10)], 1e-5), rel=1e-9)
    other_rate.take_step()
    history = [(1.0, 0.05, 10), (1.0, 0.1, 1)]
    assert other_rate.history == history and other_rate.epsilon == pytest.approx(epsilon_for(history, 1e-5), rel=1e-9)


def test_a_spent_budget_refuses_further_steps():
    data = regression(rows=8)
    private = PrivateTraining(linear(), data, settings(noise=0.5, budget=1.0), batch_size=4, seed=1)  # q = 0.5
    assert private.ledger.max_steps == 0 and private.exhausted  # one step alone would cost more than ε = 1
    with pytest.raises(RuntimeError, match="privacy budget spent"):
        private.backward(mse, data[:])


def test_a_model_opacus_cannot_train_privately_is_a_clear_error():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="differential privacy cannot train"):
        PrivateTraining(model, regression(), settings(), batch_size=4)


MIA_ROWS, MIA_STEPS, MIA_BATCH = 64, 200, 16
DP_GAP_BOUND = 0.3  # held-out minus training loss with DP on (σ = 2, clip 1): stated bound


def membership_gap(private: bool) -> tuple[float, float]:
    """Held-out minus training mean loss of an over-parameterised MLP (hidden 128, ~20k parameters) trained on
    64 rows of overlapping classes; and ε spent (0 without DP)."""
    tables, held = make_datasets(nodes=1, rows=MIA_ROWS, mix=0.0, separation=0.5, held_out=2000, seed=3)
    train, held = [tuple(torch.as_tensor(a) for a in table) for table in (tables[0], held)]
    task = TabularTask()
    task.configure(TaskContext(options={"hidden": 128}))
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    if private:  # (its hooks would slow the plain run down)
        dp = PrivateTraining(model, TensorDataset(*train), settings(clip=1.0, noise=2.0, budget=1e6), MIA_BATCH, seed=7)
        batches = dp.batches()
    generator = torch.Generator().manual_seed(7)
    for _ in range(MIA_STEPS):
        if private:
            dp.backward(task.loss, next(batches))
        else:
            rows = torch.randint(0, MIA_ROWS, (MIA_BATCH,), generator=generator)
            task.loss(model, (train[0][rows], train[1][rows])).backward()
        optimizer.step()
        optimizer.zero_grad()
    gap = score(model, *held)["loss"] - score(model, *train)["loss"]
    return gap, dp.ledger.epsilon if private else 0.0


def test_membership_inference_smoke_check_dp_keeps_the_train_held_out_loss_gap_small():
    gap_off, _ = membership_gap(private=False)
    gap_on, epsilon = membership_gap(private=True)
    logger.warning("membership gap (held-out − training loss): DP off %.3f, DP on %.3f at ε %.2f (δ 1e-5)",
                   gap_off, gap_on, epsilon)  # fmt: skip
    assert gap_on <= DP_GAP_BOUND
    assert gap_off >= 1.0 and gap_off >= 5 * max(gap_on, 0.0)
