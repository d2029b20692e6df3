"""A `data: local` swarm with differential privacy, end to end: a real coordinator, two real nodes each training
on its own non-IID table (classes 0 and 2 on one PC, 1 and 3 on the other) with per-sample clipping and noise.
The swarm's model beats a model trained on either table alone, on a shared held-out table; the ε each node
reports is Opacus' accountant's for its steps and sample rate; a node restarted with a larger batch goes on
from its recorded ε and stops at the swarm's budget ("privacy budget spent" in `hearth node status`)."""

import json
import os

import pytest
import torch

from hearth.processes import stop_group, wait_until
from hearth.tasks.tabular import TabularTask, score
from node.control import ControlError, request, socket_path
from opacus.accountants import RDPAccountant
from scripts.make_local_data import make_datasets, write_table
from tests.conftest import run_hearth

pytestmark = [pytest.mark.swarm, pytest.mark.timeout(900)]  # ~2 min on an idle 2-core machine, 10+ on a loaded one

SWARM_ID = "clinics-dp"
ROWS, BATCH, EPOCHS = 1000, 32, 6
CLIP, NOISE, DELTA, BUDGET = 1.0, 1.0, 1e-5, 8.0  # ε(800 steps at q = 0.032) ≈ 6.5: two nodes' 6 epochs fit


def accountant_epsilon(history) -> float:
    accountant = RDPAccountant()
    accountant.history = [tuple(entry) for entry in history]
    return accountant.get_epsilon(DELTA)


def trained_alone(features, labels, steps=300) -> torch.nn.Module:
    """The same model trained on one node's table only, without privacy noise (a baseline stronger than DP)."""
    task = TabularTask()
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator, threads = torch.Generator().manual_seed(0), torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only wait on a busy machine
    try:
        for _ in range(steps):
            rows = torch.randint(0, len(labels), (BATCH,), generator=generator)
            task.loss(model, (features[rows], labels[rows])).backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    return model


def test_a_local_data_swarm_with_dp_beats_each_node_alone_and_reports_the_accountants_epsilon(coordinator, nodes,
                                                                                               tmp_path):  # fmt: skip
    tables, held_out = make_datasets(nodes=2, rows=ROWS, mix=0.0, seed=11)
    paths = {"dp-alice": tmp_path / "alice.npz", "dp-bob": tmp_path / "bob.csv"}  # both formats
    for path, table in zip(paths.values(), tables):
        write_table(path, *table)
    created = run_hearth("swarm", "create", SWARM_ID, "--task", "tabular", "--data", "local",
                         "--dp-clip-norm", str(CLIP), "--dp-noise-multiplier", str(NOISE), "--dp-delta", str(DELTA),
                         "--dp-epsilon", str(BUDGET), "--target-batch-size", "2048", "--batch-size", str(BATCH),
                         "--learning-rate", "0.03", "--matchmaking-time", "1", "--coordinator", coordinator.url,
                         "--token-file", str(coordinator.data_dir / "operator-token"), timeout=120)  # fmt: skip
    assert created.returncode == 0, created.stderr

    refused = run_hearth("join", coordinator.url, "--swarm", SWARM_ID, "--name", "dp-carol", "--data-dir",
                         str(tmp_path / "dp-carol"), timeout=120)  # fmt: skip
    assert refused.returncode != 0 and "--local-data FILE" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr

    for name, path in paths.items():
        nodes.start(coordinator.url, name, "--swarm", SWARM_ID, "--local-data", str(path), "--min-peers", "2",
                    "--max-epochs", str(EPOCHS))  # fmt: skip
    for name, process in nodes.processes.items():
        assert process.wait(timeout=300) == 0, nodes.log(name)
    summaries = {name: json.loads((nodes.data_dir(name) / "last-run.json").read_text()) for name in paths}
    for name, summary in summaries.items():
        privacy = summary["privacy"]
        assert privacy["sample_rate"] == BATCH / ROWS and privacy["steps"] > 0
        assert privacy["history"] == [[NOISE, BATCH / ROWS, privacy["steps"]]]
        assert privacy["epsilon_spent"] == pytest.approx(accountant_epsilon(privacy["history"]), rel=1e-5)
        assert summary["samples"] > 0 and summary["samples"] % BATCH == 0  # the expected batch, never the drawn one
        assert 2 in summary["group_sizes"].values(), summary  # they averaged

    # the shared held-out table: the swarm's model against each node's data alone
    held = tuple(torch.as_tensor(array) for array in held_out)
    swarm_model = TabularTask().build_model()
    swarm_model.load_state_dict(torch.load(nodes.data_dir("dp-alice") / "swarms" / SWARM_ID / "model.pt")["model"])
    together = score(swarm_model, *held)
    alone = [score(trained_alone(*(torch.as_tensor(array) for array in table)), *held) for table in tables]
    print(f"held-out accuracy: swarm with DP {together['accuracy']:.3f}, alone {[a['accuracy'] for a in alone]}")
    assert together["accuracy"] > max(a["accuracy"] for a in alone) + 0.2
    assert together["loss"] < min(a["loss"] for a in alone)

    # each node's ε reached the coordinator's ledger (its last presence) and the swarm dashboard
    page = lambda: coordinator.api.get(f"/swarms/{SWARM_ID}").text  # noqa: E731
    for summary in summaries.values():
        shown = f"{summary['privacy']['epsilon_spent']:.3f}"
        wait_until(lambda: 'id="privacy-spent"' in page() and shown in page(), 30, what=f"ε {shown} on the dashboard")

    # alice again, with 10× the batch (q = 0.32): her ledger goes on from the recorded steps until the budget is spent
    alice = nodes.start(coordinator.url, "dp-alice", "--swarm", SWARM_ID, "--local-data", str(paths["dp-alice"]),
                        "--batch-size", str(10 * BATCH))  # fmt: skip
    status = wait_until(lambda: _status_when_spent(nodes.data_dir("dp-alice"), alice), 180, what="alice's budget spent")
    assert status["pause_reason"] == "privacy budget spent" and status["privacy"]["exhausted"]
    shown = run_hearth("node", "status", env={**os.environ, "HEARTH_DATA_DIR": str(nodes.data_dir("dp-alice"))})
    assert "privacy budget spent" in shown.stdout, shown.stdout + shown.stderr
    assert stop_group(alice, grace=30)[0] == 0, nodes.log("dp-alice")
    privacy = json.loads((nodes.data_dir("dp-alice") / "last-run.json").read_text())["privacy"]
    first = summaries["dp-alice"]["privacy"]["steps"]
    assert privacy["history"] == [[NOISE, BATCH / ROWS, first], [NOISE, 10 * BATCH / ROWS, privacy["steps"]]]
    history = privacy["history"]
    assert accountant_epsilon(history) == pytest.approx(privacy["epsilon_spent"], rel=1e-5)
    assert privacy["epsilon_spent"] <= BUDGET < accountant_epsilon(history[:1] + [[NOISE, 10 * BATCH / ROWS,
                                                                                   privacy["steps"] + 1]])  # fmt: skip


def _status_when_spent(data_dir, process):
    if process.poll() is not None:
        raise AssertionError(f"alice exited with {process.returncode}")
    try:
        status = request(socket_path(data_dir), "status")
    except ControlError:  # the control socket is not up yet
        return None
    return status if status.get("pause_reason") == "privacy budget spent" else None
