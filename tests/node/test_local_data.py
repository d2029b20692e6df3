"""Local data for `data: local` swarms: the `tabular` task's file formats (NPZ, CSV) and their clear errors, the
non-IID datasets scripts/make_local_data.py makes, and the node's --local-data setting."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hearth.tasks import TaskContext, load_task
from hearth.tasks.tabular import DatasetError, read_table
from node.config import NodeConfig
from node.daemon import NodeError, local_data_for
from protocol.messages import Hyperparameters, SwarmManifest
from scripts.make_local_data import make_datasets, write_table

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_local_data.py"


def test_make_local_data_writes_non_iid_tables_the_task_reads(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--nodes", "2", "--rows", "300",
                             "--mix", "0", "--format", "csv"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [node["classes"] for node in summary["nodes"]] == [[0, 2], [1, 3]]  # class c goes to node c % 2
    task = load_task("tabular")
    task.configure(TaskContext(local_data=Path(summary["nodes"][0]["path"]), assets={"held_out": Path(summary["held_out"])}))
    assert len(task.local_dataset()) == 300
    features, labels = next(task.data_stream(peer_seed=1, batch_size=32))
    assert features.shape == (32, 16) and set(labels.tolist()) <= {0, 2}
    metrics = task.evaluate(task.build_model())
    assert set(metrics) == {"loss", "accuracy"} and 0 <= metrics["accuracy"] <= 1


def test_mix_brings_other_nodes_classes():
    tables, held = make_datasets(nodes=2, rows=1000, mix=0.1, seed=4)
    own = np.isin(tables[0][1], [0, 2]).mean()
    assert 0.85 < own < 0.95 and len(held[1]) == 2000


def test_npz_and_csv_hold_the_same_table(tmp_path):
    (features, labels), = make_datasets(nodes=1, rows=50, held_out=1)[0]
    write_table(tmp_path / "a.npz", features, labels)
    write_table(tmp_path / "a.csv", features, labels)
    x1, y1 = read_table(tmp_path / "a.npz", 16, 4)
    x2, y2 = read_table(tmp_path / "a.csv", 16, 4)
    assert torch.equal(y1, y2) and torch.allclose(x1, x2, atol=1e-4)


@pytest.mark.parametrize("name, content, message", [
    ("wrong.csv", "a,b,label\n1,2,0\n", "rows have 2 features; this swarm's task expects 16"),
    ("nolabel.csv", "a,b\n1,2\n", "no 'label' column"),
    ("text.csv", "a,label\nx,1\n", "line 2: a value is not a number"),
    ("ragged.csv", "a,label\n1\n", "line 2: 1 values for 2 columns"),
    ("data.json", "{}", "expected a .npz or .csv file"),
])  # fmt: skip
def test_a_file_that_does_not_fit_the_format_is_a_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_table(path, 16, 4)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "x.npz", features=np.zeros((3, 16)))
    with pytest.raises(DatasetError, match="missing array.*labels"):
        read_table(tmp_path / "x.npz", 16, 4)
    np.savez(tmp_path / "y.npz", features=np.zeros((3, 16)), labels=np.array([0, 1, 4]))
    with pytest.raises(DatasetError, match="labels must be whole numbers from 0 to 3"):
        read_table(tmp_path / "y.npz", 16, 4)
    np.savez(tmp_path / "z.npz", features=np.full((2, 16), np.nan), labels=np.array([0, 1]))
    with pytest.raises(DatasetError, match="NaN"):
        read_table(tmp_path / "z.npz", 16, 4)


def test_task_options_shape_the_model_and_unknown_ones_are_refused():
    task = load_task("tabular")
    task.configure(TaskContext(options={"features": 5, "classes": 3, "hidden": 8}))
    assert task.build_model()(torch.zeros(2, 5)).shape == (2, 3)
    with pytest.raises(ValueError, match="no option 'rows'"):
        load_task("tabular").configure(TaskContext(options={"rows": 5}))
    with pytest.raises(ValueError, match="at least 2 classes"):
        load_task("tabular").configure(TaskContext(options={"classes": 1}))


def manifest(data: str) -> SwarmManifest:
    return SwarmManifest(swarm_id="clinic", title="t", run_id="r", task="tabular", flops_per_sample=1, initial_peers=[],
                         broker_url="mqtt://127.0.0.1:1", data=data,
                         hyperparameters=Hyperparameters(batch_size=32, target_batch_size=64, learning_rate=0.1,
                                                         matchmaking_time=1, averaging_timeout=5))  # fmt: skip


def test_the_node_needs_local_data_only_for_a_local_swarm(tmp_path, monkeypatch):
    table = tmp_path / "mine.npz"
    write_table(table, *make_datasets(nodes=1, rows=10, held_out=1)[0][0])
    assert local_data_for(manifest("shared"), NodeConfig("http://x", local_data=table)) is None
    assert local_data_for(manifest("local"), NodeConfig("http://x", local_data=table)) == table.resolve()
    with pytest.raises(NodeError, match="name your dataset with --local-data FILE"):
        local_data_for(manifest("local"), NodeConfig("http://x"))
    with pytest.raises(ValueError, match="local_data .*missing.csv: no such file"):
        NodeConfig("http://x", local_data=tmp_path / "missing.csv")
    config = NodeConfig("http://x", local_data=str(table))
    assert NodeConfig.from_json_dict(json.loads(json.dumps(config.to_json_dict()))).local_data == table.resolve()
